"""Stable Diffusion pipelines for ADIR: loading them (fail fast, no surprise downloads), tiny test copies, and the latent-space LoRA loop.

The paper's two Stable Diffusion models are diffusers pipelines: the x4 upscaler
(`StableDiffusionUpscalePipeline`, paper Sec. 4.1) and the inpainting model
(`StableDiffusionInpaintPipeline`, Sec. 4.4). `load_pipeline` takes a local pipeline folder
or a hub id (bucket URLs are copied to a local folder by the caller: adir_ops does no I/O
beyond local files) and fails within seconds, naming what to download and where to put it,
when the weights are not there. `tiny_pipeline` builds the same classes from tiny random
configs, so everything that runs on it runs on the real weights.

What the two adaptations share (`adir_ops.latent.upscale`, `adir_ops.latent.editing`) lives here:
the checks of their configs' common settings, VAE encoding with the noise drawn from our
generator, the latent diffusion loss (to the scheduler's eps or v target), and the LoRA
training loop under mixed precision that records the pipeline.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from adir_ops.adaptation import training
from adir_ops.adaptation.adapter import Adapter
from adir_ops.adaptation.config import AdaptConfig
from adir_ops.priors.registry import HUB_ID

# The paper's models; what `load_pipeline` names in its messages.
HUB_IDS = {
    "sd-x4": "stabilityai/stable-diffusion-x4-upscaler",
    "sd-inpaint": "stabilityai/stable-diffusion-2-inpainting",
}
PIPELINE_CLASSES = {"sd-x4": "StableDiffusionUpscalePipeline", "sd-inpaint": "StableDiffusionInpaintPipeline"}
MIXED_PRECISION = ("auto", "bf16", "fp16", "no")


# ------------------------------------------------------------------ loading
def _hub_offline() -> bool:
    from huggingface_hub import constants

    # huggingface_hub reads HF_HUB_OFFLINE once at import; a later setting must count too.
    flag = os.environ.get("HF_HUB_OFFLINE", "").strip().upper()
    return bool(constants.HF_HUB_OFFLINE) or flag in {"1", "ON", "YES", "TRUE"}


def _download_hint(kind: str, target: str, hub_id: str | None = None) -> str:
    hub_id = hub_id or HUB_IDS[kind]
    return (
        f"On a machine with network run `hf download {hub_id} --local-dir {target}` (or copy that folder to a bucket), "
        f"then pass the folder (or bucket URL) instead"
    )


def _check_kind(kind: str) -> None:
    if kind not in HUB_IDS:
        raise ValueError(f"unknown Stable Diffusion pipeline kind {kind!r}; choose one of {', '.join(HUB_IDS)}")


def load_pipeline(kind: str, spec: str, *, torch_dtype: torch.dtype | None = None):
    """The `kind` pipeline ('sd-x4' or 'sd-inpaint') from 'tiny', a local pipeline folder, or a hub id.

    A hub id is looked up in the local Hugging Face cache first; the hub is asked only when
    that misses and HF_HUB_OFFLINE is not set. Every failure is a FileNotFoundError that
    names the files to download and where to put them.
    """
    _check_kind(kind)
    if spec == "tiny":
        return tiny_pipeline(kind)
    pipe = _load(kind, spec, torch_dtype)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _load(kind: str, spec: str, torch_dtype: torch.dtype | None):
    import diffusers

    cls = getattr(diffusers, PIPELINE_CLASSES[kind])
    options: dict[str, Any] = {"torch_dtype": torch_dtype} if torch_dtype is not None else {}
    if kind == "sd-inpaint":
        options.update(safety_checker=None, requires_safety_checker=False)
    local = os.path.expanduser(spec)
    if os.path.exists(local) or not HUB_ID.match(spec):
        if not os.path.isfile(os.path.join(local, "model_index.json")):
            what = (
                "does not exist"
                if not os.path.exists(local)
                else "is not a diffusers pipeline folder (no model_index.json)"
            )
            raise FileNotFoundError(f"{kind} pipeline {spec!r} {what}. {_download_hint(kind, local)}.")
        try:
            return cls.from_pretrained(local, local_files_only=True, **options)
        except (OSError, ValueError) as err:
            raise FileNotFoundError(
                f"{kind} pipeline folder {spec!r} is incomplete or not a {PIPELINE_CLASSES[kind]}: {err}. "
                f"{_download_hint(kind, local)}."
            ) from err
    try:
        return cls.from_pretrained(spec, local_files_only=True, **options)
    except (OSError, ValueError) as cached_err:
        if _hub_offline():
            raise FileNotFoundError(
                f"{kind} pipeline {spec!r} is not in the local Hugging Face cache and the hub is offline (HF_HUB_OFFLINE). "
                f"{_download_hint(kind, '/models/' + spec.split('/')[-1], spec)}."
            ) from cached_err
    try:
        return cls.from_pretrained(spec, **options)
    except Exception as err:  # network, auth and format errors all mean: get the files yourself
        raise FileNotFoundError(
            f"could not fetch the {kind} pipeline {spec!r} from the Hugging Face hub: {err}. "
            f"{_download_hint(kind, '/models/' + spec.split('/')[-1], spec)}."
        ) from err


# ------------------------------------------------------------------ tiny random copies
def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable character map (the alphabet of byte-level BPE)."""
    printable = (
        list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars, extra = printable[:], 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, chars)))


def tiny_tokenizer():
    """A CLIPTokenizer over bytes only (no merges): real tokenizer class and special tokens, 514 ids, no download."""
    from transformers import CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for ch in _bytes_to_unicode().values():
        vocab.setdefault(ch, len(vocab))
        vocab.setdefault(ch + "</w>", len(vocab))
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)


def _tiny_text_encoder(vocab_size: int):
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=2,
        max_position_embeddings=77,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
    )
    return CLIPTextModel(config).eval()


def tiny_pipeline(kind: str, seed: int = 0):
    """The `kind` pipeline class with tiny random weights (diffusers' fast-test sizes, smaller still).

    Same classes and wiring as the real models: UNet2DConditionModel with class-embedded
    noise level (x4 upscaler, 7 input channels) or 9 inpainting input channels, AutoencoderKL
    with the real downscale factor (4, resp. 8), CLIPTextModel + CLIPTokenizer, and the real
    schedulers (v-prediction DDIM + DDPM low-res noise; PNDM). Weights depend on `seed` only.
    """
    _check_kind(kind)
    from diffusers import (
        AutoencoderKL,
        DDIMScheduler,
        DDPMScheduler,
        PNDMScheduler,
        StableDiffusionInpaintPipeline,
        StableDiffusionUpscalePipeline,
        UNet2DConditionModel,
    )

    tokenizer = tiny_tokenizer()
    # Weight init draws from the global RNG; fork it so the caller's stream is untouched.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        text_encoder = _tiny_text_encoder(len(tokenizer))
        common = dict(
            block_out_channels=(8, 16),
            layers_per_block=1,
            norm_num_groups=4,
            cross_attention_dim=32,
            attention_head_dim=4,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        )
        if kind == "sd-x4":
            unet = UNet2DConditionModel(
                sample_size=8,
                in_channels=7,
                out_channels=4,
                num_class_embeds=400,
                use_linear_projection=True,
                only_cross_attention=(True, False),
                **common,
            )
            vae = AutoencoderKL(
                block_out_channels=(8, 8, 16),
                norm_num_groups=4,
                latent_channels=4,
                scaling_factor=0.08333,
                down_block_types=("DownEncoderBlock2D",) * 3,
                up_block_types=("UpDecoderBlock2D",) * 3,
            )
            pipe = StableDiffusionUpscalePipeline(
                vae=vae.eval(),
                text_encoder=text_encoder,
                tokenizer=tokenizer,
                unet=unet.eval(),
                low_res_scheduler=DDPMScheduler(),
                scheduler=DDIMScheduler(prediction_type="v_prediction"),
                max_noise_level=350,
            )
        else:
            unet = UNet2DConditionModel(sample_size=8, in_channels=9, out_channels=4, **common)
            vae = AutoencoderKL(
                block_out_channels=(8, 8, 8, 16),
                norm_num_groups=4,
                latent_channels=4,
                down_block_types=("DownEncoderBlock2D",) * 4,
                up_block_types=("UpDecoderBlock2D",) * 4,
            )
            pipe = StableDiffusionInpaintPipeline(
                vae=vae.eval(),
                text_encoder=text_encoder,
                tokenizer=tokenizer,
                unet=unet.eval(),
                scheduler=PNDMScheduler(skip_prk_steps=True, steps_offset=1),
                safety_checker=None,
                feature_extractor=None,
                requires_safety_checker=False,
            )
    pipe.set_progress_bar_config(disable=True)
    pipe.register_to_config(_name_or_path="tiny")
    return pipe


# ------------------------------------------------------------------ shared by the adaptations
def check_pipeline_settings(config) -> None:
    """The settings UpscaleConfig and EditConfig share, checked: `lora`, sampling `steps`, `mixed_precision`.

    A `lora` dict (as a saved config records it) becomes its AdaptConfig; call from the
    frozen config's `__post_init__`.
    """
    name = type(config).__name__
    if isinstance(config.lora, dict):
        object.__setattr__(config, "lora", AdaptConfig.from_dict(config.lora))
    if not isinstance(config.steps, int) or config.steps < 1:
        raise ValueError(f"{name}.steps must be an integer >= 1; got {config.steps!r}")
    if config.mixed_precision not in MIXED_PRECISION:
        raise ValueError(f"{name}.mixed_precision must be one of {MIXED_PRECISION}; got {config.mixed_precision!r}")


def pipeline_config(pipe, kind: str) -> dict[str, Any]:
    """What an adapter records about the pipeline it was trained on."""
    return {
        "kind": kind,
        "source": str(getattr(pipe, "name_or_path", None) or pipe.config.get("_name_or_path", "")),
        "unet_in_channels": int(pipe.unet.config.in_channels),
        "prediction_type": pipe.scheduler.config.prediction_type,
    }


def autocast_dtype(device: torch.device, mixed_precision: str) -> torch.dtype | None:
    """The 16-bit dtype to autocast to, or None: 'auto' is bf16 on CUDA and full precision elsewhere.

    bf16 by default because LoRA training has no loss scaler: fp16 gradients of small LoRA
    updates can underflow, bf16 has fp32's range.
    """
    if mixed_precision not in MIXED_PRECISION:
        raise ValueError(f"mixed_precision must be one of {MIXED_PRECISION}; got {mixed_precision!r}")
    if mixed_precision == "no" or (mixed_precision == "auto" and device.type != "cuda"):
        return None
    return torch.float16 if mixed_precision == "fp16" else torch.bfloat16


@contextlib.contextmanager
def mixed_precision_context(device: torch.device, mixed_precision: str) -> Iterator[None]:
    dtype = autocast_dtype(device, mixed_precision)
    if dtype is None:
        yield
    else:
        with torch.autocast(device.type, dtype=dtype):
            yield


def encode_latents(vae, images: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Scaled VAE latents of images in [-1, 1]: a sample of the posterior with our own standard normal `noise`."""
    dist = vae.encode(images.to(vae.dtype)).latent_dist
    return (dist.mean + dist.std * noise.to(dist.mean.device, dist.mean.dtype)) * vae.config.scaling_factor


def unet_downsampling(pipe) -> int:
    """How many times the UNet halves its latent: latent sides must be multiples of this."""
    return 2 ** (len(pipe.unet.config.block_out_channels) - 1)


def latent_shape(pipe, batch: int, height: int, width: int) -> tuple[int, int, int, int]:
    """Shape of the VAE latents of (batch, 3, height, width) images."""
    factor = 2 ** (len(pipe.vae.config.block_out_channels) - 1)
    return (batch, int(pipe.vae.config.latent_channels), height // factor, width // factor)


def diffusion_target(scheduler, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """What the UNet was trained to predict: the noise (epsilon) or the velocity (v-prediction, SD 2.x)."""
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        return scheduler.get_velocity(latents, noise, timesteps)
    raise ValueError(f"scheduler prediction_type {kind!r} is not supported; expected 'epsilon' or 'v_prediction'")


def latent_loss(
    pipe, latents: torch.Tensor, noise: torch.Tensor, t: int, condition: Sequence[torch.Tensor], **unet_kwargs
) -> torch.Tensor:
    """The latent diffusion loss of a batch at one shared timestep t: the pipeline's own noising and target.

    The latents are noised by the pipeline's scheduler, the UNet sees [noisy latents,
    *condition] (channels) with `unet_kwargs` as the pipeline feeds it, and the MSE to the
    scheduler's target (eps or v) is taken in fp32 whatever the UNet's dtype.
    """
    device = next(pipe.unet.parameters()).device
    timesteps = torch.full((latents.shape[0],), t, dtype=torch.long, device=device)
    noisy = pipe.scheduler.add_noise(latents, noise, timesteps)
    unet_in = torch.cat([noisy, *condition], dim=1).to(pipe.unet.dtype)
    pred = pipe.unet(unet_in, timesteps, **unet_kwargs).sample
    return F.mse_loss(pred.float(), diffusion_target(pipe.scheduler, latents, noise, timesteps).float())


def prompt_embeddings(pipe, prompts: list[str]) -> torch.Tensor:
    """The pipeline's own text conditioning (its encode_prompt), one row per prompt."""
    device = next(pipe.text_encoder.parameters()).device
    with torch.no_grad():
        embeds, _ = pipe.encode_prompt(prompts, device, 1, False)
    return embeds


def train_lora(
    pipe,
    loss_of_step: Callable[[int], torch.Tensor],
    job,
    generator: torch.Generator,
    kind: str,
    extra=None,
    callback=None,
) -> Adapter:
    """Adam on a fresh LoRA of every conv of `pipe.unet` (paper: rank 16, alpha 8), `job.lora.steps` times.

    `job`: the UpscaleConfig or EditConfig (its `lora`, `mixed_precision` and `to_dict()`);
    `extra`: more to record in the adapter (editing: the prompt).
    `loss_of_step(step)` draws its batch from the same generator and returns the loss; it
    runs under autocast (see `autocast_dtype`) while the LoRA weights and Adam stay fp32.
    The adapter records the pipeline (`pipeline_config(pipe, kind)`), then the job's config.
    The pipeline's UNet is left bit-identical.
    """
    device = next(pipe.unet.parameters()).device
    key = "upscale_config" if kind == "sd-x4-upscaler" else "edit_config"
    record = {**pipeline_config(pipe, kind), key: job.to_dict(), **(extra or {})}

    def context():  # each step's autocast
        return mixed_precision_context(device, job.mixed_precision)

    return training.train_lora(
        pipe.unet, loss_of_step, job.lora, generator, prior_config=record, callback=callback, step_context=context
    )


def pad_to_multiple(image: torch.Tensor, multiple: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Reflect-pad (B, C, H, W) at the bottom/right to multiples of `multiple`; returns it and the original (H, W)."""
    height, width = image.shape[-2:]
    pad_h, pad_w = -height % multiple, -width % multiple
    if pad_h or pad_w:
        mode = "reflect" if pad_h < height and pad_w < width else "replicate"
        image = F.pad(image, (0, pad_w, 0, pad_h), mode=mode)
    return image, (height, width)

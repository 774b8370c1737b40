"""Text-guided editing with ADIR and the Stable Diffusion inpainting model: adapt on the prompt's neighbours, then inpaint (paper Sec. 4.4).

The neighbours are retrieved with the encoder's text embedding of the prompt (the caller's
job: see `pipelines/edit.py`). Adaptation follows Stable Diffusion's inpainting training
scheme: each crop gets a random mask (a quarter of them mask everything, the rest a few
random boxes) and the UNet sees [noisy latents, mask at latent size, latents of the masked
image], exactly as the pipeline feeds it; the prompt is the caption of every neighbour and
is replaced by the empty prompt with probability `prompt_dropout`, the classifier-free
dropout that lets the pipeline guide with the prompt at sampling time.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from adir_ops.adaptation.adapter import Adapter
from adir_ops.adaptation.config import AdaptConfig
from adir_ops.adaptation.training import neighbour_pool, random_crops
from adir_ops.latent.stable_diffusion import (
    check_pipeline_settings,
    encode_latents,
    latent_loss,
    latent_shape,
    mixed_precision_context,
    pad_to_multiple,
    prompt_embeddings,
    train_lora,
    unet_downsampling,
)
from adir_ops.rng import Generators, as_generator_list

MAX_BOXES = 3


@dataclass(frozen=True)
class EditConfig:
    """Settings of the inpainting model's adaptation and of the edit.

    lora: rank/alpha/lr/steps/batch of the LoRA (paper: rank 16, alpha 8, batch 6).
    crop_size: side of the neighbour crops (SD 2 inpainting was trained at 512).
    prompt_dropout: probability that a crop is trained with the empty prompt (SD: 0.1).
    full_mask_probability: probability that a crop's mask covers everything (SD inpainting: 0.25).
    steps, guidance_scale: the pipeline's sampling (its defaults: 50, 7.5).
    mixed_precision: 'auto' (bf16 autocast on CUDA, fp32 elsewhere), 'bf16', 'fp16' or 'no'.
    """

    lora: AdaptConfig = field(default_factory=AdaptConfig)
    crop_size: int = 512
    prompt_dropout: float = 0.1
    full_mask_probability: float = 0.25
    steps: int = 50
    guidance_scale: float = 7.5
    mixed_precision: str = "auto"

    def __post_init__(self):
        check_pipeline_settings(self)
        if not isinstance(self.crop_size, int) or self.crop_size < 8 or self.crop_size % 8:
            raise ValueError(f"EditConfig.crop_size must be a positive multiple of 8; got {self.crop_size!r}")
        for name in ("prompt_dropout", "full_mask_probability"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"EditConfig.{name} must be in [0, 1]; got {value!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def random_masks(
    batch: int, size: int, generator: torch.Generator, *, full_mask_probability: float = 0.25
) -> torch.Tensor:
    """(batch, 1, size, size) masks, 1 = to repaint: everything with `full_mask_probability`, else 1-3 random boxes.

    Each box spans 10-60% of each side. A fixed number of draws per mask, so mask i is the
    same whatever the others were.
    """
    u = torch.rand(
        (batch, 2 + 4 * MAX_BOXES), generator=generator, device=generator.device, dtype=torch.float64
    ).tolist()
    masks = torch.zeros(batch, 1, size, size)
    for i, draws in enumerate(u):
        if draws[0] < full_mask_probability:
            masks[i] = 1.0
            continue
        for b in range(1 + int(draws[1] * MAX_BOXES)):
            u_h, u_w, u_top, u_left = draws[2 + 4 * b : 6 + 4 * b]
            h, w = max(1, round((0.1 + 0.5 * u_h) * size)), max(1, round((0.1 + 0.5 * u_w) * size))
            top, left = int(u_top * (size - h + 1)), int(u_left * (size - w + 1))
            masks[i, :, top : top + h, left : left + w] = 1.0
    return masks


def adapt_inpainting(
    pipe,
    neighbours: torch.Tensor | Sequence[torch.Tensor],
    prompt: str,
    config: EditConfig,
    generator: torch.Generator,
    *,
    callback: Callable[[int, float], None] | None = None,
) -> Adapter:
    """A LoRA of the inpainting UNet trained on random-mask inpainting of the neighbours (on [-1, 1]) captioned `prompt`.

    Every draw (LoRA init, crops, masks, prompt dropout, timestep, VAE posterior samples,
    diffusion noise) comes from `generator` in a fixed order.
    """
    if int(pipe.unet.config.in_channels) != 9:
        raise ValueError(
            f"this UNet takes {pipe.unet.config.in_channels} input channels; an inpainting UNet takes 9 "
            "(latents, mask, masked-image latents): load an inpainting model such as stabilityai/stable-diffusion-2-inpainting"
        )
    size = config.crop_size
    if (size // pipe.vae_scale_factor) % unet_downsampling(pipe):
        raise ValueError(
            f"crop_size {size} must be a multiple of {pipe.vae_scale_factor * unet_downsampling(pipe)} for this pipeline"
        )
    device = next(pipe.unet.parameters()).device
    pool = neighbour_pool(neighbours, 3, size, device)
    batch = config.lora.batch_size
    draw = generator.device
    num_train = int(pipe.scheduler.config.num_train_timesteps)
    lat_shape = latent_shape(pipe, batch, size, size)
    conditioned, unconditioned = prompt_embeddings(pipe, [prompt, ""]).split(1)

    def loss_of_step(step: int) -> torch.Tensor:
        images = random_crops(pool, batch, size, generator, hflip=config.lora.hflip)
        masks = random_masks(batch, size, generator, full_mask_probability=config.full_mask_probability).to(device)
        dropped = torch.rand((batch,), generator=generator, device=draw) < config.prompt_dropout
        t = int(torch.randint(num_train, (1,), generator=generator, device=draw))
        vae_noise = torch.randn(lat_shape, generator=generator, device=draw)
        masked_noise = torch.randn(lat_shape, generator=generator, device=draw)
        noise = torch.randn(lat_shape, generator=generator, device=draw).to(device)
        with torch.no_grad():
            latents = encode_latents(pipe.vae, images, vae_noise).float()
            # The pipeline's convention: the masked image keeps the pixels where mask < 0.5.
            masked_latents = encode_latents(pipe.vae, images * (masks < 0.5), masked_noise)
        mask_latent = F.interpolate(masks, size=lat_shape[-2:])  # nearest, as the pipeline resizes it
        text = torch.where(dropped.to(device).view(-1, 1, 1), unconditioned, conditioned)
        condition = (mask_latent, masked_latents.float())
        return latent_loss(pipe, latents, noise, t, condition, encoder_hidden_states=text.to(pipe.unet.dtype))

    return train_lora(pipe, loss_of_step, config, generator, "sd-inpainting", {"prompt": prompt}, callback)


@torch.no_grad()
def edit(
    pipe,
    image01: torch.Tensor,
    mask01: torch.Tensor,
    prompt: str,
    config: EditConfig,
    generator: Generators,
    *,
    adapter: Adapter | None = None,
) -> torch.Tensor:
    """Repaint the masked region (mask 1) of images (B, 3, H, W) in [0, 1] according to `prompt`; same size, [0, 1].

    One image at a time, image i drawing from generator i. Sides that are not a multiple of
    the VAE's factor are reflect-padded, with the padding kept (mask 0), and cropped back.
    Without an adapter this is exactly `pipe(prompt, image, mask_image, ...)`.
    """
    if image01.ndim != 4 or image01.shape[1] != 3:
        raise ValueError(f"edit needs images as (B, 3, H, W) in [0, 1]; got shape {tuple(image01.shape)}")
    if (
        mask01.ndim != 4
        or mask01.shape[1] != 1
        or mask01.shape[-2:] != image01.shape[-2:]
        or mask01.shape[0] not in (1, image01.shape[0])
    ):
        raise ValueError(
            f"edit needs a mask (1 or B, 1, H, W) of the image's size {tuple(image01.shape[-2:])}; got {tuple(mask01.shape)}"
        )
    generators = as_generator_list(generator, image01.shape[0])
    device = next(pipe.unet.parameters()).device
    masks = mask01.expand(image01.shape[0], -1, -1, -1)
    outputs = []
    with adapter.applied(pipe) if adapter is not None else contextlib.nullcontext(pipe):
        for image, mask, g in zip(image01, masks, generators):
            # The pipeline refuses sides that are not multiples of 8, whatever its VAE.
            padded, (h, w) = pad_to_multiple(image[None].clamp(0, 1), math.lcm(8, int(pipe.vae_scale_factor)))
            mask_padded = F.pad(mask[None], (0, padded.shape[-1] - w, 0, padded.shape[-2] - h))
            with mixed_precision_context(device, config.mixed_precision):
                out = pipe(
                    prompt=prompt,
                    image=padded.to(device),
                    mask_image=mask_padded.to(device),
                    height=padded.shape[-2],
                    width=padded.shape[-1],
                    num_inference_steps=config.steps,
                    guidance_scale=config.guidance_scale,
                    generator=g,
                    output_type="pt",
                ).images
            outputs.append(out[..., :h, :w].float())
    return torch.cat(outputs)

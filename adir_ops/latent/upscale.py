"""ADIR with the Stable Diffusion x4 upscaler: LoRA adaptation in latent space on the neighbours, then the adapted upscale (paper Sec. 4.1).

Adaptation step (one shared timestep per batch, as for Guided Diffusion): random
`crop_size` crops of the K neighbours are downsampled by A (MATLAB bicubic x4, the `sr4`
operator); the low-res crop, noised to the upscaler's `noise_level` by its low-res DDPM
scheduler, is the conditioning image concatenated to the latent, exactly as the pipeline
feeds it; the high-res crop is VAE-encoded and noised by the pipeline's scheduler; the
loss is the MSE to the scheduler's target (v for the real upscaler). The adapted pipeline
then upscales y as usual. adir_ops.pipeline.ADIRUpscalePipeline runs both behind the pipeline's one call.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

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

FACTOR = 4  # the upscaler's scale, and the SR factor of the operator that makes its training pairs


@dataclass(frozen=True)
class UpscaleConfig:
    """Settings of the SD x4 upscaler's adaptation and upscale.

    lora: rank/alpha/lr/steps/batch of the LoRA (paper: rank 16, alpha 8, batch 6).
    crop_size: side of the high-res neighbour crops (a multiple of 4 x the UNet's downscale).
    noise_level: the upscaler's low-res noise augmentation, used when adapting and
        upscaling alike (the pipeline's default, 20).
    prompt: the text condition; empty for plain super-resolution.
    steps, guidance_scale: the pipeline's sampling. With the empty prompt, classifier-free
        guidance only mixes two equal predictions, so 1 (off) gives the same image at half cost.
    mixed_precision: 'auto' (bf16 autocast on CUDA, fp32 elsewhere), 'bf16', 'fp16' or 'no'.
    """

    lora: AdaptConfig = field(default_factory=AdaptConfig)
    crop_size: int = 256
    noise_level: int = 20
    prompt: str = ""
    steps: int = 75
    guidance_scale: float = 1.0
    mixed_precision: str = "auto"

    def __post_init__(self):
        check_pipeline_settings(self)
        if not isinstance(self.crop_size, int) or self.crop_size < FACTOR or self.crop_size % FACTOR:
            raise ValueError(
                f"UpscaleConfig.crop_size must be a positive multiple of {FACTOR}; got {self.crop_size!r}"
            )
        if not isinstance(self.noise_level, int) or self.noise_level < 0:
            raise ValueError(f"UpscaleConfig.noise_level must be an integer >= 0; got {self.noise_level!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _check_noise_level(pipe, config: UpscaleConfig) -> None:
    max_level = int(pipe.config.max_noise_level)
    if config.noise_level > max_level:
        raise ValueError(f"noise_level {config.noise_level} exceeds this upscaler's max_noise_level {max_level}")


def _check_crop_size(pipe, config: UpscaleConfig) -> None:
    unet_factor = unet_downsampling(pipe)
    if (config.crop_size // FACTOR) % unet_factor:
        raise ValueError(
            f"crop_size {config.crop_size} gives {config.crop_size // FACTOR} px low-res crops; this upscaler's UNet "
            f"needs multiples of {unet_factor}: use a crop_size that is a multiple of {FACTOR * unet_factor}"
        )


def default_crop_size(pipe, largest: int = 256) -> int:
    """The largest high-res crop up to `largest` px that the upscaler was built for (its UNet sample size x 4)."""
    return min(largest, FACTOR * int(pipe.unet.config.sample_size))


def adapt_upscaler(
    pipe,
    neighbours: torch.Tensor | Sequence[torch.Tensor],
    config: UpscaleConfig,
    generator: torch.Generator,
    *,
    callback: Callable[[int, float], None] | None = None,
) -> Adapter:
    """A LoRA of the upscaler's UNet trained on (A z_k crop, z_k crop) pairs of the neighbours z_k (on [-1, 1]).

    Every draw (LoRA init, crops, timestep, low-res noise, VAE posterior sample, diffusion
    noise) comes from `generator` in a fixed order. Returns an Adapter whose file loads into
    the pipeline with `pipe.load_lora_weights`.
    """
    from adir_ops.physics.operators import make_operator

    _check_noise_level(pipe, config)
    _check_crop_size(pipe, config)
    device = next(pipe.unet.parameters()).device
    size = config.crop_size
    pool = neighbour_pool(neighbours, 3, size, device)
    A = make_operator("sr4", image_size=(size, size)).to(device)
    text = prompt_embeddings(pipe, [config.prompt])
    batch = config.lora.batch_size
    draw = generator.device
    num_train = int(pipe.scheduler.config.num_train_timesteps)
    lat_shape = latent_shape(pipe, batch, size, size)
    low_res_level = torch.full((batch,), config.noise_level, dtype=torch.long, device=device)
    encoder_states = text.expand(batch, -1, -1)

    def loss_of_step(step: int) -> torch.Tensor:
        high = random_crops(pool, batch, size, generator, hflip=config.lora.hflip)
        t = int(torch.randint(num_train, (1,), generator=generator, device=draw))
        low_noise = torch.randn((batch, 3, size // FACTOR, size // FACTOR), generator=generator, device=draw)
        vae_noise = torch.randn(lat_shape, generator=generator, device=draw)
        noise = torch.randn(lat_shape, generator=generator, device=draw).to(device)
        with torch.no_grad():
            low = pipe.low_res_scheduler.add_noise(A.A(high), low_noise.to(device), low_res_level)
            latents = encode_latents(pipe.vae, high, vae_noise).float()
        return latent_loss(
            pipe, latents, noise, t, (low,), encoder_hidden_states=encoder_states, class_labels=low_res_level
        )

    return train_lora(pipe, loss_of_step, config, generator, "sd-x4-upscaler", callback=callback)


@torch.no_grad()
def upscale(
    pipe,
    y01: torch.Tensor,
    config: UpscaleConfig,
    generator: Generators,
    *,
    adapter: Adapter | None = None,
) -> torch.Tensor:
    """x4 super-resolution of y (B, 3, h, w) in [0, 1] by the pipeline (with `adapter` applied); (B, 3, 4h, 4w) in [0, 1].

    One image at a time, image i drawing from generator i, so a result does not depend on
    its batch. y is reflect-padded to what the VAE and UNet need and the output cropped
    back. Without an adapter this is exactly `pipe(prompt, image=y, ...)`.
    """
    if y01.ndim != 4 or y01.shape[1] != 3:
        raise ValueError(f"upscale needs y as (B, 3, h, w) in [0, 1]; got shape {tuple(y01.shape)}")
    generators = as_generator_list(generator, y01.shape[0])
    _check_noise_level(pipe, config)
    device = next(pipe.unet.parameters()).device
    # The latent is y-sized: the UNet needs multiples of its downscale, and the pipeline's
    # image processor would resize y to a multiple of the VAE's factor.
    multiple = math.lcm(unet_downsampling(pipe), int(pipe.vae_scale_factor))
    outputs = []
    with adapter.applied(pipe) if adapter is not None else contextlib.nullcontext(pipe):
        for image, g in zip(y01, generators):
            padded, (h, w) = pad_to_multiple(image[None].clamp(0, 1), multiple)
            with mixed_precision_context(device, config.mixed_precision):
                out = pipe(
                    prompt=config.prompt,
                    image=padded.to(device),
                    num_inference_steps=config.steps,
                    guidance_scale=config.guidance_scale,
                    noise_level=config.noise_level,
                    generator=g,
                    output_type="pt",
                ).images
            outputs.append(out[..., : FACTOR * h, : FACTOR * w].float())
    return torch.cat(outputs)

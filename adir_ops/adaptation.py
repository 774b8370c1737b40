"""LoRA adaptation of a diffusion prior on its retrieved neighbours (ADIR paper, eqs. 17-18): the crops and the training loop.

The LoRA layers themselves are in `adir_ops.lora`, the trained Adapter and its file in
`adir_ops.adapter`, the loss in `adir_ops.losses`; their public names are importable from
here too, where callers have always found them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from adir_ops.adapter import WEIGHT_NAME, AdaptConfig, Adapter
from adir_ops.lora import ADAPTER_NAME, ModuleState, fresh_lora, inject_lora, lora_state, lora_targets, remove_lora
from adir_ops.losses import eps_mse_loss

__all__ = [
    "WEIGHT_NAME",
    "AdaptConfig",
    "Adapter",
    "LoraTraining",
    "adapt",
    "eps_mse_loss",
    "lora_targets",
    "neighbour_pool",
    "random_crops",
    "train_lora",
    "upscale_to_resolution",
]


# ------------------------------------------------------------------ neighbours
def upscale_to_resolution(image: torch.Tensor, resolution: int) -> torch.Tensor:
    """Bicubic-upscale (C, H, W) so its shortest side is `resolution`, keeping the aspect; larger images pass.

    Antialiasing is off because it only matters when shrinking; the result is clamped
    to [-1, 1] since bicubic overshoots at edges.
    """
    _, height, width = image.shape
    shortest = min(height, width)
    if shortest >= resolution:
        return image
    scale = resolution / shortest
    size = (max(resolution, round(height * scale)), max(resolution, round(width * scale)))
    upscaled = F.interpolate(image[None], size=size, mode="bicubic", align_corners=False, antialias=False)[0]
    return upscaled.clamp(-1.0, 1.0)


def neighbour_pool(images, channels: int, resolution: int, device: torch.device) -> list[torch.Tensor]:
    """The K neighbours checked ((C, H, W) floats on the [-1, 1] scale) and upscaled so a `resolution` crop fits."""
    if isinstance(images, torch.Tensor):
        if images.ndim != 4:
            raise ValueError(f"images as one tensor must be (K, C, H, W); got shape {tuple(images.shape)}")
        images = list(images)
    images = list(images)
    if not images:
        raise ValueError("adapt needs at least one neighbour image; got an empty sequence")
    pool = []
    for i, image in enumerate(images):
        if not isinstance(image, torch.Tensor) or image.ndim != 3:
            shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
            raise ValueError(f"neighbour image {i} must be a (C, H, W) tensor; got {shape}")
        if image.shape[0] != channels:
            raise ValueError(
                f"neighbour image {i} has {image.shape[0]} channels; the prior expects {channels} "
                "(convert it, e.g. replicate a gray image to 3 channels, before adapting)"
            )
        if image.shape[1] == 0 or image.shape[2] == 0:
            raise ValueError(f"neighbour image {i} is empty: shape {tuple(image.shape)}")
        if not image.is_floating_point():
            raise ValueError(f"neighbour image {i} has dtype {image.dtype}; pass floats on the [-1, 1] scale")
        image = image.detach().to(device=device, dtype=torch.float32)
        if not torch.isfinite(image).all():
            raise ValueError(f"neighbour image {i} holds NaN or infinite values")
        low, high = float(image.min()), float(image.max())
        # A generous margin: resized neighbours overshoot [-1, 1] a little; [0, 255] does not pass.
        if low < -1.5 or high > 1.5:
            raise ValueError(
                f"neighbour image {i} spans [{low:.3g}, {high:.3g}]; images must be on the prior's [-1, 1] scale "
                "(map [0, 1] images with x * 2 - 1)"
            )
        pool.append(upscale_to_resolution(image, resolution))
    return pool


def random_crops(pool, batch: int, size: int, generator: torch.Generator, *, hflip: bool = False) -> torch.Tensor:
    """`batch` random size x size crops of random pool images (optionally flipped), every draw from `generator`."""
    draw = generator.device
    which = torch.randint(len(pool), (batch,), generator=generator, device=draw).tolist()
    # One uniform triple per crop: top offset, left offset, flip; floor(u * n) picks 0..n-1.
    uniforms = torch.rand((batch, 3), generator=generator, device=draw, dtype=torch.float64).tolist()
    crops = []
    for index, (u_top, u_left, u_flip) in zip(which, uniforms):
        image = pool[index]
        height, width = image.shape[-2:]
        top = min(int(u_top * (height - size + 1)), height - size)
        left = min(int(u_left * (width - size + 1)), width - size)
        crop = image[:, top : top + size, left : left + size]
        if hflip and u_flip < 0.5:
            crop = crop.flip(-1)
        crops.append(crop)
    return torch.stack(crops)


def _draw_batch(pool, config: AdaptConfig, resolution: int, num_timesteps: int, generator: torch.Generator):
    """Random crops, one shared timestep and the noise, every draw from `generator` in a fixed order."""
    draw = generator.device
    crops = random_crops(pool, config.batch_size, resolution, generator, hflip=config.hflip)
    t = int(torch.randint(num_timesteps, (1,), generator=generator, device=draw))
    noise = torch.randn(tuple(crops.shape), generator=generator, device=draw)
    return crops, t, noise


# ------------------------------------------------------------------ a LoRA in training
class LoraTraining:
    """A fresh LoRA on every Conv2d of `unet`, trainable in fp32 over a frozen base, for one `with` block.

    What every adaptation shares (pixel space here, latent space in `adir_ops.sd_upscale` and
    `adir_ops.sd_editing`): the LoRA init is drawn from `generator` at construction, inside
    the block `parameters` are the LoRA weights to optimise, and `adapter(...)` snapshots them.
    On exit the UNet is bit-identical to before, with its modes and flags restored. The
    LoRA weights stay fp32 even when the UNet or an autocast region runs in 16 bits.
    """

    def __init__(self, unet: nn.Module, config: AdaptConfig, generator: torch.Generator):
        self.unet, self.config = unet, config
        self.targets = lora_targets(unet)
        self._initial = fresh_lora(unet, self.targets, config.lora_rank, generator)
        self._layers: dict[str, nn.Module] | None = None
        self.parameters: list[nn.Parameter] = []

    def __enter__(self) -> LoraTraining:
        self._snapshot = ModuleState.capture(self.unet)
        try:
            self._layers = inject_lora(
                self.unet, self.targets, self.config.lora_rank, self.config.lora_alpha, self._initial
            )
            for p in self.unet.parameters():
                p.requires_grad_(False)
            self.parameters = [
                p
                for layer in self._layers.values()
                for p in (layer.lora_A[ADAPTER_NAME].weight, layer.lora_B[ADAPTER_NAME].weight)
            ]
            for p in self.parameters:
                p.requires_grad_(True)
            self.unet.train()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def adapter(self, prior_config: dict[str, Any], losses: Sequence[float]) -> Adapter:
        """The trained LoRA as an Adapter (CPU fp32 copies); call inside the block."""
        if self._layers is None:
            raise RuntimeError("LoraTraining.adapter() must be called inside the `with` block")
        return Adapter(
            lora_state(self._layers), tuple(self.targets), self.config, dict(prior_config), [float(x) for x in losses]
        )

    def __exit__(self, *exc_info) -> None:
        remove_lora(self.unet)
        self._snapshot.restore(self.unet)
        self._layers, self.parameters = None, []


# ------------------------------------------------------------------ training (eq. 18)
def adapt(
    prior,
    images,
    config: AdaptConfig = AdaptConfig(),
    generator: torch.Generator | None = None,
    *,
    callback: Callable[[int, float], None] | None = None,
) -> Adapter:
    """Train a fresh LoRA on random crops of the neighbours with the eps-MSE loss (paper eq. 18).

    `images`: the K neighbours, (C, H, W) tensors on the [-1, 1] scale, any sizes (or one
    (K, C, H, W) tensor). Every random draw — LoRA init, which images form a batch, crop
    offsets, the timestep shared by the batch, the noise — comes from `generator`, so one
    generator gives one adapter. `callback(step, loss)` is called after each step
    (0-based). The prior's UNet is left bit-identical, with its modes and flags restored.
    """
    device = next(prior.unet.parameters()).device
    resolution = prior.resolution
    pool = neighbour_pool(images, prior.channels, resolution, device)

    def loss_of_step(step: int) -> torch.Tensor:
        # valid_timesteps: all train steps for a diffusion UNet, a denoiser's trained noise range for a DenoiserPrior;
        # denoising_loss: the eps MSE of eq. 18 for a UNet, the denoiser's own training loss for a denoiser.
        x0, t, noise = _draw_batch(pool, config, resolution, prior.valid_timesteps, generator)
        return prior.denoising_loss(x0, t, noise.to(device))

    return train_lora(prior.unet, loss_of_step, config, generator, prior_config=prior.config, callback=callback)


def train_lora(
    unet: nn.Module,
    loss_of_step: Callable[[int], torch.Tensor],
    config: AdaptConfig,
    generator: torch.Generator,
    *,
    prior_config: dict[str, Any],
    callback: Callable[[int, float], None] | None = None,
    step_context: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
) -> Adapter:
    """Adam on a fresh LoRA of every Conv2d of `unet`, `config.steps` times: the loop every adaptation shares.

    `loss_of_step(step)` draws its batch from `generator` and returns the loss; it runs
    inside `step_context()` (e.g. autocast) while the LoRA weights and Adam stay fp32.
    The LoRA init is drawn first from the same generator. The UNet is left bit-identical.
    """
    if not isinstance(config, AdaptConfig):
        raise TypeError(f"config must be an AdaptConfig; got {type(config).__name__}")
    if not isinstance(generator, torch.Generator):
        raise TypeError(
            "adaptation needs an explicit torch.Generator (e.g. adir_ops.rng.generator_for(seed, image_id))"
        )
    losses: list[torch.Tensor] = []
    with LoraTraining(unet, config, generator) as lora:
        optimizer = torch.optim.Adam(lora.parameters, lr=config.learning_rate)
        # enable_grad: callers often run workers under no_grad; training needs autograd back.
        with torch.enable_grad():
            for step in range(config.steps):
                with step_context():
                    loss = loss_of_step(step)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                losses.append(loss.detach())
                if callback is not None:
                    callback(step, float(loss.detach()))
        curve = torch.stack(losses).float().cpu().tolist() if losses else []
        return lora.adapter(prior_config, curve)

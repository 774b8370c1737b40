"""LoRA adaptation of a diffusion prior on its retrieved neighbours (ADIR paper, eqs. 17-18): the crops and the training loop.

The LoRA layers themselves are in `adir_ops.adaptation.lora`, the trained Adapter and its file in
`adir_ops.adaptation.adapter`, the loss in `adir_ops.adaptation.losses`, the settings in `adir_ops.adaptation.config`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from adir_ops.adaptation.adapter import Adapter
from adir_ops.adaptation.config import AdaptConfig
from adir_ops.adaptation.lora import (
    ADAPTER_NAME,
    ModuleState,
    PerImageLoRAConv2d,
    fresh_lora,
    inject_lora,
    lora_state,
    lora_targets,
    refuse_if_adapted,
    remove_lora,
    replace_module,
)

__all__ = [
    "LoraTraining",
    "adapt",
    "adapt_many",
    "check_warm_start",
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


def check_warm_start(initial: Adapter, targets: Sequence[str], config: AdaptConfig) -> None:
    """Refuse a warm-start adapter that does not fit: other layers or another rank/alpha."""
    if not isinstance(initial, Adapter):
        raise TypeError(f"a warm start needs an Adapter; got {type(initial).__name__}")
    if tuple(initial.targets) != tuple(targets):
        raise ValueError("the warm-start adapter was trained on other layers of another prior; start cold instead")
    if (initial.config.lora_rank, initial.config.lora_alpha) != (config.lora_rank, config.lora_alpha):
        raise ValueError(
            f"the warm-start adapter has rank {initial.config.lora_rank}, alpha {initial.config.lora_alpha}; "
            f"this adaptation uses rank {config.lora_rank}, alpha {config.lora_alpha}"
        )


# ------------------------------------------------------------------ a LoRA in training
class LoraTraining:
    """A fresh LoRA on every Conv2d of `unet`, trainable in fp32 over a frozen base, for one `with` block.

    What the latent-space adaptations share (`adir_ops.latent.upscale` and
    `adir_ops.latent.editing`): the LoRA init is drawn from `generator` at construction, inside
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
    initial: Adapter | None = None,
) -> Adapter:
    """Train a fresh LoRA on random crops of the neighbours with the prior's denoising loss (paper eq. 18).

    `images`: the K neighbours, (C, H, W) tensors on the [-1, 1] scale, any sizes (or one
    (K, C, H, W) tensor). Every random draw — LoRA init, which images form a batch, crop
    offsets, the timestep shared by the batch, the noise — comes from `generator`, so one
    generator gives one adapter. `callback(step, loss)` is called after each step
    (0-based). The prior's UNet is left bit-identical, with its modes and flags restored.
    `initial`: warm start from this adapter's weights (same targets and rank) instead of a fresh LoRA.
    It is `adapt_many` with one image: the same adapter an image gets in a batch of any size.
    """
    if not isinstance(generator, torch.Generator):
        raise TypeError(
            "adaptation needs an explicit torch.Generator (e.g. adir_ops.rng.generator_for(seed, image_id))"
        )
    each_step = None if callback is None else (lambda step, losses: callback(step, losses[0]))
    return adapt_many(prior, [images], config, [generator], initial=[initial], callback=each_step)[0]


def adapt_many(
    prior,
    image_sets: Sequence[Sequence[torch.Tensor]],
    config: AdaptConfig,
    generators: Sequence[torch.Generator],
    *,
    initial: Sequence[Adapter | None] | None = None,
    callback: Callable[[int, list[float]], None] | None = None,
) -> list[Adapter]:
    """One adapter per image set, trained together; adapter g is what `adapt(prior, image_sets[g], config, generators[g])` gives.

    Every draw of image g (LoRA init, crops, timestep, noise) comes from `generators[g]` in the
    order `adapt` draws them. `initial[g]`: warm start of image g from that adapter.
    `callback(step, losses)` after each step, one loss per image. The prior's UNet is left
    bit-identical, with its modes and flags restored.

    Batched (beyond the paper): every Conv2d of the prior runs once over the G images' crop
    batches, one after another, and each image's low-rank update runs on its own crops with
    its own weights (`PerImageLoRAConv2d`). The loss is the sum of the G per-image losses, so
    adapter g's gradient is image g's alone, and Adam, being elementwise, steps the stacked
    weights as it would each adapter alone: an adapter does not depend on G (bit for bit on
    the default denoiser; a diffusers UNet's batched kernels round differently, ~1e-5).
    """
    if not isinstance(config, AdaptConfig):
        raise TypeError(f"config must be an AdaptConfig; got {type(config).__name__}")
    groups = len(image_sets)
    if groups < 1:
        raise ValueError("adapt_many needs at least one image set")
    generators = list(generators)
    if len(generators) != groups or not all(isinstance(g, torch.Generator) for g in generators):
        raise ValueError(f"adapt_many needs one torch.Generator per image set: {groups} sets, {len(generators)} given")
    initial = list(initial) if initial is not None else [None] * groups
    if len(initial) != groups:
        raise ValueError(f"initial: {len(initial)} adapters for {groups} image sets")
    unet = prior.unet
    refuse_if_adapted(unet)
    device = next(unet.parameters()).device
    pools = [neighbour_pool(images, prior.channels, prior.resolution, device) for images in image_sets]
    targets = lora_targets(unet)
    states = []
    for start, generator in zip(initial, generators):
        if start is None:
            states.append(fresh_lora(unet, targets, config.lora_rank, generator))
        else:
            check_warm_start(start, targets, config)
            states.append(start.state_dict)
    snapshot = ModuleState.capture(unet)
    layers: dict[str, PerImageLoRAConv2d] = {}
    losses: list[torch.Tensor] = []
    try:
        for p in unet.parameters():
            p.requires_grad_(False)
        scale = config.lora_alpha / config.lora_rank
        for name in targets:
            a = torch.stack([s[f"{name}.lora_A.weight"] for s in states]).to(device, torch.float32)
            b = torch.stack([s[f"{name}.lora_B.weight"] for s in states]).to(device, torch.float32)
            layers[name] = PerImageLoRAConv2d(unet.get_submodule(name), a.clone(), b.clone(), scale)
            replace_module(unet, name, layers[name])
        unet.train()
        parameters = [p for layer in layers.values() for p in (layer.lora_A["weight"], layer.lora_B["weight"])]
        optimizer = torch.optim.Adam(parameters, lr=config.learning_rate)
        with torch.enable_grad():
            for _ in range(config.steps):
                draws = [
                    _draw_batch(pool, config, prior.resolution, prior.valid_timesteps, g)
                    for pool, g in zip(pools, generators)
                ]
                x0 = torch.cat([crops for crops, _, _ in draws]).to(device)
                noise = torch.cat([n for _, _, n in draws]).to(device)
                t = torch.tensor([t for _, t, _ in draws], device=device).repeat_interleave(config.batch_size)
                per_group = prior.denoising_loss(x0, t, noise, per_image=True).view(groups, -1).mean(1)
                optimizer.zero_grad(set_to_none=True)
                # The sum: adapter g's gradient is image g's own loss gradient, whatever G is.
                per_group.sum().backward()
                optimizer.step()
                losses.append(per_group.detach())
                if callback is not None:
                    callback(len(losses) - 1, per_group.detach().cpu().tolist())
    finally:
        for name, layer in layers.items():
            replace_module(unet, name, layer.base)
        snapshot.restore(unet)
    curves = torch.stack(losses).T.float().cpu().tolist() if losses else [[] for _ in range(groups)]
    adapters = []
    for g in range(groups):
        state = {}
        for name, layer in layers.items():
            state[f"{name}.lora_A.weight"] = layer.lora_A["weight"][g].detach().to("cpu", torch.float32).clone()
            state[f"{name}.lora_B.weight"] = layer.lora_B["weight"][g].detach().to("cpu", torch.float32).clone()
        adapters.append(Adapter(state, tuple(targets), config, dict(prior.config), [float(x) for x in curves[g]]))
    return adapters


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

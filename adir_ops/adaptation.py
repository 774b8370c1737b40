"""LoRA adaptation of a diffusion prior on its retrieved neighbours (ADIR paper, eqs. 17-18)."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import struct
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "WEIGHT_NAME",
    "AdaptConfig",
    "Adapter",
    "LoraTraining",
    "adapt",
    "lora_targets",
    "neighbour_pool",
    "random_crops",
    "upscale_to_resolution",
]

# The adapter name peft files it under inside the UNet while it is applied.
ADAPTER_NAME = "adir"
# Key prefix of the UNet's entries in a diffusers pipeline LoRA file (`unet.<module>.lora_A.weight`).
PREFIX = "unet"
# diffusers.loaders.lora_base.LORA_ADAPTER_METADATA_KEY: the LoraConfig kwargs, JSON, keys prefixed like the weights.
LORA_ADAPTER_METADATA_KEY = "lora_adapter_metadata"
ADIR_METADATA_KEY = "adir_adapter"
# diffusers' default LoRA file name, for callers who save into a folder that diffusers will search.
WEIGHT_NAME = "pytorch_lora_weights.safetensors"
_FORMAT_VERSION = 1


@dataclass(frozen=True)
class AdaptConfig:
    """Settings of one adaptation run; the defaults are the paper's (Section 4, Guided Diffusion)."""

    lora_rank: int = 16
    lora_alpha: float = 8
    learning_rate: float = 1e-4
    steps: int = 400
    batch_size: int = 6
    # Horizontal flips of the crops: natural images are mirror-symmetric in distribution,
    # so flips double the few (K = 20..50) neighbours for free. Off by default because
    # the paper trains without them.
    hflip: bool = False

    def __post_init__(self) -> None:
        def integer(name: str, minimum: int) -> None:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ValueError(f"AdaptConfig.{name} must be an integer >= {minimum}; got {value!r}")

        def positive(name: str) -> None:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise ValueError(f"AdaptConfig.{name} must be a finite number > 0; got {value!r}")

        integer("lora_rank", 1)
        positive("lora_alpha")
        positive("learning_rate")
        integer("steps", 0)
        integer("batch_size", 1)
        if not isinstance(self.hflip, bool):
            raise ValueError(f"AdaptConfig.hflip must be True or False; got {self.hflip!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> AdaptConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown AdaptConfig field(s) {unknown}; known fields: {sorted(known)}")
        return cls(**values)


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


# ------------------------------------------------------------------ LoRA in and out of the UNet
def lora_targets(unet: nn.Module) -> list[str]:
    """Names of every nn.Conv2d of `unet`: the paper adapts all convolutions.

    Selected by type, not by a name pattern: `conv.*` would also catch diffusers'
    GroupNorm `conv_norm_out`, which peft refuses.
    """
    _refuse_if_adapted(unet)
    names = [name for name, module in unet.named_modules() if isinstance(module, nn.Conv2d)]
    if not names:
        raise ValueError(f"{type(unet).__name__} has no nn.Conv2d layer to adapt")
    return names


def _refuse_if_adapted(unet: nn.Module) -> None:
    from peft.tuners.tuners_utils import BaseTunerLayer

    if hasattr(unet, "peft_config") or any(isinstance(m, BaseTunerLayer) for m in unet.modules()):
        raise RuntimeError(
            "prior.unet already carries a LoRA adapter (an `adapter.applied(prior)` block is open, or peft "
            "layers were injected elsewhere); exit that block before adapting or applying another adapter"
        )


def _fresh_lora(unet: nn.Module, targets: Sequence[str], rank: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """peft's LoRA init (A ~ kaiming-uniform(a=sqrt 5), B = 0), drawn from `generator` instead of the global RNG.

    B = 0 makes the adapted UNet start exactly equal to the base.
    """
    state = {}
    for name in targets:
        conv = unet.get_submodule(name)
        if conv.out_channels % conv.groups or rank % conv.groups:
            raise ValueError(
                f"conv {name!r} has groups={conv.groups}; peft needs lora_rank ({rank}) divisible by it"
            )
        kernel_h, kernel_w = conv.kernel_size
        bound = 1.0 / math.sqrt(conv.in_channels * kernel_h * kernel_w)
        a = torch.rand((rank, conv.in_channels, kernel_h, kernel_w), generator=generator, device=generator.device)
        state[f"{name}.lora_A.weight"] = ((a * 2 - 1) * bound).cpu()
        state[f"{name}.lora_B.weight"] = torch.zeros(conv.out_channels, rank // conv.groups, 1, 1)
    return state


@dataclass
class _ModuleState:
    """What injecting peft layers changes on a module tree besides the layers themselves."""

    requires_grad: dict[str, bool]
    training: dict[str, bool]

    @classmethod
    def capture(cls, unet: nn.Module) -> _ModuleState:
        return cls(
            {name: p.requires_grad for name, p in unet.named_parameters()},
            {name: m.training for name, m in unet.named_modules()},
        )

    def restore(self, unet: nn.Module) -> None:
        for name, p in unet.named_parameters():
            p.requires_grad_(self.requires_grad[name])
        for name, m in unet.named_modules():
            m.training = self.training[name]


def _inject(unet: nn.Module, targets: Sequence[str], rank: int, alpha: float, state: dict[str, torch.Tensor]) -> dict[str, nn.Module]:
    """Wrap each target conv in a peft LoRA layer holding `state`; returns the layers by name."""
    from peft import LoraConfig, inject_adapter_in_model, set_peft_model_state_dict
    from peft.tuners.lora import LoraLayer

    device = next(unet.parameters()).device
    lora_config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=list(targets), lora_dropout=0.0, bias="none")
    # low_cpu_mem_usage: the layers are created on the meta device and then take our
    # tensors, so peft never draws from the global RNG.
    inject_adapter_in_model(lora_config, unet, adapter_name=ADAPTER_NAME, low_cpu_mem_usage=True)
    loaded = set_peft_model_state_dict(
        unet,
        {k: v.to(device=device, dtype=torch.float32, copy=True) for k, v in state.items()},
        adapter_name=ADAPTER_NAME,
        low_cpu_mem_usage=True,
    )
    missing = [k for k in loaded.missing_keys if "lora_" in k]
    unexpected = [k for k in loaded.unexpected_keys if "lora_" in k]
    layers = {name: m for name, m in unet.named_modules() if isinstance(m, LoraLayer)}
    if missing or unexpected or set(layers) != set(targets):
        raise ValueError(
            f"LoRA weights do not fit this UNet: missing {missing[:3]}, unexpected {unexpected[:3]}, "
            f"{len(layers)} layers wrapped for {len(targets)} targets"
        )
    for layer in layers.values():
        # peft casts adapters to the base dtype; keep them fp32 so fp16 UNets train stably.
        layer.lora_A[ADAPTER_NAME].float()
        layer.lora_B[ADAPTER_NAME].float()
    return layers


def _remove(unet: nn.Module) -> None:
    """Put every wrapped base layer back in its place and drop peft's bookkeeping attribute."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    for name, module in list(unet.named_modules()):
        if isinstance(module, BaseTunerLayer):
            parent_name, _, child = name.rpartition(".")
            parent = unet.get_submodule(parent_name) if parent_name else unet
            setattr(parent, child, module.get_base_layer())
    if hasattr(unet, "peft_config"):
        del unet.peft_config


def _layer_state(layers: dict[str, nn.Module]) -> dict[str, torch.Tensor]:
    state = {}
    for name, layer in layers.items():
        state[f"{name}.lora_A.weight"] = layer.lora_A[ADAPTER_NAME].weight.detach().to("cpu", torch.float32).clone()
        state[f"{name}.lora_B.weight"] = layer.lora_B[ADAPTER_NAME].weight.detach().to("cpu", torch.float32).clone()
    return state


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
        self._initial = _fresh_lora(unet, self.targets, config.lora_rank, generator)
        self._layers: dict[str, nn.Module] | None = None
        self.parameters: list[nn.Parameter] = []

    def __enter__(self) -> LoraTraining:
        self._snapshot = _ModuleState.capture(self.unet)
        try:
            self._layers = _inject(self.unet, self.targets, self.config.lora_rank, self.config.lora_alpha, self._initial)
            for p in self.unet.parameters():
                p.requires_grad_(False)
            self.parameters = [
                p for layer in self._layers.values() for p in (layer.lora_A[ADAPTER_NAME].weight, layer.lora_B[ADAPTER_NAME].weight)
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
        return Adapter(_layer_state(self._layers), tuple(self.targets), self.config, dict(prior_config), [float(x) for x in losses])

    def __exit__(self, *exc_info) -> None:
        _remove(self.unet)
        self._snapshot.restore(self.unet)
        self._layers, self.parameters = None, []


# ------------------------------------------------------------------ the adapter
@dataclass(eq=False)
class Adapter:
    """A trained LoRA for one prior: weights (peft keys, CPU fp32), targets, its configs and loss curve.

    The saved file is a diffusers pipeline LoRA file for the `unet` component. A diffusers
    model with PeftAdapterMixin loads it with
    `model.load_lora_adapter(path, prefix="unet", use_safetensors=True)`; without
    `use_safetensors=True` diffusers reads the tensors but skips the metadata and takes
    lora_alpha = r, which doubles the LoRA's effect at the default rank 16, alpha 8.
    """

    state_dict: dict[str, torch.Tensor]
    targets: tuple[str, ...]
    config: AdaptConfig
    prior_config: dict[str, Any]
    losses: list[float] = field(default_factory=list)

    @property
    def num_parameters(self) -> int:
        return sum(t.numel() for t in self.state_dict.values())

    @contextlib.contextmanager
    def applied(self, prior) -> Iterator[Any]:
        """Run `prior` with this LoRA inside the block; on exit the UNet is exactly as it was."""
        unet = prior.unet
        _refuse_if_adapted(unet)
        for name in self.targets:
            try:
                module = unet.get_submodule(name)
            except AttributeError:
                module = None
            a, b = self.state_dict[f"{name}.lora_A.weight"], self.state_dict[f"{name}.lora_B.weight"]
            if (
                not isinstance(module, nn.Conv2d)
                or a.shape[1] != module.in_channels
                or tuple(a.shape[2:]) != tuple(module.kernel_size)
                or b.shape[0] != module.out_channels
            ):
                raise ValueError(
                    f"this adapter was trained on another UNet (prior config {self.prior_config}): "
                    f"layer {name!r} of this prior is {module!r}, not a Conv2d that fits the LoRA weights "
                    f"{tuple(a.shape)} / {tuple(b.shape)}"
                )
        snapshot = _ModuleState.capture(unet)
        try:
            layers = _inject(unet, self.targets, self.config.lora_rank, self.config.lora_alpha, self.state_dict)
            for layer in layers.values():
                for p in layer.parameters():
                    p.requires_grad_(False)
            yield prior
        finally:
            _remove(unet)
            snapshot.restore(unet)

    # ---------------------------------------------------------- safetensors
    def to_bytes(self) -> bytes:
        """The safetensors file: `unet.`-prefixed peft keys and diffusers' LoRA metadata, plus ours."""
        from safetensors.torch import save

        lora_kwargs = {
            "r": self.config.lora_rank,
            "lora_alpha": self.config.lora_alpha,
            "target_modules": list(self.targets),
            "lora_dropout": 0.0,
            "bias": "none",
        }
        metadata = {
            "format": "pt",
            LORA_ADAPTER_METADATA_KEY: json.dumps({f"{PREFIX}.{k}": v for k, v in lora_kwargs.items()}, indent=2, sort_keys=True),
            ADIR_METADATA_KEY: json.dumps(
                {
                    "version": _FORMAT_VERSION,
                    "adapt_config": self.config.to_dict(),
                    "prior_config": self.prior_config,
                    "losses": list(self.losses),
                },
                default=str,
            ),
        }
        tensors = {f"{PREFIX}.{k}": v.contiguous() for k, v in self.state_dict.items()}
        return save(tensors, metadata=metadata)

    @classmethod
    def from_bytes(cls, data: bytes, source: str = "<bytes>") -> Adapter:
        from safetensors.torch import load

        try:
            header_len = struct.unpack("<Q", data[:8])[0]
            metadata = json.loads(data[8 : 8 + header_len]).get("__metadata__") or {}
            tensors = load(data)
        except Exception as err:  # safetensors raises its own error types
            raise ValueError(f"{source} is not a readable safetensors file: {err}") from err
        if ADIR_METADATA_KEY not in metadata or LORA_ADAPTER_METADATA_KEY not in metadata:
            raise ValueError(
                f"{source} has no {ADIR_METADATA_KEY!r}/{LORA_ADAPTER_METADATA_KEY!r} metadata: it was not written "
                "by Adapter.save; adapt again or pass a file that Adapter.save wrote"
            )
        ours = json.loads(metadata[ADIR_METADATA_KEY])
        if ours.get("version") != _FORMAT_VERSION:
            raise ValueError(f"{source} is adapter format version {ours.get('version')}; this code reads {_FORMAT_VERSION}")
        lora = {k.removeprefix(f"{PREFIX}."): v for k, v in json.loads(metadata[LORA_ADAPTER_METADATA_KEY]).items()}
        config = AdaptConfig.from_dict(ours["adapt_config"])
        if lora.get("r") != config.lora_rank or lora.get("lora_alpha") != config.lora_alpha:
            raise ValueError(f"{source}: LoRA metadata (r, alpha) disagrees with its adapt_config {config}")
        targets = tuple(lora["target_modules"])
        state = {}
        for key, value in tensors.items():
            if not key.startswith(f"{PREFIX}.") or not key.endswith((".lora_A.weight", ".lora_B.weight")):
                raise ValueError(f"{source}: unexpected key {key!r}; expected '{PREFIX}.<module>.lora_A|lora_B.weight'")
            state[key.removeprefix(f"{PREFIX}.")] = value.to(torch.float32)
        expected = {f"{t}.lora_{ab}.weight" for t in targets for ab in ("A", "B")}
        if set(state) != expected:
            raise ValueError(f"{source}: weights do not match target_modules (missing {sorted(expected - set(state))[:3]})")
        return cls(state, targets, config, ours["prior_config"], [float(x) for x in ours["losses"]])

    def save(self, path: str) -> None:
        """Write a local .safetensors file (remote storage: write `to_bytes()` through fsspec)."""
        if not str(path).endswith(".safetensors"):
            raise ValueError(f"adapter path {path!r} must end in .safetensors (e.g. .../{WEIGHT_NAME})")
        with open(path, "wb") as f:
            f.write(self.to_bytes())

    @classmethod
    def load(cls, path: str) -> Adapter:
        with open(path, "rb") as f:
            return cls.from_bytes(f.read(), source=str(path))


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
    # Coefficients from the float64 schedule on the CPU: no device sync per step.
    abar = prior.alphas_cumprod.detach().cpu()

    def loss_of_step(step: int) -> torch.Tensor:
        x0, t, noise = _draw_batch(pool, config, resolution, prior.num_train_timesteps, generator)
        noise = noise.to(device)
        x_t = math.sqrt(float(abar[t])) * x0 + math.sqrt(1.0 - float(abar[t])) * noise
        timesteps = torch.full((x0.shape[0],), t, device=device, dtype=torch.long)
        return F.mse_loss(prior.eps(x_t, timesteps).float(), noise)

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
        raise TypeError("adaptation needs an explicit torch.Generator (e.g. adir_ops.rng.generator_for(seed, image_id))")
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

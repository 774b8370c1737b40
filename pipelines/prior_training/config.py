"""The settings of one prior-training run (`TrainConfig`) and the diffusers UNet2DModel they describe."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

import torch

# Fields that define the model or its draws; a resumed run must not change them.
FIXED_ON_RESUME = (
    "resolution",
    "block_out_channels",
    "layers_per_block",
    "attention",
    "batch_size",
    "learning_rate",
    "warmup_steps",
    "ema_decay",
    "seed",
    "num_train_timesteps",
    "validation_size",
    "init",
)


@dataclass(frozen=True)
class TrainConfig:
    """Model size, optimisation and bookkeeping of one prior-training run."""

    resolution: int = 64
    block_out_channels: tuple[int, ...] = (16, 32, 64, 128)
    layers_per_block: int = 2
    attention: bool = True  # self-attention at the lowest-resolution level and in the middle block
    batch_size: int = 16
    learning_rate: float = 1e-3
    warmup_steps: int = 100
    max_steps: int = 100_000
    max_minutes: float | None = None
    ema_decay: float = 0.995
    checkpoint_every: int = 100
    seed: int = 0
    num_train_timesteps: int = 1000
    validation_size: int = 32
    num_samples: int = 16
    sample_steps: int = 100
    fp16_weights: bool = False
    # Where the steps run, and the UNet forward/backward in bfloat16 autocast (CUDA; fp32 masters and Adam).
    # Neither is fixed on resume: a run may start on a CPU and go on on a lent GPU.
    device: str = "cpu"
    bf16: bool = False
    # A prior folder (`export`'s layout) whose UNet weights start the run instead of a random init.
    init: str | None = None

    def __post_init__(self) -> None:
        if self.resolution % 2 ** (len(self.block_out_channels) - 1):
            raise ValueError(
                f"resolution {self.resolution} must be divisible by 2^{len(self.block_out_channels) - 1} "
                f"(one halving per level of block_out_channels {self.block_out_channels})"
            )
        for name in ("batch_size", "max_steps", "checkpoint_every", "layers_per_block", "num_train_timesteps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1; got {getattr(self, name)}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1) (0: no EMA); got {self.ema_decay}")
        if self.bf16 and not self.device.startswith("cuda"):
            raise ValueError(f"bf16 is for CUDA devices (--device cuda); got --device {self.device}")
        if any(c % 8 for c in self.block_out_channels):
            raise ValueError(
                f"block_out_channels must be multiples of 8 (GroupNorm of 8 groups); got {self.block_out_channels}"
            )

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items() if k in known}
        return cls(**values)


def build_unet(config: TrainConfig, seed: int):
    """The diffusers UNet2DModel of `config`, weights initialised from `seed`.

    torch's initialisers take no generator, so initialisation runs under a forked global RNG:
    seeded here, and the caller's global RNG state is left as it was.
    """
    from diffusers import UNet2DModel

    levels = len(config.block_out_channels)
    down = ["DownBlock2D"] * levels
    up = ["UpBlock2D"] * levels
    if config.attention:
        down[-1], up[0] = "AttnDownBlock2D", "AttnUpBlock2D"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return UNet2DModel(
            sample_size=config.resolution,
            in_channels=3,
            out_channels=3,
            layers_per_block=config.layers_per_block,
            block_out_channels=tuple(config.block_out_channels),
            down_block_types=tuple(down),
            up_block_types=tuple(up),
            norm_num_groups=8,
            attention_head_dim=min(32, config.block_out_channels[-1]),
            add_attention=config.attention,  # the middle block's
        )

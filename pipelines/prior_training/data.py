"""The training patches: loaded from a folder, drawn into batches (with flips, timesteps and noise), and one fixed validation batch."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from pipelines.prior_training.config import TrainConfig

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")


def load_patches(folder: str | os.PathLike, resolution: int) -> torch.Tensor:
    """Every image under `folder` (sorted paths) as a uint8 (N, 3, R, R) tensor."""
    from PIL import Image

    paths = sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
    if not paths:
        raise FileNotFoundError(
            f"no .png/.jpg patches under {folder}; write them with: python -m pipelines.default_assets OUT (then use OUT/prior-train)"
        )
    patches = []
    for p in paths:
        with Image.open(p) as im:
            if im.size != (resolution, resolution):
                raise ValueError(
                    f"{p} is {im.size[0]}x{im.size[1]}; every training patch must be {resolution}x{resolution} "
                    f"(pass --resolution {im.size[0]} if that is the prior's size)"
                )
            patches.append(np.asarray(im.convert("RGB")))
    return torch.from_numpy(np.stack(patches)).permute(0, 3, 1, 2).contiguous()


def to_model_range(patches: torch.Tensor) -> torch.Tensor:
    return patches.float() / 127.5 - 1.0


def draw_batch(data: torch.Tensor, batch_size: int, num_timesteps: int, generator: torch.Generator):
    """Patch indices, horizontal flips, timesteps and noise, in this fixed order from `generator`."""
    idx = torch.randint(len(data), (batch_size,), generator=generator)
    flip = torch.rand(batch_size, generator=generator) < 0.5
    t = torch.randint(num_timesteps, (batch_size,), generator=generator)
    noise = torch.randn((batch_size, *data.shape[1:]), generator=generator)
    x0 = to_model_range(data[idx])
    # Photographs are mirror-symmetric in distribution; upside-down ones are not.
    x0 = torch.where(flip.view(-1, 1, 1, 1), x0.flip(-1), x0)
    return x0, t, noise


def validation_batch(data: torch.Tensor, config: TrainConfig):
    """A fixed batch (patches, flips, evenly spaced timesteps, noise) from its own seed, the same every run."""
    generator = torch.Generator().manual_seed(config.seed + 1)
    n = min(config.validation_size, len(data))
    idx = torch.randperm(len(data), generator=generator)[:n]
    t = torch.linspace(0, config.num_train_timesteps - 1, n).round().long()
    noise = torch.randn((n, *data.shape[1:]), generator=generator)
    return to_model_range(data[idx]), t, noise

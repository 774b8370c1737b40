"""Tiled priors: eps of an image of any size from a UNet trained at one resolution, by blended overlapping tiles.

Tiling lives in the prior, not in the sampler: `TiledPrior.eps` splits a full-size x_t into
overlapping tiles of the prior's resolution, runs them through the UNet `tile_batch` at a
time and blends the predictions with a window whose weights sum to one at every pixel. The
sampler, the operator and the guidance (eq. 16) then all see the whole image at every step,
so measurement consistency is global, there are no seams to hide afterwards, and every
random draw is made at full size from the image's own generator: results cannot depend on
how tiles are batched. The UNets used here (diffusers UNet2DModel, Guided Diffusion) apply
GroupNorm per sample, so a tile's prediction does not depend on the other tiles in its batch
(up to the last bit of batched conv kernels).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

SMALL_IMAGE_MODES = ("pad", "native")


@dataclass(frozen=True)
class TilingConfig:
    """How a full-size image is cut into prior-resolution tiles.

    tile: tile side in pixels (None: the prior's resolution).
    overlap: minimum overlap of neighbouring tiles in pixels (None: a quarter of the tile);
        the blend ramps over this many pixels.
    tile_batch: tiles per UNet call (memory vs throughput; never changes the result).
    small_images: an image side shorter than the tile is either reflect-padded to the tile
        and cropped back ("pad": the UNet always sees its training size), or run at its own
        size rounded up to the UNet's downsampling factor ("native": cheaper, but the UNet sees
        a size it was not trained at).
    """

    tile: int | None = None
    overlap: int | None = None
    tile_batch: int = 4
    small_images: str = "pad"

    def __post_init__(self):
        if self.tile is not None and self.tile < 1:
            raise ValueError(f"TilingConfig.tile must be >= 1 (or None for the prior's resolution); got {self.tile}")
        if self.overlap is not None and self.overlap < 0:
            raise ValueError(f"TilingConfig.overlap must be >= 0; got {self.overlap}")
        if self.tile_batch < 1:
            raise ValueError(f"TilingConfig.tile_batch must be >= 1; got {self.tile_batch}")
        if self.small_images not in SMALL_IMAGE_MODES:
            raise ValueError(
                f"TilingConfig.small_images must be one of {SMALL_IMAGE_MODES}; got {self.small_images!r}"
            )


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Evenly spaced tile offsets covering [0, length) with at least `overlap` pixels shared."""
    if length <= tile:
        return [0]
    stride = tile - overlap
    count = math.ceil((length - overlap) / stride)
    # Spread the tiles evenly rather than stacking the remainder in the last one, so every
    # overlap is at least `overlap` and all blends look alike.
    return [round(i * (length - tile) / (count - 1)) for i in range(count)]


def blend_window(tile: int, overlap: int, dtype=torch.float32, device=None) -> torch.Tensor:
    """1-D trapezoid: a linear ramp over `overlap` pixels at each end, strictly positive.

    Positive everywhere so the normalising sum never vanishes; blended predictions are a
    convex combination at every pixel, so a constant prediction stays exactly constant.
    """
    i = torch.arange(tile, dtype=torch.float64)
    ramp = torch.minimum((i + 1) / (overlap + 1), (tile - i) / (overlap + 1)).clamp(max=1.0)
    return ramp.to(dtype=dtype, device=device)


def _unet_downscale_factor(prior: nn.Module) -> int:
    """Total downsampling of the UNet, i.e. what a native-size input must be a multiple of."""
    config = getattr(prior.unet, "config", None)
    blocks = getattr(config, "block_out_channels", None) if config is not None else None
    if blocks is not None:
        return 2 ** (len(blocks) - 1)
    channel_mult = getattr(prior.unet, "channel_mult", None)
    if channel_mult is not None:
        return 2 ** (len(channel_mult) - 1)
    return 32  # Guided Diffusion 256: five downsamplings; safe upper bound for unknown UNets


def _pad(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Pad (B, C, H, W) at the bottom/right to (height, width), reflecting where it can."""
    pad_h, pad_w = height - x.shape[-2], width - x.shape[-1]
    if pad_h == 0 and pad_w == 0:
        return x
    # Reflection needs the pad to be shorter than the side; tiny sides fall back to edge replication.
    mode = "reflect" if pad_h < x.shape[-2] and pad_w < x.shape[-1] else "replicate"
    return F.pad(x, (0, pad_w, 0, pad_h), mode=mode)


class TiledPrior(nn.Module):
    """A DiffusionPrior whose `eps` accepts images of any size (see the module docstring).

    Exposes the wrapped prior's interface (`eps`, `betas`, `alphas_cumprod`, `resolution`,
    `channels`, `kind`, `config`, `unet`, `posterior_variance`), so it drops into the sampler.
    A LoRA applied to `prior.unet` (`adapter.applied(prior)`) is seen through the wrapper.
    """

    def __init__(self, prior: nn.Module, config: TilingConfig | None = None):
        super().__init__()
        self.prior = prior
        self.tiling = config or TilingConfig()
        self.tile = int(self.tiling.tile or prior.resolution)
        self.overlap = int(self.tiling.overlap if self.tiling.overlap is not None else self.tile // 4)
        if self.overlap >= self.tile:
            raise ValueError(f"tile overlap ({self.overlap}) must be smaller than the tile ({self.tile})")
        self.downscale_factor = _unet_downscale_factor(prior)

    # ------------------------------------------------------------ prior interface
    @property
    def unet(self) -> nn.Module:
        return self.prior.unet

    @property
    def betas(self) -> torch.Tensor:
        return self.prior.betas

    @property
    def alphas_cumprod(self) -> torch.Tensor:
        return self.prior.alphas_cumprod

    @property
    def resolution(self) -> int:
        return self.prior.resolution

    @property
    def channels(self) -> int:
        return self.prior.channels

    @property
    def kind(self) -> str:
        return self.prior.kind

    @property
    def num_train_timesteps(self) -> int:
        return self.prior.num_train_timesteps

    @property
    def valid_timesteps(self) -> int:
        return self.prior.valid_timesteps

    @property
    def device(self) -> torch.device:
        return self.prior.device

    @property
    def dtype(self) -> torch.dtype:
        return self.prior.dtype

    @property
    def config(self) -> dict:
        return {
            **self.prior.config,
            "tiling": {
                "tile": self.tile,
                "overlap": self.overlap,
                "tile_batch": self.tiling.tile_batch,
                "small_images": self.tiling.small_images,
            },
        }

    def posterior_variance(self) -> torch.Tensor:
        return self.prior.posterior_variance()

    # ------------------------------------------------------------------- tiling
    def tile_shape(self, height: int, width: int) -> tuple[int, int]:
        """Tile size used for an image of this size (smaller than `tile` only in native mode)."""

        def side(length: int) -> int:
            if length >= self.tile or self.tiling.small_images == "pad":
                return self.tile
            f = self.downscale_factor
            return max(f, math.ceil(length / f) * f)

        return side(height), side(width)

    def tile_count(self, height: int, width: int) -> int:
        """Number of UNet evaluations per image per step at this size."""
        th, tw = self.tile_shape(height, width)
        ov_h, ov_w = min(self.overlap, th - 1), min(self.overlap, tw - 1)
        return len(tile_starts(max(height, th), th, ov_h)) * len(tile_starts(max(width, tw), tw, ov_w))

    def eps(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Predicted noise for a full-size x_t (B, C, H, W) at integer train timesteps t."""
        batch, _, height, width = x.shape
        t = torch.as_tensor(t, device=x.device)
        if t.ndim == 0:
            t = t.expand(batch)
        th, tw = self.tile_shape(height, width)
        padded = _pad(x, max(height, th), max(width, tw))
        ph, pw = padded.shape[-2:]
        # In native mode a tile can be smaller than `overlap`; the blend then ramps over the tile.
        ov_h, ov_w = min(self.overlap, th - 1), min(self.overlap, tw - 1)
        rows, cols = tile_starts(ph, th, ov_h), tile_starts(pw, tw, ov_w)
        if len(rows) == 1 and len(cols) == 1:
            # One tile covers the image: no blending, so an exact-size image gets the plain eps.
            return self.prior.eps(padded, t)[..., :height, :width]

        window = (
            blend_window(th, ov_h, x.dtype, x.device)[:, None] * blend_window(tw, ov_w, x.dtype, x.device)[None, :]
        )
        out = torch.zeros((batch, self.channels, ph, pw), dtype=x.dtype, device=x.device)
        weight = torch.zeros((ph, pw), dtype=x.dtype, device=x.device)
        for r in rows:
            for c in cols:
                weight[r : r + th, c : c + tw] += window
        places = [(b, r, c) for b in range(batch) for r in rows for c in cols]
        for start in range(0, len(places), self.tiling.tile_batch):
            chunk = places[start : start + self.tiling.tile_batch]
            tiles = torch.stack([padded[b, :, r : r + th, c : c + tw] for b, r, c in chunk])
            predictions = self.prior.eps(tiles, t[[b for b, _, _ in chunk]])
            for (b, r, c), prediction in zip(chunk, predictions):
                out[b, :, r : r + th, c : c + tw] += prediction * window
        return (out / weight)[..., :height, :width]

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.eps(x, t)

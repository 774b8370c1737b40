"""Full-reference metrics of large images in row strips: the whole image's exact value, memory bounded by the strip.

pyiqa computes on the whole tensor: SSIM holds ~1 KB per pixel while it computes (a 2000 x 1500
image: 2.9 GB), and PSNR a few image-sized float temporaries (a 24 MP photo: over a GiB). Above
`strip_pixels(metric)` pixels both run strip by strip, so a large image costs a bounded amount whatever its size.
"""

from __future__ import annotations

import torch

STRIP_PIXELS = 2**18
# SSIM is the mean of a per-pixel map over 11 x 11 windows ('valid' filtering, no downsampling in
# pyiqa's default): row strips that overlap by 10 rows give that exact map, strip by strip.
WINDOWED = {"ssim": 11, "ssimc": 11}  # pyiqa name -> window side
# PSNR is 10 log10(1 / (MSE + eps)) of a per-pixel mean (on RGB, or on Y for psnry): each strip's
# value gives back its MSE, and the row-weighted MSEs give the whole image's.
MEAN_SQUARED = {"psnr", "psnry"}
PSNR_EPS = 1e-8  # pyiqa's, added to the MSE inside the log


def strip_pixels(pyiqa_name: str) -> int | None:
    """Pixels per strip for this metric (None: never in strips). PSNR holds a few floats per pixel, not
    SSIM's ~1 KB, so its strips are 16x larger: fewer metric calls for the same bound (~200 MB)."""
    if pyiqa_name in WINDOWED:
        return STRIP_PIXELS
    return 16 * STRIP_PIXELS if pyiqa_name in MEAN_SQUARED else None


def in_strips(pyiqa_name: str, x: torch.Tensor) -> bool:
    """Whether this metric on this image runs in strips."""
    pixels = strip_pixels(pyiqa_name)
    return pixels is not None and x.shape[-2] * x.shape[-1] > pixels


def metric_in_strips(pyiqa_name: str, metric, x: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """The metric's per-image values (n,) over row strips, equal to the whole image's."""
    if pyiqa_name in WINDOWED:
        return _windowed(metric, x, reference, WINDOWED[pyiqa_name])
    return _psnr(metric, x, reference)


def _windowed(metric, x: torch.Tensor, reference: torch.Tensor, window: int) -> torch.Tensor:
    """A windowed mean-map metric (SSIM) over row strips that overlap by window - 1 rows: the exact
    value (each strip's map rows are a disjoint part of the whole map, weighted by their count)."""
    height = x.shape[-2]
    map_rows = height - window + 1
    step = max(1, STRIP_PIXELS // x.shape[-1])
    total = torch.zeros(x.shape[0], dtype=torch.float64, device=x.device)
    for top in range(0, map_rows, step):
        rows = min(step, map_rows - top)
        part = metric(x[..., top : top + rows + window - 1, :], reference[..., top : top + rows + window - 1, :])
        total += part.detach().double().reshape(-1) * rows
    return total / map_rows


def _psnr(metric, x: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """PSNR (data range 1) from disjoint row strips: each strip's MSE recovered from its value, averaged by rows."""
    height = x.shape[-2]
    step = max(1, strip_pixels("psnr") // x.shape[-1])
    total = torch.zeros(x.shape[0], dtype=torch.float64, device=x.device)
    for top in range(0, height, step):
        rows = min(step, height - top)
        value = metric(x[..., top : top + rows, :], reference[..., top : top + rows, :]).detach().double().reshape(-1)
        total += (10.0 ** (-value / 10.0) - PSNR_EPS) * rows
    return 10.0 * torch.log10(1.0 / (total / height + PSNR_EPS))

"""The kernels of the SR and blur operators as plain matrices and taps: what operators.py builds and estimate.py scores."""

from __future__ import annotations

import math

import torch

from adir_ops.physics.separable import area_matrix, gaussian_down_matrix, gaussian_taps, imresize_matrix

# Downscaling kernels of SuperResolution (what a real low-resolution photo may have been made with):
# MATLAB's antialiased bicubic (DIV2K; the paper's), the box mean of each f x f block (OpenCV INTER_AREA,
# PIL BOX), a Gaussian of std (f - 1) / 2 then sampling (scikit-image's anti-aliased rescale).
SR_KERNELS = ("bicubic", "area", "gaussian")


def sr_matrix(in_length: int, factor: int, kernel: str) -> torch.Tensor:
    """One axis of SuperResolution's A for a kernel of SR_KERNELS: (ceil(in/f), in), rows summing to 1."""
    if kernel == "bicubic":
        return imresize_matrix(in_length, math.ceil(in_length / factor), 1 / factor)
    if kernel == "area":
        return area_matrix(in_length, factor)
    if kernel == "gaussian":
        return gaussian_down_matrix(in_length, factor, (factor - 1) / 2)
    raise ValueError(f"unknown super-resolution kernel {kernel!r}; choose one of {', '.join(SR_KERNELS)}")


# Blur kernels of KernelBlur, each with one width: a Gaussian's std, a box's side, a motion line's length
# (horizontal or vertical: other angles are not separable, and not estimated).
BLUR_KERNELS = ("gaussian", "box", "motion-h", "motion-v")


def blur_taps(kernel: str, width: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(row taps, column taps) of a KernelBlur kernel: the 2-D kernel is their outer product."""
    identity = torch.ones(1, dtype=torch.float64)
    if kernel == "gaussian":
        taps = gaussian_taps(width)
        return taps, taps
    if kernel not in BLUR_KERNELS:
        raise ValueError(f"unknown blur kernel {kernel!r}; choose one of {', '.join(BLUR_KERNELS)}")
    if width != int(width) or width < 1 or width % 2 == 0:
        raise ValueError(f"a {kernel} kernel needs an odd whole width in pixels (a centred filter); got {width}")
    line = torch.full((int(width),), 1.0 / width, dtype=torch.float64)
    if kernel == "box":
        return line, line
    # motion-h smears along a row (the column taps), motion-v along a column.
    return (identity, line) if kernel == "motion-h" else (line, identity)

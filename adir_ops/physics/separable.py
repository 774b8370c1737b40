"""Operators that act as A x = R x C^T per channel: MATLAB's bicubic resize and the reflect-padded box blur as small matrices.

Their Gram matrix A A^T = (R R^T) (x) (C C^T) has an eigenbasis from the two small factors,
which gives adir_ops.physics.linear_operator's Gram solves in closed form.
"""

from __future__ import annotations

import math

import torch


def _cubic(t: torch.Tensor) -> torch.Tensor:
    """Keys' cubic with a = -0.5, MATLAB imresize's 'bicubic' kernel (support |t| <= 2)."""
    a = t.abs()
    inner = (1.5 * a**3 - 2.5 * a**2 + 1) * (a <= 1)
    outer = (-0.5 * a**3 + 2.5 * a**2 - 4 * a + 2) * ((a > 1) & (a <= 2))
    return inner + outer


def imresize_matrix(in_length: int, out_length: int, scale: float, *, antialiasing: bool = True) -> torch.Tensor:
    """The (out_length, in_length) float64 matrix of MATLAB `imresize` along one axis, bicubic.

    A line-by-line port of imresize.m's `contributions`: pixel-centre alignment, the kernel
    stretched by 1/scale when shrinking (antialiasing), rows normalised to sum 1, and the
    periodic symmetric boundary (edge pixel repeated) that also covers sides shorter
    than the kernel.
    """
    if scale < 1 and antialiasing:
        kernel, width = (lambda t: scale * _cubic(scale * t)), 4.0 / scale
    else:
        kernel, width = _cubic, 4.0
    u = torch.arange(1, out_length + 1, dtype=torch.float64) / scale + 0.5 * (1 - 1 / scale)  # 1-based centres
    left = torch.floor(u - width / 2)
    taps = left[:, None] + torch.arange(math.ceil(width) + 2, dtype=torch.float64)
    weights = kernel(u[:, None] - taps)
    weights = weights / weights.sum(dim=1, keepdim=True)
    mirror = torch.cat([torch.arange(in_length), torch.arange(in_length).flip(0)])
    index = mirror[torch.remainder(taps.long() - 1, 2 * in_length)]
    return torch.zeros(out_length, in_length, dtype=torch.float64).scatter_add_(1, index, weights)


def box_matrix(length: int, kernel_size: int, weight: float | None = None) -> torch.Tensor:
    """The (length, length) float64 matrix of a 1-D box filter with torch's reflect padding.

    The 2-D k x k box with reflect padding is separable: blur(x) = B_h x B_w^T. `weight` is
    the 1-D tap (default 1/k); `UniformBlur` passes the square root of its 2-D filter value so
    the product matches its float32 filter exactly.
    """
    eye = torch.eye(length, dtype=torch.float64)[:, None, :]
    padded = torch.nn.functional.pad(eye, (kernel_size // 2, kernel_size // 2), mode="reflect")
    taps = torch.full((1, 1, kernel_size), 1.0 / kernel_size if weight is None else weight, dtype=torch.float64)
    return torch.nn.functional.conv1d(padded, taps)[:, 0, :].T.contiguous()


class Separable:
    """A x = R x C^T per channel, so A A^T = (R R^T) (x) (C C^T): its eigenbasis from the two small factors.

    Computed on first use and cached per device (an operator is built for one image size), so
    building an operator that only ever applies A costs no eigendecomposition.
    """

    def _gram_factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def _gram_spectrum(self):
        device = next(self.buffers()).device
        cache = self.__dict__.setdefault("_gram_cache", {})
        if device not in cache:
            rows, cols = (m.detach().to("cpu", torch.float64) for m in self._gram_factors())
            d_rows, u_rows = torch.linalg.eigh(rows @ rows.T)
            d_cols, u_cols = torch.linalg.eigh(cols @ cols.T)
            # The Gram's eigenvalues are the products d_rows[i] d_cols[j] (clamped: eigh may give -1e-17).
            d = (d_rows[:, None] * d_cols[None, :]).clamp_min(0)
            cache[device] = (u_rows.to(device), u_cols.to(device), d.to(device))
        u_r, u_c, d = cache[device]

        def to_basis(r):
            return u_r.T.to(r.dtype) @ r @ u_c.to(r.dtype)

        def from_basis(s):
            return u_r.to(s.dtype) @ s @ u_c.T.to(s.dtype)

        return to_basis, from_basis, d


def _reflect(index: torch.Tensor, length: int) -> torch.Tensor:
    """torch's 'reflect' padding (edge pixel not repeated) for any distance past the edge."""
    if length == 1:
        return torch.zeros_like(index)
    period = 2 * (length - 1)
    index = torch.remainder(index, period)
    return torch.where(index < length, index, period - index)


def conv_matrix(length: int, taps: torch.Tensor) -> torch.Tensor:
    """The (length, length) float64 matrix of a 1-D filter of odd length, centred, with reflect padding.

    `box_matrix` for any taps (a Gaussian, a motion line), and for kernels longer than the side too
    (torch's reflect padding refuses those; the mirror here bounces as often as needed).
    """
    taps = torch.as_tensor(taps, dtype=torch.float64).flatten()
    if taps.numel() % 2 == 0:
        raise ValueError(f"conv_matrix needs an odd number of taps (a centred filter); got {taps.numel()}")
    radius = taps.numel() // 2
    offsets = torch.arange(-radius, radius + 1)
    index = _reflect(torch.arange(length)[:, None] + offsets, length)
    weights = taps.expand(length, -1).contiguous()
    return torch.zeros(length, length, dtype=torch.float64).scatter_add_(1, index, weights)


def gaussian_taps(width: float) -> torch.Tensor:
    """A sampled Gaussian of std `width` pixels, out to 3 std, summing to 1 (width 0: the identity)."""
    if not width >= 0:
        raise ValueError(f"a Gaussian kernel needs a width (std in pixels) >= 0; got {width}")
    radius = math.ceil(3 * width)
    n = torch.arange(-radius, radius + 1, dtype=torch.float64)
    taps = torch.exp(-0.5 * (n / max(width, 1e-12)) ** 2)
    return taps / taps.sum()


def area_matrix(in_length: int, factor: int) -> torch.Tensor:
    """(ceil(in/f), in) float64: each output pixel the mean of its f input pixels (a short last block: of those it has).

    OpenCV's INTER_AREA and PIL's BOX at an integer factor; the same grid as imresize (LR pixel k over
    HR pixels [k f, k f + f)).
    """
    out_length = math.ceil(in_length / factor)
    block = torch.arange(in_length) // factor
    matrix = torch.zeros(out_length, in_length, dtype=torch.float64)
    matrix[block, torch.arange(in_length)] = 1.0
    return matrix / matrix.sum(dim=1, keepdim=True)


def gaussian_down_matrix(in_length: int, factor: int, width: float) -> torch.Tensor:
    """(ceil(in/f), in) float64: a Gaussian of std `width` HR pixels centred on each LR pixel's block, then sampled.

    scikit-image's anti-aliased `rescale` / `resize` (Gaussian of std (f - 1) / 2, then sampling at the
    block centres), on imresize's grid; imresize's symmetric boundary (edge pixel repeated); rows sum to 1.
    """
    out_length = math.ceil(in_length / factor)
    centres = torch.arange(out_length, dtype=torch.float64) * factor + (factor - 1) / 2
    radius = math.ceil(3 * width) + 1
    taps = torch.floor(centres)[:, None] + torch.arange(-radius, radius + 2, dtype=torch.float64)
    weights = torch.exp(-0.5 * ((taps - centres[:, None]) / width) ** 2)
    weights = weights / weights.sum(dim=1, keepdim=True)
    mirror = torch.cat([torch.arange(in_length), torch.arange(in_length).flip(0)])
    index = mirror[torch.remainder(taps.long(), 2 * in_length)]
    return torch.zeros(out_length, in_length, dtype=torch.float64).scatter_add_(1, index, weights)

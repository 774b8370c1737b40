"""Sampling a large image region by region, so memory is bounded by a setting instead of the image.

A sampler holds about a dozen image-sized tensors per step (x_t, x0-hat, its projection, the
posterior mean, the noise, ...): 12 MP is ~2 GiB of them, 24 MP twice that. When the image is
larger than `side` x `side` pixels and the task's operator is local (each pixel of y sees only
a few pixels of x: SR, deblur, colorize), the image is cut into overlapping windows, each window is
sampled with its own operator and its own window of y, and the results are blended with weights
that ramp across the overlaps (normalised to sum to one at every pixel, so there is no seam). Measurement
consistency stays local, as the sampler's projection is for these operators; the window's edge,
where its operator mirrors what lies outside, is in the overlap the blend fades out.

Each window draws from its own generator, seeded from the image's sampling stream in window order:
the result depends on the image, its seed, `side` (the result's config records it as the sampler's
`region`) and DEFAULT_OVERLAP, never on how many images run together. An image within `side` is sampled whole, as before.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from adir_ops.priors.tiling import blend_window

# Pixels of the image shared by neighbouring windows; the blend ramps across them. Far more than
# the few pixels a window's edge is wrong by (imresize's kernel, the 5x5 box).
DEFAULT_OVERLAP = 64


def _spans(length: int, side: int, overlap: int) -> list[tuple[int, int]]:
    """(start, size) of the fewest windows of at most `side` covering `length` with `overlap` shared.

    The windows are shrunk to fit evenly rather than kept at `side` with the slack piled into the
    overlaps: every pixel sampled twice is paid for, so overlaps stay near `overlap`.
    """
    if length <= side:
        return [(0, length)]
    count = -(-(length - overlap) // (side - overlap))
    size = -(-(length + (count - 1) * overlap) // count)
    return [(round(i * (length - size) / (count - 1)), size) for i in range(count)]


def windows(height: int, width: int, side: int, overlap: int, alignment: int = 1) -> list[tuple[int, int, int, int]]:
    """(top, left, height, width) of windows of at most `side` px covering the image, starts on `alignment`."""
    if side < 2 * overlap + alignment:
        raise ValueError(f"a sampling region of {side} px cannot hold an overlap of {overlap} px on each side")
    a = alignment  # the measurement's grid: one cell per `alignment` image pixels
    rows = _spans(-(-height // a), side // a, overlap // a)
    cols = _spans(-(-width // a), side // a, overlap // a)
    return [(r * a, c * a, min(h * a, height - r * a), min(w * a, width - c * a)) for r, h in rows for c, w in cols]


def sample_in_regions(
    sample: Callable[[torch.Tensor, object, torch.Generator], torch.Tensor],
    y: torch.Tensor,
    operator,
    generator: torch.Generator,
    side: int,
    overlap: int = DEFAULT_OVERLAP,
) -> torch.Tensor:
    """x0 (1, C, H, W) from `sample(y_window, window_operator, window_generator)` over the image's windows.

    `sample` returns one window's x0 in [-1, 1]. The caller checks first that the image is larger
    than `side` and that its operator is local (`regional(operator, side)`).
    """
    height, width = operator.image_size
    cells = windows(height, width, side, overlap, operator.alignment)
    # One seed per window, drawn in window order from the image's stream: reproducible and batch-free.
    seeds = torch.randint(0, 2**62, (len(cells),), generator=generator, device=generator.device).tolist()
    out = None
    for (top, left, h, w), seed in zip(cells, seeds):
        rows, cols = operator.measurement_window(top, left, h, w)
        window_operator = operator.region(top, left, h, w).to(y.device)
        part = sample(y[..., rows, cols], window_operator, torch.Generator(y.device).manual_seed(seed))
        # The tiled prior's trapezoid: positive everywhere, so the normalising sum never vanishes.
        blend = blend_window(h, overlap, part.dtype, part.device)[:, None] * blend_window(
            w, overlap, part.dtype, part.device
        )
        if out is None:
            out = part.new_zeros(part.shape[0], part.shape[1], height, width)
        out[..., top : top + h, left : left + w] += part * blend
        del part
    # The windows are every row span times every column span, so the weights' sum is a row profile times a
    # column profile: two vectors instead of an image-sized plane (96 MB at 24 MP).
    for axis, spans in ((-2, {(t, h) for t, _, h, _ in cells}), (-1, {(left, w) for _, left, _, w in cells})):
        total = out.new_zeros(out.shape[axis])
        for start, size in spans:
            total[start : start + size] += blend_window(size, overlap, out.dtype, out.device)
        out.div_(total.view(-1, 1) if axis == -2 else total)
    return out


def regional(operator, side: int | None) -> bool:
    """Whether an image of this operator is sampled region by region at this `side` (None/0: never)."""
    if not side:
        return False
    height, width = operator.image_size
    return operator.local and (height > side or width > side)

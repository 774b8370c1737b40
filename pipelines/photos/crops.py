"""Square crops of a photo: grids of boxes, overlap, and cutting a box of the ORIGINAL photo before resizing it.

A crop's pixels depend on its box alone, so "no pixel shared" between two sets is exactly
"no two boxes intersect" (what split.check_split asserts).
"""

from __future__ import annotations

import numpy as np


def grid_boxes(width: int, height: int, side: int, stride: int, around=None) -> list[tuple[int, int, int, int]]:
    """Square boxes (x0, y0, x1, y1) of `side` on a grid with `stride`, in raster order, inside the photo.

    `around` (a box): the grid is also laid from that box's edges outwards, so the room beside a
    test region is used even where the plain grid would straddle it.
    """

    def positions(length: int, lo: int | None, hi: int | None) -> list[int]:
        out = set(range(0, length - side + 1, stride))
        if lo is not None:
            out |= set(range(hi, length - side + 1, stride)) | set(range(lo - side, -1, -stride))
        return sorted(out)

    xs = positions(width, *((around[0], around[2]) if around else (None, None)))
    ys = positions(height, *((around[1], around[3]) if around else (None, None)))
    return [(x, y, x + side, y + side) for y in ys for x in xs]


def intersects(a, b) -> bool:
    """Whether two half-open boxes share a pixel."""
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def cut(photo: np.ndarray, box, resolution: int) -> np.ndarray:
    """The box cut out first, then resized to resolution x resolution, so no pixel outside it reaches the crop."""
    from PIL import Image

    x0, y0, x1, y1 = box
    patch = Image.fromarray(np.ascontiguousarray(photo[y0:y1, x0:x1]))
    if patch.size != (resolution, resolution):
        patch = patch.resize((resolution, resolution), Image.Resampling.LANCZOS)
    return np.asarray(patch)


def is_flat(photo: np.ndarray, box, flat_std: float) -> bool:
    x0, y0, x1, y1 = box
    return float(photo[y0:y1, x0:x1].std()) / 255.0 < flat_std


def pick_evenly(items: list, cap: int) -> list:
    if len(items) <= cap:
        return items
    keep = np.unique(np.round(np.linspace(0, len(items) - 1, cap)).astype(int))
    return [items[i] for i in keep]

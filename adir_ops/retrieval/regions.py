"""Regional retrieval: a large image queries the index window by window, and its neighbours are the union.

A corpus of thumbnails (Open Images in the paper, crops of photos at 64 px in the embedded default)
shows scenes and parts of scenes at thumbnail scale. A full-size photo queried whole is squeezed
into the encoder's 224 px centre square: its edges are cut and its regions average into one gist.
Queried by windows of about `region` output pixels, each part of the photo (the sky, the path, the
trees) finds corpus images like itself, and the adaptation's K neighbours cover the whole image.

The windows are the sampler's rule (adir_ops.sampling.regions.windows, no overlap) on y's own grid,
so they are equal in size and cover y evenly; an image within `region` is one window: y itself,
queried exactly as without regions.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

# The job's default (cluster.config): 0, images are queried whole: on full-size photos regions measured no better
# (docs/full-size.md, "Regional retrieval").
DEFAULT_RETRIEVAL_REGION = 0
# Output pixels. A smaller window shows texture, not content (and SR x4 leaves it 16 px of y).
MIN_RETRIEVAL_REGION = 64


def window_side(y_size: tuple[int, int], image_size: tuple[int, int], region: int) -> int:
    """The window's side on y's grid for `region` pixels of the output (y may be smaller: SR)."""
    scale = max(image_size[0] / y_size[0], image_size[1] / y_size[1])
    return max(1, round(region / scale))


def query_windows(y01: torch.Tensor, image_size: tuple[int, int], region: int) -> torch.Tensor:
    """(n, C, s, s') crops of the measurement y01 (C, h, w) to embed: y alone when `region` is 0 or covers it."""
    import torch

    from adir_ops.sampling.regions import windows

    height, width = y01.shape[-2:]
    if region <= 0:
        return y01.unsqueeze(0)
    side = window_side((height, width), image_size, region)
    cells = windows(height, width, side, 0)
    return torch.stack([y01[:, top : top + h, left : left + w] for top, left, h, w in cells])


def merge_by_rank(
    ids: np.ndarray, uris: np.ndarray, scores: np.ndarray, k: int
) -> tuple[list[str], list[str], list[float]]:
    """The first `k` distinct neighbours of n windows' (n, m) search results, taken rank by rank.

    Every window's nearest comes first (the closest of them first), then every window's second, and
    so on: each region is represented before any region gets a second neighbour. A neighbour found by
    two windows counts once, with the score of its first finding. Empty ids (an approximate index
    found fewer than m) are skipped.
    """
    seen: set[str] = set()
    out_ids: list[str] = []
    out_uris: list[str] = []
    out_scores: list[float] = []
    for rank in range(ids.shape[1]):
        for window in np.argsort(-scores[:, rank], kind="stable"):
            found = str(ids[window, rank])
            if found == "" or found in seen:
                continue
            seen.add(found)
            out_ids.append(found)
            out_uris.append(str(uris[window, rank]))
            out_scores.append(float(scores[window, rank]))
            if len(out_ids) == k:
                return out_ids, out_uris, out_scores
    return out_ids, out_uris, out_scores

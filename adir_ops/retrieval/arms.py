"""Which K corpus images adapt the prior: the paper's Table 5 arms behind one interface.

Every retriever answers `neighbours(y01, naive01, generator) -> Neighbours` for one degraded
image: `y01` the measurement (C, h, w) in [0, 1], `naive01` its plain restoration (3, H, W),
`generator` the image's own retrieval stream (only random-nn draws from it).

- `adir` (EncoderKNN): the encoder's K nearest corpus images of y (paper eq. 18's {z_k});
- `random-nn` (RandomNeighbours): K distinct corpus images drawn at random;
- `mse-nn` (PixelMSENeighbours): the K corpus thumbnails nearest in pixel MSE to the plain
  restoration (the paper's brute-force baseline; gray for colorization);
- `baseline` (NoNeighbours): no neighbours, so no adaptation.

Pure: the corpus comes in as arrays and a `search(embeddings, k)` object (index_builder's
NeighborIndex, or anything with its signature); reading them from storage is cluster's job.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

# The job's --mode, one per Table 5 arm: the one list, which cluster.config, the CLI and the demo read here,
# so this module imports torch only where an arm draws or resizes (`adir --help` stays torch-free).
MODES = ("adir", "baseline", "random-nn", "mse-nn")


@dataclass(frozen=True)
class Neighbours:
    ids: list[str] = field(default_factory=list)
    uris: list[str] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)  # adir: inner product; mse-nn: -MSE; random-nn: 0

    def __len__(self) -> int:
        return len(self.ids)


def _check_k(k: int, corpus_size: int, where: str) -> None:
    if not 1 <= k <= corpus_size:
        raise ValueError(f"k={k} but {where} holds {corpus_size} images; ask for 1 <= k <= {corpus_size}")


class NoNeighbours:
    mode = "baseline"

    def neighbours(self, y01: torch.Tensor, naive01: torch.Tensor, generator: torch.Generator) -> Neighbours:
        return Neighbours()


class GivenNeighbours:
    """A fixed list of neighbours (ids, and the uris the pipeline's fetch reads): the example's arm, or a user's own choice."""

    mode = "given"

    def __init__(self, ids: list[str], uris: list[str] | None = None):
        self.ids, self.uris = list(ids), list(uris if uris is not None else ids)
        self.k = len(self.ids)

    def neighbours(self, y01, naive01, generator) -> Neighbours:
        return Neighbours(list(self.ids), list(self.uris), [0.0] * len(self.ids))


class EncoderKNN:
    """The encoder's K nearest corpus images of y; with `region`, of y's windows (regional retrieval).

    `region` (output pixels, 0: off): an image with a side beyond it is queried window by window
    (windows of about `region` px of the output, on y's own grid, covering it evenly), and its K
    neighbours are the windows' union taken rank by rank (every window's best, then every window's
    second, ...), so each region of a large photo brings images like *it* rather than the whole
    image's centre-cropped gist. The corpus holds crops of photos at thumbnail scale; a window of a
    full-size photo shows a comparable part of a scene (adir_ops.retrieval.regions).
    """

    mode = "adir"

    def __init__(self, index, embedder, k: int, where: str = "the index", *, region: int = 0):
        _check_k(k, len(index), where)
        self.index, self.embedder, self.k, self.region = index, embedder, k, int(region)

    def neighbours(self, y01, naive01, generator) -> Neighbours:
        from adir_ops.retrieval.regions import merge_by_rank, query_windows

        crops = query_windows(y01, tuple(naive01.shape[-2:]), self.region) if self.region else y01.unsqueeze(0)
        # One search for every window: the union is ranked from K candidates per window.
        ids, uris, scores = self.index.search(self.embedder.embed_images(crops), self.k)
        return Neighbours(*merge_by_rank(ids, uris, scores, self.k))


class RandomNeighbours:
    mode = "random-nn"

    def __init__(self, ids: np.ndarray, uris: np.ndarray, k: int, where: str = "the corpus"):
        _check_k(k, len(ids), where)
        self.ids, self.uris, self.k = ids, uris, k

    def neighbours(self, y01, naive01, generator) -> Neighbours:
        import torch

        rows = torch.randperm(len(self.ids), generator=generator)[: self.k].numpy()
        return Neighbours(list(self.ids[rows]), list(self.uris[rows]), [0.0] * len(rows))


def thumbnail_of(image01: torch.Tensor, size: int) -> np.ndarray:
    """(C, H, W) in [0, 1] -> the centre-square bicubic thumbnail (size, size, 3) uint8 the corpus got."""
    import torch
    from PIL import Image

    array = image01.detach().clamp(0, 1).mul(255).round().to("cpu", torch.uint8)
    array = array.expand(3, -1, -1) if array.shape[0] == 1 else array
    img = Image.fromarray(np.ascontiguousarray(array.permute(1, 2, 0).numpy()))
    w, h = img.size
    side = min(w, h)
    box = ((w - side) / 2, (h - side) / 2, (w + side) / 2, (h + side) / 2)
    return np.asarray(img.resize((size, size), Image.Resampling.BICUBIC, box=box), dtype=np.uint8)


class PixelMSENeighbours:
    mode = "mse-nn"

    def __init__(
        self,
        ids: np.ndarray,
        uris: np.ndarray,
        thumbnails: np.ndarray,
        valid: np.ndarray,
        k: int,
        *,
        gray: bool = False,
        where: str = "the corpus",
    ):
        _check_k(k, len(ids), where)
        self.ids, self.uris, self.k, self.gray = ids, uris, k, gray
        self.size = int(thumbnails.shape[1])
        self.valid = valid
        self.features = self._features(thumbnails)

    def _features(self, thumbs: np.ndarray) -> np.ndarray:
        x = thumbs.astype(np.float32) / 255.0
        x = x.mean(axis=-1, keepdims=True) if self.gray else x
        return x.reshape(len(x), -1)

    def neighbours(self, y01, naive01, generator) -> Neighbours:
        query = self._features(thumbnail_of(naive01, self.size)[None])
        mse = ((self.features - query) ** 2).mean(axis=1)
        mse[~self.valid] = np.inf  # an unreadable corpus image can never be a neighbour
        rows = np.argsort(mse, kind="stable")[: self.k]
        rows = rows[np.isfinite(mse[rows])]
        return Neighbours(list(self.ids[rows]), list(self.uris[rows]), [float(-mse[r]) for r in rows])


# The Table 5 arms by the job's --mode, plus a given list.
RETRIEVERS = {r.mode: r for r in (EncoderKNN, NoNeighbours, RandomNeighbours, PixelMSENeighbours, GivenNeighbours)}

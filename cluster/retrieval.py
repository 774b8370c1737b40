"""Which K corpus images adapt the prior, for each of the paper's Table 5 arms (adir, random-nn, mse-nn)."""

from __future__ import annotations

import hashlib
import io
from typing import Any, Mapping

import numpy as np
import pyarrow.parquet as pq
import torch
from PIL import Image

from adir_storage import commit_bytes, fetch_many, join_url, open_fs
from cluster.images import decode_thumbnail
from cluster.results import THUMBNAILS_DIR
from index_builder.faiss_index import NeighborIndex
from index_builder.manifest import IDS_NAME, Manifest


def read_corpus_ids(index: str, storage_options: Mapping[str, Any] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(image_ids, uris) of every indexed corpus image, in index row order (OUT/ids.parquet)."""
    fs, path = open_fs(join_url(index, IDS_NAME), storage_options)
    with fs.open(path, "rb") as f:
        table = pq.read_table(f)
    return table.column("image_id").to_numpy(zero_copy_only=False), table.column("uri").to_numpy(zero_copy_only=False)


def thumbnails_url(out: str, index: str, size: int, storage_options: Mapping[str, Any] | None = None) -> str:
    """Cache location for the corpus thumbnails of one index build (its manifest fingerprints it)."""
    manifest = Manifest.read(index, storage_options)
    digest = hashlib.sha256(manifest.to_json().encode("utf-8")).hexdigest()[:16]
    return join_url(out, THUMBNAILS_DIR, f"mse-thumbnails-{size}px-{digest}.npz")


def build_corpus_thumbnails(out: str, index: str, size: int, storage_options: Mapping[str, Any] | None = None) -> str:
    """Fetch every corpus image once and store (N, size, size, 3) uint8 centre-square thumbnails; returns the URL.

    This is the paper's pixel-MSE baseline and it is deliberately brute force: one pass over
    the whole corpus (done once per index and reused by reruns and by every actor), then an
    exhaustive MSE scan per query. Fine for evaluation corpora of thousands of images; for
    Open Images (1.7M) the thumbnails alone are 5 GB at 32 px, so build them in a separate job.
    """
    url = thumbnails_url(out, index, size, storage_options)
    fs, path = open_fs(url, storage_options)
    if fs.exists(path):
        return url
    _, uris = read_corpus_ids(index, storage_options)
    thumbs = np.zeros((len(uris), size, size, 3), dtype=np.uint8)
    valid = np.zeros(len(uris), dtype=bool)
    for start in range(0, len(uris), 256):
        chunk = list(uris[start : start + 256])
        for offset, data in enumerate(fetch_many(chunk, storage_options)):
            if isinstance(data, BaseException):
                continue  # an unreadable corpus image can never be a neighbour
            try:
                thumbs[start + offset] = decode_thumbnail(data, size)
                valid[start + offset] = True
            except Exception:
                continue
    sink = io.BytesIO()
    np.savez(sink, thumbnails=thumbs, valid=valid)
    commit_bytes(url, sink.getvalue(), storage_options)
    return url


def thumbnail_of(image01: torch.Tensor, size: int) -> np.ndarray:
    """(C, H, W) in [0, 1] → the same centre-square bicubic thumbnail the corpus got, as uint8."""
    array = image01.detach().clamp(0, 1).mul(255).round().to("cpu", torch.uint8)
    array = array.expand(3, -1, -1) if array.shape[0] == 1 else array
    img = Image.fromarray(np.ascontiguousarray(array.permute(1, 2, 0).numpy()))
    w, h = img.size
    side = min(w, h)
    box = ((w - side) / 2, (h - side) / 2, (w + side) / 2, (h + side) / 2)
    return np.asarray(img.resize((size, size), Image.Resampling.BICUBIC, box=box), dtype=np.uint8)


class Retriever:
    """K neighbours of one degraded image: (ids, uris, scores), best first.

    adir: the encoder's K-NN in the FAISS index (paper eq. 18's {z_k}).
    random-nn: K distinct corpus images drawn from the image's own generator.
    mse-nn: the K corpus thumbnails nearest in pixel MSE to the plain restoration of y
        (bicubic upscale, gray, hole filled), compared in gray for colorization.
    baseline: no neighbours (no adaptation).
    """

    def __init__(self, mode: str, k: int, *, index: str | None, embedder=None, thumbnails: str | None = None,
                 thumbnail_size: int = 32, gray: bool = False, storage_options: Mapping[str, Any] | None = None):
        self.mode, self.k, self.embedder = mode, k, embedder
        self.gray, self.thumbnail_size = gray, thumbnail_size
        self.index = None
        if mode == "adir":
            self.index = NeighborIndex.open(index, embedder=embedder, storage_options=storage_options)
            self.corpus_size = len(self.index)
        elif mode in ("random-nn", "mse-nn"):
            self.ids, self.uris = read_corpus_ids(index, storage_options)
            self.corpus_size = len(self.ids)
        if mode == "mse-nn":
            fs, path = open_fs(thumbnails, storage_options)
            with fs.open(path, "rb") as f:
                stored = np.load(io.BytesIO(f.read()))
                thumbs, self.valid = stored["thumbnails"], stored["valid"]
            self.thumbnails = self._features(thumbs)
        if mode != "baseline" and not 1 <= k <= self.corpus_size:
            raise ValueError(f"k={k} but the index at {index} holds {self.corpus_size} images; ask for 1 <= k <= {self.corpus_size}")

    def _features(self, thumbs: np.ndarray) -> np.ndarray:
        x = thumbs.astype(np.float32) / 255.0
        x = x.mean(axis=-1, keepdims=True) if self.gray else x
        return x.reshape(len(x), -1)

    def neighbours(self, y01: torch.Tensor, naive01: torch.Tensor, generator: torch.Generator):
        """y01: the degraded image (C, h, w) in [0, 1]; naive01: its plain restoration (3, H, W) in [0, 1]."""
        if self.mode == "baseline":
            return [], [], []
        if self.mode == "adir":
            query = self.embedder.embed_images(y01.unsqueeze(0))
            ids, uris, scores = self.index.search(query, self.k)
            found = ids[0] != ""
            return list(ids[0][found]), list(uris[0][found]), [float(s) for s in scores[0][found]]
        if self.mode == "random-nn":
            rows = torch.randperm(self.corpus_size, generator=generator)[: self.k].numpy()
            return list(self.ids[rows]), list(self.uris[rows]), [0.0] * len(rows)
        query = self._features(thumbnail_of(naive01, self.thumbnail_size)[None])
        mse = ((self.thumbnails - query) ** 2).mean(axis=1)
        mse[~self.valid] = np.inf
        rows = np.argsort(mse, kind="stable")[: self.k]
        rows = rows[np.isfinite(mse[rows])]
        return list(self.ids[rows]), list(self.uris[rows]), [float(-mse[r]) for r in rows]

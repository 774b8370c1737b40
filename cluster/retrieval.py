"""The storage side of retrieval: corpus ids and thumbnails read from an index folder, and the
adir_ops retriever of each of the paper's Table 5 arms built from them (adir_ops.retrieval.arms)."""

from __future__ import annotations

import hashlib
import io
from typing import Any, Mapping

import numpy as np
import pyarrow.parquet as pq

from adir_ops.retrieval.arms import EncoderKNN, NoNeighbours, PixelMSENeighbours, RandomNeighbours
from adir_storage import commit_bytes, fetch_many, join_url, open_fs
from cluster.images import decode_thumbnail
from cluster.results import THUMBNAILS_DIR
from index_builder.index_query import NeighborIndex
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


def make_retriever(
    mode: str,
    k: int,
    *,
    index: str | None,
    embedder=None,
    thumbnails: str | None = None,
    gray: bool = False,
    region: int = 0,
    storage_options: Mapping[str, Any] | None = None,
):
    """The adir_ops retriever of a Table 5 arm, with its corpus read from storage (once per actor).

    `region`: adir's regional retrieval (output pixels per query window; 0: the whole image).
    """
    if mode == "baseline":
        return NoNeighbours()
    if mode == "adir":
        return EncoderKNN(
            NeighborIndex.open(index, embedder=embedder, storage_options=storage_options),
            embedder,
            k,
            where=f"the index at {index}",
            region=region,
        )
    ids, uris = read_corpus_ids(index, storage_options)
    if mode == "random-nn":
        return RandomNeighbours(ids, uris, k, where=f"the index at {index}")
    fs, path = open_fs(thumbnails, storage_options)
    with fs.open(path, "rb") as f:
        stored = np.load(io.BytesIO(f.read()))
        return PixelMSENeighbours(
            ids, uris, stored["thumbnails"], stored["valid"], k, gray=gray, where=f"the index at {index}"
        )

"""NeighborIndex: the K-NN lookup the rest of ADIR uses, over an index folder that `adir index build` wrote.

Opening checks the folder is one build: manifest, index.faiss and ids.parquet agree in encoder,
count and (through the manifest's ids checksum) which id each vector is.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pyarrow as pa

from adir_storage import join_url
from index_builder.faiss_index import (
    CPU_BLAS_THRESHOLD,
    _check_counts,
    _faiss,
    _read_index,
    _to_gpu,
    check_ids,
    read_ids,
    use_gpu,
)
from index_builder.manifest import INDEX_NAME, Manifest


class NeighborIndex:
    """The K nearest corpus images of query embeddings: (ids, uris, scores), best first."""

    def __init__(self, index, image_ids: pa.Array, uris: pa.Array, manifest: Manifest, location: str = ""):
        if index.ntotal != len(image_ids):
            raise ValueError(f"index at {location} holds {index.ntotal} vectors but {len(image_ids)} ids; rebuild it")
        self.index = index
        self.manifest = manifest
        self.location = location
        self._ids = image_ids
        self._uris = uris

    @classmethod
    def open(
        cls,
        out: str,
        *,
        embedder=None,
        storage_options: Mapping[str, Any] | None = None,
        gpu: bool | None = None,
        search_params: Mapping[str, Any] | None = None,
    ) -> NeighborIndex:
        """Load OUT's manifest, index and ids; with `embedder` (name or Embedder), refuse a mismatch first.

        `search_params` go to FAISS's ParameterSpace, e.g. {"nprobe": 16} for IVF or
        {"efSearch": 128} for HNSW.
        """
        faiss = _faiss()
        manifest = Manifest.read(out, storage_options)
        if embedder is not None:
            check_embedder(manifest, out, embedder)
        index = _read_index(out, storage_options)
        _check_counts(join_url(out, INDEX_NAME), manifest, int(index.d), int(index.ntotal))
        for name, value in (search_params or {}).items():
            faiss.ParameterSpace().set_index_parameter(index, name, value)
        if use_gpu(gpu):
            index, _ = _to_gpu(index)
        else:
            faiss.cvar.distance_compute_blas_threshold = CPU_BLAS_THRESHOLD
        table = read_ids(out, storage_options)
        check_ids(out, manifest, table)  # row r's id must be vector r's (a reordered ids.parquet is refused)
        # Arrow arrays, not numpy object arrays: 1.7M ids stay one compact buffer.
        return cls(
            index, table.column("image_id").combine_chunks(), table.column("uri").combine_chunks(), manifest, out
        )

    @property
    def embedder_name(self) -> str:
        return self.manifest.embedder

    @property
    def dim(self) -> int:
        return self.manifest.dim

    def __len__(self) -> int:
        return int(self.index.ntotal)

    def check_embedder(self, embedder) -> None:
        check_embedder(self.manifest, self.location, embedder)

    def search(self, embeddings: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(ids, uris, scores), each (n, k), for n query embeddings (n, dim); scores are inner products."""
        queries = np.asarray(embeddings, dtype=np.float32)
        if queries.ndim == 1:
            queries = queries[None]
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise ValueError(
                f"query embeddings have shape {tuple(np.shape(embeddings))}; the index at {self.location} "
                f"was built with {self.embedder_name} (dim {self.dim})"
            )
        if not 1 <= k <= len(self):
            raise ValueError(
                f"k={k} but the index at {self.location} holds {len(self)} images; ask for 1 <= k <= {len(self)}"
            )
        scores, rows = self.index.search(np.ascontiguousarray(queries), k)
        flat = rows.ravel()
        found = flat >= 0  # approximate indexes may return fewer than k hits (-1 rows)
        take = pa.array(np.where(found, flat, 0))
        ids = np.where(found, self._ids.take(take).to_numpy(zero_copy_only=False), "")
        uris = np.where(found, self._uris.take(take).to_numpy(zero_copy_only=False), "")
        return (
            ids.reshape(rows.shape).astype(object),
            uris.reshape(rows.shape).astype(object),
            scores.astype(np.float32),
        )


def check_embedder(manifest: Manifest, location: str, embedder) -> None:
    """Raise if `embedder` (a name or an Embedder) is not the one the index was built with."""
    name = embedder if isinstance(embedder, str) else embedder.name
    dim = None if isinstance(embedder, str) else int(embedder.dim)
    if name != manifest.embedder or (dim is not None and dim != manifest.dim):
        this = f"{name} (dim {dim})" if dim is not None else name
        raise ValueError(
            f"index at {location} was built with {manifest.embedder} (dim {manifest.dim}); this query uses {this}. "
            f"Query with --embedder {manifest.embedder}, or rebuild the index with {name}"
        )

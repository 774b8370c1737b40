"""The embed stage: a Ray Data callable class that builds its encoder from a name and embeds pixel batches."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from index_builder.throughput import EMBED_SECONDS, EMBED_STARTED


class EmbedBatch:
    """map_batches actor: {…, pixels uint8 (n, S, S, 3), stage, error} → {…, embedding float16 (n, dim)}.

    The encoder is built here, in the actor's process, from its name: a model is never
    pickled through the object store, and each actor (one per GPU) loads it once.
    Rows that failed an earlier stage pass through with a zero embedding; a row whose
    embedding is not finite becomes an `embed` error row. `pixels` is dropped, so only
    small rows travel on to the writer. Each forwarded row also carries its share of the
    forward's seconds and when that forward began (throughput.EMBED_SECONDS/EMBED_STARTED).
    """

    def __init__(
        self, embedder_name: str, embedder_options: Mapping[str, Any] | None = None, torch_threads: int | None = None
    ):
        import torch

        from adir_ops.retrieval.embedding import get_embedder

        if torch_threads:
            torch.set_num_threads(torch_threads)
        self.embedder = get_embedder(embedder_name, **dict(embedder_options or {}))

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        started, started_at = time.perf_counter(), time.time()
        stage = np.asarray(batch["stage"], dtype=object).copy()
        error = np.asarray(batch["error"], dtype=object).copy()
        n, dim = len(stage), self.embedder.dim
        embedding = np.zeros((n, dim), dtype=np.float16)
        seconds, started_column = np.zeros(n), np.full(n, np.nan)
        ok = np.flatnonzero(stage == "")
        if ok.size:
            pixels = torch.from_numpy(np.ascontiguousarray(batch["pixels"][ok]))
            vectors = self.embedder.embed_images(pixels.permute(0, 3, 1, 2).float().div_(255.0))
            if vectors.shape != (ok.size, dim):
                raise RuntimeError(
                    f"embedder {self.embedder.name} returned shape {vectors.shape}; expected {(ok.size, dim)}"
                )
            finite = np.isfinite(vectors).all(axis=1)
            for j in np.flatnonzero(~finite):
                stage[ok[j]], error[ok[j]] = "embed", f"{self.embedder.name} produced a non-finite embedding"
            embedding[ok[finite]] = vectors[finite].astype(np.float16)
            seconds[ok] = (time.perf_counter() - started) / ok.size
            started_column[ok] = started_at
        # Every other column (ids, sizes, the read stage's timings) passes through unchanged.
        out = {key: value for key, value in batch.items() if key != "pixels"}
        out.update(stage=stage, error=error, embedding=embedding)
        out[EMBED_SECONDS], out[EMBED_STARTED] = seconds, started_column
        return out

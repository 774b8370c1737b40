"""The vectors the retrieval benchmark measures on: a database and held-out queries, iid or clustered."""

from __future__ import annotations

import numpy as np

from bench.retrieval_config import DATASETS, BenchConfig


def _normalise(x: np.ndarray) -> np.ndarray:
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def iid_vectors(rng: np.random.Generator, rows: int, dim: int, chunk: int = 16_384) -> np.ndarray:
    """Uniform on the unit sphere: the worst case for every approximate index."""
    out = np.empty((rows, dim), dtype=np.float32)
    for start in range(0, rows, chunk):
        stop = min(start + chunk, rows)
        out[start:stop] = _normalise(rng.standard_normal((stop - start, dim), dtype=np.float32))
    return out


def clustered_vectors(
    rng: np.random.Generator, rows: int, dim: int, clusters: int, spread: float, chunk: int = 16_384
) -> np.ndarray:
    """Gaussian mixture around `clusters` unit centres, normalised; `spread` is the noise norm.

    Real image embeddings cluster by content; on such data approximate indexes have something
    to exploit, while on iid vectors every point is nearly equidistant from every other.
    """
    centres = iid_vectors(rng, clusters, dim)
    sigma = np.float32(spread / np.sqrt(dim))
    out = np.empty((rows, dim), dtype=np.float32)
    for start in range(0, rows, chunk):
        stop = min(start + chunk, rows)
        members = rng.integers(0, clusters, size=stop - start)
        noise = rng.standard_normal((stop - start, dim), dtype=np.float32) * sigma
        out[start:stop] = _normalise(centres[members] + noise)
    return out


def make_dataset(name: str, config: BenchConfig) -> tuple[np.ndarray, np.ndarray]:
    """Database and held-out queries drawn from the same distribution."""
    rng = np.random.default_rng([config.seed, DATASETS.index(name)])
    rows = config.n + config.queries
    if name == "iid":
        vectors = iid_vectors(rng, rows, config.dim)
    else:
        vectors = clustered_vectors(rng, rows, config.dim, config.clusters, config.spread)
    return vectors[: config.n], np.ascontiguousarray(vectors[config.n :])

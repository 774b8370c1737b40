"""Order a dataset's images so each actor meets similar images one after another (for warm-started adaptation).

A warm start needs the adapter of an overlapping neighbour set to exist already. Images in
input order are as likely to be far apart as near; sorted by their embedding, neighbours in
the order are neighbours in content, and so usually in retrieved neighbours. Sorting alone
would put two similar images side by side, on two actors at once, neither finished in time
for the other; so the sorted list is cut into one run per actor and the runs are interleaved:
with A actors, the queue hands actor a (roughly) run a, image after image.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np


def embedding_order(vectors: np.ndarray, *, seed: int = 0) -> list[int]:
    """A permutation of the rows of `vectors` (unit embeddings) in which consecutive rows are similar.

    Rows are clustered with FAISS k-means into about sqrt(N) groups (the coarse quantizer of an
    IVF index); the clusters are chained greedily, each to the most similar centroid left,
    and within a cluster the images are chained the same way. Deterministic for a seed.
    """
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    count = len(vectors)
    if count <= 2:
        return list(range(count))
    clusters = max(1, min(count // 2, int(round(np.sqrt(count)))))
    if clusters > 1:
        import faiss

        kmeans = faiss.Kmeans(
            vectors.shape[1], clusters, niter=20, seed=seed, spherical=True, min_points_per_centroid=1
        )
        kmeans.train(vectors)
        _, assignment = kmeans.index.search(vectors, 1)
        assignment, centroids = assignment[:, 0], kmeans.centroids
    else:
        assignment, centroids = np.zeros(count, dtype=np.int64), vectors.mean(0, keepdims=True)
    used = sorted(set(assignment.tolist()))
    order: list[int] = []
    for cluster in _chain(centroids[used], start=0):
        members = np.flatnonzero(assignment == used[cluster])
        order.extend(int(members[i]) for i in _chain(vectors[members], start=0))
    return order


def _chain(vectors: np.ndarray, start: int) -> list[int]:
    """Greedy nearest-neighbour tour by inner product, from `start` (ties: the lower index)."""
    left = np.ones(len(vectors), dtype=bool)
    tour = [start]
    left[start] = False
    while left.any():
        scores = vectors[left] @ vectors[tour[-1]]
        tour.append(int(np.flatnonzero(left)[int(np.argmax(scores))]))
        left[tour[-1]] = False
    return tour


def interleave_runs(order: Sequence[int], runs: int) -> list[int]:
    """`order` cut into `runs` contiguous runs, dealt out one image of each run in turn."""
    runs = max(1, min(runs, len(order)))
    bounds = np.linspace(0, len(order), runs + 1).round().astype(int)
    chunks = [list(order[bounds[i] : bounds[i + 1]]) for i in range(runs)]
    return [chunk[j] for j in range(max(len(c) for c in chunks)) for chunk in chunks if j < len(chunk)]


def order_items(
    items: list[dict[str, Any]],
    embedder_name: str,
    actors: int,
    storage_options: Mapping[str, Any] | None = None,
    *,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """The job's items in embedding order, interleaved over `actors`; unreadable inputs go last (their actor reports them)."""
    import torch

    from adir_ops.retrieval.embedding import get_embedder
    from adir_storage import read_bytes
    from cluster.images import decode_rgb, to_tensor01

    embedder = get_embedder(embedder_name)
    readable, vectors, unreadable = [], [], []
    for item in items:
        try:
            image = to_tensor01(decode_rgb(read_bytes(item["uri"], storage_options)))
        except Exception:  # the actor reads it again and writes its error row
            unreadable.append(item)
            continue
        with torch.no_grad():
            vectors.append(np.asarray(embedder.embed_images(image[None]))[0])
        readable.append(item)
    if len(readable) <= 2:
        return readable + unreadable
    order = interleave_runs(embedding_order(np.stack(vectors), seed=seed), actors)
    return [readable[i] for i in order] + unreadable

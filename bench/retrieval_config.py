"""What one retrieval benchmark run is asked to do (BenchConfig) and what it records per method (Row)."""

from __future__ import annotations

import dataclasses

METHODS = ("flat", "hnsw", "ivfpq", "kdtree", "builder")
DATASETS = ("iid", "clustered")


@dataclasses.dataclass(frozen=True)
class BenchConfig:
    """Every knob of one benchmark run; printed at the top of the output."""

    n: int = 200_000
    dim: int = 512
    queries: int = 100
    k: int = 50
    seed: int = 0
    threads: int = 2
    datasets: tuple[str, ...] = DATASETS
    skip: tuple[str, ...] = ()
    clusters: int = 2000
    spread: float = 0.5
    hnsw_m: int = 32
    hnsw_ef: tuple[int, ...] = (64, 256)
    ivf_lists: int = 1024
    pq_m: int = 64
    train_size: int = 40_000
    nprobe: tuple[int, ...] = (8, 16)
    rerank: int = 200
    forced_blas_threshold: int = 1000
    omp_wait_policy: str = "passive"
    extrapolate_to: int = 1_700_000
    kdtree_queries: int = 10  # cKDTree is queried with the first few queries only; its time is scaled up
    specs: tuple[str, ...] = (
        "IVF4096,PQ64,RFlat|nprobe=8,k_factor_rf=4",
        "IVF4096,PQ64,RFlat|nprobe=16,k_factor_rf=4",
        "IVF4096,PQ64,RFlat|nprobe=16,k_factor_rf=8",
        "IVF4096,PQ64,RFlat|nprobe=32,k_factor_rf=8",
        "IVF4096,PQ64,RFlat|nprobe=16,k_factor_rf=16",
        "IVF4096,Flat|nprobe=8",
        "IVF4096,Flat|nprobe=16",
        "IVF4096,Flat|nprobe=32",
        "HNSW32|efSearch=64",
        "HNSW32|efSearch=128",
        "HNSW32|efSearch=256",
        "HNSW32|efSearch=512",
    )
    builder_train_size: int = 100_000  # BuildConfig's default train_size; raised to 39 per IVF list
    builder_add_rows: int = 1000  # BuildConfig's default shard_size: the builder adds one shard at a time


@dataclasses.dataclass(frozen=True)
class Row:
    """One line of the results table."""

    dataset: str
    method: str
    build_s: float
    build_cpu_s: float  # all threads; less sensitive than wall time to other processes on the CPUs
    query_s: float  # for a batch of config.queries queries (cKDTree: scaled up from measured_queries)
    query_runs: int
    recall: float
    index_bytes: int
    peak_rss_bytes: int | None
    exact: bool  # exact scans cost O(N) per query, so their query time extrapolates linearly
    measured_queries: int = 0  # queries actually timed, when fewer than the batch (cKDTree)

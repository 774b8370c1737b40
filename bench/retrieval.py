"""Retrieval benchmark: build and query time, recall@k and memory of k-NN indexes over unit embeddings.

Run: .venv/bin/python bench/retrieval.py [--n 200000] [--skip hnsw,kdtree] [--datasets clustered]
     [--specs "IVF4096,PQ64,RFlat|nprobe=16,k_factor_rf=4;HNSW32|efSearch=128"]

It compares the indexes a user can choose for the retrieval step (Section 3.2: the K
nearest neighbours of the degraded image's embedding): FAISS Flat (exact inner product),
HNSW, IVF-PQ with and without exact re-ranking, and scipy's cKDTree (the paper's KD-tree).
The "builder" rows build each --specs factory spec exactly as index_builder does
(faiss_index.new_index, its training-size rule, shard-sized adds, the stored search settings,
the BLAS threshold NeighborIndex sets), so they measure what `adir index build` produces.
Recall is measured against Flat. Each row is printed as soon as its method finishes, with its
speed ratio against the KD-tree. Figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import ctypes.util
import dataclasses
import gc
import os
import sys
import time
from collections.abc import Callable, Iterator

import numpy as np

METHODS = ("flat", "hnsw", "ivfpq", "kdtree", "builder")
DATASETS = ("iid", "clustered")
MIB = 1024 * 1024


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


@dataclasses.dataclass(frozen=True)
class Timed:
    """A query result with its best wall time over `runs` repetitions."""

    ids: np.ndarray
    seconds: float
    runs: int


# --- data -----------------------------------------------------------------------------


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


# --- measurement ----------------------------------------------------------------------


def _proc_status_bytes(field: str) -> int | None:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _release_freed_memory() -> None:
    # glibc keeps freed heap pages mapped; returning them makes the next method's RSS
    # growth visible instead of hidden inside pages the previous method left behind.
    gc.collect()
    libc_name = ctypes.util.find_library("c")
    if libc_name:
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(libc_name).malloc_trim(0)


class PeakRss:
    """Peak resident-set growth since `start()`: Linux's VmHWM, reset via /proc/self/clear_refs."""

    def __init__(self) -> None:
        self.baseline: int | None = None

    def start(self) -> None:
        _release_freed_memory()
        try:
            with open("/proc/self/clear_refs", "w") as clear_refs:
                clear_refs.write("5")
        except OSError:
            self.baseline = None
            return
        self.baseline = _proc_status_bytes("VmRSS")

    def growth(self) -> int | None:
        peak = _proc_status_bytes("VmHWM")
        if self.baseline is None or peak is None:
            return None
        return peak - self.baseline


def best_time(query: Callable[[], np.ndarray], budget_s: float = 1.0, max_runs: int = 5) -> Timed:
    """Best of repeated runs, repeating only while the runs so far took under `budget_s`.

    The minimum is the least contended figure on a shared machine; slow methods run once.
    """
    times = []
    ids = None
    while len(times) < max_runs and sum(times) < budget_s:
        start = time.perf_counter()
        ids = query()
        times.append(time.perf_counter() - start)
    return Timed(ids=ids, seconds=min(times), runs=len(times))


def interleaved_best_times(queries: list[Callable[[], np.ndarray]], rounds: int = 3) -> list[Timed]:
    """Best time of each query over `rounds` alternating runs (A, B, A, B, ...).

    Alternating spreads another process's burst of load over every contender, so a
    comparison between settings survives a shared machine better than back-to-back runs.
    """
    times: list[list[float]] = [[] for _ in queries]
    ids: list[np.ndarray | None] = [None] * len(queries)
    for _ in range(rounds):
        for position, query in enumerate(queries):
            start = time.perf_counter()
            ids[position] = query()
            times[position].append(time.perf_counter() - start)
    return [Timed(ids=found, seconds=min(spent), runs=rounds) for found, spent in zip(ids, times, strict=True)]


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Fraction of the true k nearest neighbours that the index returned."""
    hits = sum(np.intersect1d(f[f >= 0], t).size for f, t in zip(found, truth, strict=True))
    return hits / truth.size


@contextlib.contextmanager
def blas_threshold(faiss, value: int | None) -> Iterator[None]:
    """Set faiss's BLAS switch for exhaustive search, restoring the previous value after."""
    previous = faiss.cvar.distance_compute_blas_threshold
    if value is not None:
        faiss.cvar.distance_compute_blas_threshold = value
    try:
        yield
    finally:
        faiss.cvar.distance_compute_blas_threshold = previous


def index_bytes(faiss, index) -> int:
    """Length of the index file FAISS would write, counted as it streams (serialize_index would copy it)."""
    total = 0

    def count(chunk: bytes) -> int:
        nonlocal total
        total += len(chunk)
        return len(chunk)

    faiss.write_index(index, faiss.PyCallbackIOWriter(count))
    return total


def _timed_build(build: Callable[[], object]) -> tuple[object, float, float]:
    """The built object, its wall seconds and its process CPU seconds."""
    wall, cpu = time.perf_counter(), time.process_time()
    index = build()
    return index, time.perf_counter() - wall, time.process_time() - cpu


# --- methods --------------------------------------------------------------------------


def bench_flat(faiss, data, queries, config: BenchConfig, dataset: str) -> tuple[list[Row], np.ndarray]:
    """Exact inner-product scan; its default-setting result is the ground truth for recall."""
    memory = PeakRss()
    memory.start()

    def build():
        index = faiss.IndexFlatIP(config.dim)
        index.add(data)
        return index

    index, build_s, build_cpu = _timed_build(build)
    default_value = faiss.cvar.distance_compute_blas_threshold

    def search_with(threshold: int | None) -> Callable[[], np.ndarray]:
        def search() -> np.ndarray:
            with blas_threshold(faiss, threshold):
                return index.search(queries, config.k)[1]

        return search

    default, forced = interleaved_best_times([search_with(None), search_with(config.forced_blas_threshold)])
    peak = memory.growth()
    size = index_bytes(faiss, index)
    truth = default.ids
    labels = (f"blas_threshold={default_value} (default)", f"blas_threshold={config.forced_blas_threshold}")
    rows = [
        Row(
            dataset,
            f"Flat IP, {label}",
            build_s,
            build_cpu,
            timed.seconds,
            timed.runs,
            recall_at_k(timed.ids, truth),
            size,
            peak,
            exact=True,
        )
        for label, timed in zip(labels, (default, forced), strict=True)
    ]
    return rows, truth


def bench_hnsw(faiss, data, queries, truth, config: BenchConfig, dataset: str) -> list[Row]:
    """HNSW graph; efSearch trades query time for recall."""
    memory = PeakRss()
    memory.start()

    def build():
        index = faiss.index_factory(config.dim, f"HNSW{config.hnsw_m}", faiss.METRIC_INNER_PRODUCT)
        index.add(data)
        return index

    index, build_s, build_cpu = _timed_build(build)
    results = []
    for ef in config.hnsw_ef:
        params = faiss.SearchParametersHNSW(efSearch=ef)
        results.append((ef, best_time(lambda p=params: index.search(queries, config.k, params=p)[1])))
    peak = memory.growth()
    size = index_bytes(faiss, index)
    return [
        Row(
            dataset,
            f"HNSW{config.hnsw_m}, efSearch={ef}",
            build_s,
            build_cpu,
            timed.seconds,
            timed.runs,
            recall_at_k(timed.ids, truth),
            size,
            peak,
            exact=False,
        )
        for ef, timed in results
    ]


def bench_ivfpq(faiss, data, queries, truth, config: BenchConfig, dataset: str) -> list[Row]:
    """IVF-PQ trained on a sample, alone and with exact re-ranking of its top candidates."""
    memory = PeakRss()
    memory.start()
    factory = f"IVF{config.ivf_lists},PQ{config.pq_m}"

    def build():
        sample_rng = np.random.default_rng([config.seed, DATASETS.index(dataset), 1])
        rows = np.sort(sample_rng.choice(len(data), size=min(config.train_size, len(data)), replace=False))
        sample = data[rows]
        index = faiss.index_factory(config.dim, factory, faiss.METRIC_INNER_PRODUCT)
        # The factory turns on polysemous training (an annealing pass over the PQ codes that
        # only polysemous Hamming filtering uses); it was 99 of 103 CPU s of an IVF256,PQ64
        # training on 20k vectors here.
        index.do_polysemous_training = False
        index.train(sample)
        index.add(data)
        return index

    index, build_s, build_cpu = _timed_build(build)
    plain = []
    for nprobe in config.nprobe:
        params = faiss.SearchParametersIVF(nprobe=nprobe)
        plain.append((nprobe, best_time(lambda p=params: index.search(queries, config.k, params=p)[1])))
    plain_peak = memory.growth()
    plain_size = index_bytes(faiss, index)
    rows = [
        Row(
            dataset,
            f"{factory}, nprobe={nprobe}",
            build_s,
            build_cpu,
            timed.seconds,
            timed.runs,
            recall_at_k(timed.ids, truth),
            plain_size,
            plain_peak,
            exact=False,
        )
        for nprobe, timed in plain
    ]
    if config.rerank <= 0:
        return rows

    # The re-ranker keeps a float32 copy of every vector: that is its memory price.
    refined, refine_s, refine_cpu = _timed_build(lambda: faiss.IndexRefineFlat(index, faiss.swig_ptr(data)))
    reranked = []
    for nprobe in config.nprobe:
        params = faiss.IndexRefineSearchParameters(
            k_factor=config.rerank / config.k, base_index_params=faiss.SearchParametersIVF(nprobe=nprobe)
        )
        reranked.append((nprobe, best_time(lambda p=params: refined.search(queries, config.k, params=p)[1])))
    refined_peak = memory.growth()
    refined_size = index_bytes(faiss, refined)
    rows += [
        Row(
            dataset,
            f"{factory}, nprobe={nprobe}, re-rank {config.rerank}",
            build_s + refine_s,
            build_cpu + refine_cpu,
            timed.seconds,
            timed.runs,
            recall_at_k(timed.ids, truth),
            refined_size,
            refined_peak,
            exact=False,
        )
        for nprobe, timed in reranked
    ]
    return rows


def bench_kdtree(data, queries, truth, config: BenchConfig, dataset: str) -> list[Row]:
    """scipy cKDTree, Euclidean: on unit vectors |a-b|^2 = 2 - 2<a,b>, so its kNN is the IP kNN."""
    from scipy.spatial import cKDTree

    memory = PeakRss()
    memory.start()
    tree, build_s, build_cpu = _timed_build(lambda: cKDTree(data))
    # cKDTree in 512-d visits nearly every leaf, so its cost is the same for every query:
    # timing the first few and scaling to the batch keeps its figure comparable with the rest.
    measured = min(config.kdtree_queries, len(queries))
    timed = best_time(lambda: tree.query(queries[:measured], k=config.k, workers=config.threads)[1])
    peak = memory.growth()
    # Its float64 copy of the data plus the permutation; pickling it would copy 7 GB at 1.7M.
    size = tree.data.nbytes + tree.indices.nbytes
    return [
        Row(
            dataset,
            f"scipy cKDTree (float64 copy), {measured} queries x{len(queries) / measured:g}",
            build_s,
            build_cpu,
            timed.seconds * len(queries) / measured,
            timed.runs,
            recall_at_k(timed.ids, truth[:measured]),
            size,
            peak,
            exact=True,
            measured_queries=measured,
        )
    ]


def bench_builder(faiss, data, queries, truth, config: BenchConfig, dataset: str, specs: list[str]) -> list[Row]:
    """One FAISS factory built as index_builder builds it, searched with each spec's stored settings."""
    from index_builder.faiss_index import (
        CPU_BLAS_THRESHOLD,
        new_index,
        set_search_params,
        split_factory,
        training_size,
    )

    memory = PeakRss()
    memory.start()

    def build():
        index = new_index(config.dim, specs[0])
        if not index.is_trained:
            # The builder's sample: evenly spread rows (it spreads them shard by shard).
            rows = min(training_size(index, config.builder_train_size), len(data))
            index.train(np.ascontiguousarray(data[np.linspace(0, len(data) - 1, rows).round().astype(np.int64)]))
        for start in range(0, len(data), config.builder_add_rows):
            index.add(data[start : start + config.builder_add_rows])
        return index

    index, build_s, build_cpu = _timed_build(build)
    results = []
    for spec in specs:
        set_search_params(index, split_factory(spec)[1], spec)
        with blas_threshold(faiss, CPU_BLAS_THRESHOLD):  # NeighborIndex.open sets it on CPU
            results.append((spec, best_time(lambda: index.search(queries, config.k)[1])))
    peak = memory.growth()
    size = index_bytes(faiss, index)
    return [
        Row(
            dataset,
            spec,
            build_s,
            build_cpu,
            timed.seconds,
            timed.runs,
            recall_at_k(timed.ids, truth),
            size,
            peak,
            exact=False,
        )
        for spec, timed in results
    ]


def spec_groups(specs: tuple[str, ...]) -> list[list[str]]:
    """Specs grouped by factory (one build each), in first-seen order."""
    from index_builder.faiss_index import split_factory

    groups: dict[str, list[str]] = {}
    for spec in specs:
        groups.setdefault(split_factory(spec)[0], []).append(spec)
    return list(groups.values())


def bench_dataset(
    faiss, name: str, config: BenchConfig, log: Callable[[str], None], emit: Callable[[list[Row]], None]
) -> list[Row]:
    """Every method that is not skipped, on one dataset, one at a time (each index freed before the next).

    Flat always runs (it is the truth) and the KD-tree runs next, so every later row can be
    printed with its ratio as soon as it is measured.
    """
    log(f"[{name}] generating {config.n} x {config.dim} vectors + {config.queries} queries")
    data, queries = make_dataset(name, config)
    log(f"[{name}] Flat")
    rows, truth = bench_flat(faiss, data, queries, config, name)
    emit(rows)
    steps: list[tuple[str, Callable[[], list[Row]]]] = []
    if "kdtree" not in config.skip:
        steps.append(("cKDTree", lambda: bench_kdtree(data, queries, truth, config, name)))
    if "ivfpq" not in config.skip:
        steps.append(
            (
                f"IVF{config.ivf_lists},PQ{config.pq_m}",
                lambda: bench_ivfpq(faiss, data, queries, truth, config, name),
            )
        )
    if "builder" not in config.skip:
        for group in spec_groups(config.specs):
            steps.append(
                (
                    f"builder {group[0]} (+{len(group) - 1} settings)",
                    lambda g=group: bench_builder(faiss, data, queries, truth, config, name, g),
                )
            )
    if "hnsw" not in config.skip:
        steps.append(
            (f"HNSW{config.hnsw_m} (slow build)", lambda: bench_hnsw(faiss, data, queries, truth, config, name))
        )
    for label, step in steps:
        log(f"[{name}] {label}")
        new = step()
        emit(new)
        rows += new
        _release_freed_memory()
    return rows


# --- report ---------------------------------------------------------------------------


def _fmt_peak(peak: int | None) -> str:
    return "n/a" if peak is None else f"{peak / MIB:.0f}"


def format_table(rows: list[Row], config: BenchConfig) -> str:
    """The results as fixed-width text, extrapolated columns marked as such."""
    header = (
        f"{'dataset':<10} {'method':<44} {'build s':>8} {'cpu s':>7} {'query ms':>9} {'runs':>4} "
        f"{'recall@' + str(config.k):>9} {'index MiB':>9} {'peak RSS+':>9} "
        f"{'~q ms @' + _short(config.extrapolate_to):>11} {'~MiB @' + _short(config.extrapolate_to):>10}"
        f" {'vs KD-tree':>10}"
    )
    return "\n".join([header, "-" * len(header)] + [format_row(row, rows, config) for row in rows])


def speed_ratio(row: Row, rows: list[Row]) -> float | None:
    """cKDTree batch query time over this row's, on the same dataset (None without a KD-tree row)."""
    kdtree = [r for r in rows if r.dataset == row.dataset and r.method.startswith("scipy cKDTree")]
    return kdtree[0].query_s / row.query_s if kdtree and row.query_s > 0 else None


def format_row(row: Row, rows: list[Row], config: BenchConfig) -> str:
    """One table line; `rows` supplies the KD-tree row its ratio is taken against."""
    scale = config.extrapolate_to / config.n
    query_ms = row.query_s * 1000
    extrapolated_query = f"{query_ms * scale:.0f}" if row.exact else "-"
    ratio = speed_ratio(row, rows)
    return (
        f"{row.dataset:<10} {row.method:<44} {row.build_s:>8.2f} {row.build_cpu_s:>7.1f} "
        f"{query_ms:>9.1f} {row.query_runs:>4} "
        f"{row.recall:>9.3f} {row.index_bytes / MIB:>9.1f} {_fmt_peak(row.peak_rss_bytes):>9} "
        f"{extrapolated_query:>11} {row.index_bytes / MIB * scale:>10.0f}"
        f" {'-' if ratio is None else f'{ratio:.1f}x':>10}"
    )


def _short(count: int) -> str:
    return f"{count / 1e6:g}M" if count >= 1_000_000 else f"{count / 1e3:g}k"


def format_ratios(rows: list[Row]) -> str:
    """cKDTree batch query time over every other row's, per dataset."""
    lines = []
    for row in rows:
        ratio = speed_ratio(row, rows)
        if ratio is not None and not row.method.startswith("scipy cKDTree"):
            lines.append(f"  {row.dataset}: cKDTree / {row.method} = {ratio:.1f}x (recall@k {row.recall:.3f})")
    return "\n".join(lines)


def format_notes(config: BenchConfig) -> str:
    """What each column means, and which figures are extrapolations."""
    at = _short(config.extrapolate_to)
    scale = config.extrapolate_to / config.n
    notes = [
        (
            f"query ms: wall time for all {config.queries} queries in one call (k={config.k}), best of 'runs';"
            " a method is rerun only while its runs so far took < 1 s."
        ),
        ("build s: wall time of the build (IVF-PQ: sample + train + add); cpu s: its process CPU time, all threads."),
        "recall@k: overlap with the top-k of Flat at faiss's default setting (exact, the ground truth).",
        (
            "index MiB: length of the file faiss.write_index writes; cKDTree: its float64 copy of the data"
            " plus its index permutation (tree nodes not counted)."
        ),
        (
            f"cKDTree: timed on the first {config.kdtree_queries} queries only (it costs the same per query),"
            f" scaled to the batch of {config.queries}; its recall is over those queries."
        ),
        (
            "vs KD-tree: cKDTree's batch query time over the row's (speed ratio). Rows named by a factory spec"
            " ('FACTORY|settings') are built and searched as index_builder builds them."
        ),
        (
            "peak RSS+: process peak resident memory above its level before that index was built, over build"
            " and queries; the IVF-PQ re-rank rows include the IVF-PQ index they wrap."
        ),
        (
            f"~q ms and ~MiB @ {at}: an EXTRAPOLATION, not a measurement: linear in N (x{scale:.2f})."
            " Query time is extrapolated only for the exact scans (Flat, cKDTree), whose cost per query"
            " grows with N; the approximate indexes' query time is not ('-')."
        ),
        "cKDTree is Euclidean; on unit vectors |a-b|^2 = 2 - 2<a,b>, so Euclidean kNN = inner-product kNN.",
        (
            f"clustered: {config.clusters} unit centres, noise of norm {config.spread} around each, then"
            " normalised; the queries are fresh draws from the same mixture."
        ),
        (
            "iid: uniform on the unit sphere, where all points are nearly equidistant: the hard case for"
            " every approximate index."
        ),
    ]
    return "Notes:\n" + "\n".join("  " + note for note in notes)


# --- command line ---------------------------------------------------------------------


def _int_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(",") if part)


def _name_tuple(allowed: tuple[str, ...], option: str) -> Callable[[str], tuple[str, ...]]:
    def parse(text: str) -> tuple[str, ...]:
        names = tuple(part.strip() for part in text.split(",") if part.strip())
        unknown = [name for name in names if name not in allowed]
        if unknown:
            raise argparse.ArgumentTypeError(
                f"{option} got {', '.join(unknown)}; choose from {', '.join(allowed)} (comma-separated)"
            )
        return names

    return parse


def parse_config(argv: list[str] | None = None) -> BenchConfig:
    defaults = BenchConfig()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=defaults.n, help="database vectors (default %(default)s)")
    parser.add_argument("--dim", type=int, default=defaults.dim)
    parser.add_argument("--queries", type=int, default=defaults.queries)
    parser.add_argument("--k", type=int, default=defaults.k)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--threads", type=int, default=defaults.threads, help="faiss OpenMP threads, cKDTree workers")
    parser.add_argument(
        "--datasets",
        type=_name_tuple(DATASETS, "--datasets"),
        default=defaults.datasets,
        help="comma-separated, from: " + ",".join(DATASETS),
    )
    parser.add_argument(
        "--skip",
        type=_name_tuple(METHODS, "--skip"),
        default=defaults.skip,
        help="comma-separated methods to leave out: hnsw, ivfpq, kdtree",
    )
    parser.add_argument("--clusters", type=int, default=defaults.clusters)
    parser.add_argument("--spread", type=float, default=defaults.spread, help="norm of the noise around each centre")
    parser.add_argument("--hnsw-m", type=int, default=defaults.hnsw_m)
    parser.add_argument("--hnsw-ef", type=_int_tuple, default=defaults.hnsw_ef, help="efSearch values, e.g. 64,256")
    parser.add_argument("--ivf-lists", type=int, default=defaults.ivf_lists)
    parser.add_argument("--pq-m", type=int, default=defaults.pq_m)
    parser.add_argument("--train-size", type=int, default=defaults.train_size)
    parser.add_argument("--nprobe", type=_int_tuple, default=defaults.nprobe, help="e.g. 8,16")
    parser.add_argument(
        "--rerank", type=int, default=defaults.rerank, help="IVF-PQ candidates re-ranked exactly (0: no re-rank rows)"
    )
    parser.add_argument("--extrapolate-to", type=int, default=defaults.extrapolate_to)
    parser.add_argument(
        "--kdtree-queries", type=int, default=defaults.kdtree_queries, help="queries cKDTree is timed on"
    )
    parser.add_argument(
        "--specs",
        type=lambda text: tuple(part.strip() for part in text.split(";") if part.strip()),
        default=defaults.specs,
        help="';'-separated index_builder factory specs 'FACTORY|search settings' for the builder rows",
    )
    parser.add_argument("--builder-train-size", type=int, default=defaults.builder_train_size)
    parser.add_argument("--builder-add-rows", type=int, default=defaults.builder_add_rows)
    parser.add_argument(
        "--omp-wait-policy",
        choices=("passive", "active", "inherit"),
        default=defaults.omp_wait_policy,
        help="OMP_WAIT_POLICY for faiss's OpenMP threads; 'inherit' keeps the environment's",
    )
    args = parser.parse_args(argv)
    config = BenchConfig(**vars(args))
    validate(config, parser)
    return config


def validate(config: BenchConfig, parser: argparse.ArgumentParser) -> None:
    if "flat" in config.skip:
        parser.error(
            "--skip flat: Flat is the exact ground truth every recall is measured against; "
            "skip only hnsw, ivfpq or kdtree"
        )
    if config.kdtree_queries < 1:
        parser.error(f"--kdtree-queries {config.kdtree_queries}: time cKDTree on at least 1 query")
    if config.k > config.n:
        parser.error(f"--k {config.k} exceeds --n {config.n}; ask for at most n neighbours")
    if config.rerank and config.rerank < config.k:
        parser.error(f"--rerank {config.rerank} is below --k {config.k}; re-rank at least k candidates, or 0")
    if "ivfpq" not in config.skip and config.dim % config.pq_m:
        parser.error(f"--pq-m {config.pq_m} must divide --dim {config.dim}; e.g. --pq-m 64 for dim 512")
    if "ivfpq" not in config.skip and min(config.n, config.train_size) < 39 * config.ivf_lists:
        got = min(config.n, config.train_size)
        parser.error(
            f"IVF{config.ivf_lists} wants >= {39 * config.ivf_lists} training vectors; got {got}: "
            f"lower --ivf-lists (e.g. {max(1, got // 39)}) or --skip ivfpq"
        )


def apply_omp_wait_policy(policy: str) -> str:
    """Set OMP_WAIT_POLICY before faiss loads libgomp (it is read once, at load); say what holds."""
    # With the default (active) policy, waiting OpenMP threads spin; on CPUs shared with other
    # processes that made 2-thread BLAS searches here 6-8x slower than with passive waiting.
    if policy != "inherit":
        if "faiss" in sys.modules:
            return f"OMP_WAIT_POLICY not set to {policy}: faiss was already loaded"
        os.environ["OMP_WAIT_POLICY"] = policy.upper()
    return f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '(unset: active)')}"


def _machine_state() -> str:
    load = " ".join(f"{value:.2f}" for value in os.getloadavg())
    return f"cpus={os.cpu_count()} loadavg(1,5,15 min)={load}"


def main(argv: list[str] | None = None) -> int:
    config = parse_config(argv)
    policy_note = apply_omp_wait_policy(config.omp_wait_policy)
    import faiss
    import scipy

    faiss.omp_set_num_threads(config.threads)

    def log(message: str) -> None:
        print(f"  .. {time.strftime('%H:%M:%S')} {message}", file=sys.stderr, flush=True)

    started = time.perf_counter()
    print(f"retrieval benchmark: {dataclasses.asdict(config)}")
    print(
        f"faiss {faiss.__version__}, scipy {scipy.__version__}, numpy {np.__version__}; "
        f"start: {_machine_state()}; {policy_note}"
    )
    rows: list[Row] = []

    def emit(new: list[Row]) -> None:
        # Printed as each method finishes: a run killed later still leaves these figures.
        rows.extend(new)
        for row in new:
            print(f"row: {format_row(row, rows, config)}", flush=True)

    for dataset in config.datasets:
        bench_dataset(faiss, dataset, config, log, emit)
    print()
    print(format_table(rows, config))
    ratios = format_ratios(rows)
    if ratios:
        print("\nRatios (query time, same dataset):")
        print(ratios)
    print()
    print(format_notes(config))
    print(
        f"\nend: {_machine_state()}; total {time.perf_counter() - started:.0f} s. "
        "Timings are noisy when other processes share the CPUs; compare within a run."
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

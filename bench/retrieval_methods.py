"""The retrieval benchmark's methods (Flat, HNSW, IVF-PQ, cKDTree, index_builder's specs), each timed on one dataset."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from bench.retrieval_config import DATASETS, BenchConfig, Row
from bench.retrieval_data import make_dataset
from bench.retrieval_measure import (
    PeakRss,
    best_time,
    blas_threshold,
    index_bytes,
    interleaved_best_times,
    recall_at_k,
    release_freed_memory,
    timed_build,
)


def bench_flat(faiss, data, queries, config: BenchConfig, dataset: str) -> tuple[list[Row], np.ndarray]:
    """Exact inner-product scan; its default-setting result is the ground truth for recall."""
    memory = PeakRss()
    memory.start()

    def build():
        index = faiss.IndexFlatIP(config.dim)
        index.add(data)
        return index

    index, build_s, build_cpu = timed_build(build)
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

    index, build_s, build_cpu = timed_build(build)
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

    index, build_s, build_cpu = timed_build(build)
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
    refined, refine_s, refine_cpu = timed_build(lambda: faiss.IndexRefineFlat(index, faiss.swig_ptr(data)))
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
    tree, build_s, build_cpu = timed_build(lambda: cKDTree(data))
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

    index, build_s, build_cpu = timed_build(build)
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
        release_freed_memory()
    return rows

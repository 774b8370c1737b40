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

This file is the command line; beside it: retrieval_config (BenchConfig, Row), retrieval_data
(the vectors), retrieval_measure (timing, recall, memory), retrieval_methods (one function per
index kind) and retrieval_report (the printed table and notes).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

# Run as a script, bench/ is on the path but not the repository root its sibling modules import from.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.retrieval_config import DATASETS, METHODS, BenchConfig, Row
from bench.retrieval_methods import bench_dataset
from bench.retrieval_report import format_notes, format_ratios, format_row, format_table


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

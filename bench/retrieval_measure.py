"""How the retrieval benchmark measures: best-of wall times, recall@k, peak RSS growth, index file size."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import dataclasses
import gc
import time
from collections.abc import Callable, Iterator

import numpy as np


@dataclasses.dataclass(frozen=True)
class Timed:
    """A query result with its best wall time over `runs` repetitions."""

    ids: np.ndarray
    seconds: float
    runs: int


def _proc_status_bytes(field: str) -> int | None:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def release_freed_memory() -> None:
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
        release_freed_memory()
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


def timed_build(build: Callable[[], object]) -> tuple[object, float, float]:
    """The built object, its wall seconds and its process CPU seconds."""
    wall, cpu = time.perf_counter(), time.process_time()
    index = build()
    return index, time.perf_counter() - wall, time.process_time() - cpu

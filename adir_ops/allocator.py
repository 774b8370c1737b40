"""Keep freed tensor memory in the process for reuse, instead of glibc handing it back to the kernel after every op.

glibc serves an allocation above its mmap threshold (128 KiB, rising on its own to at most
32 MiB) with a fresh mmap and unmaps it on free; a thread other than the main one allocates
from an arena whose heaps are at most 64 MiB, so anything bigger is an mmap there whatever the
threshold. A CPU forward allocates and frees tens of large activation tensors per batch, so
every 4 KiB page of each is faulted in and zeroed by the kernel again, batch after batch: most
of a CPU forward's time went to the kernel, and the settings below made it several times faster
for a few hundred MiB of peak RSS (docs/throughput.md, "What changed"). Ray Data runs a
map_batches actor's calls in a thread of its own, so there the single arena matters as much as
the thresholds.

The settings: big blocks come from the heap (mmap threshold 1 GiB), the heap's top is never
given back (trim threshold at its maximum), and all threads share the main arena, whose heap
has no size limit (a thread-local arena's would send big blocks back to mmap). The cost is
that a process keeps its peak heap for its lifetime, which for a worker that runs the same
forward all day is its working set anyway.

Process-wide, so only entry points use it, never library code:
- `keep_freed_memory()` sets them in a running process (the CLI, a reconstruct actor). Threads
  that already picked an arena keep it, so call it before starting threads.
- `worker_env()` gives them as glibc's environment variables, read when a process starts,
  for Ray workers (runtime_env env_vars): effective in every thread of the worker.
ADIR_KEEP_FREED_MEMORY=0 turns both off; on a C library other than glibc (musl, macOS)
`keep_freed_memory` does nothing, and glibc's variables are ignored there.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

# mallopt parameter numbers from glibc's <malloc.h>.
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
# Larger than any single activation tensor of our models at their batch sizes (the biggest,
# efficientnet-lite0's first expanded block at batch 64, 64 x 96 x 112 x 112 floats, is 294 MiB);
# bigger blocks still get an mmap.
MMAP_THRESHOLD = 1 << 30
TRIM_THRESHOLD = (1 << 31) - 1  # glibc's maximum for mallopt: never trim the heap top
ARENA_MAX = 1
ENV = "ADIR_KEEP_FREED_MEMORY"
# The same settings as glibc's environment variables (the trailing underscores are glibc's).
GLIBC_ENV = {
    "MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD),
    "MALLOC_TRIM_THRESHOLD_": str(TRIM_THRESHOLD),
    "MALLOC_ARENA_MAX": str(ARENA_MAX),
}

_applied: bool | None = None


def enabled() -> bool:
    return os.environ.get(ENV, "1").strip().lower() not in ("0", "false", "no", "off")


def worker_env() -> dict[str, str]:
    """Environment variables that start a worker process with these settings ({} when turned off).

    A variable the caller already set is left out, so the worker inherits the caller's choice.
    """
    if not enabled():
        return {}
    return {name: value for name, value in GLIBC_ENV.items() if name not in os.environ}


def keep_freed_memory() -> bool:
    """Apply the settings to this process (once); True if they are in effect."""
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    if not enabled():
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc: nothing to tune
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # mallopt returns 1 on success; all must hold, or big blocks would still go back to the kernel.
    _applied = all(
        mallopt(param, value) == 1
        for param, value in (
            (M_MMAP_THRESHOLD, MMAP_THRESHOLD),
            (M_TRIM_THRESHOLD, TRIM_THRESHOLD),
            (M_ARENA_MAX, ARENA_MAX),
        )
    )
    return _applied

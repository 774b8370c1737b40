"""The allocator settings: a freed big tensor's pages are reused by the next one, not faulted in again (glibc).

Page faults, not seconds: they are what the settings remove, and they do not depend on the load.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

from adir_ops import allocator

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PAGES = 64 * 2**20 // 4096  # one 64 MiB tensor

# Rounds of a 64 MiB tensor written in full, like one activation per layer of a forward, in
# the main thread and in a thread started afterwards (Ray Data calls its actors from one).
# After 5 rounds of warm-up, the faults of the next 20 are counted.
PROBE = """
import resource, sys, threading
from adir_ops.allocator import keep_freed_memory
applied = keep_freed_memory() if sys.argv[1] == "mallopt" else None
import torch

def faults(out):
    for _ in range(5):
        torch.empty(16 * 2**20).fill_(1.0)
    start = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
    for _ in range(20):
        torch.empty(16 * 2**20).fill_(1.0)
    out.append(resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - start)

main, thread = [], []
faults(main)
t = threading.Thread(target=faults, args=(thread,))
t.start()
t.join()
print(applied, main[0], thread[0])
"""


def probe(how: str, env: dict[str, str]) -> tuple[str, int, int]:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, how],
        capture_output=True,
        text=True,
        cwd=ROOT,
        # One OpenMP thread: fill_'s pages are then faulted in by the thread that counts them.
        env={
            **{k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")},
            "PYTHONPATH": ROOT,
            "OMP_NUM_THREADS": "1",
            **env,
        },
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    applied, main, thread = done.stdout.split()
    return applied, int(main), int(thread)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the settings are glibc's")
def test_freed_tensor_memory_is_reused_instead_of_faulted_in_again():
    _, off_main, off_thread = probe("none", {allocator.ENV: "0"})
    # Without the settings, every round maps fresh pages: 20 x 16,384 faults.
    assert off_main > 15 * PAGES and off_thread > 15 * PAGES, (off_main, off_thread)

    applied, main, thread = probe("mallopt", {})
    assert applied == "True"
    assert main < off_main / 4 and thread < off_thread / 4, (main, thread, off_main, off_thread)

    # As a Ray worker starts: the settings in its environment, nothing called.
    _, env_main, env_thread = probe("none", allocator.worker_env())
    assert env_main < off_main / 4 and env_thread < off_thread / 4, (env_main, env_thread)


def test_worker_env_is_empty_when_turned_off_and_keeps_the_callers_own_settings(monkeypatch):
    monkeypatch.setenv(allocator.ENV, "0")
    assert allocator.worker_env() == {}
    monkeypatch.setenv(allocator.ENV, "1")
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    env = allocator.worker_env()
    assert "MALLOC_ARENA_MAX" not in env and env["MALLOC_MMAP_THRESHOLD_"] == str(allocator.MMAP_THRESHOLD)

"""A local Ray cluster started by a command never outlives it: a watchdog ends its processes if the driver is killed.

`ray.init()` without an address starts raylet, the GCS, a dashboard agent and a runtime-env agent
as children of the driver. A driver that exits shuts them down; one killed with SIGKILL cannot,
and `ray::DashboardAgent` and `ray::RuntimeEnvAgent` (sometimes the raylet too) then run for ever.
The watchdog is a separate process in its own session (so a terminal's signals and the driver's
death do not reach it) that notes the driver's descendants every `INTERVAL_S`; once the driver is
gone it sends them SIGTERM, then SIGKILL to any left after `GRACE_S`. Processes are held as
psutil handles, which compare start times: a pid reused by an unrelated process is never signalled.

A driver that joins a running cluster (--ray-address, RAY_ADDRESS) starts no Ray process and gets
no watchdog: that cluster is not the job's to end.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from typing import Any

INTERVAL_S = 0.5
GRACE_S = 5.0
RAY_DAEMONS = ("raylet", "gcs_server")  # the processes that mark a cluster this driver started itself


def init_ray(address: str | None = None, **options: Any) -> None:
    """ray.init for a command-line job; if that started a local cluster, a watchdog ends it should this process be killed."""
    import ray

    ray.init(address=address, **options)
    if started_local_cluster():
        start_watchdog()


def started_local_cluster(pid: int | None = None) -> bool:
    """Whether process `pid` (default: this one) is the parent of a raylet or GCS server, i.e. started its cluster."""
    import psutil

    try:
        return any(_name(child) in RAY_DAEMONS for child in psutil.Process(pid).children())
    except psutil.Error:
        return False


def start_watchdog(pid: int | None = None) -> subprocess.Popen:
    """Start the watchdog of process `pid` (default: this one); it exits by itself once that process is gone."""
    return subprocess.Popen(
        [sys.executable, "-m", "cluster.watchdog", str(pid or os.getpid())],
        start_new_session=True,  # not in the driver's process group: a Ctrl-C or the driver's kill does not end it
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        close_fds=True,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),  # `-m cluster.watchdog` from any folder
    )


def watch(pid: int, interval_s: float = INTERVAL_S, grace_s: float = GRACE_S) -> int:
    """Note `pid`'s descendants until it is gone, then end those still running; returns how many were ended."""
    import psutil

    try:
        driver = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return 0
    seen: dict[int, Any] = {}
    while True:
        try:
            if not driver.is_running() or driver.status() == psutil.STATUS_ZOMBIE:
                break
            for child in driver.children(recursive=True):
                if child.pid != os.getpid():
                    seen.setdefault(child.pid, child)
        except psutil.NoSuchProcess:
            break
        time.sleep(interval_s)
    return end(list(seen.values()), grace_s)


def end(processes: list, grace_s: float = GRACE_S) -> int:
    """SIGTERM the processes still running (and whatever they started since), then SIGKILL what is left after grace_s."""
    import psutil

    alive = {}
    for process in processes:
        try:
            if process.is_running():  # same pid *and* start time: still the process that was noted
                alive[process.pid] = process
                for child in process.children(recursive=True):  # workers spawned after the last look
                    alive.setdefault(child.pid, child)
        except psutil.Error:
            continue
    alive.pop(os.getpid(), None)
    for process in alive.values():
        try:
            process.terminate()
        except psutil.Error:
            pass
    _, left = psutil.wait_procs(list(alive.values()), timeout=grace_s)
    for process in left:
        try:
            process.kill()
        except psutil.Error:
            pass
    return len(alive)


def _name(process) -> str:
    try:
        return process.name()
    except Exception:  # gone, or not ours to inspect
        return ""


if __name__ == "__main__":
    watch(int(sys.argv[1]))

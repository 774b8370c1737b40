"""A local Ray cluster started by `adir` ends when the driver is killed with SIGKILL (issue 21 §26)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from cluster.watchdog import RAY_DAEMONS, start_watchdog
from tests.cluster.helpers import write_pictures

# A "driver" that starts a long-lived helper in its own session, as Ray starts its agents: killing the
# driver's process group would not reach it.
DRIVER = """
import subprocess, sys, time
subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True)
time.sleep(600)
"""


def _gone(processes, timeout_s: float) -> list:
    deadline = time.monotonic() + timeout_s
    alive = list(processes)
    while alive and time.monotonic() < deadline:
        alive = [p for p in alive if _running(p)]
        time.sleep(0.2)
    return alive


@pytest.mark.timeout(60)
def test_the_watchdog_ends_a_killed_drivers_descendants_and_only_those():
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    driver = subprocess.Popen([sys.executable, "-c", DRIVER])
    try:
        process = psutil.Process(driver.pid)
        deadline = time.monotonic() + 20
        while not process.children() and time.monotonic() < deadline:
            time.sleep(0.1)
        helpers = process.children(recursive=True)
        assert helpers
        watchdog = start_watchdog(driver.pid)
        time.sleep(1.5)  # a few looks at the driver's descendants
        driver.send_signal(signal.SIGKILL)
        driver.wait()
        assert _gone(helpers, 20) == []
        assert watchdog.wait(timeout=20) == 0  # and it exits by itself
        assert bystander.poll() is None  # not the driver's: left alone
    finally:
        for p in (bystander, driver):
            p.kill()
            p.wait()


@pytest.mark.timeout(240)
def test_kill_9_of_reconstruct_leaves_no_process_of_its_ray_cluster(tmp_path):
    inputs = tmp_path / "inputs"
    write_pictures(str(inputs), [(f"i{n}", n) for n in range(6)], height=16, width=20)
    argv = [
        sys.executable,
        "-m",
        "pipelines.cli",
        "reconstruct",
        "--inputs",
        str(inputs),
        "--out",
        str(tmp_path / "out"),
    ]
    argv += ["--task", "sr4", "--mode", "baseline", "--prior", "tiny:16", "--steps", "1000", "--no-progress"]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # its own local cluster, not this session's
    driver = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        process = psutil.Process(driver.pid)
        ray_processes = _wait_for_actors(process, deadline=time.monotonic() + 150)
        names = {p.name() for p in ray_processes}
        assert set(RAY_DAEMONS) <= names, names
        driver.send_signal(signal.SIGKILL)
        driver.wait()
        left = _gone(ray_processes, 30)
        assert left == [], [(p.pid, p.name()) for p in left]
    finally:
        driver.kill()
        driver.wait()


def _wait_for_actors(process, deadline: float) -> list:
    """The driver's descendants once its Ray cluster runs an actor (a `ray::` worker) and the set has settled."""
    seen: list = []
    while time.monotonic() < deadline:
        try:
            children = process.children(recursive=True)
        except psutil.NoSuchProcess:
            pytest.fail("the reconstruct driver ended before its actors started")
        if any("ReconstructionWorker" in " ".join(_cmdline(c)) for c in children):
            if {c.pid for c in children} == {c.pid for c in seen}:
                return children
            seen = children
            time.sleep(2)  # settled for two looks: the watchdog (every 0.5 s) has seen them too
            continue
        time.sleep(0.5)
    pytest.fail("no reconstruct actor started in time")


def _running(process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _cmdline(process) -> list[str]:
    try:
        return process.cmdline()
    except psutil.Error:
        return []

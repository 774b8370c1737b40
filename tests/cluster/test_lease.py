"""The output-folder lease: one live holder at a time, locally and on a real S3 server; stale leases are taken over."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time

import pytest

from cluster.lease import LEASE_NAME, Lease, LeaseHeld


def test_a_live_lease_refuses_a_second_holder_until_released(tmp_path):
    first = Lease(str(tmp_path), heartbeat_s=0.05).acquire()
    with pytest.raises(LeaseHeld, match=f"pid {first.read()['pid']}"):
        Lease(str(tmp_path)).acquire()
    time.sleep(0.2)  # heartbeats keep rewriting it
    assert first.read()["token"] == first.token
    first.release()
    assert not (tmp_path / LEASE_NAME).exists()
    with Lease(str(tmp_path)) as second:
        assert second.read()["token"] == second.token


def test_a_dead_holder_on_this_host_or_an_old_heartbeat_is_taken_over(tmp_path):
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    ).stdout.strip()
    record = {"job": "x", "host": socket.gethostname(), "pid": int(dead), "token": "t", "heartbeat": time.time()}
    (tmp_path / LEASE_NAME).write_text(json.dumps(record))
    Lease(str(tmp_path)).acquire().release()
    elsewhere = {**record, "host": "another-host", "heartbeat": time.time() - 1000}
    (tmp_path / LEASE_NAME).write_text(json.dumps(elsewhere))
    Lease(str(tmp_path), ttl_s=60).acquire().release()
    (tmp_path / LEASE_NAME).write_text(json.dumps({**elsewhere, "heartbeat": time.time()}))
    with pytest.raises(LeaseHeld, match="another-host"):
        Lease(str(tmp_path), ttl_s=60).acquire()


def test_the_lease_works_on_object_storage(s3_bucket, s3_storage_options, s3fs_fs):
    out = f"s3://{s3_bucket}/run"
    with Lease(out, s3_storage_options):
        with pytest.raises(LeaseHeld):
            Lease(out, s3_storage_options).acquire()
    s3fs_fs.invalidate_cache()
    assert not s3fs_fs.exists(f"{s3_bucket}/run/{LEASE_NAME}")


@pytest.mark.parametrize(
    "heartbeat", [float("nan"), float("inf"), "NaN", 1e308, "future"], ids=["nan", "inf", "nan-text", "huge", "future"]
)
def test_a_heartbeat_no_clock_wrote_is_stale_not_a_lock_forever(tmp_path, heartbeat):
    """A future, NaN or infinite heartbeat never ages past the TTL: it must not hold the folder for ever."""
    beat = time.time() + 3600 if heartbeat == "future" else heartbeat
    record = {"job": "x", "host": "another-host", "pid": 4242, "token": "t", "heartbeat": beat}
    (tmp_path / LEASE_NAME).write_text(json.dumps(record))  # json writes NaN/Infinity, as a tampered file may hold
    with Lease(str(tmp_path)) as lease:
        assert lease.read()["token"] == lease.token


def test_a_heartbeat_slightly_ahead_is_clock_skew_and_the_message_says_how_long_to_wait(tmp_path):
    record = {"job": "x", "host": "another-host", "pid": 4242, "token": "t", "heartbeat": time.time() + 5}
    (tmp_path / LEASE_NAME).write_text(json.dumps(record))
    with pytest.raises(LeaseHeld, match=r"s ahead of this host's clock.*wait 12\d s for its lease to expire"):
        Lease(str(tmp_path)).acquire()
    (tmp_path / LEASE_NAME).write_text(json.dumps({**record, "heartbeat": time.time() - 100}))
    with pytest.raises(LeaseHeld, match=r"10\d s ago.*wait (19|20) s for its lease to expire"):
        Lease(str(tmp_path)).acquire()


@pytest.mark.parametrize("pid", [0, -1, 2**40])
def test_a_holder_pid_that_is_no_process_on_this_host_is_stale(tmp_path, pid):
    """os.kill(0 or -1, 0) signals a whole group (always "alive"); a huge pid overflows: none is a holder."""
    record = {"job": "x", "host": socket.gethostname(), "pid": pid, "token": "t", "heartbeat": time.time()}
    (tmp_path / LEASE_NAME).write_text(json.dumps(record))
    Lease(str(tmp_path)).acquire().release()

"""A lease on a job's output folder, so that two identical jobs do not both do all the work.

`OUT/lease.json` names its holder (host, pid, a random token) and a heartbeat time that a
background thread refreshes. A second job finding a live lease refuses to start, naming the
holder. A lease is stale — and taken over — when its heartbeat is older than `ttl_s`, or
when its holder ran on this host and that process is gone (a killed job's rerun on the same
machine need not wait). A heartbeat no clock can have written — in the future past
`CLOCK_SKEW_S`, NaN, infinite — is stale too: it would otherwise never expire.

Object stores have no atomic create-if-absent that every backend supports, so taking a lease
is write, wait, read back: two jobs starting within the same fraction of a second may both
believe they hold it, and the later writer wins at the next heartbeat (the loser then stops
refreshing and its work is still correct: every image is committed atomically and a rerun
skips it). This guards against the common case, a job launched twice, not a determined race.
"""

from __future__ import annotations

import json
import math
import os
import socket
import threading
import time
import uuid
from collections.abc import Mapping
from typing import Any

from adir_storage import commit_bytes, join_url, open_fs, redact_url

LEASE_NAME = "lease.json"
TTL_S = 120.0
HEARTBEAT_S = 20.0
SETTLE_S = 0.2  # between writing the lease and reading it back
# How far ahead of this host's clock another host's heartbeat may be and still count: hosts of one
# cluster agree to well under a second with NTP; a lease further ahead was not written by a live clock.
CLOCK_SKEW_S = 60.0
MAX_PID = 2**22  # Linux's pid_max ceiling: anything else is not a process


class LeaseHeld(RuntimeError):
    """Another live job holds the output folder."""


def _alive(pid: int) -> bool:
    if not 0 < pid <= MAX_PID:  # 0 and -1 would signal a whole process group: "alive" forever
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Lease:
    def __init__(
        self,
        out: str,
        storage_options: Mapping[str, Any] | None = None,
        *,
        ttl_s: float = TTL_S,
        heartbeat_s: float = HEARTBEAT_S,
        job: str = "adir reconstruct",
    ):
        self.url = join_url(out, LEASE_NAME)
        self.out = out
        self.storage_options = dict(storage_options or {})
        self.ttl_s, self.heartbeat_s, self.job = ttl_s, heartbeat_s, job
        self.token = uuid.uuid4().hex
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ state
    def read(self) -> dict[str, Any] | None:
        fs, path = open_fs(self.url, self.storage_options)
        fs.invalidate_cache(path)
        try:
            with fs.open(path, "rb") as f:
                data = json.loads(f.read().decode("utf-8"))
        except FileNotFoundError:
            return None
        except ValueError:  # torn or edited: nobody can hold it
            return None
        return data if isinstance(data, dict) else None

    def _stale(self, holder: Mapping[str, Any]) -> bool:
        try:
            beat, pid = float(holder["heartbeat"]), int(holder["pid"])
        except (KeyError, TypeError, ValueError, OverflowError):
            return True
        age = time.time() - beat
        if not math.isfinite(age) or age > self.ttl_s or age < -CLOCK_SKEW_S:
            return True  # expired, or a heartbeat no live clock wrote (NaN, infinite, far in the future)
        return holder.get("host") == socket.gethostname() and not _alive(pid)

    def _write(self) -> None:
        record = {
            "job": self.job,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "token": self.token,
            "heartbeat": time.time(),
        }
        commit_bytes(self.url, json.dumps(record).encode("utf-8"), self.storage_options)

    # ------------------------------------------------------------------ protocol
    def acquire(self) -> Lease:
        holder = self.read()
        if holder is not None and holder.get("token") != self.token and not self._stale(holder):
            self._refuse(holder)
        self._write()
        time.sleep(SETTLE_S)
        holder = self.read()
        if holder is not None and holder.get("token") != self.token:
            self._refuse(holder)
        self._thread = threading.Thread(target=self._beat, name="adir-lease", daemon=True)
        self._thread.start()
        return self

    def _refuse(self, holder: Mapping[str, Any]) -> None:
        try:
            age = time.time() - float(holder["heartbeat"])
        except (KeyError, TypeError, ValueError, OverflowError):
            age = math.nan
        ago = (
            "at an unknown time"
            if not math.isfinite(age)
            else f"{age:.0f} s ago"
            if age >= 0
            else f"{-age:.0f} s ahead of this host's clock"
        )
        left = max(0.0, self.ttl_s - age) if math.isfinite(age) else self.ttl_s  # when it expires, said truly
        raise LeaseHeld(
            f"{redact_url(self.out)} is being written by another job ({holder.get('job', '?')}, pid {holder.get('pid')} on "
            f"{holder.get('host')}, last heartbeat {ago}); wait for it to finish (this run would redo its work), "
            f"or, if it is dead, remove {self.url} or wait {left:.0f} s for its lease to expire"
        )

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            holder = self.read()
            if holder is not None and holder.get("token") != self.token:
                return  # taken over (we were the loser of a race, or paused past the TTL): stop claiming it
            try:
                self._write()
            except Exception:  # a missed heartbeat only shortens the lease; the job itself goes on
                pass

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        holder = self.read()
        if holder is not None and holder.get("token") == self.token:
            fs, path = open_fs(self.url, self.storage_options)
            try:
                fs.rm_file(path)
            except FileNotFoundError:
                pass

    def __enter__(self) -> Lease:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

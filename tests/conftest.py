"""Shared fixtures: a real S3-compatible server on loopback (moto), an s3fs filesystem for it, a local Ray cluster.

Any test package may use them; each starts once per session and is torn down at the end.
"""

from __future__ import annotations

import os
import socket
import uuid

import pytest


def pytest_configure(config):
    # Tests run tiny models in several processes (pytest + Ray workers) on a 2-core machine:
    # there, intra-op threads only add contention (measured: a tiny-UNet LoRA step took
    # 22 ms with 1 thread vs 850 ms with 2 under load). Set before torch is imported, and
    # inherited by Ray workers. A caller's own setting wins.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    # As `adir` itself runs (pipelines/cli.py): freed tensor memory is reused, not faulted in again.
    from adir_ops.allocator import keep_freed_memory

    keep_freed_memory()


S3_KEY = "adir-test-key"
S3_SECRET = "adir-test-secret"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_endpoint() -> str:
    """URL of an in-process moto S3 server on a free loopback port (real HTTP, real S3 API)."""
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture(scope="session")
def s3_storage_options(s3_endpoint) -> dict:
    """fsspec/s3fs storage options for the test server; plain data, so Ray workers can rebuild the filesystem.

    No region_name in client_kwargs: with "us-east-1" there, creating a bucket fails
    ("location-constraint is not valid").
    """
    return {"key": S3_KEY, "secret": S3_SECRET, "client_kwargs": {"endpoint_url": s3_endpoint}}


@pytest.fixture(scope="session")
def s3fs_fs(s3_storage_options):
    """An s3fs filesystem talking to the test server."""
    import s3fs

    return s3fs.S3FileSystem(**s3_storage_options)


@pytest.fixture
def s3_bucket(s3fs_fs) -> str:
    """A fresh, empty bucket on the test server (its name; bucket names need >= 3 characters)."""
    name = f"adir-{uuid.uuid4().hex[:12]}"
    s3fs_fs.mkdir(name)
    s3fs_fs.invalidate_cache()
    return name


@pytest.fixture(scope="session")
def ray_cluster():
    """A local Ray cluster with 2 CPUs, started once per session (start-up costs seconds)."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, logging_level="warning", configure_logging=True)
    try:
        yield ray
    finally:
        ray.shutdown()

"""Places and commits: what a URL names (local or not, the same place as another) and making bytes visible there at once.

The lowest layer of adir_storage: every other module of the package builds on these.
"""

from __future__ import annotations

import os
import posixpath
import uuid
from collections.abc import Mapping
from typing import Any

import fsspec
from fsspec.core import split_protocol

LOCAL_PROTOCOLS = (None, "file", "local")


def is_local(url: str) -> bool:
    return split_protocol(url)[0] in LOCAL_PROTOCOLS


def open_fs(url: str, storage_options: Mapping[str, Any] | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """(filesystem, path) for an fsspec URL or a plain path.

    Storage options (endpoint, credentials) apply to remote URLs only, so one options dict
    serves a job that reads s3:// and writes to a local folder.
    """
    if is_local(url):
        fs = fsspec.filesystem("file")
        return fs, fs._strip_protocol(url)
    fs, path = fsspec.core.url_to_fs(url, **dict(storage_options or {}))
    return fs, path


def join_url(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *[p.strip("/") for p in parts]])


def location(url: str) -> str:
    """A canonical form of a URL for comparing places: real path for local files (symlinks resolved), protocol://path otherwise."""
    protocol, path = split_protocol(url)
    if protocol in LOCAL_PROTOCOLS:
        return os.path.realpath(os.path.expanduser(path))
    protocol = {"s3a": "s3", "gcs": "gs"}.get(protocol, protocol)
    return f"{protocol}://" + posixpath.normpath("/" + path.strip("/")).lstrip("/")


def is_within(inner: str, outer: str) -> bool:
    """Whether location `inner` is `outer` or lies below it (both from `location`)."""
    return inner == outer or inner.startswith(outer.rstrip("/") + "/")


# Commit temporaries are hidden files named `.<target>.tmp-<uuid>`. No name we commit starts
# with '.' (cluster.results.safe_name never gives one; shard and error-row names are ours), so
# an input whose own name contains ".tmp-" is never mistaken for a leftover and deleted; and a
# temporary never ends in .png or .parquet, so listings by suffix never see one.
TEMP_MARK = ".tmp-"


def temporary_path(path: str) -> str:
    folder, name = os.path.split(path)
    return os.path.join(folder, f".{name}{TEMP_MARK}{uuid.uuid4().hex}")


def is_temporary(name: str) -> bool:
    return name.startswith(".") and TEMP_MARK in name


def commit_bytes(url: str, data: bytes, storage_options: Mapping[str, Any] | None = None) -> None:
    """Make `data` visible at `url` all at once: readers see the old object or the new one, never a part.

    Local disks: write a hidden temporary beside the target, fsync, rename over it (atomic on
    POSIX). Object stores: one PUT, which is all-or-nothing (S3 has no rename).
    """
    fs, path = open_fs(url, storage_options)
    if is_local(url):
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        tmp = temporary_path(path)
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
    else:
        fs.pipe_file(path, data)
        fs.invalidate_cache(path)

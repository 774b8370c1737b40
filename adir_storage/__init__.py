"""Storage: every read and write of the system goes through here, on any fsspec URL.

The bottom of the house: index_builder, cluster and pipelines import it; it imports none of
them (adir_ops, the method, never touches storage). What it holds:
- places: `open_fs`, `join_url`, `is_local`, `location` / `is_within` (is one place inside another);
- commits: `commit_bytes` (atomic), the temporaries it leaves when killed, and their clean-up;
- reads: `read_bytes`, `fetch_many` (concurrent, an exception per failed URI);
- weights: `local_copy` (a remote file or folder copied once per node);
- secrets: `redact_options` (only storage options known to be safe are written down) and
  `scrub` (credential values masked in a message);
- file names: `printable` / `is_utf8` (names that are not UTF-8 cannot be Parquet strings).
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import tempfile
import uuid
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
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


# storage_options whose values are safe to write down (config.yaml, logs): where and how to
# connect, never who. Everything else — keys, secrets, tokens, connection strings, headers,
# auth tuples, unknown options of any backend — is masked at any depth.
SAFE_STORAGE_OPTIONS = frozenset(
    {
        "endpoint_url",
        "region_name",
        "anon",
        "use_ssl",
        "verify",
        "requester_pays",
        "version_aware",
        "default_block_size",
        "default_fill_cache",
        "default_cache_type",
        "cache_regions",
        "signature_version",
        "addressing_style",
        "s3",
        "client_kwargs",
        "config_kwargs",
        "project",
        "skip_instance_cache",
        "use_listings_cache",
        "listings_expiry_time",
        "max_concurrency",
        "retries",
        "timeout",
        "connect_timeout",
        "read_timeout",
        "consistency",
        "requests_timeout",
    }
)
MASK = "***"


def redact_options(options: Any) -> Any:
    """storage_options with every value not known to be safe replaced by '***' (keys kept, so a reader sees what was set)."""
    if not isinstance(options, Mapping):
        return MASK
    redacted = {}
    for key, value in options.items():
        if str(key) not in SAFE_STORAGE_OPTIONS:
            redacted[key] = MASK
        elif isinstance(value, Mapping):
            redacted[key] = redact_options(value)
        elif value is None or isinstance(value, (bool, int, float)) or (isinstance(value, str) and "@" not in value):
            # A URL with user:password@ in it is a credential even under a safe key.
            redacted[key] = value
        else:
            redacted[key] = MASK
    return redacted


def _secret_values(options: Any, safe: bool = False) -> list[str]:
    if isinstance(options, Mapping):
        return [v for k, value in options.items() for v in _secret_values(value, str(k) in SAFE_STORAGE_OPTIONS)]
    if isinstance(options, (list, tuple)):
        return [v for value in options for v in _secret_values(value, False)]
    if isinstance(options, str) and (not safe or "@" in options):
        return [options]
    return []


def scrub(text: str, storage_options: Mapping[str, Any] | None) -> str:
    """`text` (an error message, a log line) with every credential value of `storage_options` masked."""
    for secret in sorted(_secret_values(storage_options or {}), key=len, reverse=True):
        if len(secret) >= 4:  # masking "a" or "" would garble the message and hide nothing
            text = text.replace(secret, MASK)
    return text


def printable(text: str) -> str:
    """`text` as valid UTF-8 for messages and error rows: a file name's undecodable bytes shown as \\xNN."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


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


def remove_stale_temporaries(out: str, folders: Sequence[str]) -> int:
    """Delete the temp files of `commit_bytes` that a killed process left in OUT/<folder> (local only).

    Object stores never get any (one PUT per commit). Call it only while no writer runs.
    """
    if not is_local(out):
        return 0
    _, root = open_fs(out)
    removed = 0
    for folder in folders:
        path = os.path.join(root, folder)
        for name in os.listdir(path) if os.path.isdir(path) else ():
            if is_temporary(name):
                os.remove(os.path.join(path, name))
                removed += 1
    return removed


def remove_if_exists(url: str, storage_options: Mapping[str, Any] | None = None) -> None:
    fs, path = open_fs(url, storage_options)
    fs.invalidate_cache(path)
    if fs.exists(path):
        fs.rm_file(path)


def read_bytes(url: str, storage_options: Mapping[str, Any] | None = None) -> bytes:
    fs, path = open_fs(url, storage_options)
    return fs.cat_file(path)


def fetch_many(
    urls: Sequence[str], storage_options: Mapping[str, Any] | None = None, threads: int = 16
) -> list[bytes | BaseException]:
    """Bytes of each URL, or the exception that stopped it; concurrent, since object stores are latency-bound."""

    def fetch(url: str) -> bytes | BaseException:
        try:
            return read_bytes(url, storage_options)
        except Exception as exc:  # any failure to read belongs to that one URL
            return exc

    urls = list(urls)
    if len(urls) <= 1 or threads <= 1:
        return [fetch(u) for u in urls]
    with ThreadPoolExecutor(max_workers=min(threads, len(urls))) as pool:
        return list(pool.map(fetch, urls))


def local_copy(url: str, storage_options: Mapping[str, Any] | None = None) -> str:
    """A local path for a weights file or folder: itself if local, else a copy in a per-node cache (made once)."""
    if is_local(url):
        return url
    # Remote weights are copied once per node to local disk: the loaders read files.
    fs, path = open_fs(url, storage_options)
    local = os.path.join(tempfile.gettempdir(), "adir-priors", hashlib.sha256(url.encode()).hexdigest()[:16])
    target = os.path.join(local, os.path.basename(path.rstrip("/")))
    if not os.path.exists(target):
        if not fs.exists(path):
            raise FileNotFoundError(
                f"{url} does not exist; upload the weights there or pass a local path (see README, Real models)"
            )
        os.makedirs(local, exist_ok=True)
        # Download beside, then rename: actors sharing a node never load a half-copied file.
        partial = f"{target}.partial-{os.getpid()}"
        fs.get(path, partial, recursive=fs.isdir(path))
        try:
            os.replace(partial, target)
        except OSError:  # another actor of this node finished first
            if not os.path.exists(target):
                raise
    return target

"""Storage: every read and write of the system goes through here, on any fsspec URL.

The bottom of the house: index_builder, cluster and pipelines import it; it imports none of
them (adir_ops, the method, never touches storage). What it holds:
- places: `open_fs`, `join_url`, `is_local`, `location` / `is_within` (is one place inside another);
- commits: `commit_bytes` (atomic), the temporaries it leaves when killed, and their clean-up;
- reads: `read_bytes`, `fetch_many` (concurrent, an exception per failed URI);
- weights: `local_copy` (a remote file or folder copied once per node);
- secrets (`adir_storage.secrets`): `redact_options` (only storage options known to be safe are written
  down), `redact_url` / `redact_text` (a URL's password and signed-query tokens) and `scrub` (both, in a message);
- file names: `printable` / `is_utf8` (names that are not UTF-8 cannot be Parquet strings).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from adir_storage.folders import JOB_MARKER, FolderRefused, check_no_links, claim_output_folder  # noqa: F401
from adir_storage.places import (  # noqa: F401
    LOCAL_PROTOCOLS,
    TEMP_MARK,
    commit_bytes,
    is_local,
    is_temporary,
    is_within,
    join_url,
    location,
    open_fs,
    temporary_path,
)
from adir_storage.secrets import (  # noqa: F401  (the package's import surface)
    MASK,
    SAFE_STORAGE_OPTIONS,
    has_credentials,
    redact_options,
    redact_text,
    redact_url,
    scrub,
)


def printable(text: str) -> str:
    """`text` as valid UTF-8 for messages and error rows: a file name's undecodable bytes shown as \\xNN."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


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


# Bytes read for one image at most, by default: far above any real photo (a 24 MP 16-bit TIFF is ~150 MB),
# far below what takes a machine down (a link to /dev/zero is endless).
MAX_READ_BYTES = 512 * 1024 * 1024


class NotAFile(ValueError):
    """An input that is not a regular file (a FIFO, a device, a socket) or is larger than the read cap."""


def read_bytes(
    url: str, storage_options: Mapping[str, Any] | None = None, max_bytes: int | None = MAX_READ_BYTES
) -> bytes:
    """The bytes of one object; only regular files are read (a FIFO would block forever, /dev/zero never ends),
    and at most `max_bytes` of them (None: no cap)."""
    fs, path = open_fs(url, storage_options)
    if is_local(url):
        import stat

        mode = os.stat(path).st_mode  # follows links: a link to /dev/zero is a device
        if not stat.S_ISREG(mode):
            kind = (
                "a FIFO"
                if stat.S_ISFIFO(mode)
                else "a device"
                if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
                else "a socket"
                if stat.S_ISSOCK(mode)
                else "not a regular file"
            )
            raise NotAFile(
                f"{redact_url(url)} is {kind}; only regular files are read as images. Remove it from the inputs"
            )
    if max_bytes is None:
        return fs.cat_file(path)
    with fs.open(path, "rb") as f:
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise NotAFile(
            f"{redact_url(url)} is larger than {max_bytes / 2**20:.0f} MiB, the cap on bytes read per image; "
            "raise --max-input-bytes if it is a real image"
        )
    return data


def fetch_many(
    urls: Sequence[str],
    storage_options: Mapping[str, Any] | None = None,
    threads: int = 16,
    max_bytes: int | None = MAX_READ_BYTES,
) -> list[bytes | BaseException]:
    """Bytes of each URL (at most max_bytes each, as read_bytes), or the exception that stopped it; concurrent,
    since object stores are latency-bound."""

    def fetch(url: str) -> bytes | BaseException:
        try:
            return read_bytes(url, storage_options, max_bytes=max_bytes)
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

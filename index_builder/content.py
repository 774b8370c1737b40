"""What a corpus entry holds, known without reading it: a content stamp for resume, and whether it is a regular file.

A shard is skipped on a rerun only if its images are the same images, not just the same names
(issue 21: a picture replaced under its name kept its old embedding). Reading every file to hash
it would cost as much as the build, so the stamp is what the listing gives for free: the object
store's ETag or checksum where it has one (a hash of the content), else size and modification
time, plus the inode on a local disk (a file renamed over another changes it).

Only regular files are corpus images: a FIFO blocks the reader forever and a link to /dev/zero
never ends, so they are refused here, from their metadata, without being opened.
"""

from __future__ import annotations

import os
import posixpath
import stat
import sys
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from adir_storage import is_local, open_fs, redact_url

HASH_FIELDS = ("ETag", "etag", "md5Hash", "crc32c", "checksum", "sha256")
TIME_FIELDS = ("mtime", "LastModified", "last_modified", "updated", "modified", "created")


class NotRegular(ValueError):
    """A corpus entry that is not a regular file: an error row, never opened."""


def _kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISDIR(mode):
        return "a folder"
    return "not a regular file"


def local_stamp(path: str) -> str:
    """size:mtime_ns:inode of a local file (links followed); NotRegular for anything but a regular file."""
    st = os.stat(path)
    if not stat.S_ISREG(st.st_mode):
        raise NotRegular(
            f"{path} is {_kind(st.st_mode)}; only regular files are corpus images: remove it from the corpus"
        )
    return f"{st.st_size}:{st.st_mtime_ns}:{st.st_ino}"


def remote_stamp(info: Mapping[str, Any]) -> str:
    """The store's content hash when its listing has one, else size and modification time."""
    for name in HASH_FIELDS:
        if info.get(name):
            return f"{name}={str(info[name]).strip(chr(34))}"
    when = next((info[name] for name in TIME_FIELDS if info.get(name) is not None), "")
    return f"{info.get('size', '')}:{when}"


def folder_stamps(fs, infos: Mapping[str, Mapping[str, Any]], local: bool) -> dict[str, str | NotRegular]:
    """path → stamp (or the NotRegular that rejects it) for a folder listing's file entries."""
    out: dict[str, str | NotRegular] = {}
    for path, info in infos.items():
        if not local:
            out[path] = remote_stamp(info)
            continue
        try:
            out[path] = local_stamp(path)
        except NotRegular as exc:
            out[path] = exc
        except OSError as exc:  # a dangling link, a permission problem: the read would fail the same way
            out[path] = NotRegular(f"{path} cannot be read: {exc.strerror or exc}")
    return out


def uri_stamps(uris: Sequence[str], storage_options: Mapping[str, Any] | None) -> list[str | NotRegular]:
    """The stamps of URIs from a list file: local ones stat'ed, remote ones from a listing of each parent folder.

    A remote parent that cannot be listed (read-only access) leaves its URIs unstamped (""), fingerprinted
    by id and URI as before, with one warning.
    """
    stamps: list[str | NotRegular] = [""] * len(uris)
    remote: dict[str, list[int]] = {}
    for i, uri in enumerate(uris):
        if is_local(uri):
            try:
                stamps[i] = local_stamp(open_fs(uri)[1])
            except NotRegular as exc:
                stamps[i] = exc
            except OSError:
                stamps[i] = "missing"  # the read stage makes it an error row, with its reason
        else:
            remote.setdefault(posixpath.dirname(uri.rstrip("/")), []).append(i)

    def listing(parent: str) -> dict[str, Mapping[str, Any]] | None:
        fs, path = open_fs(parent, storage_options)
        try:
            fs.invalidate_cache(path)
            return {info["name"].rstrip("/").rsplit("/", 1)[-1]: info for info in fs.ls(path, detail=True)}
        except Exception as exc:  # no list permission, or a store that cannot list
            print(
                f"warning: cannot list {redact_url(parent)} ({type(exc).__name__}); its images are fingerprinted "
                "by name only, so one replaced in place is not seen on a resume",
                file=sys.stderr,
            )
            return None

    with ThreadPoolExecutor(max_workers=8) as pool:
        for parent, infos in zip(remote, pool.map(listing, remote)):
            for i in remote[parent]:
                info = (infos or {}).get(posixpath.basename(uris[i].rstrip("/")))
                stamps[i] = remote_stamp(info) if info else ("" if infos is None else "missing")
    return stamps

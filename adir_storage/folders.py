"""Whose output folder is this: every job writes only into a folder that is new, empty, or already its own.

A job marks the folder it writes with `OUT/adir-job.json` (`{"job": "adir evaluate", ...}`) before
its first output. A rerun of the same job resumes there; anything else in a non-empty folder (the
user's own files, another job's output) is refused before anything is written, so no job ever
replaces a file it did not make. Links inside OUT are refused too: a job never writes through one.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Mapping
from typing import Any

JOB_MARKER = "adir-job.json"
SHOWN = 5  # entries named in a refusal


class FolderRefused(ValueError):
    """The output folder holds files this job did not make (or links it would write through)."""


def _entries(fs, path: str) -> set[str]:
    try:
        return {p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(path, detail=False)} if fs.isdir(path) else set()
    except FileNotFoundError:
        return set()


def _marker_job(fs, path: str) -> str | None:
    try:
        with fs.open(path.rstrip("/") + "/" + JOB_MARKER, "rb") as f:
            data = json.loads(f.read(4096).decode("utf-8"))
    except (OSError, ValueError):
        return None
    return data.get("job") if isinstance(data, dict) and isinstance(data.get("job"), str) else None


def check_no_links(out: str, names: Iterable[str], storage_options: Mapping[str, Any] | None = None) -> None:
    """Refuse when any of OUT/<name> is a symbolic link (local disks; object stores have none)."""
    from adir_storage.places import is_local, open_fs

    if not is_local(out):
        return
    _, root = open_fs(out, storage_options)
    for name in names:
        path = os.path.join(root, name)
        if os.path.islink(path):
            raise FolderRefused(
                f"{path} is a symbolic link (to {os.readlink(path)}); a job never writes through a link inside "
                f"its output folder. Remove the link (the job recreates {name} as a folder) or choose another --out"
            )


def claim_output_folder(
    out: str,
    job: str,
    storage_options: Mapping[str, Any] | None = None,
    *,
    legacy: Callable[[set[str]], bool] | None = None,
    ignore: Iterable[str] = (),
    links: Iterable[str] = (),
    flag: str = "--out",
) -> bool:
    """Make OUT this job's folder, or refuse it; True when it already was (a rerun resumes), False when new.

    legacy(entries): whether a folder without a marker is this job's own output from before markers
    existed (reconstruct's config.yaml). ignore: entries a refused folder may still hold (a lease).
    links: OUT-relative names that must not be symbolic links (the folders the job writes into).
    """
    from adir_storage.places import commit_bytes, join_url, open_fs

    fs, path = open_fs(out, storage_options)
    fs.invalidate_cache()
    if fs.exists(path) and not fs.isdir(path):
        raise FolderRefused(f"{flag} {out} is a file, not a folder; choose a folder")
    check_no_links(out, links, storage_options)
    entries = _entries(fs, path)
    owner = _marker_job(fs, path) if JOB_MARKER in entries else None
    if owner == job:
        return True
    if owner is not None:
        raise FolderRefused(
            f"{flag} {out} holds the output of `{owner}`, not of `{job}`; this job would replace it. "
            f"Choose an empty or new {flag} folder"
        )
    others = sorted(entries - set(ignore) - {JOB_MARKER})
    resumed = bool(others) and legacy is not None and legacy(entries)
    if others and not resumed:
        shown = ", ".join(others[:SHOWN]) + (", ..." if len(others) > SHOWN else "")
        raise FolderRefused(
            f"{flag} {out} is not empty ({shown}) and is not an earlier `{job}` output (no {JOB_MARKER}); "
            f"the job would write over those files. Choose an empty or new {flag} folder"
        )
    commit_bytes(join_url(out, JOB_MARKER), json.dumps({"job": job}).encode("utf-8"), storage_options)
    return resumed

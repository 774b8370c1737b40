"""The images a reconstruction job works on: ids, URIs, safe output names and (optionally) ground truths."""

from __future__ import annotations

import os
import posixpath
import stat
import sys
from typing import Any, Mapping

from adir_ops.physics.tasks import scale_factor
from adir_storage import MAX_READ_BYTES, is_local, open_fs, redact_text, redact_url
from cluster.results import assign_names
from index_builder.sources import IMAGE_EXTENSIONS, list_source
from pipelines.references import SCALE_MISMATCH, References, degraded_id


def unreadable(uri: str, max_bytes: int = MAX_READ_BYTES) -> str | None:
    """Why a local input cannot be read as an image (not a regular file, or over the byte cap), from one stat;
    None if it can, or if its size is not known for free (a remote object: the read itself enforces both)."""
    if not is_local(uri):
        return None
    try:
        info = os.stat(open_fs(uri)[1])  # follows links: a link to /dev/zero is a device; never opens a FIFO
    except OSError:
        return None  # missing or unreadable: the read stage says which
    mode = info.st_mode
    if stat.S_ISDIR(mode):
        return None
    if not stat.S_ISREG(mode):
        kind = (
            "a FIFO" if stat.S_ISFIFO(mode) else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "a socket"
        )
        return f"not a regular file ({kind}); only regular files are read as images"
    if info.st_size > max_bytes:
        return (
            f"{info.st_size:,} bytes, over the cap of {max_bytes:,} bytes read per image; "
            "raise --max-input-bytes if it is a real image"
        )
    return None


def _check_source(url: str, what: str) -> None:
    """A local --inputs / --reference that is neither a folder nor a regular file (a FIFO list would block forever)."""
    reason = unreadable(url, max_bytes=2**62)
    if reason is not None:
        raise ValueError(f"{what} {url} is {reason.split(';')[0]}; pass a folder, a list file or an image")


def _listing(
    url: str, storage_options: Mapping[str, Any] | None, max_bytes: int = MAX_READ_BYTES, what: str = "--inputs"
) -> tuple[list[tuple[str, str]], list[tuple[str, str, str]]]:
    """(id, uri) pairs of a folder, a .csv/.txt list, or one image file (id = path below the folder, no extension),
    and the (id, uri, error) of files that cannot be inputs at all (names that are not UTF-8, FIFOs, devices,
    files over the byte cap)."""
    _check_source(url, what)
    fs, path = open_fs(url, storage_options)
    fs.invalidate_cache()
    if path.lower().endswith(IMAGE_EXTENSIONS) and fs.isfile(path):
        stem = posixpath.splitext(posixpath.basename(path))[0]
        pairs = [(stem, url if not is_local(url) else path)]
        rejected = []
    else:
        listing = list_source(url, storage_options=storage_options)
        pairs, rejected = list(zip(listing.image_ids, listing.uris)), listing.rejected
    # Every entry the listing refused is an error row (a name that is not UTF-8, a FIFO, a device), except a
    # second file with an id already taken: list_inputs warns about that one, as about any repeated id.
    unlisted = [(image_id, uri, unreadable(uri, max_bytes) or error) for image_id, uri, error in rejected]
    readable = []
    for image_id, uri in pairs:
        reason = unreadable(uri, max_bytes)
        if reason is None:
            readable.append((image_id, uri))
        else:  # its error row, written without an actor ever opening it
            unlisted.append((image_id, uri, reason))
    return readable, unlisted


def list_inputs(
    url: str,
    *,
    task: str,
    degraded: bool = False,
    reference: str | None = None,
    limit: int | None = None,
    storage_options: Mapping[str, Any] | None = None,
    max_bytes: int = MAX_READ_BYTES,
) -> list[dict[str, Any]]:
    """Items {image_id, uri, name[, reference_uri]} sorted by id; raises if there is nothing to do.

    A file that cannot be an item (a name that is not UTF-8, a FIFO, a device, more than
    `max_bytes`) is an item with "stage" and "error": the job writes it as an error row
    instead of dying or hanging on it.
    """
    pairs, unlisted = _listing(url, storage_options, max_bytes)
    factor = scale_factor(task) if degraded else 1
    truths = (
        References.listed(reference, *_listing(reference, storage_options, max_bytes, "--reference"))
        if reference
        else None
    )
    paired: dict[str, tuple[str | None, str | None]] = {}  # input uri -> (its ground truth, or why it has none)
    if truths is not None:
        own = {uri: image_id for image_id, uri in pairs}  # the input's own name, for a message
        matched = []
        for image_id, uri in pairs:
            image_id, truth, why = truths.match(image_id, factor)
            matched.append((image_id, uri))
            paired[uri] = (truth, why)
        pairs = matched
    elif degraded:
        pairs = [(degraded_id(i, factor), u) for i, u in pairs]
    seen: dict[str, str] = {}
    unique = []
    for image_id, uri in sorted(pairs):
        if image_id in seen:
            print(
                f"warning: input {redact_url(uri)} skipped: id {redact_text(repr(image_id))} is already taken by {redact_url(seen[image_id])}",
                file=sys.stderr,
            )
            continue
        seen[image_id] = uri
        unique.append((image_id, uri))
    failed = {}
    for image_id, uri, error in unlisted:
        if image_id in seen or image_id in failed:
            print(f"warning: input {redact_url(uri)} skipped: {redact_text(error)}", file=sys.stderr)
        else:
            failed[image_id] = (uri, error)
    everything = sorted([(i, u, None) for i, u in unique] + [(i, u, e) for i, (u, e) in failed.items()])
    if limit is not None:
        everything = everything[:limit]
    if not everything:
        raise ValueError(
            f"no input images found at {url} (looked for {', '.join(IMAGE_EXTENSIONS)} files); check --inputs"
        )
    if truths is not None:
        _check_some_paired(url, truths, factor, [(own[u], *paired[u]) for _, u, e in everything if e is None])
    names = assign_names([i for i, _, _ in everything])
    items = []
    for (image_id, uri, error), name in zip(everything, names):
        item = {"image_id": image_id, "uri": uri, "name": name}
        if error is None and uri in paired:
            truth, error = paired[uri]
            item["reference_uri"] = truth
        if error is not None:  # its error row names the file and the fix; the other inputs go on
            item.pop("reference_uri", None)
            item.update(stage="read", error=f"{uri}: {error}")
        items.append(item)
    return items


def _check_some_paired(
    url: str, truths: References, factor: int, inputs: list[tuple[str, str | None, str | None]]
) -> None:
    """Not one input (own name, ground truth, why none) with a file to pair with is a wrong folder or task, not
    missing files: one usage error before any work, instead of a job of error rows."""
    if not inputs or any(n in truths.files for name, _, _ in inputs for n in truths.candidates(name, factor)):
        return  # some input has a ground truth, or more than one, or one that cannot be read: its own row says
    name, _, why = inputs[0]
    if why and why.startswith(SCALE_MISMATCH):
        raise ValueError(f"input {name}: {why}")
    raise ValueError(
        f"none of the {len(inputs)} input(s) under --inputs {url} has a ground truth in --reference {truths.url} "
        f"(it holds e.g. {truths.example()}; {name} would pair with {' or '.join(truths.candidates(name, factor))}). "
        "Point --reference at the high-resolution folder of the same images: DIV2K_valid_LR_bicubic/X4 pairs "
        "with DIV2K_valid_HR"
    )

"""The images a reconstruction job works on: ids, URIs, safe output names and (optionally) ground truths."""

from __future__ import annotations

import posixpath
import re
import sys
from typing import Any, Mapping

from adir_ops.tasks import scale_factor
from adir_storage import is_local, open_fs
from cluster.results import assign_names
from index_builder.sources import IMAGE_EXTENSIONS, NOT_UTF8, list_source


def _listing(
    url: str, storage_options: Mapping[str, Any] | None
) -> tuple[list[tuple[str, str]], list[tuple[str, str, str]]]:
    """(id, uri) pairs of a folder, a .csv/.txt list, or one image file (id = path below the folder, no extension),
    and the (id, uri, error) of files that cannot be ids at all (names that are not UTF-8)."""
    fs, path = open_fs(url, storage_options)
    fs.invalidate_cache()
    if path.lower().endswith(IMAGE_EXTENSIONS) and fs.isfile(path):
        stem = posixpath.splitext(posixpath.basename(path))[0]
        return [(stem, url if not is_local(url) else path)], []
    listing = list_source(url, storage_options=storage_options)
    unlisted = []
    for image_id, uri, error in listing.rejected:
        if error == NOT_UTF8:
            unlisted.append((image_id, uri, error))
        else:
            print(f"warning: input {uri} skipped: {error}", file=sys.stderr)
    return list(zip(listing.image_ids, listing.uris)), unlisted


def degraded_id(image_id: str, task: str) -> str:
    """DIV2K names its x4 inputs `0801x4.png`: the id is `0801`, the same as its ground truth's."""
    factor = scale_factor(task)
    if factor == 1:
        return image_id
    match = re.fullmatch(rf"(.+?)x{factor}", image_id)
    return match.group(1) if match else image_id


def list_inputs(
    url: str,
    *,
    task: str,
    degraded: bool = False,
    reference: str | None = None,
    limit: int | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Items {image_id, uri, name[, reference_uri]} sorted by id; raises if there is nothing to do.

    A file that cannot be an item (a name that is not UTF-8) is an item with "stage" and
    "error": the job writes it as an error row instead of dying on it.
    """
    pairs, unlisted = _listing(url, storage_options)
    if degraded:
        pairs = [(degraded_id(i, task), u) for i, u in pairs]
    seen: dict[str, str] = {}
    unique = []
    for image_id, uri in sorted(pairs):
        if image_id in seen:
            print(
                f"warning: input {uri} skipped: id {image_id!r} is already taken by {seen[image_id]}", file=sys.stderr
            )
            continue
        seen[image_id] = uri
        unique.append((image_id, uri))
    failed = {}
    for image_id, uri, error in unlisted:
        if image_id in seen or image_id in failed:
            print(f"warning: input {uri} skipped: {error}", file=sys.stderr)
        else:
            failed[image_id] = (uri, error)
    everything = sorted([(i, u, None) for i, u in unique] + [(i, u, e) for i, (u, e) in failed.items()])
    if limit is not None:
        everything = everything[:limit]
    if not everything:
        raise ValueError(
            f"no input images found at {url} (looked for {', '.join(IMAGE_EXTENSIONS)} files); check --inputs"
        )
    truths = dict(_listing(reference, storage_options)[0]) if reference else {}
    names = assign_names([i for i, _, _ in everything])
    items = []
    for (image_id, uri, error), name in zip(everything, names):
        item = {"image_id": image_id, "uri": uri, "name": name}
        if error is not None:
            item.update(stage="read", error=f"{uri}: {error}")
        elif reference:
            item["reference_uri"] = truths.get(image_id)
        items.append(item)
    return items

"""The images a reconstruction job works on: ids, URIs, safe output names and (optionally) ground truths."""

from __future__ import annotations

import posixpath
import re
import sys
from typing import Any, Mapping

from cluster.results import assign_names
from index_builder.sources import IMAGE_EXTENSIONS, is_local, list_source, open_fs

SR_FACTORS = {"sr4": 4, "sr8": 8}


def _listing(url: str, storage_options: Mapping[str, Any] | None) -> list[tuple[str, str]]:
    """(id, uri) pairs of a folder, a .csv/.txt list, or one image file (id = path below the folder, no extension)."""
    fs, path = open_fs(url, storage_options)
    fs.invalidate_cache()
    if path.lower().endswith(IMAGE_EXTENSIONS) and fs.isfile(path):
        stem = posixpath.splitext(posixpath.basename(path))[0]
        return [(stem, url if not is_local(url) else path)]
    listing = list_source(url, storage_options=storage_options)
    for image_id, uri, error in listing.rejected:
        print(f"warning: input {uri} skipped: {error}", file=sys.stderr)
    return list(zip(listing.image_ids, listing.uris))


def degraded_id(image_id: str, task: str) -> str:
    """DIV2K names its x4 inputs `0801x4.png`: the id is `0801`, the same as its ground truth's."""
    factor = SR_FACTORS.get(task)
    if factor is None:
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
    """Items {image_id, uri, name[, reference_uri]} sorted by id; raises if there is nothing to do."""
    pairs = _listing(url, storage_options)
    if degraded:
        pairs = [(degraded_id(i, task), u) for i, u in pairs]
    seen: dict[str, str] = {}
    unique = []
    for image_id, uri in sorted(pairs):
        if image_id in seen:
            print(f"warning: input {uri} skipped: id {image_id!r} is already taken by {seen[image_id]}", file=sys.stderr)
            continue
        seen[image_id] = uri
        unique.append((image_id, uri))
    if limit is not None:
        unique = unique[:limit]
    if not unique:
        raise ValueError(f"no input images found at {url} (looked for {', '.join(IMAGE_EXTENSIONS)} files); check --inputs")
    truths = dict(_listing(reference, storage_options)) if reference else {}
    names = assign_names([i for i, _ in unique])
    items = []
    for (image_id, uri), name in zip(unique, names):
        item = {"image_id": image_id, "uri": uri, "name": name}
        if reference:
            item["reference_uri"] = truths.get(image_id)
        items.append(item)
    return items

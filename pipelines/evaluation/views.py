"""What the job saw: each image's degraded input, plain restoration and ground truth rebuilt, and its output PNG read.

A run folder is untrusted input: output_url keeps every output inside the run's images/ folder
and input_uri every input inside the run's --inputs (a folder, one image, or a .csv/.txt list of
images: then the images it lists), whatever results.parquet says.
"""

from __future__ import annotations

import posixpath
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from adir_storage import is_local, is_within, join_url, location
from cluster.results import IMAGES_DIR
from index_builder.sources import LIST_EXTENSIONS
from pipelines.evaluation.arms import PLAIN_SETTINGS, Run, freeze


@dataclass
class Views:
    """One image as the job saw it: the degraded input, its plain restoration and the ground truth; (C, H, W) in [0, 1]."""

    input01: Any
    plain01: Any
    truth01: Any | None


def _reference_uris(run: Run, storage_options) -> dict[str, str | None]:
    if run.reference_uris is None:
        from pipelines.inputs import list_inputs

        items = list_inputs(
            run.config["inputs"],
            task=run.config["task"],
            degraded=True,
            reference=run.config["reference"],
            storage_options=storage_options,
        )
        run.reference_uris = {it["image_id"]: it.get("reference_uri") for it in items}
    return run.reference_uris


def reproduce_views(row: Mapping[str, Any], run: Run, storage_options: Mapping[str, Any] | None = None) -> Views:
    """Rebuild the degraded input, its plain restoration and the ground truth exactly as cluster.worker did.

    Same operator options and the same per-image degradation generator, so the noise is the
    job's own (tests check that the plain restoration's PSNR equals the job's naive_psnr).
    """
    from adir_storage import read_bytes
    from cluster.images import decode_input, observe_input

    config = run.config
    task, image_id = row["task"], row["image_id"]
    pixels = decode_input(read_bytes(input_uri(row, run, storage_options=storage_options), storage_options))
    truth = None
    if config.get("degraded") and config.get("reference"):
        uri = _reference_uris(run, storage_options).get(image_id)
        if uri:
            truth = decode_input(read_bytes(uri, storage_options))
    seen = observe_input(  # the worker's own degrade step: the same operator, options and stream
        task,
        pixels,
        seed=row["seed"],
        image_id=image_id,
        degraded=bool(config.get("degraded")),
        reference01=truth,
        noise_sigma_255=config.get("noise_sigma_255"),
        degradation=config.get("degradation") or "known",
    )
    operator, y, truth = seen.operator, seen.y, seen.truth01
    plain = operator.naive_inverse(y).add(1).div(2).clamp(0, 1)
    input01 = y.add(1).div(2).clamp(0, 1)
    return Views(input01[0], plain[0], None if truth is None else truth[0])


def output_url(row: Mapping[str, Any], run: Run) -> str:
    """Where a row's PNG is, refusing any `output` that leaves the run's images/ folder.

    A run folder is untrusted input: its results.parquet could name `../../etc/passwd` and
    have that file read into the report. The job only ever writes `images/<safe name>.png`.
    """
    output = row.get("output")
    if not isinstance(output, str) or not output:
        raise ValueError(f"row {row.get('image_id')!r} of {run.url} names no output PNG")
    clean = posixpath.normpath(output)
    if (
        "://" in output
        or "\\" in output
        or clean != output
        or not clean.startswith(IMAGES_DIR + "/")
        or clean.count("/") != 1
    ):
        raise ValueError(
            f"row {row.get('image_id')!r} of {run.url} names output {output!r}, outside its {IMAGES_DIR}/ folder; refused"
        )
    url = join_url(run.url, clean)
    if is_local(url) and not is_within(location(url), location(join_url(run.url, IMAGES_DIR))):
        raise ValueError(
            f"row {row.get('image_id')!r} of {run.url}: {output!r} is a link out of the run folder; refused"
        )
    return url


def input_uri(
    row: Mapping[str, Any],
    run: Run,
    key: str = "uri",
    folder: str = "inputs",
    storage_options: Mapping[str, Any] | None = None,
) -> str:
    """A row's input URI, refused unless the run's config.yaml says the job read it: it lies in the
    --inputs folder (or is that one image), or the --inputs list file names it."""
    uri = row.get(key)
    root = run.config.get(folder) if isinstance(run.config, Mapping) else None
    if not isinstance(uri, str) or not isinstance(root, str) or not root:
        raise ValueError(f"{run.url} has no config.yaml naming its --{folder}: its input {uri!r} is not trusted")
    if root.lower().endswith(LIST_EXTENSIONS):
        listed = _listed(run, root, storage_options)
        if uri in listed or location(uri) in listed:
            return uri
        raise ValueError(
            f"row {row.get('image_id')!r} of {run.url} names input {uri!r}, which the run's --{folder} list "
            f"{root} does not name; refused"
        )
    if not is_within(location(uri), location(root)):
        raise ValueError(
            f"row {row.get('image_id')!r} of {run.url} names input {uri!r}, outside the run's --{folder} {root}; refused"
        )
    return uri


def _listed(run: Run, root: str, storage_options: Mapping[str, Any] | None) -> frozenset[str]:
    """The URIs a list file names, as written and as places (read once per run)."""
    if root not in run.listed:
        from index_builder.sources import list_source

        try:
            uris = list_source(root, storage_options=storage_options).uris
            run.listed[root] = frozenset(uris) | frozenset(location(u) for u in uris)
        except Exception as exc:  # a list gone since the job ran: every input of it goes missing, with this reason
            run.listed[root] = ValueError(f"the run's input list {root} cannot be read now ({exc}); refused")
    found = run.listed[root]
    if isinstance(found, Exception):
        raise found
    return found


def read_output(row: Mapping[str, Any], run: Run, storage_options: Mapping[str, Any] | None = None):
    """The reconstruction PNG of a row as (3, H, W) in [0, 1]."""
    from adir_storage import read_bytes
    from cluster.images import to_tensor01
    from index_builder.reader import decode_rgb

    return to_tensor01(decode_rgb(read_bytes(output_url(row, run), storage_options)))


class ViewCache:
    """Views per (task, settings of the degradation, image id): each input is read and degraded once."""

    def __init__(self, storage_options: Mapping[str, Any] | None = None):
        self.storage_options = storage_options
        self.views: dict[tuple, Views | Exception] = {}

    def get(self, row: Mapping[str, Any], run: Run) -> Views:
        key = (
            row["task"],
            row["image_id"],
            row["uri"],
            freeze({k: run.config.get(k) for k in PLAIN_SETTINGS}),
            row["seed"],
        )
        if key not in self.views:
            try:
                self.views[key] = reproduce_views(row, run, self.storage_options)
            except Exception as exc:  # an input gone since the job ran: its metrics go missing, with this reason
                self.views[key] = exc
        found = self.views[key]
        if isinstance(found, Exception):
            raise found
        return found

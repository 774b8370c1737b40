"""Where a reconstruction's outputs live: safe names, per-image result parts, resume checks, the merged table.

Output protocol (what makes a killed job safe to rerun). Each image owns two objects,
`OUT/images/<name>.png` and `OUT/results/<name>.parquet` (its one-row result), both written
by the actor that reconstructed it, each made visible in one step (temp file + rename on
local disks, a single PUT on object stores: `index_builder.writer.commit_bytes`). The PNG
goes first and the row second, so a row always means its PNG is complete. A failed image gets
`OUT/results/<name>~error.parquet` instead ('~' is outside the characters of a safe name, so
no image's success row can share that name with another's error row); a rerun retries it (errors
can be transient) and removes that row once it succeeds. What a rerun promises
(`cluster.run_folder` checks it before any work):
- Done is keyed by content. An image is done when its row and PNG exist, the PNG is whole (it ends
  in PNG's IEND chunk), and the row's `input_sha256` (and `reference_sha256`) are the hashes of
  the bytes the input (and its ground truth) hold now. A done image is skipped, so nothing
  finished is recomputed or written twice; any other is reconstructed again (same seed, same
  bytes), its stale PNG and row removed first: they are ours, and an old picture's output must
  not outlive it. A kill between the two writes leaves a PNG without a row: not done, redone.
- A corrupt part (not Parquet, not one row of RESULTS_SCHEMA, another image's row) is named to
  the user, moved aside to `OUT/results/corrupt/` (out of every listing, kept for inspection) and
  its image redone; it never stops the job.
- Rows are never dropped: `OUT/results.parquet` is merged at the end of every run from every part
  in OUT/results, not only those of this run's inputs (a `--limit 1` rerun keeps the other rows);
  one row per image (its success row, else its error row), sorted by id.
- Nothing is written through a link: the folders the job writes into (images/, results/, ...)
  are refused up front when they are symbolic links, and every commit replaces a file, never
  writes into what a link points at.
- Credentials never reach a part: `write_part` redacts the `uri` and scrubs the error of every row.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import io
import re
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Iterable, Mapping, Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from adir_storage import NotAFile, commit_bytes, join_url, open_fs, read_bytes, redact_url, scrub

IMAGES_DIR = "images"
RESULTS_DIR = "results"
RESULTS_NAME = "results.parquet"
CONFIG_NAME = "config.yaml"
STD_SCALE = 4.0  # the std map's PNG shows std x 4 (std of [0, 1] pixels rarely exceeds 0.25)
ADAPTERS_DIR = "adapters"  # the adapter cache (cluster.adapters)
THUMBNAILS_DIR = "cache"  # the mse-nn arm's corpus thumbnails (cluster.retrieval)
ERROR_SUFFIX = "~error"  # never part of a safe_name: see the module docstring
CORRUPT_DIR = "corrupt"  # OUT/results/corrupt/: parts that could not be read, moved out of every listing
MAX_NAME_CHARS = 120
MAX_PART_BYTES = 16 * 2**20  # a part is one row (a few KB): anything larger is not ours
# The stages of one image, in order, each timed into its `<stage>_s` column (the one list: the progress line,
# the benches and the tests read it here). The worker reads and degrades, ADIRPipeline runs the method's own
# stages, the worker scores and writes; adir_ops.rng.STREAMS draws one random stream per stage that needs one.
PIPELINE_STAGES = ("retrieval", "fetch", "adaptation", "sampling")
STAGES = ("read", "degrade", *PIPELINE_STAGES, "metrics", "write")

RESULTS_SCHEMA = pa.schema(
    [
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("uri", pa.string(), nullable=False),
        pa.field("name", pa.string(), nullable=False),  # safe output name: images/<name>.png
        pa.field("output", pa.string()),  # OUT-relative PNG path; null for an error row
        pa.field("task", pa.string(), nullable=False),
        pa.field("mode", pa.string(), nullable=False),
        pa.field("seed", pa.int64(), nullable=False),
        pa.field("image_seed", pa.int64(), nullable=False),
        pa.field("k", pa.int32(), nullable=False),
        pa.field("neighbour_ids", pa.list_(pa.string())),
        pa.field("neighbour_scores", pa.list_(pa.float32())),  # adir: inner product; mse-nn: -MSE; random-nn: 0
        pa.field("neighbours_used", pa.int32()),
        pa.field("input_width", pa.int32()),
        pa.field("input_height", pa.int32()),
        pa.field("width", pa.int32()),
        pa.field("height", pa.int32()),
        pa.field("tiles", pa.int32()),  # network evaluations per sampling step (tiles, over every sampling region)
        pa.field("sampler", pa.string()),  # the sampler that ran (config "auto" resolved for the task)
        pa.field("precision", pa.string()),  # the prior network's: bf16 or fp32 (--precision resolved on the actor)
        pa.field("samples", pa.int32()),  # posterior samples drawn; the row's psnr/ssim are sample 0's
        pa.field("mean_output", pa.string()),  # with samples > 1: images/mean/<name>.png, their mean
        pa.field("std_output", pa.string()),  # ... and images/std/<name>.png, per-pixel std x STD_SCALE
        pa.field("mean_psnr", pa.float64()),
        pa.field("mean_ssim", pa.float64()),
        pa.field("mean_std", pa.float64()),  # the std map's mean: how uncertain the reconstruction is overall
        *[pa.field(f"{stage}_s", pa.float64()) for stage in STAGES],
        pa.field("total_s", pa.float64()),
        pa.field("lora_final_loss", pa.float64()),
        # The adapter: 'trained' here or read from the run's cache ('cache'); its key (with --adapter-cache),
        # the key of the adapter a warm start began from and the Jaccard overlap of their neighbours, LoRA steps run.
        pa.field("adapter_source", pa.string()),
        pa.field("adapter_key", pa.string()),
        pa.field("adapter_init", pa.string()),
        pa.field("adapter_overlap", pa.float64()),
        pa.field("lora_steps_run", pa.int32()),
        pa.field("psnr", pa.float64()),  # vs ground truth, when known
        pa.field("ssim", pa.float64()),
        pa.field("metrics_note", pa.string()),  # why a metric is null although the image has a ground truth
        # sha256 of the bytes read: what makes the row done on a rerun (cluster.run_folder); null on an error row
        pa.field("input_sha256", pa.string()),
        pa.field("reference_sha256", pa.string()),
        pa.field("naive_psnr", pa.float64()),  # the plain restoration (bicubic, ...) for comparison
        # --degradation auto: the estimated noise (0..255) and kernel the operator was built with, why the
        # estimate may be wrong (null: no doubt), and the whole estimate as JSON (every candidate's criterion).
        pa.field("noise_sigma_est", pa.float64()),
        pa.field("kernel_est", pa.string()),
        pa.field("degradation_unsure", pa.string()),
        pa.field("degradation_estimate", pa.string()),
        pa.field("stage", pa.string()),  # where an error happened
        pa.field("error", pa.string()),
        pa.field("worker_pid", pa.int64()),
        pa.field("worker_device", pa.string()),
        pa.field("attempt", pa.int32()),
        pa.field("finished_at", pa.string(), nullable=False),
    ]
)


# ---------------------------------------------------------------------- names
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_name(image_id: str) -> str:
    """A file name for an image id that cannot leave OUT/images/ and is the same in every run.

    Ids made only of letters, digits, '.', '_' and '-' (not starting with '.') are kept as
    they are (DIV2K's `0801` stays `0801.png`). Anything else — `../x`, `/etc/passwd`, `a/b`,
    spaces, non-ASCII — is reduced to those characters and suffixed with a hash of the whole
    id, so two ids never share a name and the name does not depend on the other ids in the job
    (a resumed or extended dataset keeps its outputs).
    """
    image_id = str(image_id)
    if image_id and len(image_id) <= MAX_NAME_CHARS and not _UNSAFE.search(image_id) and not image_id.startswith("."):
        return image_id
    cleaned = _UNSAFE.sub("_", image_id).strip("._-")[: MAX_NAME_CHARS - 17] or "image"
    digest = hashlib.sha256(image_id.encode("utf-8", "surrogateescape")).hexdigest()[:16]
    return f"{cleaned}-{digest}"


def assign_names(image_ids: Sequence[str]) -> list[str]:
    """safe_name of each id; raises on the (astronomically unlikely) case of two ids sharing one."""
    names = [safe_name(i) for i in image_ids]
    seen: dict[str, str] = {}
    for image_id, name in zip(image_ids, names):
        # Compared case-insensitively: some file systems (macOS, Windows) fold case.
        other = seen.setdefault(name.lower(), image_id)
        if other != image_id:
            raise ValueError(
                f"image ids {other!r} and {image_id!r} map to the same output name {name!r}; rename one input"
            )
    return names


# ---------------------------------------------------------------------- locations
def image_url(out: str, name: str) -> str:
    return join_url(out, IMAGES_DIR, name + ".png")


def part_url(out: str, name: str, *, error: bool = False) -> str:
    return join_url(out, RESULTS_DIR, name + (ERROR_SUFFIX if error else "") + ".parquet")


def utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds")


# ---------------------------------------------------------------------- rows
def row_table(rows: Iterable[Mapping[str, Any]]) -> pa.Table:
    """Rows (dicts) as a table of RESULTS_SCHEMA; a missing column is null, an unknown one is an error."""
    rows = list(rows)
    names = set(RESULTS_SCHEMA.names)
    for row in rows:
        extra = sorted(set(row) - names)
        if extra:
            raise ValueError(f"result row has columns {extra} that RESULTS_SCHEMA does not declare")
    return pa.Table.from_pylist([{n: row.get(n) for n in RESULTS_SCHEMA.names} for row in rows], schema=RESULTS_SCHEMA)


def new_row(config, item: Mapping[str, Any], attempt: int, **fields: Any) -> dict[str, Any]:
    """A result row of RESULTS_SCHEMA for one item: every column None but the item's identity and the job's
    coordinates (image id, uri, name, task, mode, seeds, k, attempt), then `fields`."""
    from adir_ops.rng import image_seed

    row: dict[str, Any] = dict.fromkeys(RESULTS_SCHEMA.names)
    row.update(
        image_id=item["image_id"],
        uri=redact_url(item["uri"]),  # the actor reads item["uri"]; the row keeps no credential
        name=item["name"],
        task=config.task,
        mode=config.mode,
        seed=config.seed,
        image_seed=image_seed(config.seed, item["image_id"]),
        k=config.k,
        attempt=attempt,
    )
    row.update(fields)
    return row


def estimate_columns(estimate) -> dict[str, Any]:
    """The row's columns of a DegradationEstimate (adir_ops.physics.estimate)."""
    return {
        "noise_sigma_est": estimate.noise.sigma_255,
        "kernel_est": None if estimate.kernel is None else estimate.kernel.name,
        "degradation_unsure": estimate.unsure,
        "degradation_estimate": estimate.to_json(),
    }


def error_row(config, item: Mapping[str, Any]) -> dict[str, Any]:
    """The result row of an item that failed before any actor saw it (item["stage"], item["error"])."""
    return new_row(config, item, 1, stage=item["stage"], error=item["error"], finished_at=utc_now())


def write_part(out: str, row: Mapping[str, Any], storage_options: Mapping[str, Any] | None = None) -> None:
    """Commit one image's row, credentials redacted; a success also drops the error row a previous run left."""
    error = row.get("error") is not None
    row = {**row, "uri": redact_url(row["uri"])}
    if error:  # a backend's message may quote a credential or a URL's password
        row["error"] = scrub(row["error"], storage_options)
    sink = io.BytesIO()
    pq.write_table(row_table([row]), sink)
    commit_bytes(part_url(out, row["name"], error=error), sink.getvalue(), storage_options)
    if not error:
        fs, path = open_fs(part_url(out, row["name"], error=True), storage_options)
        try:
            fs.rm_file(path)
        except FileNotFoundError:
            pass


def _listing(out: str, folder: str, storage_options) -> set[str]:
    fs, path = open_fs(join_url(out, folder), storage_options)
    fs.invalidate_cache()
    try:
        return {p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(path, detail=False)}
    except FileNotFoundError:
        return set()


def finished_names(out: str, storage_options: Mapping[str, Any] | None = None) -> set[str]:
    """Names of images that are done: a success row and its PNG both exist (two listings, no per-image calls)."""
    images = {f[: -len(".png")] for f in _listing(out, IMAGES_DIR, storage_options) if f.endswith(".png")}
    parts = {
        f[: -len(".parquet")]
        for f in _listing(out, RESULTS_DIR, storage_options)
        if f.endswith(".parquet") and not f.endswith(ERROR_SUFFIX + ".parquet")
    }
    return images & parts


def _move_aside(url: str, why: str, storage_options, notes: list[str] | None) -> None:
    """Move a part that cannot be read to OUT/results/corrupt/ (timestamped, never overwriting an earlier one)."""
    fs, path = open_fs(url, storage_options)
    folder, name = path.rsplit("/", 1)
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    target = f"{folder}/{CORRUPT_DIR}/{name}.{stamp}"
    fs.makedirs(f"{folder}/{CORRUPT_DIR}", exist_ok=True)
    fs.mv(path, target)
    if notes is not None:
        notes.append(
            f"{redact_url(url)} is corrupt ({why}); moved to {RESULTS_DIR}/{CORRUPT_DIR}/{name}.{stamp}, "
            "and its image counts as not done"
        )


def read_part(
    out: str,
    name: str,
    *,
    error: bool = False,
    storage_options: Mapping[str, Any] | None = None,
    notes: list[str] | None = None,
) -> pa.Table | None:
    """The one-row table of an image's part; None when it is absent, or corrupt (then moved aside, said in notes).

    A storage failure raises (the part may be fine: moving it would lose a finished image); only
    bytes that are not this image's row of RESULTS_SCHEMA count as corrupt.
    """
    url = part_url(out, name, error=error)
    try:
        data = read_bytes(url, storage_options, MAX_PART_BYTES)  # a store's OSError is raised: the part may be fine
    except FileNotFoundError:
        return None
    except NotAFile as exc:  # a link to a device or a FIFO, something far larger than a row
        _move_aside(url, str(exc), storage_options, notes)
        return None
    try:
        table = pq.read_table(io.BytesIO(data), schema=RESULTS_SCHEMA)
        ids = table.column("name").to_pylist()
        if ids != [name]:
            raise ValueError(f"holds the rows of {ids[:3]}, not the one row of {name!r}")
    except Exception as exc:  # anything that is not our row: pyarrow raises many types (OSError too) for garbage
        why = (str(exc).splitlines() or [""])[0][:200]
        _move_aside(url, f"{type(exc).__name__}: {why}", storage_options, notes)
        return None
    return table


def part_names(out: str, storage_options: Mapping[str, Any] | None = None) -> tuple[set[str], set[str]]:
    """(names with a success part, names with an error part) in OUT/results (one listing)."""
    success, failed = set(), set()
    for f in _listing(out, RESULTS_DIR, storage_options):
        if f.endswith(".parquet"):
            base = f[: -len(".parquet")]
            (failed.add(base[: -len(ERROR_SUFFIX)]) if base.endswith(ERROR_SUFFIX) else success.add(base))
    return success, failed


def read_parts(
    out: str,
    storage_options: Mapping[str, Any] | None = None,
    notes: list[str] | None = None,
    threads: int = 16,
) -> pa.Table:
    """The current row of every image with a part in OUT/results (its success row, else its error row)."""
    success, failed = part_names(out, storage_options)

    def read(name: str) -> pa.Table | None:
        table = None
        if name in success:
            table = read_part(out, name, storage_options=storage_options, notes=notes)
        if table is None and name in failed:
            table = read_part(out, name, error=True, storage_options=storage_options, notes=notes)
        return table

    names = sorted(success | failed)
    with ThreadPoolExecutor(max_workers=max(1, min(threads, len(names)))) as pool:
        tables = [t for t in pool.map(read, names) if t is not None]
    if not tables:
        return RESULTS_SCHEMA.empty_table()
    return pa.concat_tables(tables).sort_by("image_id")


def merge_results(
    out: str, storage_options: Mapping[str, Any] | None = None, notes: list[str] | None = None
) -> pa.Table:
    """Write OUT/results.parquet from every part in OUT/results (one row per image) and return it."""
    table = read_parts(out, storage_options, notes)
    sink = io.BytesIO()
    pq.write_table(table, sink)
    commit_bytes(join_url(out, RESULTS_NAME), sink.getvalue(), storage_options)
    return table

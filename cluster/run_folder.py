"""The run folder OUT of `adir reconstruct`: is it apart from the inputs and ours, may a rerun resume it, what is done.

The rules (the output protocol itself is in `cluster.results`):
- OUT is not, does not contain and does not lie in an input; no input listed lies in it.
- OUT is new, empty, or this job's own (OUT/adir-job.json, or a config.yaml of `adir reconstruct`
  from before markers); the folders the job writes into are not symbolic links.
- A rerun resumes only with the same result-deciding options: the FULL resolved config (a key an
  older config.yaml lacks counts as its default) and the index's identity, not its path. Where the
  folder lives is no such option: a moved folder resumes.
- An image is done by content (`finished_work`): its row and whole PNG exist and the row's hashes
  are those of the bytes its input (and ground truth) hold now. The driver hashes those inputs once
  per rerun, in threads, before any actor starts: an actor-side check would start the whole pool
  (every model loaded) even for a finished run, and a hash runs at disk or network speed, far
  below the seconds that reconstructing one image costs. Only finished candidates are hashed; a
  fresh run hashes nothing here (each actor hashes the bytes it reads).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import stat
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Mapping

import yaml

from adir_storage import (
    NotAFile,
    check_no_links,
    claim_output_folder,
    commit_bytes,
    is_local,
    is_within,
    join_url,
    location,
    open_fs,
    read_bytes,
    redact_url,
    remove_if_exists,
)
from adir_storage.yaml_safe import load_yaml
from cluster.config import PLACE_FIELDS, RUNTIME_FIELDS, URL_FIELDS, ReconstructConfig
from cluster.lease import LEASE_NAME
from cluster.results import (
    ADAPTERS_DIR,
    CONFIG_NAME,
    CORRUPT_DIR,
    IMAGES_DIR,
    RESULTS_DIR,
    THUMBNAILS_DIR,
    finished_names,
    image_url,
    part_url,
    read_part,
)

JOB = "adir reconstruct"
# Every folder the job writes into: none may be a link (a rerun would write through it).
WRITTEN_FOLDERS = (
    IMAGES_DIR,
    f"{IMAGES_DIR}/mean",
    f"{IMAGES_DIR}/std",
    RESULTS_DIR,
    f"{RESULTS_DIR}/{CORRUPT_DIR}",
    ADAPTERS_DIR,
    THUMBNAILS_DIR,
)
LEGACY_KEYS = frozenset({"task", "mode", "inputs", "out"})  # a config.yaml of reconstruct before adir-job.json
INDEX_IDENTITY = "index_identity"  # config.yaml: which index build the run's neighbours come from
PNG_HEAD = b"\x89PNG\r\n\x1a\n"
PNG_TAIL = b"\x00\x00\x00\x00IEND\xaeB`\x82"  # the IEND chunk: a PNG that lacks it was cut short
HASH_CHUNK = 2**20


# ---------------------------------------------------------------- OUT apart from the inputs
def check_out_apart(config: ReconstructConfig) -> None:
    """Refuse an OUT that is, contains or lies inside an input (it would overwrite the user's files)."""
    out = location(config.out)
    for name in ("inputs", "reference", "index"):
        value = getattr(config, name)
        if not value:
            continue
        place = location(value)
        relation = (
            "is"
            if place == out
            else "lies inside"
            if is_within(out, place)
            else "contains"
            if is_within(place, out)
            else None
        )
        if relation:
            raise ValueError(
                f"--out {config.out} {relation} --{name} {value}: the job would write over its own inputs. "
                "Choose an --out folder outside them"
            )


def check_items_outside_out(config: ReconstructConfig, items: list[dict[str, Any]]) -> None:
    """A list file may name inputs anywhere: none may lie in OUT, where the job writes."""
    out = location(config.out)
    for item in items:
        for key in ("uri", "reference_uri"):
            uri = item.get(key)
            if uri and "error" not in item and is_within(location(uri), out):
                raise ValueError(
                    f"input {uri} lies inside --out {config.out}: the job would overwrite it. Choose another --out"
                )


# ---------------------------------------------------------------- OUT is ours
def _read_config_yaml(config: ReconstructConfig) -> tuple[bool, Any]:
    """(whether OUT/config.yaml exists, its parsed content or None when it does not parse)."""
    try:
        text = read_bytes(join_url(config.out, CONFIG_NAME), config.storage_options, 2**20).decode("utf-8")
    except (FileNotFoundError, NotADirectoryError):
        return False, None
    except (ValueError, UnicodeDecodeError):  # a FIFO, a link to a device, something huge, not text
        return True, None
    try:  # billion-laughs-proof: OUT is untrusted like any input
        return True, load_yaml(text, join_url(config.out, CONFIG_NAME))
    except ValueError:
        return True, None


def read_previous_config(config: ReconstructConfig) -> dict[str, Any] | None:
    """Claim OUT for this job and return the config.yaml an earlier run left there (None for a new folder).

    Refused: a file, a folder holding anything that is not ours (the user's files, another job's
    output, a config.yaml that is not reconstruct's), a link where the job writes.
    """
    fs, path = open_fs(config.out, config.storage_options)
    fs.invalidate_cache()
    if fs.exists(path) and not fs.isdir(path):
        raise ValueError(f"--out {config.out} is a file, not a folder; choose a folder")
    check_no_links(config.out, WRITTEN_FOLDERS, config.storage_options)
    exists, previous = _read_config_yaml(config)
    ours = isinstance(previous, dict) and LEGACY_KEYS <= set(previous)
    if exists and not ours:
        raise ValueError(
            f"--out {config.out} holds a {CONFIG_NAME} that is not from `{JOB}` (or cannot be read); the job "
            "would replace it. Choose an empty or new --out folder"
        )
    resumed = claim_output_folder(
        config.out,
        JOB,
        config.storage_options,
        legacy=lambda entries: ours,
        ignore={LEASE_NAME},
        links=WRITTEN_FOLDERS,
    )
    if resumed and not ours and fs.exists(join_url(path, RESULTS_DIR)):
        # Ours (marked), with results, but the record of their options is gone: a resume could not be checked.
        raise ValueError(
            f"--out {config.out} holds results but no {CONFIG_NAME} saying which options made them, so a resume "
            f"could mix them with another job's. Restore its {CONFIG_NAME}, or choose another --out"
        )
    return previous if ours else None


# ---------------------------------------------------------------- may it resume
def index_identity(config: ReconstructConfig) -> str | None:
    """A digest of the index's manifest (what it holds and how it was built, not when): None without an index.

    The same path can hold another build (rebuilt from another corpus); this tells them apart.
    """
    if config.mode == "baseline" or not config.index:
        return None
    from index_builder.manifest import Manifest

    values = dataclasses.asdict(Manifest.read(config.index, config.storage_options))
    values.pop("created", None)
    return hashlib.sha256(json.dumps(values, sort_keys=True, default=str).encode("utf-8")).hexdigest()[:16]


def _defaults() -> dict[str, Any]:
    """Every field's default, as config.yaml would write it."""
    values = {}
    for f in dataclasses.fields(ReconstructConfig):
        if f.default is not dataclasses.MISSING:
            values[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            values[f.name] = f.default_factory()
    values["lora"] = values["lora"].to_dict()
    return yaml.safe_load(yaml.safe_dump(values))


# Options an older config.yaml lacks whose default has since changed what runs, at what those runs used:
# before --precision every CPU run was fp32 (its default 'auto' now means bf16 on a bf16 CPU), so such a
# run resumes with --precision fp32 and is refused, naming it, otherwise.
LEGACY_VALUES = {"precision": "fp32"}


def resolved(previous: Mapping[str, Any]) -> dict[str, Any]:
    """An earlier config.yaml's result-deciding options, each key it lacks at its default (as ours are compared)."""
    from adir_ops.adaptation.config import FLAT_NAMES

    defaults = _defaults()
    names = {f.name for f in dataclasses.fields(ReconstructConfig)}
    values = {**dict.fromkeys(names), **defaults, **LEGACY_VALUES, **{k: v for k, v in previous.items() if k in names}}
    lora = previous.get("lora") if isinstance(previous.get("lora"), Mapping) else {}
    flat = {FLAT_NAMES[k]: v for k, v in previous.items() if k in FLAT_NAMES}  # older runs' lora_steps, ...
    values["lora"] = {**defaults["lora"], **lora, **flat}
    for name in URL_FIELDS:
        if isinstance(values[name], str):
            values[name] = redact_url(values[name])  # compared as written: config.yaml holds no credential
    for name in (*RUNTIME_FIELDS, *PLACE_FIELDS):
        values.pop(name, None)
    return values


def check_previous_run(config: ReconstructConfig) -> None:
    """A rerun into the same OUT resumes only with the same result-deciding options and the same index build."""
    previous = read_previous_config(config)
    if previous is None:
        return
    ours = yaml.safe_load(yaml.safe_dump(config.result_fields(), sort_keys=True))
    theirs = resolved(previous)
    identity, recorded = index_identity(config), previous.get(INDEX_IDENTITY)
    if identity is not None and recorded is not None:
        # The build decides the neighbours, not the path: an index moved with the run folder resumes.
        theirs["index"] = ours["index"]
        if recorded != identity:
            theirs[INDEX_IDENTITY], ours[INDEX_IDENTITY] = recorded, identity
    changed = {k: (theirs.get(k), v) for k, v in ours.items() if theirs.get(k) != v}
    if changed:
        what = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in sorted(changed.items()))
        rebuilt = " (the index was rebuilt: another corpus or other options)" if INDEX_IDENTITY in changed else ""
        raise ValueError(
            f"{redact_url(config.out)} holds results of another job ({what}){rebuilt}; resuming would mix them. "
            "Use another --out, or rerun with the same options"
        )


def write_config(config: ReconstructConfig) -> None:
    """OUT/config.yaml: the resolved config with credentials redacted, and the index build's identity."""
    values = config.redacted()
    identity = index_identity(config)
    if identity is not None:
        values[INDEX_IDENTITY] = identity
    text = yaml.safe_dump(values, sort_keys=True)
    commit_bytes(join_url(config.out, CONFIG_NAME), text.encode("utf-8"), config.storage_options)


# ---------------------------------------------------------------- what is done, by content
def content_digest(url: str, storage_options: Mapping[str, Any] | None, max_bytes: int) -> str:
    """sha256 of an object's bytes, streamed (bounded memory); regular files only, at most max_bytes."""
    fs, path = open_fs(url, storage_options)
    if is_local(url) and not stat.S_ISREG(os.stat(path).st_mode):
        raise NotAFile(f"{redact_url(url)} is not a regular file")
    digest, size = hashlib.sha256(), 0
    with fs.open(path, "rb") as f:
        while chunk := f.read(HASH_CHUNK):
            size += len(chunk)
            if size > max_bytes:
                raise NotAFile(f"{redact_url(url)} is larger than the {max_bytes}-byte cap")
            digest.update(chunk)
    return digest.hexdigest()


def png_complete(url: str, storage_options: Mapping[str, Any] | None = None) -> bool:
    """Whether a PNG of ours is whole: a regular file (not a link) that starts with PNG's signature and ends
    with its IEND chunk. Two small reads, so a rerun checks every finished image cheaply."""
    fs, path = open_fs(url, storage_options)
    try:
        if is_local(url):
            info = os.lstat(path)
            if not stat.S_ISREG(info.st_mode):
                return False
            size = info.st_size
        else:
            size = fs.size(path)
        if size < len(PNG_HEAD) + len(PNG_TAIL):
            return False
        with fs.open(path, "rb") as f:
            head = f.read(len(PNG_HEAD))
            f.seek(size - len(PNG_TAIL))
            tail = f.read(len(PNG_TAIL))
    except FileNotFoundError:
        return False
    return head == PNG_HEAD and tail == PNG_TAIL


def _why_not_done(config: ReconstructConfig, item: Mapping[str, Any], notes: list[str]) -> str | None:
    """None when the item's finished row still stands for its input; else why it must be redone ("" when
    read_part already said so)."""
    options = config.storage_options
    table = read_part(config.out, item["name"], storage_options=options, notes=notes)
    if table is None:
        return ""
    row = table.to_pylist()[0]
    for output in (row["output"] or f"{IMAGES_DIR}/{item['name']}.png", row["mean_output"], row["std_output"]):
        if output and not png_complete(join_url(config.out, output), options):
            return f"its output {output} is incomplete (cut short, or not a PNG file)"
    if row["input_sha256"] is None:
        return "its row records no hash of the input (an older version wrote it), so it cannot be trusted"
    for key, column in (("uri", "input_sha256"), ("reference_uri", "reference_sha256")):
        try:
            now = content_digest(item[key], options, config.max_input_bytes) if item.get(key) else None
        except (OSError, ValueError) as exc:
            return f"its {'input' if key == 'uri' else 'ground truth'} cannot be read now ({type(exc).__name__})"
        if now != row[column]:
            what = "input" if key == "uri" else "ground truth"
            return f"its {what}'s bytes changed since it was reconstructed"
    return None


def discard(out: str, name: str, storage_options: Mapping[str, Any] | None = None) -> None:
    """Remove an image's success row, then its PNGs: they are ours, and stand for bytes the input no longer holds."""
    remove_if_exists(part_url(out, name), storage_options)
    for folder in ("", "mean", "std"):
        url = image_url(out, name) if not folder else join_url(out, IMAGES_DIR, folder, name + ".png")
        remove_if_exists(url, storage_options)


def finished_work(
    config: ReconstructConfig, items: list[dict[str, Any]], notes: list[str], threads: int = 16
) -> set[str]:
    """Names of `items` that are done by content (see the module docstring); every other finished-looking
    image's row and PNGs are removed, so it is reconstructed again. Why each is redone goes to `notes`."""
    listed = finished_names(config.out, config.storage_options)
    candidates = [item for item in items if item["name"] in listed and "error" not in item]

    def check(item: Mapping[str, Any]) -> bool:
        why = _why_not_done(config, item, notes)
        if why is None:
            return True
        if why:
            notes.append(f"{redact_url(item['uri'])}: {why}; reconstructed again")
        discard(config.out, item["name"], config.storage_options)
        return False

    if not candidates:
        return set()
    with ThreadPoolExecutor(max_workers=max(1, min(threads, len(candidates)))) as pool:
        done = list(pool.map(check, candidates))
    return {item["name"] for item, ok in zip(candidates, done) if ok}

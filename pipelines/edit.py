"""`adir edit`: text-guided editing of one image with the SD inpainting model, adapted on the prompt's K text-retrieved neighbours (paper Sec. 4.4)."""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import os
import posixpath
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Mapping

from adir_ops.adaptation.config import FLAT_NAMES, AdaptConfig, fold_flat_names
from adir_ops.validation import check_fields, config_from_dict
from adir_storage import redact_options

# Two of the reconstruction arms (adir_ops.retrieval.arms.MODES): the paper's Sec. 4.4 compares adaptation on
# the prompt's text-retrieved neighbours with none; random-nn and mse-nn are Table 5's reconstruction baselines.
MODES = ("adir", "baseline")
DEFAULT_PIPELINE = "stabilityai/stable-diffusion-2-inpainting"
ADAPTER_FILE = "adapter/pytorch_lora_weights.safetensors"


@dataclass(frozen=True)
class EditJob:
    """Everything `adir edit` resolves; written to OUT/config.yaml (credentials redacted).

    pipeline: SD inpainting pipeline folder, bucket URL, hub id, or 'tiny' (random weights: mechanics only).
    mask: an image (white = repaint) of the image's size, or 'center' (a centred box of half each side).
    index: an index whose encoder has a text tower (OpenCLIP); needed unless mode is 'baseline'.
    crop_size: neighbour crop side for adaptation (None: the pipeline's native size, at most 512).
    stock: also write the non-adapted edit (same seed) as OUT/stock.png.
    """

    image: str
    prompt: str
    out: str
    mask: str = "center"
    pipeline: str = DEFAULT_PIPELINE
    index: str | None = None
    mode: str = "adir"
    k: int = 50
    seed: int = 0
    steps: int = 50
    guidance_scale: float = 7.5
    lora: AdaptConfig = field(default_factory=AdaptConfig)  # the paper's; --lora-steps etc. set its fields
    crop_size: int | None = None
    prompt_dropout: float = 0.1
    mixed_precision: str = "auto"
    stock: bool = True
    storage_options: Mapping[str, Any] = field(default_factory=dict, repr=False)

    def __post_init__(self):
        if self.storage_options is None:
            object.__setattr__(self, "storage_options", {})
        if isinstance(self.lora, dict):
            object.__setattr__(self, "lora", AdaptConfig.from_dict(self.lora))
        for name in ("image", "out"):
            if not getattr(self, name):
                raise ValueError(f"edit needs --{name}")
        check_fields(self)
        object.__setattr__(self, "storage_options", dict(self.storage_options))
        if not self.prompt or not self.prompt.strip():
            raise ValueError("edit needs a non-empty --prompt: it retrieves the neighbours and guides the inpainting")
        if self.mode not in MODES:
            raise ValueError(f"unknown mode {self.mode!r}; choose one of {', '.join(MODES)}")
        if self.mode == "adir" and not self.index:
            raise ValueError(
                "mode 'adir' retrieves neighbours by the prompt and needs --index URL (built with an OpenCLIP encoder)"
            )
        for name, minimum in (("k", 1), ("steps", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ValueError(f"--{name.replace('_', '-')} must be an integer >= {minimum}; got {value!r}")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> EditJob:
        return config_from_dict(cls, fold_flat_names(values), "edit")

    def redacted(self) -> dict[str, Any]:
        values = dataclasses.asdict(self)
        values["storage_options"] = redact_options(dict(self.storage_options))
        return values


# ---------------------------------------------------------------- steps of the job
def load_inpainting_pipeline(spec: str, storage_options: Mapping[str, Any] | None = None):
    """'tiny', a local folder, a hub id, or a bucket URL (copied once to the node's cache)."""
    from adir_ops.latent.stable_diffusion import load_pipeline
    from adir_storage import local_copy

    return load_pipeline("sd-inpaint", spec if spec == "tiny" else local_copy(spec, storage_options))


def read_mask(spec: str, size: tuple[int, int], storage_options: Mapping[str, Any] | None = None):
    """(1, 1, H, W) float mask, 1 = repaint: 'center', or an image whose bright pixels mark the region."""
    import numpy as np
    import torch
    from PIL import Image

    from adir_ops.physics.operators import box_mask
    from adir_storage import read_bytes

    if spec == "center":
        return 1.0 - box_mask(size)
    with Image.open(io.BytesIO(read_bytes(spec, storage_options))) as img:
        gray = np.asarray(img.convert("L"))
    if gray.shape != tuple(size):
        raise ValueError(
            f"mask {spec} is {gray.shape[0]}x{gray.shape[1]} but the image is {size[0]}x{size[1]}; make them the same size"
        )
    mask = torch.from_numpy((gray > 127).astype(np.float32))[None, None]
    if not bool(mask.any()):
        raise ValueError(f"mask {spec} marks no pixel to repaint (white = repaint)")
    return mask


def retrieve_by_text(job: EditJob) -> tuple[list[str], list[str], list[float]]:
    """The K corpus images nearest to the prompt's text embedding (the index holds the same encoder's image embeddings)."""
    from adir_ops.retrieval.embedding import get_embedder
    from index_builder.index_query import NeighborIndex
    from index_builder.manifest import Manifest

    manifest = Manifest.read(job.index, job.storage_options)
    if not manifest.embedder.startswith("openclip:"):
        raise ValueError(
            f"index at {job.index} was built with {manifest.embedder}, which has no text encoder; editing retrieves "
            "neighbours by the prompt: build the index with --embedder openclip:ViT-B-32:laion2b_s34b_b79k (or another OpenCLIP model)"
        )
    embedder = get_embedder(manifest.embedder)
    index = NeighborIndex.open(job.index, embedder=embedder, storage_options=job.storage_options)
    if job.k > len(index):
        raise ValueError(
            f"--k {job.k} but the index at {job.index} holds {len(index)} images; ask for at most {len(index)}"
        )
    ids, uris, scores = index.search(embedder.embed_text([job.prompt]), job.k)
    found = ids[0] != ""
    return list(ids[0][found]), list(uris[0][found]), [float(s) for s in scores[0][found]]


def fetch_neighbours(uris: list[str], storage_options: Mapping[str, Any] | None):
    """The neighbours as (3, H, W) tensors in [-1, 1]; unreadable ones are reported and skipped."""
    from adir_storage import fetch_many
    from cluster.images import to_tensor01
    from index_builder.reader import decode_rgb

    images = []
    for uri, data in zip(uris, fetch_many(list(uris), storage_options)):
        try:
            if isinstance(data, BaseException):
                raise data
            images.append(to_tensor01(decode_rgb(data)).mul(2).sub(1))
        except Exception as exc:
            print(f"warning: neighbour {uri} skipped: {type(exc).__name__}: {exc}", file=sys.stderr)
    if uris and not images:
        raise RuntimeError(f"none of the {len(uris)} neighbours could be read (first: {uris[0]})")
    return images


OUTPUTS = frozenset({"config.yaml", "edited.png", "stock.png", "neighbours.json", posixpath.dirname(ADAPTER_FILE)})


def check_out_apart(job: EditJob) -> None:
    """Refuse an OUT that is, contains or lies inside an input: the edit would write over the user's files."""
    from adir_storage import is_local, is_within, location, redact_url

    out = location(job.out)
    inputs = [("image", job.image), ("mask", None if job.mask == "center" else job.mask), ("index", job.index)]
    if job.pipeline != "tiny" and (is_local(job.pipeline) and os.path.exists(job.pipeline) or "://" in job.pipeline):
        inputs.append(("pipeline", job.pipeline))  # a folder or bucket URL, not a hub id
    for name, value in inputs:
        if not value:
            continue
        place = location(value)
        relation = (
            "is"
            if place == out
            else "contains"
            if is_within(place, out)
            else "lies inside"
            if is_within(out, place)
            else None
        )
        if relation:
            raise ValueError(
                f"--out {redact_url(job.out)} {relation} --{name} {redact_url(value)}: the edit would write over "
                "its own inputs. "
                "Choose an --out folder outside them"
            )


def claim_out(job: EditJob) -> bool:
    """Make OUT this edit's folder, or refuse it (a folder holding the user's own files); True on a rerun."""
    from adir_storage import claim_output_folder, join_url
    from adir_storage.yaml_safe import read_yaml

    def legacy(entries: set[str]) -> bool:
        # An edit's output from before the folder marker: only our names, and a config.yaml an edit wrote.
        if not entries <= OUTPUTS or "config.yaml" not in entries:
            return False
        try:
            values = read_yaml(join_url(job.out, "config.yaml"), job.storage_options)
        except (ValueError, OSError):
            return False
        return isinstance(values, dict) and "edit_config" in values and "prompt" in values

    # The one folder written into: files are committed by rename, which replaces a link, never writes through it.
    links = (posixpath.dirname(ADAPTER_FILE),)
    return claim_output_folder(job.out, "adir edit", job.storage_options, legacy=legacy, links=links)


def run(job: EditJob, *, log=print) -> dict[str, Any]:
    """Retrieve, adapt, edit; write OUT/edited.png (+ stock.png, adapter, neighbours.json, config.yaml). Returns a summary."""
    import torch
    import yaml

    from adir_ops.latent.editing import EditConfig, adapt_inpainting, edit
    from adir_ops.rng import generator_for
    from adir_storage import commit_bytes, join_url, read_bytes
    from cluster.images import encode_png, to_tensor01
    from index_builder.reader import decode_rgb

    start = time.perf_counter()
    check_out_apart(job)
    image01 = to_tensor01(decode_rgb(read_bytes(job.image, job.storage_options)))[None]
    mask = read_mask(job.mask, tuple(image01.shape[-2:]), job.storage_options)
    claim_out(job)  # after the inputs read, before the first write
    image_id = posixpath.splitext(posixpath.basename(job.image.rstrip("/")))[0]
    summary: dict[str, Any] = {"image_id": image_id, "outputs": []}
    neighbours = []
    if job.mode == "adir":
        # Before the (multi-GB) pipeline loads: a wrong index fails in seconds.
        ids, uris, scores = retrieve_by_text(job)
        neighbours = fetch_neighbours(uris, job.storage_options)
        summary["neighbour_ids"] = ids
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    pipe = load_inpainting_pipeline(job.pipeline, job.storage_options).to(device)
    lora = job.lora
    crop = job.crop_size or min(512, int(pipe.vae_scale_factor) * int(pipe.unet.config.sample_size))
    config = EditConfig(
        lora=lora,
        crop_size=crop,
        prompt_dropout=job.prompt_dropout,
        steps=job.steps,
        guidance_scale=job.guidance_scale,
        mixed_precision=job.mixed_precision,
    )
    commit_bytes(
        join_url(job.out, "config.yaml"),
        yaml.safe_dump({**job.redacted(), "edit_config": config.to_dict()}, sort_keys=True).encode(),
        job.storage_options,
    )
    adapter = None
    if job.mode == "adir":
        log(
            f"retrieved {len(ids)} neighbours of the prompt; adapting {job.lora.steps} LoRA steps on {len(neighbours)}"
        )
        adapter = adapt_inpainting(
            pipe, neighbours, job.prompt, config, generator_for(job.seed, f"{image_id}#adaptation")
        )
        commit_bytes(join_url(job.out, ADAPTER_FILE), adapter.to_bytes(), job.storage_options)
        record = {"prompt": job.prompt, "ids": ids, "uris": uris, "scores": scores, "losses": adapter.losses}
        commit_bytes(join_url(job.out, "neighbours.json"), json.dumps(record, indent=2).encode(), job.storage_options)
        summary["adapter"] = join_url(job.out, ADAPTER_FILE)
    # The same sampling seed for both arms: they differ by the adaptation alone.
    arms = [("edited", adapter)] + ([("stock", None)] if job.stock and adapter is not None else [])
    for name, arm_adapter in arms:
        result = edit(pipe, image01, mask, job.prompt, config, generator_for(job.seed, image_id), adapter=arm_adapter)
        commit_bytes(join_url(job.out, f"{name}.png"), encode_png(result[0]), job.storage_options)
        summary["outputs"].append(join_url(job.out, f"{name}.png"))
    summary["elapsed_s"] = time.perf_counter() - start
    return summary


def main(args: argparse.Namespace) -> int:
    """The `adir edit` handler: flags (over an optional --config YAML) → EditJob → run."""
    from pipelines.errors import UsageError

    values: dict[str, Any] = {}
    if getattr(args, "config", None):
        from adir_storage.yaml_safe import read_yaml

        try:  # bounded: a YAML bomb, a FIFO or a huge file is one line, never walked
            loaded = read_yaml(args.config, what="edit config") or {}
        except (ValueError, FileNotFoundError) as exc:
            raise UsageError(f"{exc}; check --config") from None
        if not isinstance(loaded, dict):
            raise UsageError(f"edit config {args.config} must be a YAML mapping of options; check --config")
        values = {str(k).replace("-", "_"): v for k, v in loaded.items()}
    for name in [f.name for f in dataclasses.fields(EditJob)] + list(FLAT_NAMES):  # --lora-steps etc. fold into lora
        value = getattr(args, name, None)
        if value is not None:
            values[name] = value
    try:
        job = EditJob.from_dict(values)
        summary = run(job, log=lambda msg: print(msg, file=sys.stderr))
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        print(f"adir edit: error: {exc}", file=sys.stderr)
        return 2
    if job.pipeline == "tiny":
        print("pipeline 'tiny' has RANDOM weights: this run shows the mechanics, not an edit", file=sys.stderr)
    print(f"wrote {', '.join(summary['outputs'])} in {summary['elapsed_s']:.1f} s")
    return 0

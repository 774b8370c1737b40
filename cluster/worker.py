"""The reconstruction actor: holds prior, encoder and index; turns one input image into its PNG and result row.

A plain class, testable without Ray; `cluster.pool` wraps it in `ray.remote` with one GPU
per actor when the cluster has GPUs. Models are built in `__init__` from the names in the
job config (never pickled), once per actor, and rebuilt by Ray when a dead actor restarts.
"""

from __future__ import annotations

import contextlib
import os
import time
import traceback
from typing import Any, Mapping

import torch

from adir_ops.rng import generator_for, image_seed
from adir_ops.weights import DEFAULT_PRIOR_NAME
from adir_storage import commit_bytes, is_local, local_copy, read_bytes, scrub
from cluster.config import DEFAULT_TINY_RESOLUTION, TINY_PRIOR, ReconstructConfig, prior_kind
from cluster.images import decode_rgb, encode_png, to_tensor01
from cluster.results import RESULTS_SCHEMA, image_url, utc_now, write_part

MAX_ERROR_CHARS = 2000


class ItemError(Exception):
    """A failure that belongs to one image: it becomes that image's error row, the actor goes on."""

    def __init__(self, stage: str, message: str):
        super().__init__(message)
        self.stage = stage


def load_prior(spec: str, storage_options: Mapping[str, Any] | None = None):
    """A DiffusionPrior from `tiny[:res]`, `gd256:PATH`, a diffusers folder or hub id, a Guided Diffusion .pt, or a remote URL of either."""
    from adir_ops.priors import DiffusionPrior

    tiny = TINY_PRIOR.match(spec)
    if tiny is not None:
        return DiffusionPrior.tiny(resolution=int(tiny.group(1) or DEFAULT_TINY_RESOLUTION))
    kind, target = prior_kind(spec)
    if kind == DEFAULT_PRIOR_NAME:
        return DiffusionPrior.default()
    if kind == "sd-x4":
        raise ValueError(f"{spec!r} is a Stable Diffusion pipeline, not a DiffusionPrior; load it with load_upscaler")
    if kind == "gd256":
        return DiffusionPrior.from_guided_diffusion(local_copy(target, storage_options))
    spec = local_copy(spec, storage_options)
    if os.path.isfile(spec):
        return DiffusionPrior.from_guided_diffusion(spec)
    return DiffusionPrior.from_diffusers(spec)


def load_upscaler(spec: str, storage_options: Mapping[str, Any] | None = None):
    """The Stable Diffusion x4 upscaler pipeline of `sd-x4:WHERE` (folder, bucket URL, hub id or 'tiny')."""
    from adir_ops.stable_diffusion import load_pipeline

    kind, target = prior_kind(spec)
    if kind != "sd-x4":
        raise ValueError(f"{spec!r} is not an sd-x4:... prior spec")
    if target != "tiny" and not is_local(target):
        target = local_copy(target, storage_options)
    return load_pipeline("sd-x4", target)


def _error_text(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 3] + "..."


class _Stopwatch:
    def __init__(self):
        self.times: dict[str, float] = {}

    @contextlib.contextmanager
    def stage(self, name: str):
        start = time.perf_counter()
        try:
            yield
        except ItemError:
            raise
        except Exception as exc:
            raise ItemError(name, _error_text(exc)) from exc
        finally:
            self.times[f"{name}_s"] = self.times.get(f"{name}_s", 0.0) + time.perf_counter() - start


class ReconstructionWorker:
    """One per GPU (or CPU slot): `process(item)` does one image end to end and returns its row.

    item: {"image_id", "uri", "name"} and, for degraded inputs with known ground truth,
    "reference_uri". Every failure inside `process` becomes an error row for that image.
    """

    def __init__(self, config: Mapping[str, Any] | ReconstructConfig):
        from adir_ops.embedding import get_embedder
        from adir_ops.tiling import TiledPrior, TilingConfig
        from cluster.retrieval import Retriever, thumbnails_url

        self.config = config if isinstance(config, ReconstructConfig) else ReconstructConfig.from_dict(config)
        cfg = self.config
        # Ray pins a GPU actor to its device through CUDA_VISIBLE_DEVICES: it sees cuda:0.
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        # The SD x4 upscaler replaces prior + eq. 16 sampler by its own pipeline (adapted in latent space).
        self.upscaler = self.prior = self.tiled = None
        if prior_kind(cfg.prior)[0] == "sd-x4":
            self.upscaler = load_upscaler(cfg.prior, cfg.storage_options).to(self.device)
        else:
            self.prior = load_prior(cfg.prior, cfg.storage_options).to(self.device).eval()
            if self.device.type == "cuda":
                self.prior.autocast_dtype = torch.bfloat16  # UNet forward (sampling and LoRA) in bf16
            self.tiled = TiledPrior(self.prior, TilingConfig(overlap=cfg.tile_overlap, tile_batch=cfg.tile_batch, small_images=cfg.small_images))
        self.embedder = None
        if cfg.mode == "adir":
            if cfg.embedder is None:
                from index_builder.manifest import Manifest

                name = Manifest.read(cfg.index, cfg.storage_options).embedder
            else:
                name = cfg.embedder
            self.embedder = get_embedder(name)
        thumbnails = thumbnails_url(cfg.out, cfg.index, cfg.mse_thumbnail, cfg.storage_options) if cfg.mode == "mse-nn" else None
        self.retriever = Retriever(
            cfg.mode, cfg.k, index=cfg.index, embedder=self.embedder, thumbnails=thumbnails,
            thumbnail_size=cfg.mse_thumbnail, gray=cfg.task == "colorize", storage_options=cfg.storage_options,
        )  # fmt: skip

    def ready(self) -> dict[str, Any]:
        """Who this actor is: the driver's liveness probe and the pid a test may kill."""
        return {"pid": os.getpid(), "device": str(self.device)}

    # ---------------------------------------------------------------- one image
    def process(self, item: Mapping[str, Any], attempt: int = 1) -> dict[str, Any]:
        cfg = self.config
        start = time.perf_counter()
        row: dict[str, Any] = dict.fromkeys(RESULTS_SCHEMA.names)
        row.update({
            "image_id": item["image_id"], "uri": item["uri"], "name": item["name"], "task": cfg.task, "mode": cfg.mode,
            "seed": cfg.seed, "image_seed": image_seed(cfg.seed, item["image_id"]), "k": cfg.k, "attempt": attempt,
            "worker_pid": os.getpid(), "worker_device": str(self.device),
        })  # fmt: skip
        watch = _Stopwatch()
        try:
            row.update(self._reconstruct(item, watch))
        except ItemError as exc:
            row.update(stage=exc.stage, error=str(exc))
        except Exception as exc:  # a bug must cost one row, not the dataset
            row.update(stage="internal", error=_error_text(exc) + "\n" + traceback.format_exc(limit=5))
        # Only declared columns: a stage without one must not turn a good row into a write failure.
        row.update({k: v for k, v in watch.times.items() if k in row})
        row["total_s"] = time.perf_counter() - start
        row["finished_at"] = utc_now()
        if row["error"] is not None:
            row["error"] = scrub(row["error"], cfg.storage_options)  # a backend's message may quote a credential
        write_part(cfg.out, row, cfg.storage_options)
        return row

    def _reconstruct(self, item: Mapping[str, Any], watch: _Stopwatch) -> dict[str, Any]:
        from adir_ops.adaptation import AdaptConfig, adapt
        from adir_ops.operators import make_operator
        from adir_ops.sampling import adir_sample
        from adir_ops.sd_upscale import adapt_upscaler, upscale

        cfg = self.config
        image_id = item["image_id"]
        # One seed per image, split into independent streams per stage, so every mode sees the
        # same degradation and the same sampler noise: the arms differ by adaptation alone.
        streams = {s: generator_for(cfg.seed, f"{image_id}#{s}") for s in ("degrade", "retrieval", "adaptation")}
        sampling_generator = generator_for(cfg.seed, image_id)
        out: dict[str, Any] = {}
        operator_options = {} if cfg.noise_sigma_255 is None else {"noise_sigma_255": cfg.noise_sigma_255}
        with watch.stage("read"):
            pixels = to_tensor01(decode_rgb(read_bytes(item["uri"], cfg.storage_options))).unsqueeze(0)
            out["input_height"], out["input_width"] = pixels.shape[-2:]
            reference = None
            if item.get("reference_uri"):
                reference = to_tensor01(decode_rgb(read_bytes(item["reference_uri"], cfg.storage_options))).unsqueeze(0)
        with watch.stage("degrade"):
            if not cfg.degraded:
                reference = pixels
                operator = make_operator(cfg.task, image_size=tuple(pixels.shape[-2:]), **operator_options)
                y = operator.degrade(pixels * 2 - 1, streams["degrade"])
            else:
                size = self._clean_size(pixels, reference)
                operator = make_operator(cfg.task, image_size=size, **operator_options)
                y = pixels * 2 - 1
                if cfg.task == "colorize":
                    y = y.mean(dim=1, keepdim=True)  # a gray input decoded as RGB has three equal channels
                expected = operator.measurement_shape(3)
                if tuple(y.shape[1:]) != tuple(expected):
                    raise ValueError(f"input {item['uri']} is {tuple(y.shape[1:])} but {cfg.task} of a {size[0]}x{size[1]} image gives {expected}")
            operator = operator.to(self.device)
            y = y.to(self.device)
            naive01 = operator.naive_inverse(y).add(1).div(2).clamp(0, 1)
        with watch.stage("retrieval"):
            ids, uris, scores = self.retriever.neighbours(y[0].add(1).div(2).clamp(0, 1).cpu(), naive01[0].cpu(), streams["retrieval"])
            out.update(neighbour_ids=ids, neighbour_scores=scores)
        neighbours = []
        if cfg.mode != "baseline":
            with watch.stage("fetch"):
                neighbours = self._fetch(uris)
                out["neighbours_used"] = len(neighbours)
        adapter = None
        if neighbours:
            with watch.stage("adaptation"):
                adapt_config = AdaptConfig(lora_rank=cfg.lora_rank, lora_alpha=cfg.lora_alpha, learning_rate=cfg.lora_learning_rate,
                                           steps=cfg.lora_steps, batch_size=cfg.lora_batch_size)  # fmt: skip
                if self.upscaler is not None:
                    adapter = adapt_upscaler(self.upscaler, neighbours, self._upscale_config(adapt_config), streams["adaptation"])
                else:
                    adapter = adapt(self.prior, neighbours, adapt_config, streams["adaptation"])
                out["lora_final_loss"] = adapter.losses[-1] if adapter.losses else None
        with watch.stage("sampling"):
            if self.upscaler is not None:
                out["tiles"] = 1
                config = self._upscale_config(AdaptConfig())
                x01 = upscale(self.upscaler, y.add(1).div(2).clamp(0, 1), config, [sampling_generator], adapter=adapter)
                result01 = x01[..., : operator.image_size[0], : operator.image_size[1]].clamp(0, 1)
            else:
                out["tiles"] = self.tiled.tile_count(*operator.image_size)
                with adapter.applied(self.prior) if adapter is not None else contextlib.nullcontext():
                    x0 = adir_sample(self.tiled, y, operator, steps=cfg.steps, guidance_scale=cfg.guidance_scale, generator=[sampling_generator])
                result01 = x0.add(1).div(2).clamp(0, 1)
            if not torch.isfinite(result01).all():
                raise ValueError("the sampler produced non-finite pixels (NaN/inf); check --guidance-scale and the prior's weights")
            out["height"], out["width"] = result01.shape[-2:]
        if reference is not None:
            with watch.stage("metrics"):
                out.update(self._metrics(result01, naive01, reference.to(self.device)))
        with watch.stage("write"):
            commit_bytes(image_url(cfg.out, item["name"]), encode_png(result01[0]), cfg.storage_options)
            out["output"] = f"images/{item['name']}.png"
        return out

    def _upscale_config(self, lora):
        """The upscaler's settings for this job: its own noise level and prompt (""), the job's steps and LoRA."""
        from adir_ops.sd_upscale import UpscaleConfig, default_crop_size

        return UpscaleConfig(lora=lora, crop_size=default_crop_size(self.upscaler), steps=self.config.steps)

    def _clean_size(self, y01: torch.Tensor, reference: torch.Tensor | None) -> tuple[int, int]:
        """Clean-image size of a degraded input: the reference's if known, else y's times the SR factor."""
        h, w = y01.shape[-2:]
        factor = {"sr4": 4, "sr8": 8}.get(self.config.task, 1)
        if reference is None:
            return (h * factor, w * factor)
        H, W = reference.shape[-2:]
        if (-(-H // factor), -(-W // factor)) != (h, w):
            raise ValueError(f"reference is {H}x{W} but the {self.config.task} input is {h}x{w}; they are not a pair")
        return (H, W)

    def _fetch(self, uris: list[str]) -> list[torch.Tensor]:
        """The neighbours as (C, H, W) tensors in [-1, 1]; an unreadable one is skipped, none at all is an error."""
        from adir_storage import fetch_many

        images, failures = [], []
        for uri, data in zip(uris, fetch_many(list(uris), self.config.storage_options)):
            try:
                if isinstance(data, BaseException):
                    raise data
                images.append(to_tensor01(decode_rgb(data)).mul(2).sub(1))
            except Exception as exc:
                failures.append(f"{uri}: {_error_text(exc)}")
        if uris and not images:
            raise ItemError("fetch", f"none of the {len(uris)} neighbours could be read; first: {failures[0]}")
        return images

    def _metrics(self, result01: torch.Tensor, naive01: torch.Tensor, reference01: torch.Tensor) -> dict[str, float]:
        from adir_ops.quality import compute_metrics

        if reference01.shape != result01.shape:
            raise ValueError(f"reference is {tuple(reference01.shape[-2:])} but the reconstruction is {tuple(result01.shape[-2:])}")
        names = [n for n in self.config.metrics if n in ("psnr", "ssim")]
        values = compute_metrics(result01, reference01, names=names)
        out = {name: float(values[name][0]) for name in values}
        if "psnr" in names:
            out["naive_psnr"] = float(compute_metrics(naive01, reference01, names=["psnr"])["psnr"][0])
        return out

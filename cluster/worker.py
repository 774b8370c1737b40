"""The reconstruction actor: holds prior, encoder and index; turns one input image into its PNG and result row.

A plain class, testable without Ray; `cluster.pool` wraps it in `ray.remote` with one GPU
per actor when the cluster has GPUs. Models are built in `__init__` from the names in the
job config (never pickled), once per actor, and rebuilt by Ray when a dead actor restarts.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
import traceback
from typing import Any, Mapping

import torch

from adir_storage import commit_bytes, is_local, join_url, local_copy, read_bytes, scrub
from cluster.config import ReconstructConfig
from cluster.images import check_pixels, decode_input, decode_rgb, encode_png, observe_input, to_tensor01
from cluster.results import IMAGES_DIR, STD_SCALE, estimate_columns, image_url, new_row, utc_now, write_part

MAX_ERROR_CHARS = 2000


class ItemError(Exception):
    """A failure that belongs to one image: it becomes that image's error row, the actor goes on."""

    def __init__(self, stage: str, message: str):
        super().__init__(message)
        self.stage = stage


def load_prior(spec: str, storage_options: Mapping[str, Any] | None = None):
    """A DiffusionPrior from any spec of adir_ops.priors.registry.PRIORS; remote weights are copied to this node first."""
    from adir_ops.priors.registry import load_local_prior

    return load_local_prior(spec, localize=lambda target: local_copy(target, storage_options))


def load_upscaler(spec: str, storage_options: Mapping[str, Any] | None = None):
    """The Stable Diffusion x4 upscaler pipeline of `sd-x4:WHERE` (folder, bucket URL, hub id or 'tiny')."""
    from adir_ops.latent.stable_diffusion import load_pipeline
    from adir_ops.priors.registry import parse_prior

    kind, target = parse_prior(spec)
    if kind != "sd-x4":
        raise ValueError(f"{spec!r} is not an sd-x4:... prior spec")
    if target != "tiny" and not is_local(target):
        target = local_copy(target, storage_options)
    return load_pipeline("sd-x4", target)


def _error_text(exc: BaseException, size: tuple[int, int] | None = None) -> str:
    text = f"{type(exc).__name__}: {exc}"
    text = text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 3] + "..."
    message = str(exc).lower()
    if isinstance(exc, MemoryError) or "out of memory" in message or "can't allocate" in message:
        shown = f" ({size[0]} x {size[1]} px)" if size else ""
        text += (
            f". The image{shown} is too large for this machine's memory: lower --max-pixels so such images "
            "are refused before any work, downscale them, or run on a machine with more memory"
        )
    return text


class _Stopwatch:
    def __init__(self):
        self.times: dict[str, float] = {}
        self.size: tuple[int, int] | None = None  # (width, height) of the image once read: said in a memory error

    @contextlib.contextmanager
    def stage(self, name: str):
        start = time.perf_counter()
        try:
            yield
        except ItemError:
            raise
        except Exception as exc:
            raise ItemError(name, _error_text(exc, self.size)) from exc
        finally:
            self.times[f"{name}_s"] = self.times.get(f"{name}_s", 0.0) + time.perf_counter() - start


class ReconstructionWorker:
    """One per GPU (or CPU slot): `process(item)` does one image end to end and returns its row.

    item: {"image_id", "uri", "name"} and, for degraded inputs with known ground truth,
    "reference_uri". Every failure inside `process` becomes an error row for that image.
    """

    def __init__(self, config: ReconstructConfig):
        from adir_ops.allocator import keep_freed_memory
        from adir_ops.pipeline import pipeline_for
        from adir_ops.priors.tiling import TilingConfig
        from adir_ops.retrieval.embedding import get_embedder
        from adir_ops.sampling.config import SamplerConfig
        from cluster.retrieval import make_retriever, thumbnails_url

        keep_freed_memory()  # this actor's process runs forwards all day: reuse freed tensor memory
        if not isinstance(config, ReconstructConfig):  # validated once, where the job was resolved, and shipped as is
            raise TypeError(f"ReconstructionWorker takes the job's ReconstructConfig; got {type(config).__name__}")
        self.config = cfg = config
        # Ray pins a GPU actor to its device through CUDA_VISIBLE_DEVICES: it sees cuda:0.
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        # The SD x4 upscaler replaces prior + eq. 16 sampler by its own pipeline (adapted in latent space).
        if cfg.prior_kind == "sd-x4":
            prior = load_upscaler(cfg.prior, cfg.storage_options).to(self.device)
        else:
            from adir_ops.priors.precision import set_precision

            prior = load_prior(cfg.prior, cfg.storage_options).to(self.device).eval()
            # The network's forward (sampling and LoRA) on this actor's own device: the rows say which ran.
            set_precision(prior, cfg.precision)
        self.embedder = None
        if cfg.mode == "adir":
            if cfg.embedder is None:
                from index_builder.manifest import Manifest

                name = Manifest.read(cfg.index, cfg.storage_options).embedder
            else:
                name = cfg.embedder
            self.embedder = get_embedder(name)
        thumbnails = (
            thumbnails_url(cfg.out, cfg.index, cfg.mse_thumbnail, cfg.storage_options)
            if cfg.mode == "mse-nn"
            else None
        )
        self.retriever = make_retriever(
            cfg.mode,
            cfg.k,
            index=cfg.index,
            embedder=self.embedder,
            thumbnails=thumbnails,
            gray=cfg.task == "colorize",
            region=cfg.retrieval_region,
            storage_options=cfg.storage_options,
        )
        adapters = warm_start = None
        if cfg.adapter_cache:
            from adir_ops.adaptation.cache import WarmStart
            from cluster.adapters import adapter_store

            adapters = adapter_store(cfg.out, cfg.storage_options)
            if cfg.warm_start is not None:
                warm_start = WarmStart(cfg.warm_start, cfg.warm_start_steps)
        self.pipeline = pipeline_for(
            prior,
            self.retriever,
            adaptation=cfg.lora,
            sampler=SamplerConfig(cfg.sampler, cfg.steps, cfg.guidance_scale, cfg.samples, cfg.sampling_region),
            fetch=self._fetch,
            tiling=TilingConfig(overlap=cfg.tile_overlap, tile_batch=cfg.tile_batch, small_images=cfg.small_images),
            adapters=adapters,
            warm_start=warm_start,
        )

    def ready(self) -> dict[str, Any]:
        """Who this actor is: the driver's liveness probe and the pid a test may kill."""
        return {"pid": os.getpid(), "device": str(self.device)}

    # ---------------------------------------------------------------- one image
    def process(self, item: Mapping[str, Any], attempt: int = 1) -> dict[str, Any]:
        cfg = self.config
        start = time.perf_counter()
        row = new_row(cfg, item, attempt, worker_pid=os.getpid(), worker_device=str(self.device))
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
        from adir_ops.physics.tasks import scale_factor
        from adir_ops.pipeline import StageError

        cfg = self.config
        image_id = item["image_id"]
        out: dict[str, Any] = {}
        with watch.stage("read"):
            factor = scale_factor(cfg.task) if cfg.degraded else 1  # a degraded SR input grows by its factor
            pixels, out["input_sha256"] = self._read(item["uri"], factor)
            out["input_height"], out["input_width"] = pixels.shape[-2:]
            watch.size = (pixels.shape[-1] * factor, pixels.shape[-2] * factor)
            reference = None
            if item.get("reference_uri"):
                reference, out["reference_sha256"] = self._read(item["reference_uri"], 1)
        with watch.stage("degrade"):
            seen = observe_input(
                cfg.task,
                pixels,
                seed=cfg.seed,
                image_id=image_id,
                degraded=cfg.degraded,
                reference01=reference,
                noise_sigma_255=cfg.noise_sigma_255,
                degradation=cfg.degradation,
            )
            operator, y, reference = seen.operator.to(self.device), seen.y.to(self.device), seen.truth01
            if seen.estimate is not None:
                out.update(estimate_columns(seen.estimate))
        try:
            result = self.pipeline(y, operator, seed=cfg.seed, image_id=image_id)
        except StageError as exc:
            watch.times.update(exc.timings)
            raise ItemError(exc.stage, _error_text(exc.error, watch.size)) from exc
        watch.times.update(result.timings)
        result01, naive01 = result.image01, result.naive01
        out.update(
            sampler=result.config["sampler"]["name"],
            precision=result.config["precision"],
            neighbour_ids=result.neighbours.ids,
            neighbour_scores=result.neighbours.scores,
            lora_final_loss=result.lora_final_loss,
            adapter_source=result.adaptation.get("source"),
            adapter_key=result.adaptation.get("key"),
            adapter_init=result.adaptation.get("init"),
            adapter_overlap=result.adaptation.get("overlap"),
            lora_steps_run=result.adaptation.get("steps"),
            height=result01.shape[-2],
            width=result01.shape[-1],
            tiles=self.pipeline.tile_count(operator),
            samples=cfg.samples,
        )
        if cfg.mode != "baseline":
            out["neighbours_used"] = result.neighbours_used
        if reference is not None:
            with watch.stage("metrics"):
                out.update(self._metrics(result01, naive01, reference.to(self.device)))
                if result.mean01 is not None:
                    mean = self._metrics(result.mean01, naive01, reference.to(self.device))
                    out.update(mean_psnr=mean.get("psnr"), mean_ssim=mean.get("ssim"))
        with watch.stage("write"):
            if result.mean01 is not None:  # before the sample's PNG: that one marks the image done
                name = item["name"]
                commit_bytes(
                    join_url(cfg.out, IMAGES_DIR, "mean", name + ".png"),
                    encode_png(result.mean01[0]),
                    cfg.storage_options,
                )
                std_png = encode_png(result.std01[0].mul(STD_SCALE).clamp(0, 1))
                commit_bytes(join_url(cfg.out, IMAGES_DIR, "std", name + ".png"), std_png, cfg.storage_options)
                out.update(
                    mean_output=f"images/mean/{name}.png",
                    std_output=f"images/std/{name}.png",
                    mean_std=float(result.std01.mean()),
                )
            commit_bytes(image_url(cfg.out, item["name"]), encode_png(result01[0]), cfg.storage_options)
            out["output"] = f"images/{item['name']}.png"
        return out

    def _read(self, uri: str, factor: int) -> tuple[torch.Tensor, str]:
        """An image as (1, C, H, W) in [0, 1] and the sha256 of its bytes (what makes its row done on a rerun).

        Bytes are capped (--max-input-bytes) and the size is checked from the header before decoding
        (--max-pixels, the reconstruction's pixels: `factor` x the input's sides).
        """
        data = read_bytes(uri, self.config.storage_options, self.config.max_input_bytes)
        check_pixels(data, self.config.max_pixels, factor)
        return decode_input(data), hashlib.sha256(data).hexdigest()

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
            raise ValueError(f"none of the {len(uris)} neighbours could be read; first: {failures[0]}")
        return images

    def _metrics(self, result01: torch.Tensor, naive01: torch.Tensor, reference01: torch.Tensor) -> dict[str, Any]:
        from adir_ops.metrics.quality import compute_metrics

        if reference01.shape != result01.shape:
            raise ValueError(
                f"reference is {tuple(reference01.shape[-2:])} but the reconstruction is {tuple(result01.shape[-2:])}"
            )
        names = [n for n in self.config.metrics if n in ("psnr", "ssim")]
        # A metric with no value here (SSIM's 11 x 11 window on an 8 x 8 image) is null with why: the
        # reconstruction itself is good and is kept.
        values = compute_metrics(result01, reference01, names=names, skip_inapplicable=True)
        out: dict[str, Any] = {name: float(values[name][0]) for name in values}
        if values.not_applicable:
            out["metrics_note"] = "; ".join(f"{name} {why}" for name, why in values.not_applicable.items())
        if "psnr" in names:
            out["naive_psnr"] = float(compute_metrics(naive01, reference01, names=["psnr"])["psnr"][0])
        return out

"""The reconstruction job's one frozen config: what every actor is built from and what OUT/config.yaml records."""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping

from adir_ops.adaptation.config import AdaptConfig, fold_flat_names
from adir_ops.physics.tasks import DEGRADATIONS, TASKS  # torch-free for the command line
from adir_ops.priors.precision import DEFAULT_PRECISION, PRECISIONS  # torch-free too
from adir_ops.priors.registry import parse_prior, tiny_resolution  # the --prior grammar, torch-free too
from adir_ops.priors.weights import DEFAULT_PRIOR_NAME
from adir_ops.retrieval.arms import MODES  # the paper's Table 5 arms, torch-free too
from adir_ops.retrieval.regions import DEFAULT_RETRIEVAL_REGION, MIN_RETRIEVAL_REGION  # torch-free too
from adir_ops.sampling.defaults import DEFAULT_REGION, MIN_REGION, default_steps  # torch-free too
from adir_ops.validation import check_fields, config_from_dict, short_repr
from adir_storage import MAX_READ_BYTES, redact_options, redact_url

# Fields that may change between a run and its resume without changing any result.
RUNTIME_FIELDS = (
    "num_actors",
    "cpus_per_actor",
    "gpus_per_actor",
    "max_restarts",
    "max_attempts",
    "limit",
    "order",
    "storage_options",
    "max_input_bytes",  # an image over the cap is an error row, and a rerun retries error rows
    "max_pixels",  # likewise
)
# Where the run folder lives decides no result: a moved folder resumes (cluster.run_folder).
PLACE_FIELDS = ("out",)
# Fields that may hold a URL, and with it a password or a signed token: config.yaml gets redact_url's form.
URL_FIELDS = ("inputs", "out", "index", "reference", "prior")
# Pixels of one reconstruction at most, by default: ~40 MP, far above the paper's images, below what
# one image's tensors take from a common machine. Above it an image is an error row at the read stage.
DEFAULT_MAX_PIXELS = 40_000_000
ORDERS = ("input", "embedding")
# (field, least, most) of the integer options. The upper bounds keep one option from taking the
# machine (`--samples 1000000` holds a million images per input); each is far above what the
# paper or any measured setting uses; the error names the range.
INT_RANGES = (
    ("k", 1, 1000),
    ("steps", 1, 1000),  # every prior's chain has 1000 train timesteps: more cannot be respaced
    ("samples", 1, 64),
    ("tile_batch", 1, 256),
    ("mse_thumbnail", 4, 512),
    ("max_restarts", 0, 100),
    ("max_attempts", 1, 100),
    ("warm_start_steps", 0, 100_000),
)
MAX_ACTORS = 1024
MAX_TILE_OVERLAP = 4096
LORA_RANGES = (("steps", 0, 100_000), ("batch_size", 1, 256), ("lora_rank", 1, 1024))


@dataclass(frozen=True)
class ReconstructConfig:
    """Everything `adir reconstruct` needs; plain data, so Ray ships it to actors (never a model).

    inputs: folder (fsspec URL) of clean images, degraded by the job (evaluation), or with
        `degraded` of already-degraded ones (real use; DIV2K's `0801x4.png` names give id `0801`).
    reference: with `degraded`, an optional folder of ground truths (`0801.png`) for metrics.
    prior: `default` (the embedded default: FFDNet read as a diffusion prior, docs/priors.md),
        `unet64` (the committed 64 px DDPM UNet), `ffdnet:PATH` (FFDNet colour weights), a diffusers
        UNet2DModel folder or hub id, a Guided Diffusion `.pt`, a remote URL of either, or
        `tiny[:resolution]` (random weights: mechanics only, for tests); or, naming the
        family, `gd256:PATH_OR_URL` (OpenAI's 256x256_diffusion_uncond.pt) or
        `sd-x4:FOLDER_URL_OR_HUB_ID` (the Stable Diffusion x4 upscaler, task sr4; `sd-x4:tiny` for tests).
    embedder: None = the one the index was built with; another name is refused before any work.
    """

    inputs: str
    out: str
    task: str
    index: str | None = None
    prior: str = DEFAULT_PRIOR_NAME
    mode: str = "adir"
    k: int = 20
    # None: the task's measured default for the prior (adir_ops.sampling.defaults), resolved here so
    # config.yaml records the number that ran.
    steps: int | None = None
    lora: AdaptConfig = field(
        default_factory=AdaptConfig
    )  # the paper's: rank 16, alpha 8, lr 1e-4, 400 steps, batch 6
    guidance_scale: float | None = None  # eq. 16's s for the eq16 samplers; None: the sampler's default (eq16: 1000)
    # adir_ops.sampling.samplers.SAMPLERS name, or "auto": the sampler measured best for the task (DEFAULT_SAMPLER_BY_TASK).
    sampler: str = "auto"
    samples: int = 1  # posterior samples per image: > 1 also writes their mean and a per-pixel std map
    # Images with a side beyond this are sampled in blended windows of it (adir_ops.sampling.regions): the
    # actor's memory is bounded by it, not by the photo. 0: always whole.
    sampling_region: int = DEFAULT_REGION
    # adir: an image with a side beyond this (output px) queries the index window by window and adapts on
    # the union of the windows' neighbours (adir_ops.retrieval.regions). 0: queried whole.
    retrieval_region: int = DEFAULT_RETRIEVAL_REGION
    # Amortized adaptation (cluster.adapters, adir_ops.adaptation.cache): adapters kept in OUT/adapters by key,
    # drawn from the neighbours' stream, reused by any image that retrieves the same neighbours.
    adapter_cache: bool = False
    # With the cache: start from the cached adapter whose neighbour ids overlap by >= this Jaccard, train
    # warm_start_steps steps. None: off (every adapter trains from a fresh LoRA).
    warm_start: float | None = None
    warm_start_steps: int = 10
    # "embedding": the driver sorts the images by their embedding (cluster.ordering) so an actor meets
    # similar images in sequence, which a warm start needs; "input": as listed.
    order: str = "input"
    noise_sigma_255: float | None = None
    seed: int = 0
    degraded: bool = False
    # "known": the task's operator; "auto": each --degraded input's noise and kernel estimated (adir_ops.physics.estimate).
    degradation: str = "known"
    reference: str | None = None
    embedder: str | None = None
    tile_overlap: int | None = None
    tile_batch: int = 4
    # The pixel prior's network: "auto" (bf16 autocast where the device multiplies bf16 natively: CUDA,
    # AVX512-BF16/AMX CPUs; else fp32), "fp32" (bit-reproducible anywhere) or "bf16" (adir_ops.priors.precision).
    precision: str = DEFAULT_PRECISION
    small_images: str = "pad"
    mse_thumbnail: int = 32
    metrics: tuple[str, ...] = ("psnr", "ssim")
    num_actors: int | None = None
    cpus_per_actor: float | None = None
    gpus_per_actor: float | None = None
    max_restarts: int = 3
    max_attempts: int = 3
    limit: int | None = None
    # Bytes read per input image at most (a link to /dev/zero never ends); above it the image is an error row.
    max_input_bytes: int = MAX_READ_BYTES
    # Pixels of one reconstruction (an input's, times the task's scale squared for --degraded SR) at most:
    # read from the header before decoding, so a 100 MP image costs an error row, not the actor.
    max_pixels: int = DEFAULT_MAX_PIXELS
    # Endpoint/credentials for remote URLs: out of repr, and only known-safe values reach config.yaml.
    storage_options: Mapping[str, Any] = field(default_factory=dict, repr=False)

    def __post_init__(self):
        if isinstance(self.metrics, (list, tuple)):
            object.__setattr__(self, "metrics", tuple(self.metrics))
        if self.storage_options is None:
            object.__setattr__(self, "storage_options", {})
        if isinstance(self.lora, dict):
            object.__setattr__(self, "lora", AdaptConfig.from_dict(self.lora))
        for name in ("inputs", "out", "task"):
            if not getattr(self, name):
                raise ValueError(f"reconstruct needs --{name} (on the command line or in --config job.yaml)")
        check_fields(self)  # YAML's 'no' is a truthy string, `seed: abc` a string, .nan a float
        if self.steps is None and self.task in TASKS:
            object.__setattr__(self, "steps", default_steps(self.task, self.prior_kind))
        object.__setattr__(self, "storage_options", dict(self.storage_options))
        if self.task not in TASKS:
            raise ValueError(f"unknown task {short_repr(self.task)}; choose one of {', '.join(TASKS)}")
        if self.mode not in MODES:
            raise ValueError(f"unknown mode {short_repr(self.mode)}; choose one of {', '.join(MODES)}")
        if self.mode != "baseline" and not self.index:
            raise ValueError(
                f"mode {self.mode!r} retrieves neighbours and needs --index URL (only --mode baseline runs without one)"
            )
        if self.degraded and self.task == "inpaint":
            raise ValueError(
                "inpaint with --degraded would need the mask of each input, which the job cannot recover; "
                "run inpaint on clean images (the job masks them) instead"
            )
        if self.degradation not in DEGRADATIONS:
            raise ValueError(
                f"--degradation must be one of {', '.join(DEGRADATIONS)}; got {short_repr(self.degradation)}"
            )
        if self.degradation == "auto" and not self.degraded:
            raise ValueError(
                "--degradation auto estimates the degradation of already-degraded photos: add --degraded "
                "(clean inputs are degraded by the job with the task's known operator)"
            )
        if self.reference and not self.degraded:
            raise ValueError(
                "--reference (ground truths) only applies with --degraded; clean inputs are their own reference"
            )
        self._check_ranges()
        if self.limit is not None and self.limit < 1:
            raise ValueError(
                f"--limit {self.limit} selects no images; pass --limit N with N >= 1, or leave it out for all"
            )
        if self.warm_start is not None:
            from adir_ops.adaptation.cache import WarmStart

            WarmStart(self.warm_start, self.warm_start_steps)  # the range checks, with the fix
            if not self.adapter_cache:
                raise ValueError("--warm-start starts from cached adapters: add --adapter-cache")
            if self.prior_kind == "sd-x4":
                raise ValueError("--warm-start needs a pixel-space prior; the SD x4 upscaler adapts in latent space")
        if self.guidance_scale is not None and self.guidance_scale < 0:
            raise ValueError(f"--guidance-scale must be >= 0; got {self.guidance_scale}")
        unknown_metrics = sorted(set(self.metrics) - {"psnr", "ssim"})
        if unknown_metrics:
            raise ValueError(f"metrics {unknown_metrics} are not results columns; choose from psnr, ssim")
        if self.order not in ORDERS:
            raise ValueError(f"--order must be one of {', '.join(ORDERS)}; got {short_repr(self.order)}")
        if self.small_images not in ("pad", "native"):
            raise ValueError(f"small_images must be 'pad' or 'native'; got {short_repr(self.small_images)}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"--precision must be one of {', '.join(PRECISIONS)}; got {short_repr(self.precision)}")
        kind = self.prior_kind  # a spec that no loader takes is refused here, naming the known forms
        if kind == "sd-x4" and self.precision != "auto":
            raise ValueError(
                "--precision sets a pixel prior's network; the SD x4 upscaler keeps its own (bf16 on CUDA, fp32 "
                "elsewhere): leave --precision out"
            )
        if kind == "sd-x4" and self.task != "sr4":
            raise ValueError(
                f"--prior {self.prior} is the Stable Diffusion x4 upscaler: it does --task sr4 only, not {self.task}"
            )

    def _check_ranges(self) -> None:
        """Every number in its range, named by its flag (types are already checked)."""
        for name, least, most in INT_RANGES:
            _in_range(name, getattr(self, name), least, most)
        for name, least, most in LORA_RANGES:
            _in_range(f"lora_{name}" if name != "lora_rank" else name, getattr(self.lora, name), least, most)
        if self.num_actors is not None:
            _in_range("num_actors", self.num_actors, 1, MAX_ACTORS)
        if self.tile_overlap is not None:
            _in_range("tile_overlap", self.tile_overlap, 0, MAX_TILE_OVERLAP)
        if self.sampling_region and not MIN_REGION <= self.sampling_region <= 1 << 20:
            raise ValueError(
                f"--sampling-region is a side in pixels, 0 (whole images) or from {MIN_REGION} to {1 << 20:,}; "
                f"got {self.sampling_region}"
            )
        if self.retrieval_region and not MIN_RETRIEVAL_REGION <= self.retrieval_region <= 1 << 20:
            raise ValueError(
                f"--retrieval-region is a side in pixels, 0 (query whole images) or from {MIN_RETRIEVAL_REGION} "
                f"to {1 << 20:,}; got {self.retrieval_region}"
            )
        _in_range("max_input_bytes", self.max_input_bytes, 1, 2**40)
        _in_range("max_pixels", self.max_pixels, 1, 2**40)
        for name in ("cpus_per_actor", "gpus_per_actor"):
            _check_resource(name, getattr(self, name))
        if self.noise_sigma_255 is not None and not 0 <= self.noise_sigma_255 <= 255:
            raise ValueError(f"noise_sigma_255 is a noise level on the 0..255 scale; got {self.noise_sigma_255:g}")

    # ------------------------------------------------------------------ conversions
    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "ReconstructConfig":
        # `lora_steps: 50` (older configs, the --lora-* flags) is lora.steps.
        return config_from_dict(cls, fold_flat_names(values), "reconstruct", required=("inputs", "out", "task"))

    def to_dict(self) -> dict[str, Any]:
        values = dataclasses.asdict(self)
        values["metrics"] = list(self.metrics)
        values["storage_options"] = dict(self.storage_options)
        return values

    def redacted(self) -> dict[str, Any]:
        """to_dict() with every storage option not known to be safe masked and every URL's credentials
        redacted: what config.yaml holds (the actors keep the real values, in memory only)."""
        values = self.to_dict()
        values["storage_options"] = redact_options(values["storage_options"])
        for name in URL_FIELDS:
            if isinstance(values[name], str):
                values[name] = redact_url(values[name])
        return values

    def result_fields(self) -> dict[str, Any]:
        """The options that decide an image's output, as config.yaml writes them: a resume must not change any."""
        values = self.redacted()
        for name in (*RUNTIME_FIELDS, *PLACE_FIELDS):
            values.pop(name)
        return values

    def with_embedder(self, embedder: str) -> ReconstructConfig:
        """This config with the encoder its index was built with, as the preflight read it from the manifest.

        Not validated again (the job's config is validated once, where it is resolved): every other field
        already was, and the name comes from the index's manifest, which the preflight compared with --embedder.
        """
        resolved = copy.copy(self)
        object.__setattr__(resolved, "embedder", embedder)
        return resolved

    @property
    def prior_kind(self) -> str:
        """The --prior spec's kind, a key of adir_ops.priors.registry.PRIORS ('sd-x4', 'tiny', 'auto', ...)."""
        return parse_prior(self.prior).kind

    @property
    def tiny_resolution(self) -> int | None:
        return tiny_resolution(self.prior)


def _in_range(name: str, value: int, least: int, most: int) -> None:
    if not least <= value <= most:
        raise ValueError(f"--{name.replace('_', '-')} must be an integer from {least} to {most:,}; got {value}")


def _check_resource(name: str, value: float | None) -> None:
    """A Ray resource request as Ray takes it: >= 0, and a whole number above 1 (said here, not in Ray's words)."""
    flag = f"--{name.replace('_', '-')}"
    if value is None:
        return
    if value < 0 or value > 1024:
        raise ValueError(f"{flag} must be from 0 to 1024; got {value:g}")
    if value > 1 and value != int(value):
        raise ValueError(
            f"{flag} above 1 must be a whole number (Ray shares only a part of one device); got {value:g}"
        )
    if name == "cpus_per_actor" and value == 0:
        raise ValueError(f"{flag} 0 would pack any number of actors on one node; give a share like 0.5 or 1")

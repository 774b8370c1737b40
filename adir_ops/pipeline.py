"""ADIRPipeline: the method's sequence in one place (paper Alg. 1), in the manner of a diffusers pipeline.

    pipe = ADIRPipeline.from_spec(prior="default", retriever=..., adaptation=AdaptConfig(steps=400))
    result = pipe(y, operator, seed=0, image_id="0801")
    result.image01, result.neighbours, result.adapter, result.timings, result.config

`pipeline_for(prior, ...)` gives the pipeline of a prior's family behind that one call: ADIRPipeline
for a pixel-space prior, ADIRUpscalePipeline for the Stable Diffusion x4 upscaler (adapted and
sampled in latent space, by adir_ops.latent.upscale).

One call: plain restoration of y → retrieve K neighbours (a Table 5 arm of adir_ops.retrieval.arms)
→ fetch them → adapt a fresh LoRA on them (eq. 18) → guided sampling with the adapted prior
(eq. 16, or any sampler of adir_ops.sampling.samplers). The Ray worker, the example, the notebooks and
the benches all call this, so the same seed and image give the same bytes everywhere.

Randomness: every draw comes from the image's own streams (`image_streams`), one per stage,
seeded from (run seed, image id): every arm sees the same degradation and the same sampler
noise, and differs from the others by its neighbours alone. With an adapter cache
(`adapters=`, `adir_ops.adaptation.cache`) the adaptation draws from its neighbours' stream
instead, so images that retrieve the same neighbours share one adapter, trained once.
A failure is raised as StageError naming the stage it happened in (the worker's error row).
"""

from __future__ import annotations

import abc
import contextlib
import dataclasses
import functools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from adir_ops.adaptation.adapter import Adapter
from adir_ops.adaptation.cache import AdapterCache, WarmStart, adaptation_stream, adapter_key, closest
from adir_ops.adaptation.config import AdaptConfig
from adir_ops.adaptation.training import adapt
from adir_ops.priors.precision import precision_name
from adir_ops.priors.tiling import TiledPrior, TilingConfig
from adir_ops.retrieval.arms import Neighbours, NoNeighbours
from adir_ops.rng import generator_for, image_streams
from adir_ops.sampling.config import SamplerConfig
from adir_ops.sampling.regions import DEFAULT_OVERLAP, regional, sample_in_regions, windows
from adir_ops.sampling.samplers import GUIDED_SAMPLERS, get_sampler

Fetch = Callable[[Sequence[str]], list[torch.Tensor]]


class StageError(RuntimeError):
    """A failure inside one stage of the pipeline (its `stage`: retrieval, fetch, adaptation, sampling)."""

    def __init__(self, stage: str, error: BaseException, timings: dict[str, float] | None = None):
        super().__init__(f"{type(error).__name__}: {error}")
        self.stage, self.error = stage, error
        self.timings = timings if timings is not None else {}  # seconds of the stages run, this one included


@dataclass
class ADIRResult:
    image01: torch.Tensor  # (1, C, H, W) in [0, 1]: the reconstruction
    naive01: torch.Tensor  # the operator's plain restoration of y, (1, 3, H, W) in [0, 1]
    neighbours: Neighbours
    neighbours_used: int  # fetched and adapted on (an unreadable neighbour is skipped)
    adapter: Adapter | None
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage
    config: dict[str, Any] = field(default_factory=dict)  # what made it
    mean01: torch.Tensor | None = None  # with samples > 1: the mean of the posterior samples
    std01: torch.Tensor | None = None  # with samples > 1: per-pixel std over the samples, channel mean, (1, 1, H, W)
    # Where the adapter came from: source ('trained' | 'cache'), key, init (warm start's key), overlap, steps.
    adaptation: dict[str, Any] = field(default_factory=dict)

    @property
    def lora_final_loss(self) -> float | None:
        return self.adapter.losses[-1] if self.adapter is not None and self.adapter.losses else None


def _read_local(uris: Sequence[str]) -> list[torch.Tensor]:
    """Default fetch: local image files as (3, H, W) in [-1, 1] (storage URLs are the caller's: cluster passes its own)."""
    import numpy as np
    from PIL import Image

    images = []
    for uri in uris:
        with Image.open(uri) as img:
            array = np.asarray(img.convert("RGB"), dtype=np.uint8)
        images.append(torch.from_numpy(array.copy()).permute(2, 0, 1).float().div(127.5).sub(1))
    return images


class ReconstructionPipeline(abc.ABC):
    """The stages every prior family shares, in order: retrieval → fetch → adaptation → sampling (paper Alg. 1).

    A family's class says how it adapts (`adapt`) and samples (`sample`); `pipeline_for(prior)`
    picks it. `fetch(uris)`: the neighbours as (C, H, W) tensors in [-1, 1], skipping unreadable
    ones (default: local image files). `adapters`: a cache of adapters by key (`adir_ops.adaptation.cache`):
    an image whose neighbours were adapted on before reads that adapter; with it the adaptation
    draws from the neighbours' stream, not the image's. `warm_start` (needs `adapters`): start
    from the cached adapter of an overlapping neighbour set and train fewer steps.
    """

    def __init__(
        self,
        prior,
        retriever=None,
        *,
        adaptation: AdaptConfig = AdaptConfig(),
        sampler: SamplerConfig = SamplerConfig(),
        fetch: Fetch | None = None,
        tiling: TilingConfig = TilingConfig(),
        adapters: AdapterCache | None = None,
        warm_start: WarmStart | None = None,
    ):
        if warm_start is not None and adapters is None:
            raise ValueError(
                "a warm start needs an adapter cache; turn on the adapter cache, or leave the warm start off"
            )
        self.prior = prior
        self.adapters, self.warm_start = adapters, warm_start
        self.retriever = retriever if retriever is not None else NoNeighbours()
        self.adaptation, self.sampler, self.tiling = adaptation, sampler, tiling
        self.fetch = fetch or _read_local

    # ------------------------------------------------------------ what a family defines
    @abc.abstractmethod
    def adapt(self, images: list[torch.Tensor], generator, callback=None, *, initial=None, config=None) -> Adapter:
        """A LoRA on `images` ((C, H, W) in [-1, 1]) from `generator` (paper eq. 18); fresh, or from `initial`."""

    @abc.abstractmethod
    def sample(
        self, y: torch.Tensor, operator, generator: torch.Generator, adapter: Adapter | None = None, callback=None
    ) -> torch.Tensor:
        """The reconstruction (1, C, H, W) in [0, 1] of y with the (adapted) prior, from the image's sampling stream."""

    @abc.abstractmethod
    def sampler_name(self, operator) -> str:
        """The sampler this pipeline runs for `operator` (what the result's config records)."""

    @abc.abstractmethod
    def tile_count(self, operator) -> int:
        """Network evaluations per sampling step for an image of `operator` (its size, and its regions if any)."""

    def precision(self, device: torch.device) -> str:
        """What the prior's network runs in on `device`: 'bf16' or 'fp32' (its autocast dtype, set by the caller)."""
        return precision_name(getattr(self.prior, "autocast_dtype", None))

    # ---------------------------------------------------------------- one image
    def __call__(
        self, y: torch.Tensor, operator, *, seed: int, image_id: str, callback=None, on_adapt_step=None
    ) -> ADIRResult:
        """Reconstruct one measurement y (1, C, h, w) in [-1, 1] of `operator`.

        `callback(dict)` is the sampler's, per step; `on_adapt_step(step, loss)` the adaptation's, per LoRA step.
        """
        streams = image_streams(seed, image_id)
        timings: dict[str, float] = {}

        @contextlib.contextmanager
        def stage(name: str):
            start = time.perf_counter()
            try:
                yield
            except StageError:
                raise
            except Exception as exc:
                raise StageError(name, exc, timings) from exc
            finally:
                timings[f"{name}_s"] = time.perf_counter() - start

        naive01 = operator.naive_inverse(y).add(1).div(2).clamp(0, 1)
        with stage("retrieval"):
            found = self.retriever.neighbours(
                y[0].add(1).div(2).clamp(0, 1).cpu(), naive01[0].cpu(), streams["retrieval"]
            )
        images: list[torch.Tensor] = []
        if len(found):
            with stage("fetch"):
                images = self.fetch(found.uris)
                if not images:
                    raise ValueError(f"none of the {len(found)} neighbours could be read")
        adapter, adaptation = None, {}
        if images:
            with stage("adaptation"):
                adapter, adaptation = self._adapter(found, images, seed, streams["adaptation"], on_adapt_step)
        with stage("sampling"):
            # Sample j > 0 draws from its own stream: the first is the single-sample result whatever N is,
            # and each sample is the same whether the others run or not.
            draws = [streams["sampling"]] + [
                generator_for(seed, f"{image_id}#sample{j}") for j in range(1, self.sampler.samples)
            ]
            samples = [self.sample(y, operator, g, adapter, callback) for g in draws]
        image01, mean01, std01 = samples[0], None, None
        if len(samples) > 1:
            stack = torch.stack(samples)
            mean01, std01 = stack.mean(0), stack.std(0).mean(1, keepdim=True)
        config = {
            "seed": seed,
            "image_id": image_id,
            "operator": dict(operator.config),
            "retrieval": getattr(self.retriever, "mode", "custom"),
            "k": getattr(self.retriever, "k", 0),
            "retrieval_region": getattr(self.retriever, "region", 0),
            "adaptation": dataclasses.asdict(self.adaptation),
            "sampler": {**dataclasses.asdict(self.sampler), "name": self.sampler_name(operator)},
            "prior": self._prior_config(),
            "precision": self.precision(y.device),
            "adapter_cache": self.adapters is not None,
            "warm_start": None if self.warm_start is None else dataclasses.asdict(self.warm_start),
            # A fully convolutional prior sees the whole image: no tiles to record.
            "tiling": None if getattr(self.prior, "fully_convolutional", False) else dataclasses.asdict(self.tiling),
        }
        return ADIRResult(image01, naive01, found, len(images), adapter, timings, config, mean01, std01, adaptation)

    @staticmethod
    def _finite01(image01: torch.Tensor) -> torch.Tensor:
        """A sample clamped to [0, 1] in place (the caller's own tensor: no image-sized copy), refused when it
        holds NaN/inf (a broken sample must not become a PNG)."""
        if not torch.isfinite(image01).all():
            raise ValueError(
                "the sampler produced non-finite pixels (NaN/inf); check the guidance scale and the prior's weights"
            )
        return image01.clamp_(0, 1)

    def _prior_config(self) -> dict[str, Any]:
        return getattr(self.prior, "config", {"source": type(self.prior).__name__})

    def _adapter(self, found: Neighbours, images, seed: int, image_stream, callback) -> tuple[Adapter, dict[str, Any]]:
        """The image's adapter and where it came from: trained cold, read from the cache, or warm-started."""
        trained = {"source": "trained", "key": None, "init": None, "overlap": None, "steps": self.adaptation.steps}
        # An unreadable neighbour was skipped: the images are not the ones the ids name, so no key fits them.
        if self.adapters is None or len(images) != len(found):
            return self.adapt(images, image_stream, callback), trained
        pairs = list(zip(found.ids, found.uris))
        prior_config = self._prior_config()
        key = adapter_key(prior_config, pairs, self.adaptation, seed)
        cached = self.adapters.get(key)
        if cached is not None:
            return cached, {**trained, "source": "cache", "key": key, "steps": 0}
        config, initial, init, overlap = self.adaptation, None, None, None
        if self.warm_start is not None:
            match = closest(self.adapters.entries(), found.ids, self.warm_start.min_overlap)
            if match is not None:
                initial = self.adapters.get(match[0].key)
            if initial is not None:
                init, overlap = match[0].key, match[1]
                config = dataclasses.replace(self.adaptation, steps=self.warm_start.steps)
                key = adapter_key(prior_config, pairs, config, seed, init=init)
                cached = self.adapters.get(key)
                if cached is not None:
                    return cached, {"source": "cache", "key": key, "init": init, "overlap": overlap, "steps": 0}
        adapter = self.adapt(images, adaptation_stream(seed, pairs), callback, initial=initial, config=config)
        adapter.provenance = {"key": key, "ids": list(found.ids), "uris": list(found.uris), "init": init}
        self.adapters.put(key, adapter, adapter.provenance)
        return adapter, {"source": "trained", "key": key, "init": init, "overlap": overlap, "steps": config.steps}


class ADIRPipeline(ReconstructionPipeline):
    """ADIR with a pixel-space prior (a DiffusionPrior or a denoiser) and a sampler of adir_ops.sampling.samplers.

    `tiling`: how the sampler covers an image of any size with prior-resolution tiles (a
    TiledPrior over `prior`, blended inside eps(): no seams; an image of the prior's size is one
    tile). The other settings are ReconstructionPipeline's.
    """

    def __init__(self, prior, retriever=None, **settings):
        super().__init__(prior, retriever, **settings)
        # A fully convolutional prior (a denoiser) takes the whole image; a UNet gets tiles of its size.
        self.sampling_prior = prior if getattr(prior, "fully_convolutional", False) else TiledPrior(prior, self.tiling)

    @classmethod
    def from_spec(cls, prior: str = "default", retriever=None, *, precision: str = "auto", **kw) -> ADIRPipeline:
        """`prior`: a PRIORS spec ('default', 'unet64', 'tiny[:res]' for tests, a folder); `precision`: as the job's --precision."""
        from adir_ops.priors.precision import set_precision
        from adir_ops.priors.registry import load_local_prior

        return cls(set_precision(load_local_prior(prior).eval(), precision), retriever, **kw)

    def sampler_name(self, operator) -> str:
        return self.sampler.resolve(operator.name)

    def tile_count(self, operator) -> int:
        if regional(operator, self.sampler.region):
            cells = windows(*operator.image_size, self.sampler.region, DEFAULT_OVERLAP, operator.alignment)
            return sum(self.sampling_prior.tile_count(h, w) for _, _, h, w in cells)
        return self.sampling_prior.tile_count(*operator.image_size)

    # ------------------------------------------------------------ the stages, callable alone
    def adapt(
        self,
        images: list[torch.Tensor],
        generator: torch.Generator,
        callback=None,
        *,
        initial: Adapter | None = None,
        config: AdaptConfig | None = None,
    ) -> Adapter:
        """A LoRA on `images` ((C, H, W) in [-1, 1]) from `generator` (paper eq. 18); fresh, or from `initial`."""
        return adapt(self.prior, images, config or self.adaptation, generator, callback=callback, initial=initial)

    def sample(
        self, y: torch.Tensor, operator, generator: torch.Generator, adapter: Adapter | None = None, callback=None
    ) -> torch.Tensor:
        """The reconstruction (1, C, H, W) in [0, 1] of y with the (adapted) prior, from the image's sampling stream."""
        sampler = self._sampler(operator)

        def run(y, operator, generator):
            return sampler(self.sampling_prior, y, operator, generator=[generator], callback=callback)

        with adapter.applied(self.prior) if adapter is not None else contextlib.nullcontext():
            if regional(operator, self.sampler.region):
                x0 = sample_in_regions(run, y, operator, generator, self.sampler.region)
            else:
                x0 = run(y, operator, generator)
        return self._finite01(x0.add_(1).div_(2))

    def sample_many(self, y: torch.Tensor, operator, generators: Sequence[torch.Generator]) -> torch.Tensor:
        """Baseline mode for a batch: G measurements y (G, C, h, w) of one operator in one sampler call, unadapted.

        Image g draws from `generators[g]` alone (its own sampling stream), so it is the image that
        `sample` gives it alone, to float rounding of the batched convolutions.
        """
        generators = list(generators)
        if y.ndim != 4 or y.shape[0] != len(generators):
            raise ValueError(
                f"sample_many needs y of shape (G, C, h, w) and G generators; got {tuple(y.shape)}, {len(generators)}"
            )
        x0 = self._sampler(operator)(self.sampling_prior, y, operator, generator=generators)
        return self._finite01(x0.add_(1).div_(2))

    def _sampler(self, operator) -> Callable[..., torch.Tensor]:
        """The operator's sampler with this pipeline's steps (and eq. 16's scale s, where it takes one)."""
        name = self.sampler_name(operator)
        guided = name in GUIDED_SAMPLERS and self.sampler.guidance_scale is not None
        options = {"guidance_scale": self.sampler.guidance_scale} if guided else {}
        return functools.partial(get_sampler(name), steps=self.sampler.steps, **options)


class ADIRUpscalePipeline(ReconstructionPipeline):
    """ADIR with the SD x4 upscaler (a diffusers pipeline) as its prior: a LoRA in latent space, then the adapted upscale.

    The upscaler is its own sampler: of the SamplerConfig only `steps` and `samples` apply. Its
    LoRA is trained fresh per neighbour set (a warm start needs a pixel-space prior). The work is
    adir_ops.latent.upscale's, imported on first use so diffusers' code stays off the pixel-space path.
    """

    def __init__(self, prior, retriever=None, **settings):
        if settings.get("warm_start") is not None:
            raise ValueError(
                "a warm start needs a pixel-space prior; the SD x4 upscaler adapts in latent space: "
                "leave the warm start off"
            )
        super().__init__(prior, retriever, **settings)

    def upscale_config(self, lora: AdaptConfig | None = None):
        """The upscaler's settings: this pipeline's LoRA and steps, crops as large as the upscaler was built for."""
        from adir_ops.latent.upscale import UpscaleConfig, default_crop_size

        return UpscaleConfig(
            lora=lora or self.adaptation, crop_size=default_crop_size(self.prior), steps=self.sampler.steps
        )

    def sampler_name(self, operator) -> str:
        return "sd-x4-upscaler"

    def tile_count(self, operator) -> int:
        return 1  # the upscaler takes the whole image

    def precision(self, device: torch.device) -> str:
        from adir_ops.latent.stable_diffusion import autocast_dtype

        return precision_name(autocast_dtype(device, self.upscale_config().mixed_precision))

    def adapt(self, images: list[torch.Tensor], generator, callback=None, *, initial=None, config=None) -> Adapter:
        """A fresh LoRA of the upscaler's UNet on `images` ((C, H, W) in [-1, 1]), by `adapt_upscaler`."""
        from adir_ops.latent.upscale import adapt_upscaler

        if initial is not None:
            raise ValueError("the SD x4 upscaler's LoRA is trained fresh: it takes no starting adapter")
        return adapt_upscaler(self.prior, images, self.upscale_config(config), generator, callback=callback)

    def sample(
        self, y: torch.Tensor, operator, generator: torch.Generator, adapter: Adapter | None = None, callback=None
    ) -> torch.Tensor:
        """x4 upscale of y (1, 3, h, w) in [-1, 1], cropped to the operator's image size; `callback` is not called."""
        from adir_ops.latent.upscale import upscale

        x01 = upscale(self.prior, y.add(1).div(2).clamp(0, 1), self.upscale_config(), [generator], adapter=adapter)
        return self._finite01(x01[..., : operator.image_size[0], : operator.image_size[1]])


def pipeline_for(prior, retriever=None, **settings) -> ReconstructionPipeline:
    """The pipeline of `prior`'s family with `retriever` and ReconstructionPipeline's settings (adaptation=, sampler=, ...)."""
    # The SD x4 upscale pipeline (diffusers') has a VAE and the low-res noise scheduler a pixel-space prior has not.
    upscaler = hasattr(prior, "vae") and hasattr(prior, "low_res_scheduler")
    family = ADIRUpscalePipeline if upscaler else ADIRPipeline
    return family(prior, retriever, **settings)

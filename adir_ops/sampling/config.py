"""The sampler's settings, as the job and the pipeline pass them (the schedule's own object, as in diffusers)."""

from __future__ import annotations

from dataclasses import dataclass

from adir_ops.sampling.defaults import DEFAULT_REGION, MIN_REGION
from adir_ops.sampling.samplers import SAMPLERS, default_sampler

AUTO = "auto"


@dataclass(frozen=True)
class SamplerConfig:
    """name: a key of adir_ops.sampling.samplers.SAMPLERS, or 'auto' (the measured default for the operator's task)."""

    name: str = AUTO
    steps: int = 100
    guidance_scale: float | None = None  # eq. 16's s, for the eq16 samplers; None: the sampler's own default
    # Posterior samples per image (beyond the paper): their mean is the distortion-optimal estimate,
    # their per-pixel std where the reconstruction is uncertain. Sample 0 is the single-sample result.
    samples: int = 1
    # Images with a side beyond this many pixels are sampled in blended windows of this side (memory
    # bounded by it, not by the image; adir_ops.sampling.regions). 0: always whole.
    region: int = DEFAULT_REGION

    def __post_init__(self):
        if self.name != AUTO and self.name not in SAMPLERS:
            raise ValueError(f"unknown sampler {self.name!r}; choose 'auto' or one of {', '.join(SAMPLERS)}")
        if self.steps < 1:
            raise ValueError(f"sampler steps must be >= 1; got {self.steps}")
        if isinstance(self.samples, bool) or not isinstance(self.samples, int) or self.samples < 1:
            raise ValueError(f"samples must be an integer >= 1; got {self.samples!r}")
        if self.region and self.region < MIN_REGION:
            raise ValueError(
                f"a sampling region needs a side of at least {MIN_REGION} px (or 0: whole); got {self.region}"
            )

    def resolve(self, task: str) -> str:
        return default_sampler(task) if self.name == AUTO else self.name

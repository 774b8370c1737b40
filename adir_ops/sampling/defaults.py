"""The sampling defaults per task, each chosen by a measurement; torch-free, so the job's config can read them.

DEFAULT_SAMPLER_BY_TASK: bench/sampler.py on the embedded default's held-out images (docs/sampler.md).
DEFAULT_STEPS_BY_TASK: steps of the embedded default prior where fewer than the paper's 100 measured as
good; bench/full_size.py and `adir evaluate` on photographs the team did not train on (docs/full-size.md).
Other priors (and the tasks not listed) keep 100: they were not measured at fewer.
"""

from __future__ import annotations

DEFAULT_SAMPLER_BY_TASK: dict[str, str] = {
    "sr4": "ddnm",
    "sr8": "ddnm",
    "deblur": "ddnm",
    "colorize": "ddnm-neutral-cast",
    "inpaint": "ddnm",
}

PAPER_STEPS = 100
# SR x4 on 8 photographs at 0.4 MP (docs/full-size.md), 50 steps against 100, paired: half the sampling
# time, PSNR +0.04 dB [+0.003, +0.077], ST-LPIPS +0.0041 [-0.0001, +0.0083] (a small perceptual trade);
# 25 steps cost ST-LPIPS +0.010 [+0.000, +0.020]. Inpainting needs its 100 (docs/sampler.md).
DEFAULT_STEPS_BY_TASK: dict[str, int] = {"sr4": 50}
# The --prior kinds (adir_ops.priors.registry) those steps were measured with: the embedded default.
MEASURED_PRIOR_KINDS = ("default", "ffdnet")


def default_steps(task: str, prior_kind: str) -> int:
    """Respaced sampling steps when the user gives none: the measured per-task value for the embedded prior, else 100."""
    if prior_kind in MEASURED_PRIOR_KINDS:
        return DEFAULT_STEPS_BY_TASK.get(task, PAPER_STEPS)
    return PAPER_STEPS


# Side in pixels of the largest window sampled at once (adir_ops.sampling.regions): an image with a side
# beyond it is sampled region by region, so memory stops growing with the image. 2048 keeps DIV2K
# (2040 x 1356) whole; docs/full-size.md has what it costs and saves. 0: always the whole image.
DEFAULT_REGION = 2048
MIN_REGION = 256  # room for the blend's overlap on both sides and a core between

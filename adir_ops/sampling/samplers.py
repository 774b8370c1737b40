"""Reverse diffusion on a respaced DDPM chain: plain sampling and the guided reconstruction samplers.

Three guided samplers share one signature, `(prior, y, operator, *, steps, generator,
callback=None, ...)`, and the registry `SAMPLERS` (`get_sampler(name)`):
- "eq16": `adir_sample`, the paper's eq. 16 as written (gradient step on ||A mu - y_t||^2
  with plain A^T, capped from A's top singular value). Along the weak directions of a
  non-isometric A (bicubic SR, blur) it removes only part of the residual per step.
- "eq16-preconditioned": `adir_sample_preconditioned`, eq. 16 with the step preconditioned by
  (A A^T)^-1, so a full step is the projection of mu onto A x = y_t along every direction;
  for A A^T = c I (colorization, inpainting) it equals eq. 16 at the same step.
- "ddnm": `ddnm_sample`, the range-null-space sampler of Wang et al. 2023 (DDNM, Alg. 1):
  x0-hat is replaced by its projection onto A x = y before the DDPM posterior step; with
  noise (sigma > 0) the projection is onto the ball ||A x - y|| <= sigma sqrt(m) instead
  (the noise-aware variant, our DDNM+; see `ddnm_sample`).
- "ddnm-neutral-cast": DDNM that also keeps x0-hat's global colour cast at the prior mean
  (none); for colorization, whose y says nothing about it.
The last two (and `adir_sample` with `final_projection=True`) end with a data-consistency
step, noise-aware in the same way: no sampler fits a noisy y below its noise floor.
The sampler and steps chosen per task by measurement are in adir_ops.sampling.defaults.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import torch

from adir_ops.rng import Generators, randn_per_image
from adir_ops.sampling.chain import (
    Callback,
    operator_norm,
    posterior,
    prior_schedule,
    report,
    start_chain,
    with_noise,
)
from adir_ops.sampling.defaults import DEFAULT_SAMPLER_BY_TASK

# Largest guided step, as a fraction of the step that solves the consistency term exactly
# along A's top singular direction (2 s Sigma_t ||A^T A|| = 1); steps of 2 or more diverge.
MAX_GUIDANCE_STEP = 1.0


@torch.no_grad()
def adir_sample(
    prior,
    y: torch.Tensor,
    operator,
    *,
    steps: int,
    guidance_scale: float = 1000.0,
    generator: Generators,
    callback: Callback | None = None,
    max_guidance_step: float = MAX_GUIDANCE_STEP,
    final_projection: bool = False,
) -> torch.Tensor:
    """ADIR guided reverse diffusion (Abu-Hussein et al., Alg. 1 with paper eq. 16); returns x_0 in [-1, 1].

    Each step: y_t = sqrt(abar_t) y + sqrt(1 - abar_t) A eps(x_t, t), g = -2 A^T (A mu - y_t),
    x_{t-1} ~ N(mu + s_t Sigma_t g, Sigma_t), with no gradient through the UNet.
    `guidance_scale` is the paper's s. The guided move is a gradient step of size
    2 s Sigma_t ||A^T A|| on ||A x - y_t||^2, which diverges above 2; so the step is capped at
    `max_guidance_step` (default 1: for an operator with A A^T = c I, such as average-pool
    SR, colorization or inpainting, a step of 1 is the exact projection onto A x = y_t).
    Effective s_t = min(s, max_guidance_step / (2 Sigma_t ||A^T A||)); any s is stable, and a
    large s means "as consistent as allowed" (the default 1000 binds at 47 of 50 steps for
    SR x4; s = inf binds at every step).
    The callback dict reports `guidance_step` (s_t Sigma_t per image) and `clamped` (per
    image: whether the cap bound). The last step has Sigma = 0: it neither guides nor adds noise.
    `final_projection` (not in the paper; default off) ends with `data_consistency`.
    """
    if not 0.0 < max_guidance_step < 2.0:
        raise ValueError(f"max_guidance_step must be in (0, 2) (2 and above diverge); got {max_guidance_step}")
    if guidance_scale < 0:
        raise ValueError(f"guidance_scale must be >= 0; got {guidance_scale}")
    y = y.to(prior.device)
    shape = tuple(operator.A_adjoint(y).shape)
    if shape[1] != prior.channels:
        raise ValueError(
            f"operator {getattr(operator, 'name', operator)!r} maps to {shape[1]}-channel images; the prior has {prior.channels}"
        )
    schedule = prior_schedule(prior, steps)
    cap = max_guidance_step / (2.0 * operator_norm(operator, shape, dtype=y.dtype, device=y.device))
    x = _start(prior, schedule, shape, generator, y, operator)
    for i in reversed(range(len(schedule.timesteps))):
        out = posterior(prior, x, i, schedule)
        abar = float(schedule.alphas_cumprod[i])
        y_t = abar**0.5 * y + (1.0 - abar) ** 0.5 * operator.A(out["eps"])
        g = -2.0 * operator.A_adjoint(operator.A(out["mu"]) - y_t)
        # Sigma = 0 (the last step) means no guided move, even for an infinite scale.
        wanted = guidance_scale * out["variance"] if out["variance"] > 0 else 0.0
        step = torch.clamp(cap, max=wanted)
        x_next = out["mu"] + step.view(-1, 1, 1, 1) * g
        x_next = with_noise(x_next, i, out["variance"], generator)
        report(
            callback, schedule, i, x=x, x_next=x_next, y_t=y_t, g=g, guidance_step=step, clamped=cap < wanted, **out
        )
        x = x_next
    return data_consistency(x, y, operator) if final_projection else x


# Alternations of the noise-aware projection and the [-1, 1] clamp in `data_consistency`.
CONSISTENCY_ROUNDS = 30


def data_consistency(x: torch.Tensor, y: torch.Tensor, operator, *, rounds: int = CONSISTENCY_ROUNDS) -> torch.Tensor:
    """The final data-consistency step: alternate projecting onto ||A x - y|| <= sigma sqrt(m) and clamping to [-1, 1].

    Both sets are convex and the clean image lies in both (for a noiseless operator the ball
    is A x = y), so the alternation moves x towards their intersection; it ends with the clamp,
    so the output stays a valid image. m is `operator.measurement_count`: a noisy y is never
    fitted closer than its own noise (the truth's expected residual).
    """
    radius = operator.noise_radius(x.shape[1])
    for _ in range(rounds):
        x = operator.project(x, y, radius).clamp(-1.0, 1.0)
    return x


def _check_guided_inputs(prior, y: torch.Tensor, operator) -> tuple[torch.Tensor, tuple[int, ...]]:
    y = y.to(prior.device)
    shape = tuple(operator.A_adjoint(y).shape)
    if shape[1] != prior.channels:
        raise ValueError(
            f"operator {getattr(operator, 'name', operator)!r} maps to {shape[1]}-channel images; the prior has {prior.channels}"
        )
    return y, shape


def _start(prior, schedule, shape, generator: Generators, y: torch.Tensor, operator) -> torch.Tensor:
    """x at the first step: pure noise, or (a chain cut short) the noised noise-aware plain restoration.

    The restoration is the projection of mid-gray onto ||A x - y|| <= sigma sqrt(m), clamped:
    A^+ y for a noiseless y, damped where the noise would be amplified (blur).
    """
    restoration = None
    if int(schedule.timesteps[-1]) < prior.num_train_timesteps - 1:
        zeros = y.new_zeros(shape)
        restoration = operator.project(zeros, y, operator.noise_radius(shape[1])).clamp(-1.0, 1.0)
    return start_chain(prior, schedule, shape, generator, dtype=y.dtype, device=y.device, start=restoration)


@torch.no_grad()
def adir_sample_preconditioned(
    prior,
    y: torch.Tensor,
    operator,
    *,
    steps: int,
    guidance_scale: float = math.inf,
    generator: Generators,
    callback: Callback | None = None,
    max_guidance_step: float = MAX_GUIDANCE_STEP,
    final_projection: bool = True,
) -> torch.Tensor:
    """Eq. 16 preconditioned by (A A^T)^-1: a full step projects mu onto A x = y_t along every direction; returns x_0 in [-1, 1].

    Each step: y_t as in `adir_sample`, target = the projection of mu onto
    ||A x - y_t|| <= sqrt(abar_t) sigma sqrt(m) (y_t carries y's noise scaled by sqrt(abar_t);
    for a noiseless operator that is A x = y_t, i.e. mu + A^T (A A^T)^-1 (y_t - A mu)),
    x_{t-1} ~ N(mu + f_t (target - mu), Sigma_t) with f_t = min(max_guidance_step,
    2 s Sigma_t ||A A^T||): for A A^T = c I that is eq. 16's step with the same s and cap.
    The default s = inf takes the full projection at every step but the last (Sigma = 0),
    after which `final_projection` applies `data_consistency`. The callback dict reports
    `y_t`, `target` and `guidance_step` (f_t per image).
    """
    if not 0.0 < max_guidance_step < 2.0:
        raise ValueError(
            f"max_guidance_step must be in (0, 2) (2 and above overshoot the projection); got {max_guidance_step}"
        )
    if guidance_scale < 0:
        raise ValueError(f"guidance_scale must be >= 0; got {guidance_scale}")
    y, shape = _check_guided_inputs(prior, y, operator)
    schedule = prior_schedule(prior, steps)
    radius = operator.noise_radius(shape[1])
    top = operator_norm(operator, shape, dtype=y.dtype, device=y.device) if math.isfinite(guidance_scale) else None
    x = _start(prior, schedule, shape, generator, y, operator)
    for i in reversed(range(len(schedule.timesteps))):
        out = posterior(prior, x, i, schedule)
        abar = float(schedule.alphas_cumprod[i])
        y_t = abar**0.5 * y + (1.0 - abar) ** 0.5 * operator.A(out["eps"])
        target = operator.project(out["mu"], y_t, abar**0.5 * radius)
        if out["variance"] == 0:
            step = torch.zeros(shape[0], dtype=y.dtype, device=y.device)
        elif top is None:
            step = torch.full((shape[0],), max_guidance_step, dtype=y.dtype, device=y.device)
        else:
            step = torch.clamp(2.0 * guidance_scale * out["variance"] * top, max=max_guidance_step)
        x_next = out["mu"] + step.view(-1, 1, 1, 1) * (target - out["mu"])
        x_next = with_noise(x_next, i, out["variance"], generator)
        report(callback, schedule, i, x=x, x_next=x_next, y_t=y_t, target=target, guidance_step=step, **out)
        x = x_next
    return data_consistency(x, y, operator) if final_projection else x


def _mean_chroma(x: torch.Tensor) -> torch.Tensor:
    """(B, C, 1, 1): the image mean of x minus its gray (channel mean), per channel."""
    mean = x.mean(dim=(-2, -1), keepdim=True)
    return mean - mean.mean(dim=1, keepdim=True)


def _check_cast_is_unmeasured(operator, shape: tuple[int, ...], y: torch.Tensor) -> None:
    """Refuse neutral_cast where A sees a global colour shift (it would undo the data consistency)."""
    eye = torch.eye(shape[1], dtype=y.dtype, device=y.device)
    shifts = (eye - eye.mean(dim=0, keepdim=True))[:, :, None, None].expand(shape[1], shape[1], *shape[-2:])
    if shape[1] < 2 or float(operator.A(shifts.contiguous()).abs().max()) > 1e-6:
        raise ValueError(
            f"neutral_cast needs an operator blind to a global colour shift (colorize); "
            f"{getattr(operator, 'name', operator)!r} measures it"
        )


@torch.no_grad()
def ddnm_sample(
    prior,
    y: torch.Tensor,
    operator,
    *,
    steps: int,
    generator: Generators,
    callback: Callback | None = None,
    eta: float = 1.0,
    neutral_cast: bool = False,
    final_projection: bool = True,
) -> torch.Tensor:
    """Range-null-space sampling (Wang et al. 2023, DDNM Alg. 1; noise-aware for sigma > 0); returns x_0 in [-1, 1].

    Each step: x0|t = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t), clipped to [-1, 1];
    x0-hat = A^+ y + (I - A^+ A) x0|t = x0|t + A^T (A A^T)^+ (y - A x0|t) (range from y,
    null space from the prior); x_{t-1} ~ the DDPM posterior q(x_{t-1} | x_t, x0-hat), as in
    `sample`. No gradient through the UNet; same cost per step as eq. 16.
    Noise (operator.noise_sigma > 0): DDNM+ scales the range correction down where it would
    inject the measurement noise; here that scaling is the projection of x0|t onto the ball
    ||A x - y|| <= sigma sqrt(m) (Tikhonov, damping by the discrepancy principle:
    `Operator.project`), so x0-hat is never fitted below the noise floor and the weak
    directions of A (blur), where the noise dominates, are corrected least. DDNM+'s
    time-travel is not used.
    `eta`: the step from x_t to x_{t-1} given x0-hat is DDIM's (Song et al. 2021, eq. 12) with
    eps-hat = (x_t - sqrt(abar_t) x0-hat) / sqrt(1 - abar_t), the noise implied by the
    corrected x0-hat: eta = 1 is exactly the DDPM posterior above, eta = 0 deterministic DDIM
    after x_T (DDNM's own code uses 0.85).
    `neutral_cast` (for colorization): after each correction also set x0-hat's image-mean
    chroma (per-channel mean minus the gray mean) to 0, the prior mean. A null-space move
    only where A cannot see a global colour shift (checked: colorization yes, SR no); the
    prior's own global colour is no better than a guess (docs/sampler.md), local colour stays.
    `final_projection` applies `data_consistency` (for the noiseless
    case the chain already ends on A x = y; it then only restores the [-1, 1] range).
    The callback dict reports `x0_hat` (the prior's, clipped) and `x0_consistent` (corrected).
    """
    if not 0.0 <= eta <= 1.0:
        raise ValueError(f"eta must be in [0, 1] (0: deterministic DDIM, 1: DDPM); got {eta}")
    y, shape = _check_guided_inputs(prior, y, operator)
    if neutral_cast:
        _check_cast_is_unmeasured(operator, shape, y)
    schedule = prior_schedule(prior, steps)
    radius = operator.noise_radius(shape[1])
    x = _start(prior, schedule, shape, generator, y, operator)
    for i in reversed(range(len(schedule.timesteps))):
        out = posterior(prior, x, i, schedule)
        x0 = operator.project(out["x0_hat"], y, radius)
        if neutral_cast:
            x0 = x0 - _mean_chroma(x0)
        if eta == 1.0:  # the DDPM posterior, coefficient for coefficient as in `sample`
            mu = float(schedule.posterior_mean_coef1[i]) * x0 + float(schedule.posterior_mean_coef2[i]) * x
            std = out["variance"] ** 0.5
        else:
            abar, abar_prev = float(schedule.alphas_cumprod[i]), float(schedule.alphas_cumprod_prev[i])
            std = eta * out["variance"] ** 0.5
            eps_hat = (x - abar**0.5 * x0) / (1.0 - abar) ** 0.5
            mu = abar_prev**0.5 * x0 + max(1.0 - abar_prev - std**2, 0.0) ** 0.5 * eps_hat
        x_next = mu
        if i > 0 and std > 0:
            x_next = x_next + std * randn_per_image(shape, generator, dtype=x.dtype, device=x.device)
        if callback is not None:
            callback(
                {"i": len(schedule.timesteps) - 1 - i, "x": x, "x_next": x_next, **out, "mu": mu, "x0_consistent": x0}
            )
        x = x_next
    return data_consistency(x, y, operator) if final_projection else x.clamp(-1.0, 1.0)


# name -> sampler; all take (prior, y, operator, *, steps, generator, callback=None). The eq16
# pair also takes guidance_scale and max_guidance_step; all take final_projection.
SAMPLERS: dict[str, Callable[..., torch.Tensor]] = {
    "eq16": adir_sample,
    "eq16-preconditioned": adir_sample_preconditioned,
    "ddnm": ddnm_sample,
    # Colorization only (it refuses operators that measure the global colour).
    "ddnm-neutral-cast": functools.partial(ddnm_sample, neutral_cast=True),
}

# The samplers that take guidance_scale (eq. 16's s); the others have no such scale and would ignore it.
GUIDED_SAMPLERS = ("eq16", "eq16-preconditioned")
# Samplers that fit only some tasks: a neutral cast leaves the global colour free, which only colorize does not measure.
SAMPLER_TASKS: dict[str, tuple[str, ...]] = {"ddnm-neutral-cast": ("colorize",)}


def get_sampler(name: str) -> Callable[..., torch.Tensor]:
    """The sampler registered as `name` (a key of SAMPLERS)."""
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; choose one of {', '.join(SAMPLERS)}")
    return SAMPLERS[name]


def default_sampler(task: str) -> str:
    """The measured default sampler's name for a task of adir_ops.physics.operators.OPERATORS."""
    if task not in DEFAULT_SAMPLER_BY_TASK:
        raise ValueError(f"no default sampler for task {task!r}; tasks: {', '.join(DEFAULT_SAMPLER_BY_TASK)}")
    return DEFAULT_SAMPLER_BY_TASK[task]

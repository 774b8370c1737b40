"""The reverse DDPM chain on respaced timesteps (Guided Diffusion's SpacedDiffusion), and plain unguided sampling.

What every guided sampler of adir_ops.sampling.samplers steps along: the respaced schedule, the
posterior p(x_{t-1} | x_t) from the prior's eps, and ||A^T A|| by power iteration.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from adir_ops.rng import Generators, randn_per_image

Callback = Callable[[dict[str, Any]], None]
POWER_ITERATIONS = 30


@dataclass(frozen=True)
class RespacedSchedule:
    """The DDPM chain restricted to `timesteps` (ascending train steps), all in float64.

    Index i of every field is the step x_{timesteps[i]} -> x_{timesteps[i-1]} (x_0-hat at i = 0).
    """

    timesteps: torch.Tensor
    alphas_cumprod: torch.Tensor
    alphas_cumprod_prev: torch.Tensor
    betas: torch.Tensor
    posterior_variance: torch.Tensor
    posterior_mean_coef1: torch.Tensor  # multiplies x0-hat
    posterior_mean_coef2: torch.Tensor  # multiplies x_t


def respace(alphas_cumprod: torch.Tensor, steps: int, *, valid: int | None = None) -> RespacedSchedule:
    """Guided Diffusion's `space_timesteps` + `SpacedDiffusion`: keep `steps` evenly spaced train steps.

    `valid`: only train steps 0 .. valid - 1 (default: all) are spaced over, for a prior whose
    eps holds on part of the chain (`DenoiserPrior.valid_timesteps`); the chain then starts at
    step valid - 1 from `start_chain`'s noised image rather than from pure noise.
    """
    num_train = int(alphas_cumprod.numel())
    valid = num_train if valid is None else int(valid)
    if not 1 <= valid <= num_train:
        raise ValueError(f"valid must be between 1 and the prior's {num_train} train timesteps; got {valid}")
    if not 1 <= steps <= valid:
        raise ValueError(f"steps must be between 1 and the prior's {valid} usable train timesteps; got {steps}")
    if steps == 1:
        kept = [valid - 1]
    else:
        kept = sorted({round(i * (valid - 1) / (steps - 1)) for i in range(steps)})
    timesteps = torch.tensor(kept, dtype=torch.long)
    abar = alphas_cumprod.detach().to("cpu", torch.float64)[timesteps]
    abar_prev = torch.cat([abar.new_ones(1), abar[:-1]])
    betas = 1.0 - abar / abar_prev
    return RespacedSchedule(
        timesteps=timesteps,
        alphas_cumprod=abar,
        alphas_cumprod_prev=abar_prev,
        betas=betas,
        posterior_variance=betas * (1.0 - abar_prev) / (1.0 - abar),
        posterior_mean_coef1=betas * abar_prev.sqrt() / (1.0 - abar),
        posterior_mean_coef2=(1.0 - abar_prev) * (1.0 - betas).sqrt() / (1.0 - abar),
    )


def prior_schedule(prior, steps: int) -> RespacedSchedule:
    """The respaced chain a sampler walks for `prior`: over every train step, or over its valid ones."""
    return respace(prior.alphas_cumprod, steps, valid=getattr(prior, "valid_timesteps", None))


def start_chain(
    prior,
    schedule: RespacedSchedule,
    shape: tuple[int, ...],
    generator: Generators,
    *,
    dtype: torch.dtype,
    device,
    start: torch.Tensor | None = None,
) -> torch.Tensor:
    """x at the chain's first step: pure noise when it starts at the prior's last train step (DDPM).

    A chain cut short (a denoiser's valid range) starts from `start` (the plain restoration; 0,
    mid-gray, if None) noised to that step, x = sqrt(abar) start + sqrt(1 - abar) z, as in
    "come closer, diffuse faster" (Chung et al. 2022). z is drawn first, from each image's
    generator, in both cases.
    """
    noise = randn_per_image(shape, generator, dtype=dtype, device=device)
    if int(schedule.timesteps[-1]) == prior.num_train_timesteps - 1:
        return noise
    abar = float(schedule.alphas_cumprod[-1])
    start = torch.zeros_like(noise) if start is None else start.to(dtype=dtype, device=device).expand(shape)
    return abar**0.5 * start + (1.0 - abar) ** 0.5 * noise


def posterior(prior, x: torch.Tensor, i: int, schedule: RespacedSchedule) -> dict[str, torch.Tensor]:
    """Mean and variance of p(x_{t-1} | x_t) (DDPM eq. 7 with x0-hat of paper eq. 13 clipped to [-1, 1])."""
    t = int(schedule.timesteps[i])
    abar = float(schedule.alphas_cumprod[i])
    eps = prior.eps(x, torch.full((x.shape[0],), t, dtype=torch.long, device=x.device))
    x0_hat = ((x - (1.0 - abar) ** 0.5 * eps) / abar**0.5).clamp(-1.0, 1.0)
    mu = float(schedule.posterior_mean_coef1[i]) * x0_hat + float(schedule.posterior_mean_coef2[i]) * x
    return {"t": t, "eps": eps, "x0_hat": x0_hat, "mu": mu, "variance": float(schedule.posterior_variance[i])}


def operator_norm(operator, shape: tuple[int, ...], *, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """||A^T A|| per image (shape (B,)) by power iteration from a fixed start vector.

    The start is drawn once from a CPU generator seeded 0 and shared by every image, so the
    estimate is the same on every run and for an image alone or in any batch. It is a lower
    bound (how far below, per operator: docs/sampler.md, "The samplers"), so a capped step may
    exceed `max_guidance_step` by as much; the default 1 leaves a factor 2 to divergence.
    """
    start = torch.randn((1, *shape[1:]), generator=torch.Generator("cpu").manual_seed(0), dtype=dtype)
    v = start.to(device).expand(shape).contiguous()
    norm = torch.zeros(shape[0], dtype=dtype, device=device)
    for _ in range(POWER_ITERATIONS):
        v = v / v.flatten(1).norm(dim=1).clamp_min(torch.finfo(dtype).tiny).view(-1, *[1] * (v.ndim - 1))
        w = operator.A_adjoint(operator.A(v))
        norm = w.flatten(1).norm(dim=1)
        v = w
    return norm


@torch.no_grad()
def sample(
    prior,
    shape,
    *,
    steps: int,
    generator: Generators,
    callback: Callback | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Ancestral DDPM sampling (Ho et al. 2020, Alg. 2) on `steps` respaced steps; returns x_0 in [-1, 1].

    `generator`: one torch.Generator per image (a single one only for a batch of one);
    x_T and every step's noise of image i come from generator i alone. `dtype` is that of
    the chain (the UNet runs in its own dtype).
    """
    shape = tuple(shape)
    if len(shape) != 4 or shape[1] != prior.channels:
        raise ValueError(f"sample needs shape (B, {prior.channels}, H, W) for this prior; got {shape}")
    schedule = prior_schedule(prior, steps)
    x = start_chain(prior, schedule, shape, generator, dtype=dtype, device=prior.device)
    for i in reversed(range(len(schedule.timesteps))):
        out = posterior(prior, x, i, schedule)
        x_next = with_noise(out["mu"], i, out["variance"], generator)
        report(callback, schedule, i, x=x, x_next=x_next, **out)
        x = x_next
    return x


def with_noise(x_next: torch.Tensor, i: int, variance: float, generator: Generators) -> torch.Tensor:
    """x_{t-1} = mean + sqrt(Sigma_t) z with z from each image's own generator; the last step (i = 0) adds none."""
    if i == 0:
        return x_next
    return x_next + variance**0.5 * randn_per_image(
        tuple(x_next.shape), generator, dtype=x_next.dtype, device=x_next.device
    )


def report(callback: Callback | None, schedule: RespacedSchedule, i: int, **fields: Any) -> None:
    """One step's state to a sampler callback: "i" counts steps from 0 (the first, noisiest) up."""
    if callback is not None:
        callback({"i": len(schedule.timesteps) - 1 - i, **fields})

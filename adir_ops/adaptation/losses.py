"""The denoising loss a pixel-space prior is trained with (paper eq. 17) and LoRA-adapted with (eq. 18)."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

__all__ = ["eps_mse_loss"]


def eps_mse_loss(
    eps: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    x0: torch.Tensor,
    t: int | torch.Tensor,
    noise: torch.Tensor,
    alphas_cumprod: torch.Tensor,
    *,
    per_image: bool = False,
) -> torch.Tensor:
    """DDPM's simple loss (Ho et al. eq. 14): noise x0 to x_t at timestep t, MSE of `eps(x_t, t)` to the noise.

    `t` is one timestep shared by the batch (an int: the LoRA adaptation) or one per image
    (a (B,) LongTensor indexing `alphas_cumprod`: the prior's own training). `eps` is the
    prior's noise prediction, called with a (B,) LongTensor of timesteps. `per_image`: the
    (B,) per-image means instead of their mean (batched adaptation sums one loss per adapter).
    """
    if isinstance(t, torch.Tensor):
        abar = alphas_cumprod[t].view(-1, 1, 1, 1)
        if per_image:
            # Batched adaptation: coefficients rounded to x0's dtype, as a shared step's Python floats
            # are below, so an adapter trained in a batch equals the one trained alone.
            x_t = abar.sqrt().to(x0.dtype) * x0 + (1.0 - abar).sqrt().to(x0.dtype) * noise
        else:
            x_t = abar.sqrt() * x0 + (1.0 - abar).sqrt() * noise
        timesteps = t
    else:
        # Python floats from the schedule: a shared timestep needs no tensor on x0's device,
        # so a step does not wait on a host-to-device copy. The schedule may be float64.
        abar = float(alphas_cumprod[t])
        x_t = math.sqrt(abar) * x0 + math.sqrt(1.0 - abar) * noise
        timesteps = torch.full((x0.shape[0],), int(t), device=x0.device, dtype=torch.long)
    # The MSE in fp32 even when the prior predicts in 16 bits (its noise is fp32).
    if per_image:
        return (eps(x_t, timesteps).float() - noise).square().flatten(1).mean(1)
    return F.mse_loss(eps(x_t, timesteps).float(), noise)

"""Diffusion priors: a noise-predicting UNet plus its DDPM noise schedule, images in [-1, 1]."""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn


def linear_betas(num_train_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    """DDPM's linear schedule, rescaled to T steps as Guided Diffusion does (float64)."""
    scale = 1000.0 / num_train_timesteps
    return torch.linspace(scale * beta_start, scale * beta_end, num_train_timesteps, dtype=torch.float64)


class DiffusionPrior(nn.Module):
    """eps_theta(x_t, t) and the schedule it was trained with.

    `unet` is a diffusers `UNet2DModel` (the default and the tests) or a Guided Diffusion
    UNet; `eps()` hides the difference, including the learned-variance channels of the
    latter (only the first `channels` outputs are the noise prediction). The schedule is
    kept in float64 because respaced posterior coefficients lose precision in float32
    near t = 0.
    """

    def __init__(
        self,
        unet: nn.Module,
        betas: torch.Tensor,
        *,
        resolution: int,
        channels: int = 3,
        kind: str = "diffusers",
        config: dict[str, Any] | None = None,
    ):
        super().__init__()
        if kind not in ("diffusers", "guided-diffusion"):
            raise ValueError(f"unknown prior kind {kind!r}; expected 'diffusers' or 'guided-diffusion'")
        self.unet = unet
        self.kind = kind
        self.resolution = int(resolution)
        self.channels = int(channels)
        betas = torch.as_tensor(betas, dtype=torch.float64)
        self.register_buffer("betas", betas, persistent=False)
        self.register_buffer("alphas_cumprod", torch.cumprod(1.0 - betas, dim=0), persistent=False)
        self.config = {
            "kind": kind,
            "resolution": self.resolution,
            "channels": self.channels,
            "num_train_timesteps": int(betas.numel()),
            **(config or {}),
        }

    @property
    def num_train_timesteps(self) -> int:
        return int(self.betas.numel())

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.unet.parameters()).dtype

    def posterior_variance(self) -> torch.Tensor:
        """beta_tilde_t = (1 - abar_{t-1}) / (1 - abar_t) * beta_t of the full (unrespaced) chain."""
        abar_prev = torch.cat([self.alphas_cumprod.new_ones(1), self.alphas_cumprod[:-1]])
        return (1.0 - abar_prev) / (1.0 - self.alphas_cumprod) * self.betas

    def eps(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Predicted noise for x_t at integer train timesteps t (shape (B,) or scalar)."""
        t = torch.as_tensor(t, device=x.device)
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        x_in = x.to(self.dtype)
        if self.kind == "diffusers":
            out = self.unet(x_in, t).sample
        else:
            out = self.unet(x_in, t)
        # Guided Diffusion predicts [eps, variance interpolation]; we sample with the
        # fixed posterior variance (paper: the variance head brought no benefit).
        return out[:, : self.channels].to(x.dtype)

    # ---------------------------------------------------------------- builders
    @classmethod
    def tiny(cls, resolution: int = 16, channels: int = 3, num_train_timesteps: int = 1000, seed: int = 0) -> "DiffusionPrior":
        """Random-weight diffusers UNet2DModel of a few thousand parameters, for tests.

        Same classes as a real prior, so everything that runs on it runs on a real one.
        """
        from diffusers import UNet2DModel

        torch.manual_seed(seed)  # weight init only; sampling never touches the global RNG
        unet = UNet2DModel(
            sample_size=resolution,
            in_channels=channels,
            out_channels=channels,
            layers_per_block=1,
            block_out_channels=(8, 16),
            down_block_types=("DownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "UpBlock2D"),
            norm_num_groups=4,
        )
        return cls(
            unet,
            linear_betas(num_train_timesteps),
            resolution=resolution,
            channels=channels,
            config={"source": "tiny", "seed": seed},
        )

    @classmethod
    def from_diffusers(cls, path_or_id: str, *, subfolder: str | None = None) -> "DiffusionPrior":
        """A diffusers UNet2DModel directory (or hub id) with its scheduler config beside it.

        Accepts either a pipeline layout (`unet/`, `scheduler/`) or a bare model folder
        holding `config.json` + weights and, optionally, `scheduler_config.json`.
        """
        from diffusers import DDPMScheduler, UNet2DModel

        is_local = os.path.isdir(path_or_id)
        if is_local and subfolder is None and os.path.isdir(os.path.join(path_or_id, "unet")):
            subfolder = "unet"
        try:
            unet = UNet2DModel.from_pretrained(path_or_id, subfolder=subfolder)
        except (OSError, ValueError) as err:
            raise FileNotFoundError(
                f"could not load a diffusers UNet2DModel from {path_or_id!r}"
                f"{' (subfolder ' + subfolder + ')' if subfolder else ''}: {err}. "
                "Pass a local folder holding config.json + diffusion_pytorch_model.safetensors "
                "(e.g. written by DiffusionPrior.save_pretrained), or a hub id on a machine that can reach the hub."
            ) from err
        sched_dir = os.path.join(path_or_id, "scheduler") if is_local else None
        try:
            if sched_dir and os.path.isdir(sched_dir):
                scheduler = DDPMScheduler.from_pretrained(sched_dir)
            elif is_local and os.path.isfile(os.path.join(path_or_id, "scheduler_config.json")):
                scheduler = DDPMScheduler.from_pretrained(path_or_id)
            elif is_local:
                scheduler = DDPMScheduler(num_train_timesteps=1000)  # diffusers' own DDPM default
            else:
                scheduler = DDPMScheduler.from_pretrained(path_or_id, subfolder="scheduler")
        except (OSError, ValueError) as err:
            raise FileNotFoundError(f"could not load the DDPM scheduler config of {path_or_id!r}: {err}") from err
        cfg = unet.config
        return cls(
            unet,
            scheduler.betas.to(torch.float64),
            resolution=int(cfg.sample_size if isinstance(cfg.sample_size, int) else cfg.sample_size[0]),
            channels=int(cfg.in_channels),
            config={"source": str(path_or_id)},
        )

    def save_pretrained(self, directory: str) -> None:
        """Write the UNet (safetensors) and its scheduler config, loadable by `from_diffusers`."""
        from diffusers import DDPMScheduler

        if self.kind != "diffusers":
            raise ValueError(f"save_pretrained writes diffusers priors; this prior is {self.kind!r}")
        self.unet.save_pretrained(os.path.join(directory, "unet"))
        DDPMScheduler(
            num_train_timesteps=self.num_train_timesteps, trained_betas=self.betas.tolist()
        ).save_pretrained(os.path.join(directory, "scheduler"))

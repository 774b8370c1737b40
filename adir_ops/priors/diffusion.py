"""DiffusionPrior: a noise-predicting UNet plus its DDPM noise schedule, images in [-1, 1], and its loaders."""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

from adir_ops.priors.guided_diffusion import GUIDED_DIFFUSION_256_UNCOND, guided_diffusion_unet
from adir_ops.priors.weights import UNET64_DIR


def linear_betas(num_train_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    """DDPM's linear schedule, rescaled to T steps as Guided Diffusion does (float64)."""
    scale = 1000.0 / num_train_timesteps
    return torch.linspace(scale * beta_start, scale * beta_end, num_train_timesteps, dtype=torch.float64)


# What a loaded prior's `kind` may be: the network it wraps (not a --prior spec's kind: those are
# adir_ops.priors.registry.PRIORS). "denoiser": adir_ops.priors.denoiser.DenoiserPrior, a Gaussian denoiser read as a prior.
NETWORK_KINDS = ("diffusers", "guided-diffusion", "denoiser")


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
        if kind not in NETWORK_KINDS:
            raise ValueError(f"unknown prior kind {kind!r}; expected one of {NETWORK_KINDS}")
        self.unet = unet
        self.kind = kind
        self.resolution = int(resolution)
        self.channels = int(channels)
        # 16-bit dtype for the UNet's forward (torch.autocast), or None for full precision.
        # Workers set bfloat16 on CUDA; CPU runs and tests keep None (bit-reproducible).
        self.autocast_dtype: torch.dtype | None = None
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

    # Whether eps() takes any image size as it is (no tiles): a UNet is trained at one size.
    fully_convolutional = False

    @property
    def num_train_timesteps(self) -> int:
        return int(self.betas.numel())

    @property
    def valid_timesteps(self) -> int:
        """How many train steps (0 .. n - 1) eps() is valid for: all of them for a diffusion-trained UNet."""
        return self.num_train_timesteps

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
        # Only the UNet runs in 16 bits: the guidance (A, A^T, the posterior) stays in x's
        # dtype, and LoRA weights stay fp32 masters under autocast.
        with torch.autocast(
            x.device.type, dtype=self.autocast_dtype or torch.bfloat16, enabled=self.autocast_dtype is not None
        ):
            if self.kind == "diffusers":
                out = self.unet(x_in, t).sample
            else:
                # DiffUNet's default reads t as a noise level and returns a denoised image;
                # "timestep" is OpenAI's own convention (integer t in, eps and variance out).
                out = self.unet(x_in, t, type_t="timestep")
        # Guided Diffusion predicts [eps, variance interpolation]; we sample with the
        # fixed posterior variance (paper: the variance head brought no benefit).
        return out[:, : self.channels].to(x.dtype)

    def denoising_loss(
        self, x0: torch.Tensor, t: int | torch.Tensor, noise: torch.Tensor, *, per_image: bool = False
    ) -> torch.Tensor:
        """The loss this prior is trained and LoRA-adapted with (paper eqs. 17-18): DDPM's eps MSE.

        `per_image`: the (B,) per-image means instead of one mean.
        """
        from adir_ops.adaptation.losses import eps_mse_loss

        # The float64 schedule on the CPU: a shared timestep's coefficients are read as Python floats.
        return eps_mse_loss(self.eps, x0, t, noise, self.alphas_cumprod.detach().cpu(), per_image=per_image)

    # ---------------------------------------------------------------- builders
    @classmethod
    def tiny(
        cls, resolution: int = 16, channels: int = 3, num_train_timesteps: int = 1000, seed: int = 0
    ) -> DiffusionPrior:
        """Random-weight diffusers UNet2DModel of about 11k parameters (diffusers' fast-test size), for tests.

        Same classes as a real prior, so everything that runs on it runs on a real one.
        """
        from diffusers import UNet2DModel

        torch.manual_seed(seed)  # weight init only; sampling never touches the global RNG
        unet = UNet2DModel(
            sample_size=resolution,
            in_channels=channels,
            out_channels=channels,
            layers_per_block=1,
            block_out_channels=(4, 8),
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
    def unet64(cls) -> DiffusionPrior:
        """The committed 64 px DDPM UNet (UNET64_DIR, `--prior unet64`): trained here, offline, in the wheel."""
        if not os.path.isfile(os.path.join(UNET64_DIR, "unet", "config.json")):
            raise FileNotFoundError(f"the committed unet64 prior is missing from {UNET64_DIR}; reinstall adir")
        prior = cls.from_diffusers(UNET64_DIR)
        prior.config = {**prior.config, "source": "unet64", "path": UNET64_DIR}
        return prior

    @classmethod
    def from_diffusers(cls, path_or_id: str, *, subfolder: str | None = None) -> DiffusionPrior:
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

    @classmethod
    def from_guided_diffusion(
        cls, path: str, *, num_train_timesteps: int = 1000, **architecture: Any
    ) -> DiffusionPrior:
        """OpenAI's Guided Diffusion checkpoint (default: 256x256_diffusion_uncond.pt) on its linear schedule.

        `architecture` overrides `GUIDED_DIFFUSION_256_UNCOND` (see `guided_diffusion_unet`).
        The file is read with `torch.load(weights_only=True)`: a plain state dict, no pickled code.
        """
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"Guided Diffusion checkpoint {path!r} not found. Download 256x256_diffusion_uncond.pt "
                "(openai/guided-diffusion README: https://openaipublic.blob.core.windows.net/diffusion/"
                "jul-2021/256x256_diffusion_uncond.pt) and pass its local path."
            )
        unknown = set(architecture) - set(GUIDED_DIFFUSION_256_UNCOND)
        if unknown:
            raise TypeError(
                f"unknown Guided Diffusion architecture argument(s) {sorted(unknown)}; known: {sorted(GUIDED_DIFFUSION_256_UNCOND)}"
            )
        arch = {**GUIDED_DIFFUSION_256_UNCOND, **architecture}
        state = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(state, dict):
            raise TypeError(f"{path!r} holds a {type(state).__name__}, not a state dict of a Guided Diffusion UNet")
        unet = guided_diffusion_unet(**arch)
        expected = {k: tuple(v.shape) for k, v in unet.state_dict().items()}
        missing = sorted(set(expected) - set(state))
        unexpected = sorted(set(state) - set(expected))
        reshaped = sorted(k for k in set(expected) & set(state) if tuple(state[k].shape) != expected[k])
        if missing or unexpected or reshaped:
            raise ValueError(
                f"{path!r} does not match the Guided Diffusion UNet {arch}: {len(missing)} missing key(s) "
                f"{missing[:3]}, {len(unexpected)} unexpected {unexpected[:3]}, {len(reshaped)} of another shape "
                f"{reshaped[:3]}. Pass 256x256_diffusion_uncond.pt (not the class-conditional 256x256_diffusion.pt), "
                "or the architecture arguments it was trained with."
            )
        unet.load_state_dict(state, strict=True)
        return cls(
            unet,
            linear_betas(num_train_timesteps),
            resolution=arch["image_size"],
            channels=arch["in_channels"],
            kind="guided-diffusion",
            config={
                "source": str(path),
                "architecture": {k: list(v) if isinstance(v, tuple) else v for k, v in arch.items()},
            },
        )

    def save_pretrained(self, directory: str) -> None:
        """Write the UNet (safetensors) and its scheduler config, loadable by `from_diffusers`."""
        from diffusers import DDPMScheduler

        if self.kind != "diffusers":
            raise ValueError(f"save_pretrained writes diffusers priors; this prior is {self.kind!r}")
        self.unet.save_pretrained(os.path.join(directory, "unet"))
        DDPMScheduler(num_train_timesteps=self.num_train_timesteps, trained_betas=self.betas.tolist()).save_pretrained(
            os.path.join(directory, "scheduler")
        )

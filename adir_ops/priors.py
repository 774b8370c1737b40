"""Diffusion priors: a noise-predicting UNet plus its DDPM noise schedule, images in [-1, 1]."""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

from adir_ops.weights import DEFAULT_PRIOR_DIR


def linear_betas(num_train_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    """DDPM's linear schedule, rescaled to T steps as Guided Diffusion does (float64)."""
    scale = 1000.0 / num_train_timesteps
    return torch.linspace(scale * beta_start, scale * beta_end, num_train_timesteps, dtype=torch.float64)


# OpenAI's 256x256_diffusion_uncond.pt (the paper's Guided Diffusion prior): the flags of its
# README, which are also deepinv's DiffUNet(large_model=True).
GUIDED_DIFFUSION_256_UNCOND: dict[str, Any] = {
    "image_size": 256,
    "in_channels": 3,
    "model_channels": 256,
    "num_res_blocks": 2,
    "channel_mult": (1, 1, 2, 2, 4, 4),
    "attention_resolutions": (32, 16, 8),
    "num_head_channels": 64,
    "learn_sigma": True,
}


def guided_diffusion_unet(
    *,
    image_size: int = 256,
    in_channels: int = 3,
    model_channels: int = 256,
    num_res_blocks: int = 2,
    channel_mult: tuple[int, ...] = (1, 1, 2, 2, 4, 4),
    attention_resolutions: tuple[int, ...] = (32, 16, 8),
    num_head_channels: int = 64,
    learn_sigma: bool = True,
) -> nn.Module:
    """deepinv's `DiffUNet` (OpenAI's ADM UNet) with its architecture as arguments.

    DiffUNet's constructor hard-codes two sizes (128 or 256 channels); this builds an
    instance of the same class from the same blocks in the same order, so the defaults take
    OpenAI's 256x256_diffusion_uncond state dict and tests can build a small one.
    Dropout is 0, as in OpenAI's sampling flags. `attention_resolutions` are feature-map
    sizes (OpenAI's convention); GroupNorm32 needs multiples of 32 channels.
    """
    from deepinv.models.base import Denoiser
    from deepinv.models.diffunet import (
        AttentionBlock,
        DiffUNet,
        ResBlock,
        TimestepEmbedSequential,
        normalization,
        zero_module,
    )

    if model_channels % 32:
        raise ValueError(f"model_channels must be a multiple of 32 (GroupNorm32 uses 32 groups); got {model_channels}")
    net = DiffUNet.__new__(DiffUNet)
    Denoiser.__init__(net)
    out_channels = 2 * in_channels if learn_sigma else in_channels
    attention_ds = tuple(image_size // int(r) for r in attention_resolutions)
    # The attributes DiffUNet's forward reads.
    net.img_size, net.in_channels, net.out_channels = image_size, in_channels, out_channels
    net.model_channels, net.num_res_blocks, net.channel_mult = model_channels, num_res_blocks, tuple(channel_mult)
    net.attention_resolutions, net.dropout, net.conv_resample = attention_ds, 0.0, True
    net.num_classes, net.use_checkpoint, net.dtype = None, False, torch.float32
    net.num_heads, net.num_head_channels, net.num_heads_upsample = 4, num_head_channels, 4
    emb_dim = model_channels * 4
    net.time_embed = nn.Sequential(nn.Linear(model_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))

    def res(ch_in: int, ch_out: int, **updown: bool) -> nn.Module:
        return ResBlock(ch_in, emb_dim, 0.0, out_channels=ch_out, dims=2, use_scale_shift_norm=True, **updown)

    def attn(ch: int) -> nn.Module:
        return AttentionBlock(ch, num_heads=4, num_head_channels=num_head_channels)

    ch = model_channels * channel_mult[0]
    net.input_blocks = nn.ModuleList([TimestepEmbedSequential(nn.Conv2d(in_channels, ch, 3, padding=1))])
    skip_channels, ds = [ch], 1
    for level, mult in enumerate(channel_mult):
        for _ in range(num_res_blocks):
            layers = [res(ch, model_channels * mult)]
            ch = model_channels * mult
            if ds in attention_ds:
                layers.append(attn(ch))
            net.input_blocks.append(TimestepEmbedSequential(*layers))
            skip_channels.append(ch)
        if level != len(channel_mult) - 1:
            net.input_blocks.append(TimestepEmbedSequential(res(ch, ch, down=True)))
            skip_channels.append(ch)
            ds *= 2
    net.middle_block = TimestepEmbedSequential(res(ch, ch), attn(ch), res(ch, ch))
    net.output_blocks = nn.ModuleList([])
    for level, mult in list(enumerate(channel_mult))[::-1]:
        for i in range(num_res_blocks + 1):
            layers = [res(ch + skip_channels.pop(), model_channels * mult)]
            ch = model_channels * mult
            if ds in attention_ds:
                layers.append(attn(ch))
            if level and i == num_res_blocks:
                layers.append(res(ch, ch, up=True))
                ds //= 2
            net.output_blocks.append(TimestepEmbedSequential(*layers))
    net.out = nn.Sequential(normalization(ch), nn.SiLU(), zero_module(nn.Conv2d(model_channels * channel_mult[0], out_channels, 3, padding=1)))
    # Used only by DiffUNet's noise-level mode; non-persistent so OpenAI checkpoints load strictly.
    sqrt_1m_abar, sqrt_abar = net.get_alpha_prod()[-2:]
    net.register_buffer("sqrt_1m_alphas_cumprod", sqrt_1m_abar, persistent=False)
    net.register_buffer("sqrt_alphas_cumprod", sqrt_abar, persistent=False)
    return net.eval()


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
        # Only the UNet runs in 16 bits: the guidance (A, A^T, the posterior) stays in x's
        # dtype, and LoRA weights stay fp32 masters under autocast.
        with torch.autocast(x.device.type, dtype=self.autocast_dtype or torch.bfloat16, enabled=self.autocast_dtype is not None):
            if self.kind == "diffusers":
                out = self.unet(x_in, t).sample
            else:
                # DiffUNet's default reads t as a noise level and returns a denoised image;
                # "timestep" is OpenAI's own convention (integer t in, eps and variance out).
                out = self.unet(x_in, t, type_t="timestep")
        # Guided Diffusion predicts [eps, variance interpolation]; we sample with the
        # fixed posterior variance (paper: the variance head brought no benefit).
        return out[:, : self.channels].to(x.dtype)

    # ---------------------------------------------------------------- builders
    @classmethod
    def tiny(cls, resolution: int = 16, channels: int = 3, num_train_timesteps: int = 1000, seed: int = 0) -> DiffusionPrior:
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
    def default(cls) -> DiffusionPrior:
        """The embedded default prior (DEFAULT_PRIOR_DIR): trained, offline, what `--prior` means when omitted."""
        if not os.path.isfile(os.path.join(DEFAULT_PRIOR_DIR, "unet", "config.json")):
            raise FileNotFoundError(f"the embedded default prior is missing from {DEFAULT_PRIOR_DIR}; reinstall adir")
        prior = cls.from_diffusers(DEFAULT_PRIOR_DIR)
        prior.config = {**prior.config, "source": "default", "path": DEFAULT_PRIOR_DIR}
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
    def from_guided_diffusion(cls, path: str, *, num_train_timesteps: int = 1000, **architecture: Any) -> DiffusionPrior:
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
            raise TypeError(f"unknown Guided Diffusion architecture argument(s) {sorted(unknown)}; known: {sorted(GUIDED_DIFFUSION_256_UNCOND)}")
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
            config={"source": str(path), "architecture": {k: list(v) if isinstance(v, tuple) else v for k, v in arch.items()}},
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

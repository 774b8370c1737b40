"""The paper's forward models y = A x + e: bicubic super-resolution x4/x8, 5x5 uniform deblurring, colorization, inpainting.

Images are (B, C, H, W) float tensors on the prior's [-1, 1] scale; an operator is built
for one clean image size, so `A_adjoint` always returns exactly that size (even when H or
W is not a multiple of the SR factor). `noise_sigma` is the noise std on the [-1, 1] scale;
constructors take the paper's 0..255 scale (`noise_sigma_255`, deblur uses 10).

What deepinv supplies and what is written here, and why (measured on this project's
machines with deepinv 0.5.0; see tests/adir_ops/test_operators.py for the checks):
- colorize: `deepinv.physics.Decolorize(srf="flat")`. The paper averages R, G and B
  (Sec. 4.3); deepinv's default is BT.601 luma, so the flat response is chosen on purpose.
  Its adjoint is y/3 on every channel: the true adjoint of the mean. The paper calls A^T
  "replication"; that is the pseudo-inverse 3 A^T, which `naive_inverse` returns.
- inpaint: `deepinv.physics.Inpainting` with our binary mask (A = A^T = mask * x).
- deblur: deepinv's `functional.conv2d` / `conv_transpose2d` (the two functions
  `physics.Blur.A` / `A_adjoint` call) with a 5x5 box filter and reflect padding. Not the
  `Blur` class itself: it needs its filter buffer in the input's dtype and stores any filter
  passed per call, so float64 input would re-type module state on every call; the functional
  form takes the filter, cast to the input's dtype, as an argument.
- sr4 / sr8: hand-written. DIV2K's LR images were made by MATLAB `imresize(x, 1/f)`
  (antialiased Keys cubic, a = -0.5, kernel stretched by f, symmetric boundary).
  `physics.Downsampling(filter="bicubic")` has the right kernel weights but samples its
  even-length filter f/2 - 1 HR pixels off MATLAB's grid (max error vs PIL's bicubic on a
  smooth image: 0.079 for x4, 0.236 for x8, versus 5e-8 aligned).
  `physics.DownsamplingMatlab` matches MATLAB but takes its adjoint by autograd and assumes
  H, W divisible by f; `functional.imresize_matlab` raises IndexError on short sides
  (e.g. 17 px for x8, 9 px for x4). So we build MATLAB's `contributions` weights as two
  small matrices, A x = R_h x R_w^T and A^T y = R_h^T y R_w: exact adjoint by construction,
  any size; 0.3 ms for A and 0.3 ms for A^T at 256x256 vs 145 ms + 99 ms for
  DownsamplingMatlab (2 CPU threads). The tests compare A with deepinv's `imresize_matlab`
  (borders included) and with PIL's bicubic resize (away from the borders).
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable, Sequence

import torch
from torch import nn

from adir_ops.rng import Generators, as_generator_list, randn_per_image

ImageSize = int | Sequence[int]

__all__ = [
    "OPERATORS",
    "Colorization",
    "Inpainting",
    "Operator",
    "SuperResolution",
    "UniformBlur",
    "box_mask",
    "imresize_matrix",
    "make_operator",
]


def _as_image_size(name: str, image_size: ImageSize) -> tuple[int, int]:
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(int(s) for s in image_size)
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"{name} needs image_size as (H, W) positive integers or one int; got {image_size!r}")
    return size


class Operator(nn.Module):
    """A linear forward model A with white Gaussian noise, built for one clean image size.

    Subclasses set `name` and implement `_A`, `_A_adjoint`, `_measurement_size` and
    `naive_inverse`; this class checks shapes and devices and adds the noise.
    """

    name: str = "operator"

    def __init__(self, image_size: ImageSize, noise_sigma_255: float = 0.0):
        super().__init__()
        self.image_size = _as_image_size(self.name, image_size)
        if not noise_sigma_255 >= 0:
            raise ValueError(f"{self.name} needs noise_sigma_255 >= 0 (the 0..255 scale); got {noise_sigma_255}")
        self.noise_sigma_255 = float(noise_sigma_255)
        # [-1, 1] spans 2 units where 0..255 spans 255.
        self.noise_sigma = self.noise_sigma_255 * 2.0 / 255.0

    # -- what a subclass provides -------------------------------------------------------
    def _A(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _A_adjoint(self, y: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _measurement_size(self) -> tuple[int, int]:
        return self.image_size

    def _measurement_channels(self, channels: int) -> int:
        return channels

    def naive_inverse(self, y: torch.Tensor) -> torch.Tensor:
        """The plain restoration a report shows beside the reconstruction; image-shaped."""
        raise NotImplementedError

    # -- the public contract ---------------------------------------------------------------
    def measurement_shape(self, channels: int = 3) -> tuple[int, int, int]:
        """(C, h, w) of y for a clean image with `channels` channels."""
        return (self._measurement_channels(channels), *self._measurement_size())

    def A(self, x: torch.Tensor) -> torch.Tensor:
        """The forward model on a clean batch (B, C, H, W) of this operator's image size."""
        self._check(x, self.image_size, "image")
        return self._A(x).to(x.dtype)

    def A_adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """The true adjoint of `A`: <A x, v> = <x, A^T v>; returns (B, C, H, W) at the image size."""
        self._check(y, self._measurement_size(), "measurement")
        return self._A_adjoint(y).to(y.dtype)

    def degrade(self, x: torch.Tensor, generator: Generators) -> torch.Tensor:
        """y = A x + noise_sigma * n, n standard normal drawn per image from its own generator."""
        y = self.A(x)
        # Checked even when noiseless, so a wrong generator list fails for every operator alike.
        generators = as_generator_list(generator, y.shape[0])
        if self.noise_sigma == 0:
            return y
        return y + self.noise_sigma * randn_per_image(y.shape, generators, dtype=y.dtype, device=y.device)

    @property
    def config(self) -> dict:
        """What to record next to outputs to rebuild this operator."""
        return {"name": self.name, "image_size": list(self.image_size), "noise_sigma_255": self.noise_sigma_255}

    def extra_repr(self) -> str:
        return f"name={self.name!r}, image_size={self.image_size}, noise_sigma_255={self.noise_sigma_255}"

    def _check(self, t: torch.Tensor, size: tuple[int, int], what: str) -> None:
        if not isinstance(t, torch.Tensor) or t.ndim != 4 or not t.is_floating_point():
            got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"{self.name} needs a float {what} batch (B, C, H, W); got {got}")
        if tuple(t.shape[-2:]) != size:
            fix = f": build one with make_operator({self.name!r}, image_size=({t.shape[-2]}, {t.shape[-1]}))" if what == "image" else ""
            raise ValueError(
                f"{self.name} was built for {what}s of {size[0]}x{size[1]} pixels; got {t.shape[-2]}x{t.shape[-1]}{fix}"
            )
        buffer = next(self.buffers(), None)
        if buffer is not None and buffer.device != t.device:
            raise ValueError(f"{self.name} lives on {buffer.device} but the {what} is on {t.device}; call operator.to({str(t.device)!r})")


def _cubic(t: torch.Tensor) -> torch.Tensor:
    """Keys' cubic with a = -0.5, MATLAB imresize's 'bicubic' kernel (support |t| <= 2)."""
    a = t.abs()
    inner = (1.5 * a**3 - 2.5 * a**2 + 1) * (a <= 1)
    outer = (-0.5 * a**3 + 2.5 * a**2 - 4 * a + 2) * ((a > 1) & (a <= 2))
    return inner + outer


def imresize_matrix(in_length: int, out_length: int, scale: float, *, antialiasing: bool = True) -> torch.Tensor:
    """The (out_length, in_length) float64 matrix of MATLAB `imresize` along one axis, bicubic.

    A line-by-line port of imresize.m's `contributions`: pixel-centre alignment, the kernel
    stretched by 1/scale when shrinking (antialiasing), rows normalised to sum 1, and the
    periodic symmetric boundary (edge pixel repeated) that also covers sides shorter
    than the kernel.
    """
    if scale < 1 and antialiasing:
        kernel, width = (lambda t: scale * _cubic(scale * t)), 4.0 / scale
    else:
        kernel, width = _cubic, 4.0
    u = torch.arange(1, out_length + 1, dtype=torch.float64) / scale + 0.5 * (1 - 1 / scale)  # 1-based centres
    left = torch.floor(u - width / 2)
    taps = left[:, None] + torch.arange(math.ceil(width) + 2, dtype=torch.float64)
    weights = kernel(u[:, None] - taps)
    weights = weights / weights.sum(dim=1, keepdim=True)
    mirror = torch.cat([torch.arange(in_length), torch.arange(in_length).flip(0)])
    index = mirror[torch.remainder(taps.long() - 1, 2 * in_length)]
    return torch.zeros(out_length, in_length, dtype=torch.float64).scatter_add_(1, index, weights)


class SuperResolution(Operator):
    """Antialiased bicubic downscaling by `factor`, as MATLAB imresize(x, 1/factor) (DIV2K's LR images)."""

    def __init__(self, image_size: ImageSize, factor: int, noise_sigma_255: float = 0.0):
        self.name = f"sr{factor}"
        super().__init__(image_size, noise_sigma_255)
        if not isinstance(factor, int) or factor < 2:
            raise ValueError(f"{self.name} needs an integer factor >= 2; got {factor!r}")
        H, W = self.image_size
        if H < factor or W < factor:
            raise ValueError(f"{self.name} needs an image of at least {factor}x{factor} pixels; got {H}x{W}")
        self.factor = factor
        h, w = math.ceil(H / factor), math.ceil(W / factor)  # imresize's output size
        self.register_buffer("rows", imresize_matrix(H, h, 1 / factor))
        self.register_buffer("cols", imresize_matrix(W, w, 1 / factor))
        # MATLAB's bicubic x f upscaling of the LR image, cropped back to (H, W): LR pixel k
        # sits over HR pixels [k f, k f + f), the same grid the downscaling used.
        self.register_buffer("up_rows", imresize_matrix(h, h * factor, factor)[:H])
        self.register_buffer("up_cols", imresize_matrix(w, w * factor, factor)[:W])

    def _measurement_size(self) -> tuple[int, int]:
        return (self.rows.shape[0], self.cols.shape[0])

    def _A(self, x):
        return self.rows.to(x.dtype) @ x @ self.cols.to(x.dtype).T

    def _A_adjoint(self, y):
        return self.rows.to(y.dtype).T @ y @ self.cols.to(y.dtype)

    def naive_inverse(self, y: torch.Tensor) -> torch.Tensor:
        """Bicubic upscaling (MATLAB imresize(y, factor)) to the image size."""
        self._check(y, self._measurement_size(), "measurement")
        return self.up_rows.to(y.dtype) @ y @ self.up_cols.to(y.dtype).T

    @property
    def config(self) -> dict:
        return {**super().config, "factor": self.factor}


class UniformBlur(Operator):
    """5x5 uniform (box) blur, same-size output with reflect padding; paper Sec. 4.2 adds sigma_255 = 10 noise."""

    name = "deblur"

    def __init__(self, image_size: ImageSize, noise_sigma_255: float = 10.0, kernel_size: int = 5):
        super().__init__(image_size, noise_sigma_255)
        if not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"deblur needs an odd positive kernel_size; got {kernel_size!r}")
        H, W = self.image_size
        if H < kernel_size or W < kernel_size:
            raise ValueError(f"deblur needs an image of at least {kernel_size}x{kernel_size} pixels (its kernel); got {H}x{W}")
        self.kernel_size = kernel_size
        self.register_buffer("filter", torch.full((1, 1, kernel_size, kernel_size), 1.0 / kernel_size**2))

    def _A(self, x):
        from deepinv.physics.functional import conv2d

        # Reflect rather than circular: a photo's left edge says nothing about its right one.
        return conv2d(x, self.filter.to(x.dtype), padding="reflect")

    def _A_adjoint(self, y):
        from deepinv.physics.functional import conv_transpose2d

        return conv_transpose2d(y, self.filter.to(y.dtype), padding="reflect")

    def naive_inverse(self, y: torch.Tensor) -> torch.Tensor:
        """The blurred, noisy observation itself."""
        self._check(y, self.image_size, "measurement")
        return y

    @property
    def config(self) -> dict:
        return {**super().config, "kernel_size": self.kernel_size}


class Colorization(Operator):
    """RGB -> gray by the channel average (paper Sec. 4.3); y is (B, 1, H, W)."""

    name = "colorize"

    def __init__(self, image_size: ImageSize, noise_sigma_255: float = 0.0):
        super().__init__(image_size, noise_sigma_255)
        from deepinv.physics import Decolorize

        self.decolorize = Decolorize(channels=3, srf="flat")

    def _measurement_channels(self, channels: int) -> int:
        if channels != 3:
            raise ValueError(f"colorize needs RGB images (3 channels); got {channels}")
        return 1

    def _A(self, x):
        self._measurement_channels(x.shape[1])
        return self.decolorize.A(x)

    def _A_adjoint(self, y):
        if y.shape[1] != 1:
            raise ValueError(f"colorize needs a gray measurement (1 channel); got {y.shape[1]}")
        return self.decolorize.A_adjoint(y)

    def naive_inverse(self, y: torch.Tensor) -> torch.Tensor:
        """The gray image replicated to R, G and B (the pseudo-inverse, 3 A^T)."""
        return 3 * self.A_adjoint(y)


def box_mask(image_size: ImageSize, generator: torch.Generator | None = None, *, hole_fraction: float = 0.5) -> torch.Tensor:
    """A (1, 1, H, W) float mask, 1 = observed, with one rectangular hole of hole_fraction x H by hole_fraction x W.

    The hole is centred when `generator` is None, else its top-left corner is drawn
    uniformly from `generator` (same generator state, same mask).
    """
    H, W = _as_image_size("box_mask", image_size)
    if not 0 < hole_fraction < 1:
        raise ValueError(f"box_mask needs 0 < hole_fraction < 1; got {hole_fraction}")
    hh, hw = max(1, round(hole_fraction * H)), max(1, round(hole_fraction * W))
    if hh * hw == H * W:
        raise ValueError(f"box_mask: a {hole_fraction} hole covers all of a {H}x{W} image; use a smaller hole_fraction")
    if generator is None:
        top, left = (H - hh) // 2, (W - hw) // 2
    else:
        top = int(torch.randint(0, H - hh + 1, (1,), generator=generator))
        left = int(torch.randint(0, W - hw + 1, (1,), generator=generator))
    mask = torch.ones(1, 1, H, W)
    mask[..., top : top + hh, left : left + hw] = 0
    return mask


class Inpainting(Operator):
    """Keep the pixels where a binary mask is 1; y is image-sized with zeros in the hole.

    `mask`: (H, W) or (1, 1, H, W), values 0/1 (bool accepted), shared by every channel and
    image of a batch. With no mask, the hole is `box_mask(image_size)`: a centred box of half
    the height and half the width.
    """

    name = "inpaint"

    def __init__(self, image_size: ImageSize, mask: torch.Tensor | None = None, noise_sigma_255: float = 0.0):
        super().__init__(image_size, noise_sigma_255)
        H, W = self.image_size
        self.mask_source = "box_mask(centred, hole_fraction=0.5)" if mask is None else "given"
        mask = box_mask(self.image_size) if mask is None else mask
        if not isinstance(mask, torch.Tensor) or tuple(mask.shape) not in ((H, W), (1, 1, H, W)):
            got = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
            raise ValueError(f"inpaint needs a mask of shape ({H}, {W}) or (1, 1, {H}, {W}) for a {H}x{W} image; got {got}")
        mask = mask.reshape(1, 1, H, W).to(torch.float32)
        if not bool(((mask == 0) | (mask == 1)).all()):
            raise ValueError("inpaint needs a binary mask (values 0 and 1, 1 = observed); got other values")
        if not bool(mask.any()):
            raise ValueError("inpaint mask observes no pixel; at least one entry must be 1")
        from deepinv.physics import Inpainting as DeepinvInpainting

        self.inpainting = DeepinvInpainting(img_size=(1, H, W), mask=mask)

    @property
    def mask(self) -> torch.Tensor:
        return self.inpainting.mask

    def _A(self, x):
        return self.inpainting.A(x)

    def _A_adjoint(self, y):
        return self.inpainting.A_adjoint(y)

    def degrade(self, x: torch.Tensor, generator: Generators) -> torch.Tensor:
        """y = mask * (x + noise_sigma * n): the hole carries no measurement, so no noise either."""
        return self.mask.to(x.dtype) * super().degrade(x, generator)

    def naive_inverse(self, y: torch.Tensor) -> torch.Tensor:
        """y with the hole filled by the mean of the observed pixels (per image and channel)."""
        self._check(y, self.image_size, "measurement")
        mask = self.mask.to(y.dtype)
        mean = (y * mask).sum(dim=(-2, -1), keepdim=True) / mask.sum()
        return y * mask + mean * (1 - mask)

    @property
    def config(self) -> dict:
        observed = float(self.mask.mean())
        return {**super().config, "mask": self.mask_source, "observed_fraction": observed}


# Adding an operator = one class + one line here.
OPERATORS: dict[str, Callable[..., Operator]] = {
    "sr4": functools.partial(SuperResolution, factor=4),
    "sr8": functools.partial(SuperResolution, factor=8),
    "deblur": UniformBlur,
    "colorize": Colorization,
    "inpaint": Inpainting,
}


def make_operator(name: str, **options) -> Operator:
    """Build the operator `name` (a key of OPERATORS) for `image_size=(H, W)` and its options."""
    if name not in OPERATORS:
        raise ValueError(f"unknown operator {name!r}; choose one of {', '.join(OPERATORS)}")
    factory = OPERATORS[name]
    fixed = factory.keywords if isinstance(factory, functools.partial) else {}
    accepted = [p for p in inspect.signature(factory).parameters if p not in fixed]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ValueError(f"operator {name!r} does not take {', '.join(unknown)}; it takes {', '.join(accepted)}")
    if "image_size" not in options:
        raise ValueError(f"operator {name!r} needs image_size=(H, W), the size of the clean images it will see")
    return factory(**options)

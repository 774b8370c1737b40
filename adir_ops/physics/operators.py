"""The paper's forward models y = A x + e: bicubic super-resolution x4/x8, 5x5 uniform deblurring, colorization, inpainting.

Images are (B, C, H, W) float tensors on the prior's [-1, 1] scale; an operator is built
for one clean image size, so `A_adjoint` always returns exactly that size (even when H or
W is not a multiple of the SR factor). `noise_sigma` is the noise std on the [-1, 1] scale;
constructors take the paper's 0..255 scale (`noise_sigma_255`, deblur uses 10).

What deepinv supplies and what is written here, and why (deepinv 0.5.0; the checks are
tests/adir_ops/physics/test_operators.py, the figures docs/operators.md):
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
  even-length filter f/2 - 1 HR pixels off MATLAB's grid (its error: docs/operators.md).
  `physics.DownsamplingMatlab` matches MATLAB but takes its adjoint by autograd and assumes
  H, W divisible by f; `functional.imresize_matlab` raises IndexError on short sides
  (e.g. 17 px for x8, 9 px for x4). So we build MATLAB's `contributions` weights as two
  small matrices, A x = R_h x R_w^T and A^T y = R_h^T y R_w: exact adjoint by construction,
  any size, and far faster than DownsamplingMatlab (docs/operators.md). The tests compare A
  with deepinv's `imresize_matlab` (borders included) and with PIL's bicubic resize (away
  from the borders).

Other kernels, for real photos whose degradation is estimated (`--degradation auto`,
adir_ops.physics.estimate): SR by area or Gaussian downscaling (`kernel=` of SR_KERNELS), and
deblur by a Gaussian, box or motion-line kernel (`kernel=`, `width=`: KernelBlur). Each is two small
matrices, A x = R x C^T, as the bicubic SR is: exact adjoint, closed-form Gram solves.

The linear-operator base (A, A^T, the Gram solves, projections) is adir_ops.physics.linear_operator;
the separable resampling matrices are adir_ops.physics.separable.
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from adir_ops.physics.kernels import BLUR_KERNELS, SR_KERNELS, blur_taps, sr_matrix
from adir_ops.physics.linear_operator import ImageSize, Operator, as_image_size
from adir_ops.physics.separable import Separable, box_matrix, conv_matrix, imresize_matrix
from adir_ops.physics.tasks import TASKS, scale_factor
from adir_ops.rng import Generators

__all__ = [
    "BLUR_KERNELS",
    "OPERATORS",
    "SR_KERNELS",
    "Colorization",
    "Inpainting",
    "KernelBlur",
    "SuperResolution",
    "UniformBlur",
    "box_mask",
    "make_operator",
]


class SuperResolution(Separable, Operator):
    """Antialiased downscaling by `factor`: by default bicubic as MATLAB imresize(x, 1/factor) (DIV2K's LR images).

    `kernel` (SR_KERNELS): 'bicubic' (the paper's), 'area' or 'gaussian', on the same LR grid.
    """

    def __init__(self, image_size: ImageSize, factor: int, noise_sigma_255: float = 0.0, kernel: str = "bicubic"):
        self.name = f"sr{factor}"
        super().__init__(image_size, noise_sigma_255)
        if not isinstance(factor, int) or factor < 2:
            raise ValueError(f"{self.name} needs an integer factor >= 2; got {factor!r}")
        if kernel not in SR_KERNELS:
            raise ValueError(f"{self.name}: unknown kernel {kernel!r}; choose one of {', '.join(SR_KERNELS)}")
        H, W = self.image_size
        if H < factor or W < factor:
            raise ValueError(f"{self.name} needs an image of at least {factor}x{factor} pixels; got {H}x{W}")
        self.factor, self.kernel = factor, kernel
        h, w = math.ceil(H / factor), math.ceil(W / factor)  # imresize's output size, every kernel's
        self.register_buffer("rows", sr_matrix(H, factor, kernel))
        self.register_buffer("cols", sr_matrix(W, factor, kernel))
        # MATLAB's bicubic x f upscaling of the LR image, cropped back to (H, W): LR pixel k
        # sits over HR pixels [k f, k f + f), the same grid the downscaling used.
        self.register_buffer("up_rows", imresize_matrix(h, h * factor, factor)[:H])
        self.register_buffer("up_cols", imresize_matrix(w, w * factor, factor)[:W])

    def _measurement_size(self) -> tuple[int, int]:
        return (self.rows.shape[0], self.cols.shape[0])

    local = True

    @property
    def alignment(self) -> int:
        return self.factor

    def region(self, top, left, height, width):
        # imresize's kernel reaches 2 LR pixels past a window's edge: the window's own operator
        # mirrors there instead, an error that stays within a few pixels of the edge (the region
        # loop's overlap and blend take it out).
        return SuperResolution((height, width), self.factor, self.noise_sigma_255, self.kernel)

    def _A(self, x):
        return self.rows.to(x.dtype) @ x @ self.cols.to(x.dtype).T

    def _gram_factors(self):
        return self.rows, self.cols

    def _A_adjoint(self, y):
        return self.rows.to(y.dtype).T @ y @ self.cols.to(y.dtype)

    def naive_inverse(self, y: torch.Tensor) -> torch.Tensor:
        """Bicubic upscaling (MATLAB imresize(y, factor)) to the image size."""
        self._check(y, self._measurement_size(), "measurement")
        return self.up_rows.to(y.dtype) @ y @ self.up_cols.to(y.dtype).T

    @property
    def config(self) -> dict:
        return {**super().config, "factor": self.factor, "kernel": self.kernel}


class UniformBlur(Separable, Operator):
    """5x5 uniform (box) blur, same-size output with reflect padding; paper Sec. 4.2 adds sigma_255 = 10 noise."""

    name = "deblur"

    def __init__(self, image_size: ImageSize, noise_sigma_255: float = 10.0, kernel_size: int = 5):
        super().__init__(image_size, noise_sigma_255)
        if not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"deblur needs an odd positive kernel_size; got {kernel_size!r}")
        H, W = self.image_size
        if H < kernel_size or W < kernel_size:
            raise ValueError(
                f"deblur needs an image of at least {kernel_size}x{kernel_size} pixels (its kernel); got {H}x{W}"
            )
        self.kernel_size = kernel_size
        self.register_buffer("filter", torch.full((1, 1, kernel_size, kernel_size), 1.0 / kernel_size**2))

    local = True

    def region(self, top, left, height, width):
        return UniformBlur((height, width), self.noise_sigma_255, self.kernel_size)

    def _gram_factors(self):
        # The box with reflect padding is separable (checked against A in the tests); the 1-D tap
        # is the square root of the float32 2-D filter value, so the product matches it exactly.
        tap = float(self.filter[0, 0, 0, 0]) ** 0.5
        return box_matrix(self.image_size[0], self.kernel_size, tap), box_matrix(
            self.image_size[1], self.kernel_size, tap
        )

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


class KernelBlur(Separable, Operator):
    """Blur by a separable kernel of BLUR_KERNELS (a Gaussian of std `width`, a box, a motion line), reflect padding.

    What `--degradation auto` builds for a blurred photo (adir_ops.physics.estimate); A x = R x C^T with
    reflect-padded 1-D filters, so the adjoint is exact and the Gram solves closed form, as for UniformBlur.
    """

    name = "deblur"

    def __init__(
        self, image_size: ImageSize, kernel: str = "gaussian", width: float = 1.6, noise_sigma_255: float = 10.0
    ):
        super().__init__(image_size, noise_sigma_255)
        rows, cols = blur_taps(kernel, float(width))
        self.kernel, self.width = kernel, float(width)
        H, W = self.image_size
        self.register_buffer("rows", conv_matrix(H, rows))
        self.register_buffer("cols", conv_matrix(W, cols))

    local = True

    def region(self, top, left, height, width):
        return KernelBlur((height, width), self.kernel, self.width, self.noise_sigma_255)

    def _A(self, x):
        return self.rows.to(x.dtype) @ x @ self.cols.to(x.dtype).T

    def _A_adjoint(self, y):
        return self.rows.to(y.dtype).T @ y @ self.cols.to(y.dtype)

    def _gram_factors(self):
        return self.rows, self.cols

    def naive_inverse(self, y: torch.Tensor) -> torch.Tensor:
        """The blurred, noisy observation itself."""
        self._check(y, self.image_size, "measurement")
        return y

    @property
    def config(self) -> dict:
        return {**super().config, "kernel": self.kernel, "width": self.width}


def deblur(
    image_size: ImageSize,
    noise_sigma_255: float = 10.0,
    kernel_size: int = 5,
    kernel: str | None = None,
    width: float | None = None,
) -> Operator:
    """The deblur task's operator: the paper's 5x5 box (UniformBlur), or with `kernel` a KernelBlur of that kernel and width."""
    if kernel is None:
        if width is not None:
            raise ValueError("deblur: width goes with kernel (one of " + ", ".join(BLUR_KERNELS) + ")")
        return UniformBlur(image_size, noise_sigma_255, kernel_size)
    if kernel_size != 5:
        raise ValueError("deblur: kernel_size is the paper box's side; with kernel, give its width instead")
    return KernelBlur(image_size, kernel, 1.6 if width is None else width, noise_sigma_255)


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

    local = True

    def region(self, top, left, height, width):
        return Colorization((height, width), self.noise_sigma_255)

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

    def _gram_spectrum(self):
        # A A^T = c I with c = sum of the squared channel weights: 1/3 up to deepinv's float32 weights.
        identity = lambda r: r  # noqa: E731
        return identity, identity, self.decolorize.srf.to(torch.float64).square().sum()


def box_mask(
    image_size: ImageSize, generator: torch.Generator | None = None, *, hole_fraction: float = 0.5
) -> torch.Tensor:
    """A (1, 1, H, W) float mask, 1 = observed, with one rectangular hole of hole_fraction x H by hole_fraction x W.

    The hole is centred when `generator` is None, else its top-left corner is drawn
    uniformly from `generator` (same generator state, same mask).
    """
    H, W = as_image_size("box_mask", image_size)
    if not 0 < hole_fraction < 1:
        raise ValueError(f"box_mask needs 0 < hole_fraction < 1; got {hole_fraction}")
    hh, hw = max(1, round(hole_fraction * H)), max(1, round(hole_fraction * W))
    if hh * hw == H * W:
        raise ValueError(
            f"box_mask: a {hole_fraction} hole covers all of a {H}x{W} image; use a smaller hole_fraction"
        )
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
            raise ValueError(
                f"inpaint needs a mask of shape ({H}, {W}) or (1, 1, {H}, {W}) for a {H}x{W} image; got {got}"
            )
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

    def measurement_count(self, channels: int = 3) -> int:
        """Observed pixels times channels: the hole measures nothing."""
        return int(self.mask.sum().item()) * channels

    def _gram_spectrum(self):
        # A A^T = diag(mask) on the image-sized measurement: 1 where observed, 0 in the hole.
        identity = lambda r: r  # noqa: E731
        return identity, identity, self.mask.to(torch.float64)

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
    "deblur": deblur,
    "colorize": Colorization,
    "inpaint": Inpainting,
}


if tuple(OPERATORS) != TASKS:  # the torch-free task list (what the CLI offers) is this registry's keys
    raise ImportError(f"adir_ops.physics.tasks.TASKS {TASKS} and OPERATORS {tuple(OPERATORS)} disagree")


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


@dataclass(frozen=True)
class Observation:
    """One input image as a reconstruction job sees it: the operator, the measurement y in [-1, 1], the truth if known."""

    operator: Operator
    y: torch.Tensor  # (1, C, h, w) in [-1, 1]
    truth01: torch.Tensor | None  # (1, 3, H, W) in [0, 1]
    # With degradation="auto": what adir_ops.physics.estimate found (a DegradationEstimate) and built the operator from.
    estimate: object | None = None


def observe(
    task: str,
    image01: torch.Tensor,
    *,
    degraded: bool = False,
    reference01: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    degradation: str = "known",
    **options,
) -> Observation:
    """The operator of `task` sized for one input and its measurement.

    Clean input (evaluation): `image01` (1, 3, H, W) is the truth and y = A x + noise, the noise
    drawn from `generator` (the image's degrade stream). Degraded input (real use): `image01` is
    y itself; a gray image decoded as RGB becomes its channel mean for colorization; the clean
    size is the reference's when given (which must pair with y), else y's size times the task's
    scale factor. `options` go to the operator (e.g. noise_sigma_255). degradation="auto" (degraded input
    only): the noise level and kernel are estimated from y (adir_ops.physics.estimate; a given
    noise_sigma_255 is kept) and the operator built from them; the Observation carries the estimate.
    """
    if not degraded:
        operator = make_operator(task, image_size=tuple(image01.shape[-2:]), **options)
        return Observation(operator, operator.degrade(image01 * 2 - 1, generator), image01)
    h, w = image01.shape[-2:]
    factor = scale_factor(task)
    if reference01 is None:
        size = (h * factor, w * factor)
    else:
        size = tuple(reference01.shape[-2:])
        if (-(-size[0] // factor), -(-size[1] // factor)) != (h, w):
            raise ValueError(f"reference is {size[0]}x{size[1]} but the {task} input is {h}x{w}; they are not a pair")
    y = image01 * 2 - 1
    if task == "colorize":
        y = y.mean(dim=1, keepdim=True)
    estimate = None
    if degradation == "auto":
        from adir_ops.physics.estimate import estimate_degradation

        estimate = estimate_degradation(task, y.add(1).div(2).detach().cpu(), options.get("noise_sigma_255"))
        options = {**options, **estimate.operator_options()}
    elif degradation != "known":
        raise ValueError(f"degradation must be 'known' or 'auto'; got {degradation!r}")
    operator = make_operator(task, image_size=size, **options)
    expected = operator.measurement_shape(3)
    if tuple(y.shape[1:]) != tuple(expected):
        raise ValueError(
            f"the input is {tuple(y.shape[1:])} but {task} of a {size[0]}x{size[1]} image gives {tuple(expected)}"
        )
    return Observation(operator, y, reference01, estimate)

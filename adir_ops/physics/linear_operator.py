"""The base of every forward model y = A x + e: A, A^T, the plain restoration, the noise, and exact solves with A A^T.

The Gram matrix A A^T, for exact guidance (adir_ops.sampling.samplers): every operator has
`gram_solve` ((A A^T + damping I)^+ r), `pseudo_inverse` (A^+ y = A^T (A A^T)^+ y) and
`project` (the nearest image x' to x with ||A x' - y|| <= radius: for radius 0 the
projection onto A x = y, x + A^T (A A^T)^+ (y - A x); for radius > 0 Tikhonov with the
damping chosen by the discrepancy principle, so a noisy y is never fitted below its noise).
Where A A^T has a known eigenbasis they are closed form: A A^T = (R R^T) (x) (C C^T) for the
separable SR and blur operators (eigenvectors of the two small matrices, computed once per
operator, i.e. per image size, on first use), A A^T = c I for colorization (c = 1/3 up to
deepinv's float32 weights), A A^T = diag(mask) for
inpainting. Any other operator gets conjugate gradients on A A^T from the base class.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from adir_ops.rng import Generators, as_generator_list, randn_per_image

ImageSize = int | Sequence[int]


def as_image_size(name: str, image_size: ImageSize) -> tuple[int, int]:
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
        self.image_size = as_image_size(self.name, image_size)
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

    # -- regions: the same operator on a window of the image (adir_ops.sampling.regions) ----------
    # Local: each pixel of y depends on a few nearby pixels of x, so a window of the image can be
    # reconstructed from a window of y with the operator `region` gives. Not local (inpainting, whose
    # hole needs its context): always sampled whole.
    local: bool = False
    # A window's top and left must be multiples of this, so its measurement is a window of y too.
    alignment: int = 1

    def region(self, top: int, left: int, height: int, width: int) -> "Operator":
        """This operator for the image window [top, top+height) x [left, left+width) (local operators only)."""
        raise NotImplementedError(f"{self.name} is not local: it has no operator for a window of the image")

    def measurement_window(self, top: int, left: int, height: int, width: int) -> tuple[slice, slice]:
        """(rows, cols) of y that a window's operator measures (see `region`); y's own grid."""
        a = self.alignment
        if top % a or left % a:
            raise ValueError(f"{self.name}: a window must start on multiples of {a}; got ({top}, {left})")
        h, w = self._measurement_size()
        return (
            slice(top // a, min(h, -(-(top + height) // a))),
            slice(left // a, min(w, -(-(left + width) // a))),
        )

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

    # -- the Gram matrix A A^T: pseudo-inverse and projections ------------------------------
    # Conjugate gradients for operators without a closed form (`_gram_spectrum` is None).
    cg_iterations: int = 200
    cg_tolerance: float = 1e-8
    # Eigenvalues of A A^T below this fraction of the largest count as zero in the pseudo-inverse.
    pinv_rcond: float = 1e-12
    # Bisection steps (in log damping) for a projection onto a ball of radius > 0.
    bisection_steps: int = 60

    def _gram_spectrum(self):
        """(to_basis, from_basis, eigenvalues) with A A^T = U diag(d) U^T, U orthogonal, or None.

        `to_basis(r)` = U^T r and `from_basis(s)` = U s act on measurement batches;
        `eigenvalues` (float64) broadcasts against them. None: no closed form, use CG.
        """
        return None

    @property
    def has_closed_form(self) -> bool:
        """Whether `gram_solve` is exact (an eigenbasis of A A^T) rather than conjugate gradients."""
        return self._gram_spectrum() is not None

    def measurement_count(self, channels: int = 3) -> int:
        """m: the number of measured values per image (what the noise floor sigma sqrt(m) counts)."""
        return math.prod(self.measurement_shape(channels))

    def noise_radius(self, channels: int = 3) -> float:
        """sigma sqrt(m): the expected ||A x - y|| of the clean image itself (0 for noiseless operators)."""
        return self.noise_sigma * math.sqrt(self.measurement_count(channels))

    def gram(self, r: torch.Tensor) -> torch.Tensor:
        """A A^T r on a measurement batch."""
        return self.A(self.A_adjoint(r))

    def gram_solve(self, r: torch.Tensor, damping: float | torch.Tensor = 0.0) -> torch.Tensor:
        """(A A^T + damping I)^+ r on a measurement batch; `damping` a float or one value per image.

        Closed form where the operator has one, else `cg_iterations` conjugate-gradient steps
        (per image, stopping at relative residual `cg_tolerance`).
        """
        self._check(r, self._measurement_size(), "measurement")
        lam = self._per_image(damping, r)
        spectrum = self._gram_spectrum()
        if spectrum is None:
            return self._cg_solve(r, lam)
        to_basis, from_basis, d = spectrum
        d = d.to(r.dtype)
        kept = d > self.pinv_rcond * d.max()
        coeff = torch.where(kept, 1.0 / torch.where(kept, d + lam, torch.ones_like(d)), torch.zeros_like(d + lam))
        return from_basis(coeff * to_basis(r)).to(r.dtype)

    def pseudo_inverse(self, y: torch.Tensor) -> torch.Tensor:
        """A^+ y = A^T (A A^T)^+ y: the least-norm image consistent with y (image-shaped)."""
        return self.A_adjoint(self.gram_solve(y))

    def project(self, x: torch.Tensor, y: torch.Tensor, radius: float | torch.Tensor = 0.0) -> torch.Tensor:
        """The image nearest to x (per image, Euclidean) with ||A x' - y|| <= radius.

        radius 0: x + A^T (A A^T)^+ (y - A x), the projection onto A x = y. radius > 0: x is
        kept if already inside; else x' = x + A^T (A A^T + lam I)^-1 (y - A x) with lam found by
        bisection so that ||A x' - y|| = radius (KKT of the projection onto the ellipsoid): the
        well-measured directions are corrected most, the weak ones, where the noise
        dominates, least.
        """
        r = y - self.A(x)
        radius = self._per_image(radius, r).flatten()
        if not bool((radius > 0).any()):
            return x + self.A_adjoint(self.gram_solve(r))
        lam = self._damping_for_radius(r, radius)
        inside = torch.isinf(lam)
        z = self.gram_solve(r, torch.where(inside, torch.zeros_like(lam), lam))
        z = torch.where(inside.view(-1, *[1] * (r.ndim - 1)), torch.zeros_like(z), z)
        return x + self.A_adjoint(z)

    def _damping_for_radius(self, r: torch.Tensor, radius: torch.Tensor) -> torch.Tensor:
        """Per image the largest damping lam with ||lam (A A^T + lam I)^-1 r|| <= radius (inf: r is inside)."""
        dims = tuple(range(1, r.ndim))
        inside = r.double().square().sum(dim=dims).sqrt() <= radius.double()
        spectrum = self._gram_spectrum()
        if spectrum is not None:
            to_basis, _, d = spectrum
            d = d.to(torch.float64)
            coeff = to_basis(r.double())
            kept = d > self.pinv_rcond * d.max()
            scale = float(d.max())

            def residual(lam):
                lam = lam.view(-1, *[1] * (r.ndim - 1))
                factor = torch.where(kept, lam / (d + lam), torch.ones_like(d + lam))
                return (factor * coeff).square().sum(dim=dims).sqrt()
        else:
            scale = 1.0

            def residual(lam):
                return (
                    (lam.view(-1, *[1] * (r.ndim - 1)) * self._cg_solve(r, lam.to(r.dtype)))
                    .double()
                    .square()
                    .sum(dim=dims)
                    .sqrt()
                )

        # Residual grows with lam: bisect log(lam) over 1e-16..1e16 times the top eigenvalue.
        lo = torch.full_like(radius, math.log(scale) - 37.0, dtype=torch.float64)
        hi = torch.full_like(lo, math.log(scale) + 37.0)
        steps = self.bisection_steps if spectrum is not None else self.bisection_steps // 2
        for _ in range(steps):
            mid = (lo + hi) / 2
            ok = residual(mid.exp()) <= radius.double()
            lo, hi = torch.where(ok, mid, lo), torch.where(ok, hi, mid)
        lam = lo.exp()
        return torch.where(inside, torch.full_like(lam, math.inf), lam).to(r.dtype)

    def _cg_solve(self, r: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
        """Conjugate gradients on (A A^T + lam I) z = r, every image on its own (a converged image stays put)."""
        dims = tuple(range(1, r.ndim))
        shape = (-1, *[1] * (r.ndim - 1))
        lam = lam.view(shape)
        z = torch.zeros_like(r)
        res, p = r.clone(), r.clone()
        rs = res.square().sum(dim=dims)
        target = self.cg_tolerance**2 * rs
        for _ in range(self.cg_iterations):
            active = rs > target
            if not bool(active.any()):
                break
            q = self.gram(p) + lam * p
            curvature = (p * q).sum(dim=dims)
            alpha = torch.where(
                active & (curvature > 0),
                rs / torch.where(curvature > 0, curvature, torch.ones_like(curvature)),
                torch.zeros_like(rs),
            )
            z = z + alpha.view(shape) * p
            res = res - alpha.view(shape) * q
            rs_new = torch.where(active, res.square().sum(dim=dims), rs)
            beta = torch.where(active, rs_new / torch.where(rs > 0, rs, torch.ones_like(rs)), torch.zeros_like(rs))
            p = torch.where(active.view(shape), res + beta.view(shape) * p, p)
            rs = rs_new
        return z

    @staticmethod
    def _per_image(value: float | torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """A float or (B,) tensor as (B, 1, ..., 1) in like's dtype and device."""
        value = torch.as_tensor(value, dtype=like.dtype, device=like.device)
        if value.ndim == 0:
            value = value.expand(like.shape[0])
        if value.shape != (like.shape[0],):
            raise ValueError(
                f"expected a float or one value per image ({like.shape[0]}); got shape {tuple(value.shape)}"
            )
        return value.reshape(-1, *[1] * (like.ndim - 1))

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
            fix = (
                f": build one with make_operator({self.name!r}, image_size=({t.shape[-2]}, {t.shape[-1]}))"
                if what == "image"
                else ""
            )
            raise ValueError(
                f"{self.name} was built for {what}s of {size[0]}x{size[1]} pixels; got {t.shape[-2]}x{t.shape[-1]}{fix}"
            )
        buffer = next(self.buffers(), None)
        if buffer is not None and buffer.device != t.device:
            raise ValueError(
                f"{self.name} lives on {buffer.device} but the {what} is on {t.device}; call operator.to({str(t.device)!r})"
            )

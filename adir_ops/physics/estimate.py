"""Estimate the degradation of a real photo from y alone: its noise level, its blur kernel, its SR downscaling kernel.

What `adir reconstruct --degraded --degradation auto` builds its operator from (the figures: docs/blind.md).

- Noise: the patch-PCA estimator of Chen, Zhu and Heng (ICCV 2015, "An efficient statistical method for
  image noise level estimation"): the smallest eigenvalues of the covariance of the image's patches are the
  noise's, found as the largest set whose mean equals its median. Measured against the wavelet MAD (Donoho;
  scikit-image's `estimate_sigma`, whose PyWavelets is not installed here, so its Haar form) and Immerkaer's
  Laplacian mask on the embedded default's held-out photos: the MAD and the mask read texture as noise
  (+3 to +6 of 255 on sharp images), PCA does not.
- Kernels: each candidate operator A_c is scored by how well it explains y's spectrum: y's DCT
  coefficients are taken as independent Gaussians with variance S_c = (natural image spectrum
  a / |w|^alpha) x |A_c's transfer|^2 (summed over the aliases for SR) + the noise's variance, and the
  candidate's criterion is their negative log-likelihood (Whittle's), the image's a and alpha fitted per
  candidate. The lowest wins; when a different candidate comes within a margin of it
  (UNSURE_NATS_PER_COEFFICIENT), the estimate says it is unsure (and why) rather than guessing silently.

What it cannot estimate: kernels outside the searched families (a defocus disc, a motion line at another
angle than horizontal or vertical, a camera's own sharpening), spatially varying blur, noise that is not
white and Gaussian (JPEG blocks, sensor noise that grows with brightness: it reads their average), the
SR factor itself (the task names it). Pure numpy/scipy; torch only to read the operators' own kernels.
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import asdict, dataclass, field

import numpy as np

# Searched candidates. Gaussian blur widths (std, pixels) on a 0.1 grid; box sides and motion-line lengths odd.
GAUSSIAN_WIDTHS = tuple(round(0.5 + 0.1 * i, 1) for i in range(31))  # 0.5 .. 3.5
BOX_WIDTHS = (3, 5, 7, 9)
MOTION_LENGTHS = (3, 5, 7, 9, 11, 13, 15)
# A rival candidate closer than this in negative log-likelihood (nats per coefficient of y, times their count)
# makes the estimate unsure. Calibrated on the embedded default's held-out photos (docs/blind.md): blur at
# 96 x 96 (30 nats: right 85% of the time when sure, against 59% when unsure), SR x4 at 24 x 24 (10 nats:
# 54% against 37%; three kernels, so chance is 33%). The likelihood's model of a photo is rough, so its gaps
# grow with the image: per coefficient, the margin grows with it.
UNSURE_NATS_PER_COEFFICIENT = {"blur": 30 / 96**2, "SR kernel": 10 / 24**2}
# Gaussian widths within this many pixels of the best count as the same answer, not as rivals.
WIDTH_TOLERANCE = 0.3
# Patch side of the noise estimator: 4 x 4 x channels measured best across sizes (docs/blind.md); fewer
# patches than this many times their dimension leave the covariance's smallest eigenvalues biased low.
NOISE_PATCH = 4
NOISE_MIN_PATCHES_PER_DIM = 8
# The estimate reads the central window of at most this side of y: one kernel and one noise level are assumed
# for the whole photo, and a 24 MP photo's every pixel would cost minutes (the spectrum fit) and gigabytes
# (the patches) for no better answer.
ESTIMATE_SIDE = 256


@dataclass(frozen=True)
class NoiseEstimate:
    """The noise level of y on the 0..255 scale, how it was found, and why it may be wrong (None: no doubt)."""

    sigma_255: float
    method: str
    unsure: str | None = None


@dataclass(frozen=True)
class KernelEstimate:
    """The chosen kernel (`family` and `width`, None where it has none), every candidate's criterion, and doubt.

    criteria: candidate name -> negative log-likelihood minus the best one's (nats; 0 for the choice).
    """

    family: str
    width: float | None
    criteria: dict[str, float] = field(default_factory=dict)
    unsure: str | None = None

    @property
    def name(self) -> str:
        return candidate_name(self.family, self.width)


@dataclass(frozen=True)
class DegradationEstimate:
    """What `--degradation auto` found for one input: noise, kernel (None for colorize), and their doubts."""

    task: str
    noise: NoiseEstimate
    kernel: KernelEstimate | None
    window: tuple[int, int, int, int] | None = None  # (top, left, height, width) of y that was read; None: all

    def operator_options(self) -> dict:
        """make_operator options of the estimated degradation for this task."""
        options: dict = {"noise_sigma_255": round(self.noise.sigma_255, 2)}
        if self.kernel is not None and self.task == "deblur":
            options.update(kernel=self.kernel.family, width=self.kernel.width)
        elif self.kernel is not None:
            options["kernel"] = self.kernel.family
        return options

    @property
    def unsure(self) -> str | None:
        """Every doubt of the estimate in one line; None when it has none."""
        doubts = [d for d in (self.noise.unsure, self.kernel and self.kernel.unsure) if d]
        return "; ".join(doubts) or None

    def to_json(self) -> str:
        values = asdict(self)
        if self.kernel is not None:
            values["kernel"]["criteria"] = {k: round(v, 2) for k, v in self.kernel.criteria.items()}
        return json.dumps(values, sort_keys=True)


def candidate_name(family: str, width: float | None) -> str:
    return family if width is None else f"{family}:{width:g}"


def as_channels(y01) -> np.ndarray:
    """y as a (C, H, W) float64 array in [0, 1]: a (C, H, W) or (1, C, H, W) array or CPU tensor."""
    array = np.asarray(y01, dtype=np.float64)
    if array.ndim == 4 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 3:
        raise ValueError(f"estimate needs y as (C, H, W) or (1, C, H, W); got shape {array.shape}")
    return array


# ---------------------------------------------------------------- noise
def estimate_noise_sigma(y01, patch: int = NOISE_PATCH) -> NoiseEstimate:
    """The white Gaussian noise std of y (0..255 scale) by patch PCA (Chen et al. 2015)."""
    from numpy.lib.stride_tricks import sliding_window_view

    y = as_channels(y01)
    channels, height, width = y.shape
    patch = min(patch, height, width)
    windows = sliding_window_view(y, (patch, patch), axis=(1, 2))  # (C, H-p+1, W-p+1, p, p)
    patches = windows.transpose(1, 2, 0, 3, 4).reshape(-1, channels * patch * patch)
    patches = patches - patches.mean(axis=0)
    eigenvalues = np.sort(np.linalg.eigvalsh(patches.T @ patches / len(patches)))
    sigma2, found = float(max(eigenvalues[0], 0.0)), False
    for count in range(len(eigenvalues), 0, -1):
        smallest = eigenvalues[:count]
        mean = smallest.mean()
        if (smallest > mean).sum() == (smallest < mean).sum():  # mean == median: these are noise
            sigma2, found = float(max(mean, 0.0)), True
            break
    unsure = None
    dims = patches.shape[1]
    if len(patches) < NOISE_MIN_PATCHES_PER_DIM * dims:
        unsure = (
            f"noise: y has {len(patches)} patches for {dims} dimensions, too few for the PCA estimate "
            f"(it reads low at high noise)"
        )
    elif not found:
        unsure = "noise: no set of small eigenvalues looked like white noise; the smallest was taken"
    return NoiseEstimate(math.sqrt(sigma2) * 255.0, "pca", unsure)


# ---------------------------------------------------------------- spectra
def _gray_dct(y: np.ndarray) -> np.ndarray:
    """Orthonormal 2-D DCT of y's channel mean: its coefficients' power is y's spectrum on [0, pi]^2."""
    from scipy.fft import dctn

    return dctn(y.mean(axis=0), norm="ortho")


def _transfer(taps: np.ndarray, positions: np.ndarray, frequencies: np.ndarray) -> np.ndarray:
    """|H(w)|^2 of a 1-D filter with `taps` at `positions` (pixels, relative to its centre)."""
    phase = np.outer(frequencies, positions)
    return (np.cos(phase) @ taps) ** 2 + (np.sin(phase) @ taps) ** 2


@functools.lru_cache(maxsize=None)
def _blur_axes(family: str, width: float) -> tuple[tuple, tuple]:
    """((row taps, positions), (column taps, positions)) of a KernelBlur kernel, numpy."""
    from adir_ops.physics.kernels import blur_taps

    out = []
    for taps in blur_taps(family, width):
        taps = taps.numpy()
        out.append((taps, np.arange(len(taps)) - len(taps) // 2))
    return tuple(out)


@functools.lru_cache(maxsize=None)
def _sr_axis(family: str, factor: int) -> tuple[np.ndarray, np.ndarray]:
    """(taps, positions) of an interior LR pixel of SuperResolution's kernel, positions relative to its centre."""
    from adir_ops.physics.kernels import sr_matrix

    blocks = 16
    row = sr_matrix(blocks * factor, factor, family)[blocks // 2].numpy()
    centre = (blocks // 2) * factor + (factor - 1) / 2
    support = np.nonzero(row)[0]
    return row[support], support - centre


def _fit(power: np.ndarray, wk2: np.ndarray, wl2: np.ndarray, transfer: np.ndarray, noise_var: float) -> float:
    """min over the image's (log a, alpha, anisotropy) of the Whittle negative log-likelihood sum(log S + P / S).

    wk2, wl2: (aliases, N) squared vertical and horizontal frequency of each alias of each coefficient;
    transfer: (aliases, N) |H|^2 there; S = sum over aliases of a (e^r wk^2 + e^-r wl^2)^(-alpha/2) |H|^2
    + noise_var. The anisotropy r lets a photo of horizontal lines be that, not a vertical motion blur.
    Every candidate gets the same three cold starts: a search warm-started from a neighbour's fit was 3x
    faster but found deeper minima for some families than others, and that bias chose the kernel.
    """
    from scipy.optimize import minimize

    floor = max(noise_var, 1e-12)

    def nll(params):
        # Bounded (flat beyond): a far-off simplex vertex must not overflow. |r| <= 4: lines 3000x stronger
        # one way than the other; 0 <= alpha <= 6 spans every photo's spectrum (about 2).
        log_a, alpha, ratio = params[0], min(max(params[1], 0.0), 6.0), min(max(params[2], -4.0), 4.0)
        with np.errstate(over="ignore"):  # a huge log a overflows to inf: a bad fit, not an error
            log_base = 0.5 * np.log(math.exp(ratio) * wk2 + math.exp(-ratio) * wl2)
            signal = np.exp(log_a) * (np.exp(-alpha * log_base) * transfer).sum(axis=0)
            spectrum = signal + floor
            return float(np.sum(np.log(spectrum) + power / spectrum))

    start_signal = ((wk2 + wl2) ** -1.0 * transfer).sum(axis=0)
    log_a = math.log(max(float(np.mean(power / np.maximum(start_signal, 1e-30))), 1e-30))
    best = math.inf
    for alpha in (1.5, 2.5, 3.5):  # a few starts: the surface has shallow valleys along alpha
        result = minimize(nll, [log_a, alpha, 0.0], method="Nelder-Mead", options={"xatol": 1e-3, "fatol": 1e-3})
        best = min(best, result.fun)
    return best


def _choose(scores: dict[str, float], rivals_of, what: str, margin: float) -> tuple[str, dict[str, float], str | None]:
    """The lowest-scoring candidate, the scores relative to it, and why it is unsure (a rival within margin)."""
    best = min(scores, key=scores.get)
    relative = {name: scores[name] - scores[best] for name in scores}
    rivals = {name: gap for name, gap in relative.items() if name != best and rivals_of(best, name)}
    unsure = None
    if rivals:
        rival = min(rivals, key=rivals.get)
        if rivals[rival] < margin:
            unsure = (
                f"{what}: {rival} explains y almost as well as {best} "
                f"({rivals[rival]:.1f} nats apart, under {margin:.1f}); the choice may be wrong"
            )
    return best, relative, unsure


# ---------------------------------------------------------------- blur
def blur_candidates() -> list[tuple[str, float]]:
    return (
        [("gaussian", w) for w in GAUSSIAN_WIDTHS]
        + [("box", float(w)) for w in BOX_WIDTHS]
        + [(f"motion-{axis}", float(n)) for axis in "hv" for n in MOTION_LENGTHS]
    )


def _parse(name: str) -> tuple[str, float | None]:
    family, _, width = name.partition(":")
    return family, float(width) if width else None


def _same_blur(best: str, other: str) -> bool:
    """Whether `other` is a rival of `best` (another answer), not a neighbour on the same width grid."""
    (fa, wa), (fb, wb) = _parse(best), _parse(other)
    if fa != fb:
        return True
    return fa == "gaussian" and abs(wa - wb) > WIDTH_TOLERANCE + 1e-9


def _spectrum(y01, noise_sigma_255: float):
    """What both kernel criteria read from y: its gray DCT's powers (the mean dropped: every kernel keeps it),
    which coefficients they are, the DCT frequencies of each axis, and the channel mean's noise variance."""
    y = as_channels(y01)
    coefficients = _gray_dct(y)
    height, width = coefficients.shape
    keep = np.ones_like(coefficients, dtype=bool)
    keep[0, 0] = False
    wk, wl = np.pi * np.arange(height) / height, np.pi * np.arange(width) / width
    return coefficients[keep] ** 2, keep, wk, wl, (noise_sigma_255 / 255.0) ** 2 / y.shape[0]


def estimate_blur(
    y01, noise_sigma_255: float, candidates: list[tuple[str, float]] | None = None, margin: float | None = None
) -> KernelEstimate:
    """The blur kernel (family and width, of KernelBlur's) that best explains y's spectrum; y is the blurred photo."""
    power, keep, wk, wl, noise_var = _spectrum(y01, noise_sigma_255)
    height, width = keep.shape
    floor = 0.5 * (np.pi / max(height, width)) ** 2  # keeps the power law finite at the lowest frequency
    wk2 = np.broadcast_to(wk[:, None] ** 2 + floor, (height, width))
    wl2 = np.broadcast_to(wl[None, :] ** 2 + floor, (height, width))
    scores = {}
    for family, size in candidates or blur_candidates():
        (rt, rp), (ct, cp) = _blur_axes(family, float(size))
        transfer = _transfer(rt, rp, wk)[:, None] * _transfer(ct, cp, wl)[None, :]
        name = candidate_name(family, size)
        scores[name] = _fit(power, wk2[keep][None], wl2[keep][None], transfer[keep][None], noise_var)
    margin = UNSURE_NATS_PER_COEFFICIENT["blur"] * power.size if margin is None else margin
    best, relative, unsure = _choose(scores, _same_blur, "blur", margin)
    family, size = _parse(best)
    if family == "gaussian" and size in (GAUSSIAN_WIDTHS[0], GAUSSIAN_WIDTHS[-1]) and candidates is None:
        edge = "narrowest" if size == GAUSSIAN_WIDTHS[0] else "widest"
        unsure = "; ".join(
            filter(None, [unsure, f"blur: the {edge} Gaussian searched won; the true width may lie beyond it"])
        )
    return KernelEstimate(family, size, relative, unsure)


# ---------------------------------------------------------------- super-resolution
def estimate_sr_kernel(
    y01, factor: int, noise_sigma_255: float, kernels: tuple[str, ...] | None = None, margin: float | None = None
) -> KernelEstimate:
    """The downscaling kernel (of SR_KERNELS) that best explains the low-resolution y's aliased spectrum."""
    from adir_ops.physics.kernels import SR_KERNELS

    power, keep, wk, wl, noise_var = _spectrum(y01, noise_sigma_255)
    height, width = keep.shape
    # Each LR frequency w holds the HR frequencies |w + 2 pi j| / f, j = -f/2 .. f/2 - 1 (all of [0, pi]).
    shifts = np.arange(-(factor // 2), factor - factor // 2)
    uk = np.abs(wk[None, :] + 2 * np.pi * shifts[:, None]) / factor  # (aliases, H)
    ul = np.abs(wl[None, :] + 2 * np.pi * shifts[:, None]) / factor
    floor = 0.5 * (np.pi / (factor * max(height, width))) ** 2
    aliases = len(shifts) ** 2
    grid = (len(shifts), len(shifts), height, width)
    uk2 = np.broadcast_to(uk[:, None, :, None] ** 2 + floor, grid).reshape(aliases, height, width)[:, keep]
    ul2 = np.broadcast_to(ul[None, :, None, :] ** 2 + floor, grid).reshape(aliases, height, width)[:, keep]
    scores = {}
    for family in kernels or SR_KERNELS:
        taps, positions = _sr_axis(family, factor)
        tk, tl = _transfer(taps, positions, uk.ravel()), _transfer(taps, positions, ul.ravel())
        transfer = (tk.reshape(len(shifts), 1, height, 1) * tl.reshape(1, len(shifts), 1, width)).reshape(
            aliases, height, width
        )[:, keep]
        scores[family] = _fit(power, uk2, ul2, transfer, noise_var)
    margin = UNSURE_NATS_PER_COEFFICIENT["SR kernel"] * power.size if margin is None else margin
    best, relative, unsure = _choose(scores, lambda a, b: True, "SR kernel", margin)
    return KernelEstimate(best, None, relative, unsure)


# ---------------------------------------------------------------- one input
ESTIMATED_TASKS = ("sr4", "sr8", "deblur", "colorize")


def estimate_degradation(task: str, y01, noise_sigma_255: float | None = None) -> DegradationEstimate:
    """Noise and kernel of one degraded input y (C, H, W) in [0, 1] for `task`; a given noise level is kept."""
    from adir_ops.physics.tasks import scale_factor

    if task not in ESTIMATED_TASKS:
        raise ValueError(f"--degradation auto estimates {', '.join(ESTIMATED_TASKS)}; not {task}")
    y = as_channels(y01)
    window = None
    height, width = y.shape[1:]
    if max(height, width) > ESTIMATE_SIDE:
        top, left = max(0, (height - ESTIMATE_SIDE) // 2), max(0, (width - ESTIMATE_SIDE) // 2)
        window = (top, left, min(height, ESTIMATE_SIDE), min(width, ESTIMATE_SIDE))
        y = y[:, top : top + window[2], left : left + window[3]]
    if noise_sigma_255 is None:
        noise = estimate_noise_sigma(y)
    else:
        noise = NoiseEstimate(float(noise_sigma_255), "given")
    kernel = None
    if task == "deblur":
        kernel = estimate_blur(y, noise.sigma_255)
    elif task in ("sr4", "sr8"):
        kernel = estimate_sr_kernel(y, scale_factor(task), noise.sigma_255)
    return DegradationEstimate(task, noise, kernel, window)

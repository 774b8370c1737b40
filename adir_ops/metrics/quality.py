"""Image quality metrics (PSNR, SSIM, ST-LPIPS, NIQE, BRISQUE, MUSIQ, ...) through pyiqa, created lazily and per device."""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import torch

from adir_ops.metrics.strips import in_strips, metric_in_strips

# The paper's tables: PSNR/SSIM/LPIPS against the ground truth, MUSIQ (AVA and KonIQ
# heads) and NIQE without it.
PAPER_METRICS = ("psnr", "ssim", "lpips", "musiq-ava", "musiq-koniq", "niqe")

# pyiqa metrics that need no downloaded weights (checked by tests/adir_ops/metrics/test_quality.py):
# niqe, brisque and stlpips(-vgg) with parameter files from registry packages (adir_ops.metrics.files).
OFFLINE_METRICS = (
    "psnr",
    "psnry",
    "ssim",
    "ssimc",
    "ms_ssim",
    "cw_ssim",
    "fsim",
    "gmsd",
    "nlpd",
    "mad",
    "vif",
    "vsi",
    "stlpips",
    "stlpips-vgg",
    "piqe",
    "entropy",
    "niqe",
    "brisque",
)

# What a results table reports by default: fidelity (PSNR, SSIM), perceptual distance to
# the truth (ST-LPIPS, AlexNet) and no-reference quality (NIQE, BRISQUE, PIQE), all offline.
DEFAULT_REPORT_METRICS = ("psnr", "ssim", "niqe", "brisque", "piqe", "stlpips")

# Smallest image side a metric accepts: NIQE scores 96 x 96 blocks, SSIM slides an 11 x 11 window
# over the image without padding (pyiqa crashes below either).
_MIN_SIDE = {"niqe": 96, "ssim": 11, "ssimc": 11}
_MIN_SIDE_WHY = {"niqe": "it scores 96 px blocks", "ssim": "its 11 x 11 window", "ssimc": "its 11 x 11 window"}


# Our names where they differ from pyiqa's ("musiq" in pyiqa is the KonIQ-10k head).
_PYIQA_NAMES = {"musiq-koniq": "musiq"}

# Similarity indices that equal 1 for identical images and cannot exceed it. (pyiqa's
# score_range strings are not contracts: NLPD, stated "0, 1", exceeds 1 on noise.)
_AT_MOST_ONE = frozenset({"ssim", "ssimc", "ms_ssim", "cw_ssim", "fsim"})

_lock = threading.RLock()
_metrics: dict[tuple[str, str], torch.nn.Module] = {}
_missing: dict[str, MetricUnavailable] = {}


class MetricUnavailable(RuntimeError):
    """A metric that cannot be created here, with the reason and the weights file it needs."""

    def __init__(self, metric: str, reason: str, path: str | None = None, url: str | None = None):
        self.metric, self.reason, self.path, self.url = metric, reason, path, url
        super().__init__(f"metric {metric!r} unavailable: {reason}")


class MetricNotApplicable(ValueError):
    """A metric that has no value for this input (an image smaller than its window), with why; not a failure."""

    def __init__(self, metric: str, reason: str):
        self.metric, self.reason = metric, reason
        super().__init__(f"{metric} {reason}")


class _DownloadRefused(Exception):
    def __init__(self, url: str, path: str):
        super().__init__(url, path)
        self.url, self.path = url, str(path)


@contextlib.contextmanager
def _downloads_refused():
    """Make pyiqa's and torch.hub's downloaders raise instead of fetching.

    Both only call `download_url_to_file` when the file is not already in the cache, so
    this is exactly "weights present?" for every metric, with the URL and cache path that
    pyiqa itself computed, and it never touches the network (no retry can hang).
    The Hugging Face hub (timm/transformers backbones) is put in offline mode likewise.
    Held under the module lock: the patch is process-wide while a metric is built.
    """
    import pyiqa.utils.download_util as pyiqa_download
    import torch.hub

    def refuse(url, dst, *args, **kwargs):
        raise _DownloadRefused(url, dst)

    saved = (torch.hub.download_url_to_file, pyiqa_download.download_url_to_file)
    torch.hub.download_url_to_file = pyiqa_download.download_url_to_file = refuse
    try:
        import huggingface_hub.constants as hf_constants
    except ImportError:  # pragma: no cover - pyiqa depends on it
        hf_constants = None
    hf_offline = hf_constants.HF_HUB_OFFLINE if hf_constants else None
    if hf_constants:
        hf_constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        torch.hub.download_url_to_file, pyiqa_download.download_url_to_file = saved
        if hf_constants:
            hf_constants.HF_HUB_OFFLINE = hf_offline


def _pyiqa_name(name: str) -> str:
    import pyiqa

    pyiqa_name = _PYIQA_NAMES.get(name, name)
    if pyiqa_name not in pyiqa.list_models():
        raise ValueError(
            f"unknown metric {name!r}; use one of {', '.join(PAPER_METRICS)} or any name in pyiqa.list_models()"
        )
    return pyiqa_name


def is_full_reference(name: str) -> bool:
    """True when the metric compares against a reference image (PSNR, SSIM, LPIPS, ...)."""
    from pyiqa.default_model_configs import DEFAULT_CONFIGS

    return DEFAULT_CONFIGS[_pyiqa_name(name)]["metric_mode"] == "FR"


def get_metric(name: str, device: str | torch.device = "cpu", *, download: bool | None = None) -> torch.nn.Module:
    """The pyiqa metric `name` on `device`, created once per (name, device).

    Without `download` (default: the ADIR_METRICS_DOWNLOAD environment variable, off) a
    metric whose weights are not in the cache raises MetricUnavailable naming the file and
    URL; with it, pyiqa downloads them (use on machines with network). NIQE, BRISQUE and
    ST-LPIPS never download: their files come from registry packages (adir_ops.metrics.files),
    and a missing package is reported with the `pip install` that provides it.
    """
    if download is None:
        download = os.environ.get("ADIR_METRICS_DOWNLOAD", "") not in ("", "0", "false", "False")
    pyiqa_name = _pyiqa_name(name)
    key = (name, str(torch.device(device)))
    with _lock:
        if key in _metrics:
            return _metrics[key]
        known = _missing.get(name)
        # Retry only when the file it lacked has appeared (or downloading is now allowed).
        if known is not None and not download and not (known.path and os.path.exists(known.path)):
            raise MetricUnavailable(known.metric, known.reason, known.path, known.url)
        import pyiqa

        try:
            options = _packaged_options(name, pyiqa_name, download)
            # pyiqa prints "Loading pretrained model ..." to stdout: keep stdout for results.
            with (
                contextlib.nullcontext() if download else _downloads_refused(),
                contextlib.redirect_stdout(sys.stderr),
            ):
                metric = pyiqa.create_metric(pyiqa_name, device=torch.device(device), **options)
            _check_constants(name, pyiqa_name, metric)
        except MetricUnavailable as err:
            _missing[name] = err
            raise
        except _DownloadRefused as refused:
            err = MetricUnavailable(
                name,
                f"needs the weights file {refused.path} (download {refused.url} to that path, "
                "or set ADIR_METRICS_DOWNLOAD=1 / download=True on a machine with network; "
                "a metric may need more than one file: check again after placing this one)",
                path=refused.path,
                url=refused.url,
            )
            _missing[name] = err
            raise err from None
        except Exception as failure:
            detail = " ".join(str(failure).split())[:300]
            err = MetricUnavailable(name, f"pyiqa could not create it: {type(failure).__name__}: {detail}")
            _missing[name] = err
            raise err from failure
        _missing.pop(name, None)
        metric.eval()
        _metrics[key] = metric
        return metric


def _packaged_options(name: str, pyiqa_name: str, download: bool) -> dict:
    """pretrained_model_path from a registry package for NIQE, BRISQUE and ST-LPIPS ({} for the others).

    When the package is missing, downloading (if allowed) falls back to pyiqa's own file.
    """
    from adir_ops.metrics import files as metric_files

    if pyiqa_name not in metric_files.FILES:
        return {}
    try:
        return {"pretrained_model_path": str(metric_files.metric_file(pyiqa_name))}
    except metric_files.MetricFileUnavailable as err:
        if download:
            return {}
        raise MetricUnavailable(name, err.reason) from None


def _check_constants(name: str, pyiqa_name: str, metric: torch.nn.Module) -> None:
    """pyiqa hard-codes BRISQUE's SVR gamma and rho: they must be those of the packaged support vectors."""
    if pyiqa_name != "brisque":
        return
    from adir_ops.metrics.files import BRISQUE_GAMMA, BRISQUE_RHO

    net = metric.net
    if (getattr(net, "gamma", None), getattr(net, "rho", None)) != (BRISQUE_GAMMA, BRISQUE_RHO):
        raise MetricUnavailable(
            name,
            f"this pyiqa's BRISQUE uses gamma {getattr(net, 'gamma', None)}, rho {getattr(net, 'rho', None)}; "
            f"the packaged support vectors need {BRISQUE_GAMMA}, {BRISQUE_RHO}",
        )


def lower_is_better(name: str) -> bool:
    """True for distances (LPIPS, NIQE, GMSD, ...), False for scores (PSNR, SSIM, MUSIQ)."""
    from pyiqa.default_model_configs import DEFAULT_CONFIGS

    return bool(DEFAULT_CONFIGS[_pyiqa_name(name)].get("lower_better", False))


def clear_cache() -> None:
    """Forget created metrics and recorded unavailability (e.g. after changing TORCH_HOME)."""
    from adir_ops.metrics import files as metric_files

    with _lock:
        _metrics.clear()
        _missing.clear()
        metric_files.forget_checks()


def available_metrics(names=None, *, device: str | torch.device = "cpu") -> dict[str, str | None]:
    """For each metric (default: PAPER_METRICS + OFFLINE_METRICS): None if it works here, else why not."""
    status: dict[str, str | None] = {}
    for name in names if names is not None else dict.fromkeys(PAPER_METRICS + OFFLINE_METRICS):
        try:
            get_metric(name, device, download=False)
            status[name] = None
        except MetricUnavailable as err:
            status[name] = err.reason
    return status


def _check(images: torch.Tensor, what: str) -> torch.Tensor:
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"{what} must be a torch float tensor (n, 3, H, W) in [0, 1]; got {type(images).__name__}")
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"{what} must have shape (n, C, H, W) with C in {{1, 3}}; got {tuple(images.shape)}")
    if not images.is_floating_point():
        raise ValueError(f"{what} must be floats in [0, 1]; got dtype {images.dtype} (divide uint8 by 255)")
    if images.shape[0] == 0:
        raise ValueError(f"{what} is an empty batch (n = 0)")
    lo, hi = float(images.min()), float(images.max())
    if not (np.isfinite(lo) and np.isfinite(hi)) or lo < -1e-4 or hi > 1 + 1e-4:
        raise ValueError(
            f"{what} must be in [0, 1]; got values in [{lo:.4g}, {hi:.4g}] "
            "(map a [-1, 1] image with ((x + 1) / 2).clamp(0, 1))"
        )
    images = images.float().clamp(0, 1)
    return images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images


@dataclass
class QualityResult(Mapping):
    """Per-image values of the metrics that ran, and the ones that could not, with why.

    Behaves as a mapping name -> float64 array (n,) of the metrics that ran, so an
    unavailable metric can never show up as a number; `unavailable` maps its name to the
    reason (and the file it needs). `rows()` gives one dict per image for a results table.
    """

    values: dict[str, np.ndarray] = field(default_factory=dict)
    unavailable: dict[str, str] = field(default_factory=dict)
    # With compute_metrics(skip_inapplicable=True): metrics that have no value for these images, and why.
    not_applicable: dict[str, str] = field(default_factory=dict)

    def __getitem__(self, name: str) -> np.ndarray:
        if name in self.unavailable:
            raise KeyError(f"metric {name!r} is unavailable: {self.unavailable[name]}")
        if name in self.not_applicable:
            raise KeyError(f"metric {name!r} has no value here: {self.not_applicable[name]}")
        return self.values[name]

    def __iter__(self):
        return iter(self.values)

    def __len__(self) -> int:
        return len(self.values)

    def rows(self) -> list[dict[str, float]]:
        n = len(next(iter(self.values.values()))) if self.values else 0
        return [{name: float(v[i]) for name, v in self.values.items()} for i in range(n)]


def metric_values(name: str, x: torch.Tensor, reference: torch.Tensor | None = None, **kw) -> np.ndarray:
    """One metric on a batch: float64 (n,). Raises MetricUnavailable, or ValueError on bad input."""
    x = _check(x, "x")
    pyiqa_name = _PYIQA_NAMES.get(name, name)
    side = _MIN_SIDE.get(pyiqa_name)
    if side and min(x.shape[-2:]) < side:
        raise MetricNotApplicable(
            name,
            f"needs images of at least {side} x {side} px ({_MIN_SIDE_WHY[pyiqa_name]}); "
            f"got {x.shape[-2]} x {x.shape[-1]}",
        )
    if is_full_reference(name):
        if reference is None:
            raise ValueError(f"{name} is a full-reference metric: pass reference= (the ground truth) or drop it")
        reference = _check(reference, "reference")
        if reference.shape != x.shape:
            raise ValueError(f"reference shape {tuple(reference.shape)} differs from x shape {tuple(x.shape)}")
    metric = get_metric(name, x.device, **kw)
    try:
        with torch.no_grad():
            if is_full_reference(name) and in_strips(pyiqa_name, x):
                out = metric_in_strips(pyiqa_name, metric, x, reference.to(x.device))
            else:
                out = metric(x, reference.to(x.device)) if is_full_reference(name) else metric(x)
    except Exception as err:  # pyiqa signals bad inputs with asserts and shape errors
        raise ValueError(f"{name} failed on images of shape {tuple(x.shape)}: {type(err).__name__}: {err}") from err
    values = out.detach().double().cpu().numpy().reshape(-1)
    if values.shape != (x.shape[0],):
        raise RuntimeError(f"{name} returned {values.shape[0]} values for {x.shape[0]} images; it is not per-image")
    bad = np.flatnonzero(~np.isfinite(values))
    if bad.size:
        raise ValueError(
            f"{name} gave a non-finite value ({values[bad[0]]}) for image {int(bad[0])} of shape "
            f"{tuple(x.shape[1:])}; a too-small or constant image is the usual cause"
        )
    if name in _AT_MOST_ONE and values.max() > 1 + 1e-3:
        i = int(values.argmax())
        raise ValueError(
            f"{name} gave {values[i]:.6g} for image {i}, above 1, which it cannot reach by definition; "
            "the metric is degenerate on this input (a constant image is the usual cause)"
        )
    return values


def compute_metrics(
    x: torch.Tensor,
    reference: torch.Tensor | None = None,
    names=None,
    *,
    download: bool | None = None,
    skip_inapplicable: bool = False,
) -> QualityResult:
    """Per-image metrics of x (n, C, H, W) in [0, 1], full-reference ones against `reference`.

    names default to PAPER_METRICS (only the no-reference ones when reference is None).
    A metric whose weights are missing lands in `.unavailable` with the file it needs; with
    `skip_inapplicable`, one that has no value for these images (smaller than its window) lands
    in `.not_applicable` with why, else it raises MetricNotApplicable (a ValueError). Bad inputs
    and metric failures raise. PSNR is pyiqa's on the float image, capped at 80 dB for identical
    images (pyiqa adds eps = 1e-8 to the MSE).
    """
    if names is None:
        names = [n for n in PAPER_METRICS if reference is not None or not is_full_reference(n)]
    elif isinstance(names, str):
        names = [names]
    result = QualityResult()
    for name in names:
        try:
            result.values[name] = metric_values(name, x, reference, download=download)
        except MetricUnavailable as err:
            result.unavailable[name] = err.reason
        except MetricNotApplicable as err:
            if not skip_inapplicable:
                raise
            result.not_applicable[name] = err.reason
    return result

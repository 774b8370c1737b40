"""The degradation of a real photo estimated from y alone: noise level, blur kernel, SR kernel, and doubt said."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from adir_ops.physics.estimate import (
    blur_candidates,
    estimate_blur,
    estimate_degradation,
    estimate_noise_sigma,
    estimate_sr_kernel,
)
from adir_ops.physics.operators import make_operator, observe

PHOTOS = Path(__file__).resolve().parents[3] / "pipelines" / "photos" / "data"


def _photo(name: str = "gcompris-details-louvre-2007-02-24-c.jpg", box=(155, 6, 283, 134), side: int = 96):
    """A held-out-style crop of a committed photo: a box of it resized alone (Lanczos), (1, 3, side, side) in [0, 1]."""
    with Image.open(PHOTOS / name) as image:
        crop = image.convert("RGB").crop(box).resize((side, side), Image.LANCZOS)
    return torch.from_numpy(np.asarray(crop, dtype=np.float64) / 255).permute(2, 0, 1)[None]


def _degrade(x01, task, sigma_255, seed=0, **options):
    """y as a photo file holds it: the operator's measurement, white noise from an explicit generator, 8 bits."""
    y = make_operator(task, image_size=tuple(x01.shape[-2:]), noise_sigma_255=0, **options).A(x01 * 2 - 1)
    y = (y + 1) / 2 + sigma_255 / 255 * torch.randn(
        y.shape, generator=torch.Generator().manual_seed(seed), dtype=y.dtype
    )
    return (y.clamp(0, 1) * 255).round() / 255


@pytest.mark.parametrize("sigma", [0, 5, 10, 25])
def test_noise_level_of_a_photo_is_found_within_a_few_levels(sigma):
    y = _degrade(_photo(), "deblur", sigma, kernel="gaussian", width=1.0)
    found = estimate_noise_sigma(y)
    assert found.method == "pca" and found.unsure is None
    assert abs(found.sigma_255 - sigma) < 1.5, found  # 25: a little clipped at 0 and 1, so reads low


def test_a_sharp_photos_texture_is_not_read_as_noise():
    assert estimate_noise_sigma(_degrade(_photo(), "sr4", 0)).sigma_255 < 2.5


@pytest.mark.parametrize("width", [1.0, 1.6, 2.4])
def test_the_gaussian_blur_width_of_a_photo_is_found(width):
    y = _degrade(_photo(), "deblur", 2, kernel="gaussian", width=width)
    found = estimate_blur(y, estimate_noise_sigma(y).sigma_255)
    assert found.family == "gaussian" and abs(found.width - width) <= 0.3, found.name
    assert found.criteria[found.name] == 0 and min(found.criteria.values()) == 0


def test_a_motion_line_is_told_from_a_gaussian():
    y = _degrade(_photo(), "deblur", 2, kernel="motion-h", width=7)
    found = estimate_blur(y, estimate_noise_sigma(y).sigma_255)
    assert found.name == "motion-h:7"


@pytest.mark.parametrize("kernel", ["bicubic", "area", "gaussian"])
def test_the_sr_kernel_of_a_photo_is_found(kernel):
    """A 192 px photo (48 px measured) whose three kernels are told apart: docs/blind.md says how often that holds."""
    with Image.open(PHOTOS / "gcompris-fishes-fish2.jpg") as image:  # 320 x 213: its centre 192 x 192
        side = 192
        left, top = (image.width - side) // 2, (image.height - side) // 2
        x = _photo("gcompris-fishes-fish2.jpg", (left, top, left + side, top + side), side)
    y = _degrade(x, "sr4", 2, kernel=kernel)
    found = estimate_sr_kernel(y, 4, estimate_noise_sigma(y).sigma_255)
    assert found.family == kernel, found


def test_two_candidates_that_explain_y_alike_make_the_estimate_unsure():
    """A flat image carries no trace of its kernel: every candidate explains it, and the estimate says so."""
    flat = torch.full((1, 3, 32, 32), 0.5, dtype=torch.float64)
    flat = flat + 0.02 * torch.randn(flat.shape, generator=torch.Generator().manual_seed(3), dtype=flat.dtype)
    found = estimate_blur(flat, 5.1, candidates=[("gaussian", 1.0), ("box", 5.0)])
    assert found.unsure is not None and "explains y almost as well" in found.unsure
    sr = estimate_sr_kernel(flat[..., :8, :8], 4, 5.1)
    assert sr.unsure is not None


def test_the_estimate_builds_the_operator_and_records_itself():
    y = _degrade(_photo(), "deblur", 5, kernel="gaussian", width=1.6)
    seen = observe("deblur", y.float(), degraded=True, degradation="auto")
    estimate = seen.estimate
    assert (seen.operator.config["kernel"], seen.operator.config["width"]) == (
        estimate.kernel.family,
        estimate.kernel.width,
    )
    assert seen.operator.noise_sigma_255 == pytest.approx(estimate.noise.sigma_255, abs=0.01)
    record = json.loads(estimate.to_json())
    assert record["task"] == "deblur" and record["kernel"]["family"] == estimate.kernel.family
    assert set(record["kernel"]["criteria"]) == {f"{f}:{w:g}" for f, w in blur_candidates()}
    # A given noise level is kept; colorize estimates the noise only.
    given = estimate_degradation("deblur", y, noise_sigma_255=7.0)
    assert given.noise.sigma_255 == 7.0 and given.noise.method == "given"
    gray = observe("colorize", y.float(), degraded=True, degradation="auto")
    assert gray.estimate.kernel is None and gray.operator.noise_sigma_255 == pytest.approx(
        gray.estimate.noise.sigma_255, abs=0.01
    )
    with pytest.raises(ValueError, match="estimates sr4, sr8, deblur, colorize"):
        estimate_degradation("inpaint", y)


def test_a_large_photo_is_read_in_its_central_window(monkeypatch):
    import adir_ops.physics.estimate as estimate

    monkeypatch.setattr(estimate, "ESTIMATE_SIDE", 48)
    y = _degrade(_photo(side=96)[..., :, :80], "deblur", 5, kernel="gaussian", width=1.6)
    found = estimate_degradation("deblur", y)
    assert found.window == (24, 16, 48, 48) and json.loads(found.to_json())["window"] == [24, 16, 48, 48]
    assert abs(found.noise.sigma_255 - 5) < 1.5


@pytest.mark.parametrize("task", ["deblur", "sr4", "colorize"])
def test_images_with_no_photo_in_them_give_an_estimate_not_an_error(task):
    """Flat, pure noise, stripes: the fit stays bounded (a far-off simplex vertex once overflowed)."""
    rng = np.random.default_rng(0)
    stripes = np.tile((np.arange(32) % 2).astype(np.float64), (3, 32, 1))
    for y in (np.full((3, 32, 32), 0.5), rng.random((3, 32, 32)), stripes, stripes.transpose(0, 2, 1)):
        found = estimate_degradation(task, y)
        assert np.isfinite(found.noise.sigma_255)
    assert estimate_degradation(task, rng.random((3, 32, 32))).noise.sigma_255 == pytest.approx(255 / 12**0.5, rel=0.1)

"""Quality metrics: correct values, per-image results, and missing weights reported, never invented."""

import math
import re

import numpy as np
import pytest
import torch

from adir_ops import quality
from adir_ops.quality import MetricUnavailable, available_metrics, compute_metrics, metric_values


@pytest.fixture
def empty_weight_cache(tmp_path, monkeypatch):
    """Point torch.hub and pyiqa at an empty cache, so 'weights missing' holds on any machine."""
    import pyiqa.utils.download_util

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(pyiqa.utils.download_util, "DEFAULT_CACHE_DIR", str(tmp_path / "torch" / "hub" / "pyiqa"))
    monkeypatch.delenv("ADIR_METRICS_DOWNLOAD", raising=False)
    quality.clear_cache()
    yield tmp_path / "torch"
    quality.clear_cache()


def images(n=2, size=64, seed=0):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_psnr_of_identical_images_is_capped_at_80_db():
    x = images()
    np.testing.assert_allclose(compute_metrics(x, x, names=["psnr"])["psnr"], [80.0, 80.0], atol=1e-4)


def test_psnr_matches_the_formula_for_a_known_error():
    reference = torch.full((1, 3, 32, 32), 0.5)
    signs = torch.randint(0, 2, reference.shape, generator=torch.Generator().manual_seed(1)) * 2 - 1
    x = reference + 0.05 * signs  # every pixel off by exactly 0.05: MSE = 0.0025
    (value,) = metric_values("psnr", x, reference)
    assert value == pytest.approx(10 * math.log10(1 / 0.0025), abs=1e-4)


def test_ssim_is_one_for_identical_images_and_falls_with_noise():
    g = torch.Generator().manual_seed(2)
    clean = torch.nn.functional.avg_pool2d(images(1, 128, seed=3), 5, 1, 2)
    scores = [
        metric_values("ssim", (clean + s * torch.randn(clean.shape, generator=g)).clamp(0, 1), clean)[0]
        for s in (0.0, 0.05, 0.2)
    ]
    assert scores[0] == pytest.approx(1.0, abs=1e-5)
    assert 1.0 > scores[1] > scores[2] > 0.0


def test_values_are_per_image_and_do_not_depend_on_the_batch():
    x, ref = images(3, seed=4), images(3, seed=5)
    together = compute_metrics(x, ref, names=["psnr", "ssim", "piqe"])
    for i in range(3):
        alone = compute_metrics(x[i : i + 1], ref[i : i + 1], names=["psnr", "ssim", "piqe"])
        for name in ("psnr", "ssim", "piqe"):
            assert together[name].shape == (3,)
            assert together[name][i] == pytest.approx(alone[name][0], rel=1e-5)
    rows = together.rows()
    assert len(rows) == 3 and set(rows[0]) == {"psnr", "ssim", "piqe"}


def test_gray_images_are_scored_as_replicated_rgb():
    gray, ref = images(2, seed=6)[:, :1], images(2, seed=7)[:, :1]
    as_gray = compute_metrics(gray, ref, names=["psnr", "ssim"])
    as_rgb = compute_metrics(gray.repeat(1, 3, 1, 1), ref.repeat(1, 3, 1, 1), names=["psnr", "ssim"])
    for name in ("psnr", "ssim"):
        np.testing.assert_allclose(as_gray[name], as_rgb[name], rtol=1e-6)


def test_no_reference_metrics_run_without_a_reference():
    result = compute_metrics(images(seed=8), names=["piqe", "entropy"])
    assert set(result) == {"piqe", "entropy"} and not result.unavailable
    assert all(np.isfinite(v).all() for v in result.values.values())


def test_default_names_without_reference_are_the_papers_no_reference_metrics(empty_weight_cache):
    result = compute_metrics(images(seed=9))
    assert set(result.values) | set(result.unavailable) == {"musiq-ava", "musiq-koniq", "niqe"}


def test_missing_weights_are_reported_with_the_file_never_as_a_number(empty_weight_cache):
    x, ref = images(seed=10), images(seed=11)
    result = compute_metrics(x, ref, names=["psnr", "lpips", "musiq-ava", "musiq-koniq", "niqe"])
    assert list(result) == ["psnr"]
    needed = {
        "lpips": "alexnet-owt-7be5be79.pth",  # torchvision backbone first, then LPIPS_v0.1_alex
        "musiq-ava": "musiq_ava_ckpt-e8d3f067.pth",
        "musiq-koniq": "musiq_koniq_ckpt-e95806b9.pth",
        "niqe": "niqe_modelparameters.mat",
    }
    for name, filename in needed.items():
        reason = result.unavailable[name]
        assert str(empty_weight_cache) in reason and filename in reason and "https://" in reason, reason
        with pytest.raises(KeyError, match=re.escape(filename)):
            result[name]
    # Nothing was fetched: the cache holds no weights at all.
    assert not [p for p in empty_weight_cache.rglob("*") if p.is_file()]


def test_a_metric_is_retried_once_its_file_appears(empty_weight_cache):
    with pytest.raises(MetricUnavailable) as missing:
        quality.get_metric("niqe")
    assert missing.value.path.endswith("niqe_modelparameters.mat")
    with pytest.raises(MetricUnavailable, match="needs the weights file"):
        quality.get_metric("niqe")  # remembered, not rebuilt
    with open(missing.value.path, "wb") as f:
        f.write(b"not a matlab file")
    # Retried: now it fails on the file's content, and says so.
    with pytest.raises(MetricUnavailable, match="could not create it"):
        quality.get_metric("niqe")


def test_every_listed_offline_metric_works_without_downloads(empty_weight_cache):
    status = available_metrics(quality.OFFLINE_METRICS)
    assert status == dict.fromkeys(quality.OFFLINE_METRICS), status
    small = [n for n in quality.OFFLINE_METRICS if n != "ms_ssim"]
    result = compute_metrics(images(2, 64, seed=12), images(2, 64, seed=13), names=small)
    # MS-SSIM's five scales need more than 160 px.
    result.values.update(compute_metrics(images(1, 168, seed=12), images(1, 168, seed=13), names=["ms_ssim"]))
    assert not result.unavailable and set(result) == set(quality.OFFLINE_METRICS)
    for name, values in result.items():
        assert np.isfinite(values).all() and values.shape == ((1,) if name == "ms_ssim" else (2,)), name


def test_full_reference_metric_without_reference_is_an_error():
    with pytest.raises(ValueError, match="full-reference metric: pass reference="):
        compute_metrics(images(), names=["ssim"])


@pytest.mark.parametrize(
    "x, reference, message",
    [
        (images() * 2 - 1, images(), "((x + 1) / 2).clamp(0, 1)"),
        (images() * 255, images(), "must be in [0, 1]"),
        (images()[:, :2], None, "C in {1, 3}"),
        (images()[0], None, "shape (n, C, H, W)"),
        ((images() * 255).to(torch.uint8), None, "divide uint8 by 255"),
        (images(), images(2, 32), "reference shape (2, 3, 32, 32) differs from x shape (2, 3, 64, 64)"),
        (images()[:0], None, "empty batch"),
    ],
)
def test_bad_inputs_are_refused_with_the_fix(x, reference, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        compute_metrics(x, reference, names=["psnr"] if reference is not None else ["piqe"])


def test_degenerate_values_raise_instead_of_entering_a_table():
    flat = torch.full((1, 3, 64, 64), 0.5)
    # pyiqa's CW-SSIM returns 1e6 for two constant images: above 1.
    with pytest.raises(ValueError, match="above 1, which it cannot reach"):
        metric_values("cw_ssim", flat, flat)
    with pytest.raises(ValueError, match="ms_ssim failed on images of shape"):
        metric_values("ms_ssim", images(1, 64), images(1, 64))


def test_unknown_metric_names_the_known_ones():
    with pytest.raises(ValueError, match="unknown metric 'musiq-imagenet'.*psnr, ssim, lpips"):
        compute_metrics(images(), images(), names=["musiq-imagenet"])


def test_direction_of_metrics():
    assert quality.lower_is_better("lpips") and quality.lower_is_better("niqe")
    assert not quality.lower_is_better("psnr") and not quality.lower_is_better("musiq-koniq")

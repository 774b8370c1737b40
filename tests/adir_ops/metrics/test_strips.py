"""Large images' full-reference metrics in row strips give the whole image's value."""

import pytest
import torch

from adir_ops.metrics import quality, strips


@pytest.mark.parametrize("name", ["ssim", "psnr", "psnry"])
def test_a_metric_in_strips_equals_the_whole_image(monkeypatch, name):
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(1, 3, 120, 90, generator=generator)
    y = (x + 0.1 * torch.rand(1, 3, 120, 90, generator=generator)).clamp(0, 1)
    whole = quality.compute_metrics(x, y, names=[name])[name][0]
    monkeypatch.setattr(strips, "STRIP_PIXELS", 900 if name == "ssim" else 900 // 16)  # strips of 10 rows
    assert strips.in_strips(name, x)
    assert quality.compute_metrics(x, y, names=[name])[name][0] == pytest.approx(
        whole, abs=1e-4 if "psnr" in name else 1e-9
    )


def test_identical_images_keep_pyiqas_psnr_cap(monkeypatch):
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    whole = quality.compute_metrics(x, x, names=["psnr"])["psnr"][0]
    monkeypatch.setattr(strips, "STRIP_PIXELS", 640 // 16)
    assert quality.compute_metrics(x, x, names=["psnr"])["psnr"][0] == pytest.approx(whole, abs=1e-3)

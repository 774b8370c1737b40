"""The first example: one command degrades, adapts, reconstructs and records what it did."""

import json

import numpy as np
from PIL import Image

from adir_ops import example


def test_example_writes_images_and_metrics_with_config(tmp_path, capsys):
    out = tmp_path / "out"
    rc = example.main(
        [
            "--task",
            "sr4",
            "--prior",
            "tiny",
            "--tiny-resolution",
            "16",
            "--steps",
            "5",
            "--lora-steps",
            "3",
            "--neighbours",
            "chelsea",
            "coffee",
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    assert "RANDOM-WEIGHT prior" in capsys.readouterr().out  # says plainly what a tiny-prior run shows
    for name in ("ground_truth", "input", "naive", "no_adaptation", "adir"):
        assert (out / f"{name}.png").exists(), name
    assert Image.open(out / "input.png").size == (4, 4)  # sr4 of a 16 px ground truth
    assert Image.open(out / "adir.png").size == (16, 16)
    assert (out / "adapter.safetensors").stat().st_size > 0

    report = json.loads((out / "metrics.json").read_text())
    assert report["config"]["operator"]["name"] == "sr4"
    assert report["config"]["adaptation"]["steps"] == 3
    assert report["config"]["prior"]["source"] == "tiny"
    for arm in ("naive", "no_adaptation", "adir"):
        assert np.isfinite(report["metrics"][arm]["psnr"]) and 0 <= report["metrics"][arm]["ssim"] <= 1
    # Adaptation is the only difference between the two diffusion arms (same seed): the
    # adapted prior must actually change the reconstruction.
    no_adapt = np.asarray(Image.open(out / "no_adaptation.png"), dtype=np.int16)
    adapted = np.asarray(Image.open(out / "adir.png"), dtype=np.int16)
    assert np.abs(no_adapt - adapted).max() > 0


def test_with_no_prior_the_example_uses_the_embedded_default_prior(tmp_path, capsys):
    out = tmp_path / "out"
    assert (
        example.main(
            ["--task", "deblur", "--steps", "3", "--lora-steps", "1", "--neighbours", "coffee", "--out", str(out)]
        )
        == 0
    )
    assert "RANDOM-WEIGHT" not in capsys.readouterr().out
    report = json.loads((out / "metrics.json").read_text())
    assert report["config"]["prior"]["source"] == "default" and report["config"]["prior"]["kind"] == "denoiser"
    assert Image.open(out / "adir.png").size == (64, 64)  # the example's crop: the prior's adaptation size


def test_unknown_photo_is_a_clear_error(tmp_path):
    import pytest

    with pytest.raises(ValueError, match="skimage.data"):
        example.main(["--photo", "no-such-photo", "--out", str(tmp_path)])

"""bench/adaptation_effect.py: the probe of whether adaptation lowers the prior's loss on the unseen image runs and records it."""

import json
import math

import pytest

from bench import adaptation_effect

pytestmark = pytest.mark.timeout(300)


def test_probe_records_the_loss_curve_and_psnr_of_every_arm(tmp_path, capsys):
    out = tmp_path / "probe.json"
    argv = [
        "--assets",
        str(tmp_path / "assets"),
        "--images",
        "1",
        "--arms",
        "adir,random",
        "--lr",
        "1e-3",
        "--steps",
        "2",
        "--checkpoints",
        "2",
        "--timesteps",
        "20,150",  # inside the default (denoiser) prior's valid steps
        "--embedder",
        "offline-content",  # weight-free: the test embeds the whole packaged corpus
        "--noises",
        "1",
        "--sample",
        "--sample-steps",
        "3",
        "--json",
        str(out),
    ]
    assert adaptation_effect.main(argv) == 0
    records = json.loads(out.read_text())["records"]
    assert [r["arm"] for r in records] == ["adir", "random"]
    for r in records:
        before, after = r["curve"]["0"], r["curve"]["2"]
        assert math.isfinite(before) and math.isfinite(after) and before > 0
        assert after != before  # the LoRA is live inside the UNet while the curve is measured
        assert 0 <= r["adir_precision"] <= 1 and math.isfinite(r["psnr"]) and math.isfinite(r["psnr_baseline"])
    assert records[0]["curve"]["0"] == records[1]["curve"]["0"]  # one unadapted reference per image
    assert "mean relative change of L(x)" in capsys.readouterr().out

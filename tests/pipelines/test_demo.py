"""`adir demo --quick`: every real stage (packaged corpus, Ray Data index, Ray reconstruction in four modes, evaluate, report) with the committed default prior."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest
import yaml

from adir_ops.priors.weights import DEFAULT_PRIOR_NAME
from adir_ops.retrieval.embedding import DEFAULT_EMBEDDER
from pipelines import cli
from pipelines.demo import DemoConfig, pick_test_images

pytestmark = pytest.mark.timeout(900)  # a loaded 2-core machine has needed over 600 s


def _manifest(counts: dict[str, int]) -> dict:
    items = [
        {"set": "test", "source": s, "box": [0, 64 * i, 64, 64 * (i + 1)], "path": f"test/{s}-{i}.png"}
        for s, n in counts.items()
        for i in range(n)
    ]
    items.append({"set": "corpus", "source": "a", "box": [64, 0, 128, 64], "path": "corpus/a/x.png"})
    return {"items": items}


def test_test_images_are_spread_over_the_held_out_photos_and_along_their_bands():
    manifest = _manifest({"a": 8, "b": 4, "c": 1})
    picked = [it["path"] for it in pick_test_images(manifest, 3)]
    assert picked == ["test/a-4.png", "test/b-2.png", "test/c-0.png"]  # one per photo: the middle of each band
    picked = [it["path"] for it in pick_test_images(manifest, 6)]
    assert picked == ["test/a-1.png", "test/a-4.png", "test/a-6.png", "test/b-1.png", "test/b-3.png", "test/c-0.png"]
    assert len({it["path"] for it in pick_test_images(manifest, 13)}) == 13  # all of them, none twice
    with pytest.raises(ValueError, match="has 13 test images; ask for at most 13"):
        pick_test_images(manifest, 14)


def test_demo_configuration_errors_name_the_fix():
    with pytest.raises(ValueError, match="--images must be >= 1"):
        DemoConfig(images=0)
    with pytest.raises(ValueError, match="choose from sr4"):
        DemoConfig(tasks=("sr3",))


def test_quick_demo_runs_every_stage_and_a_rerun_resumes(ray_cluster, tmp_path, capsys):
    out = tmp_path / "demo-out"
    assert cli.main(["demo", "--quick", "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert f"report: {out / 'report.html'}" in printed
    assert "sr4: adir − baseline: psnr" in printed and "sr4: adir − random-nn: psnr" in printed

    split = json.loads((out / "assets" / "split.json").read_text())
    corpus = {it["path"] for it in split["items"] if it["set"] == "corpus"}
    tests = {Path(it["path"]).name: it for it in split["items"] if it["set"] == "test"}
    inputs = sorted(os.listdir(out / "inputs"))
    assert len(inputs) == 1 and inputs[0] in tests  # a held-out test image, which is not in the corpus
    index = json.loads((out / "index" / "manifest.json").read_text())
    assert index["count"] == len(corpus) and index["embedder"] == DEFAULT_EMBEDDER

    modes = ("baseline", "adir", "random-nn", "mse-nn")
    for mode in modes:
        run = out / "runs" / f"sr4-{mode}"
        config = yaml.safe_load((run / "config.yaml").read_text())
        assert (config["mode"], config["task"], config["prior"]) == (mode, "sr4", DEFAULT_PRIOR_NAME)
        assert (run / "images" / inputs[0]).is_file()
    with open(out / "per_image.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["arm"] for r in rows) == sorted(["plain", *modes])
    assert all(r["psnr"] and r["ssim"] and not r["error"] for r in rows)
    page = (out / "report.html").read_text()
    assert page.count("<img ") == 7 + 3 * 2  # input, plain, 4 arms, truth + K = 2 neighbours of 3 arms

    # A rerun reuses the index and every finished image: nothing is reconstructed again.
    pngs = {p: p.stat().st_mtime_ns for p in (out / "runs").glob("*/images/*.png")}
    assert cli.main(["demo", "--quick", "--out", str(out), "--no-progress"]) == 0
    assert {p: p.stat().st_mtime_ns for p in (out / "runs").glob("*/images/*.png")} == pngs

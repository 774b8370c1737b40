"""`adir evaluate`: statistics on hand-made results.parquet files with known numbers, and a real tiny reconstruction run end to end."""

from __future__ import annotations

import csv
import math
import os
import re

import numpy as np
import pytest
import yaml

from cluster.results import CONFIG_NAME, RESULTS_NAME, row_table
from pipelines import cli
from pipelines.evaluation import EvaluateConfig, evaluate, paired_difference, write

pytestmark = pytest.mark.timeout(300)

# Student's t quantile t(0.975, 3), from a printed table: independent of the code under test.
T_975_3 = 3.182446305284263


def _row(image_id, task, mode, psnr, ssim=0.5, error=None, seed=0, naive_psnr=20.0):
    row = {
        "image_id": image_id,
        "uri": f"/nonexistent/{image_id}.png",
        "name": image_id,
        "task": task,
        "mode": mode,
        "seed": seed,
        "image_seed": 1,
        "k": 4,
        "psnr": psnr,
        "ssim": ssim,
        "naive_psnr": naive_psnr,
        "output": None if error else f"images/{image_id}.png",
        "finished_at": "2026-01-01T00:00:00",
    }
    if error:
        row.update(error=error, stage="sampling", psnr=None, ssim=None)
    return row


def _write_run(folder, rows, **config):
    os.makedirs(folder, exist_ok=True)
    import pyarrow.parquet as pq

    pq.write_table(row_table(rows), os.path.join(folder, RESULTS_NAME))
    task, mode = rows[0]["task"], rows[0]["mode"]
    values = {
        "task": task,
        "mode": mode,
        "seed": 0,
        "prior": "p",
        "steps": 10,
        "k": 4,
        "lora_steps": 5,
        "index": "idx",
        "out": str(folder),
        "inputs": "/in",
        **config,
    }
    with open(os.path.join(folder, CONFIG_NAME), "w") as f:
        yaml.safe_dump(values, f)
    return str(folder)


def _read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture
def handmade(tmp_path):
    """sr4: baseline, adir and random-nn over images a..e with PSNRs chosen so the differences are known."""
    baseline = [
        _row("a", "sr4", "baseline", 20.0),
        _row("b", "sr4", "baseline", 21.0),
        _row("c", "sr4", "baseline", 22.0),
        _row("d", "sr4", "baseline", 23.0),
        _row("e", "sr4", "baseline", None, error="RuntimeError: boom"),
    ]
    # adir − baseline on a..d: 1, 2, 3, 4 (e failed in the baseline: not paired); f is adir's alone.
    adir = [
        _row("a", "sr4", "adir", 21.0, 0.6),
        _row("b", "sr4", "adir", 23.0, 0.7),
        _row("c", "sr4", "adir", 25.0, 0.8),
        _row("d", "sr4", "adir", 27.0, None),
        _row("e", "sr4", "adir", 30.0),
        _row("f", "sr4", "adir", 40.0),
    ]
    random_nn = [_row(i, "sr4", "random-nn", v) for i, v in zip("abcd", (20.5, 22.0, 22.5, 24.0))]
    runs = [
        _write_run(tmp_path / "base", baseline),
        _write_run(tmp_path / "adir", adir),
        _write_run(tmp_path / "rand", random_nn),
    ]
    return runs, tmp_path


def test_paired_difference_matches_a_manual_t_interval():
    p = paired_difference(
        {"a": 21.0, "b": 23.0, "c": 25.0, "d": 27.0, "x": 9.0}, {"a": 20.0, "b": 21.0, "c": 22.0, "d": 23.0, "y": 1.0}
    )
    d = np.array([1.0, 2.0, 3.0, 4.0])
    half = T_975_3 * d.std(ddof=1) / math.sqrt(4)
    assert p.n == 4 and p.mean == pytest.approx(2.5)
    assert p.std == pytest.approx(math.sqrt(5 / 3))
    assert (p.low, p.high) == (pytest.approx(2.5 - half), pytest.approx(2.5 + half))
    assert p.low == pytest.approx(0.4457, abs=1e-4) and p.high == pytest.approx(4.5543, abs=1e-4)
    assert 0 < p.p_value < 0.05
    # Too few pairs: a mean without an interval, never a NaN.
    one = paired_difference({"a": 2.0}, {"a": 1.5})
    assert (one.n, one.mean, one.low, one.high) == (1, 0.5, None, None)
    assert paired_difference({"a": 1.0}, {"b": 1.0}).n == 0


def test_tables_pair_only_common_good_images_and_say_n(handmade):
    runs, tmp = handmade
    ev = evaluate(EvaluateConfig(runs=tuple(runs), out=str(tmp / "eval"), metrics=(), report=False))
    write(ev)
    arms = {a.label: a for a in ev.arms}
    assert set(arms) == {"plain", "baseline", "adir", "random-nn"}
    summary = {(r["arm"], r["metric"]): r for r in _read_csv(tmp / "eval" / "summary.csv")}
    adir_psnr = summary[("adir", "psnr")]
    assert (int(adir_psnr["n"]), int(adir_psnr["images"])) == (6, 6)
    assert float(adir_psnr["mean"]) == pytest.approx(np.mean([21, 23, 25, 27, 30, 40]))
    assert float(adir_psnr["std"]) == pytest.approx(np.std([21, 23, 25, 27, 30, 40], ddof=1))
    # d's SSIM is missing: 5 of 6, and the mean is over those 5 (not a NaN).
    adir_ssim = summary[("adir", "ssim")]
    assert (int(adir_ssim["n"]), int(adir_ssim["images"])) == (5, 6)
    assert float(adir_ssim["mean"]) == pytest.approx(np.mean([0.6, 0.7, 0.8, 0.5, 0.5]))
    base = summary[("baseline", "psnr")]
    assert (int(base["n"]), int(base["images"]), int(base["errors"])) == (4, 4, 1)

    paired = {(r["arm"], r["reference"], r["metric"]): r for r in _read_csv(tmp / "eval" / "paired.csv")}
    vs_base = paired[("adir", "baseline", "psnr")]
    half = T_975_3 * np.std([1, 2, 3, 4], ddof=1) / 2
    assert int(vs_base["n"]) == 4 and float(vs_base["mean_difference"]) == pytest.approx(2.5)
    assert float(vs_base["ci_low"]) == pytest.approx(2.5 - half) and float(vs_base["ci_high"]) == pytest.approx(
        2.5 + half
    )
    vs_random = paired[("adir", "random-nn", "psnr")]  # 0.5, 1, 2.5, 3
    assert int(vs_random["n"]) == 4 and float(vs_random["mean_difference"]) == pytest.approx(1.75)
    assert ("random-nn", "baseline", "psnr") in paired
    # SSIM of adir vs baseline: d has no adir SSIM, so 3 pairs.
    assert int(paired[("adir", "baseline", "ssim")]["n"]) == 3

    md = (tmp / "eval" / "results.md").read_text()
    assert "+2.500 [+0.446, +4.554] (n=4)" in md  # adir − baseline PSNR, as in the manual interval above
    assert "n=5 of 6" in md  # adir's SSIM
    assert "boom" in md  # the error row is listed
    assert "no value in results.parquet" in md  # and why d's SSIM is missing
    for name in ("results.md", "summary.csv", "paired.csv", "per_image.csv"):
        assert "nan" not in (tmp / "eval" / name).read_text().lower()


def test_runs_differing_in_a_setting_are_separate_arms_each_paired_with_the_baseline(handmade):
    runs, tmp = handmade
    longer = [_row(i, "sr4", "adir", v) for i, v in zip("abcd", (22.0, 22.0, 22.0, 22.0))]
    runs = runs + [_write_run(tmp / "adir-long", longer, lora_steps=50)]
    ev = evaluate(EvaluateConfig(runs=tuple(runs), out=str(tmp / "eval"), metrics=(), report=False))
    titles = {c.title for c in ev.comparisons}
    assert {"adir lora_steps=5 − baseline", "adir lora_steps=50 − baseline"} <= titles
    long_vs_base = next(c for c in ev.comparisons if c.title == "adir lora_steps=50 − baseline")
    assert ev.paired(long_vs_base, "psnr").mean == pytest.approx(np.mean([2, 1, 0, -1]))
    # ADIR − random-NN: random-nn ran with lora_steps=5, so only that adir arm has a match; the other is noted.
    assert any("lora_steps=50" in n and "random-nn" in n for n in ev.notes)


def test_an_image_given_twice_with_the_same_settings_is_refused(handmade):
    runs, tmp = handmade
    with pytest.raises(ValueError, match="image 'a' of task sr4, mode adir is in both"):
        evaluate(
            EvaluateConfig(
                runs=(runs[1], _write_run(tmp / "again", [_row("a", "sr4", "adir", 1.0)])), metrics=(), report=False
            )
        )


def test_a_folder_without_results_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="has no results.parquet"):
        evaluate(EvaluateConfig(runs=(str(tmp_path),), metrics=(), report=False))


# ---------------------------------------------------------------------- a real tiny run
MODES = ("baseline", "adir", "random-nn", "mse-nn")
ODD_ID = 'odd <b>&"id'
_RUNS: dict[str, list[str]] = {}


def tiny_runs(tmp_path_factory, index: str) -> list[str]:
    """sr4 reconstructions of two pictures (one with an id full of HTML) in all four modes; built once per session."""
    if "runs" not in _RUNS:
        from cluster.config import ReconstructConfig
        from pipelines import reconstruct
        from tests.cluster.helpers import job_options, write_pictures

        root = tmp_path_factory.mktemp("evaluate-runs")
        inputs = root / "inputs"
        write_pictures(str(inputs), [("p0", 20), (ODD_ID, 21)])
        runs = []
        for mode in MODES:
            options = job_options(mode=mode, num_actors=1, lora_batch_size=2)
            config = ReconstructConfig(inputs=str(inputs), out=str(root / mode), index=index, **options)
            assert reconstruct.run(config, progress=False)["errors"] == 0
            runs.append(config.out)
        _RUNS["runs"] = runs
    return _RUNS["runs"]


@pytest.fixture(scope="module")
def real_runs(corpus_and_index, tmp_path_factory):
    return tiny_runs(tmp_path_factory, corpus_and_index[1])


def test_a_real_run_evaluates_every_arm_and_rebuilds_what_the_job_saw(real_runs, tmp_path):
    import torch

    from adir_ops.metrics.quality import compute_metrics
    from adir_storage import read_bytes
    from cluster.images import to_tensor01
    from index_builder.reader import decode_rgb

    out = tmp_path / "eval"
    assert (
        cli.main(
            [
                "evaluate",
                *real_runs,
                "--out",
                str(out),
                "--metrics",
                "gmsd,psnry",
                "--no-progress",
                "--report-neighbours",
                "2",
            ]
        )
        == 0
    )
    ev = evaluate(EvaluateConfig(runs=tuple(real_runs), out=str(out), metrics=("gmsd", "psnry"), report=False))
    assert [a.label for a in ev.arms] == ["plain", "baseline", "adir", "random-nn", "mse-nn"]
    assert {c.title for c in ev.comparisons} == {
        "adir − baseline",
        "random-nn − baseline",
        "mse-nn − baseline",
        "adir − random-nn",
        "adir − mse-nn",
    }
    plain = ev.arms[0]
    for image_id in ("p0", ODD_ID):
        row = plain.rows[image_id]
        views = ev.views.get(row, plain.runs[image_id])
        # The rebuilt plain restoration is the job's own: same PSNR as the worker recorded.
        rebuilt = compute_metrics(views.plain01[None], views.truth01[None], names=["psnr"])["psnr"][0]
        assert rebuilt == pytest.approx(row["naive_psnr"], abs=1e-4)
        assert plain.values[image_id]["psnr"] == row["naive_psnr"]
        assert views.input01.shape == (3, 8, 10)  # the x4 measurement of a 32x40 picture
    adir = ev.arms[2]
    row = adir.rows["p0"]
    png = to_tensor01(decode_rgb(read_bytes(os.path.join(adir.runs["p0"].url, row["output"]))))
    truth = ev.views.get(row, adir.runs["p0"]).truth01
    assert adir.values["p0"]["gmsd"] == pytest.approx(
        compute_metrics(png[None], truth[None], names=["gmsd"])["gmsd"][0]
    )
    assert adir.values["p0"]["psnr"] == row["psnr"] and not torch.equal(png, truth)
    per_image = _read_csv(out / "per_image.csv")
    assert len(per_image) == 5 * 2 and all(r["psnr"] and r["gmsd"] and r["psnry"] for r in per_image)
    paired = {(r["arm"], r["reference"], r["metric"]): r for r in _read_csv(out / "paired.csv")}
    assert int(paired[("adir", "baseline", "gmsd")]["n"]) == 2

    page = (out / "report.html").read_text()
    assert ODD_ID not in page and "odd &lt;b&gt;&amp;&quot;id" in page
    srcs = re.findall(r'<img src="([^"]+)"', page)
    # Per image: input, plain, 4 arms, truth; plus 2 neighbour thumbnails for each of 3 retrieving arms.
    assert len(srcs) == 2 * (7 + 3 * 2)
    from urllib.parse import unquote

    for src in srcs:
        path = out / unquote(src)
        assert path.resolve().is_relative_to(out.resolve()) and path.stat().st_size > 0

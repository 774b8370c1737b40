"""Resuming `adir reconstruct` into a run folder that was tampered with, moved, or holds images at the size limits.

Issue 21's cases 4, 5, 8, 9, 11, 15, 20, 21, 27 and 28, each tried as an attacker would on a
real finished run (tiny prior, baseline mode, real Ray). Each test here failed on 4447955.
"""

from __future__ import annotations

import hashlib
import os
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
from PIL import Image

from pipelines import cli
from tests.cluster.helpers import smooth_picture, write_pictures

pytestmark = pytest.mark.timeout(300)

BASELINE = ["--mode", "baseline", "--prior", "tiny:16", "--steps", "3", "--task", "sr4", "--seed", "3"]
NAMES = ("a", "b", "c")


def _reconstruct(inputs, out, *extra) -> list[str]:
    return ["reconstruct", "--inputs", str(inputs), "--out", str(out), *BASELINE, "--no-progress", *extra]


def _rows(out) -> dict[str, dict]:
    return {r["image_id"]: r for r in pq.read_table(out / "results.parquet").to_pylist()}


def _sha(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def _tree(folder) -> dict[str, str]:
    return {
        os.path.relpath(os.path.join(root, f), folder): _sha(os.path.join(root, f))
        for root, _, files in os.walk(folder)
        for f in files
    }


@pytest.fixture(scope="module")
def finished(ray_cluster, tmp_path_factory):
    """A finished 3-image run; tests rerun it in place (idempotent reruns) or in a moved copy of its folder."""
    root = tmp_path_factory.mktemp("finished")
    inputs = root / "inputs"
    write_pictures(str(inputs), [(n, i + 1) for i, n in enumerate(NAMES)], height=16, width=20)
    out = root / "run"
    assert cli.main(_reconstruct(inputs, out)) == 0
    return inputs, out, {n: _sha(out / "images" / f"{n}.png") for n in NAMES}


def _moved(finished, tmp_path):
    """The finished run folder moved elsewhere (case 27: its `out` in config.yaml is not where it lies now)."""
    inputs, out, pngs = finished
    moved = tmp_path / "moved"
    shutil.copytree(out, moved, symlinks=True)
    return inputs, moved, pngs


# ------------------------------------------------------------------ 27, 11: moved folder, a smaller rerun
def test_a_moved_run_folder_resumes_without_recomputing(finished, tmp_path, capsys):
    inputs, moved, pngs = _moved(finished, tmp_path)
    assert cli.main(_reconstruct(inputs, moved)) == 0
    assert "3 already done, 0 processed" in capsys.readouterr().out
    assert {n: _sha(moved / "images" / f"{n}.png") for n in NAMES} == pngs


def test_a_limit_1_rerun_keeps_every_finished_row(finished, capsys):
    inputs, out, _ = finished
    assert cli.main(_reconstruct(inputs, out, "--limit", "1")) == 0
    rows = _rows(out)
    assert sorted(rows) == list(NAMES) and all(r["error"] is None for r in rows.values())
    assert "(3 rows)" in capsys.readouterr().out


# ------------------------------------------------------------------ 15, 20: damaged outputs are redone
def test_a_truncated_png_is_redone(finished, tmp_path, capsys):
    inputs, moved, pngs = _moved(finished, tmp_path)
    data = (moved / "images" / "b.png").read_bytes()
    (moved / "images" / "b.png").write_bytes(data[: len(data) // 2])
    assert cli.main(_reconstruct(inputs, moved)) == 0
    captured = capsys.readouterr()
    assert "2 already done, 1 processed" in captured.out and "b.png" in captured.err
    assert _sha(moved / "images" / "b.png") == pngs["b"]  # the same seed gives the same bytes
    assert _rows(moved)["b"]["error"] is None


def test_a_corrupt_part_is_named_moved_aside_and_its_image_redone(finished, tmp_path, capsys):
    inputs, moved, pngs = _moved(finished, tmp_path)
    (moved / "results" / "a.parquet").write_bytes(os.urandom(200))
    assert cli.main(_reconstruct(inputs, moved)) == 0
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    [line] = [x for x in captured.err.splitlines() if "is corrupt" in x]  # named: no bare ArrowInvalid
    assert line.startswith("warning: ") and "results/a.parquet" in line and "results/corrupt/" in line
    assert "2 already done, 1 processed" in captured.out
    assert os.listdir(moved / "results" / "corrupt")  # kept for the user to look at, out of every listing
    assert sorted(_rows(moved)) == list(NAMES) and _rows(moved)["a"]["error"] is None
    assert _sha(moved / "images" / "a.png") == pngs["a"]


# ------------------------------------------------------------------ 4: links inside OUT
@pytest.mark.parametrize("folder", ["images", "results"])
def test_a_link_inside_out_is_refused_and_nothing_is_written_through_it(finished, tmp_path, capsys, folder):
    inputs, moved, _ = _moved(finished, tmp_path)
    victim = tmp_path / "victim"
    shutil.copytree(moved / folder, victim)
    (victim / "notes.txt").write_text("the user's own file")
    shutil.rmtree(moved / folder)
    (moved / folder).symlink_to(victim, target_is_directory=True)
    (victim / "a.parquet").unlink(missing_ok=True)  # something left to do: old code wrote through the link
    before = _tree(victim)
    assert cli.main(_reconstruct(inputs, moved)) == 2
    err = capsys.readouterr().err
    assert "symbolic link" in err and folder in err and "Traceback" not in err
    assert _tree(victim) == before


# ------------------------------------------------------------------ 9: the full resolved config is compared
def test_a_config_without_seed_is_the_default_seed_and_another_seed_is_refused(finished, tmp_path, capsys):
    inputs, moved, _ = _moved(finished, tmp_path)
    config = yaml.safe_load((moved / "config.yaml").read_text())
    del config["seed"]  # what an older version, or a hand edit, leaves
    (moved / "config.yaml").write_text(yaml.safe_dump(config))
    assert cli.main(_reconstruct(inputs, moved)) == 2  # --seed 3: the folder's rows say 0
    assert "seed: 0 -> 3" in capsys.readouterr().err


# ------------------------------------------------------------------ 5 and 8: credentials, changed pixels
def test_url_credentials_are_never_written_and_changed_inputs_are_recomputed(ray_cluster, tmp_path, capsys):
    inputs = tmp_path / "inputs"
    write_pictures(str(inputs), [("a", 1), ("b", 2)], height=16, width=20)
    secret = "PASS-s3cr3t-123"
    listing = tmp_path / "list.txt"
    # Port 9 (discard) on loopback: nothing listens, the read fails fast and its row quotes the URL.
    listing.write_text(f"{inputs / 'a.png'}\n{inputs / 'b.png'}\nhttp://admin:{secret}@127.0.0.1:9/x/remote.png\n")
    out = tmp_path / "out"
    assert cli.main(_reconstruct(listing, out)) == 0
    captured = capsys.readouterr()
    assert secret not in captured.out + captured.err
    for name, digest in _tree(out).items():
        assert secret.encode() not in (out / name).read_bytes(), name
    rows = _rows(out)
    assert rows["remote"]["error"] is not None and "admin" not in rows["remote"]["uri"]
    first = {n: _sha(out / "images" / f"{n}.png") for n in ("a", "b")}
    assert rows["a"]["input_sha256"] == _sha(inputs / "a.png")

    # Case 8: a's pixels change under the same name; b stays. The rerun recomputes a only.
    Image.fromarray(smooth_picture(99, 16, 20)).save(inputs / "a.png")
    b_row = (out / "results" / "b.parquet").stat().st_mtime_ns
    assert cli.main(_reconstruct(listing, out)) == 0
    assert "a.png" in capsys.readouterr().err  # said why it is redone
    rows = _rows(out)
    assert rows["a"]["input_sha256"] == _sha(inputs / "a.png") and rows["a"]["error"] is None
    assert _sha(out / "images" / "a.png") != first["a"]
    assert _sha(out / "images" / "b.png") == first["b"] and (out / "results" / "b.parquet").stat().st_mtime_ns == b_row


# ------------------------------------------------------------------ 21, 28: images at the size limits
@pytest.mark.parametrize(
    "task, height, width",
    [("sr4", 8, 8), ("sr4", 4, 200), ("colorize", 1, 1), ("sr8", 8, 16)],
)
def test_a_small_image_keeps_its_reconstruction_and_notes_the_metric_it_cannot_have(tmp_path, task, height, width):
    from cluster.config import ReconstructConfig
    from cluster.worker import ReconstructionWorker

    inputs = tmp_path / "inputs"
    write_pictures(str(inputs), [("small", 5)], height=height, width=width)
    config = ReconstructConfig(
        inputs=str(inputs), out=str(tmp_path / "out"), task=task, mode="baseline", prior="tiny:16", steps=2
    )
    row = ReconstructionWorker(config).process(
        {"image_id": "small", "uri": str(inputs / "small.png"), "name": "small"}
    )
    assert row["error"] is None, row["error"]
    assert row["psnr"] is not None and row["ssim"] is None
    assert "ssim" in row["metrics_note"] and "11" in row["metrics_note"]
    assert np.asarray(Image.open(tmp_path / "out" / "images" / "small.png")).shape == (height, width, 3)


def test_an_image_above_max_pixels_is_refused_at_read_with_its_size_and_the_fix(tmp_path):
    from cluster.config import ReconstructConfig
    from cluster.worker import ReconstructionWorker

    inputs = tmp_path / "inputs"
    write_pictures(str(inputs), [("big", 5)], height=40, width=60)
    config = ReconstructConfig(
        inputs=str(inputs),
        out=str(tmp_path / "out"),
        task="sr4",
        mode="baseline",
        prior="tiny:16",
        steps=2,
        max_pixels=2000,
    )
    row = ReconstructionWorker(config).process({"image_id": "big", "uri": str(inputs / "big.png"), "name": "big"})
    assert row["stage"] == "read"
    assert "60 x 40" in row["error"] and "2400" in row["error"] and "--max-pixels 2000" in row["error"]
    assert row["sampling_s"] is None  # refused before any work

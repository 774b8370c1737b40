"""`adir reconstruct` on a real local Ray cluster (2 CPUs, 2 actors), a tiny prior and a tiny index built by index_builder.

Covers the issue's list: every input exactly one row and (if good) one PNG; a killed actor;
an interrupted driver and its rerun; bad inputs and job-level errors; same output for an
image alone or in a dataset; a run entirely on an S3 server (moto).
"""

import os
import re
import signal

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
from PIL import Image

from cluster.results import finished_names
from pipelines import cli, reconstruct
from tests.cluster.helpers import smooth_picture, write_pictures

pytestmark = pytest.mark.timeout(300)

FAST = [
    "--prior",
    "tiny:16",
    "--steps",
    "4",
    "--lora-steps",
    "2",
    "--k",
    "3",
    "--seed",
    "7",
    "--task",
    "sr4",
    "--no-progress",
]


def _args(inputs, out, index, *extra):
    return ["reconstruct", "--inputs", str(inputs), "--out", str(out), "--index", index, *FAST, *extra]


def _config(argv):
    return reconstruct.resolve_config(cli.build_parser().parse_args(argv))


def _results(out):
    return pq.read_table(os.path.join(out, "results.parquet")).to_pylist()


@pytest.fixture(scope="module")
def dataset_run(corpus_and_index, tmp_path_factory):
    """One dataset run: 4 good pictures (one with an id that needs a safe name) and 2 bad files."""
    _, index = corpus_and_index
    root = tmp_path_factory.mktemp("dataset")
    inputs = root / "inputs"
    write_pictures(str(inputs), [("p0", 10), ("p1", 11), ("p2", 12), ("bad name é", 13)])
    (inputs / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    Image.fromarray(smooth_picture(14, 3, 3)).save(inputs / "tiny.png")
    job = root / "job.yaml"
    job.write_text(yaml.safe_dump({"lora_batch_size": 2, "steps": 99, "num_actors": 2}))
    out = root / "out"
    assert cli.main(_args(inputs, out, index, "--config", str(job))) == 0
    return inputs, str(out), index


def test_every_input_gets_exactly_one_row_and_every_good_one_a_png(dataset_run):
    _, out, _ = dataset_run
    rows = {r["image_id"]: r for r in _results(out)}
    assert len(_results(out)) == len(rows) == 6
    good = ["bad name é", "p0", "p1", "p2"]
    assert sorted(i for i, r in rows.items() if r["error"] is None) == good
    pngs = sorted(os.listdir(os.path.join(out, "images")))
    assert pngs == sorted(rows[i]["name"] + ".png" for i in good)
    assert (
        rows["bad name é"]["name"].startswith("bad_name-")
        and rows["bad name é"]["output"] == f"images/{rows['bad name é']['name']}.png"
    )
    assert rows["corrupt"]["stage"] == "read" and "DecodeError" in rows["corrupt"]["error"]
    assert rows["tiny"]["stage"] == "degrade" and "at least 4x4" in rows["tiny"]["error"]
    for image_id in good:
        row = rows[image_id]
        assert len(row["neighbour_ids"]) == 3 and row["psnr"] is not None and row["sampling_s"] > 0
        assert np.asarray(Image.open(os.path.join(out, row["output"]))).shape == (32, 40, 3)
    assert len({r["worker_pid"] for r in rows.values()}) == 2  # both actors worked
    # The resolved config: CLI flags over job.yaml over defaults, and the index's embedder.
    with open(os.path.join(out, "config.yaml")) as f:
        config = yaml.safe_load(f)
    assert (config["steps"], config["lora"]["batch_size"], config["embedder"]) == (4, 2, "offline-content")


def test_an_image_alone_gives_the_same_output_as_in_the_dataset_run(dataset_run, tmp_path):
    inputs, out, index = dataset_run
    alone = tmp_path / "alone"
    job = str(inputs.parent / "job.yaml")
    assert cli.main(_args(inputs / "p1.png", alone, index, "--num-actors", "1", "--config", job)) == 0
    [row] = _results(str(alone))
    assert row["image_id"] == "p1"
    with open(os.path.join(out, "images", "p1.png"), "rb") as f:
        assert (alone / "images" / "p1.png").read_bytes() == f.read()


def test_an_interrupted_job_resumes_without_redoing_finished_images(corpus_and_index, tmp_path):
    _, index = corpus_and_index
    inputs = tmp_path / "inputs"
    write_pictures(str(inputs), [(f"q{i}", 20 + i) for i in range(5)], height=16, width=20)
    out = tmp_path / "out"
    config = _config(_args(inputs, out, index, "--num-actors", "2"))
    seen = []

    def interrupt_after_two(row, pool):
        seen.append(row["image_id"])
        if len(seen) == 2:
            raise KeyboardInterrupt  # what Ctrl-C does to the driver

    with pytest.raises(KeyboardInterrupt):
        reconstruct.run(config, progress=False, on_row=interrupt_after_two)
    done = finished_names(str(out))
    assert set(seen) <= done and len(done) < 5
    before = {n: os.stat(out / "results" / f"{n}.parquet").st_mtime_ns for n in done}
    stamps = {n: pq.read_table(out / "results" / f"{n}.parquet").column("finished_at")[0].as_py() for n in done}
    # What a process killed mid-commit leaves behind (commit_bytes' temp names): the rerun cleans it.
    (out / "images" / ".q9.png.tmp-0123abcd").write_bytes(b"half a png")
    (out / "results" / ".q9.parquet.tmp-0123abcd").write_bytes(b"half a row")

    summary = reconstruct.run(config, progress=False)
    assert summary["skipped"] == len(done) and summary["processed"] == 5 - len(done)
    rows = _results(str(out))
    assert sorted(r["image_id"] for r in rows) == [f"q{i}" for i in range(5)]
    assert all(r["error"] is None for r in rows)
    for name in done:  # untouched: not recomputed, not rewritten
        assert os.stat(out / "results" / f"{name}.parquet").st_mtime_ns == before[name]
        assert next(r for r in rows if r["name"] == name)["finished_at"] == stamps[name]
    assert len(os.listdir(out / "images")) == 5


def test_a_killed_actor_does_not_lose_or_duplicate_images(corpus_and_index, tmp_path):
    _, index = corpus_and_index
    inputs = tmp_path / "inputs"
    write_pictures(str(inputs), [(f"k{i}", 30 + i) for i in range(5)], height=16, width=20)
    out = tmp_path / "out"
    killed = []

    def kill_a_busy_actor(row, pool):
        if not killed and pool.busy_pids():
            killed.append(pool.busy_pids()[0])
            os.kill(killed[0], signal.SIGKILL)

    summary = reconstruct.run(
        _config(_args(inputs, out, index, "--num-actors", "2")), progress=False, on_row=kill_a_busy_actor
    )
    assert killed and summary["processed"] == 5 and summary["errors"] == 0
    rows = _results(str(out))
    assert sorted(r["image_id"] for r in rows) == [f"k{i}" for i in range(5)]
    assert any(r["attempt"] == 2 for r in rows)
    assert sorted(os.listdir(out / "images")) == [f"k{i}.png" for i in range(5)]


def test_a_job_runs_entirely_on_object_storage(corpus_and_index, s3fs_fs, s3_bucket, s3_storage_options, tmp_path):
    _, index = corpus_and_index
    local_inputs = tmp_path / "inputs"
    write_pictures(str(local_inputs), [(f"s{i}", 40 + i) for i in range(3)], height=16, width=20)
    s3fs_fs.put(str(local_inputs), f"{s3_bucket}/inputs", recursive=True)
    s3fs_fs.put(index, f"{s3_bucket}/index", recursive=True)
    # The index's ids.parquet names local corpus files; readable from here, so neighbours still load.
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump({"storage_options": s3_storage_options, "num_actors": 2, "lora_batch_size": 2}))
    out = f"s3://{s3_bucket}/out"
    argv = _args(f"s3://{s3_bucket}/inputs", out, f"s3://{s3_bucket}/index", "--mode", "mse-nn", "--config", str(job))
    assert cli.main(argv) == 0
    s3fs_fs.invalidate_cache()
    with s3fs_fs.open(f"{s3_bucket}/out/results.parquet", "rb") as f:
        rows = pq.read_table(f).to_pylist()
    assert sorted(r["image_id"] for r in rows) == ["s0", "s1", "s2"] and all(r["error"] is None for r in rows)
    assert all(len(r["neighbour_ids"]) == 3 for r in rows)
    assert sorted(p.rsplit("/", 1)[-1] for p in s3fs_fs.ls(f"{s3_bucket}/out/images")) == [
        "s0.png",
        "s1.png",
        "s2.png",
    ]
    written = s3fs_fs.cat_file(f"{s3_bucket}/out/config.yaml").decode()
    assert s3_storage_options["secret"] not in written and s3_storage_options["key"] not in written


@pytest.mark.parametrize(
    "change, message",
    [
        (["--prior", "/no/such/prior"], "prior '/no/such/prior' does not exist"),
        (["--index", "/no/such/index"], "no finished index at /no/such/index"),
        (["--embedder", "openclip:adir-tiny"], "was built with offline-content"),
        (["--k", "50"], "holds 8 images"),
        (["--inputs", "EMPTY"], "no input images found"),
    ],
)
def test_job_level_problems_fail_before_any_work(corpus_and_index, tmp_path, capsys, change, message):
    _, index = corpus_and_index
    inputs = tmp_path / "inputs"
    write_pictures(str(inputs), [("p", 1)])
    (tmp_path / "EMPTY").mkdir()
    change = [str(tmp_path / "EMPTY") if c == "EMPTY" else c for c in change]
    out = tmp_path / "out"
    assert cli.main(_args(inputs, out, index, *change)) == 2  # a usage error: one line, no traceback
    err = capsys.readouterr().err
    assert re.search(message, err) and "Traceback" not in err
    assert not out.exists()  # nothing written, no actor started


def test_unknown_task_or_mode_is_refused_by_the_parser(capsys):
    for flag, value in (("--task", "sr3"), ("--mode", "knn")):
        with pytest.raises(SystemExit) as exc:
            cli.main(["reconstruct", "--inputs", "i", "--out", "o", flag, value])
        assert exc.value.code == 2 and value in capsys.readouterr().err


def test_a_rerun_with_other_result_options_is_refused(dataset_run, capsys):
    inputs, out, index = dataset_run
    assert cli.main(_args(inputs, out, index, "--seed", "8", "--config", str(inputs.parent / "job.yaml"))) == 2
    assert re.search(r"holds results of another job \(seed: 7 -> 8\)", capsys.readouterr().err)


def test_a_warm_started_job_in_embedding_order_records_where_each_adapter_began(corpus_and_index, tmp_path):
    _, index = corpus_and_index
    inputs = tmp_path / "in"
    write_pictures(str(inputs), [("w0", 30), ("w1", 31), ("w2", 30), ("w3", 32)])
    out = tmp_path / "out"
    extra = ["--adapter-cache", "--warm-start", "0.2", "--warm-start-steps", "1", "--order", "embedding"]
    assert cli.main(_args(inputs, out, index, "--num-actors", "1", *extra)) == 0
    rows = {r["image_id"]: r for r in _results(str(out))}
    assert all(r["error"] is None for r in rows.values())
    cold = {r["adapter_key"] for r in rows.values() if r["adapter_init"] is None and r["adapter_source"] == "trained"}
    assert cold, "the first image of the order trains cold"
    for r in rows.values():
        if r["adapter_init"] is not None:  # a warm start: from a cold adapter of this run, 1 step, overlap recorded
            assert r["adapter_init"] in cold and r["adapter_overlap"] >= 0.2
            assert r["lora_steps_run"] in (0, 1)
        else:
            assert r["lora_steps_run"] in (0, 2) and r["adapter_overlap"] is None
    # w0 and w2 are one picture: the same neighbours, so one of them reads the other's adapter.
    assert rows["w0"]["adapter_key"] == rows["w2"]["adapter_key"]
    assert sorted([rows["w0"]["adapter_source"], rows["w2"]["adapter_source"]]) == ["cache", "trained"]
    adapters = os.listdir(os.path.join(out, "adapters"))
    assert {f"{r['adapter_key']}.safetensors" for r in rows.values()} <= set(adapters)
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["adapter_cache"] is True and config["warm_start"] == 0.2 and config["order"] == "embedding"

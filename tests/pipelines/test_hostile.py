"""`adir reconstruct` and `adir evaluate` tried as a hostile user would: inputs that collide with our own
file names, output folders over the inputs, tampered run folders and configs, credentials, a second job.

Each test here failed on the main of issue 9 (data loss, unsafe or silently wrong results, tracebacks).
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time

import pyarrow.parquet as pq
import pytest
import yaml

from cluster.config import ReconstructConfig
from cluster.lease import LEASE_NAME
from pipelines import cli
from tests.cluster.helpers import smooth_picture, write_pictures

pytestmark = pytest.mark.timeout(300)

BASELINE = [
    "--mode",
    "baseline",
    "--prior",
    "tiny:16",
    "--steps",
    "3",
    "--task",
    "sr4",
    "--seed",
    "3",
    "--no-progress",
]


def _reconstruct(inputs, out, *extra) -> list[str]:
    return ["reconstruct", "--inputs", str(inputs), "--out", str(out), *BASELINE, *extra]


def _digests(folder) -> dict[str, str]:
    return {
        os.path.relpath(os.path.join(root, f), folder): hashlib.sha256(
            open(os.path.join(root, f), "rb").read()
        ).hexdigest()
        for root, _, files in os.walk(folder)
        for f in files
    }


def _error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


# ------------------------------------------------------------------ 1. OUT over the inputs
@pytest.mark.parametrize("where", ["parent", "same", "inside", "symlink"])
def test_an_out_that_is_contains_or_lies_in_the_inputs_is_refused_before_any_write(tmp_path, capsys, where):
    project = tmp_path / "proj"
    inputs = project / "images"
    write_pictures(str(inputs), [("a", 1), ("b", 2)])
    (tmp_path / "link").symlink_to(inputs)
    out = {"parent": project, "same": inputs, "inside": inputs / "out", "symlink": tmp_path / "link"}[where]
    before = _digests(project)
    assert cli.main(_reconstruct(inputs, out)) == 2
    err = _error_line(capsys)
    assert "--inputs" in err and str(inputs) in err and "outside" in err
    assert _digests(project) == before  # nothing written, nothing replaced


def test_an_out_holding_someone_elses_files_is_refused(tmp_path, capsys):
    inputs = tmp_path / "inputs"
    write_pictures(str(inputs), [("a", 1)])
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "config.yaml").write_text("database: production\n")
    assert cli.main(_reconstruct(inputs, foreign)) == 2
    assert "not from `adir reconstruct`" in _error_line(capsys)
    assert (foreign / "config.yaml").read_text() == "database: production\n"

    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    assert cli.main(_reconstruct(inputs, busy)) == 2
    assert "is not empty (notes.txt)" in _error_line(capsys)
    assert sorted(os.listdir(busy)) == ["notes.txt"]


def test_a_list_naming_a_file_inside_out_is_refused(tmp_path, capsys):
    out = tmp_path / "out"
    write_pictures(str(out), [("victim", 1)])
    (out / "config.yaml").write_text(
        yaml.safe_dump({"task": "sr4", "mode": "baseline", "inputs": "x", "out": str(out)})
    )
    listing = tmp_path / "list.txt"
    listing.write_text(f"{out / 'victim.png'}\n")
    assert cli.main(_reconstruct(listing, out)) == 2
    assert "lies inside --out" in _error_line(capsys)


# ------------------------------------------------------------------ 2, 3 and the non-UTF-8 name: one real job
@pytest.fixture(scope="module")
def colliding_run(ray_cluster, tmp_path_factory):
    """Inputs whose ids look like our commit temporaries and error rows, one with a non-UTF-8 name; run twice."""
    root = tmp_path_factory.mktemp("colliding")
    inputs = root / "inputs"
    write_pictures(str(inputs), [("x.tmp-1", 1), ("coll.error", 2), ("plain", 3)], height=16, width=20)
    (inputs / "coll.png").write_bytes(b"")  # an empty file: an error row
    raw = os.fsencode(str(inputs)) + b"/bad\xff.png"
    with open(raw, "wb") as f:
        f.write(open(inputs / "plain.png", "rb").read())
    out = root / "out"
    assert cli.main(_reconstruct(inputs, out)) == 0
    first = {n: os.stat(out / "images" / n).st_mtime_ns for n in os.listdir(out / "images")}
    assert cli.main(_reconstruct(inputs, out)) == 0
    return out, first


def test_an_input_named_like_a_commit_temporary_keeps_its_png_and_row(colliding_run):
    out, first = colliding_run
    rows = {r["image_id"]: r for r in pq.read_table(out / "results.parquet").to_pylist()}
    assert rows["x.tmp-1"]["error"] is None and (out / rows["x.tmp-1"]["output"]).is_file()
    # Not recomputed by the rerun either: its PNG is the first run's.
    assert os.stat(out / "images" / "x.tmp-1.png").st_mtime_ns == first["x.tmp-1.png"]


def test_an_id_ending_in_error_does_not_collide_with_another_images_error_row(colliding_run):
    out, first = colliding_run
    table = pq.read_table(out / "results.parquet").to_pylist()
    ids = [r["image_id"] for r in table]
    assert len(ids) == len(set(ids)) == 5
    rows = {r["image_id"]: r for r in table}
    assert rows["coll"]["error"] is not None and "empty file" in rows["coll"]["error"]
    assert rows["coll.error"]["error"] is None
    assert os.stat(out / "images" / "coll.error.png").st_mtime_ns == first["coll.error.png"]


def test_a_non_utf8_file_name_is_one_error_row_and_the_job_goes_on(colliding_run):
    out, _ = colliding_run
    rows = {r["image_id"]: r for r in pq.read_table(out / "results.parquet").to_pylist()}
    assert rows["bad\\xff"]["error"] is not None and "not valid UTF-8" in rows["bad\\xff"]["error"]
    assert rows["plain"]["error"] is None


def test_a_non_utf8_out_is_a_clear_error(tmp_path, capsys):
    inputs = tmp_path / "inputs"
    write_pictures(str(inputs), [("a", 1)])
    out = os.fsdecode(os.fsencode(str(tmp_path)) + b"/out\xff")
    assert cli.main(_reconstruct(inputs, out)) == 2
    assert "--out" in _error_line(capsys) and not os.path.exists(os.fsencode(out))


# ------------------------------------------------------------------ 7, 8, 9 and config crashes
@pytest.mark.parametrize(
    "values, message",
    [
        ({"degraded": "no"}, "--degraded must be true or false; got 'no'"),
        ({"seed": "abc"}, "--seed must be an integer; got 'abc'"),
        ({"guidance_scale": "x"}, "--guidance-scale must be a number; got 'x'"),
        ({"guidance_scale": float("nan")}, "--guidance-scale must be a finite number"),
        ({"storage_options": [1, 2]}, "--storage-options must be a mapping"),
        ({"k": 2.5}, "--k must be an integer"),
        ({1: 2}, "unknown reconstruct option"),
    ],
)
def test_mistyped_job_yaml_values_are_refused_with_their_name(tmp_path, capsys, values, message):
    inputs = tmp_path / "inputs"
    write_pictures(str(inputs), [("a", 1)])
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(values))
    argv = [
        "reconstruct",
        "--inputs",
        str(inputs),
        "--out",
        str(tmp_path / "out"),
        "--task",
        "sr4",
        "--mode",
        "baseline",
        "--prior",
        "tiny:16",
        "--config",
        str(job),
    ]
    assert cli.main(argv) == 2
    assert message in _error_line(capsys)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--guidance-scale", "nan"], "must be a finite number"),
        (["--guidance-scale", "inf"], "must be a finite number"),
        (["--limit", "0"], "--limit 0 selects no images"),
    ],
)
def test_non_finite_numbers_and_an_empty_limit_are_refused_up_front(tmp_path, capsys, flags, message):
    inputs = tmp_path / "inputs"
    write_pictures(str(inputs), [("a", 1)])
    assert cli.main(_reconstruct(inputs, tmp_path / "out", *flags)) == 2
    assert message in _error_line(capsys)


def test_debug_shows_the_traceback(tmp_path):
    with pytest.raises(ValueError, match="must be a finite number"):
        cli.main(_reconstruct(tmp_path, tmp_path / "out", "--guidance-scale", "nan", "--debug"))


def test_a_failing_metrics_stage_reports_its_own_error(tmp_path, monkeypatch):
    from cluster.worker import ReconstructionWorker

    inputs = tmp_path / "inputs"
    write_pictures(str(inputs), [("m", 1)], height=16, width=20)
    config = ReconstructConfig(
        inputs=str(inputs), out=str(tmp_path / "out"), task="sr4", mode="baseline", prior="tiny:16", steps=2
    )
    worker = ReconstructionWorker(config)

    def broken(*args, **kwargs):
        raise RuntimeError("metric backend exploded")

    monkeypatch.setattr(worker, "_metrics", broken)
    row = worker.process({"image_id": "m", "uri": str(inputs / "m.png"), "name": "m"})
    assert row["stage"] == "metrics" and "metric backend exploded" in row["error"]
    stored = pq.read_table(tmp_path / "out" / "results" / "m~error.parquet").to_pylist()[0]
    assert stored["stage"] == "metrics" and stored["metrics_s"] is not None


# ------------------------------------------------------------------ 5. credentials
SECRETS = {
    "connection_string": "DefaultEndpointsProtocol=https;AccountName=acct;AccountKey=c2VjcmV0LWtleQ==",
    "client_kwargs": {"endpoint_url": "http://127.0.0.1:9000", "headers": {"Authorization": "Bearer tok-123456"}},
    "auth": ["alice", "hunter2-password"],
    "anon": False,
}


def test_only_known_safe_storage_options_reach_the_config_and_the_repr(tmp_path):
    config = ReconstructConfig(
        inputs="s3://b/in", out=str(tmp_path / "out"), task="sr4", mode="baseline", storage_options=SECRETS
    )
    written = yaml.safe_dump(config.redacted()) + repr(config)
    for secret in ("c2VjcmV0LWtleQ", "tok-123456", "hunter2-password", "alice"):
        assert secret not in written
    options = config.redacted()["storage_options"]
    assert options["client_kwargs"]["endpoint_url"] == "http://127.0.0.1:9000" and options["anon"] is False
    assert options["connection_string"] == options["auth"] == options["client_kwargs"]["headers"] == "***"


def test_credentials_are_scrubbed_from_error_messages():
    from adir_storage import scrub

    text = scrub(
        "request failed: Authorization: Bearer tok-123456 for hunter2-password at http://127.0.0.1:9000", SECRETS
    )
    assert "tok-123456" not in text and "hunter2-password" not in text and "http://127.0.0.1:9000" in text


# ------------------------------------------------------------------ two jobs, one OUT
def test_a_second_job_on_a_live_out_is_refused_and_a_dead_ones_lease_is_taken_over(ray_cluster, tmp_path, capsys):
    inputs = tmp_path / "inputs"
    write_pictures(str(inputs), [("a", 1)], height=16, width=20)
    out = tmp_path / "out"
    out.mkdir()
    alive = {
        "job": "adir reconstruct",
        "host": socket.gethostname(),
        "pid": os.getppid(),
        "token": "other",
        "heartbeat": time.time(),
    }
    (out / LEASE_NAME).write_text(json.dumps(alive))
    assert cli.main(_reconstruct(inputs, out)) == 1
    err = _error_line(capsys)
    assert "being written by another job" in err and f"pid {os.getppid()}" in err
    assert not (out / "images").exists()

    # The same holder, its heartbeat long gone: taken over, and released at the end.
    (out / LEASE_NAME).write_text(json.dumps({**alive, "heartbeat": time.time() - 3600}))
    assert cli.main(_reconstruct(inputs, out)) == 0
    assert (out / "images" / "a.png").is_file() and not (out / LEASE_NAME).exists()


# ------------------------------------------------------------------ 4. a tampered run folder
def test_evaluate_refuses_outputs_and_inputs_outside_the_run(tmp_path):
    from cluster.results import row_table
    from pipelines.evaluation import EvaluateConfig, evaluate, write

    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"root:x:0:0:do-not-copy-me")
    inputs = tmp_path / "inputs"
    write_pictures(str(inputs), [("a", 1), ("b", 2)])
    run = tmp_path / "run"
    (run / "images").mkdir(parents=True)
    from PIL import Image

    Image.fromarray(smooth_picture(1, 32, 40)).save(run / "images" / "a.png")
    (run / "images" / "b.png").symlink_to(secret)
    rows = []
    for image_id, output, uri in (
        ("a", "../../secret.txt", str(inputs / "a.png")),
        ("b", "images/b.png", str(secret)),
        ("c", "images/a.png", str(secret)),
    ):
        rows.append(
            {
                "image_id": image_id,
                "uri": uri,
                "name": image_id,
                "task": "sr4",
                "mode": "adir",
                "seed": 0,
                "image_seed": 1,
                "k": 3,
                "output": output,
                "finished_at": "2026-01-01T00:00:00",
            }
        )
    pq.write_table(row_table(rows), run / "results.parquet")
    (run / "config.yaml").write_text(
        yaml.safe_dump({"task": "sr4", "mode": "adir", "inputs": str(inputs), "out": str(run), "seed": 0})
    )
    report = tmp_path / "report"
    ev = evaluate(EvaluateConfig(runs=(str(run),), out=str(report), metrics=("psnry",)))
    write(ev)
    for root, _, files in os.walk(report):
        for f in files:
            assert b"do-not-copy-me" not in open(os.path.join(root, f), "rb").read(), f
    reasons = " ".join(r for arm in ev.arms for m in arm.missing.values() for r in m)
    assert "outside its images/ folder" in reasons and "outside the run's --" in reasons

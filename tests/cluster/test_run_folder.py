"""The run folder's rules without Ray: OUT is ours and link-free, resume compares the full config and the
index build, done is keyed by content, corrupt parts are moved aside, rows are never dropped, no credential
is written. (End to end on real runs: tests/pipelines/test_resume_hostile.py.)"""

from __future__ import annotations

import hashlib
import io
import os

import pyarrow.parquet as pq
import pytest
import yaml
from PIL import Image

from adir_storage import FolderRefused
from cluster.config import ReconstructConfig
from cluster.results import merge_results, part_url, write_part
from cluster.run_folder import (
    INDEX_IDENTITY,
    check_previous_run,
    finished_work,
    png_complete,
    write_config,
)
from tests.cluster.helpers import smooth_picture


def _config(tmp_path, **values) -> ReconstructConfig:
    values = {
        "inputs": str(tmp_path / "in"),
        "out": str(tmp_path / "out"),
        "task": "sr4",
        "mode": "baseline",
        **values,
    }
    return ReconstructConfig(**values)


def _earlier_run(config: ReconstructConfig, **edit) -> None:
    """OUT as an earlier run left it: its config.yaml, with keys removed (None) or changed by `edit`."""
    write_config(config)
    path = os.path.join(config.out, "config.yaml")
    values = yaml.safe_load(open(path).read())
    for key, value in edit.items():
        values.pop(key) if value is None else values.__setitem__(key, value)
    open(path, "w").write(yaml.safe_dump(values))


# ------------------------------------------------------------------ 9, 27: what a resume compares
def test_a_key_an_older_config_lacks_counts_as_its_default(tmp_path):
    _earlier_run(_config(tmp_path, seed=0), seed=None, samples=None)
    check_previous_run(_config(tmp_path, seed=0))  # the defaults: resumes
    with pytest.raises(ValueError, match=r"seed: 0 -> 5"):
        check_previous_run(_config(tmp_path, seed=5))
    with pytest.raises(ValueError, match=r"samples: 1 -> 2"):
        check_previous_run(_config(tmp_path, samples=2))


def test_a_run_from_before_precision_resumes_in_the_fp32_it_ran(tmp_path):
    _earlier_run(_config(tmp_path), precision=None)
    with pytest.raises(ValueError, match=r"precision: 'fp32' -> 'auto'"):
        check_previous_run(_config(tmp_path))  # auto may be bf16 on this CPU: refused, not mixed
    check_previous_run(_config(tmp_path, precision="fp32"))
    _earlier_run(_config(tmp_path / "new"))  # a run that wrote its precision is compared as written
    check_previous_run(_config(tmp_path / "new"))


def test_an_older_configs_flat_lora_keys_are_compared(tmp_path):
    _earlier_run(_config(tmp_path), lora=None, lora_steps=5)
    with pytest.raises(ValueError, match=r"lora"):
        check_previous_run(_config(tmp_path))  # 400 steps now, 5 then
    check_previous_run(_config(tmp_path, lora={"steps": 5}))


def test_a_moved_folder_resumes_but_other_inputs_do_not(tmp_path):
    _earlier_run(_config(tmp_path), out="/somewhere/else/run")
    check_previous_run(_config(tmp_path))
    with pytest.raises(ValueError, match=r"inputs: "):
        check_previous_run(_config(tmp_path, inputs=str(tmp_path / "other")))


def _index(folder, count: int, created: str = "2026-01-01T00:00:00+00:00") -> str:
    from index_builder.manifest import Manifest

    manifest = Manifest("offline-content", 4, "ip", "Flat", count, (), created)
    manifest.write(str(folder))
    return str(folder)


def test_an_index_rebuilt_under_the_same_path_is_refused_and_a_moved_one_resumes(tmp_path):
    index = _index(tmp_path / "idx", 8)
    adir = dict(mode="adir", index=index, k=3)
    write_config(_config(tmp_path, **adir))
    assert yaml.safe_load(open(tmp_path / "out" / "config.yaml").read())[INDEX_IDENTITY]
    _index(tmp_path / "idx", 8, created="2026-02-02T00:00:00+00:00")  # the same build, written again
    check_previous_run(_config(tmp_path, **adir))
    moved = _index(tmp_path / "elsewhere", 8)
    check_previous_run(_config(tmp_path, **{**adir, "index": moved}))
    _index(tmp_path / "idx", 9)  # another corpus under the same path
    with pytest.raises(ValueError, match=r"index was rebuilt"):
        check_previous_run(_config(tmp_path, **adir))


# ------------------------------------------------------------------ 4: links inside OUT
@pytest.mark.parametrize("folder", ["images", "images/mean", "results", "results/corrupt", "adapters", "cache"])
def test_a_link_where_the_job_writes_is_refused(tmp_path, folder):
    config = _config(tmp_path)
    _earlier_run(config)
    victim = tmp_path / "victim"
    victim.mkdir()
    target = tmp_path / "out" / folder
    target.parent.mkdir(parents=True, exist_ok=True)
    target.symlink_to(victim, target_is_directory=True)
    with pytest.raises(FolderRefused, match=r"symbolic link"):
        check_previous_run(config)


def test_a_folder_that_is_not_ours_is_refused_and_a_new_one_is_claimed(tmp_path):
    foreign = tmp_path / "out"
    foreign.mkdir()
    (foreign / "config.yaml").write_text("database: production\n")
    with pytest.raises(ValueError, match=r"not from `adir reconstruct`"):
        check_previous_run(_config(tmp_path))
    (foreign / "config.yaml").unlink()
    check_previous_run(_config(tmp_path))
    assert sorted(os.listdir(foreign)) == ["adir-job.json"]


def test_results_without_their_config_yaml_are_not_resumed(tmp_path):
    config = _config(tmp_path)
    _earlier_run(config)
    check_previous_run(config)  # marks OUT as ours
    write_part(config.out, _row("a"))
    os.remove(tmp_path / "out" / "config.yaml")
    with pytest.raises(ValueError, match=r"holds results but no config.yaml"):
        check_previous_run(config)


# ------------------------------------------------------------------ 5: credentials
def test_url_credentials_reach_neither_config_yaml_nor_a_row(tmp_path):
    secret = "PASS-s3cr3t"
    config = _config(
        tmp_path,
        inputs=f"http://admin:{secret}@host/list.txt",
        prior=f"gd256:https://bob:{secret}@host/256x256.pt",
        degraded=True,
        reference=f"https://h/truth?sig={secret}",
    )
    write_config(config)
    written = (tmp_path / "out" / "config.yaml").read_text()
    assert secret not in written and "http://***@host/list.txt" in written
    check_previous_run(config)  # compared as written: the same job resumes
    row = dict(
        _row("r", uri=f"http://admin:{secret}@host/r.png"), error=f"ConnectionError: http://admin:{secret}@host"
    )
    write_part(config.out, row)
    data = open(part_url(config.out, "r", error=True), "rb").read()
    assert secret.encode() not in data


# ------------------------------------------------------------------ 8, 15, 20, 11: what is done
def _row(name, **extra):
    return {
        "image_id": name,
        "uri": f"/in/{name}.png",
        "name": name,
        "task": "sr4",
        "mode": "baseline",
        "seed": 0,
        "image_seed": 1,
        "k": 20,
        "finished_at": "now",
        **extra,
    }


def _png(seed: int) -> bytes:
    sink = io.BytesIO()
    Image.fromarray(smooth_picture(seed, 8, 8)).save(sink, format="PNG")
    return sink.getvalue()


def _finished(config, name: str, seed: int) -> dict:
    """A finished image: its input, its PNG, its row recording the input's hash."""
    os.makedirs(config.inputs, exist_ok=True)
    uri = os.path.join(config.inputs, f"{name}.png")
    open(uri, "wb").write(_png(seed))
    os.makedirs(os.path.join(config.out, "images"), exist_ok=True)
    open(os.path.join(config.out, "images", f"{name}.png"), "wb").write(_png(seed + 50))
    digest = hashlib.sha256(open(uri, "rb").read()).hexdigest()
    write_part(config.out, _row(name, uri=uri, output=f"images/{name}.png", input_sha256=digest))
    return {"image_id": name, "uri": uri, "name": name}


def test_done_is_keyed_by_content_and_a_cut_png_or_changed_input_is_redone(tmp_path):
    config = _config(tmp_path)
    items = [_finished(config, n, i) for i, n in enumerate(("same", "changed", "cut", "old", "linked"))]
    open(items[1]["uri"], "wb").write(_png(77))  # new pixels under the same name
    png = tmp_path / "out" / "images" / "cut.png"
    png.write_bytes(png.read_bytes()[:-20])
    write_part(config.out, _row("old", uri=items[3]["uri"], output="images/old.png"))  # no hash: an older version
    linked = tmp_path / "out" / "images" / "linked.png"
    linked.unlink()
    linked.symlink_to(tmp_path / "out" / "images" / "same.png")
    notes: list[str] = []
    assert finished_work(config, items, notes) == {"same"}
    text = "\n".join(notes)
    assert "changed.png: its input's bytes changed" in text and "images/cut.png is incomplete" in text
    assert "old.png: its row records no hash" in text
    for name in ("changed", "cut", "old", "linked"):  # stale outputs removed: the redo writes fresh ones
        assert not os.path.exists(part_url(config.out, name)) and not os.path.lexists(
            tmp_path / "out" / "images" / f"{name}.png"
        )
    assert os.path.exists(tmp_path / "out" / "images" / "same.png")


def test_png_complete_reads_the_signature_and_the_iend_chunk(tmp_path):
    path = tmp_path / "x.png"
    path.write_bytes(_png(1))
    assert png_complete(str(path))
    path.write_bytes(_png(1)[:-1])
    assert not png_complete(str(path)) and not png_complete(str(tmp_path / "missing.png"))


def test_corrupt_parts_are_moved_aside_and_every_good_row_is_kept(tmp_path):
    out = str(tmp_path)
    for name in ("a", "b", "c"):
        write_part(out, _row(name))
    (tmp_path / "results" / "b.parquet").write_bytes(os.urandom(200))
    (tmp_path / "results" / "c.parquet").write_bytes(open(part_url(out, "a"), "rb").read())  # a's row, not c's
    (tmp_path / "results" / "z.parquet").symlink_to("/dev/zero")  # would never end
    notes: list[str] = []
    table = merge_results(out, notes=notes)  # every part in OUT: not only this run's items
    assert table.column("image_id").to_pylist() == ["a"]
    assert pq.read_table(tmp_path / "results.parquet").num_rows == 1
    assert len(notes) == 3 and all("is corrupt" in n and "results/corrupt/" in n for n in notes)
    assert sorted(f.split(".")[0] for f in os.listdir(tmp_path / "results" / "corrupt")) == ["b", "c", "z"]
    assert sorted(os.listdir(tmp_path / "results")) == ["a.parquet", "corrupt"]

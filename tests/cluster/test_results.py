"""Output names cannot escape OUT; result parts decide what a rerun skips; the merged table has one row per image."""

import os

import pyarrow.parquet as pq
import pytest

from cluster.results import (
    RESULTS_SCHEMA,
    assign_names,
    finished_names,
    image_url,
    merge_results,
    part_url,
    safe_name,
    write_part,
)


@pytest.mark.parametrize(
    "image_id",
    [
        "../x",
        "../../etc/passwd",
        "/etc/passwd",
        "a/b",
        "a\\b",
        "..",
        ".",
        "",
        ".hidden",
        "name with spaces",
        "ünïcödé",
        "x" * 300,
        "a\x00b",
        "C:\\evil",
    ],
)
def test_unsafe_ids_get_a_plain_hashed_name_inside_the_folder(image_id, tmp_path):
    name = safe_name(image_id)
    assert name and len(name) <= 120
    assert set(name) <= set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")
    assert not name.startswith(".")
    out = str(tmp_path / "out")
    target = os.path.realpath(image_url(out, name))
    assert os.path.dirname(target) == os.path.realpath(os.path.join(out, "images"))
    assert safe_name(image_id) == name  # stable: a resumed job finds its own outputs


def test_plain_ids_keep_their_name_and_unsafe_ones_never_collide():
    assert safe_name("0801") == "0801" and safe_name("img_01-a.b") == "img_01-a.b"
    similar = ["a/b", "a_b-", "a b", "a\\b", "a:b", "a?b", "../a/b"]
    names = assign_names(similar + ["a_b"])
    assert len(set(names)) == len(names)
    assert names[-1] == "a_b"
    with pytest.raises(ValueError, match="same output name"):
        assign_names(["Photo", "photo"])  # would clash on case-folding file systems


def _row(name, error=None, **extra):
    row = {
        "image_id": name,
        "uri": f"/in/{name}.png",
        "name": name,
        "task": "sr4",
        "mode": "adir",
        "seed": 0,
        "image_seed": 1,
        "k": 3,
        "finished_at": "now",
        "error": error,
        "stage": "read" if error else None,
    }
    row.update(extra)
    return row


def test_done_means_row_and_png_and_a_success_replaces_the_error_row(tmp_path):
    out = str(tmp_path)
    write_part(out, _row("a", psnr=20.0))
    os.makedirs(tmp_path / "images")
    (tmp_path / "images" / "a.png").write_bytes(b"png")
    write_part(out, _row("b"))  # a row whose PNG is gone (deleted by hand): not done, redone
    (tmp_path / "images" / "c.png").write_bytes(b"png")  # PNG without row: killed before the row
    write_part(out, _row("d", error="DecodeError: truncated"))
    assert finished_names(out) == {"a"}
    assert os.path.exists(part_url(out, "d", error=True))

    os.makedirs(tmp_path / "images", exist_ok=True)
    (tmp_path / "images" / "d.png").write_bytes(b"png")
    write_part(out, _row("d", psnr=12.5))  # the retry succeeded
    assert not os.path.exists(part_url(out, "d", error=True))
    assert finished_names(out) == {"a", "d"}

    table = merge_results(out)  # every part in OUT, whatever this run listed
    assert table.schema == RESULTS_SCHEMA
    assert table.column("image_id").to_pylist() == ["a", "b", "d"]  # c has no row yet
    assert table.column("psnr").to_pylist() == [20.0, None, 12.5]
    assert pq.read_table(tmp_path / "results.parquet").num_rows == 3


def test_a_row_with_an_undeclared_column_is_refused(tmp_path):
    with pytest.raises(ValueError, match="does not declare"):
        write_part(str(tmp_path), _row("a", not_a_column=1))


def test_every_random_stream_and_stage_column_is_named_after_a_stage():
    from adir_ops.rng import STREAMS
    from cluster.results import PIPELINE_STAGES, RESULTS_SCHEMA, STAGES

    assert set(STREAMS) <= set(STAGES) and set(PIPELINE_STAGES) <= set(STAGES)
    assert [name[:-2] for name in RESULTS_SCHEMA.names if name.endswith("_s") and name != "total_s"] == list(STAGES)

"""A corpus and an index folder tried as an attacker would (issue 21): what the build reads, keeps and writes over.

Each test failed on 4447955: a FIFO or a /dev/zero link hung the build or ate the memory, a replaced
image kept its old embedding, a permuted ids.parquet returned wrong ids, and a folder holding the
user's own manifest.json was written over.
"""

from __future__ import annotations

import json
import os
import shutil

import pyarrow.parquet as pq
import pytest

from index_builder import BuildConfig, NeighborIndex, run_build
from index_builder.writer import embeddings_array, embeddings_url
from pipelines.cli import main
from tests.index_builder.corpus import normal_images

pytestmark = pytest.mark.timeout(240)
SMALL = dict(embedder="offline-content", shard_size=2, batch_size=4, read_batch_size=3, progress=False)
BUILD = ["--shard-size", "2", "--embedder", "offline-content"]


@pytest.fixture(scope="module")
def built(ray_cluster, tmp_path_factory):
    """5 images (3 shards of 2) indexed once; tests work on copies."""
    root = tmp_path_factory.mktemp("hostile")
    src = root / "corpus"
    src.mkdir()
    for name, data in normal_images(5, seed=21, size=(24, 32)).items():
        (src / name).write_bytes(data)
    out = root / "index"
    report = run_build(BuildConfig(str(src), str(out), **SMALL))
    assert report.count == 5
    return src, out


def _copy(built, tmp_path):
    src, out = built
    shutil.copytree(src, tmp_path / "corpus", symlinks=True)
    shutil.copytree(out, tmp_path / "index", symlinks=True)
    return tmp_path / "corpus", tmp_path / "index"


def _errors(out):
    return {
        r["image_id"]: r
        for name in sorted(os.listdir(out / "errors"))
        for r in pq.read_table(out / "errors" / name).to_pylist()
    }


# ---------------------------------------------------------------- 17, 18: what is read
def test_a_fifo_and_a_link_to_dev_zero_are_error_rows_without_being_opened(built, tmp_path):
    src, _ = _copy(built, tmp_path)
    os.mkfifo(src / "fifo.png")  # opening it would block forever
    os.symlink("/dev/zero", src / "zero.png")  # reading it would never end
    os.symlink(src / "img_000.jpg", src / "linked.jpg")  # a link to a regular file is an image
    out = tmp_path / "fresh"
    report = run_build(BuildConfig(str(src), str(out), **SMALL))
    assert report.count == 6 and report.errors == 2
    errors = _errors(out)
    assert sorted(errors) == ["fifo", "zero"]
    assert "is a FIFO" in errors["fifo"]["error"] and "is a device" in errors["zero"]["error"]
    assert {e["stage"] for e in errors.values()} == {"list"}


def test_bytes_read_per_image_are_capped_and_the_cap_is_configurable(built, tmp_path):
    src, _ = _copy(built, tmp_path)
    big = normal_images(1, seed=3, size=(200, 300))["img_000.jpg"]
    (src / "big.jpg").write_bytes(big)
    out = tmp_path / "capped"
    report = run_build(BuildConfig(str(src), str(out), max_input_bytes=len(big) - 1, **SMALL))
    assert report.count == 5
    [row] = _errors(out).values()
    assert row["image_id"] == "big" and row["stage"] == "read" and "the cap on bytes read per image" in row["error"]
    with pytest.raises(ValueError, match="max_input_bytes must be >= 1"):
        BuildConfig(str(src), str(out), max_input_bytes=0)


# ---------------------------------------------------------------- 10: content, not names
def test_an_image_whose_content_changed_is_embedded_again(built, tmp_path):
    src, _ = _copy(built, tmp_path)
    out = tmp_path / "own"
    run_build(BuildConfig(str(src), str(out), **SMALL))
    shard = embeddings_url(str(out), "shard-000000-size2")
    before = embeddings_array(pq.read_table(shard))
    other = normal_images(1, seed=99, size=(24, 32))["img_000.jpg"]
    (src / "img_001.jpg").write_bytes(other)  # same name, another picture
    report = run_build(BuildConfig(str(src), str(out), **SMALL))
    assert report.shards_written == [0] and report.shards_skipped == [1, 2] and report.index_built
    after = embeddings_array(pq.read_table(shard))
    assert (after[0] == before[0]).all() and not (after[1] == before[1]).all()
    # Its new embedding is the index's: the new picture finds itself.
    ids, _, scores = NeighborIndex.open(str(out)).search(after[1:2], k=1)
    assert ids[0, 0] == "img_001" and scores[0, 0] > 0.999
    again = run_build(BuildConfig(str(src), str(out), **SMALL))  # unchanged since: nothing redone
    assert again.shards_written == [] and not again.index_built


# ---------------------------------------------------------------- 14: ids bound to vectors
def test_a_permuted_ids_parquet_is_refused_on_open_and_a_rebuild_repairs_it(built, tmp_path, capsys):
    src, out = _copy(built, tmp_path)
    table = pq.read_table(out / "ids.parquet")
    pq.write_table(table.take(list(range(table.num_rows))[::-1]), out / "ids.parquet")
    with pytest.raises(ValueError, match="ids.parquet does not match the index built with it; rebuild"):
        NeighborIndex.open(str(out))
    assert main(["index", "query", str(out), str(src / "img_002.jpg")]) == 2
    assert "does not match the index built with it" in capsys.readouterr().err
    assert main(["index", "build", str(src), str(out), *BUILD]) == 0
    assert "index of 5 vectors written" in capsys.readouterr().out
    assert main(["index", "query", str(out), str(src / "img_002.jpg"), "-k", "1"]) == 0
    assert capsys.readouterr().out.splitlines()[1].split()[2] == "img_002"


def test_an_index_from_before_the_ids_checksum_still_opens(built, tmp_path):
    _, out = _copy(built, tmp_path)
    data = json.loads((out / "manifest.json").read_text())
    del data["ids_sha256"]
    (out / "manifest.json").write_text(json.dumps(data))
    assert len(NeighborIndex.open(str(out))) == 5


# ---------------------------------------------------------------- 2, 3: whose folder it is
def test_a_folder_holding_the_users_files_is_refused_and_left_as_it_was(built, tmp_path, capsys):
    src, _ = built
    users = tmp_path / "userfolder"
    users.mkdir()
    (users / "manifest.json").write_text('{"title": "my photo notes"}')
    assert main(["index", "build", str(src), str(users), *BUILD]) == 2
    err = capsys.readouterr().err
    assert "is not empty (manifest.json)" in err and "Choose an empty or new" in err
    assert os.listdir(users) == ["manifest.json"] and "my photo notes" in (users / "manifest.json").read_text()
    (users / "manifest.json").unlink()
    (users / "notes.txt").write_text("mine")
    assert main(["index", "build", str(src), str(users), *BUILD]) == 2
    assert os.listdir(users) == ["notes.txt"]


def test_an_index_from_before_folder_markers_resumes_and_links_inside_are_refused(built, tmp_path, capsys):
    src, out = built[0], _copy(built, tmp_path)[1]  # the same corpus: the shards are done
    (out / "adir-job.json").unlink()  # built by an older version: our manifest says it is ours
    assert main(["index", "build", str(src), str(out), *BUILD]) == 0
    assert "3 already done" in capsys.readouterr().out and (out / "adir-job.json").is_file()
    elsewhere = tmp_path / "elsewhere"
    shutil.move(out / "errors", elsewhere) if (out / "errors").exists() else elsewhere.mkdir()
    os.symlink(elsewhere, out / "errors")
    assert main(["index", "build", str(src), str(out), *BUILD]) == 2
    assert "is a symbolic link" in capsys.readouterr().err


def test_a_list_files_images_are_stamped_by_content_and_a_fifo_in_it_is_rejected(tmp_path):
    from index_builder.sources import list_source, plan_shards

    for name, data in normal_images(2, seed=4, size=(24, 32)).items():
        (tmp_path / name).write_bytes(data)
    os.mkfifo(tmp_path / "pipe.jpg")
    listing_file = tmp_path / "list.txt"
    listing_file.write_text("\n".join(str(tmp_path / n) for n in ("img_000.jpg", "img_001.jpg", "pipe.jpg")))
    before = list_source(str(listing_file))
    assert before.image_ids == ("img_000", "img_001") and "is a FIFO" in before.rejected[0][2]
    (tmp_path / "img_001.jpg").write_bytes(normal_images(1, seed=8, size=(24, 32))["img_000.jpg"])
    after = list_source(str(listing_file))
    assert after.stamps[0] == before.stamps[0] and after.stamps[1] != before.stamps[1]
    assert plan_shards(after, 2)[0].fingerprint != plan_shards(before, 2)[0].fingerprint

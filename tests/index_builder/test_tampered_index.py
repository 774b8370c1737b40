"""An index folder is untrusted input: a garbage or foreign index.faiss, a tampered manifest, odd file names,
and query paths that are not images. Each case gives a clear error or is repaired by a rebuild.

Each test here failed on the main of issue 9 (a traceback, a silent "up to date", or a dead job).
"""

from __future__ import annotations

import json
import os
import shutil

import pyarrow.parquet as pq
import pytest

from index_builder import NeighborIndex
from index_builder.faiss_index import read_index_header, verify_index
from index_builder.manifest import Manifest
from pipelines.cli import main
from tests.index_builder.corpus import normal_images

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def built(ray_cluster, tmp_path_factory):
    """A 6-image corpus, one of them with a non-UTF-8 file name, indexed through the CLI."""
    root = tmp_path_factory.mktemp("tampered")
    src = root / "corpus"
    src.mkdir()
    images = normal_images(6, seed=5, size=(32, 40))
    for name, data in images.items():
        (src / name).write_bytes(data)
    with open(os.fsencode(str(src)) + b"/caf\xe9.jpg", "wb") as f:  # latin-1 "café": not UTF-8
        f.write(images["img_000.jpg"])
    out = root / "index"
    assert main(["index", "build", str(src), str(out), "--shard-size", "4", "--embedder", "offline-content"]) == 0
    return src, out


def _copy(built, tmp_path):
    src, out = built
    copy = tmp_path / "index"
    shutil.copytree(out, copy)
    return src, copy


def test_a_non_utf8_file_name_becomes_one_error_row_and_the_build_goes_on(built):
    _, out = built
    manifest = Manifest.read(str(out))
    assert manifest.count == 6 and manifest.errors == 1
    errors = [r for f in os.listdir(out / "errors") for r in pq.read_table(out / "errors" / f).to_pylist()]
    assert [e["image_id"] for e in errors] == ["caf\\xe9"] and "not valid UTF-8" in errors[0]["error"]


def test_a_garbage_index_file_is_rebuilt_not_reported_up_to_date(built, tmp_path, capsys):
    src, out = _copy(built, tmp_path)
    (out / "index.faiss").write_bytes(os.urandom(4096))
    assert main(["index", "build", str(src), str(out), "--shard-size", "4", "--embedder", "offline-content"]) == 0
    printed = capsys.readouterr()
    assert "index of 6 vectors written" in printed.out and "does not match its manifest" in printed.err
    verify_index(str(out), Manifest.read(str(out)), full=True)
    # An intact index stays up to date (the check does not always rebuild).
    assert main(["index", "build", str(src), str(out), "--shard-size", "4", "--embedder", "offline-content"]) == 0
    assert "already up to date" in capsys.readouterr().out


def test_a_manifest_with_an_unknown_key_is_a_clear_error_and_a_rebuild_repairs_it(built, tmp_path, capsys):
    src, out = _copy(built, tmp_path)
    data = json.loads((out / "manifest.json").read_text())
    (out / "manifest.json").write_text(json.dumps({**data, "surprise": 1}))
    assert main(["index", "info", str(out)]) == 2
    assert "unknown key(s) ['surprise']" in capsys.readouterr().err
    data["dim"] = "68"
    (out / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match="dim must be an integer"):
        Manifest.read(str(out))
    assert main(["index", "build", str(src), str(out), "--shard-size", "4", "--embedder", "offline-content"]) == 0
    assert Manifest.read(str(out)).dim == 68


def test_an_index_file_of_another_encoder_is_refused_at_open_and_before_a_job(built, tmp_path, capsys):
    import faiss
    import numpy as np

    from tests.cluster.helpers import write_pictures

    src, out = _copy(built, tmp_path)
    foreign = faiss.IndexFlatIP(64)
    foreign.add(np.eye(6, 64, dtype=np.float32))
    faiss.write_index(foreign, str(out / "index.faiss"))
    assert read_index_header(str(out))[1:] == (64, 6)
    with pytest.raises(ValueError, match="dim 64 but its manifest says offline-content \\(dim 68\\)"):
        NeighborIndex.open(str(out))
    inputs = tmp_path / "inputs"
    write_pictures(str(inputs), [("a", 1)])
    argv = [
        "reconstruct",
        "--inputs",
        str(inputs),
        "--out",
        str(tmp_path / "out"),
        "--index",
        str(out),
        "--task",
        "sr4",
        "--prior",
        "tiny:16",
        "--k",
        "2",
        "--no-progress",
    ]
    assert main(argv) == 2
    assert "from another build" in capsys.readouterr().err and not (tmp_path / "out").exists()


@pytest.mark.parametrize("garbage", [b"", b"IxFI", os.urandom(64)])
def test_a_garbage_index_at_query_time_is_a_clear_error(built, tmp_path, capsys, garbage):
    src, out = _copy(built, tmp_path)
    (out / "index.faiss").write_bytes(garbage)
    assert main(["index", "query", str(out), str(src / "img_001.jpg")]) == 2
    err = capsys.readouterr().err
    assert "rebuild" in err and "Traceback" not in err


def test_query_paths_that_are_not_images_are_clear_errors(built, tmp_path, capsys):
    _, out = built
    (tmp_path / "dir.png").mkdir()
    (tmp_path / "loop.png").symlink_to(tmp_path / "loop.png")
    (tmp_path / "text.png").write_text("not an image")
    for name, message in (
        ("dir.png", "is a folder"),
        ("loop.png", "cannot be read"),
        ("text.png", "not a readable image"),
        ("missing.png", "does not exist"),
    ):
        assert main(["index", "query", str(out), str(tmp_path / name)]) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, err


def test_a_bogus_index_factory_is_refused_before_any_image_is_embedded(ray_cluster, built, tmp_path, capsys):
    src, _ = built
    out = tmp_path / "index"
    assert (
        main(
            [
                "index",
                "build",
                str(src),
                str(out),
                "--index-factory",
                "NoSuchIndex,PQ999",
                "--embedder",
                "offline-content",
            ]
        )
        == 2
    )
    assert "FAISS cannot build index factory 'NoSuchIndex,PQ999'" in capsys.readouterr().err
    assert not (out / "embeddings").exists()  # refused before the pipeline ran, not after it embedded everything


def test_limit_zero_says_what_happened(tmp_path, capsys):
    assert main(["index", "build", str(tmp_path), str(tmp_path / "out"), "--limit", "0"]) == 2
    assert "--limit 0 selects no images" in capsys.readouterr().err

"""`adir index build | info | query` on a local folder, through the real command-line entry point."""

from __future__ import annotations

import pytest

from pipelines.cli import main
from tests.index_builder.corpus import normal_images

pytestmark = pytest.mark.timeout(300)


def test_build_info_query_on_a_local_folder(ray_cluster, tmp_path, capsys):
    src = tmp_path / "photos"
    src.mkdir()
    for name, data in normal_images(7, seed=11, size=(32, 40)).items():
        (src / name).write_bytes(data)
    (src / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really")
    out = str(tmp_path / "idx")

    assert (
        main(
            [
                "index",
                "build",
                str(src),
                out,
                "--shard-size",
                "3",
                "--batch-size",
                "4",
                "--embedder",
                "offline-content",
            ]
        )
        == 0
    )
    printed = capsys.readouterr()
    assert "8 images in 3 shards" in printed.out and "index of 7 vectors written" in printed.out
    assert "img/s" in printed.out
    # The per-stage table: 8 rows read and written, the 7 decodable ones embedded.
    table = {line.split()[0]: line.split()[1:] for line in printed.out.splitlines() if line.split()}
    assert table["read/decode"][0] == "8" and table["embed"][0] == "7" and table["write"][0] == "8"
    assert "start-up" in printed.out

    assert main(["index", "info", out]) == 0
    info = capsys.readouterr().out
    assert "offline-content (dim 68)" in info and "7 indexed, 1 error rows" in info and "Flat" in info

    assert main(["index", "query", out, str(src / "img_004.jpg"), "-k", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4 and lines[1].split()[0] == "1" and lines[1].split()[2] == "img_004"

    assert main(["index", "query", out, str(src / "img_004.jpg"), "--embedder", "openclip:adir-tiny"]) == 2
    err = capsys.readouterr().err
    assert "built with offline-content (dim 68)" in err and "openclip:adir-tiny" in err

    assert main(["index", "info", str(tmp_path / "nothing")]) == 2
    assert "adir index build" in capsys.readouterr().err


def test_the_default_encoder_is_the_pretrained_one_and_finds_an_image_itself(ray_cluster, tmp_path, capsys):
    src = tmp_path / "photos"
    src.mkdir()
    for name, data in normal_images(4, seed=3, size=(48, 64)).items():
        (src / name).write_bytes(data)
    out = str(tmp_path / "idx")
    assert main(["index", "build", str(src), out]) == 0
    capsys.readouterr()
    assert main(["index", "info", out]) == 0
    assert "efficientnet-lite0 (dim 1280)" in capsys.readouterr().out
    assert main(["index", "query", out, str(src / "img_002.jpg"), "-k", "2"]) == 0
    assert capsys.readouterr().out.splitlines()[1].split()[2] == "img_002"

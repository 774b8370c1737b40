"""`adir reconstruct` with no --index: the embedded corpus's index is built once into the user's cache and reused."""

from __future__ import annotations

import os

import pytest

from pipelines.default_index import default_index_path, ensure_default_index

pytestmark = pytest.mark.timeout(600)

# The weight-free encoder and the first 24 corpus images: the mechanics of the cache, in seconds.
SMALL = dict(embedder="offline-content", limit=24, progress=False)


def test_built_once_into_the_cache_reused_and_rebuilt_when_broken(ray_cluster, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ADIR_CACHE_DIR", str(tmp_path / "cache"))
    path = ensure_default_index(**SMALL)
    assert path == str(default_index_path("offline-content", 24))
    assert path.startswith(str(tmp_path / "cache"))
    assert "building the embedded corpus's index once into" in capsys.readouterr().err
    index = os.path.join(path, "index.faiss")
    built = os.stat(index).st_mtime_ns

    assert ensure_default_index(**SMALL) == path  # reused: nothing rebuilt, nothing printed
    assert os.stat(index).st_mtime_ns == built
    assert capsys.readouterr().err == ""

    with open(index, "r+b") as f:  # a torn index file
        f.truncate(os.path.getsize(index) // 2)
    assert ensure_default_index(**SMALL) == path
    assert "unusable" in capsys.readouterr().err
    from index_builder.faiss_index import verify_index
    from index_builder.manifest import Manifest

    verify_index(path, Manifest.read(path), full=True)
    assert [n for n in os.listdir(os.path.dirname(path)) if n.startswith(".building")] == []


def test_the_cache_key_follows_the_encoder(tmp_path, monkeypatch):
    monkeypatch.setenv("ADIR_CACHE_DIR", str(tmp_path))
    assert default_index_path("offline-content") != default_index_path("efficientnet-lite0")
    assert default_index_path() == default_index_path("efficientnet-lite0")


def test_reconstruct_runs_adir_with_no_index_on_the_cached_default_and_reuses_it(ray_cluster, tmp_path, monkeypatch):
    """A newcomer's command: no --index. The embedded corpus's index is built once into the cache, then reused."""
    import pyarrow.parquet as pq
    import yaml

    from pipelines import cli
    from tests.cluster.helpers import write_pictures

    monkeypatch.setenv("ADIR_CACHE_DIR", str(tmp_path / "cache"))
    inputs = tmp_path / "photos"
    write_pictures(str(inputs), [("a", 1)])
    # The weight-free encoder keeps the corpus build to seconds; the default encoder differs only in its key.
    common = ["--task", "sr4", "--prior", "tiny:16", "--steps", "3", "--lora-steps", "2", "--k", "2"]
    args = ["reconstruct", "--inputs", str(inputs), *common, "--embedder", "offline-content", "--no-progress"]
    assert cli.main([*args, "--out", str(tmp_path / "out1")]) == 0
    index = default_index_path("offline-content")
    config = yaml.safe_load((tmp_path / "out1" / "config.yaml").read_text())
    assert config["mode"] == "adir" and config["index"] == str(index)
    row = pq.read_table(tmp_path / "out1" / "results.parquet").to_pylist()[0]
    assert row["error"] is None and len(row["neighbour_ids"]) == 2
    built = os.stat(index / "index.faiss").st_mtime_ns
    assert cli.main([*args, "--out", str(tmp_path / "out2")]) == 0
    assert os.stat(index / "index.faiss").st_mtime_ns == built  # reused, not rebuilt

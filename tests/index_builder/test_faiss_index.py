"""FAISS from shards: exact search equals brute force, factories train, and mismatched encoders are refused."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from adir_ops.retrieval.embedding import get_embedder
from index_builder import faiss_index
from index_builder.faiss_index import EXACT_UP_TO, check_factory, default_factory
from index_builder.index_query import NeighborIndex
from index_builder.job import BuildConfig, write_index
from index_builder.manifest import Manifest, ShardEntry
from index_builder.sources import Listing, plan_shards
from index_builder.writer import ShardWriter, embeddings_url, read_shard_footer
from tests.index_builder.corpus import smooth_image

APPROXIMATE_AT_1P7M = "IVF4096,Flat|nprobe=8"


def _write_corpus(out: str, vectors: np.ndarray, name: str, shard_size: int, factory: str = "Flat") -> list[str]:
    """Commit `vectors` as shards under out and build the index; return the ids in index order."""
    ids, entries = _commit_shards(out, vectors, name, shard_size)
    _build(out, entries, name, vectors.shape[1], shard_size, factory)
    return ids


def _build(out: str, entries, name: str, dim: int, shard_size: int, factory: str) -> tuple[int, bool]:
    """write_index over committed shards: (vectors, whether the index was (re)built)."""
    config = BuildConfig(
        source="mem://", out=out, embedder=name, index_factory=factory, shard_size=shard_size, train_size=2000
    )
    return write_index(config, tuple(entries), name, dim, errors=0)


def _commit_shards(out: str, vectors: np.ndarray, name: str, shard_size: int) -> tuple[list[str], list[ShardEntry]]:
    """Write `vectors` as committed shards under out; (ids in index order, their manifest entries)."""
    ids = tuple(f"im{i:04d}" for i in range(len(vectors)))
    shards = plan_shards(Listing(ids, tuple(f"mem://{i}.png" for i in ids)), shard_size)
    writer = ShardWriter(out, shards, name, vectors.shape[1])
    for shard in shards:
        pos = [ids.index(i) for i in shard.image_ids]
        n = len(pos)
        writer.add(
            {
                "image_id": np.array(shard.image_ids, dtype=object),
                "uri": np.array(shard.uris, dtype=object),
                "shard": np.full(n, shard.index),
                "embedding": vectors[pos].astype(np.float16),
                "width": np.ones(n, np.int32),
                "height": np.ones(n, np.int32),
                "stage": np.full(n, "", dtype=object),
                "error": np.full(n, "", dtype=object),
            }
        )
    entries = []
    for s in shards:
        record = read_shard_footer(embeddings_url(out, s.name))
        entries.append(ShardEntry(s.name, record["rows"], record["errors"], s.fingerprint))
    return list(ids), entries


@pytest.fixture(scope="module")
def lowpass_index(tmp_path_factory):
    embedder = get_embedder("offline-lowpass")
    rng = np.random.default_rng(0)
    images = np.stack([smooth_image(rng, 48, 48) for _ in range(60)])
    vectors = embedder.embed_images(torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255)
    out = str(tmp_path_factory.mktemp("lowpass") / "index")
    ids = _write_corpus(out, vectors, embedder.name, shard_size=16)
    return out, ids, vectors.astype(np.float16).astype(np.float32)


def test_flat_search_equals_brute_force_and_finds_itself_first(lowpass_index):
    out, ids, stored = lowpass_index
    index = NeighborIndex.open(out, embedder="offline-lowpass")
    assert (index.embedder_name, index.dim, len(index)) == ("offline-lowpass", 256, 60)
    queries = stored[[0, 17, 59]] + 0.05 * np.random.default_rng(1).standard_normal((3, 256)).astype(np.float32)
    got_ids, got_uris, got_scores = index.search(queries, k=10)
    brute = queries @ stored.T
    order = np.argsort(-brute, axis=1, kind="stable")[:, :10]
    assert got_ids.tolist() == [[ids[j] for j in row] for row in order]
    assert got_uris[0, 0] == f"mem://{got_ids[0, 0]}.png"
    np.testing.assert_allclose(got_scores, np.take_along_axis(brute, order, axis=1), rtol=1e-5, atol=1e-5)
    self_ids, _, _ = index.search(stored, k=1)
    assert self_ids[:, 0].tolist() == ids


def test_manifest_records_the_build(lowpass_index):
    out, _, _ = lowpass_index
    with open(f"{out}/manifest.json") as f:
        manifest = json.load(f)
    assert manifest["embedder"] == "offline-lowpass" and manifest["dim"] == 256
    assert manifest["metric"] == "inner_product" and manifest["factory"] == "Flat" and manifest["count"] == 60
    assert [s["rows"] for s in manifest["shards"]] == [16, 16, 16, 12]
    assert manifest["created"] and manifest["config"]["shard_size"] == 16
    assert Manifest.read(out).shards[0].name == "shard-000000-size16"


def test_a_different_embedder_is_refused_naming_both(lowpass_index):
    out, _, _ = lowpass_index
    tiny = get_embedder("openclip:adir-tiny")
    with pytest.raises(ValueError) as err:
        NeighborIndex.open(out, embedder=tiny)
    message = str(err.value)
    assert "offline-lowpass (dim 256)" in message and f"{tiny.name} (dim {tiny.dim})" in message
    index = NeighborIndex.open(out)
    with pytest.raises(ValueError, match="dim 256"):
        index.search(np.ones((1, tiny.dim), np.float32), k=3)
    with pytest.raises(ValueError, match="holds 60 images"):
        index.search(np.ones((1, 256), np.float32), k=61)


def _clustered(n: int, dim: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((8, dim))
    x = centres[rng.integers(0, 8, n)] + 0.3 * rng.standard_normal((n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize("factory,params", [("HNSW16", {"efSearch": 64}), ("IVF8,Flat", {"nprobe": 8})])
def test_factory_indexes_are_trained_and_agree_with_exact_search(tmp_path, factory, params):
    vectors = _clustered(400, 32, seed=3)
    out = str(tmp_path / "index")
    ids = _write_corpus(out, vectors, "test-vectors", shard_size=100, factory=factory)
    index = NeighborIndex.open(out, search_params=params)
    assert index.manifest.factory == factory and len(index) == 400
    stored = vectors.astype(np.float16).astype(np.float32)
    got, _, _ = index.search(stored[:20], k=10)
    exact = np.argsort(-(stored[:20] @ stored.T), axis=1)[:, :10]
    recall = np.mean([len(set(g) & {ids[j] for j in e}) / 10 for g, e in zip(got.tolist(), exact)])
    assert recall >= 0.9  # IVF with nprobe = all lists is exact; HNSW on 400 points nearly so


def test_untrainable_factory_names_the_problem(tmp_path):
    with pytest.raises(ValueError, match="could not be trained"):
        _write_corpus(
            str(tmp_path / "index"), _clustered(20, 16, seed=4), "test-vectors", shard_size=10, factory="IVF64,Flat"
        )


def test_default_factory_is_exact_up_to_the_threshold_and_approximate_above():
    assert default_factory(1, 512) == default_factory(EXACT_UP_TO, 512) == "Flat"
    for count, dim in ((EXACT_UP_TO + 1, 512), (1_700_000, 512), (EXACT_UP_TO + 1, 192), (500, 32)):
        approx = default_factory(count, dim, exact_up_to=min(count - 1, EXACT_UP_TO))
        assert approx != "Flat"
        check_factory(dim, approx)  # FAISS can build it, search settings included
    assert default_factory(1_700_000, 512) == APPROXIMATE_AT_1P7M  # the configuration docs/retrieval.md measured


def test_auto_builds_flat_for_a_small_corpus_records_the_choice_and_a_rerun_keeps_it(tmp_path):
    vectors = _clustered(60, 32, seed=6)
    out = str(tmp_path / "index")
    ids, entries = _commit_shards(out, vectors, "test-vectors", shard_size=25)
    assert _build(out, entries, "test-vectors", 32, 25, "auto") == (60, True)
    manifest = Manifest.read(out)
    assert manifest.factory == "Flat" and manifest.config["index_factory"] == "auto"
    assert manifest.config["factory_choice"] == "auto: count 60 -> Flat"
    assert _build(out, entries, "test-vectors", 32, 25, "auto") == (60, False)  # up to date: not rebuilt
    got, _, _ = NeighborIndex.open(out).search(vectors, k=1)
    assert got[:, 0].tolist() == ids


def test_auto_above_the_threshold_builds_an_approximate_index_that_finds_exact_neighbours(tmp_path, monkeypatch):
    monkeypatch.setattr(faiss_index, "EXACT_UP_TO", 300)
    vectors = _clustered(600, 32, seed=7)
    out = str(tmp_path / "index")
    ids, entries = _commit_shards(out, vectors, "test-vectors", shard_size=200)
    assert _build(out, entries, "test-vectors", 32, 200, "auto") == (600, True)
    manifest = Manifest.read(out)
    expected = default_factory(600, 32, exact_up_to=300)
    assert manifest.factory == expected != "Flat" and manifest.config["index_factory"] == "auto"
    assert manifest.config["factory_choice"] == f"auto: count 600 -> {expected}"
    index = NeighborIndex.open(out)  # no search_params: the settings the build stored in the file
    stored = vectors.astype(np.float16).astype(np.float32)
    got, _, _ = index.search(stored[:50], k=10)
    assert got[:, 0].tolist() == ids[:50]  # each corpus vector finds itself first
    exact = np.argsort(-(stored[:50] @ stored.T), axis=1)[:, :10]
    recall = np.mean([len(set(g) & {ids[j] for j in e}) / 10 for g, e in zip(got.tolist(), exact)])
    assert recall >= 0.95
    assert _build(out, entries, "test-vectors", 32, 200, "auto") == (600, False)  # resolved factory matches


def test_search_settings_in_the_factory_spec_are_stored_in_the_index_file(tmp_path):
    vectors = _clustered(400, 32, seed=8)
    out = str(tmp_path / "index")
    _write_corpus(out, vectors, "test-vectors", shard_size=100, factory="IVF8,PQ4,RFlat|nprobe=5,k_factor_rf=3")
    index = NeighborIndex.open(out).index
    assert index.k_factor == 3 and faiss_index._faiss().extract_index_ivf(index).nprobe == 5
    with pytest.raises(ValueError, match="cannot apply search setting"):
        check_factory(32, "HNSW16|nprobe=4")

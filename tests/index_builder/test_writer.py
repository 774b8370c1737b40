"""The shard writer: declared schema, commit when complete, footer-based resume checks, error rows."""

from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from index_builder.sources import Listing, plan_shards
from index_builder.writer import (
    ShardWriter,
    embedding_schema,
    embeddings_array,
    embeddings_url,
    errors_url,
    is_committed,
    read_shard_footer,
)

DIM = 8


def _listing(n: int) -> Listing:
    ids = tuple(f"id{i:02d}" for i in range(n))
    return Listing(ids, tuple(f"/data/{i}.jpg" for i in ids))


def _batch(shard, positions, vectors, bad=()):
    rows = len(positions)
    return {
        "image_id": np.array([shard.image_ids[p] for p in positions], dtype=object),
        "uri": np.array([shard.uris[p] for p in positions], dtype=object),
        "shard": np.full(rows, shard.index),
        "embedding": vectors[list(positions)].astype(np.float16),
        "width": np.full(rows, 30, dtype=np.int32),
        "height": np.full(rows, 20, dtype=np.int32),
        "stage": np.array(["decode" if p in bad else "" for p in positions], dtype=object),
        "error": np.array(["OSError: broken" if p in bad else "" for p in positions], dtype=object),
    }


def test_shard_is_committed_with_declared_schema_when_its_last_row_arrives(tmp_path):
    out = str(tmp_path / "out")
    shard = plan_shards(_listing(5), 5)[0]
    vectors = np.random.default_rng(0).standard_normal((5, DIM)).astype(np.float32)
    writer = ShardWriter(out, [shard], "enc", DIM)
    # Out of order, one row delivered twice, one bad image.
    assert writer.add(_batch(shard, [3, 1, 3], vectors, bad={1})) == []
    assert not os.path.exists(embeddings_url(out, shard.name))
    assert writer.add(_batch(shard, [4, 0, 2], vectors, bad={1})) == [0]
    table = pq.read_table(embeddings_url(out, shard.name))
    assert table.schema.remove_metadata() == embedding_schema(DIM)
    assert table.column("image_id").to_pylist() == ["id00", "id02", "id03", "id04"]
    np.testing.assert_array_equal(embeddings_array(table), vectors[[0, 2, 3, 4]].astype(np.float16).astype(np.float32))
    assert table.column("width").to_pylist() == [30] * 4
    errors = pq.read_table(errors_url(out, shard.name))
    assert errors.to_pylist() == [
        {"image_id": "id01", "uri": "/data/id01.jpg", "stage": "decode", "error": "OSError: broken"}
    ]
    assert [p for p in os.listdir(os.path.dirname(embeddings_url(out, shard.name))) if "tmp" in p] == []
    record = read_shard_footer(embeddings_url(out, shard.name))
    assert is_committed(record, shard, "enc", DIM)
    assert (record["rows"], record["errors"]) == (4, 1)


def test_footer_check_rejects_torn_foreign_and_changed_shards(tmp_path):
    out = str(tmp_path / "out")
    shard = plan_shards(_listing(3), 3)[0]
    writer = ShardWriter(out, [shard], "enc", DIM)
    writer.add(_batch(shard, [0, 1, 2], np.ones((3, DIM), np.float32)))
    url = embeddings_url(out, shard.name)
    record = read_shard_footer(url)
    assert not is_committed(record, shard, "other-encoder", DIM)
    changed = plan_shards(Listing(shard.image_ids, ("/elsewhere/a.jpg",) + shard.uris[1:]), 3)[0]
    assert not is_committed(record, changed, "enc", DIM)
    with open(url, "rb") as f:
        data = f.read()
    with open(url, "wb") as f:
        f.write(data[: len(data) - 20])  # torn write: footer gone
    assert read_shard_footer(url) is None
    pq.write_table(pa.table({"x": [1, 2, 3]}), url)  # valid Parquet, not a shard of ours
    assert read_shard_footer(url) is None
    assert read_shard_footer(str(tmp_path / "missing.parquet")) is None


def test_recommitting_a_shard_without_errors_removes_its_stale_error_rows(tmp_path):
    out = str(tmp_path / "out")
    shard = plan_shards(_listing(2), 2)[0]
    vectors = np.ones((2, DIM), np.float32)
    ShardWriter(out, [shard], "enc", DIM).add(_batch(shard, [0, 1], vectors, bad={0}))
    assert os.path.exists(errors_url(out, shard.name))
    ShardWriter(out, [shard], "enc", DIM).add(_batch(shard, [0, 1], vectors))
    assert not os.path.exists(errors_url(out, shard.name))
    assert pq.read_table(embeddings_url(out, shard.name)).num_rows == 2

"""The writer: one Parquet file per shard under OUT/embeddings/, bad images as rows under OUT/errors/.

Commit protocol (what makes a rerun safe to skip a shard). A shard's embeddings file is
its commit record: it is serialised in memory and made visible in one step — a write to a
temporary name plus an atomic rename on local disks, a single PUT on object stores (S3
has no rename, but a PUT is all-or-nothing: readers never see a partial object). Its
Parquet footer carries the shard's fingerprint (sha256 of its ids, URIs and content stamps), embedder and
row counts, so "complete" is decided by reading one footer: a torn or foreign file fails
to parse or to match and is recomputed. We chose the footer over a separate done-marker
because a marker and its data can disagree after a crash (marker written, data not, or
the reverse); a single object cannot disagree with itself. The shard's error rows are
written before that commit, so a crash in between only means they are rewritten.
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from adir_storage import commit_bytes, join_url, open_fs, remove_if_exists
from index_builder.sources import Shard

EMBEDDINGS_DIR = "embeddings"
ERRORS_DIR = "errors"
SHARD_METADATA_KEY = b"adir.shard"
SHARD_FORMAT = 1

ERROR_SCHEMA = pa.schema(
    [
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("uri", pa.string(), nullable=False),
        pa.field("stage", pa.string(), nullable=False),
        pa.field("error", pa.string(), nullable=False),
    ]
)


def embedding_schema(dim: int) -> pa.Schema:
    """The declared schema of every embeddings shard: float16 halves storage; search upcasts."""
    return pa.schema(
        [
            pa.field("image_id", pa.string(), nullable=False),
            pa.field("uri", pa.string(), nullable=False),
            pa.field("embedding", pa.list_(pa.float16(), dim), nullable=False),
            pa.field("width", pa.int32(), nullable=False),
            pa.field("height", pa.int32(), nullable=False),
        ]
    )


def embeddings_url(out: str, shard_name: str) -> str:
    return join_url(out, EMBEDDINGS_DIR, shard_name + ".parquet")


def errors_url(out: str, name: str) -> str:
    return join_url(out, ERRORS_DIR, name + ".parquet")


def table_bytes(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink)
    return sink.getvalue()


def read_shard_footer(url: str, storage_options: Mapping[str, Any] | None = None) -> dict | None:
    """The commit record of a shard file, or None if it is missing, torn or not ours."""
    fs, path = open_fs(url, storage_options)
    try:
        fs.invalidate_cache(path)
        with fs.open(path, "rb") as f:
            meta = pq.read_metadata(f)
        record = json.loads(meta.metadata[SHARD_METADATA_KEY])
        if record.get("rows") != meta.num_rows:
            return None
        return record
    except Exception:  # missing, truncated, not Parquet, no record: all mean "not committed"
        return None


def is_committed(record: dict | None, shard: Shard, embedder_name: str, dim: int) -> bool:
    return (
        record is not None
        and record.get("format") == SHARD_FORMAT
        and record.get("fingerprint") == shard.fingerprint
        and record.get("images") == len(shard)
        and record.get("embedder") == embedder_name
        and record.get("dim") == dim
    )


def shard_tables(shard: Shard, rows: Mapping[str, tuple], embedder_name: str, dim: int) -> tuple[pa.Table, pa.Table]:
    """(embeddings, errors) tables of one complete shard, rows in sorted-id order."""
    good, bad = [], []
    for image_id in shard.image_ids:
        uri, embedding, width, height, stage, error = rows[image_id]
        if stage:
            bad.append((image_id, uri, stage, error))
        else:
            good.append((image_id, uri, embedding, width, height))
    flat = np.concatenate([g[2] for g in good]).astype(np.float16) if good else np.zeros(0, np.float16)
    record = {
        "format": SHARD_FORMAT,
        "shard": shard.index,
        "shard_size": shard.size,
        "fingerprint": shard.fingerprint,
        "images": len(shard),
        "rows": len(good),
        "errors": len(bad),
        "embedder": embedder_name,
        "dim": dim,
    }
    schema = embedding_schema(dim).with_metadata({SHARD_METADATA_KEY: json.dumps(record).encode()})
    embeddings = pa.Table.from_arrays(
        [
            pa.array([g[0] for g in good], pa.string()),
            pa.array([g[1] for g in good], pa.string()),
            pa.FixedSizeListArray.from_arrays(pa.array(flat, pa.float16()), dim),
            pa.array([g[3] for g in good], pa.int32()),
            pa.array([g[4] for g in good], pa.int32()),
        ],
        schema=schema,
    )
    errors = pa.Table.from_arrays([pa.array([b[i] for b in bad], pa.string()) for i in range(4)], schema=ERROR_SCHEMA)
    return embeddings, errors


class ShardWriter:
    """Collects embed-stage rows by shard and commits each shard the moment its last image arrives.

    Rows arrive in any order (Ray Data does not preserve order by default); keying them
    by image id means a row delivered twice is stored once.
    """

    def __init__(
        self,
        out: str,
        shards: Sequence[Shard],
        embedder_name: str,
        dim: int,
        storage_options: Mapping[str, Any] | None = None,
    ):
        self.out = out
        self.embedder_name = embedder_name
        self.dim = dim
        self.storage_options = dict(storage_options or {})
        self._shards = {s.index: s for s in shards}
        self._rows: dict[int, dict[str, tuple]] = {s.index: {} for s in shards}
        self.committed: list[int] = []
        self.errors = 0

    @property
    def open_shards(self) -> list[int]:
        return sorted(self._rows)

    def add(self, batch: Mapping[str, np.ndarray]) -> list[int]:
        """Take one batch from the embed stage; return the shard indices it completed."""
        done = []
        for i, image_id in enumerate(batch["image_id"]):
            shard_index = int(batch["shard"][i])
            rows = self._rows.get(shard_index)
            if rows is None and shard_index in self.committed:
                continue  # a re-delivered row of a shard already written: it is in the file
            if rows is None:
                raise RuntimeError(
                    f"row for image {image_id!r} names shard {shard_index}, which this run is not writing"
                )
            rows[str(image_id)] = (
                str(batch["uri"][i]),
                np.array(batch["embedding"][i], dtype=np.float16),
                int(batch["width"][i]),
                int(batch["height"][i]),
                str(batch["stage"][i]),
                str(batch["error"][i]),
            )
            if len(rows) == len(self._shards[shard_index]):
                self._commit(shard_index)
                done.append(shard_index)
        return done

    def _commit(self, shard_index: int) -> None:
        shard = self._shards.pop(shard_index)
        rows = self._rows.pop(shard_index)
        missing = set(shard.image_ids) - rows.keys()
        if missing:
            raise RuntimeError(f"shard {shard.name} is missing {len(missing)} images, e.g. {sorted(missing)[:3]}")
        embeddings, errors = shard_tables(shard, rows, self.embedder_name, self.dim)
        err_url = errors_url(self.out, shard.name)
        if errors.num_rows:
            commit_bytes(err_url, table_bytes(errors), self.storage_options)
        else:
            remove_if_exists(err_url, self.storage_options)  # left by an earlier run of a changed shard
        commit_bytes(embeddings_url(self.out, shard.name), table_bytes(embeddings), self.storage_options)
        self.committed.append(shard_index)
        self.errors += errors.num_rows


def write_listing_errors(
    out: str, rejected: Sequence[tuple[str, str, str]], storage_options: Mapping[str, Any] | None = None
) -> None:
    """Entries dropped while listing (e.g. duplicate ids) as `stage="list"` error rows."""
    url = errors_url(out, "listing")
    if not rejected:
        remove_if_exists(url, storage_options)
        return
    columns = [[r[0] for r in rejected], [r[1] for r in rejected], ["list"] * len(rejected), [r[2] for r in rejected]]
    commit_bytes(
        url,
        table_bytes(pa.Table.from_arrays([pa.array(c, pa.string()) for c in columns], schema=ERROR_SCHEMA)),
        storage_options,
    )


def read_shard(
    url: str, storage_options: Mapping[str, Any] | None = None, columns: Sequence[str] | None = None
) -> pa.Table:
    fs, path = open_fs(url, storage_options)
    with fs.open(path, "rb") as f:
        return pq.read_table(f, columns=list(columns) if columns else None)


def embeddings_array(table: pa.Table) -> np.ndarray:
    """float32 (n, dim) from the `embedding` column of a shard table."""
    column = table.column("embedding").combine_chunks()
    dim = column.type.list_size
    return column.flatten().to_numpy(zero_copy_only=False).astype(np.float32).reshape(-1, dim)

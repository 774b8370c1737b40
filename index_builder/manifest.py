"""OUT/manifest.json: what an index holds and how it was built; written last, so it marks a finished build."""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from adir_storage import join_url, open_fs

MANIFEST_NAME = "manifest.json"
INDEX_NAME = "index.faiss"
IDS_NAME = "ids.parquet"
MANIFEST_FORMAT = 1


@dataclass(frozen=True)
class ShardEntry:
    name: str
    rows: int  # images embedded (rows in the shard file and in the index)
    errors: int  # images of this shard that became error rows
    fingerprint: str


@dataclass(frozen=True)
class Manifest:
    embedder: str
    dim: int
    metric: str
    factory: str
    count: int
    shards: tuple[ShardEntry, ...]
    created: str
    source: str = ""
    errors: int = 0
    config: Mapping[str, Any] = field(default_factory=dict)
    format: int = MANIFEST_FORMAT
    # IdsChecksum of ids.parquet as built: binds row r's id to vector r. "" in indexes built before it.
    ids_sha256: str = ""

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str, where: str = "manifest.json") -> Manifest:
        """Parse and check a manifest; anything malformed is a ValueError naming the problem (a rebuild repairs it)."""
        fix = "rebuild the index with `adir index build` (it rewrites the manifest)"
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise ValueError(f"{where} is not valid JSON ({exc}); {fix}") from None
        if not isinstance(data, dict):
            raise ValueError(f"{where} must hold a JSON object; got {type(data).__name__}; {fix}")
        if data.get("format") != MANIFEST_FORMAT:
            raise ValueError(f"{where}: manifest format {data.get('format')!r} is not {MANIFEST_FORMAT}; {fix}")
        shards = data.get("shards")
        if not isinstance(shards, list) or not all(isinstance(s, dict) for s in shards):
            raise ValueError(f"{where}: 'shards' must be a list of objects; {fix}")
        try:
            data["shards"] = tuple(_checked(ShardEntry, s, where) for s in shards)
            return _checked(cls, data, where)
        except ValueError as exc:
            raise ValueError(f"{exc}; {fix}") from None

    def write(self, out: str, storage_options: Mapping[str, Any] | None = None) -> None:
        from adir_storage import commit_bytes

        commit_bytes(join_url(out, MANIFEST_NAME), self.to_json().encode("utf-8"), storage_options)

    @classmethod
    def read(cls, out: str, storage_options: Mapping[str, Any] | None = None) -> Manifest:
        fs, path = open_fs(join_url(out, MANIFEST_NAME), storage_options)
        fs.invalidate_cache(path)
        try:
            with fs.open(path, "rb") as f:
                text = f.read().decode("utf-8")
        except FileNotFoundError:
            raise FileNotFoundError(
                f"no finished index at {out}: {MANIFEST_NAME} is missing; run `adir index build SOURCE {out}` (it resumes)"
            ) from None
        return cls.from_json(text, join_url(out, MANIFEST_NAME))


def _checked(cls, data: dict, where: str):
    """cls(**data) with unknown, missing and mistyped fields reported as ValueError."""
    from adir_ops.validation import check_fields

    names = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"{where} has unknown key(s) {unknown} (written by another version, or edited)")
    try:
        value = cls(**data)
    except TypeError as exc:
        raise ValueError(f"{where}: {exc}") from None
    try:
        check_fields(value)
    except ValueError as exc:
        raise ValueError(f"{where}: {str(exc).replace('--', '', 1)}") from None
    return value


class IdsChecksum:
    """sha256 of the (image_id, uri) columns of ids.parquet in order, fed one batch of rows at a time.

    Row r of the index is vector r: ids.parquet with its rows reordered (or from another build)
    names the wrong image for every hit, with the right score. The manifest records this checksum
    at build time and opening an index checks it. Four running digests (id lengths, id bytes, uri
    lengths, uri bytes) make it the same whatever the batching, and numpy-fast at 1.7M rows.
    """

    def __init__(self):
        self._parts = [hashlib.sha256() for _ in range(4)]

    def update(self, image_ids, uris) -> IdsChecksum:
        """Add rows: two Arrow string arrays (or chunked arrays) of equal length."""
        for i, column in enumerate((image_ids, uris)):
            lengths, data = _string_buffers(column)
            self._parts[2 * i].update(lengths)
            self._parts[2 * i + 1].update(data)
        return self

    def hexdigest(self) -> str:
        return hashlib.sha256(b"".join(p.digest() for p in self._parts)).hexdigest()


def _string_buffers(column) -> tuple[bytes, bytes]:
    """(each value's byte length as little-endian uint64, the values' bytes concatenated) of an Arrow string array."""
    import numpy as np
    import pyarrow as pa

    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    column = column.cast(pa.string())
    if len(column) == 0:
        return b"", b""
    offsets = np.frombuffer(column.buffers()[1], dtype="<i4", count=len(column) + 1, offset=column.offset * 4)
    data = column.buffers()[2]
    body = bytes(memoryview(data)[offsets[0] : offsets[-1]]) if data is not None else b""
    return np.diff(offsets).astype("<u8").tobytes(), body


def utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")

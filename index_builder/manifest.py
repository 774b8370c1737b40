"""OUT/manifest.json: what an index holds and how it was built; written last, so it marks a finished build."""

from __future__ import annotations

import datetime as _dt
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from index_builder.sources import join_url, open_fs

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

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        data = json.loads(text)
        if data.get("format") != MANIFEST_FORMAT:
            raise ValueError(f"manifest format {data.get('format')!r} is not {MANIFEST_FORMAT}; rebuild the index with this version")
        data["shards"] = tuple(ShardEntry(**s) for s in data["shards"])
        return cls(**data)

    def write(self, out: str, storage_options: Mapping[str, Any] | None = None) -> None:
        from index_builder.writer import commit_bytes

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
        return cls.from_json(text)


def utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")

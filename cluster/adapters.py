"""The adapter cache of a run: OUT/adapters/<key>.safetensors (diffusers LoRA format) and <key>.json beside it.

Commit protocol (safe when two actors race on one key). The adapter file goes first, then
its record (`{"key", "ids", "uris", "init"}`), each made visible in one step
(`adir_storage.commit_bytes`: temp file + rename, or one PUT). A record therefore always
means its adapter is complete. Two actors that train the same key write files that are
equally right (same neighbours, settings and stream); whichever rename lands last wins and
readers never see a part of either. Everything read back is checked: a file whose name is not
a key, whose record or adapter names another key, that does not parse, lacks a metadata key,
whose weights do not match the checksum its metadata records, or that holds NaN/inf is not a
usable cache entry: the adapter is trained again and replaces it (the row says 'trained'), so a
tampered cache costs time, never a wrong reconstruction. The checksum lives in the adapter file
itself, not in the record: two racing writers of one key each leave a file consistent with itself.
"""

from __future__ import annotations

import json
import re
import sys
import time
from typing import Any, Mapping

from adir_ops.adaptation.cache import CachedEntry
from adir_storage import commit_bytes, join_url, open_fs, read_bytes
from cluster.results import ADAPTERS_DIR

_KEY = re.compile(r"^[0-9a-f]{64}$")
# How often `entries` lists the store for other writers' adapters: a listing is O(adapters), and a
# dataset job asks once per image; this process's own adapters are known at once.
RELIST_S = 10.0


class AdapterStore:
    """adir_ops.adaptation.cache.AdapterCache over a folder or bucket prefix (fsspec URL)."""

    def __init__(self, url: str, storage_options: Mapping[str, Any] | None = None, relist_s: float = RELIST_S):
        self.url = url.rstrip("/")
        self.relist_s, self._listed_at = relist_s, None
        self.storage_options = dict(storage_options or {})
        self._entries: dict[str, CachedEntry] = {}
        self._seen: set[str] = set()  # record names read (or refused) already

    def _url(self, key: str, suffix: str) -> str:
        if not _KEY.match(key):
            raise ValueError(f"adapter key {key!r} is not a sha256 hex digest")
        return join_url(self.url, key + suffix)

    def get(self, key: str):
        from adir_ops.adaptation.adapter import Adapter

        try:
            data = read_bytes(self._url(key, ".safetensors"), self.storage_options)
        except FileNotFoundError:
            return None
        try:
            adapter = Adapter.from_bytes(data, source=f"{key}.safetensors", require_checksum=True)
            if adapter.provenance.get("key") != key:
                raise ValueError(f"{key}.safetensors records another key")
        except (ValueError, KeyError, TypeError) as exc:  # whatever is wrong with it, the cure is the same
            print(f"adapter cache: {exc}: not a usable cache entry; training it again", file=sys.stderr)
            return None
        return adapter

    def put(self, key: str, adapter, record: dict[str, Any]) -> None:
        record = {"key": key, "ids": list(record["ids"]), "uris": list(record["uris"]), "init": record.get("init")}
        commit_bytes(self._url(key, ".safetensors"), adapter.to_bytes(), self.storage_options)
        commit_bytes(self._url(key, ".json"), json.dumps(record).encode(), self.storage_options)
        if record["init"] is None:
            self._entries[key] = CachedEntry(key, frozenset(record["ids"]))

    def entries(self) -> list[CachedEntry]:
        """Cold-trained adapters of this store: those this process wrote, and any other writer's found by listing."""
        if self._listed_at is not None and time.monotonic() - self._listed_at < self.relist_s:
            return list(self._entries.values())
        self._listed_at = time.monotonic()
        fs, path = open_fs(self.url, self.storage_options)
        fs.invalidate_cache()
        try:
            names = [p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(path, detail=False)]
        except FileNotFoundError:
            names = []
        for name in names:
            key = name.removesuffix(".json")
            if not name.endswith(".json") or name in self._seen or not _KEY.match(key):
                continue
            self._seen.add(name)
            entry = self._read_record(key)
            if entry is not None:
                self._entries[key] = entry
        return list(self._entries.values())

    def _read_record(self, key: str) -> CachedEntry | None:
        try:
            record = json.loads(read_bytes(self._url(key, ".json"), self.storage_options))
            ids = record["ids"]
            if record.get("key") != key or not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
                raise ValueError("its fields do not describe this key")
        except (ValueError, KeyError, TypeError, FileNotFoundError) as exc:
            print(f"adapter cache: ignoring record {key}.json ({exc})", file=sys.stderr)
            return None
        # Warm starts begin only from cold-trained adapters: a chain of warm starts would drift.
        return CachedEntry(key, frozenset(ids)) if record.get("init") is None else None


def adapter_store(out: str, storage_options: Mapping[str, Any] | None = None) -> AdapterStore:
    """The run's adapter cache, OUT/adapters."""
    return AdapterStore(join_url(out, ADAPTERS_DIR), storage_options)

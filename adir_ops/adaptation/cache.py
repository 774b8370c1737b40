"""Amortized adaptation (beyond the paper): an adapter is named by what decides it, so a dataset trains each one once.

A LoRA is decided by the prior, the neighbours it trains on (in order), the adaptation
settings, the adapter it starts from and the random stream it draws from. With a cache the
stream is derived from the neighbours instead of the image (`adaptation_stream`): two images
that retrieve the same neighbours get the same adapter, and the second one reads it instead
of training it (tiles of one large image, frames of one scene, a sweep of sampler settings
over one dataset). `adapter_key` hashes all of it; a store keeps adapters under their key.

Warm start: an image whose neighbour set overlaps a cold-trained cached one by at least
`WarmStart.min_overlap` (Jaccard on ids) starts its LoRA from that adapter and trains
`WarmStart.steps` steps instead of the full count. Its key names the adapter it started
from, and so does its result row.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from adir_ops.adaptation.config import AdaptConfig
from adir_ops.rng import generator_for

KEY_VERSION = 1


def adapter_key(
    prior_config: dict[str, Any],
    neighbours: Sequence[tuple[str, str]],
    config: AdaptConfig,
    seed: int,
    *,
    init: str | None = None,
) -> str:
    """sha256 (hex) of what decides an adapter: prior, (id, uri) of each neighbour in order, settings, seed, start.

    The uri is in the key beside the id: the same id in another corpus is another image.
    `init`: the key of the adapter a warm start began from (None: a fresh LoRA).
    """
    record = {
        "version": KEY_VERSION,
        "prior": prior_config,
        "neighbours": [[str(i), str(u)] for i, u in neighbours],
        "adaptation": config.to_dict(),
        "seed": int(seed),
        "stream": "neighbours",
        "init": init,
    }
    text = json.dumps(record, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()


def adaptation_stream(seed: int, neighbours: Sequence[tuple[str, str]]) -> torch.Generator:
    """The adaptation's generator from (run seed, the neighbours in order): the same for every image that retrieves them."""
    text = json.dumps([[str(i), str(u)] for i, u in neighbours], separators=(",", ":"))
    digest = hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()
    return generator_for(seed, f"adapter:{digest}")


def jaccard(a: Iterable[str], b: Iterable[str]) -> float:
    """|A ∩ B| / |A ∪ B| of two id sets (0 for two empty sets)."""
    a, b = set(a), set(b)
    union = len(a | b)
    return len(a & b) / union if union else 0.0


@dataclass(frozen=True)
class WarmStart:
    """Start from a cached adapter whose neighbour ids overlap this image's by >= min_overlap, and train `steps`."""

    min_overlap: float = 0.5
    steps: int = 10

    def __post_init__(self):
        value = self.min_overlap
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"warm-start overlap must be a number in (0, 1]; got {value!r}")
        if not 0 < value <= 1:
            raise ValueError(f"warm-start overlap must be in (0, 1] (Jaccard of neighbour ids); got {value}")
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 0:
            raise ValueError(f"warm-start steps must be an integer >= 0; got {self.steps!r}")


@dataclass(frozen=True)
class CachedEntry:
    """What a store knows of one cold-trained adapter without reading it: its key and its neighbour ids."""

    key: str
    ids: frozenset[str]


class AdapterCache(Protocol):
    """Where adapters live by key (cluster.adapters.AdapterStore: a folder or bucket beside the run)."""

    def get(self, key: str):
        """The Adapter stored under `key`, or None (absent, or unreadable: then it is trained again)."""

    def put(self, key: str, adapter, record: dict[str, Any]) -> None:
        """Store `adapter` under `key`, all at once; two writers of one key may race (either file is right)."""

    def entries(self) -> list[CachedEntry]:
        """The cold-trained adapters stored so far (warm-start candidates)."""


def closest(
    entries: Iterable[CachedEntry], ids: Sequence[str], min_overlap: float
) -> tuple[CachedEntry, float] | None:
    """The entry whose ids overlap `ids` most (Jaccard), if at least `min_overlap`; ties go to the smaller key."""
    best, best_score = None, -1.0
    for entry in sorted(entries, key=lambda e: e.key):
        score = jaccard(entry.ids, ids)
        if score >= min_overlap and score > best_score:
            best, best_score = entry, score
    return None if best is None else (best, best_score)

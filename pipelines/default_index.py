"""The embedded corpus's index, built on first use into the user's cache, so `adir reconstruct` runs ADIR with no --index.

A newcomer with a folder of photos has no index. The embedded corpus (the ~1,800 crops of the
photos shipped in `pipelines/photos/data`, `pipelines.default_assets`) is small enough to embed in
about a minute, so instead of shipping a second copy of it as vectors in the wheel, the first
run that needs it builds it with the real index job into `cache_root()/default-index/<key>` and
every later run reuses it. The key hashes what decides the vectors (the corpus split, the
encoder, the photos' credits file), so an upgrade that changes any of them builds afresh
beside the old one. A cached index that fails its checks (torn file, permuted ids) is rebuilt.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import sys
import uuid
from pathlib import Path

INDEX_DIR = "default-index"
ASSETS_DIR = "default-assets"


def _key(embedder: str, limit: int | None) -> str:
    from adir_ops.metrics.files import file_sha256
    from pipelines.default_assets import DefaultAssetsConfig
    from pipelines.photos.split import DATA_DIR

    parts = {
        "assets": dataclasses.asdict(DefaultAssetsConfig()),
        "embedder": embedder,
        "limit": limit,
        "photos": file_sha256(Path(DATA_DIR) / "CREDITS.tsv"),  # one line per shipped photo
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def default_index_path(embedder: str | None = None, limit: int | None = None) -> Path:
    """Where the embedded corpus's index for `embedder` lives (built or not)."""
    from adir_ops.metrics.files import cache_root
    from adir_ops.retrieval.embedding import DEFAULT_EMBEDDER

    return cache_root() / INDEX_DIR / _key(embedder or DEFAULT_EMBEDDER, limit)


def _usable(path: Path) -> str | None:
    """None when the index at `path` passes every check, else why not ('' when there is none)."""
    from index_builder.faiss_index import verify_index
    from index_builder.manifest import Manifest

    if not path.is_dir():
        return ""
    try:
        verify_index(str(path), Manifest.read(str(path)), full=True)
    except (ValueError, FileNotFoundError, OSError) as exc:
        return str(exc).splitlines()[0]
    return None


def ensure_default_index(
    *, embedder: str | None = None, limit: int | None = None, progress: bool = True, start_ray=None
) -> str:
    """The path of the embedded corpus's index, building it first if the cache has none (or a broken one).

    start_ray: called before a build (the CLI starts Ray only when it is needed). limit: embed only
    the first N corpus images (tests).
    """
    from adir_ops.retrieval.embedding import DEFAULT_EMBEDDER

    embedder = embedder or DEFAULT_EMBEDDER
    path = default_index_path(embedder, limit)
    why = _usable(path)
    if why is None:
        return str(path)
    from index_builder.job import BuildConfig, run_build
    from pipelines import default_assets

    if why:
        print(f"adir: the cached index at {path} is unusable ({why}); rebuilding it", file=sys.stderr)
    else:
        print(f"adir: no --index given; building the embedded corpus's index once into {path}", file=sys.stderr)
    assets = path.parent.parent / ASSETS_DIR
    default_assets.build(assets, sets=("corpus",))
    if start_ray is not None:
        start_ray()
    # Built beside, then renamed into place: a killed build never leaves a half index at `path`,
    # and two first runs racing each build their own and the loser uses the winner's.
    building = path.parent / f".building-{uuid.uuid4().hex[:8]}"
    try:
        report = run_build(
            BuildConfig(str(assets / "corpus"), str(building), embedder=embedder, limit=limit, progress=progress)
        )
        if path.exists():
            shutil.rmtree(path)  # the broken one found above
        try:
            os.rename(building, path)
        except OSError:
            if _usable(path) is not None:
                raise
    finally:
        shutil.rmtree(building, ignore_errors=True)
    print(
        f"adir: built the embedded corpus's index ({report.summary().splitlines()[0]}) in {path}; later runs reuse it",
        file=sys.stderr,
    )
    return str(path)

"""`adir index build | info | query`: the command-line side of index_builder."""

from __future__ import annotations

import argparse
import sys


def _fail(command: str, exc: BaseException) -> int:
    print(f"adir index {command}: error: {exc}", file=sys.stderr)
    return 2


def build(args: argparse.Namespace) -> int:
    """Embed SOURCE into OUT (resuming any earlier run) and write the FAISS index when every shard is done."""
    import ray

    from index_builder.job import BuildConfig, run_build

    try:
        config = BuildConfig(
            source=args.source,
            out=args.out,
            embedder=args.embedder,
            index_factory=args.index_factory,
            shard_size=args.shard_size,
            limit=args.limit,
            ids_file=args.ids_file,
            url_template=args.url_template,
            batch_size=args.batch_size,
            max_shards=getattr(args, "max_shards", None),
        )
    except ValueError as exc:
        return _fail("build", exc)
    if not ray.is_initialized():
        # Inside a Ray job (or with RAY_ADDRESS set) this joins that cluster; otherwise it
        # starts a local one with this machine's CPUs/GPUs.
        ray.init()
    try:
        report = run_build(config)
    except (ValueError, FileNotFoundError) as exc:
        return _fail("build", exc)
    print(report.summary())
    return 0


def info(args: argparse.Namespace) -> int:
    """Print what an index holds and how it was built."""
    from index_builder.manifest import Manifest

    try:
        m = Manifest.read(args.out)
    except (ValueError, FileNotFoundError) as exc:
        return _fail("info", exc)
    rows = [
        ("index", args.out),
        ("embedder", f"{m.embedder} (dim {m.dim})"),
        ("metric", m.metric),
        ("factory", m.factory),
        ("images", f"{m.count} indexed, {m.errors} error rows (see {args.out.rstrip('/')}/errors/)"),
        ("shards", f"{len(m.shards)} of size {m.config.get('shard_size', '?')}"),
        ("source", m.source),
        ("created", m.created),
    ]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    return 0


def query(args: argparse.Namespace) -> int:
    """Print the K nearest corpus images of one image, best first."""
    import torch

    from adir_ops.embedding import get_embedder
    from index_builder.faiss_index import NeighborIndex
    from index_builder.reader import decode_image
    from index_builder.sources import open_fs

    try:
        index = NeighborIndex.open(args.out)
        embedder = get_embedder(args.embedder or index.embedder_name)
        index.check_embedder(embedder)
        fs, path = open_fs(args.image)
        with fs.open(path, "rb") as f:
            pixels, _, _ = decode_image(f.read(), embedder.image_size)
        image = torch.from_numpy(pixels).permute(2, 0, 1)[None].float() / 255.0
        ids, uris, scores = index.search(embedder.embed_images(image), args.k)
    except (ValueError, FileNotFoundError) as exc:
        return _fail("query", exc)
    print(f"{'rank':>4}  {'score':>7}  {'image_id':<24}  uri")
    for rank, (image_id, uri, score) in enumerate(zip(ids[0], uris[0], scores[0]), start=1):
        print(f"{rank:>4}  {score:7.4f}  {image_id:<24}  {uri}")
    return 0

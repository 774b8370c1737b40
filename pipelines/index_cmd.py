"""`adir index build | info | query`: the command-line side of index_builder."""

from __future__ import annotations

import argparse
import sys


def _fail(command: str, exc: BaseException) -> int:
    """A usage error (bad option, path, or index folder): one line, exit 2."""
    print(f"adir index {command}: error: {exc}", file=sys.stderr)
    return 2


def _read_query(url: str, image_size: int):
    """The query image as (1, 3, S, S) in [0, 1]; a clear ValueError for a folder, a link loop or a non-image."""
    import torch

    from adir_storage import open_fs
    from index_builder.reader import decode_image

    fs, path = open_fs(url)
    try:
        if fs.isdir(path):
            raise ValueError(f"query image {url} is a folder; pass an image file")
        with fs.open(path, "rb") as f:
            data = f.read()
        pixels, _, _ = decode_image(data, image_size)
    except FileNotFoundError:
        raise FileNotFoundError(f"query image {url} does not exist") from None
    except OSError as exc:  # a symlink loop, a permission problem, a device
        raise ValueError(f"query image {url} cannot be read: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise ValueError(f"query image {url} is not a readable image: {exc}") from None
    return torch.from_numpy(pixels).permute(2, 0, 1)[None].float() / 255.0


def build(args: argparse.Namespace) -> int:
    """Embed SOURCE into OUT (resuming any earlier run) and write the FAISS index when every shard is done."""
    import ray

    from adir_storage import scrub
    from index_builder.job import BuildConfig, run_build

    try:
        config = BuildConfig(
            source=args.source,
            out=args.out,
            **({"embedder": args.embedder} if args.embedder else {}),  # None: BuildConfig's default encoder
            index_factory=args.index_factory,
            shard_size=args.shard_size,
            limit=args.limit,
            ids_file=args.ids_file,
            url_template=args.url_template,
            batch_size=args.batch_size,
            max_shards=getattr(args, "max_shards", None),
            **({"max_input_bytes": args.max_input_bytes} if getattr(args, "max_input_bytes", None) else {}),
        )
    except ValueError as exc:
        return _fail("build", exc)
    if not ray.is_initialized():
        # Inside a Ray job (or with RAY_ADDRESS set) this joins that cluster; otherwise it
        # starts a local one with this machine's CPUs/GPUs.
        from cluster.watchdog import init_ray

        init_ray()  # a local cluster it starts ends with this command, even on kill -9
    try:
        report = run_build(config)
    except (ValueError, FileNotFoundError) as exc:  # the source, the factory, the listing: fix and rerun
        return _fail("build", scrub(str(exc), config.storage_options))
    print(report.summary())
    if report.stages:
        print(report.stage_table())
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
        ("factory", m.factory + (f"  ({m.config['factory_choice']})" if m.config.get("factory_choice") else "")),
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
    from adir_ops.retrieval.embedding import get_embedder
    from index_builder.index_query import NeighborIndex

    try:
        index = NeighborIndex.open(args.out)
        embedder = get_embedder(args.embedder or index.embedder_name)
        index.check_embedder(embedder)
        image = _read_query(args.image, embedder.image_size)
        ids, uris, scores = index.search(embedder.embed_images(image), args.k)
    except (ValueError, FileNotFoundError) as exc:
        return _fail("query", exc)
    print(f"{'rank':>4}  {'score':>7}  {'image_id':<24}  uri")
    for rank, (image_id, uri, score) in enumerate(zip(ids[0], uris[0], scores[0]), start=1):
        print(f"{rank:>4}  {score:7.4f}  {image_id:<24}  {uri}")
    return 0

"""The `adir` command line: argument parsing only; each command imports its heavy work lazily."""

from __future__ import annotations

import argparse
import sys


def _run_index_build(args: argparse.Namespace) -> int:
    from pipelines import index_cmd

    return index_cmd.build(args)


def _run_index_info(args: argparse.Namespace) -> int:
    from pipelines import index_cmd

    return index_cmd.info(args)


def _run_index_query(args: argparse.Namespace) -> int:
    from pipelines import index_cmd

    return index_cmd.query(args)


def _run_reconstruct(args: argparse.Namespace) -> int:
    from pipelines import reconstruct

    return reconstruct.main(args)


def _run_example(args: argparse.Namespace) -> int:
    from adir_ops import example

    return example.main(args.example_args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="adir",
        description="ADIR: retrieve K similar images, adapt a diffusion prior with LoRA, reconstruct with guided sampling.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    index = commands.add_parser("index", help="build, inspect and query an embedding index")
    index_commands = index.add_subparsers(dest="index_command", metavar="SUBCOMMAND")

    build = index_commands.add_parser("build", help="embed a corpus with Ray Data into Parquet shards + a FAISS index")
    build.add_argument("source", help="folder of images, or a CSV/text list of image ids/URIs (fsspec URL or path)")
    build.add_argument("out", help="output folder (fsspec URL or path)")
    build.add_argument("--embedder", default="offline-lowpass", help="encoder name (default: the offline encoder)")
    build.add_argument("--index-factory", default="Flat", help="FAISS factory string (Flat, HNSW32, IVF1024,PQ64, ...)")
    build.add_argument("--shard-size", type=int, default=1000, help="images per Parquet shard")
    build.add_argument("--limit", type=int, default=None, help="index only the first N images (sorted ids)")
    build.add_argument("--ids-file", default=None, help="CSV/text of image ids to index (used with --url-template)")
    build.add_argument("--url-template", default=None, help="URI template for ids, e.g. 's3://open-images-dataset/train/{id}.jpg'")
    build.add_argument("--batch-size", type=int, default=64, help="images per embedding batch")
    build.add_argument("--max-shards", type=int, default=None,
                       help="commit at most N missing shards in this run, then stop (time-boxed jobs); rerun to continue")
    build.set_defaults(func=_run_index_build)

    info = index_commands.add_parser("info", help="print an index's manifest")
    info.add_argument("out", help="index folder (fsspec URL or path)")
    info.set_defaults(func=_run_index_info)

    query = index_commands.add_parser("query", help="print the K nearest corpus images of an image")
    query.add_argument("out", help="index folder (fsspec URL or path)")
    query.add_argument("image", help="query image (fsspec URL or path)")
    query.add_argument("-k", type=int, default=20, help="number of neighbours")
    query.add_argument("--embedder", default=None, help="encoder for the query image (default: the one the index was built with)")
    query.set_defaults(func=_run_index_query)

    _add_reconstruct(commands)

    example = commands.add_parser(
        "example", help="degrade a packaged photo, adapt and reconstruct it (python -m adir_ops.example)"
    )
    example.add_argument("example_args", nargs=argparse.REMAINDER, help="arguments passed to the example")
    example.set_defaults(func=_run_example)
    return parser


def _add_reconstruct(commands) -> None:
    from cluster.config import MODES, TASKS  # plain constants: keeps `adir --help` instant

    p = commands.add_parser(
        "reconstruct",
        help="reconstruct a dataset on Ray actors: embed, retrieve K neighbours, adapt a LoRA, guided sampling",
        description="Every flag can also be given in --config job.yaml (flags override it). Reruns into the same "
        "--out skip finished images.",
    )
    p.add_argument("--index", help="index folder built by `adir index build` (fsspec URL); not needed for --mode baseline")
    p.add_argument("--inputs", help="folder, list or single file of clean images (degraded by the job), or degraded ones with --degraded")
    p.add_argument("--task", choices=TASKS)
    p.add_argument("--out", help="output folder (fsspec URL): images/<id>.png, results.parquet, config.yaml")
    p.add_argument("--prior", help="diffusers UNet folder or hub id, Guided Diffusion .pt, or tiny[:res] (random weights: mechanics only; the default)")
    p.add_argument("--k", type=int, help="neighbours per image (default 20)")
    p.add_argument("--mode", choices=MODES, help="adir (encoder K-NN, default), baseline (no adaptation), random-nn, mse-nn")
    p.add_argument("--steps", type=int, help="respaced sampling steps (default 100)")
    p.add_argument("--lora-steps", type=int, help="LoRA adaptation iterations (default 400)")
    p.add_argument("--seed", type=int, help="run seed; image i's generators are seeded from (seed, image id) (default 0)")
    p.add_argument("--degraded", action="store_true", default=None, help="inputs are already degraded (real use), e.g. DIV2K_valid_LR_bicubic/X4")
    p.add_argument("--reference", help="with --degraded: folder of ground truths for metrics, e.g. DIV2K_valid_HR")
    p.add_argument("--guidance-scale", type=float, help="eq. 16 scale s (default 1000: as consistent as the stable step allows)")
    p.add_argument("--embedder", help="encoder (default: the index's own; a different one is refused)")
    p.add_argument("--tile-batch", type=int, help="UNet tiles per call for images larger than the prior (default 4)")
    p.add_argument("--tile-overlap", type=int, help="tile overlap in pixels (default: a quarter of the tile)")
    p.add_argument("--num-actors", type=int, help="actors (default: one per GPU, else one per CPU core)")
    p.add_argument("--cpus-per-actor", type=float, help="Ray num_cpus per actor (default 1 with GPUs, 0.5 without)")
    p.add_argument("--limit", type=int, help="only the first N inputs (sorted ids)")
    p.add_argument("--config", help="job.yaml holding any of these options (storage_options only there)")
    p.add_argument("--ray-address", help="Ray cluster to join (default: $RAY_ADDRESS, else a local one)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_run_reconstruct)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        # `adir index` alone: show that level's help rather than a traceback.
        (parser if args.command is None else parser._subparsers._group_actions[0].choices[args.command]).print_help()
        return 2
    return int(func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())

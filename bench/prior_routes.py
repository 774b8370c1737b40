"""Which prior is the embedded default? The candidate priors, unadapted, on the same held-out images, sampler and seeds.

    OMP_NUM_THREADS=1 .venv/bin/python bench/prior_routes.py --data ASSETS --images 16 \
        --priors unet64,/tmp/prior-a/out,ffdnet --tasks sr4,deblur,colorize [--out docs/priors.md]

--data: an output folder of `pipelines.default_assets` (default: generated now, in a temp dir).
Each prior in --priors (specs of adir_ops.priors.registry.PRIORS: `unet64` the committed UNet, a folder
of `pipelines.train_prior`, `ffdnet` the FFDNet denoiser read as a diffusion prior) reconstructs
the demo's content-blind pick of --images held-out test images with the task's default sampler
(`adir_ops.sampling.samplers.DEFAULT_SAMPLER_BY_TASK`), --steps respaced steps, no adaptation: this compares
the priors themselves. The degradation and every sampler draw are the same for all priors
(`generator_for(seed, image id)`). Beside them: the naive inverse and A^+ y.

Figures, means over the images, and the paired mean difference to the naive inverse with a
95% t interval: PSNR (dB, higher better), SSIM, ST-LPIPS (full-reference, lower better), NIQE,
BRISQUE, PIQE (no-reference, lower better); s/image is the sampler's wall time. The rule the
default follows (issue 13): best on the perceptual metrics without falling below the naive
inverse in PSNR.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

METRICS = ("psnr", "ssim", "stlpips", "niqe", "brisque", "piqe")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=None, help="output folder of pipelines.default_assets (default: built now)")
    p.add_argument("--images", type=int, default=16)
    p.add_argument("--priors", default="unet64,ffdnet", help="comma-separated prior specs")
    p.add_argument("--tasks", default="sr4,deblur,colorize")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="also write the markdown report here")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    import numpy as np
    import torch
    from sampler import load_test_images

    from adir_ops.metrics.quality import compute_metrics
    from adir_ops.physics.operators import make_operator
    from adir_ops.priors.registry import load_local_prior
    from adir_ops.rng import generator_for
    from adir_ops.sampling.samplers import default_sampler, get_sampler
    from pipelines.evaluation.statistics import paired_difference

    lines: list[str] = []

    def emit(text: str = "") -> None:
        print(text, flush=True)
        lines.append(text)

    command = (
        f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '(unset)')} .venv/bin/python bench/prior_routes.py "
        + shlex.join(sys.argv[1:] if argv is None else argv)
    )
    ids, images = load_test_images(args.data, args.images)
    truth = images * 2 - 1
    priors = {spec: load_local_prior(spec).eval() for spec in args.priors.split(",")}
    emit("# The candidate priors, unadapted (bench/prior_routes.py)")
    emit()
    emit(f"Command: `{command}`")
    emit()
    emit(
        f"{len(ids)} held-out images ({truth.shape[-1]} px) of {len({i.rsplit('-x', 1)[0] for i in ids})} photos; "
        f"{args.steps} sampler steps; seed {args.seed}; torch threads {torch.get_num_threads()}."
    )
    for spec, prior in priors.items():
        params = sum(p.numel() for p in prior.unet.parameters())
        emit(f"- `{spec}`: {prior.kind}, {params / 1e6:.2f}M parameters, source {prior.config.get('source')}")
    for task in args.tasks.split(","):
        operator = make_operator(task, image_size=tuple(truth.shape[-2:]))
        y = operator.degrade(truth.double(), [generator_for(args.seed, f"degrade:{i}") for i in ids]).float()
        sampler = default_sampler(task)
        emit()
        emit(f"## {task} (sampler {sampler}; noise sigma_255 {operator.noise_sigma_255:g})")
        emit()
        emit("Mean over the images; in brackets the paired difference to the naive inverse, ± its 95% interval.")
        emit()
        emit("| arm | " + " | ".join(METRICS) + " | s/image |")
        emit("|---|" + "---|" * (len(METRICS) + 1))
        arms = {"naive inverse": (lambda: operator.naive_inverse(y)), "A^+ y": (lambda: operator.pseudo_inverse(y))}
        for spec, prior in priors.items():

            def run(prior=prior):
                gens = [generator_for(args.seed, i) for i in ids]
                return get_sampler(sampler)(prior, y, operator, steps=args.steps, generator=gens)

            arms[f"`{spec}`"] = run
        naive = None
        for label, run in arms.items():
            start = time.perf_counter()
            x = run().clamp(-1, 1)
            seconds = (time.perf_counter() - start) / len(ids)
            scores = compute_metrics(((x + 1) / 2).float(), images.float(), names=list(METRICS))
            scores = {k: np.asarray(v, dtype=np.float64) for k, v in scores.items()}
            naive = naive or scores
            cells = []
            for name in METRICS:
                mean = float(scores[name].mean())
                if scores is naive:
                    cells.append(f"{mean:.4g}")
                else:
                    pair = paired_difference(dict(enumerate(scores[name])), dict(enumerate(naive[name])))
                    cells.append(
                        f"{mean:.4g} ({pair.mean:+.3g} ± {(pair.high - pair.mean) if pair.high is not None else float('nan'):.2g})"
                    )
            emit(f"| {label} | " + " | ".join(cells) + f" | {seconds:.2f} |")
    if args.out:
        with open(args.out, "w") as f:
            f.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

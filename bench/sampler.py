"""Benchmark the guided samplers (eq. 16, eq. 16 preconditioned, DDNM) on the embedded default's held-out images, per task.

    OMP_NUM_THREADS=1 .venv/bin/python bench/sampler.py [--data ASSETS] [--images 8] [--steps 50,100] [--deblur-steps 250]
        [--samplers eq16,ddnm] [--ddnm-etas 0,0.5] [--out docs/sampler.md]

--data: an output folder of `pipelines.default_assets` (default: generated now, in a temp
dir). docs/sampler.md pins the version of it that the committed prior was trained against.

For each task (sr4, sr8, deblur, colorize, inpaint) and each of --images held-out test
images of `python -m pipelines.default_assets` (the demo's content-blind `pick_test_images`), with the
committed prior (assets/default, 64 px): the naive inverse, A^+ y, and every sampler at each
step count, all on the same degradation and the same sampler seeds (`generator_for(seed,
image id)`; all images of an arm go through one batched call, which per-image generators
make equal to one call per image). Figures, means over the images:
- PSNR (dB) and SSIM (pyiqa, on [0, 1] images), and PSNR minus the naive inverse's;
- residual: ||A x - y|| / ||y|| of the output as saved (clamped to [-1, 1]), next to the
  truth's own residual (its noise): an output below the truth's has fitted the noise;
- chroma: the mean-chroma error, || mean_p c(x) - mean_p c(truth) ||_2 with c = RGB minus the
  per-pixel channel mean, on [0, 1] images: how far the image's global colour cast is from
  the truth's (plain gray scores the truth's own mean chroma);
- s/image: wall time of the arm's batched call over the number of images (1 thread unless
  OMP_NUM_THREADS says otherwise; a shared machine is noisy: rerun before quoting).
Printed as markdown (and written to --out, with the command line on top).
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

TASKS = ("sr4", "sr8", "deblur", "colorize", "inpaint")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=8, help="held-out test images (pipelines.demo.pick_test_images)")
    p.add_argument("--tasks", default=",".join(TASKS))
    p.add_argument(
        "--samplers", default=None, help="comma-separated names of adir_ops.sampling.samplers.SAMPLERS (default: all)"
    )
    p.add_argument("--steps", default="50,100", help="respaced step counts for every sampler")
    p.add_argument(
        "--deblur-steps", default="250", help="extra step counts for deblur (noise fitting shows at many steps)"
    )
    p.add_argument(
        "--ddnm-etas", default="", help="extra ddnm arms with these DDIM eta values (default: none; ddnm is eta 1)"
    )
    p.add_argument(
        "--prior",
        default="default",
        help="a prior spec of adir_ops.priors.registry.PRIORS (default, ffdnet, a folder)",
    )
    p.add_argument(
        "--data", default=None, help="output folder of pipelines.default_assets (default: generated in a temp dir)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="also write the markdown report here")
    return p.parse_args(argv)


def load_test_images(data: str | None, count: int):
    """(ids, (n, 3, 64, 64) tensor in [0, 1]): the demo's content-blind pick of `count` held-out images."""
    import json

    import numpy as np
    import torch
    from PIL import Image

    from pipelines.demo import pick_test_images

    if data is None:
        data = tempfile.mkdtemp(prefix="adir-bench-sampler-")
        from pipelines import default_assets

        default_assets.main([data])
    with open(os.path.join(data, "split.json")) as f:
        picked = [it["path"] for it in pick_test_images(json.load(f), count)]
    pixels = [
        torch.from_numpy(np.asarray(Image.open(os.path.join(data, p)).convert("RGB"), dtype=np.float32) / 255.0)
        for p in picked
    ]
    return [os.path.splitext(os.path.basename(p))[0] for p in picked], torch.stack(pixels).permute(
        0, 3, 1, 2
    ).contiguous()


def mean_chroma_error(x01, truth01):
    """Per image || mean over pixels of (RGB - gray) of x minus that of the truth ||_2, on [0, 1] images."""

    def mean_chroma(v):
        return (v - v.mean(dim=1, keepdim=True)).mean(dim=(-2, -1))

    return (mean_chroma(x01) - mean_chroma(truth01)).norm(dim=1)


def evaluate(x, truth, y, operator) -> dict:
    """Per-image figures of an output x in [-1, 1] against the truth in [-1, 1]."""
    from adir_ops.metrics.quality import compute_metrics

    x = x.clamp(-1, 1)
    x01, t01 = (x + 1) / 2, (truth + 1) / 2
    q = compute_metrics(x01.float(), t01.float(), names=["psnr", "ssim"])
    residual = (operator.A(x) - y).flatten(1).norm(dim=1) / y.flatten(1).norm(dim=1)
    return {
        "psnr": q["psnr"],
        "ssim": q["ssim"],
        "residual": residual.numpy(),
        "chroma": mean_chroma_error(x01, t01).numpy(),
    }


def main(argv=None) -> int:
    args = parse_args(argv)
    import numpy as np
    import torch

    from adir_ops.physics.operators import make_operator
    from adir_ops.priors.registry import load_local_prior
    from adir_ops.rng import generator_for
    from adir_ops.sampling.defaults import DEFAULT_SAMPLER_BY_TASK
    from adir_ops.sampling.samplers import SAMPLERS, get_sampler

    lines: list[str] = []

    def emit(text: str = "") -> None:
        print(text, flush=True)
        lines.append(text)

    command = (
        "OMP_NUM_THREADS="
        + os.environ.get("OMP_NUM_THREADS", "(unset)")
        + " .venv/bin/python bench/sampler.py "
        + shlex.join(sys.argv[1:] if argv is None else argv)
    )
    prior = load_local_prior(args.prior).eval()
    ids, images = load_test_images(args.data, args.images)
    truth = images * 2 - 1
    samplers = args.samplers.split(",") if args.samplers else list(SAMPLERS)
    steps = [int(s) for s in args.steps.split(",")]
    emit("# Guided samplers on the embedded default prior (bench/sampler.py)")
    emit()
    emit(f"Command: `{command}`")
    emit()
    emit(
        f"Prior {prior.config['source']} ({prior.resolution} px); {len(ids)} held-out images: {', '.join(ids)}; "
        f"seed {args.seed}; torch threads {torch.get_num_threads()}; load average {os.getloadavg()[0]:.1f}."
    )
    emit(
        "Columns: PSNR (dB), its difference to the naive inverse, SSIM, residual ||A x - y|| / ||y|| (%), "
        "mean-chroma error (on [0, 1]), seconds per image. Means over the images."
    )
    for task in args.tasks.split(","):
        operator = make_operator(task, image_size=tuple(truth.shape[-2:]))
        y = operator.degrade(truth.double(), [generator_for(args.seed, f"degrade:{i}") for i in ids]).float()
        truth_residual = ((operator.A(truth) - y).flatten(1).norm(dim=1) / y.flatten(1).norm(dim=1)).mean().item()
        emit()
        emit(
            f"## {task} (noise sigma_255 {operator.noise_sigma_255:g}; the truth's own residual {100 * truth_residual:.2f}%; "
            f"default sampler: {DEFAULT_SAMPLER_BY_TASK.get(task)})"
        )
        emit()
        emit("| arm | steps | PSNR | vs naive | SSIM | residual % | chroma | s/image |")
        emit("|---|---|---|---|---|---|---|---|")
        arms = [
            ("naive inverse", None, lambda: operator.naive_inverse(y)),
            ("A^+ y", None, lambda: operator.pseudo_inverse(y)),
        ]
        for name in samplers:
            for n in steps + (
                [int(s) for s in args.deblur_steps.split(",")] if task == "deblur" and args.deblur_steps else []
            ):

                def run(name=name, n=n):
                    gens = [generator_for(args.seed, i) for i in ids]
                    return get_sampler(name)(prior, y, operator, steps=n, generator=gens)

                arms.append((name, n, run))
        for eta in [float(e) for e in args.ddnm_etas.split(",") if e]:
            for n in steps:

                def run_eta(eta=eta, n=n):
                    gens = [generator_for(args.seed, i) for i in ids]
                    return get_sampler("ddnm")(prior, y, operator, steps=n, generator=gens, eta=eta)

                arms.append((f"ddnm eta={eta:g}", n, run_eta))
        naive_psnr, refused = None, set()
        for label, n, run in arms:
            if label in refused:
                continue
            start = time.perf_counter()
            try:
                x = run()
            except ValueError as err:  # a sampler made for another task (ddnm-neutral-cast)
                refused.add(label)
                emit(f"| {label} | any | n/a: {err} | | | | | |")
                continue
            seconds = (time.perf_counter() - start) / len(ids)
            m = evaluate(x, truth, y, operator)
            psnr = float(np.mean(m["psnr"]))
            naive_psnr = psnr if naive_psnr is None else naive_psnr
            emit(
                f"| {label} | {n or '-'} | {psnr:.2f} | {psnr - naive_psnr:+.2f} | {np.mean(m['ssim']):.3f} | "
                f"{100 * np.mean(m['residual']):.2f} | {np.mean(m['chroma']):.4f} | {seconds:.2f} |"
            )
    if args.out:
        with open(args.out, "w") as f:
            f.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

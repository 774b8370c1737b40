"""`--degradation auto` on photos degraded with settings it does not see: estimation error, and what it costs in quality.

    .venv/bin/python bench/blind.py --images 12 --steps 20 --json /tmp/blind.json
    # or split over processes: --settings 0,1,2 --json a.json, ..., then --report a.json,b.json

For each known setting (SR x4 by bicubic, area or Gaussian downscaling; blur by a Gaussian of several
widths, the paper's 5x5 box, a horizontal motion line; several noise levels) each held-out test image of
the embedded default (`pipelines.default_assets`, picked as the demo picks them) is degraded with that
setting's operator (noise from an explicit per-image generator), stored as 8 bits as a photo file would
be, and reconstructed three ways with the same seed, no adaptation (the job's `--mode baseline`):
- auto: the operator `observe(..., degraded=True, degradation="auto")` estimates from y, as the job does;
- oracle: the true operator, with the noise level the stored y holds (the generator's and 8-bit rounding's);
- fixed: the task's known operator, what the job assumes without `--degradation auto` (SR: bicubic, no
  noise; deblur: 5x5 box, noise 10/255) - a wrong guess wherever the setting is another.
Printed per setting: the noise estimate's mean absolute error (0..255), how often the kernel was right
(family; Gaussian width within 0.3 px), how often the estimate said it was unsure, and PSNR / ST-LPIPS of
auto minus oracle and auto minus fixed, paired over the images, with 95% t-intervals (the evaluation's own
`paired_difference`). One process on the CPU; say how loaded the machine was when quoting it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# (task, operator options, noise sigma_255): what the estimator must find without being told.
SETTINGS = (
    ("deblur", {"kernel": "gaussian", "width": 1.0}, 5.0),
    ("deblur", {"kernel": "gaussian", "width": 1.6}, 5.0),
    ("deblur", {"kernel": "gaussian", "width": 2.4}, 5.0),
    ("deblur", {"kernel": "gaussian", "width": 1.6}, 0.0),
    ("deblur", {"kernel": "gaussian", "width": 1.6}, 10.0),
    ("deblur", {"kernel": "gaussian", "width": 1.6}, 25.0),
    ("deblur", {"kernel": "box", "width": 5}, 10.0),  # the paper's own: fixed is the oracle here
    ("deblur", {"kernel": "motion-h", "width": 7}, 5.0),
    ("sr4", {"kernel": "bicubic"}, 0.0),  # DIV2K's: fixed is the oracle here
    ("sr4", {"kernel": "area"}, 0.0),
    ("sr4", {"kernel": "gaussian"}, 0.0),
    ("sr4", {"kernel": "bicubic"}, 10.0),
)
WIDTH_TOLERANCE = 0.3
ROUNDING_SIGMA = 1 / math.sqrt(12)  # the std of rounding to whole levels, on the 0..255 scale


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--assets", default="/tmp/adir-default", help="pipelines.default_assets output (built if missing)")
    p.add_argument("--prior", default="default", help="a prior spec of adir_ops.priors.registry.PRIORS")
    p.add_argument("--images", type=int, default=12, help="held-out test images (picked as the demo picks them)")
    p.add_argument("--steps", type=int, default=20, help="sampling steps of every arm")
    p.add_argument("--settings", default=None, help="comma-separated indices into SETTINGS (default: all)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="write every measurement here")
    p.add_argument(
        "--no-oracle-rounding",
        dest="oracle_rounding",
        action="store_false",
        help="the oracle's noise level without 8-bit rounding's (how the first run measured it)",
    )
    p.add_argument("--report", default=None, help="only print the table of these --json files (comma-separated)")
    return p.parse_args(argv)


def setting_name(task: str, options: dict, sigma: float) -> str:
    kernel = options["kernel"] + (f" {options['width']:g}" if "width" in options else "")
    return f"{task} {kernel}, noise {sigma:g}"


def kernel_right(options: dict, estimate) -> bool:
    kernel = estimate.kernel
    if kernel.family != options["kernel"]:
        return False
    return "width" not in options or abs(kernel.width - options["width"]) <= WIDTH_TOLERANCE + 1e-9


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.report:  # runs split by --settings, merged
        from pipelines.evaluation.statistics import paired_difference

        records = [r for path in args.report.split(",") for r in json.loads(Path(path).read_text())["records"]]
        print(table(records, paired_difference))
        print(calibration(records))
        return 0
    import numpy as np
    import torch
    from PIL import Image

    from adir_ops.metrics.quality import compute_metrics
    from adir_ops.physics.operators import make_operator, observe
    from adir_ops.pipeline import ADIRPipeline
    from adir_ops.priors.registry import load_local_prior
    from adir_ops.retrieval.arms import NoNeighbours
    from adir_ops.rng import generator_for
    from adir_ops.sampling.config import SamplerConfig
    from pipelines import default_assets
    from pipelines.demo import pick_test_images
    from pipelines.evaluation.statistics import paired_difference

    torch.set_num_threads(args.threads)
    assets = Path(args.assets)
    manifest = default_assets.load_or_build(assets)
    tests = pick_test_images(manifest, args.images)
    prior = load_local_prior(args.prior).eval()
    pipe = ADIRPipeline(prior, NoNeighbours(), sampler=SamplerConfig(steps=args.steps))
    chosen = range(len(SETTINGS)) if args.settings is None else [int(i) for i in args.settings.split(",")]
    print(
        f"{len(tests)} images, {args.steps} steps, prior {args.prior}, {args.threads} thread(s), {os.cpu_count()} "
        f"CPUs; os.getloadavg() at start: {os.getloadavg()[0]:.1f}",
        flush=True,
    )

    def read(path: str) -> torch.Tensor:  # (1, 3, H, W) in [0, 1]
        array = np.asarray(Image.open(assets / path).convert("RGB"), dtype=np.float32) / 255
        return torch.from_numpy(array).permute(2, 0, 1)[None]

    def score(operator, y, truth01, image_id) -> dict[str, float]:
        with torch.inference_mode():
            result = pipe(y, operator, seed=args.seed, image_id=image_id)
            values = compute_metrics(result.image01, truth01, names=["psnr", "stlpips"])
        return {"psnr": float(values["psnr"][0]), "stlpips": float(values["stlpips"][0])}

    records, start = [], time.perf_counter()
    for index in chosen:
        task, options, sigma = SETTINGS[index]
        name = setting_name(task, options, sigma)
        for item in tests:
            image_id = Path(item["path"]).stem
            truth01 = read(item["path"])
            size = tuple(truth01.shape[-2:])
            truth = make_operator(task, image_size=size, noise_sigma_255=sigma, **options)
            y = truth.degrade(truth01 * 2 - 1, generator_for(args.seed, f"{image_id}#{name}"))
            y01 = ((y + 1) / 2).clamp(0, 1).mul(255).round().div(255)  # a photo file holds 8 bits
            seen = observe(task, y01, degraded=True, degradation="auto")  # the job's estimate, from y alone
            # The oracle knows the noise the stored y holds: the generator's and 8-bit rounding's. Without the
            # rounding, a noiseless Gaussian blur's exact projection amplifies it (docs/blind.md: 5 dB).
            oracle_sigma = math.hypot(sigma, ROUNDING_SIGMA) if args.oracle_rounding else sigma
            oracle = make_operator(task, image_size=size, noise_sigma_255=oracle_sigma, **options)
            fixed = make_operator(task, image_size=size)
            y = y01 * 2 - 1
            record = {
                "setting": name,
                "image": image_id,
                "noise_est": seen.estimate.noise.sigma_255,
                "noise_error": seen.estimate.noise.sigma_255 - sigma,
                "kernel_est": seen.estimate.kernel.name,
                "kernel_right": kernel_right(options, seen.estimate),
                "oracle_sigma": oracle_sigma,
                "unsure": seen.estimate.unsure,
                "estimate": json.loads(seen.estimate.to_json()),
                "auto": score(seen.operator, y, truth01, image_id),
                "oracle": score(oracle, y, truth01, image_id),
            }
            same = fixed.config == oracle.config  # the known operator is the truth here: one reconstruction
            record["fixed"] = record["oracle"] if same else score(fixed, y, truth01, image_id)
            records.append(record)
            print(
                f"{name:34s} {image_id:44s} noise {record['noise_est']:5.1f} kernel {record['kernel_est']:13s}"
                f"{' unsure' if record['unsure'] else '       '} PSNR auto {record['auto']['psnr']:.2f} oracle "
                f"{record['oracle']['psnr']:.2f} fixed {record['fixed']['psnr']:.2f}  "
                f"({time.perf_counter() - start:.0f} s)",
                flush=True,
            )
    print(f"os.getloadavg() at end: {os.getloadavg()[0]:.1f}; {time.perf_counter() - start:.0f} s")
    if args.json:  # first: a table that fails to print must not cost the measurements
        Path(args.json).write_text(json.dumps({"args": vars(args), "records": records}, indent=1))
    print(table(records, paired_difference))
    print(calibration(records))
    return 0


def _interval(paired, scale: float = 1.0, digits: int = 2) -> str:
    if paired.low is None:
        return "n/a"
    return f"{paired.mean * scale:+.{digits}f} [{paired.low * scale:+.{digits}f}, {paired.high * scale:+.{digits}f}]"


def table(records: list[dict], paired_difference) -> str:
    """The markdown table: per setting (then per task, pooled) estimation error and paired quality differences."""
    import numpy as np

    header = (
        "| setting | n | noise MAE | kernel right | unsure | PSNR auto | auto - oracle PSNR | auto - fixed PSNR "
        "| auto - oracle ST-LPIPS (x100) | auto - fixed ST-LPIPS (x100) |"
    )
    lines = [header, "|" + "---|" * 10]
    groups: dict[str, list[dict]] = {}
    for r in records:
        groups.setdefault(r["setting"], []).append(r)
    for task in ("deblur", "sr4"):
        pooled = [r for r in records if r["setting"].startswith(task + " ")]
        if pooled:
            groups[f"**{task}, all settings**"] = pooled
    for name, rows in groups.items():

        def column(arm, metric, rows=rows):
            return {f"{r['setting']}|{r['image']}": r[arm][metric] for r in rows}

        cells = [
            name,
            str(len(rows)),
            f"{np.mean([abs(r['noise_error']) for r in rows]):.2f}",
            f"{np.mean([r['kernel_right'] for r in rows]):.2f}",
            f"{np.mean([r['unsure'] is not None for r in rows]):.2f}",
            f"{np.mean([r['auto']['psnr'] for r in rows]):.2f}",
        ]
        for metric, scale in (("psnr", 1.0), ("stlpips", 100.0)):
            for other in ("oracle", "fixed"):
                cells.append(_interval(paired_difference(column("auto", metric), column(other, metric)), scale))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def calibration(records: list[dict], side: int = 96) -> str:
    """How right the kernel is when the estimate is sure, for margins around the one the job uses.

    The gap of a record: the nearest rival's criterion (its negative log-likelihood above the choice's, rivals
    as the estimator counts them), per coefficient of y (side x side for blur, (side / 4)^2 for SR x4, less
    the mean), in the units of adir_ops.physics.estimate.UNSURE_NATS_PER_COEFFICIENT.
    """
    import numpy as np

    from adir_ops.physics.estimate import UNSURE_NATS_PER_COEFFICIENT, _same_blur

    lines = ["| kernel | margin (x the job's) | sure | right when sure | right when unsure |", "|---|---|---|---|---|"]
    for task, what, pixels in (("deblur", "blur", side * side), ("sr4", "SR kernel", (side // 4) ** 2)):
        rows = [r for r in records if r["setting"].startswith(task + " ")]
        if not rows:
            continue
        gaps, right = [], []
        for r in rows:
            kernel = r["estimate"]["kernel"]
            chosen = r["kernel_est"]
            rivals = [gap for name, gap in kernel["criteria"].items() if name != chosen]
            if task == "deblur":
                rivals = [
                    gap for name, gap in kernel["criteria"].items() if name != chosen and _same_blur(chosen, name)
                ]
            gaps.append(min(rivals) / (pixels - 1))
            right.append(r["kernel_right"])
        gaps, right = np.array(gaps), np.array(right)
        for factor in (0.0, 0.5, 1.0, 2.0, 4.0):
            sure = gaps >= factor * UNSURE_NATS_PER_COEFFICIENT[what]
            cells = [
                what,
                f"{factor:g}",
                f"{sure.mean():.2f}",
                f"{right[sure].mean():.2f}" if sure.any() else "n/a",
                f"{right[~sure].mean():.2f}" if (~sure).any() else "n/a",
            ]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())

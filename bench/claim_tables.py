"""The claim's headline tables from an `adir demo` (or `adir evaluate`) output: every arm against the naive inverse and against each other.

    .venv/bin/python bench/claim_tables.py DEMO_OUT [--pairs adir:baseline,adir:random-nn,...]

Reads DEMO_OUT/per_image.csv (one row per task, arm and image; `plain` is the naive inverse)
and prints markdown: per task and metric, each arm's median over the images, and the paired
differences asked for (default: every arm − plain, then ADIR − each other arm) as mean
[95% Student-t interval], with how many images the difference favours ADIR (or the first arm).
The direction of each metric is that of `adir_ops.metrics.quality` (PSNR, SSIM up; the rest down).
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections import defaultdict

HIGHER_IS_BETTER = {"psnr": True, "ssim": True, "niqe": False, "brisque": False, "piqe": False, "stlpips": False}
ARMS = ("plain", "baseline", "adir", "random-nn", "mse-nn")
DEFAULT_PAIRS = "baseline:plain,adir:plain,random-nn:plain,mse-nn:plain,adir:baseline,adir:random-nn,adir:mse-nn"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", help="an adir demo / adir evaluate output folder (holds per_image.csv)")
    p.add_argument("--pairs", default=DEFAULT_PAIRS, help="comma-separated A:B pairs, A − B per image")
    args = p.parse_args(argv)
    import numpy as np

    from pipelines.evaluation.statistics import paired_difference  # the evaluation's own interval

    scores: dict[tuple[str, str, str], dict[str, float]] = defaultdict(dict)  # (task, arm, metric) -> {image: v}
    with open(f"{args.out}/per_image.csv", newline="") as f:
        for row in csv.DictReader(f):
            if row["error"]:
                continue
            for metric in HIGHER_IS_BETTER:
                if row.get(metric):
                    scores[row["task"], row["arm"], metric][row["image_id"]] = float(row[metric])
    tasks = list(dict.fromkeys(task for task, _, _ in scores))
    pairs = [tuple(pair.split(":")) for pair in args.pairs.split(",")]
    for task in tasks:
        arms = [a for a in ARMS if any((task, a, m) in scores for m in HIGHER_IS_BETTER)]
        n = len(scores[task, arms[0], "psnr"])
        print(f"\n### {task} ({n} images)\n")
        print("Median per arm:\n")
        print("| metric | " + " | ".join(arms) + " |")
        print("| --- |" + " --- |" * len(arms))
        for metric, up in HIGHER_IS_BETTER.items():
            cells = [f"{np.median(list(scores[task, a, metric].values())):.4g}" for a in arms]
            print(f"| {metric} {'↑' if up else '↓'} | " + " | ".join(cells) + " |")
        print("\nPaired differences, mean [95% interval] (images where the first arm is better / n):\n")
        print("| metric | " + " | ".join(f"{a} − {b}" for a, b in pairs) + " |")
        print("| --- |" + " --- |" * len(pairs))
        for metric, up in HIGHER_IS_BETTER.items():
            cells = []
            for a, b in pairs:
                first, second = scores.get((task, a, metric), {}), scores.get((task, b, metric), {})
                both = sorted(set(first) & set(second))
                if not both:
                    cells.append("—")
                    continue
                pair = paired_difference(first, second)
                better = sum((first[i] > second[i]) if up else (first[i] < second[i]) for i in both)
                low, high = (pair.low, pair.high) if pair.low is not None else (float("nan"),) * 2
                cells.append(f"{pair.mean:+.3g} [{low:+.3g}, {high:+.3g}] ({better}/{pair.n})")
            print(f"| {metric} {'↑' if up else '↓'} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

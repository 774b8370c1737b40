"""How much fine detail each arm's reconstructions carry, relative to the ground truth: sharper or smoother than the truth?

    python -m bench.texture_energy results-default --tasks sr4,deblur,colorize

Reads the run folders `adir demo` writes (OUT/runs/<task>-<mode>/results.parquet and their
PNGs) and prints, per task and arm, the mean over images of E(output) / E(ground truth), where
E is the RMS of an image minus its 5-tap binomial blur (detail finer than about 1.5 px, what
SR x4 and the 5x5 blur remove). 1 = the truth's amount of detail; above 1 = grain or noise the
truth does not have. PSNR punishes detail in the wrong place, so this separates "smoother"
from "wrong" when an arm's PSNR drops (docs/results-default.md).
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

MODES = ("baseline", "adir", "random-nn", "mse-nn")


def detail_energy(image):
    """RMS of (3, H, W) image in [0, 1] minus its separable [1 4 6 4 1]/16 blur (reflect-padded)."""
    import torch
    import torch.nn.functional as F

    taps = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0]) / 16
    kernel = (taps[:, None] * taps[None]).expand(3, 1, 5, 5)
    x = image[None]
    blurred = F.conv2d(F.pad(x, (2, 2, 2, 2), mode="reflect"), kernel, groups=3)
    return float((x - blurred).pow(2).mean().sqrt())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", help="an `adir demo --out` folder (holds runs/<task>-<mode>/)")
    p.add_argument("--tasks", default="sr4,deblur,colorize")
    args = p.parse_args(argv)
    import numpy as np
    import pyarrow.parquet as pq

    from adir_storage import read_bytes
    from cluster.images import decode_rgb, to_tensor01

    runs = Path(args.out) / "runs"
    for task in args.tasks.split(","):
        truth: dict[str, float] = {}
        cells = []
        for mode in MODES:
            table = runs / f"{task}-{mode}" / "results.parquet"
            if not table.exists():
                continue
            ratios = []
            for row in pq.read_table(table).to_pylist():
                if row["output"] is None:
                    continue  # an error row: nothing was reconstructed
                if row["name"] not in truth:
                    truth[row["name"]] = detail_energy(to_tensor01(decode_rgb(read_bytes(row["uri"]))))
                output = to_tensor01(decode_rgb(read_bytes(str(table.parent / row["output"]))))
                ratios.append(detail_energy(output) / truth[row["name"]])
            r = np.array(ratios)
            sem = r.std(ddof=1) / math.sqrt(len(r)) if len(r) > 1 else 0.0
            cells.append(f"{mode} {r.mean():.2f} ± {sem:.2f}, median {np.median(r):.2f} (n={len(r)})")
        # Means are carried by near-flat truths (tiny E), so the median is printed beside them.
        print(f"{task}: detail energy / ground truth's, mean ± s.e., median: " + "; ".join(cells))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Which noise-level estimator for `--degradation auto`: patch PCA against the wavelet MAD and Immerkaer's mask, on real photos.

    .venv/bin/python bench/blind_noise.py --assets /tmp/adir-default

Every held-out test image of the embedded default (96 px), degraded by an operator (none, SR x4 bicubic
or area: 24 px, Gaussian blur 1.0 or 2.4) with white noise of a known level from an explicit generator,
stored as 8 bits; printed per case and level: each estimator's bias and mean absolute error (0..255).
- mad: Donoho's median absolute deviation of the finest diagonal wavelet band / 0.6745 (Haar here;
  scikit-image's `estimate_sigma` is the same with Daubechies wavelets, and needs PyWavelets, not installed);
- immerkaer: Immerkaer (1996), the mean absolute response to a 3 x 3 Laplacian difference mask;
- pca: adir_ops.physics.estimate.estimate_noise_sigma (Chen, Zhu and Heng 2015), what the job uses.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

CASES = (
    ("none", None, {}),
    ("sr4 bicubic", "sr4", {"kernel": "bicubic"}),
    ("sr4 area", "sr4", {"kernel": "area"}),
    ("blur gaussian 1.0", "deblur", {"kernel": "gaussian", "width": 1.0}),
    ("blur gaussian 2.4", "deblur", {"kernel": "gaussian", "width": 2.4}),
)
LEVELS = (0, 2, 5, 10, 25)


def mad(y):
    """Donoho's MAD of the finest diagonal Haar band; y (C, H, W) in [0, 1]."""
    import numpy as np

    h, w = y.shape[1] // 2 * 2, y.shape[2] // 2 * 2
    b = y[:, :h, :w]
    diagonal = (b[:, 0::2, 0::2] - b[:, 0::2, 1::2] - b[:, 1::2, 0::2] + b[:, 1::2, 1::2]) / 2
    return float(np.median(np.abs(diagonal)) / 0.6745)


def immerkaer(y):
    """Immerkaer's fast noise variance estimation (1996); y (C, H, W) in [0, 1]."""
    import numpy as np
    from scipy.signal import convolve2d

    mask = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], dtype=np.float64)
    responses = [convolve2d(channel, mask, mode="valid") for channel in y]
    total, count = sum(np.abs(r).sum() for r in responses), sum(r.size for r in responses)
    return float(np.sqrt(np.pi / 2) * total / (6 * count))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--assets", default="/tmp/adir-default", help="pipelines.default_assets output (built if missing)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    import numpy as np
    import torch
    from PIL import Image

    from adir_ops.physics.estimate import estimate_noise_sigma
    from adir_ops.physics.operators import make_operator
    from adir_ops.rng import generator_for
    from pipelines import default_assets

    manifest = default_assets.load_or_build(args.assets)
    tests = [item for item in manifest["items"] if item["set"] == "test"]
    methods = {"mad": mad, "immerkaer": immerkaer, "pca": lambda y: estimate_noise_sigma(y).sigma_255 / 255}
    print(f"{len(tests)} held-out images; per estimator: bias / mean absolute error, 0..255 scale")
    print("| degradation | noise | " + " | ".join(methods) + " |")
    print("|---|---|" + "---|" * len(methods))
    for label, task, options in CASES:
        for level in LEVELS:
            errors = {name: [] for name in methods}
            for item in tests:
                array = np.asarray(Image.open(Path(args.assets) / item["path"]).convert("RGB"), dtype=np.float64)
                x = torch.from_numpy(array / 255).permute(2, 0, 1)[None]
                y = (
                    x
                    if task is None
                    else (make_operator(task, image_size=x.shape[-2:], **options).A(x * 2 - 1) + 1) / 2
                )
                noise = torch.randn(y.shape, generator=generator_for(args.seed, item["path"]), dtype=y.dtype)
                y = ((y + level / 255 * noise).clamp(0, 1) * 255).round()[0].numpy() / 255
                for name, method in methods.items():
                    errors[name].append(method(y) * 255 - level)
            cells = [f"{np.mean(e):+.2f} / {np.mean(np.abs(e)):.2f}" for e in errors.values()]
            print(f"| {label} | {level} | " + " | ".join(cells) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

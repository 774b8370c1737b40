"""Generated pictures for the benchmarks' corpora and inputs: smooth colour images, distinct per seed.

The suite draws its pictures from here too (tests/cluster/helpers.py), so a bench corpus looks like
the suite's; bench/ never imports tests/.
"""

from __future__ import annotations

import os

import numpy as np
from PIL import Image


def smooth_picture(seed: int, height: int, width: int) -> np.ndarray:
    """A distinct smooth colour picture: its structure survives x4 downsampling, blur and graying."""
    rng = np.random.default_rng(seed)
    grid = Image.fromarray(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8))
    return np.asarray(grid.resize((width, height), Image.Resampling.BICUBIC), dtype=np.uint8)


def write_pictures(folder: str, names_and_seeds, height: int = 32, width: int = 40, fmt: str = "png") -> list[str]:
    """Write one smooth picture per (name, seed) as folder/name.fmt; returns the paths."""
    os.makedirs(folder, exist_ok=True)
    paths = []
    for name, seed in names_and_seeds:
        path = os.path.join(folder, f"{name}.{fmt}")
        Image.fromarray(smooth_picture(seed, height, width)).save(path)
        paths.append(path)
    return paths

"""The embedded default's data: photos shipped inside our dependencies, cut into a prior-training set, a retrieval corpus and held-out test images.

Run `python -m pipelines.default_assets OUT` (a few seconds). It writes PNG patches of
`resolution` pixels (default 64, the issue's floor; see `pipelines.train_prior` for why not
more on 2 CPU cores) and `OUT/split.json`:

    OUT/prior-train/<source>/s<side>-x<x>-y<y>.png   what the default prior is trained on
    OUT/corpus/<source>/s<side>-x<x>-y<y>.png        the retrieval corpus (an `adir index build` SOURCE)
    OUT/test/<source>-x<x>-y<y>.png                  held-out images to reconstruct
    OUT/split.json                                   one row per file: set, source, box, scale

Choices, and why:
- Sources: only files present offline in packages we already install: scikit-image's data
  folder and matplotlib's sample data (`grace_hopper.jpg`). Files that scikit-image fetches
  with pooch are not used. conformal-clip-data's 2000 "textile" JPEGs were looked at and
  left out: they are near-identical gray noise of one texture and would swamp the prior;
  scikit-learn's two sample photos too, since scikit-learn is not otherwise a dependency.
  Synthetic pictures (phantom, horse, chessboard, logo, colour wheel, page, text) are left out:
  the prior is meant to be one of photographs.
- Split by photo, then by region. Five colour photos (astronaut, chelsea, coffee, rocket,
  grace_hopper) are HELD OUT: no pixel of them is in `prior-train/`. Each has a TEST BAND, a
  64-pixel-wide vertical strip through its subject (`HELD_OUT` below); the test images are the
  native-scale 64 px tiles of that band and nothing else may touch it. The rest of each
  held-out photo becomes corpus patches, so a test image's content (the cat's fur, the orange
  suit, the red cup) is in the corpus but the test image itself is not. The other eleven photos
  and textures (PRIOR below) train the prior; some patches of them also go into the corpus as
  distractors, so a random corpus image is often unrelated to a test image, as it is in the
  paper's Open Images corpus (and the random-neighbour baseline of Table 5 means something).
- Every patch is made by cutting a square box out of the ORIGINAL photo and only then
  resizing it to `resolution` (Lanczos), so a patch's pixels depend on its box alone: "no pixel
  overlap" is exactly "boxes do not intersect", which `check_split` asserts from the manifest.
  Resizing the whole photo first would let the filter carry test pixels into corpus patches.
- Several scales: box sides of 1, 2 and 4 times `resolution` (scale 1, 1/2, 1/4) on a grid with
  half-box stride. Per (photo, side) at most PRIOR_CAP (prior-train) / HELD_OUT_CAP (corpus) /
  DISTRACTOR_CAP (corpus distractors, on a grid shifted by a quarter box) patches, picked
  evenly in raster order, so the large retina and Hubble photos do not dominate. Near-flat
  patches (pixel std below FLAT_STD, e.g. the black around the retina) are dropped.
- Gray photos (camera, brick, grass, gravel, moon, coins) are stored as RGB with equal channels
  and get half the prior-train cap, so about two thirds of the prior's patches are in colour.
Everything is deterministic: no random draw at all, sorted outputs, the same bytes every run
(for one Pillow version); `split.json` records each source file's sha256.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

SETS = ("prior-train", "corpus", "test")
MANIFEST = "split.json"
FLAT_STD = 0.02  # on [0, 1] pixels
PRIOR_CAP = 128
HELD_OUT_CAP = 96
DISTRACTOR_CAP = 16

# name -> (package, file inside the package's data folder)
FILES: dict[str, tuple[str, str]] = {
    "astronaut": ("skimage", "astronaut.png"),
    "chelsea": ("skimage", "chelsea.png"),
    "coffee": ("skimage", "coffee.png"),
    "rocket": ("skimage", "rocket.jpg"),
    "grace_hopper": ("matplotlib", "grace_hopper.jpg"),
    "hubble_deep_field": ("skimage", "hubble_deep_field.jpg"),
    "ihc": ("skimage", "ihc.png"),
    "retina": ("skimage", "retina.jpg"),
    "motorcycle_left": ("skimage", "motorcycle_left.png"),
    "motorcycle_right": ("skimage", "motorcycle_right.png"),
    "camera": ("skimage", "camera.png"),
    "brick": ("skimage", "brick.png"),
    "grass": ("skimage", "grass.png"),
    "gravel": ("skimage", "gravel.png"),
    "moon": ("skimage", "moon.png"),
    "coins": ("skimage", "coins.png"),
}
# Held-out photo -> its test band (x0, y0, x1, y1) in original pixels, through the subject so
# that the same kind of content lies on both sides of it (hence in the corpus).
HELD_OUT: dict[str, tuple[int, int, int, int]] = {
    "astronaut": (128, 0, 192, 512),  # 512x512: face, orange suit, helmet ring
    "chelsea": (192, 0, 256, 300),  # 451x300: between the eyes, the nose
    "coffee": (256, 0, 320, 400),  # 600x400: cup, saucer, table
    "rocket": (288, 0, 352, 427),  # 640x427: the rocket, night sky, lights
    "grace_hopper": (192, 0, 256, 600),  # 512x600: face, glasses, uniform, tie
}
# Both motorcycle images are a stereo pair of one scene: they stay on the same side (prior).
PRIOR = tuple(name for name in FILES if name not in HELD_OUT)


@dataclass(frozen=True)
class DefaultAssetsConfig:
    """How the photos are cut: patch size and the box sides, as multiples of it."""

    resolution: int = 64
    scales: tuple[int, ...] = (1, 2, 4)  # box side = resolution * s; patch scale = 1 / s
    prior_cap: int = PRIOR_CAP
    held_out_cap: int = HELD_OUT_CAP
    distractor_cap: int = DISTRACTOR_CAP
    flat_std: float = FLAT_STD

    def __post_init__(self) -> None:
        if self.resolution < 8:
            raise ValueError(f"resolution must be at least 8 pixels; got {self.resolution}")
        band = min(x1 - x0 for x0, _, x1, _ in HELD_OUT.values())
        if self.resolution > band:
            raise ValueError(
                f"resolution {self.resolution} is wider than the {band}-pixel test bands of the held-out photos; "
                f"use at most {band} or widen HELD_OUT's bands"
            )
        if not self.scales or any(int(s) != s or s < 1 for s in self.scales):
            raise ValueError(f"scales must be integers >= 1 (box side = resolution * scale); got {self.scales}")


def source_path(name: str) -> Path:
    """Where the photo `name` ships: inside the installed scikit-image or matplotlib."""
    from importlib.resources import files

    package, filename = FILES[name]
    if package == "skimage":
        path = Path(str(files("skimage") / "data" / filename))
    else:
        path = Path(str(files("matplotlib") / "mpl-data" / "sample_data" / filename))
    if not path.is_file():
        raise FileNotFoundError(f"{filename} is not in the installed {package} ({path}); reinstall {package} (pip install -e .)")
    return path


def load_photo(name: str) -> np.ndarray:
    """(H, W, 3) uint8 RGB; gray photos get three equal channels."""
    from PIL import Image

    with Image.open(source_path(name)) as im:
        return np.asarray(im.convert("RGB"))


def is_gray(photo: np.ndarray) -> bool:
    return bool((photo[..., 0] == photo[..., 1]).all() and (photo[..., 1] == photo[..., 2]).all())


def grid_boxes(width: int, height: int, side: int, stride: int, offset: int = 0) -> list[tuple[int, int, int, int]]:
    """Square boxes (x0, y0, x1, y1) of `side` on a grid, in raster order, all inside the photo."""
    ys = range(offset, height - side + 1, stride)
    xs = range(offset, width - side + 1, stride)
    return [(x, y, x + side, y + side) for y in ys for x in xs]


def intersects(a: tuple[int, ...], b: tuple[int, ...]) -> bool:
    """Whether two half-open boxes share a pixel."""
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def cut(photo: np.ndarray, box: tuple[int, int, int, int], resolution: int) -> np.ndarray:
    """The box, cut out first and then resized, so no pixel outside it reaches the patch."""
    from PIL import Image

    x0, y0, x1, y1 = box
    patch = Image.fromarray(np.ascontiguousarray(photo[y0:y1, x0:x1]))
    if patch.size != (resolution, resolution):
        patch = patch.resize((resolution, resolution), Image.Resampling.LANCZOS)
    return np.asarray(patch)


def _pick_evenly(items: list, cap: int) -> list:
    if len(items) <= cap:
        return items
    keep = np.unique(np.round(np.linspace(0, len(items) - 1, cap)).astype(int))
    return [items[i] for i in keep]


def _is_flat(patch: np.ndarray, flat_std: float) -> bool:
    return float(patch.std()) / 255.0 < flat_std


def plan(config: DefaultAssetsConfig, photos: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    """Every patch to write: {set, source, box, side, scale, path, content}; no pixels are written here."""
    r = config.resolution
    rows: list[dict[str, Any]] = []

    def add(set_name: str, name: str, boxes: list, cap: int, content: str) -> None:
        kept = [b for b in boxes if not _is_flat(cut(photos[name], b, r), config.flat_std)]
        for box in _pick_evenly(kept, cap):
            side = box[2] - box[0]
            x, y = box[0], box[1]
            if set_name == "test":
                path = f"test/{name}-x{x:04d}-y{y:04d}.png"
            else:
                path = f"{set_name}/{name}/s{side:04d}-x{x:04d}-y{y:04d}.png"
            rows.append({"set": set_name, "source": name, "box": list(box), "side": side,
                         "scale": r / side, "path": path, "content": content})

    for name in PRIOR:
        height, width = photos[name].shape[:2]
        # Gray photos get half the cap: six of the eleven are gray, and a prior that mostly
        # saw gray would colourise everything gray before any adaptation.
        cap = config.prior_cap // 2 if is_gray(photos[name]) else config.prior_cap
        for s in config.scales:
            side = r * s
            add("prior-train", name, grid_boxes(width, height, side, max(side // 2, 1)), cap, "prior")
            # Shifted by a quarter box: corpus distractors are not the prior's exact patches.
            add("corpus", name, grid_boxes(width, height, side, side, offset=side // 4), config.distractor_cap, "prior")
    for name, band in HELD_OUT.items():
        height, width = photos[name].shape[:2]
        for s in config.scales:
            side = r * s
            boxes = [b for b in grid_boxes(width, height, side, max(side // 2, 1)) if not intersects(b, band)]
            add("corpus", name, boxes, config.held_out_cap, "held-out")
        bx0, by0, bx1, by1 = band
        tiles = grid_boxes(bx1 - bx0, by1 - by0, r, r)
        # Test images keep even near-flat tiles: they are what was set aside, not a choice.
        for x0, y0, x1, y1 in tiles:
            box = (x0 + bx0, y0 + by0, x1 + bx0, y1 + by0)
            rows.append({"set": "test", "source": name, "box": list(box), "side": r, "scale": 1.0,
                         "path": f"test/{name}-x{box[0]:04d}-y{box[1]:04d}.png", "content": "held-out"})
    return rows


def check_split(manifest: dict[str, Any]) -> None:
    """Raise AssertionError unless the manifest's split is honest.

    1. no held-out photo has any patch in prior-train;
    2. every test image's photo has patches in the corpus (its content is retrievable);
    3. no test box shares a pixel with any other patch of its photo, in any set;
    and no file is listed twice.
    """
    items = manifest["items"]
    paths = [it["path"] for it in items]
    assert len(paths) == len(set(paths)), "a file is listed twice in the manifest"
    held_out = {name for name, src in manifest["sources"].items() if src["role"] == "held-out"}
    in_prior = {it["source"] for it in items if it["set"] == "prior-train"}
    assert not (held_out & in_prior), f"held-out photos {sorted(held_out & in_prior)} have prior-train patches"
    in_corpus = {it["source"] for it in items if it["set"] == "corpus"}
    tests = [it for it in items if it["set"] == "test"]
    assert tests, "no test images"
    missing = sorted({it["source"] for it in tests} - in_corpus)
    assert not missing, f"test photos {missing} have no patch in the corpus"
    assert {it["source"] for it in tests} <= held_out, "a test image comes from a photo that is not held out"
    by_source: dict[str, list[dict[str, Any]]] = {}
    for it in items:
        by_source.setdefault(it["source"], []).append(it)
    for t in tests:
        for other in by_source[t["source"]]:
            if other is not t and intersects(t["box"], other["box"]):
                raise AssertionError(f"test image {t['path']} {t['box']} shares pixels with {other['path']} {other['box']}")


def build(out: str | os.PathLike, config: DefaultAssetsConfig = DefaultAssetsConfig()) -> dict[str, Any]:
    """Write the three sets and `split.json` under `out`; returns the manifest.

    Refuses a folder that already holds a different split, rather than mixing two.
    """
    from PIL import Image

    out = Path(out)
    photos = {name: load_photo(name) for name in FILES}
    rows = plan(config, photos)
    manifest = {
        "config": asdict(config),
        "sources": {
            name: {
                "file": f"{FILES[name][0]}:{FILES[name][1]}",
                "sha256": hashlib.sha256(source_path(name).read_bytes()).hexdigest(),
                "size": [int(photos[name].shape[1]), int(photos[name].shape[0])],
                "role": "held-out" if name in HELD_OUT else "prior",
                "gray": is_gray(photos[name]),
                **({"test_band": list(HELD_OUT[name])} if name in HELD_OUT else {}),
            }
            for name in FILES
        },
        "counts": {s: sum(r["set"] == s for r in rows) for s in SETS},
        "items": rows,
    }
    check_split(manifest)
    existing = out / MANIFEST
    if existing.is_file():
        old = json.loads(existing.read_text())
        if old.get("items") != rows:
            raise FileExistsError(f"{out} already holds another split ({existing}); pick an empty folder or delete it")
    for row in rows:
        path = out / row["path"]
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(cut(photos[row["source"]], tuple(row["box"]), config.resolution)).save(path)
    existing.write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def load_manifest(out: str | os.PathLike) -> dict[str, Any]:
    path = Path(out) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"no {MANIFEST} in {out}; write the default assets first: python -m pipelines.default_assets {out}")
    return json.loads(path.read_text())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.default_assets", description=__doc__.splitlines()[0])
    parser.add_argument("out", help="output folder (gets prior-train/, corpus/, test/ and split.json)")
    parser.add_argument("--resolution", type=int, default=DefaultAssetsConfig.resolution, help="patch side in pixels (default 64)")
    args = parser.parse_args(argv)
    manifest = build(args.out, DefaultAssetsConfig(resolution=args.resolution))
    counts = manifest["counts"]
    print(f"wrote {args.out}: " + ", ".join(f"{counts[s]} {s}" for s in SETS), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

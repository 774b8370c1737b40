"""The embedded default's data: the ~300 real photos shipped in `pipelines/photos/data`, cut into a prior-training set, a retrieval corpus and held-out test images.

Run `python -m pipelines.default_assets OUT` (about half a minute). It writes PNG crops and `OUT/split.json`:

    OUT/prior-train/<photo>/s<side>-x<x>-y<y>.png   what a default prior is trained on
    OUT/corpus/<photo>/s<side>-x<x>-y<y>.png        the retrieval corpus (an `adir index build` SOURCE)
    OUT/test/<photo>-x<x>-y<y>.png                  held-out images to reconstruct
    OUT/split.json                                  one row per file: set, source, class, box, scale

The photos come from Debian packages (gcompris-qt-data, opencv-doc, plasma-workspace-wallpapers,
palapeli-data; `pipelines/photos/derive.py` rebuilds them, `CREDITS.tsv` names author and licence
of each). The split is `pipelines.photos.split`'s, by photo and never by crop:
- TEST photos (24 by default, drawn per content class with a seeded draw) each give
  `test_per_photo` adjacent test crops of a `test_side` box; no other crop of any set touches
  that region, and no crop of a test photo is in `prior-train/`;
- the CORPUS holds crops of every photo at three scales, the test photos' other regions
  included (as the paper's 1.7M-image corpus holds images like the input), so the encoder's
  neighbours of a test image can be other views of its scene, or of its class;
- PRIOR-TRAIN holds crops of the other photos only.
Every crop is a box of the ORIGINAL photo resized alone (Lanczos), so "no pixel shared" is
exactly "boxes do not intersect", which `check_split` asserts. Test crops are written at
`test_resolution` (default 96, 1.5x the prior's 64 px: NIQE needs at least 96 px, and the tiled
prior reconstructs any size). Deterministic: the same bytes every run for one Pillow version.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

SETS = ("prior-train", "corpus", "test")
MANIFEST = "split.json"


@dataclass(frozen=True)
class DefaultAssetsConfig:
    resolution: int = 64  # prior-train and corpus crops: the prior's native size
    test_resolution: int = 96  # held-out test images
    seed: int = 0  # the split's draw of test photos and test regions
    test_photos: int = 24
    test_per_photo: int = 2
    corpus_cap: int = 2  # corpus crops per (photo, side): 305 photos x 3 sides x 2 = ~1800 images
    prior_cap: int = 16  # prior-train crops per (photo, side)

    def __post_init__(self) -> None:
        for name in ("resolution", "test_resolution", "test_photos", "test_per_photo", "corpus_cap", "prior_cap"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1; got {getattr(self, name)}")

    def crops(self):
        from pipelines.photos.split import CropConfig

        return CropConfig(
            resolution=self.resolution,
            test_per_photo=self.test_per_photo,
            corpus_cap=self.corpus_cap,
            prior_cap=self.prior_cap,
        )


def _path(row: dict[str, Any]) -> str:
    x, y = row["box"][0], row["box"][1]
    if row["set"] == "test":
        return f"test/{row['photo']}-x{x:04d}-y{y:04d}.png"
    return f"{row['set']}/{row['photo']}/s{row['side']:04d}-x{x:04d}-y{y:04d}.png"


def plan(
    config: DefaultAssetsConfig, photos: dict | None = None
) -> tuple[dict[str, list[str]], list[dict[str, Any]], dict]:
    """(split, manifest rows, photos): every file to write; no pixels are written here."""
    from pipelines.photos import load_photos, photo_classes, plan_crops, split_photos

    split = split_photos(seed=config.seed, n_test=config.test_photos, config=config.crops())
    photos = photos if photos is not None else load_photos()
    classes = photo_classes()
    test = set(split["test"])
    rows = []
    for row in plan_crops(split, photos, config.crops(), seed=config.seed, classes=classes):
        resolution = config.test_resolution if row["set"] == "test" else config.resolution
        rows.append(
            {
                "set": row["set"],
                "source": row["photo"],
                "class": row["class"],
                "box": list(row["box"]),
                "side": row["side"],
                "scale": resolution / row["side"],
                "path": _path(row),
                "content": "held-out" if row["photo"] in test else "prior",
            }
        )
    return split, sorted(rows, key=lambda r: r["path"]), photos


def check_split(manifest: dict[str, Any], photos: dict | None = None) -> None:
    """Raise ValueError unless no test pixel is in prior-train and the sets are what the manifest says."""
    from pipelines.photos import check_split as check_photo_split

    paths = [it["path"] for it in manifest["items"]]
    if len(paths) != len(set(paths)):
        raise ValueError("a file is listed twice in the manifest")
    crops = [{"set": it["set"], "photo": it["source"], "box": tuple(it["box"])} for it in manifest["items"]]
    check_photo_split(manifest["split"], crops, photos)
    tests = {it["source"] for it in manifest["items"] if it["set"] == "test"}
    in_corpus = {it["source"] for it in manifest["items"] if it["set"] == "corpus"}
    if not tests or tests - in_corpus:
        raise ValueError(
            f"test photos {sorted(tests - in_corpus)} have no crop in the corpus (or there are no test images)"
        )


def build(
    out: str | os.PathLike, config: DefaultAssetsConfig = DefaultAssetsConfig(), sets: tuple[str, ...] = SETS
) -> dict[str, Any]:
    """Write `sets` (default all three) and `split.json` under `out`; returns the manifest (which lists every set).

    Refuses a folder that already holds a different split, rather than mixing two; an
    identical one is reused, writing any of `sets` it lacks. The demo writes only corpus
    and test: the 8,000 prior-train crops are for training a prior.
    """
    from PIL import Image

    from pipelines.photos import credits, cut

    unknown = sorted(set(sets) - set(SETS))
    if unknown:
        raise ValueError(f"unknown sets {unknown}; choose from {', '.join(SETS)}")
    out = Path(out)
    split, rows, photos = plan(config)
    info = credits()
    manifest = {
        "config": asdict(config),
        "split": split,
        "sources": {
            name: {
                "role": "held-out" if name in split["test"] else "prior",
                "class": info[name].get("class"),
                "licence": info[name].get("licence"),
                "author": info[name].get("author"),
                "size": [int(photos[name].shape[1]), int(photos[name].shape[0])],
            }
            for name in sorted(set(split["test"]) | set(split["prior-train"]) | set(split["corpus"]))
        },
        "counts": {s: sum(r["set"] == s for r in rows) for s in SETS},
        "items": rows,
    }
    check_split(manifest, photos)
    existing = out / MANIFEST
    if existing.is_file() and json.loads(existing.read_text()).get("items") != rows:
        raise FileExistsError(f"{out} already holds another split ({existing}); pick an empty folder or delete it")
    for row in rows:
        if row["set"] not in sets:
            continue
        path = out / row["path"]
        if path.is_file():
            continue  # written by an earlier build of this same split
        path.parent.mkdir(parents=True, exist_ok=True)
        resolution = config.test_resolution if row["set"] == "test" else config.resolution
        Image.fromarray(cut(photos[row["source"]], tuple(row["box"]), resolution)).save(path)
    existing.write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def load_manifest(out: str | os.PathLike) -> dict[str, Any]:
    path = Path(out) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(
            f"no {MANIFEST} in {out}; write the default assets first: python -m pipelines.default_assets {out}"
        )
    return json.loads(path.read_text())


def load_or_build(out: str | os.PathLike) -> dict[str, Any]:
    """The manifest of the assets at `out`, built there first if they are not (what the benches start from)."""
    return load_manifest(out) if (Path(out) / MANIFEST).exists() else build(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.default_assets", description=__doc__.splitlines()[0])
    parser.add_argument("out", help="output folder (gets prior-train/, corpus/, test/ and split.json)")
    defaults = DefaultAssetsConfig()
    parser.add_argument(
        "--resolution", type=int, default=defaults.resolution, help="prior-train and corpus crop side (default 64)"
    )
    parser.add_argument(
        "--test-resolution", type=int, default=defaults.test_resolution, help="test image side (default 96)"
    )
    parser.add_argument(
        "--corpus-cap", type=int, default=defaults.corpus_cap, help="corpus crops per photo and scale (default 2)"
    )
    parser.add_argument("--seed", type=int, default=defaults.seed, help="seed of the split (default 0)")
    parser.add_argument("--sets", default=",".join(SETS), help=f"sets to write (default {','.join(SETS)})")
    args = parser.parse_args(argv)
    config = DefaultAssetsConfig(
        resolution=args.resolution, test_resolution=args.test_resolution, corpus_cap=args.corpus_cap, seed=args.seed
    )
    manifest = build(args.out, config, sets=tuple(s for s in args.sets.split(",") if s))
    counts = manifest["counts"]
    print(f"wrote {args.out}: " + ", ".join(f"{counts[s]} {s}" for s in SETS), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

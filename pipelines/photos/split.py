"""The committed photos (pipelines/photos/data/) as test / prior-training / corpus sets, split by photo, and their crops.

    photos = load_photos()                    # {name: (H, W, 3) uint8}, long side <= 512
    classes = photo_classes()                 # {name: 'animal' | 'building' | ...}
    split = split_photos(seed=0)              # {'test': [...], 'prior-train': [...], 'corpus': [...]}
    crops = plan_crops(split, photos)         # rows {set, photo, class, box, side, scale}
    check_split(split, crops, photos)         # raises if a test pixel could reach the prior
    patch = cut(photos[row['photo']], row['box'], 64)

Rules, and why:
- The split is by photo (by scene: SAME_SCENE photos go together), never by crop: a test photo
  gives no crop at all to the prior-training set, so "no test pixel in the prior" is a property
  of the photo lists, and `check_split` also compares every test photo against every prior
  photo for near-duplicates (a second photo from the same viewpoint would carry the test content).
- Test photos are drawn per content class (each class's photos shuffled by `seed`): one per
  class, the rest in proportion to class size, never more than half a class, so every class is
  tested and every class stays in the prior and the corpus.
  Only photos whose short side fits a TEST REGION and leaves room around it are eligible.
- Each test photo has one test region: `test_per_photo` adjacent square boxes of `test_side`
  pixels (the test crops), placed at a seeded position where no crop is flat. The retrieval
  corpus holds crops of every photo, test photos included, but never a box that touches a
  test region: the query's own photo is in the corpus as other views of the same scene, as the
  paper's corpus holds images like the input, while the test images themselves are not.
- Every crop is cut from the stored photo and only then resized (Lanczos), so a crop's pixels
  depend on its box alone and "shares no pixel" is exactly "boxes do not intersect".
"""

from __future__ import annotations

import csv
import functools
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.photos.crops import cut, grid_boxes, intersects, is_flat, pick_evenly  # noqa: F401  (cut: public here too)

DATA_DIR = Path(__file__).resolve().parent / "data"
SETS = ("test", "prior-train", "corpus")

# Different files of one scene from (nearly) one viewpoint: always on the same side of the split.
# Found by comparing 32x32 thumbnails of every pair: this pair correlates 0.895, every other
# pair at most 0.853 (sky-over-ground layouts of unrelated scenes); a copy would be near 1.
SAME_SCENE: tuple[tuple[str, ...], ...] = (
    ("gcompris-details-neuschwanstein", "gcompris-explore-germany-neuschwansteincastle"),
)
NEAR_DUPLICATE = 0.9  # 32x32 RGB thumbnail correlation above which two photos count as one scene


@dataclass(frozen=True)
class CropConfig:
    """How photos are cut. Sides are in stored-photo pixels (long side <= 512); every crop is resized to `resolution`."""

    resolution: int = 64
    test_side: int = 128  # a test image shows a 128 px box of a <= 512 px photo, at scale 1/2
    test_per_photo: int = 2
    corpus_sides: tuple[int, ...] = (64, 128, 256)
    corpus_cap: int = 8  # per (photo, side)
    prior_sides: tuple[int, ...] = (64, 128, 256)
    prior_cap: int = 16  # per (photo, side)
    flat_std: float = 0.02  # crops whose pixel std (on [0, 1]) is below this are dropped
    margin: int = 64  # an eligible test photo keeps at least this much room beside its test region

    def __post_init__(self) -> None:
        if self.resolution < 8 or self.test_side < self.resolution // 4:
            raise ValueError(
                f"resolution must be >= 8 and test_side >= resolution / 4; got {self.resolution}, {self.test_side}"
            )
        if self.test_per_photo < 1:
            raise ValueError(f"test_per_photo must be at least 1; got {self.test_per_photo}")

    @property
    def region(self) -> tuple[int, int]:
        """(width, height) of a test region."""
        return self.test_side * self.test_per_photo, self.test_side


# -- the committed files ---------------------------------------------------------------------------
@functools.lru_cache(maxsize=4)
def _credits(data_dir: str) -> dict[str, dict[str, str]]:
    path = Path(data_dir) / "CREDITS.tsv"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; rebuild the photo set with python -m pipelines.photos.derive")
    with open(path, newline="", encoding="utf-8") as fh:
        return {Path(row["file"]).stem: row for row in csv.DictReader(fh, delimiter="\t")}


def credits(data_dir: str | Path = DATA_DIR) -> dict[str, dict[str, str]]:
    """{name: its CREDITS.tsv row (file, class, source_package, source_path, author, licence, ...)}."""
    return dict(_credits(str(data_dir)))


def photo_classes(data_dir: str | Path = DATA_DIR) -> dict[str, str]:
    """{name: content class}: animal, building, food, landscape, object, people, plant."""
    return {name: row["class"] for name, row in _credits(str(data_dir)).items()}


def photo_names(data_dir: str | Path = DATA_DIR) -> list[str]:
    return sorted(_credits(str(data_dir)))


def load_photos(names: list[str] | None = None, data_dir: str | Path = DATA_DIR) -> dict[str, np.ndarray]:
    """{name: (H, W, 3) uint8 RGB} for `names` (default: all photos)."""
    from PIL import Image

    out = {}
    for name in names if names is not None else photo_names(data_dir):
        row = _credits(str(data_dir)).get(name)
        if row is None:
            raise KeyError(f"no photo named {name!r} in {data_dir} (see its CREDITS.tsv)")
        with Image.open(Path(data_dir) / row["file"]) as im:
            out[name] = np.asarray(im.convert("RGB"))
    return out


def verify_manifest(data_dir: str | Path = DATA_DIR) -> list[str]:
    """Names of files whose sha256 differs from manifest.json (or that are missing); empty when all match."""
    data_dir = Path(data_dir)
    manifest = json.loads((data_dir / "manifest.json").read_text())
    bad = []
    for filename, info in manifest["files"].items():
        path = data_dir / filename
        if not path.is_file() or hashlib.sha256(path.read_bytes()).hexdigest() != info["sha256"]:
            bad.append(filename)
    if hashlib.sha256((data_dir / "CREDITS.tsv").read_bytes()).hexdigest() != manifest["credits_sha256"]:
        bad.append("CREDITS.tsv")
    return bad


def _photo_size(name: str, data_dir: str | Path) -> tuple[int, int]:
    """(width, height) from manifest.json, without decoding the photo."""
    return _sizes(str(data_dir))[name]


@functools.lru_cache(maxsize=4)
def _sizes(data_dir: str) -> dict[str, tuple[int, int]]:
    files = json.loads((Path(data_dir) / "manifest.json").read_text())["files"]
    return {Path(f).stem: (int(v["width"]), int(v["height"])) for f, v in files.items()}


def scene_of(names: list[str]) -> dict[str, str]:
    """{name: scene id}: the first name of its SAME_SCENE group, else itself."""
    scene = {n: n for n in names}
    for group in SAME_SCENE:
        for n in group:
            if n in scene:
                scene[n] = group[0]
    return scene


# -- the split -----------------------------------------------------------------------------------
def eligible_for_test(name: str, config: CropConfig = CropConfig(), data_dir: str | Path = DATA_DIR) -> bool:
    """Whether the photo holds a test region with `margin` pixels of room to spare in each direction."""
    w, h = _photo_size(name, data_dir)
    rw, rh = config.region
    return w >= rw + config.margin and h >= rh + config.margin


def split_photos(
    seed: int = 0, n_test: int = 24, config: CropConfig = CropConfig(), data_dir: str | Path = DATA_DIR
) -> dict[str, list[str]]:
    """{'test': held-out photos, 'prior-train': every other photo, 'corpus': all photos}.

    Test photos are `n_test` scenes, at least one per class and otherwise in proportion to class
    size (at most half of a class), drawn (seeded) among photos large enough for a test region. The corpus lists every photo: `plan_crops` keeps test regions out.
    """
    names = photo_names(data_dir)
    classes = photo_classes(data_dir)
    scene = scene_of(names)
    members: dict[str, list[str]] = {}
    for n in names:
        members.setdefault(scene[n], []).append(n)
    rng = np.random.default_rng(seed)
    by_class: dict[str, list[str]] = {}
    total: dict[str, int] = {}
    for s, group in sorted(members.items()):
        klass = classes[group[0]]
        total[klass] = total.get(klass, 0) + 1
        if all(eligible_for_test(n, config, data_dir) for n in group):
            by_class.setdefault(klass, []).append(s)
    for pool in by_class.values():
        rng.shuffle(pool)
    quota = _class_quotas(n_test, {k: len(v) for k, v in by_class.items()}, total)
    chosen = [s for klass in sorted(quota) for s in by_class[klass][: quota[klass]]]
    test = sorted(n for s in chosen for n in members[s])
    return {"test": test, "prior-train": sorted(set(names) - set(test)), "corpus": list(names)}


def _class_quotas(n_test: int, eligible: dict[str, int], total: dict[str, int]) -> dict[str, int]:
    """Test scenes per class: one for every class first, the rest in proportion to class size
    (largest remainder), never more than half a class's scenes, so the prior and the corpus
    keep photos of every class."""
    cap = {k: min(eligible[k], max(1, total[k] // 2)) for k in eligible}
    if n_test > sum(cap.values()):
        raise ValueError(
            f"n_test={n_test} but at most {sum(cap.values())} photos can be held out "
            f"(half of each class, among those large enough for a test region)"
        )
    quota = {k: 0 for k in eligible}
    for k in sorted(eligible, key=lambda k: -total[k])[:n_test]:
        quota[k] = 1
    while sum(quota.values()) < n_test:
        open_ = [k for k in quota if quota[k] < cap[k]]
        share = sum(total[k] for k in open_)
        # the class furthest below its proportional share gets the next photo
        k = max(open_, key=lambda k: (n_test * total[k] / share - quota[k], k))
        quota[k] += 1
    return quota


# -- crops -----------------------------------------------------------------------------------------
def test_region(name: str, photo: np.ndarray, config: CropConfig, seed: int) -> tuple[int, int, int, int]:
    """The test region of a test photo: a seeded position (from seed and name) where no test crop is flat,
    leaving `margin` rows free above or below it."""
    h, w = photo.shape[:2]
    rw, rh = config.region
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
    # A full-width strip of at least `margin` rows stays above or below it, for corpus crops.
    ys = [y for y in range(h - rh + 1) if y >= config.margin or h - rh - y >= config.margin] or list(range(h - rh + 1))
    best = None
    for _ in range(64):
        x, y = int(rng.integers(0, w - rw + 1)), int(ys[int(rng.integers(0, len(ys)))])
        region = (x, y, x + rw, y + rh)
        stds = [photo[b[1] : b[3], b[0] : b[2]].std() for b in _region_boxes(region, config)]
        if min(stds) / 255.0 >= config.flat_std:
            return region
        if best is None or min(stds) > best[0]:
            best = (min(stds), region)
    return best[1]


def _region_boxes(region, config: CropConfig) -> list[tuple[int, int, int, int]]:
    x0, y0 = region[0], region[1]
    s = config.test_side
    return [(x0 + i * s, y0, x0 + (i + 1) * s, y0 + s) for i in range(config.test_per_photo)]


def plan_crops(
    split: dict[str, list[str]],
    photos: dict[str, np.ndarray],
    config: CropConfig = CropConfig(),
    seed: int = 0,
    classes: dict[str, str] | None = None,
) -> list[dict[str, Any]]:
    """Every crop: {set, photo, class, box, side, scale, region}; pixels are cut later with `cut`.

    test: the boxes of each test photo's test region; corpus: a half-side-stride grid at each of
    `corpus_sides` over every photo, minus boxes touching a test region, at most `corpus_cap`
    per (photo, side) picked evenly; prior-train: the same grid over the prior photos only,
    `prior_cap` per (photo, side). Flat crops are dropped everywhere.
    """
    classes = classes if classes is not None else photo_classes()
    r = config.resolution
    rows: list[dict[str, Any]] = []
    regions: dict[str, tuple[int, int, int, int]] = {}

    def add(set_name: str, name: str, box) -> None:
        side = box[2] - box[0]
        rows.append(
            {
                "set": set_name,
                "photo": name,
                "class": classes[name],
                "box": tuple(int(v) for v in box),
                "side": side,
                "scale": r / side,
            }
        )

    for name in split["test"]:
        regions[name] = test_region(name, photos[name], config, seed)
        for box in _region_boxes(regions[name], config):
            add("test", name, box)
    for set_name, sides, cap in (
        ("corpus", config.corpus_sides, config.corpus_cap),
        ("prior-train", config.prior_sides, config.prior_cap),
    ):
        for name in split[set_name]:
            h, w = photos[name].shape[:2]
            for side in sides:
                boxes = [
                    b
                    for b in grid_boxes(w, h, side, max(1, side // 2), regions.get(name))
                    if not (name in regions and intersects(b, regions[name]))
                    and not is_flat(photos[name], b, config.flat_std)
                ]
                for box in pick_evenly(boxes, cap):
                    add(set_name, name, box)
    return rows


def _thumbnail(photo: np.ndarray) -> np.ndarray:
    from PIL import Image

    small = np.asarray(Image.fromarray(photo).resize((32, 32), Image.Resampling.BILINEAR), dtype=np.float64).ravel()
    small = small - small.mean()
    return small / (np.linalg.norm(small) + 1e-9)


def check_split(
    split: dict[str, list[str]], crops: list[dict[str, Any]], photos: dict[str, np.ndarray] | None = None
) -> dict[str, int]:
    """Raise ValueError if a test pixel could be in the prior-training set; return counts.

    Checks: test and prior photo lists are disjoint and no SAME_SCENE group spans them; every
    prior-train crop comes from a prior photo; no corpus crop intersects a test crop of its
    photo; with `photos`, no test photo is a near-duplicate (32x32 thumbnail correlation above
    NEAR_DUPLICATE) of a prior photo, and no test crop's pixels equal a prior crop's.
    """
    test, prior = set(split["test"]), set(split["prior-train"])
    if test & prior:
        raise ValueError(f"photos in both test and prior-train: {sorted(test & prior)}")
    scene = scene_of(sorted(test | prior))
    shared = {scene[n] for n in test} & {scene[n] for n in prior}
    if shared:
        raise ValueError(f"scenes with photos on both sides of the split: {sorted(shared)}")
    test_boxes: dict[str, list] = {}
    for row in crops:
        if row["set"] == "test":
            if row["photo"] not in test:
                raise ValueError(f"test crop of {row['photo']}, which is not a test photo")
            test_boxes.setdefault(row["photo"], []).append(row["box"])
    for row in crops:
        if row["set"] == "prior-train" and row["photo"] not in prior:
            raise ValueError(f"prior-train crop {row['box']} of {row['photo']}, which is not a prior photo")
        if row["set"] == "corpus" and any(intersects(row["box"], b) for b in test_boxes.get(row["photo"], [])):
            raise ValueError(f"corpus crop {row['box']} of {row['photo']} overlaps one of its test crops")
    if photos is not None:
        names = sorted(test | prior)
        thumbs = {n: _thumbnail(photos[n]) for n in names}
        t = sorted(test)
        p = sorted(prior)
        corr = np.stack([thumbs[n] for n in t]) @ np.stack([thumbs[n] for n in p]).T
        i, j = np.unravel_index(int(corr.argmax()), corr.shape)
        if corr[i, j] > NEAR_DUPLICATE:
            raise ValueError(
                f"test photo {t[i]} and prior photo {p[j]} look like one scene (thumbnail correlation "
                f"{corr[i, j]:.3f}); add them to SAME_SCENE"
            )
        prior_boxes = {(row["photo"], row["box"]) for row in crops if row["set"] == "prior-train"}
        prior_hashes = {
            hashlib.sha256(np.ascontiguousarray(photos[n][b[1] : b[3], b[0] : b[2]]).tobytes()).digest()
            for n, b in prior_boxes
        }
        for row in crops:
            if row["set"] == "test":
                x0, y0, x1, y1 = row["box"]
                digest = hashlib.sha256(np.ascontiguousarray(photos[row["photo"]][y0:y1, x0:x1]).tobytes()).digest()
                if digest in prior_hashes:
                    raise ValueError(
                        f"test crop {row['box']} of {row['photo']} has the same pixels as a prior-train crop"
                    )
    counts = {s: sum(1 for row in crops if row["set"] == s) for s in SETS}
    counts.update({f"{s}_photos": len({row["photo"] for row in crops if row["set"] == s}) for s in SETS})
    return counts

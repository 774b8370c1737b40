"""Real photographs from Debian packages (gcompris, OpenCV docs, KDE wallpapers, Palapeli), committed in derived form with their credits.

The photos live in `pipelines/photos/data/` (JPEG, long side <= 512 px, CREDITS.tsv, manifest.json);
`python -m pipelines.photos.derive` rebuilds them from the packages. `split` cuts them into held-out
test images, a prior-training set and a retrieval corpus, split by photo.
"""

from .split import (
    CropConfig,
    check_split,
    credits,
    cut,
    load_photos,
    photo_classes,
    photo_names,
    plan_crops,
    split_photos,
    verify_manifest,
)

__all__ = [
    "CropConfig",
    "check_split",
    "credits",
    "cut",
    "load_photos",
    "photo_classes",
    "photo_names",
    "plan_crops",
    "split_photos",
    "verify_manifest",
]

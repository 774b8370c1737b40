"""The embedded default's crops of the packaged photos: an honest split by its manifest and by its pixels, deterministic, an index source."""

from __future__ import annotations

import copy
import hashlib
import json

import numpy as np
import pytest
from PIL import Image

from index_builder.sources import list_folder
from pipelines import default_assets as da
from pipelines.photos import cut, load_photos

USED = ("corpus", "test")  # what the demo writes; prior-train is checked through the manifest and the photos


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("default-assets")
    assert da.main([str(out), "--sets", ",".join(USED)]) == 0
    return out, da.load_manifest(out)


def _digests(root) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_the_split_holds_enough_real_held_out_images(built):
    _, manifest = built
    counts = manifest["counts"]
    tests = [it for it in manifest["items"] if it["set"] == "test"]
    assert counts["test"] >= 40 and len({it["source"] for it in tests}) >= 20  # the minimum
    assert counts["corpus"] > 1000 and counts["prior-train"] > 5000
    sets_of: dict[str, set] = {}
    for it in manifest["items"]:
        sets_of.setdefault(it["source"], set()).add(it["set"])
    for name, src in manifest["sources"].items():
        assert ("prior-train" in sets_of[name]) == (src["role"] == "prior"), name  # a held-out photo trains nothing
        assert src["licence"], name  # every photo's licence is on record
    assert {it["content"] for it in manifest["items"] if it["set"] == "corpus"} == {"held-out", "prior"}
    assert len({it["class"] for it in tests}) >= 5  # test photos of several content classes


@pytest.mark.parametrize(
    "tamper, message", [("held_out_in_prior", "not a prior photo"), ("corpus_touches_test", "overlaps")]
)
def test_check_split_catches_a_dishonest_split(built, tamper, message):
    _, manifest = built
    bad = copy.deepcopy(manifest)
    test = next(it for it in bad["items"] if it["set"] == "test")
    if tamper == "held_out_in_prior":
        bad["items"].append({**test, "set": "prior-train", "path": "prior-train/x.png", "box": [0, 0, 1, 1]})
    else:
        x0, y0 = test["box"][:2]
        bad["items"].append(
            {**test, "set": "corpus", "path": "corpus/x.png", "box": [x0 + 10, y0 + 10, x0 + 74, y0 + 74]}
        )
    with pytest.raises(ValueError, match=message):
        da.check_split(bad)


def test_files_are_the_manifest_boxes_and_no_test_pixel_is_in_training(built):
    out, manifest = built
    listed = {it["path"] for it in manifest["items"] if it["set"] in USED}
    assert {str(p.relative_to(out)) for p in out.rglob("*.png")} == listed
    photos = load_photos(sorted({it["source"] for it in manifest["items"]}))
    config = da.DefaultAssetsConfig(**manifest["config"])
    test_digests, prior_digests = set(), set()
    for it in manifest["items"]:
        resolution = config.test_resolution if it["set"] == "test" else config.resolution
        expected = cut(photos[it["source"]], tuple(it["box"]), resolution)
        if it["set"] in USED:
            pixels = np.asarray(Image.open(out / it["path"]))
            assert pixels.shape == (resolution, resolution, 3) and pixels.dtype == np.uint8, it["path"]
            np.testing.assert_array_equal(
                pixels, expected, err_msg=it["path"]
            )  # its box of the original, nothing else
        if it["set"] == "test":
            test_digests.add(
                hashlib.sha256(cut(photos[it["source"]], tuple(it["box"]), config.resolution).tobytes()).digest()
            )
        elif it["set"] == "prior-train":
            prior_digests.add(hashlib.sha256(expected.tobytes()).digest())
    assert len(test_digests) == manifest["counts"]["test"]
    assert not (test_digests & prior_digests), "a test image's pixels are in prior-train"
    # No prior-train box of a photo that has test images (the split is by photo).
    held_out = {it["source"] for it in manifest["items"] if it["set"] == "test"}
    assert not any(it["set"] == "prior-train" and it["source"] in held_out for it in manifest["items"])


def test_same_bytes_every_run_and_a_rebuild_changes_nothing(built, tmp_path):
    out, _ = built
    da.build(tmp_path, sets=USED)
    assert _digests(tmp_path) == _digests(out)
    da.build(tmp_path, sets=USED)
    assert _digests(tmp_path) == _digests(out)


def test_refuses_to_mix_two_splits(built, tmp_path):
    _, manifest = built
    (tmp_path / da.MANIFEST).write_text(json.dumps(dict(manifest, items=manifest["items"][:-1])))
    with pytest.raises(FileExistsError, match="another split"):
        da.build(tmp_path, sets=("test",))


def test_corpus_is_an_index_source(built):
    out, manifest = built
    listing = list_folder(str(out / "corpus"))
    assert not listing.rejected
    expected = sorted(it["path"][len("corpus/") : -len(".png")] for it in manifest["items"] if it["set"] == "corpus")
    assert list(listing.image_ids) == expected


def test_bad_settings_are_refused_with_their_name():
    with pytest.raises(ValueError, match="test_resolution"):
        da.DefaultAssetsConfig(test_resolution=0)
    with pytest.raises(ValueError, match="unknown sets"):
        da.build("/nonexistent-never-written", sets=("training",))

"""The packaged corpus and split: honest by its manifest and by its pixels, deterministic, usable as an index source."""

from __future__ import annotations

import copy
import hashlib
import json

import numpy as np
import pytest
from PIL import Image

from index_builder.sources import list_folder
from pipelines import default_assets as da


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("default-assets")
    assert da.main([str(out)]) == 0
    return out, da.load_manifest(out)


def _digests(root) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def test_manifest_split_is_honest(built):
    _, manifest = built
    da.check_split(manifest)
    counts = manifest["counts"]
    assert counts["test"] >= 24  # the minimum for the measured claim
    assert counts["prior-train"] > 1000 and counts["corpus"] > 500
    sets_of = {}
    for it in manifest["items"]:
        sets_of.setdefault(it["source"], set()).add(it["set"])
    for name, src in manifest["sources"].items():
        if src["role"] == "held-out":
            assert sets_of[name] == {"corpus", "test"}, name
        else:
            assert sets_of[name] == {"prior-train", "corpus"}, name
    # The corpus holds both the held-out content and distractors the prior has seen.
    contents = {it["content"] for it in manifest["items"] if it["set"] == "corpus"}
    assert contents == {"held-out", "prior"}
    # Several scales in prior-train and corpus.
    for s in ("prior-train", "corpus"):
        assert {it["scale"] for it in manifest["items"] if it["set"] == s} == {1.0, 0.5, 0.25}


@pytest.mark.parametrize(
    "tamper, message",
    [
        ("held_out_in_prior", "prior-train patches"),
        ("corpus_touches_test", "shares pixels"),
        ("test_without_corpus", "no patch in the corpus"),
    ],
)
def test_check_split_catches_a_dishonest_split(built, tamper, message):
    _, manifest = built
    bad = copy.deepcopy(manifest)
    test = next(it for it in bad["items"] if it["set"] == "test")
    if tamper == "held_out_in_prior":
        bad["items"].append({**test, "set": "prior-train", "path": "prior-train/x.png", "box": [0, 0, 1, 1]})
    elif tamper == "corpus_touches_test":
        x0, y0 = test["box"][:2]
        bad["items"].append({**test, "set": "corpus", "path": "corpus/x.png", "box": [x0 + 63, y0 + 63, x0 + 127, y0 + 127]})
    else:
        bad["items"] = [it for it in bad["items"] if not (it["set"] == "corpus" and it["source"] == test["source"])]
    with pytest.raises(AssertionError, match=message):
        da.check_split(bad)


def test_files_are_the_manifest_boxes_and_no_test_pixels_leak(built):
    out, manifest = built
    listed = {it["path"] for it in manifest["items"]}
    on_disk = {str(p.relative_to(out)) for p in out.rglob("*.png")}
    assert on_disk == listed
    photos = {name: da.load_photo(name) for name in manifest["sources"]}
    test_digests, other_digests = set(), set()
    for it in manifest["items"]:
        pixels = np.asarray(Image.open(out / it["path"]))
        assert pixels.shape == (64, 64, 3) and pixels.dtype == np.uint8, it["path"]
        # Each file is its box of the original photo, cut and then resized: nothing else reaches it.
        np.testing.assert_array_equal(pixels, da.cut(photos[it["source"]], tuple(it["box"]), 64), err_msg=it["path"])
        (test_digests if it["set"] == "test" else other_digests).add(hashlib.sha256(pixels.tobytes()).digest())
    assert len(test_digests) == manifest["counts"]["test"]
    assert not (test_digests & other_digests), "a test image's pixels also appear in prior-train or corpus"
    # Test images lie inside their photo's test band, which no other patch may touch.
    for it in manifest["items"]:
        if it["set"] == "test":
            x0, y0, x1, y1 = manifest["sources"][it["source"]]["test_band"]
            bx0, by0, bx1, by1 = it["box"]
            assert x0 <= bx0 and y0 <= by0 and bx1 <= x1 and by1 <= y1, it["path"]


def test_same_bytes_every_run(built, tmp_path):
    out, _ = built
    da.build(tmp_path)
    assert _digests(tmp_path) == _digests(out)
    # Rebuilding into the same folder is allowed (same split) and changes nothing.
    da.build(tmp_path)
    assert _digests(tmp_path) == _digests(out)


def test_refuses_to_mix_two_splits(built, tmp_path):
    _, manifest = built
    other = dict(manifest, items=manifest["items"][:-1])
    (tmp_path / da.MANIFEST).write_text(json.dumps(other))
    with pytest.raises(FileExistsError, match="another split"):
        da.build(tmp_path)


def test_corpus_is_an_index_source(built):
    out, manifest = built
    listing = list_folder(str(out / "corpus"))
    assert not listing.rejected
    expected = sorted(it["path"][len("corpus/"):-len(".png")] for it in manifest["items"] if it["set"] == "corpus")
    assert list(listing.image_ids) == expected


def test_bad_resolution_is_refused_with_the_fix():
    with pytest.raises(ValueError, match="test bands"):
        da.DefaultAssetsConfig(resolution=128)
    with pytest.raises(ValueError, match="at least 8"):
        da.DefaultAssetsConfig(resolution=4)

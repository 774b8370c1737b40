"""Listing and sharding: ids from folders and lists, sorted and unique; shards that reruns reproduce."""

from __future__ import annotations

import pytest

from index_builder.sources import list_source, plan_shards


def _touch(path, data=b"x"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def test_folder_ids_are_sorted_relative_stems_and_duplicates_are_rejected(tmp_path):
    for rel in ["b.jpg", "a.png", "sub/c d.webp", "notes.txt", "a.jpg", "sub/deeper/é.JPEG"]:
        _touch(tmp_path / rel)
    listing = list_source(str(tmp_path))
    assert listing.image_ids == ("a", "b", "sub/c d", "sub/deeper/é")
    assert listing.uris[0] == str(tmp_path / "a.jpg")  # first of a.jpg / a.png in URI order wins
    assert [(r[0], r[1]) for r in listing.rejected] == [("a", str(tmp_path / "a.png"))]
    assert "duplicate image id" in listing.rejected[0][2]


def test_csv_of_open_images_ids_uses_the_url_template(tmp_path):
    ids = tmp_path / "ids.csv"
    ids.write_text("ImageID,Subset,Rotation\nffff01,train,0\n000a1b,train,90\n")
    listing = list_source(str(ids), url_template="s3://open-images-dataset/train/{id}.jpg")
    assert listing.image_ids == ("000a1b", "ffff01")
    assert listing.uris == ("s3://open-images-dataset/train/000a1b.jpg", "s3://open-images-dataset/train/ffff01.jpg")
    with pytest.raises(ValueError, match="--url-template"):
        list_source(str(ids))


def test_ids_file_takes_uris_from_the_source_folder(tmp_path):
    ids = tmp_path / "ids.txt"
    ids.write_text("# open images ids\nbbb\naaa\n\n")
    listing = list_source("s3://bucket/train/", ids_file=str(ids))
    assert listing.uris == ("s3://bucket/train/aaa.jpg", "s3://bucket/train/bbb.jpg")


def test_text_list_of_uris_ids_are_file_stems(tmp_path):
    lst = tmp_path / "uris.txt"
    lst.write_text("s3://b/x/img 2.png\n/data/img1.jpg\n")
    listing = list_source(str(lst))
    assert listing.image_ids == ("img 2", "img1") and listing.uris == ("s3://b/x/img 2.png", "/data/img1.jpg")


def test_shards_are_fixed_slices_and_limit_reproduces_the_prefix(tmp_path):
    for i in range(10):
        _touch(tmp_path / f"{i:02d}.jpg")
    full = plan_shards(list_source(str(tmp_path)), 4)
    assert [len(s) for s in full] == [4, 4, 2]
    assert [s.name for s in full] == ["shard-000000-size4", "shard-000001-size4", "shard-000002-size4"]
    again = plan_shards(list_source(str(tmp_path)), 4)
    assert [s.fingerprint for s in again] == [s.fingerprint for s in full]
    limited = plan_shards(list_source(str(tmp_path)).limit(6), 4)
    assert limited[0].fingerprint == full[0].fingerprint  # complete shards match: a rerun reuses them
    assert limited[1].fingerprint != full[1].fingerprint  # the short last shard does not
    with pytest.raises(ValueError, match="shard-size"):
        plan_shards(list_source(str(tmp_path)), 0)


def test_missing_source_names_the_url(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        list_source(str(tmp_path / "nowhere"))

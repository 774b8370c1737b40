"""The committed photo set: our Qt .rcc reader, the split by photo (no test pixel in the prior), and the files' checksums."""

from __future__ import annotations

import json
import struct
import zlib
from collections import Counter

import pytest

from pipelines.photos import (
    CropConfig,
    check_split,
    credits,
    load_photos,
    photo_classes,
    plan_crops,
    split_photos,
    verify_manifest,
)
from pipelines.photos.catalogue import CLASSES, REDISTRIBUTABLE
from pipelines.photos.rcc import COMPRESSED_ZLIB, DIRECTORY, RccError, RccFile, qt_hash
from pipelines.photos.split import DATA_DIR, SAME_SCENE, intersects
from pipelines.photos.stanzas import parse_credit_stanzas


# -- a tiny .rcc writer, following the layout rcc.py's docstring describes ---------------------------
def build_rcc(files: dict[str, tuple[bytes, bool]], version: int = 3) -> bytes:
    """Bytes of a binary .rcc bundle holding `files` {'/a/b.txt': (content, zlib?)}."""
    tree: dict = {}
    for path, entry in files.items():
        *dirs, leaf = path.strip("/").split("/")
        node = tree
        for d in dirs:
            node = node.setdefault(d, {})
        node[leaf] = entry
    # Breadth-first numbering, each directory's children consecutive and sorted by name hash (as Qt does).
    nodes = [("", tree)]
    first_child = {}
    i = 0
    while i < len(nodes):
        name, content = nodes[i]
        if isinstance(content, dict):
            first_child[i] = len(nodes)
            nodes += sorted(content.items(), key=lambda kv: qt_hash(kv[0]))
        i += 1
    names, name_offset = b"", {}
    for index, (name, _) in enumerate(nodes[1:], start=1):
        name_offset[index] = len(names)
        utf16 = name.encode("utf-16-be")
        names += struct.pack(">HI", len(utf16) // 2, qt_hash(name)) + utf16
    data, data_offset = b"", {}
    for index, (_, content) in enumerate(nodes):
        if not isinstance(content, dict):
            blob, compress = content
            payload = struct.pack(">I", len(blob)) + zlib.compress(blob) if compress else blob
            data_offset[index] = len(data)
            data += struct.pack(">I", len(payload)) + payload
    header_size = 24 if version >= 3 else 20
    data_start, names_start = header_size, header_size + len(data)
    tree_start = names_start + len(names)
    records = b""
    for index, (_, content) in enumerate(nodes):
        offset = name_offset.get(index, 0)
        if isinstance(content, dict):
            records += struct.pack(">IHII", offset, DIRECTORY, len(content), first_child[index])
        else:
            records += struct.pack(">IHHHI", offset, COMPRESSED_ZLIB if content[1] else 0, 0, 1, data_offset[index])
        if version >= 2:
            records += struct.pack(">Q", 1_700_000_000_000 + index)
    header = b"qres" + struct.pack(">IIII", version, tree_start, data_start, names_start)
    if version >= 3:
        header += struct.pack(">I", COMPRESSED_ZLIB)
    return header + data + names + records


FIXTURE = {
    "/gcompris/src/activities/erase/resource/alpaca.webp": (b"RIFF....WEBPVP8 " + bytes(range(256)) * 3, False),
    "/gcompris/src/activities/erase/resource/README": (
        b"Copyright: someone\nLicense: CC0-1.0\nFiles: alpaca.webp\n" * 20,
        True,
    ),
    "/gcompris/src/activities/explore/resource/usa/navajo.webp": (b"nested and compressed " * 50, True),
    "/top.txt": (b"", False),
    "/caf\u00e9/\u00fcml\u00e4ut.txt": (b"non-ASCII names are UTF-16", True),
}


@pytest.mark.parametrize("version", [1, 2, 3])
def test_rcc_reader_reads_back_raw_and_zlib_entries_in_nested_folders(tmp_path, version):
    path = tmp_path / "tiny.rcc"
    path.write_bytes(build_rcc(FIXTURE, version))
    bundle = RccFile.open(path)
    assert bundle.version == version
    assert sorted(bundle.paths()) == sorted(FIXTURE)
    for name, (content, compressed) in FIXTURE.items():
        assert bundle.read(name) == content
        assert bundle.entry(name).compression == ("zlib" if compressed else "none")
    assert dict(bundle.items()) == {k: v for k, (v, _) in FIXTURE.items()}
    assert (bundle.entry("/top.txt").last_modified > 0) == (version >= 2)


def test_qt_hash_matches_values_stored_by_qts_rcc():
    # Read from the name table of gcompris-qt-data 3.1's explore_monuments.rcc.
    assert qt_hash("gcompris") == 0x0A6474A3
    assert qt_hash("src") == 0x7A83
    assert qt_hash("ActivityInfo.qml") == 0x0562C97C


def test_rcc_reader_refuses_what_is_not_a_bundle(tmp_path):
    with pytest.raises(RccError, match="qres"):
        RccFile(b"PK\x03\x04 a zip file, not a bundle")
    blob = build_rcc(FIXTURE)
    with pytest.raises(RccError, match="truncated|past"):
        RccFile(blob[: len(blob) - 30])
    bundle = RccFile(blob)
    with pytest.raises(KeyError, match="not in"):
        bundle.read("/missing.webp")


def test_credit_stanzas_with_and_without_a_files_line():
    text = (
        "Copyright: A\nLicense: CC-BY-SA 4.0\nSource: https://x/y.jpg\nFiles:\na.webp\nb.webp\n\n"
        "Copyright:\n  NASA\n  Someone\nLicense: Public Domain\nFiles: c.webp\n\n"
        "Copyright: B\nLicense: CC-BY 4.0\nd_0.webp\nd_background.webp\nComment: based on a photo, source at https://z\n"
    )
    stanzas = parse_credit_stanzas(text)
    assert [s["files"] for s in stanzas] == [["a.webp", "b.webp"], ["c.webp"], ["d_0.webp", "d_background.webp"]]
    assert stanzas[1]["copyright"] == "NASA Someone"
    assert stanzas[2]["comment"].endswith("https://z")


# -- the committed set -----------------------------------------------------------------------------
def test_manifest_checksums_match_the_committed_files():
    assert verify_manifest() == []
    manifest = json.loads((DATA_DIR / "manifest.json").read_text())
    on_disk = {p.name for p in DATA_DIR.glob("*.jpg")}
    assert on_disk == set(manifest["files"])
    assert manifest["total_bytes"] < 25e6


def test_every_photo_has_a_credit_a_redistributable_licence_and_a_class():
    rows = credits()
    assert len(rows) >= 250
    assert {r["file"] for r in rows.values()} == {p.name for p in DATA_DIR.glob("*.jpg")}
    assert all(r["licence"] in REDISTRIBUTABLE for r in rows.values())
    assert all(r["author"] for r in rows.values())
    assert set(photo_classes().values()) <= set(CLASSES)
    assert Counter(r["source_package"] for r in rows.values()).keys() == {
        "gcompris-qt-data",
        "opencv-doc",
        "plasma-workspace-wallpapers",
        "palapeli-data",
    }


@pytest.fixture(scope="module")
def photos():
    return load_photos()


@pytest.fixture(scope="module")
def planned(photos):
    split = split_photos(seed=0)
    return split, plan_crops(split, photos, CropConfig(), seed=0)


def test_split_holds_out_whole_photos_and_no_test_pixel_reaches_the_prior(photos, planned):
    split, crops = planned
    counts = check_split(split, crops, photos)
    assert counts["test_photos"] >= 20 and counts["test"] >= 40
    assert not set(split["test"]) & set(split["prior-train"])
    assert set(split["test"]) | set(split["prior-train"]) == set(split["corpus"]) == set(photos)
    test_photos = set(split["test"])
    assert all(r["photo"] not in test_photos for r in crops if r["set"] == "prior-train")
    # The corpus keeps other views of the test photos, but none touching a test crop.
    tests = [r for r in crops if r["set"] == "test"]
    corpus = [r for r in crops if r["set"] == "corpus"]
    assert {r["photo"] for r in corpus} >= test_photos
    assert not any(intersects(c["box"], t["box"]) for t in tests for c in corpus if c["photo"] == t["photo"])
    # Every class is tested and every class stays in the prior.
    classes = photo_classes()
    assert {classes[n] for n in split["test"]} == {classes[n] for n in split["prior-train"]} == set(classes.values())
    for group in SAME_SCENE:
        assert len({n in test_photos for n in group}) == 1


def test_check_split_catches_a_leak(photos, planned):
    split, crops = planned
    leaked = [*crops, {**next(r for r in crops if r["set"] == "test"), "set": "prior-train"}]
    with pytest.raises(ValueError, match="not a prior photo"):
        check_split(split, leaked)
    moved = {**split, "prior-train": [*split["prior-train"], split["test"][0]]}
    with pytest.raises(ValueError, match="both"):
        check_split(moved, crops)


def test_split_is_seeded_and_deterministic():
    assert split_photos(seed=0) == split_photos(seed=0)
    assert split_photos(seed=0)["test"] != split_photos(seed=1)["test"]

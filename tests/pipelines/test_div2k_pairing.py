"""DIV2K as users have it: `--inputs DIV2K_valid_LR_bicubic/X4 --degraded --reference DIV2K_valid_HR` pairs by name."""

import hashlib
import os

import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipelines import cli
from pipelines.inputs import list_inputs
from pipelines.photos.split import DATA_DIR
from tests.cluster.helpers import write_pictures

HR_SIZE, LR_SIZE = (2040, 1356), (510, 339)  # DIV2K's 0801.png and its bicubic x4 0801x4.png
# Real photographs (KDE wallpapers, plasma-workspace-wallpapers, committed at 512x320), resized to DIV2K's size.
PHOTOS = {"0801": "plasma-kite.jpg", "0802": "plasma-colorfulcups.jpg"}


def _div2k(root, scale: int = 4, ids=("0801", "0802")):
    """A DIV2K-shaped pair of folders: DIV2K_valid_HR/NAME.png and DIV2K_valid_LR_bicubic/X4/NAMEx4.png."""
    hr, lr = root / "DIV2K_valid_HR", root / "DIV2K_valid_LR_bicubic" / f"X{scale}"
    hr.mkdir(parents=True)
    lr.mkdir(parents=True)
    for image_id in ids:
        photo = Image.open(DATA_DIR / PHOTOS[image_id]).convert("RGB").resize(HR_SIZE, Image.Resampling.LANCZOS)
        photo.save(hr / f"{image_id}.png")
        photo.resize(LR_SIZE, Image.Resampling.BICUBIC).save(lr / f"{image_id}x{scale}.png")
    return hr, lr


def _sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# -- pairing by name (no job) ----------------------------------------------------------------------------------------
def test_div2k_names_pair_and_identical_names_still_do(tmp_path):
    hr, lr = tmp_path / "HR", tmp_path / "LR"
    write_pictures(str(hr), [("0801", 1), ("0802", 2), ("baby", 3)], height=16, width=16)
    write_pictures(str(lr), [("0801x4", 1), ("0802X4", 2), ("baby", 3)], height=4, width=4)
    items = list_inputs(str(lr), task="sr4", degraded=True, reference=str(hr))
    assert {i["image_id"]: os.path.basename(i["reference_uri"]) for i in items} == {
        "0801": "0801.png",
        "0802": "0802.png",
        "baby": "baby.png",
    }


@pytest.mark.parametrize("scale, task", [(8, "sr8"), (2, "deblur")])
def test_other_scales_pair_the_same_way_or_say_which_task(tmp_path, scale, task):
    hr, lr = tmp_path / "HR", tmp_path / "LR"
    write_pictures(str(hr), [("0801", 1), ("0802", 2)], height=16, width=16)
    write_pictures(str(lr), [(f"0801x{scale}", 1), ("0802", 2)], height=4, width=4)
    items = {i["image_id"]: i for i in list_inputs(str(lr), task=task, degraded=True, reference=str(hr))}
    if task == "sr8":
        assert items["0801"]["reference_uri"].endswith("HR/0801.png")
    else:  # a file named for x2 under a task that keeps the size: its error row says so, the others go on
        assert "reference_uri" not in items["0801x2"] and "its name says x2" in items["0801x2"]["error"]
    assert items["0802"]["reference_uri"].endswith("HR/0802.png")


def test_two_references_that_could_match_one_input_are_refused_by_name(tmp_path):
    hr, lr = tmp_path / "HR", tmp_path / "LR"
    write_pictures(str(hr), [("0801", 1), ("0802", 2)], height=16, width=16)
    write_pictures(str(hr), [("0801", 1)], height=16, width=16, fmt="jpg")  # 0801.png and 0801.jpg
    write_pictures(str(hr), [("0802x4", 2)], height=4, width=4)  # an LR file left among the HR ones
    write_pictures(str(lr), [("0801x4", 1), ("0802x4", 2)], height=4, width=4)
    items = {i["image_id"]: i for i in list_inputs(str(lr), task="sr4", degraded=True, reference=str(hr))}
    for image_id, (a, b) in {"0801": ("0801.jpg", "0801.png"), "0802": ("0802.png", "0802x4.png")}.items():
        item = items[image_id]
        assert item["stage"] == "read" and "reference_uri" not in item
        assert item["error"].startswith(str(lr / f"{image_id}x4.png")) and "2 ground truths" in item["error"]
        assert a in item["error"] and b in item["error"] and "keep one of them" in item["error"]


def test_a_missing_reference_is_an_error_row_naming_the_file_and_the_fix(tmp_path):
    hr, lr = tmp_path / "HR", tmp_path / "LR"
    write_pictures(str(hr), [("0801", 1)], height=16, width=16)
    write_pictures(str(lr), [("0801x4", 1), ("0802x4", 2)], height=4, width=4)
    ok, missing = list_inputs(str(lr), task="sr4", degraded=True, reference=str(hr))
    assert ok["reference_uri"].endswith("HR/0801.png") and "error" not in ok
    assert missing["image_id"] == "0802" and missing["stage"] == "read"
    assert missing["error"].startswith(str(lr / "0802x4.png"))
    assert f"no ground truth named 0802 or 0802x4 in --reference {hr}" in missing["error"]
    assert "leave --reference out" in missing["error"]


def test_a_reference_folder_that_pairs_with_nothing_is_one_usage_error(tmp_path):
    hr, lr = tmp_path / "HR", tmp_path / "LR"
    write_pictures(str(hr), [("0001", 1), ("0002", 2)], height=16, width=16)  # DIV2K_train_HR by mistake
    write_pictures(str(lr), [("0801x4", 1), ("0802x4", 2)], height=4, width=4)
    with pytest.raises(ValueError, match=r"none of the 2 input\(s\).*holds e\.g\. 0001.*0801x4 would pair with 0801"):
        list_inputs(str(lr), task="sr4", degraded=True, reference=str(hr))
    x8 = tmp_path / "X8"
    write_pictures(str(x8), [("0001x8", 1)], height=2, width=2)
    with pytest.raises(ValueError, match=r"input 0001x8: its name says x8 .* pass --inputs the X4 folder.*--task sr8"):
        list_inputs(str(x8), task="sr4", degraded=True, reference=str(hr))


# -- through the real CLI, at full DIV2K size ------------------------------------------------------------------------
@pytest.mark.timeout(300)
def test_div2k_layout_at_full_size_through_the_cli(ray_cluster, tmp_path, capsys):
    hr, lr = _div2k(tmp_path)
    out = tmp_path / "out"
    argv = ["reconstruct", "--inputs", str(lr), "--degraded", "--reference", str(hr), "--task", "sr4"]
    # The cheapest settings at this size: the embedded prior is one 4-tile pass per step where tiny:16 needs
    # 19,210 tiles; one step; one actor per image (~30 s on an idle 2-core machine).
    argv += ["--out", str(out), "--mode", "baseline", "--prior", "default", "--steps", "1", "--num-actors", "2"]
    assert cli.main(argv) == 0
    rows = {r["image_id"]: r for r in pq.read_table(out / "results.parquet").to_pylist()}
    assert sorted(rows) == ["0801", "0802"]
    for image_id, row in rows.items():
        assert row["error"] is None, row["error"]
        assert row["input_sha256"] == _sha256(lr / f"{image_id}x4.png")
        assert row["reference_sha256"] == _sha256(hr / f"{image_id}.png")  # each input with its own truth
        assert (row["input_width"], row["input_height"], row["width"], row["height"]) == (*LR_SIZE, *HR_SIZE)
        assert row["naive_psnr"] > 20  # bicubic of the photo vs the photo: it is that photo's truth
        assert Image.open(out / row["output"]).size == HR_SIZE
    # The progress line a person watches: output megapixels per second and the time left for the job.
    assert "MP/s, ETA " in capsys.readouterr().err

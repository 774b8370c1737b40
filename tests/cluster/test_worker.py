"""ReconstructionWorker without Ray: one image end to end, every mode and task, inputs good and bad."""

import io
import os

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from adir_ops.sampling.regions import DEFAULT_OVERLAP, windows
from cluster.config import ReconstructConfig
from cluster.results import STAGES, finished_names, part_url
from cluster.retrieval import build_corpus_thumbnails
from cluster.worker import ReconstructionWorker
from pipelines.inputs import list_inputs
from tests.cluster.helpers import job_options, smooth_picture, write_pictures

pytestmark = pytest.mark.timeout(300)


def _worker(tmp_path, index, **options):
    out = str(tmp_path / "out")
    config = ReconstructConfig(inputs=str(tmp_path / "in"), out=out, index=index, **job_options(**options))
    if config.mode == "mse-nn":
        build_corpus_thumbnails(out, index, config.mse_thumbnail)
    return ReconstructionWorker(config), out


def _item(path, image_id=None):
    image_id = image_id or os.path.splitext(os.path.basename(path))[0]
    return {"image_id": image_id, "uri": path, "name": image_id}


def _png(out, name):
    return np.asarray(Image.open(os.path.join(out, "images", f"{name}.png")))


def test_an_image_larger_than_the_prior_is_reconstructed_by_tiles(tmp_path, corpus_and_index):
    _, index = corpus_and_index
    [path] = write_pictures(str(tmp_path / "in"), [("photo", 1)], height=32, width=44)
    worker, out = _worker(tmp_path, index)
    row = worker.process(_item(path))
    assert row["error"] is None, row["error"]
    assert _png(out, "photo").shape == (32, 44, 3)
    assert (row["height"], row["width"]) == (32, 44) and row["tiles"] > 1
    assert len(row["neighbour_ids"]) == 3 and row["neighbours_used"] == 3
    for stage in STAGES:  # every stage the worker and the pipeline time has its column, and ran
        assert row[f"{stage}_s"] > 0, stage
    assert 0 < row["psnr"] < 80 and 0 < row["naive_psnr"] < 80
    assert finished_names(out) == {"photo"}
    assert pq.read_table(part_url(out, "photo")).column("image_id").to_pylist() == ["photo"]


def test_modes_share_degradation_and_noise_and_differ_by_adaptation_alone(tmp_path, corpus_and_index):
    _, index = corpus_and_index
    [path] = write_pictures(str(tmp_path / "in"), [("photo", 2)])
    outputs = {}
    for mode, lora_steps, lr in (("baseline", 2, 1e-4), ("adir", 0, 1e-4), ("adir", 3, 3e-2)):
        worker, out = _worker(
            tmp_path / f"{mode}{lora_steps}", index, mode=mode, lora_steps=lora_steps, lora_learning_rate=lr
        )
        row = worker.process(_item(path))
        assert row["error"] is None, row["error"]
        outputs[(mode, lora_steps)] = (_png(out, "photo"), row["naive_psnr"])
    baseline, untrained, adapted = outputs.values()
    # A fresh LoRA starts at zero: with no training step ADIR is exactly the baseline.
    assert np.array_equal(baseline[0], untrained[0])
    assert baseline[1] == untrained[1] == adapted[1]  # the same degraded input in every arm
    assert not np.array_equal(baseline[0], adapted[0])


def test_random_neighbours_come_from_the_image_seed(tmp_path, corpus_and_index):
    _, index = corpus_and_index
    [path] = write_pictures(str(tmp_path / "in"), [("photo", 3)])
    draws = []
    for run, seed in enumerate((5, 5, 6)):
        worker, _ = _worker(tmp_path / f"run{run}", index, mode="random-nn", seed=seed, lora_steps=0)
        draws.append(worker.process(_item(path))["neighbour_ids"])
    assert draws[0] == draws[1] and len(set(draws[0])) == 3
    assert draws[0] != draws[2]


@pytest.mark.parametrize("mode", ["adir", "mse-nn"])
def test_a_degraded_corpus_image_retrieves_its_clean_original_first(tmp_path, corpus_and_index, mode):
    corpus, index = corpus_and_index
    worker, _ = _worker(tmp_path, index, mode=mode, task="sr4", lora_steps=0)
    row = worker.process(_item(os.path.join(corpus, "c5.jpg")))
    assert row["error"] is None, row["error"]
    assert row["neighbour_ids"][0] == "c5"
    assert row["neighbour_scores"] == sorted(row["neighbour_scores"], reverse=True)


@pytest.mark.parametrize("task", ["sr8", "deblur", "colorize", "inpaint"])
def test_every_task_reconstructs_at_the_input_size(tmp_path, task):
    [path] = write_pictures(str(tmp_path / "in"), [("photo", 4)], height=24, width=36)
    worker, out = _worker(tmp_path, None, mode="baseline", task=task)
    row = worker.process(_item(path))
    assert row["error"] is None, row["error"]
    assert _png(out, "photo").shape == (24, 36, 3)
    assert row["psnr"] is not None


def test_the_jobs_sampling_region_reaches_the_sampler_and_stays_seamless(tmp_path):
    # A 640 x 520 photo with --sampling-region 256 is sampled in windows: another image than whole, as good.
    [path] = write_pictures(str(tmp_path / "in"), [("photo", 5)], height=640, width=520)
    rows = {}
    for region in (0, 256):
        worker, out = _worker(
            tmp_path / f"r{region}", None, mode="baseline", prior="default", steps=3, sampling_region=region
        )
        row = worker.process(_item(path))
        assert row["error"] is None, row["error"]
        rows[region] = (row["psnr"], _png(out, "photo"), row["tiles"])
    assert not np.array_equal(rows[0][1], rows[256][1])
    assert rows[256][0] > rows[0][0] - 0.5, (rows[0][0], rows[256][0])
    # The row's network evaluations per step count the windows' (one tile each here), not the whole image's.
    assert (rows[0][2], rows[256][2]) == (1, len(windows(640, 520, 256, DEFAULT_OVERLAP))) and rows[256][2] > 1


def test_the_jobs_retrieval_region_queries_the_index_by_windows(tmp_path, corpus_and_index):
    # A 32 x 160 image queried in 64 px windows retrieves the windows' union: other neighbours than whole.
    _, index = corpus_and_index
    [path] = write_pictures(str(tmp_path / "in"), [("wide", 3)], height=32, width=160)
    found = {}
    for region in (0, 64):
        worker, out = _worker(tmp_path / f"r{region}", index, retrieval_region=region, lora_steps=0)
        row = worker.process(_item(path))
        assert row["error"] is None, row["error"]
        found[region] = row["neighbour_ids"]
        assert len(found[region]) == 3 and len(set(found[region])) == 3
    assert found[0] != found[64]


def test_the_jobs_precision_runs_the_prior_in_it_and_the_row_says_which(tmp_path):
    from adir_ops.priors.precision import native_bf16

    [path] = write_pictures(str(tmp_path / "in"), [("photo", 4)], height=48, width=40)
    rows = {}
    for precision in ("fp32", "bf16", "auto"):
        worker, out = _worker(tmp_path / precision, None, mode="baseline", prior="default", precision=precision)
        row = worker.process(_item(path))
        assert row["error"] is None, row["error"]
        rows[precision] = (row["precision"], row["psnr"], _png(out, "photo"))
    assert rows["fp32"][0] == "fp32" and rows["bf16"][0] == "bf16"
    assert rows["auto"][0] == ("bf16" if native_bf16(torch.device("cpu")) else "fp32")
    assert not np.array_equal(rows["fp32"][2], rows["bf16"][2])  # bf16 did run
    assert abs(rows["fp32"][1] - rows["bf16"][1]) < 0.3


def test_div2k_degraded_inputs_pair_with_their_ground_truth(tmp_path):
    import torch.nn.functional as F

    hr = tmp_path / "DIV2K_valid_HR"
    lr = tmp_path / "DIV2K_valid_LR_bicubic" / "X4"
    lr.mkdir(parents=True)
    write_pictures(str(hr), [("0801", 5), ("0802", 6)], height=32, width=40)
    for name in ("0801", "0802"):
        truth = torch.from_numpy(np.array(Image.open(hr / f"{name}.png"))).permute(2, 0, 1)[None].float()
        small = F.interpolate(truth, size=(8, 10), mode="bicubic", antialias=True).clamp(0, 255).round().byte()
        Image.fromarray(small[0].permute(1, 2, 0).numpy()).save(lr / f"{name}x4.png")
    items = list_inputs(str(lr), task="sr4", degraded=True, reference=str(hr))
    assert [i["image_id"] for i in items] == ["0801", "0802"]
    assert items[0]["reference_uri"].endswith("DIV2K_valid_HR/0801.png")
    config = ReconstructConfig(
        inputs=str(lr), out=str(tmp_path / "out"), degraded=True, reference=str(hr), **job_options(mode="baseline")
    )
    row = ReconstructionWorker(config).process(items[0])
    assert row["error"] is None, row["error"]
    assert (row["input_height"], row["input_width"]) == (8, 10) and (row["height"], row["width"]) == (32, 40)
    assert row["naive_psnr"] > 15  # the bicubic upscale of a smooth picture is close to its truth


def test_bad_images_become_error_rows_and_the_worker_goes_on(tmp_path):
    folder = tmp_path / "in"
    write_pictures(str(folder), [("good", 7)])
    (folder / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(64))
    (folder / "empty.png").write_bytes(b"")
    Image.fromarray(smooth_picture(8, 3, 3)).save(folder / "tiny.png")  # smaller than sr4's factor
    buf = io.BytesIO()
    Image.fromarray(smooth_picture(9, 30, 30)).save(buf, format="JPEG")
    (folder / "truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    worker, out = _worker(tmp_path, None, mode="baseline")
    rows = {i["image_id"]: worker.process(i) for i in list_inputs(str(folder), task="sr4")}
    assert rows["good"]["error"] is None
    for name in ("corrupt", "empty", "truncated"):
        assert rows[name]["stage"] == "read" and "DecodeError" in rows[name]["error"], rows[name]
    assert rows["tiny"]["stage"] == "degrade" and "at least 4x4" in rows["tiny"]["error"]
    assert finished_names(out) == {"good"}
    assert sorted(os.listdir(os.path.join(out, "images"))) == ["good.png"]
    assert os.path.exists(part_url(out, "tiny", error=True))

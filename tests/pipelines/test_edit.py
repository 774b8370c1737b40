"""`adir edit` end to end on a tiny SD inpainting pipeline and a tiny OpenCLIP index: text retrieval, adaptation, both arms."""

import json
import os
import time

import numpy as np
import pytest
import yaml
from PIL import Image

from pipelines.cli import main
from tests.cluster.helpers import write_pictures

pytestmark = pytest.mark.timeout(300)
PROMPT = "a red barn in a field"
FAST = ["--pipeline", "tiny", "--steps", "3", "--lora-steps", "3", "--k", "3", "--crop-size", "32", "--seed", "5"]


@pytest.fixture(scope="module")
def openclip_index(ray_cluster, tmp_path_factory):
    """A 6-image corpus indexed with the tiny OpenCLIP config (it has a text tower)."""
    from index_builder.job import BuildConfig, run_build

    root = tmp_path_factory.mktemp("clip-corpus")
    write_pictures(str(root / "corpus"), [(f"c{i}", 200 + i) for i in range(6)], height=40, width=48, fmt="png")
    run_build(
        BuildConfig(
            str(root / "corpus"),
            str(root / "index"),
            embedder="openclip:adir-tiny",
            shard_size=3,
            batch_size=6,
            progress=False,
        )
    )
    return str(root / "index")


@pytest.fixture
def photo(tmp_path):
    [path] = write_pictures(str(tmp_path / "in"), [("photo", 9)], height=32, width=40)
    return path


def _png(path):
    return np.asarray(Image.open(path), dtype=np.int16)


def test_edit_retrieves_by_the_prompt_adapts_and_writes_both_arms(tmp_path, photo, openclip_index):
    from adir_ops.adaptation.adapter import Adapter
    from adir_ops.retrieval.embedding import get_embedder
    from index_builder.index_query import NeighborIndex

    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump({"lora_learning_rate": 0.03, "lora_batch_size": 2}))
    out = tmp_path / "out"
    rc = main(
        [
            "edit",
            "--image",
            photo,
            "--prompt",
            PROMPT,
            "--out",
            str(out),
            "--index",
            openclip_index,
            "--config",
            str(job),
            *FAST,
        ]
    )
    assert rc == 0
    record = json.loads((out / "neighbours.json").read_text())
    embedder = get_embedder("openclip:adir-tiny")
    expected, _, _ = NeighborIndex.open(openclip_index).search(embedder.embed_text([PROMPT]), 3)
    assert record["ids"] == list(expected[0]) and record["prompt"] == PROMPT and len(record["losses"]) == 3
    adapter = Adapter.load(str(out / "adapter" / "pytorch_lora_weights.safetensors"))
    assert adapter.config.learning_rate == 0.03 and adapter.prior_config["prompt"] == PROMPT
    edited, stock = _png(out / "edited.png"), _png(out / "stock.png")
    assert edited.shape == stock.shape == (32, 40, 3)
    assert np.abs(edited - stock).max() > 0  # the arms differ by the adaptation alone
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["prompt"] == PROMPT and config["edit_config"]["crop_size"] == 32 and config["mode"] == "adir"

    baseline = tmp_path / "baseline"
    assert (
        main(["edit", "--image", photo, "--prompt", PROMPT, "--out", str(baseline), "--mode", "baseline", *FAST]) == 0
    )
    assert sorted(os.listdir(baseline)) == ["adir-job.json", "config.yaml", "edited.png"]
    assert np.array_equal(_png(baseline / "edited.png"), stock)  # same seed, no adaptation


def test_an_index_without_a_text_encoder_is_refused(tmp_path, photo, corpus_and_index, capsys):
    _, index = corpus_and_index
    rc = main(["edit", "--image", photo, "--prompt", PROMPT, "--out", str(tmp_path / "out"), "--index", index, *FAST])
    assert rc == 2
    assert "built with offline-content, which has no text encoder" in capsys.readouterr().err


def test_missing_pipeline_weights_fail_fast_with_the_download(tmp_path, photo, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    args = ["edit", "--image", photo, "--prompt", PROMPT, "--out", str(tmp_path / "out"), "--mode", "baseline"]
    assert main([*args, "--pipeline", str(tmp_path / "no-such-folder")]) == 2
    assert main(args) == 2  # the default hub id, not in the cache
    err = capsys.readouterr().err
    assert err.count("hf download stabilityai/stable-diffusion-2-inpainting") == 2 and "offline" in err
    assert time.perf_counter() - start < 20


def test_bad_masks_and_options_are_refused(tmp_path, photo, capsys):
    Image.fromarray(np.zeros((10, 10), dtype=np.uint8)).save(tmp_path / "small.png")
    Image.fromarray(np.zeros((32, 40), dtype=np.uint8)).save(tmp_path / "black.png")
    base = [
        "edit",
        "--image",
        photo,
        "--prompt",
        PROMPT,
        "--out",
        str(tmp_path / "out"),
        "--mode",
        "baseline",
        "--pipeline",
        "tiny",
    ]
    assert main([*base, "--mask", str(tmp_path / "small.png")]) == 2
    assert main([*base, "--mask", str(tmp_path / "black.png")]) == 2
    assert (
        main(["edit", "--image", photo, "--prompt", PROMPT, "--out", str(tmp_path / "out"), "--pipeline", "tiny"]) == 2
    )
    err = capsys.readouterr().err
    assert "is 10x10 but the image is 32x40" in err and "marks no pixel to repaint" in err and "needs --index" in err

"""One ADIRPipeline: the Ray job, the in-process pipeline (what the notebooks run) and the example give the same pixels
for the same seed and image, in the adapted arm and in the unadapted one."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from adir_ops.adaptation.config import AdaptConfig
from adir_ops.physics.operators import make_operator
from adir_ops.pipeline import ADIRPipeline
from adir_ops.retrieval.embedding import get_embedder
from adir_ops.rng import image_streams
from adir_ops.sampling.config import SamplerConfig
from cluster.config import ReconstructConfig
from cluster.images import encode_png, to_tensor01
from cluster.retrieval import make_retriever
from index_builder.reader import decode_rgb
from pipelines import cli, reconstruct
from tests.cluster.helpers import write_pictures

pytestmark = pytest.mark.timeout(300)

SEED, STEPS, LORA = 5, 4, AdaptConfig(steps=2, batch_size=2)


def _job(inputs, out, index, mode):
    config = ReconstructConfig(
        inputs=str(inputs),
        out=str(out),
        index=None if mode == "baseline" else index,
        task="sr4",
        mode=mode,
        prior="tiny:16",
        k=3,
        steps=STEPS,
        lora=LORA,
        seed=SEED,
        num_actors=1,
    )
    reconstruct.run(config, progress=False)
    [row] = pq.read_table(out / "results.parquet").to_pylist()
    assert row["error"] is None, row["error"]
    return (out / row["output"]).read_bytes(), row


def _pixels(png: bytes) -> np.ndarray:
    import io

    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


@pytest.mark.parametrize("mode", ["adir", "baseline"])
def test_the_job_and_the_in_process_pipeline_give_the_same_bytes(ray_cluster, corpus_and_index, tmp_path, mode):
    _, index = corpus_and_index
    inputs = tmp_path / "inputs"
    write_pictures(str(inputs), [("one", 3)], height=24, width=32)  # larger than the 16 px prior: tiled
    job_png, row = _job(inputs, tmp_path / "out", index, mode)

    # What a notebook does: the same pieces, in this process, through the same pipeline class.
    truth = to_tensor01(decode_rgb((inputs / "one.png").read_bytes())).unsqueeze(0)
    operator = make_operator("sr4", image_size=tuple(truth.shape[-2:]))
    y = operator.degrade(truth * 2 - 1, image_streams(SEED, "one")["degrade"])
    embedder = get_embedder("offline-content") if mode == "adir" else None
    pipe = ADIRPipeline.from_spec(
        "tiny:16",
        retriever=make_retriever(mode, 3, index=index, embedder=embedder),
        adaptation=LORA,
        sampler=SamplerConfig(steps=STEPS),
    )
    result = pipe(y, operator, seed=SEED, image_id="one")
    assert encode_png(result.image01[0]) == job_png
    assert result.neighbours.ids == (row["neighbour_ids"] or []) and row["sampler"] == result.config["sampler"]["name"]


def test_the_example_gives_the_jobs_pixels_for_the_same_image(ray_cluster, tmp_path):
    from adir_ops import example

    inputs = tmp_path / "inputs"
    write_pictures(
        str(inputs), [("photo", 4)], height=16, width=16
    )  # the tiny prior's size: the example crops nothing
    job_png, _ = _job(inputs, tmp_path / "out", None, "baseline")
    argv = [
        "--task",
        "sr4",
        "--photo",
        str(inputs / "photo.png"),
        "--prior",
        "tiny",
        "--tiny-resolution",
        "16",
        "--steps",
        str(STEPS),
        "--lora-steps",
        "1",
        "--seed",
        str(SEED),
        "--neighbours",
        str(inputs / "photo.png"),
        "--out",
        str(tmp_path / "example"),
    ]
    assert example.main(argv) == 0
    np.testing.assert_array_equal(_pixels((tmp_path / "example" / "no_adaptation.png").read_bytes()), _pixels(job_png))


def test_samples_write_the_mean_and_an_uncertainty_map_and_keep_the_single_sample(ray_cluster, tmp_path):
    inputs = tmp_path / "inputs"
    write_pictures(str(inputs), [("multi", 6)], height=16, width=20)
    one_png, _ = _job(inputs, tmp_path / "one", None, "baseline")
    argv = [
        "reconstruct",
        "--inputs",
        str(inputs),
        "--out",
        str(tmp_path / "three"),
        "--mode",
        "baseline",
        "--task",
        "sr4",
        "--prior",
        "tiny:16",
        "--steps",
        str(STEPS),
        "--seed",
        str(SEED),
        "--samples",
        "3",
        "--num-actors",
        "1",
        "--no-progress",
    ]
    assert cli.main(argv) == 0
    [row] = pq.read_table(tmp_path / "three" / "results.parquet").to_pylist()
    out = tmp_path / "three"
    assert (
        row["samples"] == 3 and (out / row["output"]).read_bytes() == one_png
    )  # sample 0 is the single-sample result
    mean, std = _pixels((out / row["mean_output"]).read_bytes()), _pixels((out / row["std_output"]).read_bytes())
    assert mean.shape == std.shape == (16, 20, 3) and std.max() > 0 and row["mean_std"] > 0
    assert row["mean_psnr"] is not None and row["psnr"] is not None
    # The mean is the mean of the samples: the in-process pipeline with the same streams agrees.
    truth = to_tensor01(decode_rgb((inputs / "multi.png").read_bytes())).unsqueeze(0)
    operator = make_operator("sr4", image_size=(16, 20))
    y = operator.degrade(truth * 2 - 1, image_streams(SEED, "multi")["degrade"])
    result = ADIRPipeline.from_spec("tiny:16", sampler=SamplerConfig(steps=STEPS, samples=3))(
        y, operator, seed=SEED, image_id="multi"
    )
    assert encode_png(result.mean01[0]) == (out / row["mean_output"]).read_bytes()

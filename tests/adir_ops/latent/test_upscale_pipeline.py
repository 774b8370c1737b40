"""The SD x4 upscaler behind the pipeline's one call: pipeline_for picks ADIRUpscalePipeline, which adapts and upscales."""

import numpy as np
import pytest
import torch
from PIL import Image

from adir_ops.adaptation.cache import WarmStart
from adir_ops.adaptation.config import AdaptConfig
from adir_ops.latent.stable_diffusion import tiny_pipeline
from adir_ops.latent.upscale import UpscaleConfig, adapt_upscaler, default_crop_size, upscale
from adir_ops.physics.operators import observe
from adir_ops.pipeline import ADIRPipeline, ADIRUpscalePipeline, pipeline_for
from adir_ops.priors.registry import load_local_prior
from adir_ops.retrieval.arms import GivenNeighbours
from adir_ops.rng import image_streams
from adir_ops.sampling.config import SamplerConfig

LORA = AdaptConfig(steps=2, batch_size=2, learning_rate=3e-2)
SAMPLER = SamplerConfig(steps=3)


@pytest.fixture(scope="module")
def upscaler():
    return tiny_pipeline("sd-x4")


@pytest.fixture(scope="module")
def seen():
    truth01 = torch.rand(1, 3, 32, 36, generator=torch.Generator().manual_seed(0))
    return observe("sr4", truth01, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def neighbour_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("neighbours")
    paths = []
    for i in range(3):
        pixels = (np.random.default_rng(i).random((40, 44, 3)) * 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"n{i}.png")
        paths.append(str(folder / f"n{i}.png"))
    return paths


def test_pipeline_for_picks_the_upscaler_pipeline_for_the_upscaler_and_adir_for_a_pixel_prior(upscaler):
    assert type(pipeline_for(upscaler, sampler=SAMPLER)) is ADIRUpscalePipeline
    assert type(pipeline_for(load_local_prior("tiny:16"), sampler=SAMPLER)) is ADIRPipeline


def test_baseline_is_the_upscale_of_y_from_the_images_sampling_stream(upscaler, seen):
    pipe = pipeline_for(upscaler, sampler=SAMPLER)
    result = pipe(seen.y, seen.operator, seed=3, image_id="x")
    config = UpscaleConfig(crop_size=default_crop_size(upscaler), steps=SAMPLER.steps)
    expected = upscale(upscaler, seen.y.add(1).div(2), config, [image_streams(3, "x")["sampling"]])
    assert result.image01.shape == (1, 3, 32, 36)
    assert torch.equal(result.image01, expected[..., :32, :36].clamp(0, 1))
    assert result.adapter is None and set(result.timings) == {"retrieval_s", "sampling_s"}
    assert result.config["sampler"]["name"] == "sd-x4-upscaler"
    assert pipe.tile_count(seen.operator) == 1


def test_adir_adapts_on_the_neighbours_from_the_adaptation_stream_and_changes_the_image(
    upscaler, seen, neighbour_files
):
    retriever = GivenNeighbours(["a", "b", "c"], neighbour_files)
    pipe = pipeline_for(upscaler, retriever, adaptation=LORA, sampler=SAMPLER)
    result = pipe(seen.y, seen.operator, seed=3, image_id="x")
    baseline = pipeline_for(upscaler, sampler=SAMPLER)(seen.y, seen.operator, seed=3, image_id="x")
    assert result.neighbours_used == 3 and len(result.adapter.losses) == LORA.steps
    assert result.adaptation["source"] == "trained" and result.adapter.prior_config["kind"] == "sd-x4-upscaler"
    again = adapt_upscaler(
        upscaler, pipe.fetch(neighbour_files), pipe.upscale_config(), image_streams(3, "x")["adaptation"]
    )
    assert again.losses == result.adapter.losses
    assert (result.image01 - baseline.image01).abs().max() > 0


def test_a_warm_start_is_refused_for_the_upscaler(upscaler):
    with pytest.raises(ValueError, match="warm start needs a pixel-space prior"):
        pipeline_for(upscaler, adapters={}, warm_start=WarmStart(0.5, 2))

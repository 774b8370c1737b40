"""TiledPrior: full-size eps from a prior-resolution UNet, blended without seams, batching-independent."""

import pytest
import torch
from torch import nn

from adir_ops.priors.diffusion import DiffusionPrior, linear_betas
from adir_ops.priors.tiling import TiledPrior, TilingConfig, blend_window, tile_starts


class _PixelwiseUNet(nn.Module):
    """eps = f(x) pixel by pixel (no spatial context): the blend of tiles must reproduce it exactly."""

    def __init__(self, fn):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))
        self.fn = fn

    def forward(self, x, t, **kwargs):
        return self.fn(x) * self.scale


def _pixelwise_prior(fn, resolution=16):
    return DiffusionPrior(_PixelwiseUNet(fn), linear_betas(1000), resolution=resolution, kind="guided-diffusion")


@pytest.fixture(scope="module")
def tiny():
    return DiffusionPrior.tiny(resolution=16).eval()


def _x(shape, seed=0):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def test_tiles_cover_the_image_with_at_least_the_overlap():
    for length in (16, 17, 31, 40, 100, 257):
        starts = tile_starts(length, 16, 4)
        assert starts[0] == 0 and starts[-1] + 16 == max(length, 16)
        assert all(b - a <= 12 for a, b in zip(starts, starts[1:])), (length, starts)
    w = blend_window(16, 4)
    assert (w > 0).all() and w.max() == 1.0


@torch.no_grad()
def test_an_image_of_exactly_one_tile_gets_the_plain_eps(tiny):
    x = _x((2, 3, 16, 16))
    t = torch.tensor([10, 900])
    assert torch.equal(TiledPrior(tiny).eps(x, t), tiny.eps(x, t))


@torch.no_grad()
def test_result_does_not_depend_on_tile_batch(tiny):
    x = _x((2, 3, 40, 29), seed=1)
    t = torch.tensor([5, 700])
    one = TiledPrior(tiny, TilingConfig(tile_batch=1)).eps(x, t)
    four = TiledPrior(tiny, TilingConfig(tile_batch=4)).eps(x, t)
    assert one.shape == x.shape
    # Batched conv kernels may differ from unbatched ones in the last bits.
    torch.testing.assert_close(one, four, rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_constant_prediction_blends_to_a_constant_without_seams():
    prior = TiledPrior(_pixelwise_prior(lambda x: torch.full_like(x, 0.3)), TilingConfig(tile_batch=3))
    out = prior.eps(_x((1, 3, 45, 70)), 100)
    torch.testing.assert_close(out, torch.full_like(out, 0.3), rtol=0, atol=1e-6)


@torch.no_grad()
def test_tiles_are_put_back_where_they_came_from():
    # A pixelwise model gives each pixel the same prediction in every tile that covers it,
    # so any misplaced tile or weights that do not sum to one show up as a difference.
    prior = TiledPrior(_pixelwise_prior(lambda x: 2 * x + 1), TilingConfig(overlap=5))
    x = _x((2, 3, 37, 52), seed=2)
    torch.testing.assert_close(prior.eps(x, 3), 2 * x + 1, rtol=1e-6, atol=1e-6)


@torch.no_grad()
def test_tiny_images_are_padded_to_the_tile_and_cropped_back(tiny):
    x = _x((1, 3, 9, 13), seed=3)
    out = TiledPrior(tiny, TilingConfig(small_images="pad")).eps(x, 50)
    assert out.shape == x.shape
    # Exactly the plain eps of the reflect-padded 16x16 image, cropped.
    padded = torch.nn.functional.pad(x, (0, 3, 0, 7), mode="reflect")
    assert torch.equal(out, tiny.eps(padded, 50)[..., :9, :13])
    # A side too short to reflect falls back to edge replication instead of failing.
    assert TiledPrior(tiny).eps(_x((1, 3, 3, 20)), 50).shape == (1, 3, 3, 20)


@torch.no_grad()
def test_native_mode_runs_small_images_at_their_own_size(tiny):
    tiled = TiledPrior(tiny, TilingConfig(small_images="native"))
    assert tiled.downscale_factor == 2  # the tiny UNet downsamples once
    even = _x((1, 3, 10, 12), seed=4)
    assert torch.equal(tiled.eps(even, 50), tiny.eps(even, 50))
    odd = _x((1, 3, 9, 40), seed=5)  # odd height: padded to 10, width tiled at 16
    assert tiled.tile_shape(9, 40) == (10, 16)
    assert tiled.eps(odd, 50).shape == odd.shape


def test_exposes_the_prior_interface_and_checks_its_config(tiny):
    tiled = TiledPrior(tiny, TilingConfig(tile_batch=2))
    assert tiled.alphas_cumprod is tiny.alphas_cumprod and tiled.betas is tiny.betas
    assert (tiled.resolution, tiled.channels, tiled.unet) == (tiny.resolution, tiny.channels, tiny.unet)
    assert tiled.config["tiling"] == {"tile": 16, "overlap": 4, "tile_batch": 2, "small_images": "pad"}
    assert torch.equal(tiled.posterior_variance(), tiny.posterior_variance())
    assert tiled.tile_count(16, 16) == 1 and tiled.tile_count(40, 16) == 3
    with pytest.raises(ValueError, match="tile_batch"):
        TilingConfig(tile_batch=0)
    with pytest.raises(ValueError, match="small_images"):
        TilingConfig(small_images="crop")
    with pytest.raises(ValueError, match="overlap"):
        TiledPrior(tiny, TilingConfig(overlap=16))


def test_guided_sampling_of_a_large_image_does_not_depend_on_tile_batch(tiny):
    from adir_ops.physics.operators import make_operator
    from adir_ops.rng import generator_for
    from adir_ops.sampling.samplers import adir_sample

    operator = make_operator("sr4", image_size=(24, 36))
    y = operator.degrade(_x((1, 3, 24, 36), seed=6).clamp(-1, 1), generator_for(0, "degrade"))
    results = [
        adir_sample(
            TiledPrior(tiny, TilingConfig(tile_batch=b)), y, operator, steps=3, generator=[generator_for(0, "x")]
        )
        for b in (1, 4)
    ]
    assert results[0].shape == (1, 3, 24, 36)
    torch.testing.assert_close(results[0], results[1], rtol=1e-4, atol=1e-4)

"""Sampling region by region: windows cover the image on the measurement's grid, the blend leaves no seam,
and a large photo reconstructed in regions matches the whole-image reconstruction in quality."""

import pytest
import torch

from adir_ops.physics.operators import make_operator
from adir_ops.sampling.regions import regional, sample_in_regions, windows


@pytest.mark.parametrize("height, width, side, overlap, alignment", [(1000, 700, 256, 64, 4), (517, 300, 256, 32, 1)])
def test_windows_cover_the_image_on_the_measurement_grid_and_overlap(height, width, side, overlap, alignment):
    cells = windows(height, width, side, overlap, alignment)
    covered = torch.zeros(height, width, dtype=torch.int32)
    for top, left, h, w in cells:
        assert top % alignment == 0 and left % alignment == 0 and h <= side and w <= side
        covered[top : top + h, left : left + w] += 1
    assert int(covered.min()) >= 1
    rows = sorted({(top, h) for top, _, h, _ in cells})
    for (a, h), (b, _) in zip(rows, rows[1:]):  # neighbouring rows share the overlap, and not much more
        assert overlap <= a + h - b < overlap + 2 * alignment
    # The pixels sampled are the image's plus about one overlap per seam, not whole windows' worth.
    seam = overlap + 2 * alignment
    n_rows, n_cols = len(rows), len(cells) // len(rows)
    assert sum(h * w for _, _, h, w in cells) <= (height + (n_rows - 1) * seam) * (width + (n_cols - 1) * seam)


def test_a_pointwise_operator_in_regions_equals_the_whole_image_exactly():
    # Colorization is per pixel: the window's naive inverse is the whole one's, so the blend must return it.
    operator = make_operator("colorize", image_size=(600, 520))
    y = torch.rand(1, 1, 600, 520, generator=torch.Generator().manual_seed(0)) * 2 - 1
    out = sample_in_regions(lambda y, op, g: op.naive_inverse(y), y, operator, torch.Generator().manual_seed(1), 256)
    assert torch.allclose(out, operator.naive_inverse(y), atol=1e-6)


def test_sr_windows_differ_from_the_whole_only_at_their_edges_and_the_blend_hides_them():
    operator = make_operator("sr4", image_size=(640, 512))
    y = torch.rand(1, 3, 160, 128, generator=torch.Generator().manual_seed(0)) * 2 - 1
    out = sample_in_regions(lambda y, op, g: op.naive_inverse(y), y, operator, torch.Generator().manual_seed(1), 256)
    whole = operator.naive_inverse(y)
    assert out.shape == whole.shape and float((out - whole).abs().mean()) < 2e-3


def test_only_large_images_of_local_operators_go_by_region():
    assert regional(make_operator("sr4", image_size=(3000, 2000)), 2048)
    assert not regional(make_operator("sr4", image_size=(2040, 1356)), 2048)  # DIV2K stays whole
    assert not regional(make_operator("sr4", image_size=(3000, 2000)), 0)
    assert not regional(make_operator("inpaint", image_size=(3000, 2000)), 2048)  # a mask hole needs its context


def test_a_photo_in_regions_is_as_good_as_whole_and_the_same_twice():
    from adir_ops.pipeline import ADIRPipeline
    from adir_ops.sampling.config import SamplerConfig
    from tests.adir_ops.priors.test_denoiser import _photo, _psnr

    truth = _photo(384)
    operator = make_operator("sr4", image_size=(384, 384))
    y = operator.A(truth * 2 - 1)
    results = {}
    for name, region in (("whole", 0), ("regions", 256), ("again", 256)):
        pipe = ADIRPipeline.from_spec("default", sampler=SamplerConfig(steps=5, region=region))
        results[name] = pipe.sample(y, operator, torch.Generator().manual_seed(3))
    assert torch.equal(results["regions"], results["again"])
    whole, regions = _psnr(results["whole"], truth), _psnr(results["regions"], truth)
    assert regions > whole - 0.3, (whole, regions)
    assert regions > _psnr(operator.naive_inverse(y).add(1).div(2), truth)

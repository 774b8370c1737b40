"""The kernels `--degradation auto` chooses among: SR by area or Gaussian downscaling, blur by a Gaussian, box or motion line.

The registry contract of test_operators.py (adjoint, degrade, Gram solves, projection), run on every kernel variant.
"""

import pytest
import torch
import torch.nn.functional as F

from adir_ops.physics.operators import BLUR_KERNELS, SR_KERNELS, make_operator
from adir_ops.physics.separable import area_matrix, box_matrix, conv_matrix, gaussian_down_matrix, gaussian_taps
from adir_ops.rng import generator_for

VARIANTS = [("sr4", {"kernel": k}) for k in SR_KERNELS] + [
    ("sr8", {"kernel": "area"}),
    ("sr8", {"kernel": "gaussian"}),
]
VARIANTS += [("deblur", {"kernel": "gaussian", "width": w}) for w in (0.8, 2.4)]
VARIANTS += [("deblur", {"kernel": k, "width": 5}) for k in BLUR_KERNELS if k != "gaussian"]
IDS = [f"{name}-{'-'.join(str(v) for v in options.values())}" for name, options in VARIANTS]


def _rand(shape, seed, dtype=torch.float64):
    return (torch.rand(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 2 - 1).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name, options", VARIANTS, ids=IDS)
def test_adjoint_shapes_and_config(name, options, dtype):
    op = make_operator(name, image_size=(17, 23), **options)
    x = _rand((2, 3, 17, 23), 1, dtype)
    y = op.A(x)
    assert tuple(y.shape) == (2, *op.measurement_shape(3)) and y.dtype == dtype
    v = _rand(y.shape, 2, dtype)
    lhs, rhs = (y * v).sum().item(), (x * op.A_adjoint(v)).sum().item()
    assert abs(lhs - rhs) <= 1e-4 * max(abs(lhs), abs(rhs))
    assert op.naive_inverse(y).shape == x.shape
    for key, value in options.items():
        assert op.config[key] == value
    region = op.region(0, 0, 16, 16)
    assert {k: region.config[k] for k in options} == {k: op.config[k] for k in options}


@pytest.mark.parametrize("name, options", VARIANTS, ids=IDS)
def test_flat_images_stay_flat(name, options):
    """Every kernel sums to 1, borders included: a constant image is measured as that constant."""
    op = make_operator(name, image_size=(17, 23), **options)
    y = op.A(torch.full((1, 3, 17, 23), 0.3, dtype=torch.float64))
    assert torch.allclose(y, torch.full_like(y, 0.3), rtol=0, atol=1e-12)


@pytest.mark.parametrize("name, options", VARIANTS, ids=IDS)
def test_gram_solves_projection_and_degrade(name, options):
    op = make_operator(name, image_size=(17, 23), noise_sigma_255=10, **options)
    truth, x = _rand((3, 3, 17, 23), 3), _rand((3, 3, 17, 23), 4)
    y = op.degrade(truth, [generator_for(7, f"d{i}") for i in range(3)])
    assert torch.equal(y, op.degrade(truth, [generator_for(7, f"d{i}") for i in range(3)]))
    # The closed-form solve agrees with conjugate gradients on A's range, to the part that a wide Gaussian's
    # eigenvalues below pinv_rcond carry (the closed form leaves them out, as a pseudo-inverse does).
    cg = make_operator(name, image_size=(17, 23), **options)
    cg._gram_spectrum = lambda: None
    damping = torch.tensor([0.1, 0.3, 1.0], dtype=torch.float64)
    exact = op.gram_solve(op.A(truth), damping)
    assert torch.allclose(cg.gram_solve(op.A(truth), damping), exact, rtol=0, atol=1e-5 * exact.abs().max().item())
    radius = op.noise_radius(3)
    residual = (y - op.A(op.project(x, y, radius))).flatten(1).norm(dim=1)
    assert torch.allclose(residual, torch.full((3,), radius, dtype=torch.float64), rtol=1e-6, atol=0)


def test_the_box_kernel_is_the_papers_uniform_blur():
    x = _rand((1, 3, 17, 23), 5)
    paper = make_operator("deblur", image_size=(17, 23))
    box = make_operator("deblur", image_size=(17, 23), kernel="box", width=5)
    assert torch.allclose(paper.A(x), box.A(x), rtol=0, atol=1e-6)
    assert torch.allclose(
        conv_matrix(17, torch.full((5,), 0.2, dtype=torch.float64)), box_matrix(17, 5), rtol=0, atol=1e-15
    )


def test_conv_matrix_is_torchs_reflect_padded_convolution():
    taps = gaussian_taps(1.3)
    x = _rand((4, 1, 20), 6)
    padded = F.pad(x, (len(taps) // 2, len(taps) // 2), mode="reflect")
    assert torch.allclose(x @ conv_matrix(20, taps).T, F.conv1d(padded, taps.view(1, 1, -1)), rtol=0, atol=1e-14)
    # Longer than the side, where torch refuses: the mirror bounces, rows still sum to 1.
    assert torch.allclose(conv_matrix(3, gaussian_taps(2.0)).sum(dim=1), torch.ones(3, dtype=torch.float64))


def test_motion_lines_smear_along_one_axis_only():
    x = torch.zeros(1, 1, 15, 15, dtype=torch.float64)
    x[..., 7, 7] = 1
    h = make_operator("deblur", image_size=(15, 15), kernel="motion-h", width=5).A(x)[0, 0]
    assert torch.equal(h[7, 5:10], torch.full((5,), 0.2, dtype=torch.float64)) and h.sum() == pytest.approx(1)
    v = make_operator("deblur", image_size=(15, 15), kernel="motion-v", width=5).A(x)[0, 0]
    assert torch.allclose(v, h.T)


def test_area_is_the_block_mean_and_gaussian_downscaling_is_centred_on_the_block():
    x = _rand((1, 1, 16, 16), 7)
    area = make_operator("sr4", image_size=(16, 16), kernel="area").A(x)
    assert torch.allclose(area, F.avg_pool2d(x, 4), rtol=0, atol=1e-14)
    assert torch.allclose(area_matrix(10, 4)[-1], torch.tensor([0.0] * 8 + [0.5, 0.5], dtype=torch.float64))
    rows = gaussian_down_matrix(64, 4, 1.5)
    centre = (rows[8] * torch.arange(64, dtype=torch.float64)).sum()
    assert centre.item() == pytest.approx(8 * 4 + 1.5)  # the middle of HR pixels 32..35


def test_unknown_kernels_and_widths_are_refused_with_the_choices():
    with pytest.raises(ValueError, match="bicubic, area, gaussian"):
        make_operator("sr4", image_size=(16, 16), kernel="lanczos")
    with pytest.raises(ValueError, match="gaussian, box, motion-h, motion-v"):
        make_operator("deblur", image_size=(16, 16), kernel="disc", width=3)
    with pytest.raises(ValueError, match="odd whole width"):
        make_operator("deblur", image_size=(16, 16), kernel="box", width=4)
    with pytest.raises(ValueError, match="width goes with kernel"):
        make_operator("deblur", image_size=(16, 16), width=2.0)

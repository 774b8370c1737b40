"""Forward models: one registry-driven contract for every operator, plus per-operator facts the paper relies on."""

import numpy as np
import pytest
import torch
from PIL import Image

from adir_ops.physics.operators import OPERATORS, box_mask, make_operator
from adir_ops.rng import generator_for

SIZES = [(17, 23), (32, 48)]
DTYPES = [torch.float32, torch.float64]
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"))]
BATCH = 3


def _rand(shape, seed, dtype=torch.float64, device="cpu"):
    return (torch.rand(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 2 - 1).to(
        dtype=dtype, device=device
    )


def _generators(n, tag="degrade"):
    return [generator_for(7, f"{tag}:{i}") for i in range(n)]


# ---- the contract, for every operator in the registry -------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("name", list(OPERATORS))
def test_adjoint_shapes_and_dtype(name, size, dtype, device):
    op = make_operator(name, image_size=size).to(device)
    x = _rand((BATCH, 3, *size), 1, dtype, device)
    y = op.A(x)
    assert tuple(y.shape) == (BATCH, *op.measurement_shape(3))
    assert y.dtype == dtype and y.device == x.device
    v = _rand(y.shape, 2, dtype, device)
    x_back = op.A_adjoint(v)
    assert x_back.shape == x.shape and x_back.dtype == dtype
    lhs, rhs = (y * v).sum().item(), (x * x_back).sum().item()
    assert abs(lhs - rhs) <= 1e-4 * max(abs(lhs), abs(rhs))
    assert op.naive_inverse(y).shape == x.shape


@pytest.mark.parametrize("name", list(OPERATORS))
def test_degrade_reproducible_and_independent_of_batch(name):
    op = make_operator(name, image_size=(17, 23), noise_sigma_255=5)
    x = _rand((BATCH, 3, 17, 23), 3)
    batch = op.degrade(x, _generators(BATCH))
    assert torch.equal(batch, op.degrade(x, _generators(BATCH)))
    for i in range(BATCH):
        alone = op.degrade(x[i : i + 1], _generators(BATCH)[i])
        # Equal up to float64 rounding (BLAS may block a batch differently); noise is 0.04.
        assert torch.allclose(alone[0], batch[i], rtol=0, atol=1e-12)
    # Noise actually came from the generators: another seed gives another y.
    assert not torch.equal(batch, op.degrade(x, _generators(BATCH, tag="other")))


@pytest.mark.parametrize("name", list(OPERATORS))
def test_degrade_refuses_one_generator_for_a_batch(name):
    op = make_operator(name, image_size=(16, 16))
    with pytest.raises(ValueError, match="one per image"):
        op.degrade(_rand((2, 3, 16, 16), 4), generator_for(0, "a"))


@pytest.mark.parametrize("name", list(OPERATORS))
def test_wrong_image_size_names_operator_and_both_sizes(name):
    op = make_operator(name, image_size=(32, 48))
    with pytest.raises(ValueError, match=rf"{name} was built for images of 32x48 pixels; got 48x32"):
        op.A(_rand((1, 3, 48, 32), 5))


@pytest.mark.parametrize("name", list(OPERATORS))
def test_operator_on_another_device_than_the_input_says_how_to_fix(name):
    op = make_operator(name, image_size=(16, 16)).to(torch.device("meta"))
    with pytest.raises(ValueError, match=r"call operator\.to\('cpu'\)"):
        op.A(_rand((1, 3, 16, 16), 6))


# ---- noise and the registry ----------------------------------------------------------------


def test_deblur_noise_has_the_paper_sigma_on_the_minus1_1_scale():
    op = make_operator("deblur", image_size=(64, 64))
    assert op.noise_sigma == pytest.approx(10 * 2 / 255)
    x = _rand((2, 3, 64, 64), 7)
    residual = op.degrade(x, _generators(2)) - op.A(x)
    assert residual.std().item() == pytest.approx(op.noise_sigma, rel=0.03)
    assert residual.mean().abs().item() < 0.1 * op.noise_sigma


@pytest.mark.parametrize("name", ["sr4", "sr8", "colorize", "inpaint"])
def test_paper_noiseless_operators_default_to_no_noise(name):
    op = make_operator(name, image_size=(16, 16))
    x = _rand((1, 3, 16, 16), 8)
    assert op.noise_sigma == 0 and torch.equal(op.degrade(x, _generators(1)[0]), op.A(x))


def test_unknown_operator_lists_the_names():
    with pytest.raises(ValueError, match="sr4, sr8, deblur, colorize, inpaint"):
        make_operator("sr3", image_size=(16, 16))


def test_unknown_option_and_missing_size_are_refused():
    with pytest.raises(ValueError, match="'sr4' does not take mask; it takes image_size, noise_sigma_255"):
        make_operator("sr4", image_size=(16, 16), mask=torch.ones(16, 16))
    with pytest.raises(ValueError, match="needs image_size"):
        make_operator("deblur")
    with pytest.raises(ValueError, match="noise_sigma_255 >= 0"):
        make_operator("deblur", image_size=16, noise_sigma_255=-1)


# ---- super-resolution: DIV2K's MATLAB imresize ---------------------------------------------


def _pil_bicubic_down(x, factor):
    """PIL's antialiased bicubic (Keys a = -0.5, as MATLAB imresize) on each float channel."""
    H, W = x.shape[-2:]
    channels = [
        np.array(
            Image.fromarray(c.numpy().astype(np.float32), mode="F").resize((W // factor, H // factor), Image.BICUBIC)
        )
        for c in x[0]
    ]
    return torch.from_numpy(np.stack(channels)).double()[None]


@pytest.mark.parametrize("factor", [4, 8])
def test_sr_matches_pil_bicubic_away_from_borders(factor):
    x = _rand((1, 3, 64, 96), 9)
    y = make_operator(f"sr{factor}", image_size=(64, 96)).A(x)
    # PIL renormalises the kernel at the border where MATLAB mirrors; the kernel reaches 2 LR pixels.
    inner = (..., slice(2, -2), slice(2, -2))
    assert (y - _pil_bicubic_down(x, factor))[inner].abs().max().item() < 1e-6


@pytest.mark.parametrize("size", [(64, 96), (50, 70)], ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("factor", [4, 8])
def test_sr_matches_deepinv_matlab_port_including_borders(factor, size):
    from deepinv.physics.functional import imresize_matlab

    x = _rand((2, 3, *size), 10)
    y = make_operator(f"sr{factor}", image_size=size).A(x)
    assert torch.allclose(y, imresize_matlab(x.clone(), scale=1 / factor), atol=1e-12, rtol=0)


@pytest.mark.parametrize("name", ["sr4", "sr8"])
def test_sr_keeps_flat_images_flat_even_on_short_sides(name):
    # (17, 23) is shorter than x8's 32-tap kernel: MATLAB mirrors the image repeatedly.
    op = make_operator(name, image_size=(17, 23))
    flat = torch.full((1, 3, 17, 23), 0.3, dtype=torch.float64)
    assert torch.allclose(op.A(flat), torch.full_like(op.A(flat), 0.3), atol=1e-12)
    assert torch.allclose(op.naive_inverse(op.A(flat)), flat, atol=1e-12)


def test_sr_naive_inverse_is_bicubic_upscaling_close_on_a_smooth_image():
    yy, xx = torch.meshgrid(
        torch.linspace(0, 1, 64, dtype=torch.float64), torch.linspace(0, 1, 96, dtype=torch.float64), indexing="ij"
    )
    smooth = torch.sin(3 * xx + 2 * yy).expand(1, 3, 64, 96)
    op = make_operator("sr4", image_size=(64, 96))
    up = op.naive_inverse(op.A(smooth))
    # Measured: 0.015 on the matching grid; the same upscaling one HR pixel off gives 0.050.
    assert (up - smooth)[..., 4:-4, 4:-4].abs().max().item() < 0.025


def test_sr_refuses_an_image_smaller_than_its_factor():
    with pytest.raises(ValueError, match="sr8 needs an image of at least 8x8 pixels; got 7x20"):
        make_operator("sr8", image_size=(7, 20))


# ---- deblur, colorize, inpaint ---------------------------------------------------------------


def test_deblur_is_the_5x5_mean_inside_the_image():
    x = _rand((1, 3, 16, 20), 11)
    y = make_operator("deblur", image_size=(16, 20)).A(x)
    by_hand = torch.nn.functional.avg_pool2d(x, 5, stride=1)
    assert torch.allclose(y[..., 2:-2, 2:-2], by_hand, atol=1e-12)


def test_colorize_averages_rgb_and_naive_inverse_replicates_gray():
    op = make_operator("colorize", image_size=(8, 8))
    x = _rand((2, 3, 8, 8), 12)
    y = op.A(x)
    assert torch.allclose(y, x.mean(dim=1, keepdim=True), atol=1e-12)
    assert torch.allclose(op.naive_inverse(y), y.expand(-1, 3, -1, -1), atol=1e-12)


def test_colorize_refuses_gray_input():
    with pytest.raises(ValueError, match="colorize needs RGB images"):
        make_operator("colorize", image_size=(8, 8)).A(_rand((1, 1, 8, 8), 13))


def test_inpaint_keeps_observed_pixels_and_fills_the_hole_with_their_mean():
    mask = torch.ones(6, 9)
    mask[1:3, 2:6] = 0
    op = make_operator("inpaint", image_size=(6, 9), mask=mask, noise_sigma_255=20)
    x = _rand((2, 3, 6, 9), 14)
    y = op.degrade(x, _generators(2))
    assert torch.equal(y[..., 1:3, 2:6], torch.zeros_like(y[..., 1:3, 2:6]))  # no noise in the hole
    filled = op.naive_inverse(y)
    observed = mask.bool()
    assert torch.equal(filled[..., observed], y[..., observed])
    mean = y[..., observed].mean(dim=-1)
    assert torch.allclose(filled[..., 1, 2], mean, atol=1e-12)


def test_inpaint_default_mask_is_a_centred_half_box():
    op = make_operator("inpaint", image_size=(16, 24))
    hole = op.mask[0, 0] == 0
    assert hole.sum().item() == 8 * 12 and hole[4:12, 6:18].all()


def test_box_mask_is_deterministic_per_generator():
    a = box_mask((20, 30), torch.Generator().manual_seed(1), hole_fraction=0.3)
    b = box_mask((20, 30), torch.Generator().manual_seed(1), hole_fraction=0.3)
    assert torch.equal(a, b) and (a == 0).sum().item() == 6 * 9
    others = [box_mask((20, 30), torch.Generator().manual_seed(s), hole_fraction=0.3) for s in range(2, 6)]
    assert any(not torch.equal(a, o) for o in others)


@pytest.mark.parametrize("shape", [(16, 15), (1, 16, 16), (3, 1, 16, 16), (1, 1, 15, 16)])
def test_inpaint_refuses_a_mask_of_the_wrong_shape(shape):
    with pytest.raises(
        ValueError, match=r"inpaint needs a mask of shape \(16, 16\) or \(1, 1, 16, 16\) for a 16x16 image; got"
    ):
        make_operator("inpaint", image_size=(16, 16), mask=torch.ones(shape))


def test_inpaint_refuses_a_non_binary_or_empty_mask():
    with pytest.raises(ValueError, match="binary"):
        make_operator("inpaint", image_size=(4, 4), mask=torch.full((4, 4), 0.5))
    with pytest.raises(ValueError, match="observes no pixel"):
        make_operator("inpaint", image_size=(4, 4), mask=torch.zeros(4, 4))


# ---- the Gram matrix: pseudo-inverse, projections, closed forms vs conjugate gradients -----


def _without_closed_form(op):
    op._gram_spectrum = lambda: None  # instance attribute shadows the method: the CG fallback
    return op


@pytest.mark.parametrize("name", list(OPERATORS))
def test_every_operator_has_a_closed_form_pseudo_inverse(name):
    assert make_operator(name, image_size=(16, 16)).has_closed_form
    assert not _without_closed_form(make_operator(name, image_size=(16, 16))).has_closed_form


@pytest.mark.parametrize("name", list(OPERATORS))
def test_preconditioned_step_is_the_exact_projection(name):
    """A (x + A^T (A A^T)^-1 (y - A x)) == y: a full preconditioned step lands on the measurement."""
    op = make_operator(name, image_size=(17, 23))
    x, truth = _rand((BATCH, 3, 17, 23), 20), _rand((BATCH, 3, 17, 23), 21)
    y = op.A(truth)
    stepped = x + op.A_adjoint(op.gram_solve(y - op.A(x)))
    # Deblur's Gram has eigenvalues down to 1e-9 of its top: float64 rounding is amplified.
    tol = 1e-6 if name == "deblur" else 1e-10
    assert (op.A(stepped) - y).abs().max().item() < tol * y.abs().max().item()
    assert torch.allclose(op.project(x, y), stepped, rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", ["sr4", "sr8", "deblur", "colorize", "inpaint"])
def test_pseudo_inverse_matches_the_dense_pseudo_inverse(name):
    size = (8, 12)
    op = make_operator(name, image_size=size)
    basis = torch.eye(3 * 8 * 12, dtype=torch.float64).view(-1, 3, *size)
    dense = op.A(basis).flatten(1).T  # one column per pixel
    y = op.A(_rand((2, 3, *size), 22))
    expected = (torch.linalg.pinv(dense, rtol=1e-12) @ y.flatten(1).T).T.reshape(2, 3, *size)
    got = op.pseudo_inverse(y)
    assert torch.allclose(got, expected, rtol=0, atol=1e-6 * expected.abs().max().item())


@pytest.mark.parametrize("name", list(OPERATORS))
def test_closed_form_gram_solve_agrees_with_the_conjugate_gradient_fallback(name):
    op = make_operator(name, image_size=(17, 23))
    cg = _without_closed_form(make_operator(name, image_size=(17, 23)))
    r = op.A(_rand((BATCH, 3, 17, 23), 23))
    damping = torch.tensor([0.01, 0.1, 1.0], dtype=torch.float64)
    exact = op.gram_solve(r, damping)
    assert torch.allclose(cg.gram_solve(r, damping), exact, rtol=0, atol=1e-6 * exact.abs().max().item())
    if name != "deblur":  # deblur's Gram is too ill-conditioned for CG without damping
        x = _rand((BATCH, 3, 17, 23), 24)
        assert (cg.A(cg.project(x, r)) - r).abs().max().item() < 1e-6


def test_blur_is_separable_as_its_closed_form_assumes():
    from adir_ops.physics.separable import box_matrix

    op = make_operator("deblur", image_size=(17, 23))
    tap = float(op.filter[0, 0, 0, 0]) ** 0.5
    x = _rand((2, 3, 17, 23), 25)
    assert torch.allclose(op.A(x), box_matrix(17, 5, tap) @ x @ box_matrix(23, 5, tap).T, rtol=0, atol=1e-14)


@pytest.mark.parametrize("name", list(OPERATORS))
def test_projection_onto_the_noise_ball_stops_at_the_noise_floor(name):
    """radius > 0: ||A x' - y|| = radius, and x' - x is parallel to A^T (y - A x') (the KKT of the nearest point)."""
    op = make_operator(name, image_size=(17, 23), noise_sigma_255=10)
    truth = _rand((BATCH, 3, 17, 23), 26)
    y = op.degrade(truth, _generators(BATCH))
    x = _rand((BATCH, 3, 17, 23), 27)
    radius = op.noise_radius(3)
    projected = op.project(x, y, radius)
    residual = y - op.A(projected)
    assert torch.allclose(
        residual.flatten(1).norm(dim=1), torch.full((BATCH,), radius, dtype=torch.float64), rtol=1e-6, atol=0
    )
    move, normal = (projected - x).flatten(1), op.A_adjoint(residual).flatten(1)
    cosine = (move * normal).sum(dim=1) / (move.norm(dim=1) * normal.norm(dim=1))
    assert (cosine > 1 - 1e-6).all()
    # Already inside the ball: nothing moves; the batch does not couple images.
    assert torch.equal(op.project(truth + 0 * x, op.A(truth), radius), truth)
    for i in range(BATCH):
        assert torch.allclose(op.project(x[i : i + 1], y[i : i + 1], radius), projected[i : i + 1], rtol=0, atol=1e-12)


def test_noise_radius_counts_only_measured_values():
    inpaint = make_operator("inpaint", image_size=(16, 24), noise_sigma_255=10)
    assert inpaint.measurement_count(3) == 3 * (16 * 24 - 8 * 12)
    assert inpaint.noise_radius(3) == pytest.approx(inpaint.noise_sigma * (3 * (16 * 24 - 8 * 12)) ** 0.5)
    sr = make_operator("sr4", image_size=(17, 23), noise_sigma_255=5)
    assert sr.measurement_count(3) == 3 * 5 * 6
    assert make_operator("colorize", image_size=(8, 8)).measurement_count(3) == 64
    assert make_operator("sr4", image_size=(16, 16)).noise_radius(3) == 0

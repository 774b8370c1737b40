"""The operator base on hand-made operators: shape and device checks, noise per image, and the Gram solves.

The registry's operators are checked against the same contract in test_operators.py; here the base
class is checked alone, against dense linear algebra, on the path with no closed form (conjugate
gradients) and on one with a closed form that has zero eigenvalues.
"""

import math

import pytest
import torch

from adir_ops.physics.linear_operator import Operator, as_image_size
from adir_ops.rng import randn_per_image


def _rand(shape, seed):
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 2 - 1


def gens(*seeds):
    return [torch.Generator().manual_seed(s) for s in seeds]


class Dense(Operator):
    """y = M x per channel: a random 6 x 12 matrix from 3x4 images to 2x3 measurements; no closed form."""

    name = "dense"

    def __init__(self, noise_sigma_255=0.0, seed=0):
        super().__init__((3, 4), noise_sigma_255)
        self.register_buffer("M", _rand((6, 12), seed))

    def _measurement_size(self):
        return (2, 3)

    def _A(self, x):
        return (x.flatten(-2) @ self.M.to(x.dtype).T).unflatten(-1, (2, 3))

    def _A_adjoint(self, y):
        return (y.flatten(-2) @ self.M.to(y.dtype)).unflatten(-1, (3, 4))

    def naive_inverse(self, y):
        return self.pseudo_inverse(y)


class Diagonal(Operator):
    """y = w * x with some w = 0 (pixels never measured): A A^T = diag(w^2), a closed form with zero eigenvalues."""

    name = "diagonal"

    def __init__(self):
        super().__init__((2, 3))
        self.register_buffer("w", torch.tensor([[0.5, 0.0, 2.0], [1.0, 3.0, 0.0]], dtype=torch.float64))

    def _A(self, x):
        return self.w.to(x.dtype) * x

    def _A_adjoint(self, y):
        return self.w.to(y.dtype) * y

    def _gram_spectrum(self):
        identity = lambda r: r  # noqa: E731
        return identity, identity, self.w.square()


def _without_closed_form(op):
    op._gram_spectrum = lambda: None  # the instance attribute shadows the method: conjugate gradients
    return op


# ---- the Gram matrix A A^T: solves, pseudo-inverse, projections ------------------------------


def test_conjugate_gradients_solve_the_damped_gram_system_of_each_image():
    op = Dense()
    assert not op.has_closed_form
    r = _rand((3, 2, 2, 3), 1)
    damping = torch.tensor([0.0, 0.1, 1.0], dtype=torch.float64)
    z = op.gram_solve(r, damping)
    gram = op.M @ op.M.T
    for i in range(3):
        expected = torch.linalg.solve(gram + damping[i] * torch.eye(6, dtype=torch.float64), r[i].flatten(-2).T).T
        assert torch.allclose(z[i].flatten(-2), expected, rtol=0, atol=1e-8 * expected.abs().max())
    # A float damping is the same for every image.
    assert torch.allclose(op.gram_solve(r, 0.1)[1], z[1], rtol=0, atol=1e-12)


def test_pseudo_inverse_is_the_least_norm_image_that_explains_y():
    op = Dense()
    y = _rand((2, 2, 2, 3), 2)
    expected = (y.flatten(-2) @ torch.linalg.pinv(op.M).T).unflatten(-1, (3, 4))
    got = op.pseudo_inverse(y)
    assert torch.allclose(got, expected, rtol=0, atol=1e-8)
    assert torch.allclose(op.A(got), y, rtol=0, atol=1e-8)


def test_closed_form_ignores_zero_eigenvalues_instead_of_dividing_by_them():
    op = Diagonal()
    assert op.has_closed_form
    y = op.A(_rand((2, 1, 2, 3), 3))
    got = op.pseudo_inverse(y)
    measured = op.w != 0
    assert torch.isfinite(got).all()
    assert torch.allclose(got[..., measured], (y / torch.where(measured, op.w, 1.0))[..., measured], atol=1e-12)
    assert torch.equal(got[..., ~measured], torch.zeros_like(got[..., ~measured]))


@pytest.mark.parametrize("make", [Dense, Diagonal], ids=["cg", "closed-form"])
def test_projection_with_radius_zero_lands_on_the_measurement(make):
    op = make()
    x = _rand((2, 1, *op.image_size), 4)
    y = op.A(_rand((2, 1, *op.image_size), 5))
    projected = op.project(x, y)
    assert torch.allclose(op.A(projected), y, rtol=0, atol=1e-8)
    # The nearest such image: x moved along the row space of A only, so projecting again moves nothing.
    assert torch.allclose(op.project(projected, y), projected, rtol=0, atol=1e-8)


@pytest.mark.parametrize("make", [Dense, Diagonal], ids=["cg", "closed-form"])
def test_projection_onto_a_ball_stops_on_its_surface_and_keeps_a_point_inside(make):
    op = make()
    truth, x = _rand((2, 1, *op.image_size), 6), _rand((2, 1, *op.image_size), 7)
    y = op.A(truth)
    radius = torch.tensor([0.05, 0.2], dtype=torch.float64)
    projected = op.project(x, y, radius)
    distance = (op.A(projected) - y).flatten(1).norm(dim=1)
    assert torch.allclose(distance, radius, rtol=1e-4, atol=0)
    inside = truth + 1e-3 * x
    assert torch.equal(op.project(inside, y, 1.0), inside)


def test_the_closed_form_and_conjugate_gradient_projections_agree():
    exact, cg = Diagonal(), _without_closed_form(Diagonal())
    x, y = _rand((2, 1, 2, 3), 8), Diagonal().A(_rand((2, 1, 2, 3), 9))
    assert torch.allclose(cg.project(x, y, 0.1), exact.project(x, y, 0.1), rtol=0, atol=1e-6)


def test_one_value_per_image_or_one_for_all_and_nothing_else():
    op = Dense()
    with pytest.raises(ValueError, match=r"one value per image \(2\); got shape \(3,\)"):
        op.gram_solve(_rand((2, 1, 2, 3), 10), torch.ones(3, dtype=torch.float64))


# ---- checks, noise and what an operator records ------------------------------------------------


def test_a_wrong_size_names_the_operator_both_sizes_and_the_fix():
    op = Dense()
    with pytest.raises(ValueError, match=r"dense was built for images of 3x4 pixels; got 4x3: build one with"):
        op.A(_rand((1, 1, 4, 3), 11))
    with pytest.raises(ValueError, match=r"dense was built for measurements of 2x3 pixels; got 3x4$"):
        op.A_adjoint(_rand((1, 1, 3, 4), 12))


@pytest.mark.parametrize("bad", [torch.zeros(1, 3, 4), torch.zeros(1, 1, 3, 4, dtype=torch.long), [[0.0]]])
def test_anything_but_a_float_batch_is_refused(bad):
    with pytest.raises(ValueError, match=r"dense needs a float image batch \(B, C, H, W\)"):
        Dense().A(bad)


def test_an_operator_on_another_device_says_how_to_move_it():
    op = Dense().to(torch.device("meta"))
    with pytest.raises(ValueError, match=r"dense lives on meta but the image is on cpu; call operator\.to\('cpu'\)"):
        op.A(_rand((1, 1, 3, 4), 13))


def test_noise_is_given_on_the_0_255_scale_and_applied_on_the_minus1_1_scale():
    assert Dense(noise_sigma_255=10).noise_sigma == pytest.approx(20 / 255)
    for bad in (-1.0, float("nan")):
        with pytest.raises(ValueError, match=r"dense needs noise_sigma_255 >= 0 \(the 0..255 scale\)"):
            Dense(noise_sigma_255=bad)


def test_each_images_noise_comes_from_its_own_generator_whatever_the_batch():
    op = Dense(noise_sigma_255=25)
    x = _rand((3, 2, 3, 4), 14)
    y = op.degrade(x, gens(1, 2, 3))
    expected = op.A(x) + op.noise_sigma * randn_per_image((3, 2, 2, 3), gens(1, 2, 3), dtype=torch.float64)
    assert torch.allclose(y, expected, rtol=0, atol=1e-15)
    alone = op.degrade(x[2:], gens(3))
    assert torch.allclose(alone[0], y[2], rtol=0, atol=1e-12)


def test_one_generator_for_a_batch_is_refused_even_without_noise():
    with pytest.raises(ValueError, match="pass a list of 2 generators"):
        Dense().degrade(_rand((2, 1, 3, 4), 15), torch.Generator().manual_seed(0))


def test_counts_radius_and_config_of_an_operator():
    op = Dense(noise_sigma_255=5)
    assert op.measurement_shape(2) == (2, 2, 3) and op.measurement_count(2) == 12
    assert op.noise_radius(2) == pytest.approx(op.noise_sigma * math.sqrt(12))
    assert op.config == {"name": "dense", "image_size": [3, 4], "noise_sigma_255": 5.0}


def test_image_size_is_one_int_or_two_positive_ones():
    assert as_image_size("x", 7) == (7, 7) and as_image_size("x", [3, 4]) == (3, 4)
    for bad in [(3, 0), (1, 2, 3), 0]:
        with pytest.raises(ValueError, match=r"x needs image_size as \(H, W\) positive integers or one int"):
            as_image_size("x", bad)

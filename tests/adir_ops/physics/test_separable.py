"""Separable operators A x = R x C^T: MATLAB's bicubic matrices, the reflect-padded box, and A A^T's eigenbasis."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from adir_ops.physics.operators import OPERATORS, make_operator
from adir_ops.physics.separable import Separable, box_matrix, imresize_matrix

SEPARABLE = [name for name in OPERATORS if isinstance(make_operator(name, image_size=(16, 16)), Separable)]


def _rand(shape, seed):
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 2 - 1


class Factors(Separable, nn.Module):
    """A x = R x C^T for two given matrices: the mixin alone, without an operator around it."""

    def __init__(self, rows, cols):
        super().__init__()
        self.register_buffer("rows", rows)
        self.register_buffer("cols", cols)

    def _gram_factors(self):
        return self.rows, self.cols


def test_imresize_matrix_rows_sum_to_one():
    for n, scale in [(17, 1 / 8), (23, 1 / 4), (3, 4.0)]:
        m = imresize_matrix(n, int(np.ceil(n * scale)), scale)
        assert torch.allclose(m.sum(dim=1), torch.ones(m.shape[0], dtype=torch.float64))


def test_imresize_matrix_at_scale_one_is_the_identity():
    """Keys' cubic is 1 at 0 and 0 at every other integer: resizing to the same grid changes nothing."""
    assert torch.allclose(imresize_matrix(9, 9, 1.0), torch.eye(9, dtype=torch.float64), rtol=0, atol=1e-15)


@pytest.mark.parametrize("length, kernel_size", [(7, 5), (12, 3), (5, 5)])
def test_box_matrix_is_the_1d_box_filter_with_torchs_reflect_padding(length, kernel_size):
    x = _rand((4, 1, length), 1)
    by_conv = F.conv1d(
        F.pad(x, (kernel_size // 2, kernel_size // 2), mode="reflect"),
        torch.full((1, 1, kernel_size), 1.0 / kernel_size, dtype=torch.float64),
    )
    by_matrix = x @ box_matrix(length, kernel_size).T
    assert torch.allclose(by_matrix, by_conv, rtol=0, atol=1e-14)
    assert torch.allclose(box_matrix(length, kernel_size, 0.5), box_matrix(length, kernel_size) * kernel_size * 0.5)


def test_the_2d_box_is_the_product_of_two_1d_boxes():
    x = _rand((2, 3, 9, 14), 2)
    blurred = F.avg_pool2d(F.pad(x, (2, 2, 2, 2), mode="reflect"), 5, stride=1)
    assert torch.allclose(box_matrix(9, 5) @ x @ box_matrix(14, 5).T, blurred, rtol=0, atol=1e-14)


@pytest.mark.parametrize("name", SEPARABLE)
@pytest.mark.parametrize("size", [(17, 23), (16, 16)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_every_separable_operator_is_r_x_ct_and_its_transpose_is_the_adjoint(name, size):
    op = make_operator(name, image_size=size)
    rows, cols = op._gram_factors()
    x = _rand((2, 3, *size), 3)
    y = op.A(x)
    assert torch.allclose(y, rows @ x @ cols.T, rtol=0, atol=1e-12)
    v = _rand(y.shape, 4)
    assert torch.allclose(op.A_adjoint(v), rows.T @ v @ cols, rtol=0, atol=1e-12)
    lhs, rhs = (y * v).sum().item(), (x * op.A_adjoint(v)).sum().item()
    assert lhs == pytest.approx(rhs, rel=1e-12, abs=1e-12)


@pytest.mark.parametrize("name", SEPARABLE)
def test_the_eigenbasis_reproduces_the_operators_gram(name):
    op = make_operator(name, image_size=(17, 23))
    to_basis, from_basis, d = op._gram_spectrum()
    r = _rand((2, 3, *op.measurement_shape(3)[1:]), 5)
    assert (d >= 0).all() and d.dtype == torch.float64
    assert torch.allclose(from_basis(to_basis(r)), r, rtol=0, atol=1e-12)  # an orthogonal basis
    assert torch.allclose(from_basis(d * to_basis(r)), op.A(op.A_adjoint(r)), rtol=0, atol=1e-12)


def test_the_spectrum_is_computed_on_first_use_only_and_once(monkeypatch):
    calls = []
    eigh = torch.linalg.eigh
    monkeypatch.setattr(torch.linalg, "eigh", lambda m: calls.append(m.shape) or eigh(m))
    rows, cols = _rand((3, 7), 6), _rand((4, 5), 7)
    factors = Factors(rows, cols)
    assert calls == []  # building it (or only applying A) costs no eigendecomposition
    to_basis, from_basis, d = factors._gram_spectrum()
    factors._gram_spectrum()
    assert calls == [(3, 3), (4, 4)]  # R R^T and C C^T, never the (12, 12) Gram, and only once
    r = _rand((1, 2, 3, 4), 8)
    gram = rows @ rows.T @ r @ cols @ cols.T  # A A^T r = R R^T r C C^T
    assert torch.allclose(from_basis(d * to_basis(r)), gram, rtol=0, atol=1e-12)
    assert sorted(d.flatten().tolist()) == pytest.approx(
        sorted(torch.linalg.eigvalsh(torch.kron(rows @ rows.T, cols @ cols.T)).clamp_min(0).tolist()), abs=1e-12
    )

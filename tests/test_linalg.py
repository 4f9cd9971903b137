"""Tests of the private linear-algebra layer."""

from __future__ import annotations

import torch

from nninv.linalg import factor, gauss_newton_onto, gauss_newton_solve
from tolerances import EPS

TOL = EPS[torch.float64]["close"]


def rng():
    return torch.Generator().manual_seed(0)


def test_factor_rank_and_pinv():
    A = torch.randn(6, 3, dtype=torch.float64, generator=rng()) @ torch.randn(
        3, 9, dtype=torch.float64, generator=rng()
    )
    f = factor(A)
    assert (f.rank, f.nullity) == (3, 6)
    c = torch.randn(4, 6, dtype=torch.float64, generator=rng())
    assert torch.allclose(f.pinv(c), c @ torch.linalg.pinv(A).T, atol=TOL)
    N = f.null_basis()
    assert N.shape == (9, 6)
    assert torch.allclose(N.T @ N, torch.eye(6, dtype=torch.float64), atol=TOL)
    assert float((A @ N).abs().max()) < TOL
    assert f.cond == float("inf")


def test_pinv_T_and_scaled_U_match_numpy_pinv_in_both_dtypes():
    # full row rank (the seed's 10 x 784 shape, small): pinv(A) c as one product
    A = torch.randn(5, 40, dtype=torch.float64, generator=rng())
    f = factor(A)
    c = torch.randn(7, 5, dtype=torch.float64, generator=rng())
    P = torch.linalg.pinv(A).T
    assert torch.allclose(f.pinv_T(), P, atol=TOL)
    assert torch.allclose(f.reduce(c)[0], c @ f.scaled_U(), atol=TOL)
    assert torch.allclose(f.reduce(c)[0] @ f.Vh, c @ P, atol=TOL)
    # a float32 copy derives its matrices from the float64 factor, then rounds once
    f32 = f.to(torch.float32)
    assert f32.pinv_T().dtype == torch.float32
    assert torch.equal(f32.pinv_T(), f.pinv_T().to(torch.float32))
    assert torch.equal(f32.scaled_U(), f.scaled_U().to(torch.float32))


def test_reduce_reports_part_outside_range():
    A = torch.tensor([[1.0, 0.0], [1.0, 0.0]], dtype=torch.float64)
    f = factor(A)
    d, outside = f.reduce(torch.tensor([[1.0, 1.0], [1.0, 3.0]], dtype=torch.float64))
    assert float(outside[0]) < TOL
    assert abs(float(outside[1]) - 2**0.5) < TOL


def test_gauss_newton_onto_closed_form():
    # B = I: B sigmoid(u) = d has the unique solution u = logit(d)
    B = torch.eye(3, dtype=torch.float64)
    d = torch.tensor([[0.2, 0.5, 0.9], [0.01, 0.99, 0.3]], dtype=torch.float64)
    u, err, it = gauss_newton_onto(
        B, d, torch.sigmoid, torch.zeros(2, 3, dtype=torch.float64), tol=1e-13
    )
    assert torch.allclose(u, torch.logit(d), atol=1e-10)
    assert float(err.max()) <= 1e-13 and it > 0


def test_gauss_newton_solve_closed_form():
    def F(x):
        return torch.tanh(x[:, :2]) + x[:, 2:] ** 3

    target = torch.tensor([[0.3, -0.4]], dtype=torch.float64)
    x0 = torch.zeros(1, 4, dtype=torch.float64)
    x, err, _ = gauss_newton_solve(F, x0, target, tol=1e-12)
    assert float(err.max()) <= 1e-12
    # from the origin the minimum-norm steps stay in the row space: x[2:] stays 0
    assert torch.allclose(x[0, :2], torch.atanh(target[0]), atol=1e-10)

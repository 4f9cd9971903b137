"""The one projection onto ``{x : f(x) = y}`` within a box (nninv.methods.projection)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from nninv import ClassTarget, NNInvError
from nninv.methods.projection import Projection, project
from nninv.model.chain import analyse
from nninv.priors import GaussianPrior
from tolerances import EPS

TOL = EPS[torch.float64]


class _TanhCube(nn.Module):
    """``f(x) = tanh(x_1:2) + x_3:4 ** 3``: from the origin the cube's derivative is 0."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x[:, :2]) + x[:, 2:] ** 3


def test_against_a_closed_form_through_nonlinear_maps():
    t = torch.tensor([[0.3, -0.4]], dtype=torch.float64)
    p = project(_TanhCube(), t, torch.zeros(1, 4, dtype=torch.float64), tol=TOL["residual"])
    assert isinstance(p, Projection)
    # minimum-norm steps from the origin stay where the Jacobian has rank: x_3:4 stays 0
    assert torch.allclose(p.x[0, :2], torch.atanh(t[0]), atol=TOL["close"])
    assert float(p.x[0, 2:].abs().max()) == 0.0
    assert bool(p.converged.all()) and float(p.residual.max()) <= TOL["residual"]
    assert p.reasons == (None,) and p.iterations > 0
    assert float(p.start_residual[0]) == pytest.approx(0.4)


def test_one_step_is_the_closest_point_of_the_affine_set_in_the_metric(seed_model, gen):
    """``sigmoid(W x + b) = y`` is ``W x = logit(y) - b``: the projection of ``x0`` in the
    metric ``S`` is ``x0 - S W^T (W S W^T)^-1 (W x0 + b - logit(y))``."""
    f = seed_model(n=8, m=3)
    W, b = f[0].weight.detach(), f[0].bias.detach()
    y = f(torch.rand(4, 8, generator=gen, dtype=torch.float64)).detach()
    x0 = torch.rand(4, 8, generator=gen, dtype=torch.float64)
    X = torch.rand(200, 8, generator=gen, dtype=torch.float64)
    prior = GaussianPrior.fit(X)
    S = prior.covariance.to(torch.float64)
    for metric, M in ((None, torch.eye(8, dtype=torch.float64)), (prior, S)):
        p = project(f, y, x0, tol=TOL["residual"], metric=metric)
        r = x0 @ W.T + b - torch.logit(y)
        want = x0 - (torch.linalg.solve(W @ M @ W.T, r.T).T @ W) @ M
        assert torch.allclose(p.x, want, atol=TOL["close"])
        assert bool(p.converged.all())


def test_bounds_hold_and_a_chain_saves_the_analysis(seed_model, gen):
    f = seed_model(n=8, m=3)
    y = f(torch.rand(5, 8, generator=gen, dtype=torch.float64)).detach()
    x0 = 0.2 + 0.6 * torch.rand(5, 8, generator=gen, dtype=torch.float64)
    x0[0, 0] = 1.5  # outside: clipped first
    lo, hi = torch.zeros(8, dtype=torch.float64), torch.ones(8, dtype=torch.float64)
    p = project(f, y, x0, tol=TOL["residual"], bounds=(0.0, 1.0))
    assert bool(((p.x >= 0) & (p.x <= 1)).all()) and bool(p.converged.all())
    assert bool((p.violation <= p.goal).all())
    q = project(analyse(f, (8,)), y, x0, tol=TOL["residual"], bounds=(lo, hi))
    assert torch.equal(p.x, q.x)


def test_class_target_lands_in_the_class(gen):
    with torch.random.fork_rng():
        torch.manual_seed(0)
        f = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3)).double()
    x0 = torch.rand(3, 6, generator=gen, dtype=torch.float64)
    want = (f(x0).argmax(1) + 1) % 3
    p = project(f, ClassTarget(want), x0, tol=TOL["residual"])
    assert bool(p.converged.all()), p.reasons
    assert torch.equal(f(p.x).argmax(1), want)


def test_an_unreachable_target_is_reported_with_its_reason(seed_model, gen):
    f = seed_model(n=8, m=3)
    y = f(torch.rand(2, 8, generator=gen, dtype=torch.float64)).detach()
    y[1] = torch.tensor([0.999999, 1e-6, 0.999999], dtype=torch.float64)  # far outside [0, 1]^8
    x0 = torch.full((2, 8), 0.5, dtype=torch.float64)
    p = project(f, y, x0, tol=TOL["residual"], bounds=(0.0, 1.0))
    assert bool(p.converged[0]) and not bool(p.converged[1])
    assert p.reasons[0] is None
    assert p.reasons[1] is not None and "within the bounds" in p.reasons[1]
    assert float(p.residual[1]) > TOL["residual"]


def test_shapes_are_checked(seed_model, gen):
    f = seed_model(n=8, m=3)
    y = f(torch.rand(2, 8, generator=gen, dtype=torch.float64)).detach()
    with pytest.raises(NNInvError, match="starting inputs have shape"):
        project(analyse(f, (8,)), y, torch.zeros(2, 7, dtype=torch.float64), tol=1e-8)
    with pytest.raises(NNInvError, match="3 starting inputs for 2 targets"):
        project(f, y, torch.zeros(3, 8, dtype=torch.float64), tol=1e-8)
    with pytest.raises(NNInvError, match="do not broadcast"):
        project(f, y, torch.zeros(2, 8, dtype=torch.float64), tol=1e-8, bounds=(torch.zeros(3), 1))

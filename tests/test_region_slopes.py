"""The inner polytopes' relaxation chosen for coverage (nninv.region._slopes) and the budget.

The optimised bounds must stay above ``G y - g`` at every sampled point of each
box (an inner polytope built from them is then inside the region), hold at least
the points plain CROWN holds, and a bound shifted down by a little must be
caught by the same sampler.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import nninv
from nninv import OutputSet
from nninv.bounds import layer_bounds, linear_bound
from nninv.region import _slopes
from nninv.region._net import as_plnet

#: float64 round-off allowed in the comparisons
EPS = {torch.float64: 1e-9}


def _model(seed: int, slope: float) -> nn.Module:
    torch.manual_seed(seed)
    acts = [nn.LeakyReLU(slope) if slope else nn.ReLU() for _ in range(2)]
    net = nn.Sequential(nn.Linear(3, 12), acts[0], nn.Linear(12, 10), acts[1], nn.Linear(10, 3))
    for p in net.parameters():
        nn.init.normal_(p)
    return net.double()


def _boxes(seed: int, n: int = 6) -> tuple[np.ndarray, np.ndarray]:
    """Boxes of the unit cube, as a batch."""
    rng = np.random.default_rng(seed)
    lo = rng.random((n, 3)) * 0.6
    return lo, lo + 0.2 + 0.2 * rng.random((n, 3))


def _setup(seed: int, slope: float):
    model = _model(seed, slope)
    net = as_plnet(model, [[-1, 1]] * 3)
    G = np.array([[-1.0, 1.0, 0.0], [-1.0, 0.0, 1.0]])  # class 0 wins
    g = np.zeros(2)
    lo, hi = _boxes(seed)
    rng = np.random.default_rng(100 + seed)
    U = [lo[j] + (hi[j] - lo[j]) * rng.random((4000, 3)) for j in range(len(lo))]
    F = [net.forward_u(u) @ G.T - g for u in U]  # G y - g at the samples
    pts = [u[np.all(f <= 0, axis=1)] for u, f in zip(U, F)]
    m = max(1, max(len(p) for p in pts))
    P = np.zeros((len(pts), m, 3))
    M = np.zeros((len(pts), m), dtype=bool)
    for j, p in enumerate(pts):
        P[j, : len(p)], M[j, : len(p)] = p, True
    bounds = layer_bounds(net.layers, torch.from_numpy(lo), torch.from_numpy(hi))
    return net, G, g, U, F, pts, torch.from_numpy(P), torch.from_numpy(M), bounds


def _covering(net, G, g, P, M, bounds, steps=None):
    return _slopes.covering_bounds(
        net.layers, bounds, torch.from_numpy(G), torch.from_numpy(g), P, M, steps=steps
    )


def _worst(A, a0, U, F) -> float:
    """The largest amount by which ``A u + a0`` falls below ``G y - g`` (must be <= 0)."""
    return max(float((f - (u @ A[j].T + a0[j])).max()) for j, (u, f) in enumerate(zip(U, F)))


def _held(A, a0, pts) -> list[int]:
    return [int(np.all(p @ A[j].T + a0[j] <= 0, axis=1).sum()) for j, p in enumerate(pts)]


CASES = [(s, a) for s in range(6) for a in (0.0, 0.1)]


@pytest.mark.parametrize(("seed", "slope"), CASES)
def test_optimised_bounds_are_sound_and_hold_more(seed, slope):
    net, G, g, U, F, pts, P, M, bounds = _setup(seed, slope)
    A, a0 = _covering(net, G, g, P, M, bounds)
    assert _worst(A, a0, U, F) <= EPS[torch.float64]
    A0, b0 = _covering(net, G, g, P, M, bounds, steps=0)
    At, at = linear_bound(net.layers, 2, torch.from_numpy(G), bounds, upper=True)
    assert np.allclose(A0, At.numpy(), rtol=0, atol=EPS[torch.float64])
    assert np.allclose(b0, at.numpy() - g, rtol=0, atol=EPS[torch.float64])
    assert all(a >= b for a, b in zip(_held(A, a0, pts), _held(A0, b0, pts)))


def test_optimisation_helps_somewhere():
    gained = 0
    for seed, slope in CASES:
        net, G, g, _, _, pts, P, M, bounds = _setup(seed, slope)
        A, a0 = _covering(net, G, g, P, M, bounds)
        A0, b0 = _covering(net, G, g, P, M, bounds, steps=0)
        gained += sum(a - b for a, b in zip(_held(A, a0, pts), _held(A0, b0, pts)))
    assert gained > 0


def test_mutation_a_bound_lowered_a_little_is_caught(monkeypatch):
    """Every bound lowered by 0.05 (unsound) is seen below ``G y - g`` somewhere."""
    real = _slopes.linear_bound

    def low(*args, **kwargs):  # type: ignore[no-untyped-def]
        A, a0 = real(*args, **kwargs)
        return A, a0 - 0.05

    monkeypatch.setattr(_slopes, "linear_bound", low)
    worst = []
    for seed, slope in CASES[:4]:
        net, G, g, U, F, _, P, M, bounds = _setup(seed, slope)
        worst.append(_worst(*_covering(net, G, g, P, M, bounds), U, F))
    assert max(worst) > EPS[torch.float64], "an unsound bound went unnoticed by the sampler"


@pytest.mark.parametrize("budget", [3, 6])
def test_inner_keeps_the_polytope_budget_and_stays_inside(budget):
    model = _model(2, 0.1)
    out_set = OutputSet.from_class(0, 3)
    box = [[-1, 1]] * 3
    r = nninv.region(model, out_set, box, "under", target=0.99, max_polytopes=budget)
    assert 0 < len(r.polytopes) <= budget
    xs = r.sample(5000, seed=3)
    with torch.no_grad():
        assert out_set.contains(model(xs)).all()

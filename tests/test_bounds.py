"""nninv.bounds: CROWN and alpha-CROWN bounds checked against dense sampling.

Random ReLU and leaky-ReLU networks in float64 on random boxes: the linear
bounds (lower and upper), the concretized bounds and the layer bounds must hold
at every sampled point and every corner; alpha-CROWN is never looser than
CROWN; and a slightly unsound relaxation is caught by the same sampler.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from nninv import bounds as bounds_mod
from nninv.bounds import Layers, alpha_crown, crown, layer_bounds, linear_bound

F64 = torch.float64
#: slack for float64 round-off in the comparisons below
EPS = {torch.float64: 1e-9}
SLOPES = [0.0, 0.1]


def _net(seed: int, d: int, widths: tuple[int, ...], slope: float) -> Layers:
    g = torch.Generator().manual_seed(seed)
    sizes = [d, *widths, 3]
    Ws = [torch.randn(m, n, generator=g, dtype=F64) / n**0.5 for n, m in zip(sizes, sizes[1:])]
    bs = [0.3 * torch.randn(m, generator=g, dtype=F64) for m in sizes[1:]]
    return Layers(Ws, bs, [slope] * len(widths))


def _box(seed: int, d: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1000 + seed)
    c = torch.randn(d, generator=g, dtype=F64)
    r = 0.2 + torch.rand(d, generator=g, dtype=F64)
    return c - r, c + r


def _samples(lo: torch.Tensor, hi: torch.Tensor, n: int = 20_000) -> torch.Tensor:
    g = torch.Generator().manual_seed(7)
    x = lo + (hi - lo) * torch.rand(n, lo.numel(), generator=g, dtype=F64)
    corners = torch.tensor(list(itertools.product([0.0, 1.0], repeat=lo.numel())), dtype=F64)
    return torch.cat([x, lo + (hi - lo) * corners])


def _pre(net: Layers, x: torch.Tensor) -> list[torch.Tensor]:
    """Every hidden pre-activation at rows ``x``."""
    out, h = [], x
    for W, b, a in zip(net.Ws[:-1], net.bs[:-1], net.slopes):
        z = h @ W.T + b
        out.append(z)
        h = torch.where(z >= 0, z, a * z)
    return out


def _worst_violation(net: Layers, lo, hi, C) -> float:
    """How far the linear bounds of ``C y`` (lower and upper) miss the sampled truth."""
    x = _samples(lo, hi)
    y = net.forward(x) @ C.T
    bnds = layer_bounds(net, lo, hi)
    k = len(net.slopes)
    A, a0 = linear_bound(net, k, C, bnds)
    B, b0 = linear_bound(net, k, C, bnds, upper=True)
    below = (x @ A.T + a0) - y  # must be <= 0
    above = y - (x @ B.T + b0)  # must be <= 0
    return float(torch.maximum(below.max(), above.max()))


CASES = [(s, d, w) for s, (d, w) in enumerate([(2, (8, 8)), (3, (10, 6)), (4, (12, 12, 8))] * 4)]


@pytest.mark.parametrize("slope", SLOPES)
@pytest.mark.parametrize(("seed", "d", "widths"), CASES)
def test_linear_bounds_hold_on_dense_samples(seed, d, widths, slope):
    net = _net(seed, d, widths, slope)
    lo, hi = _box(seed, d)
    C = torch.randn(4, 3, generator=torch.Generator().manual_seed(seed), dtype=F64)
    assert _worst_violation(net, lo, hi, C) <= EPS[F64]
    # the concretized bound is the minimum of the lower linear bound over the box
    bnds = layer_bounds(net, lo, hi)
    lb, corner = crown(net, len(net.slopes), C, bnds, lo, hi, corner=True)
    A, a0 = linear_bound(net, len(net.slopes), C, bnds)
    assert torch.allclose(lb, (A * corner).sum(-1) + a0, rtol=0, atol=EPS[F64])
    assert bool((lb <= (net.forward(_samples(lo, hi)) @ C.T).min(0).values + EPS[F64]).all())


@pytest.mark.parametrize("slope", SLOPES)
@pytest.mark.parametrize(("seed", "d", "widths"), CASES[:6])
def test_layer_bounds_hold_and_alpha_only_tightens(seed, d, widths, slope):
    net = _net(seed, d, widths, slope)
    lo, hi = _box(seed, d)
    zs = _pre(net, _samples(lo, hi))
    plain = layer_bounds(net, lo, hi)
    tight = layer_bounds(net, lo, hi, alpha_steps=10, start=plain)
    for z, (l, u), (la, ua) in zip(zs, plain, tight):
        assert bool((z >= l - EPS[F64]).all() and (z <= u + EPS[F64]).all())
        assert bool((z >= la - EPS[F64]).all() and (z <= ua + EPS[F64]).all())
        assert bool((la >= l).all() and (ua <= u).all())


@pytest.mark.parametrize("slope", SLOPES)
def test_alpha_crown_never_looser_than_crown_and_sound(slope):
    better = 0
    for seed, d, widths in CASES:
        net = _net(seed, d, widths, slope)
        lo, hi = _box(seed, d)
        C = torch.randn(5, 3, generator=torch.Generator().manual_seed(seed), dtype=F64)
        bnds = layer_bounds(net, lo, hi)
        k = len(net.slopes)
        plain = crown(net, k, C, bnds, lo, hi)
        opt = alpha_crown(net, k, C, bnds, lo, hi, steps=20)
        truth = (net.forward(_samples(lo, hi)) @ C.T).min(0).values
        assert bool((opt >= plain).all())
        assert bool((opt <= truth + EPS[F64]).all())
        better += int((opt > plain + 1e-6).any())
    assert better, "alpha-CROWN should improve some bound on these nets"


def test_batched_boxes_match_one_by_one():
    net = _net(3, 3, (10, 6), 0.1)
    boxes = [_box(s, 3) for s in range(5)]
    lo, hi = torch.stack([b[0] for b in boxes]), torch.stack([b[1] for b in boxes])
    C = torch.randn(4, 3, generator=torch.Generator().manual_seed(0), dtype=F64)
    batch = layer_bounds(net, lo, hi)
    A, a0 = linear_bound(net, 2, C, batch, upper=True)
    for j, (l1, h1) in enumerate(boxes):
        one = layer_bounds(net, l1, h1)
        A1, a1 = linear_bound(net, 2, C, one, upper=True)
        assert torch.allclose(A[j], A1, rtol=0, atol=EPS[F64])
        assert torch.allclose(a0[j], a1, rtol=0, atol=EPS[F64])


def test_mutation_a_slightly_low_upper_relaxation_is_caught(monkeypatch):
    """The upper chord's intercept cut by 5% (an unsound relaxation by a small amount)
    is caught by the sampler on some of these nets: the checks above can fail."""
    real = bounds_mod._relax

    def low(l, u, a):  # type: ignore[no-untyped-def]
        s_up, t_up, s_lo, unstable = real(l, u, a)
        return s_up, 0.95 * t_up, s_lo, unstable

    monkeypatch.setattr(bounds_mod, "_relax", low)
    worst = []
    for seed, d, widths in CASES:
        net = _net(seed, d, widths, 0.0)
        lo, hi = _box(seed, d)
        C = torch.randn(4, 3, generator=torch.Generator().manual_seed(seed), dtype=F64)
        worst.append(_worst_violation(net, lo, hi, C))
    assert max(worst) > EPS[F64], "an unsound relaxation went unnoticed by the sampler"


def test_the_region_network_converts():
    from nninv.region._net import as_plnet

    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(3, 6), torch.nn.LeakyReLU(0.2), torch.nn.Linear(6, 2)
    ).double()
    net = as_plnet(model, [[-1, 1], [0, 2], [-0.5, 0.5]])
    u = np.random.default_rng(0).random((50, 3))
    got = net.layers.forward(torch.from_numpy(u)).numpy()
    assert np.allclose(got, net.forward_u(u), rtol=0, atol=EPS[F64])
    assert net.layers.slopes == [0.2]

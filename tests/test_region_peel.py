"""Inner approximations carved from the exact region (nninv.region._peel)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

import nninv
from nninv import OutputSet
from nninv.region._exact import enumerate_region
from nninv.region._net import as_plnet
from nninv.region._peel import MAX_COMPLEMENT_PARTS, complement_parts, peel


def _net(d: int, seed: int, leaky: bool = False) -> nn.Module:
    torch.manual_seed(seed)
    act = nn.LeakyReLU(0.1) if leaky else nn.ReLU()
    net = nn.Sequential(nn.Linear(d, 10), act, nn.Linear(10, 8), act, nn.Linear(8, 4))
    for p in net.parameters():
        nn.init.normal_(p)
    return net.double()


def _box(d: int) -> list[list[float]]:
    return [[-1.0, 1.0 + 0.25 * i] for i in range(d)]


def _majority(model: nn.Module, box) -> int:
    """The class that wins on most of the box (a region with holes in it)."""
    b = np.asarray(box)
    x = b[:, 0] + np.random.default_rng(5).random((4000, len(b))) * (b[:, 1] - b[:, 0])
    with torch.no_grad():
        k = model(torch.from_numpy(x)).argmax(1).numpy()
    return int(np.bincount(k).argmax())


def _outside(model: nn.Module, out_set: OutputSet, x: torch.Tensor) -> int:
    with torch.no_grad():
        return int((~out_set.contains(model(x))).sum())


@pytest.mark.parametrize(
    ("d", "seed", "leaky"),
    [(2, 0, False), (2, 4, True), (3, 1, False), (3, 2, True), (4, 3, False)],
)
def test_carved_polytopes_lie_in_the_region_and_cover_the_target(d, seed, leaky):
    model, box = _net(d, seed, leaky), _box(d)
    out_set = OutputSet.from_class(_majority(model, box), 4)
    r = nninv.region(model, out_set, box, "under", target=0.9)
    assert r.info["strategy"] == "peel"
    assert r.certified and r.info["rechecked"] == "exact"
    assert r.coverage >= 0.9
    assert _outside(model, out_set, r.sample(20_000, seed=1)) == 0
    # Disjoint polytopes: the volumes add up to the union's volume.
    b = np.asarray(box)
    x = b[:, 0] + np.random.default_rng(2).random((200_000, d)) * (b[:, 1] - b[:, 0])
    p = r.contains(torch.from_numpy(x)).double().mean().item()
    se = math.sqrt(p * (1 - p) / len(x))
    assert abs(r.share - p) <= 4 * se


def test_fewer_polytopes_than_boxes_for_the_same_target():
    model, box = _net(3, 1), _box(3)
    out_set = OutputSet.from_class(_majority(model, box), 4)
    carved = nninv.region(model, out_set, box, "under", target=0.9)
    boxes = nninv.region(model, out_set, box, "under", target=0.9, exact_budget=0)
    assert carved.info["strategy"] == "peel" and boxes.info["strategy"] == "bounds"
    assert len(carved.polytopes) < len(boxes.polytopes)


def test_a_missing_complement_piece_is_caught_by_the_sample_check():
    """The check above can fail: carve knowing only every other complement piece."""
    model, box = _net(2, 0), _box(2)
    out_set = OutputSet.from_class(_majority(model, box), 4)
    net = as_plnet(model, box)
    parts = [(p.A.numpy(), p.b.numpy()) for p in out_set.parts]
    inside = enumerate_region(net, parts, max_regions=10**6, time_limit=60)
    comp = enumerate_region(net, complement_parts(parts), max_regions=10**6, time_limit=60)
    vol = sum(p.volume for p in inside.pieces)
    U = np.random.default_rng(0).random((20_000, 2))
    Y = net.forward_u(U)
    X = U[np.all(Y @ parts[0][0].T <= parts[0][1], axis=1)]
    kept = comp.pieces[::2]
    rng = np.random.default_rng(1)
    for pieces, bad in ((comp.pieces, False), (kept, True)):
        raw, _ = peel(pieces, vol, X, target=0.99, max_polytopes=50,
                      time_limit=60, seed=0)  # fmt: skip
        pts = []
        for A, b, _, V, _ in raw:  # uniform points of each polytope, by rejection
            lo, hi = V.min(axis=0), V.max(axis=0)
            Z = lo + rng.random((4000, 2)) * (hi - lo)
            pts.append(Z[np.all(Z @ A.T <= b, axis=1)])
        P = np.vstack(pts)
        out = ~np.all(net.forward_u(P) @ parts[0][0].T <= parts[0][1] + 1e-9, axis=1)
        assert out.any() == bad


def test_complement_of_a_union_is_the_product_of_rows():
    G1, g1 = np.array([[1.0, -1.0], [0.0, 1.0]]), np.array([0.0, 2.0])
    G2, g2 = np.array([[-1.0, 0.0]]), np.array([1.0])
    comp = complement_parts([(G1, g1), (G2, g2)])
    assert comp is not None and len(comp) == 2
    rng = np.random.default_rng(0)
    Y = rng.normal(0, 3, (5000, 2))
    in_union = np.all(Y @ G1.T <= g1, axis=1) | np.all(Y @ G2.T <= g2, axis=1)
    in_comp = np.zeros(len(Y), dtype=bool)
    for G, g in comp:
        in_comp |= np.all(Y @ G.T <= g, axis=1)
    assert np.array_equal(in_comp, ~in_union)
    assert complement_parts([(np.zeros((0, 2)), np.zeros(0))]) is None
    many = [(np.eye(2), np.ones(2))] * int(math.log2(MAX_COMPLEMENT_PARTS) + 1)
    assert complement_parts(many) is None


def test_a_union_output_set_falls_back_to_bounds_and_stays_inside():
    model, box = _net(2, 4), _box(2)
    a, b = _majority(model, box), (_majority(model, box) + 1) % 4
    out_set = OutputSet.from_class(a, 4) | OutputSet.from_class(b, 4)
    r = nninv.region(model, out_set, box, "under", target=0.8)
    assert r.info["strategy"] == "bounds"
    assert _outside(model, out_set, r.sample(5000, seed=1)) == 0


def test_an_empty_region_is_covered_with_no_polytope():
    model, box = _net(2, 0), _box(2)
    nothing = OutputSet.linear([[-1.0, 0.0, 0.0, 0.0]], [-1e6])  # y0 >= 10^6
    r = nninv.region(model, nothing, box, "under")
    assert r.polytopes == () and r.region_volume == 0.0
    assert r.certified and r.coverage == 1.0

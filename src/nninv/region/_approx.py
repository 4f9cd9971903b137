"""Inner and outer approximations of a decision region by input splitting.

The unit cube is split into boxes (a priority queue, the box whose polytope
misses the most sampled region points first, split across the axis that gains
most). On each box ``S``, CROWN bounds each output constraint ``G_r y - g_r``
by an affine function of the input (:func:`nninv.bounds.linear_bound`):

- under: with ``upper_r(u) >= G_r y(u) - g_r`` on ``S``, the polytope
  ``{u in S : upper_r(u) <= 0 for every row r}`` lies inside the region *by
  construction*: ``G_r y(u) - g_r <= upper_r(u) <= 0``;
- over: with ``lower_r(u) <= G_r y(u) - g_r`` on ``S``, the polytope
  ``{u in S : lower_r(u) <= 0 for every r}`` contains every region point
  of ``S``, since ``lower_r(u) <= G_r y(u) - g_r <= 0`` there.

The polytopes of different boxes are disjoint (boxes meet only on faces), so
their exact volumes (qhull) add up. Splitting stops when the sampled coverage
reaches the target, the polytope budget is spent, or the time limit passes.
This is the scheme of PREMAP (Zhang et al., 2024) with exact volumes.
"""

from __future__ import annotations

__all__ = ["Leaf", "approximate"]

import heapq
import itertools
import time
from dataclasses import dataclass

import numpy as np
import torch

from ..bounds import layer_bounds, linear_bound
from ._geom import MAX_EXACT_DIM, TOL, estimate_volume, vertices, volume
from ._net import PLNet


@dataclass
class Leaf:
    lo: np.ndarray
    hi: np.ndarray
    idx: np.ndarray  # indices of the samples inside the box
    polys: list[tuple[np.ndarray, np.ndarray, int]]  # (A, b, part) rows beyond the box
    hit: int  # samples inside the polytopes
    region: int  # region samples in the box
    vol: float  # exact unit-cube volume of the polytopes (0 when not computed)


def _polys(
    net: PLNet,
    parts: list[tuple[np.ndarray, np.ndarray]],
    lo: np.ndarray,
    hi: np.ndarray,
    outer: bool,
) -> list[list[tuple[np.ndarray, np.ndarray, int]]]:
    """The polytopes of boxes ``lo[j] <= u <= hi[j]`` (shape ``(B, d)``), one batch.

    Per box, ``(A, b, part)`` for every part whose polytope is not empty on the box.
    """
    layers = net.layers
    bounds = layer_bounds(layers, torch.from_numpy(lo), torch.from_numpy(hi))
    out: list[list[tuple[np.ndarray, np.ndarray, int]]] = [[] for _ in range(len(lo))]
    for i, (G, g) in enumerate(parts):
        if G.shape[0] == 0:
            for polys in out:
                polys.append((np.zeros((0, net.d)), np.zeros(0), i))
            continue
        At, at0 = linear_bound(
            layers, len(layers.slopes), torch.from_numpy(G), bounds, upper=not outer
        )
        A, a0 = At.numpy(), at0.numpy() - g
        # {A u + a0 <= 0}: empty on the box if some row is positive everywhere.
        mins = a0 + np.minimum(A * lo[:, None], A * hi[:, None]).sum(axis=2)
        for j in np.flatnonzero(~np.any(mins > 0, axis=1)):
            out[j].append((A[j], -a0[j], i))
    return out


def _inside(U: np.ndarray, polys: list[tuple[np.ndarray, np.ndarray, int]]) -> np.ndarray:
    hit = np.zeros(len(U), dtype=bool)
    for A, b, _ in polys:
        hit |= np.all(U @ A.T <= b, axis=1) if A.shape[0] else True
    return hit


def _boxed(A: np.ndarray, b: np.ndarray, lo: np.ndarray, hi: np.ndarray):
    d = lo.size
    return (
        np.vstack([A, np.eye(d), -np.eye(d)]),
        np.concatenate([b, hi, -lo]),
    )


def _leaf(polys, lo, hi, idx, U, R, outer, exact_vol) -> Leaf:
    if not outer and len(polys) > 1:
        # Inner: one polytope per box, the part that covers most samples.
        counts = [int(_inside(U[idx], [p]).sum()) for p in polys]
        polys = [polys[int(np.argmax(counts))]]
    hit = _inside(U[idx], polys)
    vol = 0.0
    if exact_vol:
        for A, b, _ in polys:
            A2, b2 = _boxed(A, b, lo, hi)
            pts = U[idx][hit]
            V = vertices(A2, b2, pts.mean(axis=0) if len(pts) else None)
            vol += volume(V) if V is not None else 0.0
    return Leaf(lo, hi, idx, polys, int(hit.sum()), int(R[idx].sum()), vol)


def _score(leaf: Leaf, outer: bool) -> tuple[float, float]:
    """Inner: region samples the polytope misses, then the box volume it leaves out;
    outer: non-region samples it holds, then its volume."""
    box = float(np.prod(leaf.hi - leaf.lo))
    if outer:
        return float(leaf.hit - leaf.region), leaf.vol
    return float(leaf.region - leaf.hit), box - leaf.vol


def _neg(t: tuple[float, float]) -> tuple[float, float]:
    return -t[0], -t[1]


def approximate(
    net: PLNet,
    parts: list[tuple[np.ndarray, np.ndarray]],
    *,
    outer: bool,
    target: float,
    max_polytopes: int,
    time_limit: float,
    n_samples: int,
    seed: int,
    region_volume: float | None = None,
) -> tuple[list[tuple[np.ndarray, np.ndarray, int, np.ndarray, float]], dict]:
    """Polytopes ``(A, b, part, V, volume)`` in unit-cube coordinates, and statistics.

    ``target``: inner, the share of the region the polytopes must cover; outer,
    the share of the polytopes that must be region. Measured with exact volumes
    when ``region_volume`` (unit cube) is given and qhull works in ``d``
    dimensions, else on the samples.
    """
    t0 = time.perf_counter()
    d = net.d
    rng = np.random.default_rng(seed)
    U = rng.random((n_samples, d))
    Y = net.forward_u(U)
    R = np.zeros(n_samples, dtype=bool)
    for G, g in parts:
        R |= np.all(Y @ G.T <= g, axis=1) if G.shape[0] else True
    n_region = int(R.sum())
    tie = itertools.count()
    exact_vol = region_volume is not None and d <= MAX_EXACT_DIM
    zero, one = np.zeros(d), np.ones(d)
    root_polys = _polys(net, parts, zero[None], one[None], outer)[0]
    root = _leaf(root_polys, zero, one, np.arange(n_samples), U, R, outer, exact_vol)
    heap = [(_neg(_score(root, outer)), next(tie), root)]
    status = "target"
    splits = 0

    def done() -> bool:
        if exact_vol:
            assert region_volume is not None
            vol = sum(x[2].vol for x in heap)
            if outer:
                return region_volume >= target * vol
            return vol >= target * region_volume
        hit = sum(x[2].hit for x in heap)
        if outer:
            return n_region >= target * hit if hit else True
        return hit >= target * n_region

    def n_polys() -> int:
        return sum(len(x[2].polys) for x in heap if x[2].hit or x[2].vol > 0 or outer)

    while not done():
        if time.perf_counter() - t0 > time_limit:
            status = "time_limit"
            break
        if n_polys() + len(parts) > max_polytopes:
            status = "budget"  # one more split could pass the budget
            break
        score, _, leaf = heapq.heappop(heap)
        if -score[0] <= 0 and (not exact_vol or -score[1] <= 1e-12):
            heapq.heappush(heap, (score, next(tie), leaf))
            status = "stalled"
            break
        best = _best_split(net, parts, leaf, U, R, outer, exact_vol)
        for child in best[1:]:
            heapq.heappush(heap, (_neg(_score(child, outer)), next(tie), child))
        splits += 1
    leaves = [x[2] for x in heap]
    out = _polytopes(leaves, outer, d, U, rng)
    stats = {
        "splits": splits,
        "boxes": len(leaves),
        "samples": n_samples,
        "region_samples": n_region,
        "status": status,
        "seconds": time.perf_counter() - t0,
    }
    return out, stats


def _best_split(
    net: PLNet,
    parts: list[tuple[np.ndarray, np.ndarray]],
    leaf: Leaf,
    U: np.ndarray,
    R: np.ndarray,
    outer: bool,
    exact_vol: bool,
) -> tuple[tuple[float, float], Leaf, Leaf]:
    """The halving of ``leaf`` (along each axis, longest first) with the best score gain."""
    axes = np.argsort(-(leaf.hi - leaf.lo))
    los, his = [], []
    for k in axes:
        mid = (leaf.lo[k] + leaf.hi[k]) / 2
        hi1, lo2 = leaf.hi.copy(), leaf.lo.copy()
        hi1[k], lo2[k] = mid, mid
        los += [leaf.lo, lo2]
        his += [hi1, leaf.hi]
    polys = _polys(net, parts, np.stack(los), np.stack(his), outer)
    best = None
    for j, k in enumerate(axes):
        mid = his[2 * j][k]
        left = leaf.idx[U[leaf.idx, k] <= mid]
        right = leaf.idx[U[leaf.idx, k] > mid]
        one = _leaf(polys[2 * j], los[2 * j], his[2 * j], left, U, R, outer, exact_vol)
        two = _leaf(polys[2 * j + 1], los[2 * j + 1], his[2 * j + 1], right, U, R, outer, exact_vol)
        s0, s1, s2 = _score(leaf, outer), _score(one, outer), _score(two, outer)
        gain = (s0[0] - s1[0] - s2[0], s0[1] - s1[1] - s2[1])
        if best is None or gain > best[0]:
            best = (gain, one, two)
    assert best is not None
    return best


def _polytopes(
    leaves: list[Leaf], outer: bool, d: int, U: np.ndarray, rng: np.random.Generator
) -> list[tuple[np.ndarray, np.ndarray, int, np.ndarray, float]]:
    """Each leaf's polytopes cut to its box: ``(A, b, part, V, volume)``."""
    out = []
    for leaf in leaves:
        if not outer and leaf.hit == 0 and leaf.vol <= 0:
            continue  # dropping a polytope keeps the union inside the region
        for A, b, part in leaf.polys:
            box_A = np.vstack([np.eye(d), -np.eye(d)])
            box_b = np.concatenate([leaf.hi, -leaf.lo])
            A2, b2 = np.vstack([A, box_A]), np.concatenate([b, box_b])
            pts = U[leaf.idx]
            inside = pts[np.all(pts @ A2.T <= b2 - TOL, axis=1)] if len(pts) else pts
            V = vertices(A2, b2, inside.mean(axis=0) if len(inside) else None)
            if V is None:
                continue
            vol = volume(V)
            if vol != vol:  # NaN: too many dimensions for qhull
                vol = estimate_volume(A2, b2, V, rng)
            out.append((A2, b2, part, V, vol))
    return out

"""Inner and outer approximations of a decision region by input splitting.

The unit cube is split into boxes (a priority queue, the box whose polytope
misses the most sampled region points first, split across the axis that gains
most). On each box ``S``, CROWN bounds each output constraint ``G_r y - g_r``
by an affine function of the input (:func:`nninv.bounds.linear_bound`):

- under: with ``upper_r(u) >= G_r y(u) - g_r`` on ``S``, the polytope
  ``{u in S : upper_r(u) <= 0 for every row r}`` lies inside the region *by
  construction*: ``G_r y(u) - g_r <= upper_r(u) <= 0``. Which valid relaxation
  gives ``upper_r`` is chosen per box to hold most of the box's sampled region
  points (:mod:`._slopes`); the boxes are split up to ``SPARE`` times the
  polytope budget and the largest polytopes within the budget are kept;
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
from typing import Protocol

import numpy as np
import torch

from ..bounds import layer_bounds, linear_bound
from ._geom import MAX_EXACT_DIM, TOL, estimate_volume, vertices, volume
from ._net import PLNet
from ._slopes import covering_bounds

#: region samples per box that steer the choice of the relaxation (inner mode)
MAX_POINTS = 400
#: inner: alpha-CROWN steps on the hidden layers' bounds of every box (tighter
#: bounds of the unstable neurons give tighter, larger polytopes)
LAYER_ALPHA = 10
#: where a box may be cut, as shares of its width (halving first)
CUTS = (0.5,)
#: inner: boxes split up to this many times the polytope budget (the largest kept)
SPARE = 2.0


class _Progress(Protocol):
    """What the search needs of a progress bar (tqdm has it)."""

    def update(self, n: int = 1) -> object: ...


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
    pts: list[np.ndarray] | None = None,
) -> list[list[tuple[np.ndarray, np.ndarray, int]]]:
    """The polytopes of boxes ``lo[j] <= u <= hi[j]`` (shape ``(B, d)``), one batch.

    Per box, ``(A, b, part)`` for every part whose polytope is not empty on the box.
    With ``pts`` (inner only), the region samples of each box: the hidden layers'
    bounds are tightened by alpha-CROWN and the relaxation is chosen to hold as
    many of the points as it can (:mod:`._slopes`).
    """
    layers = net.layers
    lo_t, hi_t = torch.from_numpy(lo), torch.from_numpy(hi)
    bounds = layer_bounds(layers, lo_t, hi_t)
    if LAYER_ALPHA and pts is not None and not outer and len(layers.slopes) > 1:
        some = torch.tensor([len(p) > 0 for p in pts])  # boxes with region points
        if bool(some.any()):
            sub = [(l[some], u[some]) for l, u in bounds]
            sub = layer_bounds(layers, lo_t[some], hi_t[some], alpha_steps=LAYER_ALPHA, start=sub)
            for (l, u), (ls, us) in zip(bounds, sub):
                l[some], u[some] = ls, us
    P = M = None
    if pts is not None and not outer:
        P, M = _padded(pts, net.d)
    out: list[list[tuple[np.ndarray, np.ndarray, int]]] = [[] for _ in range(len(lo))]
    for i, (G, g) in enumerate(parts):
        if G.shape[0] == 0:
            for polys in out:
                polys.append((np.zeros((0, net.d)), np.zeros(0), i))
            continue
        if P is not None and M is not None:
            A, a0 = covering_bounds(layers, bounds, torch.from_numpy(G), torch.from_numpy(g), P, M)
        else:
            At, at0 = linear_bound(
                layers, len(layers.slopes), torch.from_numpy(G), bounds, upper=not outer
            )
            A, a0 = At.numpy(), at0.numpy() - g
        # {A u + a0 <= 0}: empty on the box if some row is positive everywhere.
        mins = a0 + np.minimum(A * lo[:, None], A * hi[:, None]).sum(axis=2)
        for j in np.flatnonzero(~np.any(mins > 0, axis=1)):
            out[j].append((A[j], -a0[j], i))
    return out


def _padded(pts: list[np.ndarray], d: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Point sets of different sizes as one ``(B, M, d)`` tensor and its mask."""
    m = max(1, max(len(p) for p in pts))
    P = np.zeros((len(pts), m, d))
    M = np.zeros((len(pts), m), dtype=bool)
    for j, p in enumerate(pts):
        P[j, : len(p)] = p
        M[j, : len(p)] = True
    return torch.from_numpy(P), torch.from_numpy(M)


def _region_points(idx: np.ndarray, U: np.ndarray, R: np.ndarray) -> np.ndarray:
    """The region samples among ``U[idx]``, at most :data:`MAX_POINTS` (evenly spread)."""
    sel = idx[R[idx]]
    if len(sel) > MAX_POINTS:
        sel = sel[np.linspace(0, len(sel) - 1, MAX_POINTS).astype(int)]
    return U[sel]


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


#: Fresh uniform points that measure an inner approximation's coverage where
#: volumes are estimated (95% interval about +-0.002 on a region of half the box).
FRESH_SAMPLES = 200_000


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
    progress: _Progress | None = None,
) -> tuple[list[tuple[np.ndarray, np.ndarray, int, np.ndarray, float]], dict]:
    """Polytopes ``(A, b, part, V, volume)`` in unit-cube coordinates, and statistics.

    ``progress`` (a tqdm bar) advances by one per split.

    ``target``: inner, the share of the region the polytopes must cover; outer,
    the share of the polytopes that must be region. Measured with exact volumes
    when ``region_volume`` (unit cube) is given and qhull works in ``d``
    dimensions, else on the samples.
    """
    t0 = time.perf_counter()
    d = net.d
    rng = np.random.default_rng(seed)
    U = rng.random((n_samples, d))
    R = net.maps_into(U, parts)
    # inner: exact volumes wherever qhull works, measured against the exact region
    # volume or else the sampled one (the coverage the caller reports)
    exact_vol = d <= MAX_EXACT_DIM and (region_volume is not None or not outer)
    n_region = int(R.sum())
    s = _Search(net, parts, U, R, outer, exact_vol, max_polytopes)
    s.progress = progress
    region_vol = region_volume if region_volume is not None else n_region / n_samples
    # inner, estimated volumes: the coverage is measured on fresh region samples,
    # which the polytopes were not fitted to (the fitted ones overstate it)
    fresh = (
        None
        if outer or exact_vol
        else _region_sample(net, parts, max(n_samples, FRESH_SAMPLES), seed + 1)
    )
    goal, rounds = target, 0
    while True:
        status = s.grow(goal, region_vol, t0 + time_limit)
        out = _polytopes(s.kept(), outer, d, U, rng)
        if fresh is None:
            break
        hits = int(_in_union(fresh, out).sum())
        got = hits / len(fresh) if len(fresh) else 1.0
        if status != "target" or got >= target or goal > 1:
            break
        if got < target - 0.05 or rounds == 3:
            break  # the estimates disagree by more than their noise: trust neither further
        goal += target - got + 1e-3  # split on for the shortfall
        rounds += 1
    stats = {
        "splits": s.splits,
        "boxes": len(s.heap),
        "samples": n_samples,
        "region_samples": n_region,
        "status": status,
        "seconds": time.perf_counter() - t0,
    }
    if fresh is not None:
        stats["fresh"] = (int(_in_union(fresh, out).sum()), len(fresh))
    return out, stats


def _region_sample(
    net: PLNet, parts: list[tuple[np.ndarray, np.ndarray]], n: int, seed: int
) -> np.ndarray:
    """The region points among ``n`` uniform points of the unit cube."""
    U = np.random.default_rng(seed).random((n, net.d))
    return U[net.maps_into(U, parts)]


def _in_union(X: np.ndarray, polys: list[tuple[np.ndarray, np.ndarray, int, np.ndarray, float]]):
    """Which rows of ``X`` lie in some polytope ``(A, b, part, V, volume)``."""
    return _inside(X, [p[:3] for p in polys])


class _Search:
    """The boxes (a priority queue of leaves) and the rules to split them."""

    def __init__(
        self,
        net: PLNet,
        parts: list[tuple[np.ndarray, np.ndarray]],
        U: np.ndarray,
        R: np.ndarray,
        outer: bool,
        exact_vol: bool,
        max_polytopes: int,
    ) -> None:
        self.net, self.parts, self.U, self.R = net, parts, U, R
        self.outer, self.exact_vol = outer, exact_vol
        d = net.d
        zero, one = np.zeros(d), np.ones(d)
        idx = np.arange(len(U))
        polys = _polys(net, parts, zero[None], one[None], outer, [_region_points(idx, U, R)])[0]
        root = _leaf(polys, zero, one, idx, U, R, outer, exact_vol)
        self.tie = itertools.count()
        self.heap = [(_neg(_score(root, outer)), next(self.tie), root)]
        self.splits = 0
        self.progress: _Progress | None = None
        self.keep = max_polytopes  # inner: one polytope per leaf, the largest kept
        # inner: split past the budget, as the smallest polytopes are dropped at the end
        self.cap = max_polytopes if outer else int(SPARE * max_polytopes)

    def kept(self) -> list[Leaf]:
        """Inner: the leaves whose polytopes are kept (the ``keep`` largest); outer: all."""
        leaves = [x[2] for x in self.heap]
        if self.outer:
            return leaves
        full = [lf for lf in leaves if lf.hit or lf.vol > 0]
        return sorted(full, key=lambda lf: (lf.vol, lf.hit), reverse=True)[: self.keep]

    def done(self, target: float, region_vol: float) -> bool:
        leaves = self.kept()
        if self.exact_vol:
            vol = sum(lf.vol for lf in leaves)
            if self.outer:
                return region_vol >= target * vol
            return vol >= target * region_vol
        hit = sum(lf.hit for lf in leaves)
        n_region = int(self.R.sum())
        if self.outer:
            return n_region >= target * hit if hit else True
        return hit >= target * n_region

    def n_polys(self) -> int:
        return sum(len(x[2].polys) for x in self.heap if x[2].hit or x[2].vol > 0 or self.outer)

    def grow(self, target: float, region_vol: float, deadline: float) -> str:
        """Split until ``target`` is met (``"target"``), or another status."""
        while not self.done(target, region_vol):
            if time.perf_counter() > deadline:
                return "time_limit"
            if self.n_polys() + len(self.parts) > self.cap:
                return "budget"  # one more split could pass the budget
            score, _, leaf = heapq.heappop(self.heap)
            if -score[0] <= 0 and (not self.exact_vol or -score[1] <= 1e-12):
                heapq.heappush(self.heap, (score, next(self.tie), leaf))
                return "stalled"
            best = _best_split(
                self.net, self.parts, leaf, self.U, self.R, self.outer, self.exact_vol
            )
            for child in best[1:]:
                heapq.heappush(self.heap, (_neg(_score(child, self.outer)), next(self.tie), child))
            self.splits += 1
            if self.progress is not None:
                self.progress.update(1)
        return "target"


def _best_split(
    net: PLNet,
    parts: list[tuple[np.ndarray, np.ndarray]],
    leaf: Leaf,
    U: np.ndarray,
    R: np.ndarray,
    outer: bool,
    exact_vol: bool,
) -> tuple[tuple[float, float], Leaf, Leaf]:
    """The cut of ``leaf`` (along each axis, longest first, at :data:`CUTS`) that gains most."""
    cuts = [(k, f) for f in CUTS for k in np.argsort(-(leaf.hi - leaf.lo))]
    los, his, idxs = [], [], []
    for k, f in cuts:
        mid = leaf.lo[k] + f * (leaf.hi[k] - leaf.lo[k])
        hi1, lo2 = leaf.hi.copy(), leaf.lo.copy()
        hi1[k], lo2[k] = mid, mid
        los += [leaf.lo, lo2]
        his += [hi1, leaf.hi]
        idxs += [leaf.idx[U[leaf.idx, k] <= mid], leaf.idx[U[leaf.idx, k] > mid]]
    pts = [_region_points(i, U, R) for i in idxs]
    polys = _polys(net, parts, np.stack(los), np.stack(his), outer, pts)
    best = None
    s0 = _score(leaf, outer)
    for j in range(len(cuts)):
        one, two = (
            _leaf(polys[i], los[i], his[i], idxs[i], U, R, outer, exact_vol)
            for i in (2 * j, 2 * j + 1)
        )
        s1, s2 = _score(one, outer), _score(two, outer)
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

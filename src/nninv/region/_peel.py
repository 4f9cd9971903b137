"""Inner approximations carved out of an exactly known region ("peeling").

When the exact enumeration finishes, the complement of the region inside the
box is known too: a list of polytopes ``Q_j`` (the linear regions of the network
cut by the complement of the output set). A convex polytope ``P`` with interior
that meets no ``Q_j``'s interior lies inside the region: a point of ``P`` outside
the region would have a neighbourhood outside it (the output set is closed), and
that neighbourhood meets the interior of ``P`` and, up to a null set, some
``Q_j``. So ``P`` is built by cutting a domain ``D`` (at first the unit cube)
with half-spaces, each keeping a ``Q_j`` wholly on its far side:

- candidate cuts per ``Q_j``: its facets, the axis-aligned planes touching it,
  and the plane touching it across the line from the region's centre to it;
- a greedy weighted set cover picks cuts until every ``Q_j`` meeting ``D`` is
  cut off, each time the cut that loses the fewest sampled region points per
  ``Q_j`` newly cut off.

``D`` minus ``P`` splits into convex pieces (violate cut ``i``, keep cuts
``< i``) that are peeled in turn, the one with the most region samples first,
until the polytopes cover the target share of the exact region volume.
Polytopes of different domains are disjoint, so their exact volumes add up.
"""

from __future__ import annotations

__all__ = ["complement_parts", "peel"]

import heapq
import itertools
import time
from dataclasses import dataclass

import numpy as np

from ._exact import Piece
from ._geom import TOL, prune, vertices, volume

#: Above this many polyhedra the complement of a union of output polyhedra is
#: not written out (it is the product of the parts' rows).
MAX_COMPLEMENT_PARTS = 64


def complement_parts(
    parts: list[tuple[np.ndarray, np.ndarray]],
) -> list[tuple[np.ndarray, np.ndarray]] | None:
    """The closed complement of the union of ``{G y <= g}`` as polyhedra (or None).

    The complement of one part is the union of its rows violated, ``G_r y >= g_r``;
    of a union, every choice of one violated row per part. None if a part has no
    rows (the region is everything) or the product has more than
    ``MAX_COMPLEMENT_PARTS`` members.
    """
    if any(G.shape[0] == 0 for G, _ in parts):
        return None
    n = 1
    for G, _ in parts:
        n *= G.shape[0]
    if n > MAX_COMPLEMENT_PARTS:
        return None
    out = []
    for rows in itertools.product(*(range(G.shape[0]) for G, _ in parts)):
        G2 = np.vstack([-parts[i][0][r] for i, r in enumerate(rows)])
        g2 = np.array([-parts[i][1][r] for i, r in enumerate(rows)])
        out.append((G2, g2))
    return out


@dataclass
class _Domain:
    A: np.ndarray  # rows beyond the unit cube
    b: np.ndarray
    V: np.ndarray
    idx: np.ndarray  # region samples inside
    q: np.ndarray  # complement pieces that may meet it


def _separated(A: np.ndarray, b: np.ndarray, Vs: list[np.ndarray], q: np.ndarray) -> np.ndarray:
    """``S[k, j]``: every vertex of piece ``q[j]`` lies on the far side of row ``k``."""
    if len(q) == 0:
        return np.zeros((len(b), 0), dtype=bool)
    sub = [Vs[j] for j in q]
    starts = np.cumsum([0] + [len(v) for v in sub[:-1]])
    vals = np.vstack(sub) @ A.T - b  # (vertices, K): > 0 on the far side
    mins = np.minimum.reduceat(vals, starts, axis=0)  # (pieces, K)
    return (mins >= -TOL * (1.0 + np.abs(b))).T


def _candidates(
    pieces: list[Piece], q: np.ndarray, centre: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Cuts ``a u <= c`` that each keep one complement piece on their far side."""
    rows, rhs = [], []
    d = centre.size
    eye = np.eye(d)
    for j in q:
        p = pieces[j]
        Af, bf = prune(p.A, p.b, p.V)
        if Af.shape[0]:
            rows.append(-Af)
            rhs.append(-bf)
        lo, hi = p.V.min(axis=0), p.V.max(axis=0)
        rows += [eye, -eye]  # u_i <= lo_i, or u_i >= hi_i
        rhs += [lo, -hi]
        w = p.V.mean(axis=0) - centre
        n = np.linalg.norm(w)
        if n > 0:
            w = w / n
            rows.append(w[None])
            rhs.append(np.array([(p.V @ w).min()]))
    if not rows:
        return np.zeros((0, d)), np.zeros(0)
    A, c = np.vstack(rows), np.concatenate(rhs)
    norms = np.linalg.norm(A, axis=1)
    return A / norms[:, None], c / norms


def _cover(X: np.ndarray, A: np.ndarray, c: np.ndarray, S: np.ndarray) -> list[int] | None:
    """Greedy weighted set cover: cuts (rows of ``A``) that cut off every piece.

    The weight of a cut is the number of still-kept region samples ``X`` it
    loses; each step takes the cut with the least weight per newly covered piece.
    None if some piece has no cut.
    """
    if not S.any(axis=0).all():
        return None
    lose = X @ A.T > c  # (samples, K)
    alive = np.ones(len(X), dtype=bool)
    loss = lose.sum(axis=0).astype(np.float64)
    open_ = np.ones(S.shape[1], dtype=bool)
    chosen: list[int] = []
    while open_.any():
        gain = S[:, open_].sum(axis=1)
        cost = np.where(gain > 0, loss / np.maximum(gain, 1), np.inf)
        k = int(np.lexsort((-gain, cost))[0])
        chosen.append(k)
        open_ &= ~S[k]
        gone = alive & lose[:, k]
        if gone.any():
            loss -= lose[gone].sum(axis=0)
            alive &= ~gone
    # Drop cuts the others make redundant (the earliest picks first).
    for k in list(chosen):
        rest = [c for c in chosen if c != k]
        if rest and S[rest].any(axis=0).all():
            chosen = rest
    return chosen


def _carve(
    dom: _Domain,
    pieces: list[Piece],
    Vs: list[np.ndarray],
    X: np.ndarray,
    rng: np.random.Generator,
    max_score: int,
) -> tuple[np.ndarray, np.ndarray] | None:
    """The cuts of ``dom`` that keep every complement piece out, or None."""
    if dom.q.size == 0:
        return np.zeros((0, dom.A.shape[1])), np.zeros(0)
    pts = X[dom.idx]
    centre = pts.mean(axis=0) if len(pts) else dom.V.mean(axis=0)
    A, c = _candidates(pieces, dom.q, centre)
    S = _separated(A, c, Vs, dom.q)
    if len(pts) > max_score:
        pts = pts[rng.choice(len(pts), max_score, replace=False)]
    chosen = _cover(pts, A, c, S)
    if chosen is None:
        return None
    return A[chosen], c[chosen]


def peel(
    comp_pieces: list[Piece],
    region_volume: float,
    X: np.ndarray,
    *,
    target: float,
    max_polytopes: int,
    time_limit: float,
    seed: int,
    max_score: int = 4000,
) -> tuple[list[tuple[np.ndarray, np.ndarray, int, np.ndarray, float]], dict]:
    """Disjoint polytopes inside the region covering ``target`` of ``region_volume``.

    ``X`` are uniform region samples of the unit cube (they rank cuts and
    domains); ``comp_pieces`` cover the complement of the region in the cube.
    Returns ``(A, b, 0, V, volume)`` per polytope (unit-cube coordinates; ``A``,
    ``b`` without the cube's rows) and statistics.
    """
    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    d = X.shape[1]
    corners = ((np.arange(2**d)[:, None] >> np.arange(d)) & 1).astype(np.float64)
    Vs = [p.V for p in comp_pieces]
    root = _Domain(
        np.zeros((0, d)), np.zeros(0), corners, np.arange(len(X)), np.arange(len(comp_pieces))
    )
    tie = itertools.count()
    heap = [(-len(X), next(tie), root)]
    out: list[tuple[np.ndarray, np.ndarray, int, np.ndarray, float]] = []
    covered = 0.0
    status = "target"
    while covered < target * region_volume:
        if not heap or heap[0][0] == 0:
            status = "stalled"
            break
        if len(out) >= max_polytopes:
            status = "budget"
            break
        if time.perf_counter() - t0 > time_limit:
            status = "time_limit"
            break
        _, _, dom = heapq.heappop(heap)
        cut = _carve(dom, comp_pieces, Vs, X, rng, max_score)
        if cut is None:
            status = "failed"
            break
        Ac, cc = cut
        A, b = np.vstack([dom.A, Ac]), np.concatenate([dom.b, cc])
        inside = X[dom.idx][np.all(X[dom.idx] @ A.T < b - TOL, axis=1)]
        V = vertices(A, b, inside.mean(axis=0) if len(inside) else None)
        if V is not None:
            vol = volume(V)
            if vol > 0:
                Ap, bp = prune(A, b, V)
                out.append((Ap, bp, 0, V, vol))
                covered += vol
        for child in _remainder(dom, Ac, cc, X, Vs):
            heapq.heappush(heap, (-len(child.idx), next(tie), child))
    stats = {"status": status, "domains": len(out) + len(heap), "seconds": time.perf_counter() - t0}
    return out, stats


def _remainder(
    dom: _Domain, Ac: np.ndarray, cc: np.ndarray, X: np.ndarray, Vs: list[np.ndarray]
) -> list[_Domain]:
    """``dom`` minus the polytope: the parts violating cut ``i`` and keeping cuts ``< i``."""
    out = []
    A, b = dom.A, dom.b
    pts = X[dom.idx]
    keep = np.ones(len(pts), dtype=bool)
    for a, c in zip(Ac, cc):
        A2, b2 = np.vstack([A, -a[None]]), np.concatenate([b, [-c]])
        far = keep & (pts @ a > c)
        if far.any():
            V = vertices(A2, b2, pts[far].mean(axis=0))
            if V is not None and volume(V) > 0:
                A2, b2 = prune(A2, b2, V)
                # The pieces still to cut off: those no row of the new domain separates.
                sep = _separated(A2, b2, Vs, dom.q)
                q = dom.q[~sep.any(axis=0)] if sep.size else dom.q
                out.append(_Domain(A2, b2, V, dom.idx[far], q))
        keep &= pts @ a <= c
        A, b = np.vstack([A, a[None]]), np.concatenate([b, [c]])
    return out

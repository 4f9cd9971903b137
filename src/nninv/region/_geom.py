"""Vertices, facets and volumes of polytopes ``{u in [0, 1]^d : A u <= b}`` with qhull.

Every polytope the region engines make is kept with its vertices (from
``scipy.spatial.HalfspaceIntersection`` given a strictly interior point), which
answer sign questions exactly, give the volume (``ConvexHull``) and the facets.
"""

from __future__ import annotations

__all__ = [
    "MAX_EXACT_DIM",
    "box_rows",
    "estimate_volume",
    "facets",
    "interior_point",
    "prune",
    "split_point",
    "vertices",
    "volume",
]

import numpy as np
from scipy.spatial import (
    ConvexHull,
    HalfspaceIntersection,
    QhullError,
)

from ._lp import chebyshev

#: Slack under which a point counts as on a hyperplane (unit-cube coordinates).
TOL = 1e-9


def box_rows(d: int) -> tuple[np.ndarray, np.ndarray]:
    """The unit cube as rows ``A u <= b``."""
    eye = np.eye(d)
    return np.vstack([eye, -eye]), np.concatenate([np.ones(d), np.zeros(d)])


def vertices(A: np.ndarray, b: np.ndarray, inside: np.ndarray | None) -> np.ndarray | None:
    """Vertices of ``{u in [0,1]^d : A u <= b}``, or None if it has no interior.

    ``inside`` is a point believed strictly inside; if it is not (or qhull fails on
    it), the Chebyshev centre found by HiGHS is used instead.
    """
    d = A.shape[1]
    Bx, bb = box_rows(d)
    H = np.vstack([A, Bx])
    h = np.concatenate([b, bb])
    for attempt in range(2):
        if inside is None or not np.all(H @ inside < h - TOL):
            r, inside = chebyshev(A, b)
            if r <= TOL:
                return None
        try:
            hs = HalfspaceIntersection(np.hstack([H, -h[:, None]]), inside)
        except (QhullError, ValueError):
            if attempt:
                return None
            inside = None
            continue
        V = hs.intersections
        V = V[np.all(np.isfinite(V), axis=1)]
        if len(V) > d:
            return V
        return None
    return None


def prune(A: np.ndarray, b: np.ndarray, V: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The rows of ``A u <= b`` that hold ``d`` or more of the vertices ``V`` (the facets)."""
    if A.shape[0] == 0:
        return A, b
    slack = b[:, None] - A @ V.T
    scale = 1e-7 * (1.0 + np.abs(A).sum(axis=1, keepdims=True))
    on = (slack <= scale).sum(axis=1) >= V.shape[1]
    return A[on], b[on]


def interior_point(V: np.ndarray) -> np.ndarray:
    """The mean of the vertices: strictly inside a full-dimensional polytope."""
    return V.mean(axis=0)


def split_point(V: np.ndarray, z: np.ndarray, sign: float) -> np.ndarray:
    """A point strictly inside the part of ``conv(V)`` where ``sign * z > 0``.

    ``z`` holds an affine function's values at the vertices, positive on some for
    ``sign``. The mean ``c`` of all vertices is inside; the mean ``m`` of those on
    the wanted side is in the polytope with ``sign * z(m) > 0``; the point of the
    open segment ``(c, m)`` where ``sign * z`` is half its value at ``m`` is strictly
    inside both the polytope and the half space.
    """
    s = sign * z
    c = V.mean(axis=0)
    zc = s.mean()
    pos = s > 0
    m = V[pos].mean(axis=0)
    zm = s[pos].mean()
    if zc >= zm / 2:
        return c
    t = (zm / 2 - zc) / (zm - zc)
    return c + t * (m - c)


#: Highest dimension whose volumes qhull computes exactly in reasonable time (its
#: triangulated hull of a few hundred vertices in 8-D takes ~10 s); above it
#: volumes are estimated by sampling (:func:`estimate_volume`).
MAX_EXACT_DIM = 6


def volume(V: np.ndarray) -> float:
    """Volume of the convex hull of ``V`` (0 for a degenerate set; NaN above ``MAX_EXACT_DIM``)."""
    if V.shape[1] > MAX_EXACT_DIM:
        return float("nan")
    try:
        return float(ConvexHull(V).volume)
    except (QhullError, ValueError):
        return 0.0


def estimate_volume(
    A: np.ndarray,
    b: np.ndarray,
    V: np.ndarray,
    rng: np.random.Generator,
    n: int = 4000,
    hits: int = 400,
    max_draws: int = 100_000,
) -> float:
    """Volume of ``{A u <= b}`` (within the bounding box of ``V``) from uniform draws.

    Batches of ``n`` draws until ``hits`` of them fall inside (a relative standard
    error of about ``1 / sqrt(hits)``) or ``max_draws`` are spent: a thin polytope
    fills a small share of its bounding box, and a fixed number of draws would
    often miss it.
    """
    lo, hi = V.min(axis=0), V.max(axis=0)
    inside = drawn = 0
    while drawn < max_draws and inside < hits:
        X = lo + rng.random((n, V.shape[1])) * (hi - lo)
        inside += int(np.all(X @ A.T <= b, axis=1).sum())
        drawn += n
    return float(np.prod(hi - lo) * inside / drawn)


def facets(A: np.ndarray, b: np.ndarray, V: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The rows of ``A u <= b`` and of the unit cube that hold ``d`` or more vertices.

    For a full-dimensional polytope these are its facets: the same set, without
    redundant rows. Rows are normalised to unit length.
    """
    d = V.shape[1]
    Bx, bb = box_rows(d)
    H = np.vstack([A, Bx])
    h = np.concatenate([b, bb])
    norms = np.linalg.norm(H, axis=1)
    keep = norms > 0
    H, h, norms = H[keep] / norms[keep, None], h[keep] / norms[keep], norms[keep]
    slack = h[:, None] - H @ V.T
    scale = 1.0 + np.abs(V).max()
    on = (np.abs(slack) <= 1e-7 * scale).sum(axis=1) >= d
    H, h = H[on], h[on]
    # Drop duplicate rows (the same hyperplane written twice).
    key = np.round(np.hstack([H, h[:, None]]), 9)
    _, first = np.unique(key, axis=0, return_index=True)
    first.sort()
    return H[first], h[first]

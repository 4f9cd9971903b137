"""What :func:`nninv.region` answers with: the polytopes of a decision region and their volumes.

Plain frozen records. Polytopes are in H-representation ``A x <= b`` in the
input's own coordinates, with their vertices and exact volume; the union is
disjoint up to shared faces, so volumes add up. ``sample`` draws uniformly from
the union (a polytope by volume, a simplex of its Delaunay triangulation by
volume, a point by a flat Dirichlet draw): exact, no Markov chain.
"""

from __future__ import annotations

__all__ = ["Polytope", "Region"]

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..errors import NNInvError


@dataclass(frozen=True)
class Polytope:
    """One convex piece of a region: ``{x : A x <= b}`` (its facets), float64.

    Attributes
    ----------
    A, b : Tensor
        ``(m, d)`` and ``(m,)``: the facets (unit-length rows), box faces included.
    vertices : Tensor
        ``(k, d)`` vertices.
    volume : float
        Exact volume (qhull), in the input's units.
    part : int
        The part of the output set (index in ``OutputSet.parts``) its points map into.
    """

    A: Tensor
    b: Tensor
    vertices: Tensor
    volume: float
    part: int

    def contains(self, x: Tensor | np.ndarray, tol: float = 1e-9) -> Tensor:
        """Whether each row of ``x`` (``(N, d)``) is inside, to within ``tol``."""
        X = _rows(x, self.A.shape[1])
        return (X @ self.A.T <= self.b + tol).all(dim=1)


@dataclass(frozen=True)
class Region:
    """A decision region ``{x in box : model(x) in output_set}``, exact or approximated.

    Attributes
    ----------
    mode : str
        ``"exact"`` (the polytopes are the region), ``"under"`` (their union lies
        inside it) or ``"over"`` (their union contains it).
    polytopes : tuple of Polytope
        Disjoint (up to faces) for ``"exact"`` and ``"under"``; for ``"over"``
        with an output set of several parts, polytopes of different parts may overlap.
    box : Tensor
        ``(d, 2)`` rows ``[lo, hi]``.
    volume : float
        Sum of the polytopes' exact volumes.
    share : float
        ``volume`` over the box's volume.
    region_volume : float or None
        The exact volume of the true region, when an exact enumeration finished.
    region_estimate : tuple of float
        The region's volume estimated from uniform samples of the box: (estimate,
        low, high), a 95% Wilson interval.
    coverage : float
        ``volume / region_volume`` (1 for a complete exact run); where the exact
        volume is unknown, over the sampled estimate; for ``"under"`` above 6
        inputs (estimated volumes), the share of 200,000 fresh uniform points of
        the region (points the polytopes were not fitted to) inside the polytopes.
    coverage_interval : tuple of float
        Its interval: a point when certified, else a 95% (Wilson) interval.
    certified : bool
        Whether ``coverage`` uses the exact region volume.
    outer_box : Tensor
        ``(d, 2)`` bounding box of the polytopes' vertices (for ``"over"``: a box
        that contains the region).
    status : str
        ``"complete"`` (exact, every polytope found), ``"target"`` (coverage reached),
        ``"budget"`` (polytope budget spent first), ``"stalled"``,
        ``"region_limit"`` or ``"time_limit"`` (stopped; the polytopes found so far),
        or ``"uncertain"`` (``"under"`` above 6 inputs: the polytopes hold the target
        share of the sampled region points, but their estimated volumes cover less
        of the estimated region volume; more ``n_samples`` narrows both).
    seconds : float
    counts : dict
        ``polytopes``, and per mode ``cells``, ``linear_regions``, ``pruned``,
        ``kept_whole`` (exact), ``boxes``, ``splits`` (under/over).
    info : dict
        ``"rechecked"``: how the inner polytopes were checked; ``"strategy"``
        (under/over): ``"peel"`` (carved out of the exact region) or
        ``"bounds"`` (linear bounds on boxes); and other details.
    """

    mode: str
    polytopes: tuple[Polytope, ...]
    box: Tensor
    volume: float
    share: float
    region_volume: float | None
    region_estimate: tuple[float, float, float]
    coverage: float
    coverage_interval: tuple[float, float]
    certified: bool
    outer_box: Tensor
    status: str
    seconds: float
    counts: dict[str, int]
    info: dict[str, Any] = field(default_factory=dict)
    _cache: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.polytopes)

    def __repr__(self) -> str:
        cov = f"{self.coverage:.4f}" + ("" if self.certified else " (sampled)")
        return (
            f"Region(mode={self.mode!r}, polytopes={len(self.polytopes)}, "
            f"volume={self.volume:.6g}, share={self.share:.4f}, coverage={cov}, "
            f"status={self.status!r}, seconds={self.seconds:.2f})"
        )

    def contains(self, x: Tensor | np.ndarray, tol: float = 1e-9) -> Tensor:
        """Whether each row of ``x`` (``(N, d)``) lies in some polytope; bool ``(N,)``."""
        X = _rows(x, self.box.shape[0])
        out = torch.zeros(X.shape[0], dtype=torch.bool)
        for p in self.polytopes:
            out |= p.contains(X, tol)
        return out

    def sample(self, n: int, seed: int = 0) -> Tensor:
        """``n`` points drawn uniformly from the union of the polytopes, float64 ``(n, d)``.

        Raises
        ------
        NNInvError
            If the region has no volume.
        """
        if n < 0:
            raise NNInvError(f"sample: n must be >= 0, got {n}")
        simplices, weights = (
            _simplices(self)
            if self.box.shape[0] <= _MAX_DELAUNAY_DIM
            else (
                [p.vertices for p in self.polytopes if p.volume > 0],
                np.ones(1),
            )
        )
        if not len(simplices):
            raise NNInvError("sample: the region has no volume (no polytopes)")
        rng = np.random.default_rng(seed)
        if self.box.shape[0] > _MAX_DELAUNAY_DIM:
            return _rejection(self, n, rng)
        pick = rng.choice(len(simplices), size=n, p=weights / weights.sum())
        lam = rng.dirichlet(np.ones(simplices[0].shape[0]), size=n)
        S = np.stack(simplices)[pick]  # (n, d + 1, d)
        return torch.from_numpy(np.einsum("nk,nkd->nd", lam, S))


#: Above this many inputs, ``sample`` draws by rejection in each polytope's bounding box
#: (Delaunay triangulations of 8-D polytopes take seconds each).
_MAX_DELAUNAY_DIM = 6


def _rejection(region: Region, n: int, rng: np.random.Generator) -> Tensor:
    polys = [p for p in region.polytopes if p.volume > 0]
    w = np.array([p.volume for p in polys])
    counts = rng.multinomial(n, w / w.sum())
    out = []
    for p, k in zip(polys, counts):
        V, A, b = p.vertices.numpy(), p.A.numpy(), p.b.numpy()
        lo, hi = V.min(axis=0), V.max(axis=0)
        got: list[np.ndarray] = []
        have = 0
        while have < k:
            X = lo + rng.random((max(4 * k, 64), V.shape[1])) * (hi - lo)
            X = X[np.all(X @ A.T <= b + 1e-12, axis=1)]
            got.append(X)
            have += len(X)
        if k:
            out.append(np.concatenate(got)[:k])
    X = np.concatenate(out) if out else np.zeros((0, region.box.shape[0]))
    return torch.from_numpy(X[rng.permutation(len(X))])


def _simplices(region: Region) -> tuple[list[np.ndarray], np.ndarray]:
    """Delaunay simplices of every polytope and their volumes (cached on the region)."""
    if "simplices" in region._cache:
        return region._cache["simplices"]
    from math import factorial

    from scipy.spatial import Delaunay

    simplices: list[np.ndarray] = []
    vols: list[float] = []
    for p in region.polytopes:
        V = p.vertices.numpy()
        if p.volume <= 0:
            continue
        d = V.shape[1]
        for s in Delaunay(V).simplices:
            S = V[s]
            vol = abs(np.linalg.det(S[1:] - S[0])) / factorial(d)
            if vol > 0:
                simplices.append(S)
                vols.append(vol)
    out = (simplices, np.asarray(vols, dtype=np.float64))
    region._cache["simplices"] = out
    return out


def _rows(x: Tensor | np.ndarray, d: int) -> Tensor:
    X = torch.as_tensor(np.asarray(x) if not isinstance(x, Tensor) else x)
    X = X.detach().to("cpu", torch.float64)
    if X.ndim == 1 and X.shape[0] == d:
        X = X[None]
    X = X.reshape(X.shape[0], -1) if X.ndim > 2 else X
    if X.ndim != 2 or X.shape[1] != d:
        raise NNInvError(f"expected points of shape (N, {d}), got {tuple(X.shape)}")
    return X


def slice_polygon(p: Polytope, dims: tuple[int, int], at: np.ndarray) -> np.ndarray | None:
    """The polygon where ``p`` meets the plane through ``at`` spanned by inputs ``dims``.

    Returns its vertices in order around it, ``(k, 2)``, or None where the plane
    misses the polytope's interior.
    """
    from scipy.spatial import ConvexHull, HalfspaceIntersection, QhullError

    from ._lp import chebyshev

    A, b = p.A.numpy(), p.b.numpy()
    i, j = dims
    rest = [k for k in range(A.shape[1]) if k not in dims]
    A2 = A[:, [i, j]]
    b2 = b - A[:, rest] @ np.asarray(at, dtype=np.float64)[rest]
    V = p.vertices.numpy()[:, [i, j]]
    lo, hi = V.min(axis=0), V.max(axis=0)
    span = np.maximum(hi - lo, 1e-300)
    # Chebyshev centre in the unit square of the polygon's bounding box.
    An = A2 * span
    bn = b2 - A2 @ lo
    keep = np.linalg.norm(An, axis=1) > 1e-15
    if np.any(bn[~keep] < 0):
        return None
    r, c = chebyshev(An[keep], bn[keep])
    if r <= 1e-9:
        return None
    centre = lo + c * span
    try:
        hs = HalfspaceIntersection(np.hstack([A2[keep], -b2[keep, None]]), centre)
        pts = hs.intersections
        hull = ConvexHull(pts)
    except (QhullError, ValueError):
        return None
    return pts[hull.vertices]

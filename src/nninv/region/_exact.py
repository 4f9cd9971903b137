"""Exact decision regions: the linear regions of a piecewise-linear net, cut by the output set.

Depth-first over a binary tree of polytopes in the unit cube of the box. A
polytope carries its vertices (qhull), so the sign of a neuron's pre-activation
over it is read exactly off the vertices: stable neurons are fixed all at once,
the first unstable one splits the polytope along its hyperplane, and each child
gets a strictly interior point without an LP (:func:`._geom.split_point`). Before
splitting, interval bounds propagated from the exact pre-activation ranges prune
polytopes wholly outside the output set, and keep whole those wholly inside.
Where the network is affine on a polytope, its intersection with each part of the
output set (made disjoint from the earlier parts) is one answer polytope.
"""

from __future__ import annotations

__all__ = ["Piece", "enumerate_region"]

import time
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from ..errors import NNInvError
from ._geom import TOL, estimate_volume, prune, split_point, vertices, volume
from ._net import PLNet


class _Progress(Protocol):
    """What the enumeration needs of a progress bar (tqdm has it)."""

    def update(self, n: int = 1) -> object: ...


@dataclass
class Piece:
    """A polytope of the answer in unit-cube coordinates, with vertices and volume."""

    A: np.ndarray
    b: np.ndarray
    V: np.ndarray
    volume: float  # unit-cube volume
    part: int


@dataclass
class Enumeration:
    pieces: list[Piece]
    status: str  # "complete", "region_limit", "time_limit"
    cells: int  # polytopes visited
    linear_regions: int  # polytopes on which the net is affine (reached the output)
    pruned_out: int
    kept_inside: int
    extra: dict = field(default_factory=dict)


def _ibp_rows(
    net: PLNet, layer: int, lo: np.ndarray, hi: np.ndarray, G: np.ndarray, g: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Interval bounds of ``G y + g`` given pre-activations of ``layer`` in ``[lo, hi]``."""
    L = len(net.weights)
    for i in range(layer, L - 1):
        a = net.slopes[i]
        lo, hi = np.where(lo >= 0, lo, a * lo), np.where(hi >= 0, hi, a * hi)
        W = G @ net.weights[-1] if i == L - 2 else net.weights[i + 1]
        c = G @ net.biases[-1] + g if i == L - 2 else net.biases[i + 1]
        mid, rad = (lo + hi) / 2, (hi - lo) / 2
        m, r = W @ mid + c, np.abs(W) @ rad
        lo, hi = m - r, m + r
    return lo, hi


def _cut(
    A: np.ndarray, b: np.ndarray, V: np.ndarray, G: np.ndarray, g: np.ndarray
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """``{A u <= b} ∩ {G u <= g}`` as ``[(A, b, V)]``, or ``[]`` if it has no interior."""
    vals = V @ G.T - g
    if np.any(vals.min(axis=0) >= -TOL):
        return []  # every vertex violates (or meets) some row
    keep = vals.max(axis=0) > TOL  # rows that cut
    if not keep.any():
        return [(A, b, V)]
    A2, b2 = np.vstack([A, G[keep]]), np.concatenate([b, g[keep]])
    ok = vals[:, keep].max(axis=1) < -TOL
    inside = 0.5 * (V.mean(axis=0) + V[ok].mean(axis=0)) if ok.any() else None
    V2 = vertices(A2, b2, inside)
    return [] if V2 is None else [(*prune(A2, b2, V2), V2)]


def _minus(
    A: np.ndarray, b: np.ndarray, V: np.ndarray, G: np.ndarray, g: np.ndarray
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """``{A u <= b} minus {G u <= g}`` as disjoint polytopes (closures)."""
    out = []
    accA, accb, accV = A, b, V
    for r in range(G.shape[0]):
        # Points violating row r and meeting rows before it.
        for piece in _cut(accA, accb, accV, -G[r : r + 1], -g[r : r + 1]):
            out.append(piece)
        nxt = _cut(accA, accb, accV, G[r : r + 1], g[r : r + 1])
        if not nxt:
            break
        accA, accb, accV = nxt[0]
    return out


def enumerate_region(
    net: PLNet,
    parts: list[tuple[np.ndarray, np.ndarray]],
    *,
    max_regions: int,
    time_limit: float,
    root: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
    progress: _Progress | None = None,
) -> Enumeration:
    """Every polytope of the region ``{u : net(u) in union of parts}`` in the unit cube.

    ``parts`` are ``(A, b)`` on the outputs. Polytopes of different parts are made
    disjoint (part ``j`` minus parts ``< j``), so the volumes add up. ``root``
    ``(A, b, V)`` restricts the search to a polytope of the cube.
    """
    t0 = time.perf_counter()
    d = net.d
    L = len(net.weights)
    corners = _corners(d)
    out = Enumeration([], "complete", 0, 0, 0, 0)
    # (A, b, V, layer, first unsettled neuron, M, m, slopes of settled neurons)
    n0 = net.weights[0].shape[0]
    A0, b0, V0 = root if root is not None else (np.zeros((0, d)), np.zeros(0), corners)
    start = (
        A0,
        b0,
        V0,
        0,
        0,
        net.weights[0],
        net.biases[0],
        np.ones(n0),
    )
    stack = [start]
    while stack:
        if time.perf_counter() - t0 > time_limit:
            out.status = "time_limit"
            break
        if out.linear_regions + out.kept_inside >= max_regions:
            out.status = "region_limit"
            break
        A, b, V, layer, j, M, m, D = stack.pop()
        out.cells += 1
        if progress is not None:
            progress.update(1)
        while True:
            if layer == L - 1:
                _emit(out, net, parts, A, b, V, M, m)
                break
            Z = V @ M.T + m  # pre-activations of `layer` at the vertices
            zlo, zhi = Z.min(axis=0), Z.max(axis=0)
            fate, part = _fate(net, layer, zlo, zhi, parts)
            if fate == "out":
                out.pruned_out += 1
                break
            if fate == "in":
                out.kept_inside += 1
                out.pieces.append(Piece(A, b, V, _volume(A, b, V), part))
                break
            tol = TOL * (1.0 + np.abs(Z).max())
            n = M.shape[0]
            rest = np.arange(j, n)
            D = D.copy()
            D[rest[zlo[rest] >= -tol]] = 1.0
            D[rest[zhi[rest] <= tol]] = net.slopes[layer]
            split = rest[(zlo[rest] < -tol) & (zhi[rest] > tol)]
            if split.size == 0:
                # The layer is settled: compose the next pre-activations.
                W1, c1 = net.weights[layer + 1], net.biases[layer + 1]
                M, m = W1 @ (D[:, None] * M), W1 @ (D * m) + c1
                layer, j = layer + 1, 0
                D = np.ones(M.shape[0]) if layer < L - 1 else D
                continue
            k = int(split[0])
            z = Z[:, k]
            for sign in (-1.0, 1.0):
                # sign > 0: the side z_k >= 0 (-M_k u <= m_k); sign < 0: z_k <= 0.
                A2 = np.vstack([A, -sign * M[k : k + 1]])
                b2 = np.concatenate([b, [sign * m[k]]])
                V2 = vertices(A2, b2, split_point(V, z, sign))
                if V2 is None:
                    continue
                A2, b2 = prune(A2, b2, V2)
                D2 = D.copy()
                D2[k] = 1.0 if sign > 0 else net.slopes[layer]
                stack.append((A2, b2, V2, layer, k + 1, M, m, D2))
            break
    return out


_RNG = np.random.default_rng(0)

#: Most inputs the exact enumeration takes: it starts from the box's ``2**d`` corners.
MAX_INPUTS = 16


def _corners(d: int) -> np.ndarray:
    if d > MAX_INPUTS:
        raise NNInvError(
            f"mode='exact' enumerates polytopes by their vertices, starting from the box's "
            f"2^{d} corners; {d} inputs is above its limit of {MAX_INPUTS}: use mode='under' "
            "or mode='over'"
        )
    return ((np.arange(2**d)[:, None] >> np.arange(d)) & 1).astype(np.float64)


def _volume(A: np.ndarray, b: np.ndarray, V: np.ndarray) -> float:
    vol = volume(V)
    if vol != vol:  # NaN: too many dimensions for qhull
        d = V.shape[1]
        Bx = np.vstack([np.eye(d), -np.eye(d)])
        bb = np.concatenate([np.ones(d), np.zeros(d)])
        vol = estimate_volume(np.vstack([A, Bx]), np.concatenate([b, bb]), V, _RNG)
    return vol


def _fate(net: PLNet, layer: int, zlo: np.ndarray, zhi: np.ndarray, parts: list) -> tuple[str, int]:
    """("in", part) if the polytope maps inside a part, ("out", -1) if outside all."""
    outside = True
    for i, (G, g) in enumerate(parts):
        if G.shape[0] == 0:
            return "in", i
        lo, hi = _ibp_rows(net, layer, zlo, zhi, G, -g)
        if np.all(hi <= 0):
            return "in", i
        if not np.any(lo > 0):
            outside = False
    return ("out" if outside else "split"), -1


def _emit(
    out: Enumeration,
    net: PLNet,
    parts: list[tuple[np.ndarray, np.ndarray]],
    A: np.ndarray,
    b: np.ndarray,
    V: np.ndarray,
    C: np.ndarray,
    e: np.ndarray,
) -> None:
    """The affine piece ``y = C u + e`` on ``(A, b, V)``, cut by each part."""
    out.linear_regions += 1
    done: list[tuple[np.ndarray, np.ndarray]] = []
    for i, (G, g) in enumerate(parts):
        Gu, gu = G @ C, g - G @ e  # G y <= g  as  Gu u <= gu
        pieces = _cut(A, b, V, Gu, gu) if Gu.shape[0] else [(A, b, V)]
        for Gp, gp in done:
            pieces = [q for p in pieces for q in _minus(*p, Gp, gp)]
        for A2, b2, V2 in pieces:
            vol = _volume(A2, b2, V2)
            if vol > 0:
                out.pieces.append(Piece(A2, b2, V2, vol, i))
        done.append((Gu, gu))

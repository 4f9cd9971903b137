"""Mixed-integer encodings of piecewise-linear networks for exact distance queries.

A ReLU or leaky-ReLU network ``f(x) = W_L s(... s(W_1 x + b_1)) + b_L`` is
read into a :class:`PLNet` of dense float64 layers. Given bounds
``l <= z <= u`` on every pre-activation over an input box (from
:mod:`nninv.geometry._bounds`), a stable neuron is linear (no binary
variable); an unstable one (``l < 0 < u``) ``h = max(z, a z)`` with slope
``a`` in ``[0, 1)`` gets one binary ``delta`` and the big-M constraints

    h >= z,  h >= a z,  h <= z - (1 - a) l (1 - delta),  h <= a z + (1 - a) u delta,

which are exact for ``delta`` in ``{0, 1}`` and whose relaxation for ``delta``
in ``[0, 1]`` is the triangle hull of the neuron. :func:`encode` builds the
resulting :class:`Encoding` (with class constraints and a distance objective
as asked), :func:`monotone_neurons` says which binaries the class constraints
never need, and :func:`start_point` maps an input to a feasible point of the
encoding; :mod:`nninv.geometry._highs` solves it.

References
----------
Tjeng, Xiao & Tedrake (2019), "Evaluating robustness of neural networks with
mixed integer programming", ICLR.
"""

from __future__ import annotations

__all__ = [
    "Encoding",
    "PLNet",
    "encode",
    "monotone_neurons",
    "start_point",
]

from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp
import torch
from scipy.optimize import Bounds, LinearConstraint

from ..errors import NNInvError
from ..model.chain import Affine, Step


@dataclass
class PLNet:
    """Dense layers ``(W_k, b_k)`` with the slope of the activation after each but the last."""

    Ws: list[np.ndarray]
    bs: list[np.ndarray]
    slopes: list[float]

    @property
    def n_in(self) -> int:
        return int(self.Ws[0].shape[1])

    @property
    def hidden(self) -> list[int]:
        return [int(W.shape[0]) for W in self.Ws[:-1]]

    def forward(self, x: np.ndarray) -> np.ndarray:
        h = x
        for W, b, a in zip(self.Ws[:-1], self.bs[:-1], self.slopes):
            z = h @ W.T + b
            h = np.where(z >= 0, z, a * z)
        return h @ self.Ws[-1].T + self.bs[-1]

    @classmethod
    def from_steps(cls, steps: list[Step], n_in: int, slope_of) -> PLNet:  # type: ignore[no-untyped-def]
        """Compose the chain's steps into layers; ``slope_of(step)`` gives a PL slope."""
        Ws: list[np.ndarray] = []
        bs: list[np.ndarray] = []
        slopes: list[float] = []
        W = np.eye(n_in)
        b = np.zeros(n_in)
        for step in steps:
            if isinstance(step, Affine):
                A, c = step.matrix(torch.float64)
                A, c = A.numpy(), c.numpy()
                W, b = A @ W, A @ b + c
                continue
            a = slope_of(step)
            if a is None or not 0.0 <= a < 1.0:
                raise NNInvError(f"{step.label()} is not a ReLU or leaky ReLU with slope in [0, 1)")
            Ws.append(W)
            bs.append(b)
            slopes.append(float(a))
            W, b = np.eye(W.shape[0]), np.zeros(W.shape[0])
        Ws.append(W)
        bs.append(b)
        return cls(Ws, bs, slopes)


def _act(z: np.ndarray, a: float) -> np.ndarray:
    return np.where(z >= 0, z, a * z)


def monotone_neurons(net: PLNet, label: int, rivals: list[int] | None = None) -> np.ndarray:
    """Neurons of the last hidden layer whose binary the class constraints never need.

    The constraints ``z_label - z_j >= margin`` read ``sum_k V[j, k] h_k + ... >= margin``
    with ``V = W_L[label] - W_L[j]``. A neuron with ``V[j, k] <= 0`` for every
    rival ``j`` only helps the class by being smaller, and ``h = max(z, a z)`` is
    convex, so the relaxation ``h >= z, h >= a z`` is exact for it: any point of
    the relaxation stays feasible, with the same input and objective, when ``h``
    is lowered to ``max(z, a z)`` (and ``delta`` set to its sign). Its binary can
    be made continuous and its bounds need no tightening (Fischetti & Jo 2018
    make the same observation for ReLUs whose output is only penalised). Returns
    a boolean mask over the last hidden layer.

    References
    ----------
    Fischetti & Jo (2018), "Deep neural networks and mixed integer linear
    optimization", Constraints 23.
    """
    WL = net.Ws[-1]
    rivals = [j for j in range(WL.shape[0]) if j != label] if rivals is None else list(rivals)
    if not rivals:
        return np.ones(WL.shape[1], bool)
    return np.all(WL[label][None, :] - WL[rivals] <= 0, axis=0)


@dataclass
class Encoding:
    """A MILP ``min c.v`` s.t. ``lb <= A v <= ub``, ``bounds``, ``integrality``."""

    c: np.ndarray
    A: sp.csr_matrix
    lb: np.ndarray
    ub: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    integrality: np.ndarray
    n_in: int
    h_offsets: list[int]
    delta_index: list[tuple[np.ndarray, np.ndarray]]  # per layer: (neurons, variable indices)
    info: dict = field(default_factory=dict)

    def constraints(self) -> LinearConstraint:
        return LinearConstraint(self.A, self.lb, self.ub)

    def bounds(self) -> Bounds:
        return Bounds(self.lower, self.upper)


class _Rows:
    """Collects sparse constraint rows ``lb <= sum(parts) <= ub``."""

    def __init__(self) -> None:
        self.r: list[np.ndarray] = []
        self.c: list[np.ndarray] = []
        self.v: list[np.ndarray] = []
        self.lb: list[np.ndarray] = []
        self.ub: list[np.ndarray] = []
        self.m = 0

    def add(self, parts: list, lb: np.ndarray, ub: np.ndarray) -> None:
        k = len(lb)
        if k == 0:
            return
        for off, M in parts:
            if isinstance(M, tuple):  # one entry per row: (columns, values)
                cols, vals = M
                self.r.append(self.m + np.arange(k))
                self.c.append(np.asarray(cols))
                self.v.append(np.broadcast_to(np.asarray(vals, float), (k,)).copy())
            else:
                rr, cc = np.nonzero(M)
                self.r.append(self.m + rr)
                self.c.append(off + cc)
                self.v.append(M[rr, cc])
        self.lb.append(np.asarray(lb, float))
        self.ub.append(np.asarray(ub, float))
        self.m += k

    def build(self, nvar: int) -> tuple[sp.csr_matrix, np.ndarray, np.ndarray]:
        if not self.r:
            return sp.csr_matrix((0, nvar)), np.zeros(0), np.zeros(0)
        A = sp.csr_matrix(
            (np.concatenate(self.v), (np.concatenate(self.r), np.concatenate(self.c))),
            shape=(self.m, nvar),
        )
        return A, np.concatenate(self.lb), np.concatenate(self.ub)


def encode(
    net: PLNet,
    bounds: list[tuple[np.ndarray, np.ndarray]],
    lo: np.ndarray,
    hi: np.ndarray,
    *,
    layers: int | None = None,
    x0: np.ndarray | None = None,
    norm: str | None = None,
    label: int | None = None,
    margin: float = 0.0,
    max_distance: float | None = None,
    relax: bool = False,
    rivals: list[int] | None = None,
    monotone: bool = False,
    margin_objective: bool = False,
) -> Encoding:
    """Encode the first ``layers`` hidden layers (all by default) over ``lo <= x <= hi``.

    Only unstable neurons get variables (``h`` and a binary ``delta``); a
    stable neuron is an affine expression in ``x`` and the earlier unstable
    ``h``, substituted where it is used, so the model has no equality rows.
    With ``label``, adds ``z_label - z_j >= margin`` for the output logits;
    with ``norm`` (``"linf"`` or ``"l1"``) and ``x0``, the objective
    ``|x - x0|``. ``relax=True`` makes the binaries continuous (the LP
    relaxation). ``info["z_next"]`` holds the expression ``(A, a0)`` of the
    pre-activations of layer ``layers`` (for bound tightening).

    ``rivals`` restricts the class constraints to those output classes (all
    others by default): a relaxation, whose optimum is checked against the
    others afterwards. ``monotone=True`` makes the binaries of
    :func:`monotone_neurons` (for these rivals) continuous: exact for the
    inputs, although ``h`` and ``delta`` of those neurons may then be off.

    ``margin_objective=True`` (with ``label``, without ``norm``) turns the class
    constraints into the objective: a last, free variable ``s`` with
    ``z_j - z_label <= s`` for each rival, minimised; its optimum is the largest
    rival's lead at the best input, and the class is reachable in the box
    (by ``margin``) exactly when it is ``<= -margin``.
    """
    L = len(net.slopes) if layers is None else layers
    n = net.n_in
    lower, upper, integ = [lo.copy()], [hi.copy()], [np.zeros(n)]
    nvar = n
    unst, h_cols, d_cols, z_cols = [], [], [], []
    for k in range(L):
        l, u = bounds[k]
        a = net.slopes[k]
        J = np.nonzero((l < 0) & (u > 0))[0]
        unst.append(J)
        h_cols.append(nvar + np.arange(J.size))
        lower.append(_act(l[J], a))
        upper.append(_act(u[J], a))
        integ.append(np.zeros(J.size))
        nvar += J.size
        # the pre-activation of each unstable neuron gets a variable too: one dense
        # row defines it, and its big-M rows stay sparse
        z_cols.append(nvar + np.arange(J.size))
        lower.append(l[J])
        upper.append(u[J])
        integ.append(np.zeros(J.size))
        nvar += J.size
    free = None
    if monotone and label is not None and L == len(net.slopes) and L:
        free = monotone_neurons(net, label, rivals)
    for k in range(L):
        J = unst[k]
        d_cols.append(nvar + np.arange(J.size))
        lower.append(np.zeros(J.size))
        upper.append(np.ones(J.size))
        kind = np.full(J.size, 0.0 if relax else 1.0)
        if free is not None and k == L - 1:
            kind[free[J]] = 0.0
        integ.append(kind)
        nvar += J.size
    extra = 0 if norm is None else (1 if norm == "linf" else n)
    if margin_objective and (label is None or norm is not None):
        raise AssertionError("margin_objective needs a label and no norm")
    s_col = nvar + extra
    total = nvar + extra + int(margin_objective)
    rows = _Rows()
    z_def: list = []
    # H (m, total), h0 (m,): the current layer's output as an affine expression
    H = np.zeros((n, total))
    H[:, :n] = np.eye(n)
    h0 = np.zeros(n)
    for k in range(L):
        W, b, a = net.Ws[k], net.bs[k], net.slopes[k]
        l, u = bounds[k]
        Z, z0 = W @ H, W @ h0 + b
        J, hc, dc, zc = unst[k], h_cols[k], d_cols[k], z_cols[k]
        if J.size:
            ZJ, zJ, lJ, uJ = Z[J], z0[J], l[J], u[J]
            ninf = np.full(J.size, -np.inf)
            M = ZJ.copy()
            M[np.arange(J.size), zc] -= 1.0
            rows.add([(0, M)], -zJ, -zJ)  # z = W h + b
            z_def.append((k, ZJ.copy(), zJ.copy(), hc, dc, a))
            rows.add([(None, (zc, 1.0)), (None, (hc, -1.0))], ninf, np.zeros(J.size))  # h >= z
            if a > 0:
                rows.add([(None, (zc, a)), (None, (hc, -1.0))], ninf, np.zeros(J.size))  # h >= a z
            rows.add(  # h <= z - (1 - a) l (1 - delta)
                [(None, (zc, -1.0)), (None, (hc, 1.0)), (None, (dc, -(1 - a) * lJ))],
                ninf,
                -(1 - a) * lJ,
            )
            rows.add(  # h <= a z + (1 - a) u delta
                [(None, (zc, -a)), (None, (hc, 1.0)), (None, (dc, -(1 - a) * uJ))],
                ninf,
                np.zeros(J.size),
            )
        on = l >= 0
        slope = np.where(on, 1.0, a)
        H, h0 = slope[:, None] * Z, slope * z0
        if J.size:
            H[J], h0[J] = 0.0, 0.0
            H[J, hc] = 1.0
    n_bin = int(sum(J.size for J in unst))
    if free is not None and not relax:
        n_bin -= int(free[unst[L - 1]].sum())
    info: dict = {"n_binaries": n_bin, "z_cols": z_cols, "z_def": z_def}
    if L < len(net.slopes):
        info["z_next"] = (net.Ws[L] @ H, net.Ws[L] @ h0 + net.bs[L])
    cost = np.zeros(total)
    if label is not None:
        assert L == len(net.slopes)
        WL, bL = net.Ws[-1], net.bs[-1]
        Z, z0 = WL @ H, WL @ h0 + bL
        others = [j for j in range(WL.shape[0]) if j != label]
        if rivals is not None:
            others = [j for j in others if j in set(rivals)]
        if margin_objective:
            lead = Z[others] - Z[label]
            lead[:, s_col] = -1.0
            rows.add([(0, lead)], np.full(len(others), -np.inf), z0[label] - z0[others])
            lower.append(np.array([-np.inf]))
            upper.append(np.array([np.inf]))
            integ.append(np.zeros(1))
            cost[s_col] = 1.0
        else:
            rows.add(
                [(0, Z[others] - Z[label])],
                np.full(len(others), -np.inf),
                z0[label] - z0[others] - margin,
            )
    if norm is not None:
        assert x0 is not None
        # |x_i - x0_i| as two rows, each only where the box lets x_i pass x0_i on that
        # side: on MNIST most pixels sit at 0, where x_i >= x0_i - t always holds
        up = np.nonzero(hi > x0)[0]
        dn = np.nonzero(lo < x0)[0]
        if norm == "linf":
            t = nvar
            lower.append(np.zeros(1))
            upper.append(np.array([np.inf if max_distance is None else max_distance]))
            integ.append(np.zeros(1))
            cost[t] = 1.0
            ta, tb = np.full(up.size, t), np.full(dn.size, t)
            rows.add([(None, (up, 1.0)), (None, (ta, -1.0))], np.full(up.size, -np.inf), x0[up])
            rows.add([(None, (dn, -1.0)), (None, (tb, -1.0))], np.full(dn.size, -np.inf), -x0[dn])
        elif norm == "l1":
            a0 = nvar
            lower.append(np.zeros(n))
            upper.append(np.full(n, np.inf))
            integ.append(np.zeros(n))
            cost[a0:] = 1.0
            rows.add(
                [(None, (up, 1.0)), (None, (a0 + up, -1.0))], np.full(up.size, -np.inf), x0[up]
            )
            rows.add(
                [(None, (dn, -1.0)), (None, (a0 + dn, -1.0))], np.full(dn.size, -np.inf), -x0[dn]
            )
            if max_distance is not None:
                rows.add([(a0, np.ones((1, n)))], np.array([-np.inf]), np.array([max_distance]))
        else:
            raise AssertionError(norm)
    A, lb, ub = rows.build(total)
    return Encoding(
        cost,
        A,
        lb,
        ub,
        np.concatenate(lower),
        np.concatenate(upper),
        np.concatenate(integ),
        n,
        [int(c[0]) if c.size else -1 for c in h_cols],
        list(zip(unst, d_cols)),
        info,
    )


def start_point(net: PLNet, enc: Encoding, x: np.ndarray, x0: np.ndarray, norm: str) -> np.ndarray:
    """The encoding's variables at input ``x`` (a feasible start for the MILP)."""
    v = np.zeros(enc.c.size)
    n = x.size
    v[:n] = x
    h = x
    zc_all = enc.info["z_cols"]
    for k, (W, b, a) in enumerate(zip(net.Ws[:-1], net.bs[:-1], net.slopes)):
        if k >= len(zc_all):
            break
        z = W @ h + b
        J, dc = enc.delta_index[k]
        zc = zc_all[k]
        v[zc] = z[J]
        v[zc - J.size] = _act(z[J], a)
        v[dc] = z[J] >= 0
        h = _act(z, a)
    if norm == "linf":
        v[-1] = np.abs(x - x0).max()
    elif norm == "l1":
        v[-n:] = np.abs(x - x0)
    return np.clip(v, enc.lower, enc.upper)

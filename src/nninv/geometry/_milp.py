"""Mixed-integer encodings of piecewise-linear networks for exact distance queries.

A ReLU or leaky-ReLU network ``f(x) = W_L s(... s(W_1 x + b_1)) + b_L`` is
read into a :class:`PLNet` of dense float64 layers. For inputs in a box, every
pre-activation ``z`` has bounds ``l <= z <= u``: first by interval arithmetic,
then, for neurons still unstable (``l < 0 < u``) in later layers, by linear
programs over the LP relaxation of the layers before (Tjeng, Xiao & Tedrake
2019). A stable neuron is linear (no binary variable); an unstable one
``h = max(z, a z)`` with slope ``a`` in ``[0, 1)`` gets one binary ``delta``
and the big-M constraints

    h >= z,  h >= a z,  h <= z - (1 - a) l (1 - delta),  h <= a z + (1 - a) u delta,

which are exact for ``delta`` in ``{0, 1}`` and whose relaxation for ``delta``
in ``[0, 1]`` is the triangle hull of the neuron. :func:`tighten` shrinks the
bounds further by LPs over the relaxation of the whole problem, and
:func:`ideal_cuts` adds the cuts of the neuron's convex hull. Problems are
solved with HiGHS: through highspy when it is installed (warm-started LPs,
more options), otherwise through :func:`scipy.optimize.milp` and
:func:`scipy.optimize.linprog`.

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
    "ideal_cuts",
    "interval_bounds",
    "monotone_neurons",
    "region_lp",
    "region_polytope",
    "solve_margin",
    "solve_milp",
    "start_point",
    "tighten",
]

import math
import time
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp
import torch
from scipy.optimize import Bounds, LinearConstraint, linprog

from .._errors import NNInvError
from ..model._chain import Affine, Step
from ._polytope import LP_OPTIONS


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


def interval_bounds(
    net: PLNet, lo: np.ndarray, hi: np.ndarray, start: int = 0, known: list | None = None
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Pre-activation bounds ``(l, u)`` of every hidden layer for ``lo <= x <= hi``.

    With ``known`` (bounds of layers ``< start``), propagation restarts at ``start``.
    """
    out: list[tuple[np.ndarray, np.ndarray]] = list(known[:start]) if known else []
    if start == 0:
        hl, hu = lo, hi
    else:
        l, u = out[start - 1]
        a = net.slopes[start - 1]
        hl, hu = _act(l, a), _act(u, a)
    for k in range(start, len(net.slopes)):
        W, b = net.Ws[k], net.bs[k]
        Wp, Wn = np.clip(W, 0, None), np.clip(W, None, 0)
        l = Wp @ hl + Wn @ hu + b
        u = Wp @ hu + Wn @ hl + b
        out.append((l, u))
        a = net.slopes[k]
        hl, hu = _act(l, a), _act(u, a)
    return out


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


def tighten(
    net: PLNet,
    bounds: list[tuple[np.ndarray, np.ndarray]],
    lo: np.ndarray,
    hi: np.ndarray,
    label: int | None,
    deadline: float,
    rounds: int = 4,
    cuts: bool = False,
    skip: np.ndarray | None = None,
) -> tuple[list[tuple[np.ndarray, np.ndarray]], int, bool]:
    """Tighten the bounds of unstable neurons by LPs over the relaxation of the whole problem.

    The bounds only need to hold where the optimum can be: inputs in the box
    whose class is ``label``. Minimising and maximising each unstable
    pre-activation over the LP relaxation of that set (the class constraints
    included) makes most neurons stable, which removes their binaries and
    tightens the big-M constants of the rest. Rounds repeat while neurons
    become stable, until ``deadline``. With highspy installed the LPs are
    re-solved from the previous basis (milliseconds each); otherwise each is
    solved from scratch with :func:`scipy.optimize.linprog`.

    With ``cuts=True`` each round first strengthens the relaxation with the
    cuts of :func:`ideal_cuts`, so that more neurons become stable.

    ``skip`` (a mask over the last hidden layer, e.g. :func:`monotone_neurons`)
    names neurons whose bounds are not worth two LPs; they keep their bounds.

    Returns the bounds, the number of LPs solved, and whether the relaxation
    was infeasible (then no input of the class lies in the box).
    """
    bounds = [(l.copy(), u.copy()) for l, u in bounds]
    n_lp = 0
    for _ in range(rounds):
        before = sum(int(((l < 0) & (u > 0)).sum()) for l, u in bounds)
        if before == 0:
            break
        enc = encode(net, bounds, lo, hi, label=label, relax=True)
        extra = None
        if cuts:
            C, ub, _ = ideal_cuts(enc, deadline, max_rounds=8)
            extra = (C, ub) if C.shape[0] else None
        solve = _lp_solver(enc, extra)
        for k, zc in enumerate(enc.info["z_cols"]):
            J = enc.delta_index[k][0]
            l, u = bounds[k]
            for jj, j in enumerate(J):
                if skip is not None and k == len(net.slopes) - 1 and skip[j]:
                    continue
                for sign in (1.0, -1.0):
                    if time.perf_counter() > deadline:
                        return bounds, n_lp, False
                    status, val = solve(int(zc[jj]), sign)
                    n_lp += 1
                    if status == "infeasible":
                        return bounds, n_lp, True
                    if status != "optimal":
                        continue
                    # a hair of slack: the LP is solved to a tolerance, the bound must hold
                    slack = 1e-7 * (1 + abs(val))
                    if sign > 0:
                        l[j] = max(l[j], val - slack)
                    else:
                        u[j] = min(u[j], val + slack)
            if k + 1 < len(net.slopes):
                new = interval_bounds(net, lo, hi, start=k + 1, known=bounds)
                bounds = bounds[: k + 1] + [
                    (np.maximum(l0, l1), np.minimum(u0, u1))
                    for (l0, u0), (l1, u1) in zip(bounds[k + 1 :], new[k + 1 :])
                ]
        after = sum(int(((l < 0) & (u > 0)).sum()) for l, u in bounds)
        if after == before:
            break
    return bounds, n_lp, False


def _lp_solver(enc: Encoding, extra=None):  # type: ignore[no-untyped-def]
    """``solve(col, sign) -> (status, sign * min(sign * v[col]))`` over the encoding's LP,
    with ``extra = (C, ub)`` rows ``C v <= ub`` added."""
    if extra is not None:
        C, ub = extra
        enc = Encoding(
            enc.c,
            sp.vstack([enc.A, C]).tocsr(),
            np.concatenate([enc.lb, np.full(C.shape[0], -np.inf)]),
            np.concatenate([enc.ub, ub]),
            enc.lower,
            enc.upper,
            enc.integrality,
            enc.n_in,
            enc.h_offsets,
            enc.delta_index,
            enc.info,
        )
    try:
        import highspy
    except ImportError:
        highspy = None
    if highspy is not None:
        h = _quiet_highs(highspy)
        h.setOptionValue("primal_feasibility_tolerance", 1e-9)
        h.setOptionValue("dual_feasibility_tolerance", 1e-9)
        A = enc.A.tocsc()
        lp = highspy.HighsLp()
        lp.num_col_, lp.num_row_ = enc.c.size, A.shape[0]
        lp.col_cost_ = np.zeros(enc.c.size)
        lp.col_lower_, lp.col_upper_ = enc.lower, enc.upper
        lp.row_lower_, lp.row_upper_ = enc.lb, enc.ub
        lp.a_matrix_.format_ = highspy.MatrixFormat.kColwise
        lp.a_matrix_.start_, lp.a_matrix_.index_, lp.a_matrix_.value_ = A.indptr, A.indices, A.data
        h.passModel(lp)
        prev = [None]

        def solve_hs(col: int, sign: float) -> tuple[str, float]:
            if prev[0] is not None and prev[0] != col:
                h.changeColCost(prev[0], 0.0)
            h.changeColCost(col, sign)
            prev[0] = col
            h.run()
            st = h.getModelStatus()
            if st == highspy.HighsModelStatus.kOptimal:
                return "optimal", sign * h.getInfo().objective_function_value
            if st == highspy.HighsModelStatus.kInfeasible:
                return "infeasible", math.nan
            return "other", math.nan

        return solve_hs
    A_ub, b_ub, A_eq, b_eq = _split(enc)
    kw = {"bounds": list(zip(enc.lower, enc.upper)), "method": "highs", "options": LP_OPTIONS}

    def solve_scipy(col: int, sign: float) -> tuple[str, float]:
        c = np.zeros(enc.c.size)
        c[col] = sign
        res = linprog(c, A_ub=A_ub, b_ub=b_ub, A_eq=A_eq, b_eq=b_eq, **kw)
        if res.status == 0:
            return "optimal", sign * res.fun
        return ("infeasible" if res.status == 2 else "other"), math.nan

    return solve_scipy


def ideal_cuts(
    enc: Encoding, deadline: float, max_rounds: int = 30
) -> tuple[sp.csr_matrix, np.ndarray, int]:
    """Cutting planes from the ideal formulation of each unstable ReLU (Anderson et al. 2020).

    For ``y = max(0, a.v + a0)`` with ``v`` in the box of its variable bounds
    ``[L, U]`` and the binary ``delta``, every subset ``I`` of the inputs gives
    the valid inequality

        y <= sum_{i in I} a_i (v_i - Lb_i (1 - delta)) + (a0 + sum_{i not in I} a_i Ub_i) delta,

    with ``Lb_i, Ub_i`` the bounds where ``a_i v_i`` is smallest and largest;
    together they describe the convex hull of the neuron. The most violated
    one at an LP point is found coordinate by coordinate. Rounds of LP
    relaxation and separation repeat until nothing is violated, ``max_rounds``
    or ``deadline``; the cuts are returned as rows ``A v <= ub`` for the MILP.

    References
    ----------
    Anderson, Huchette, Ma, Tjandraatmadja & Vielma (2020), "Strong mixed-integer
    programming formulations for trained neural networks", Math. Programming 183.
    """
    defs = [d for d in enc.info.get("z_def", []) if d[5] == 0.0 and d[1].shape[0]]
    total = enc.c.size
    empty = (sp.csr_matrix((0, total)), np.zeros(0), 0)
    if not defs:
        return empty
    cut_rows: list[sp.csr_matrix] = []
    cut_ub: list[np.ndarray] = []
    solve = _relaxation(enc)
    rounds = 0
    for rounds in range(1, max_rounds + 1):  # noqa: B007
        if time.perf_counter() > deadline:
            break
        v = solve(None)
        if v is None:
            break
        found = 0
        for _, ZJ, zJ, hc, dc, _a in defs:
            cols = np.nonzero(np.any(ZJ != 0, axis=0))[0]
            A = ZJ[:, cols]
            lo, hi = enc.lower[cols], enc.upper[cols]
            Lb = np.where(A >= 0, lo, hi)
            Ub = np.where(A >= 0, hi, lo)
            d = v[dc][:, None]
            t_in = A * (v[cols][None, :] - Lb * (1 - d))
            t_out = A * Ub * d
            inI = t_in < t_out
            rhs = np.where(inI, t_in, t_out).sum(1) + zJ * d[:, 0]
            viol = v[hc] - rhs
            bad = np.nonzero(viol > 1e-6 * (1 + np.abs(v[hc])))[0]
            if bad.size == 0:
                continue
            found += bad.size
            for j in bad:
                I = inI[j]
                coef_d = -(np.sum(A[j, I] * Lb[j, I]) + zJ[j] + np.sum(A[j, ~I] * Ub[j, ~I]))
                idx = np.concatenate([cols[I], [hc[j], dc[j]]])
                val = np.concatenate([-A[j, I], [1.0, coef_d]])
                cut_rows.append(
                    sp.csr_matrix((val, (np.zeros(idx.size, int), idx)), shape=(1, total))
                )
                cut_ub.append(np.array([-np.sum(A[j, I] * Lb[j, I])]))
        if not found:
            break
        new = sp.vstack(cut_rows[-found:]).tocsr()
        solve((new, np.concatenate(cut_ub[-found:])))
    if not cut_rows:
        return empty
    C, ub = sp.vstack(cut_rows).tocsr(), np.concatenate(cut_ub)
    # keep the cuts that bind at the last LP point; the others only slow the MILP's LPs
    v = solve(None)
    if v is not None:
        keep = C @ v >= ub - 1e-7 * (1 + np.abs(ub))
        C, ub = C[keep], ub[keep]
    return C, ub, rounds


def _relaxation(enc: Encoding):  # type: ignore[no-untyped-def]
    """``solve(new_rows)``: add rows ``A v <= ub`` (or None) and return the LP optimum ``v``."""
    try:
        import highspy
    except ImportError:
        highspy = None
    if highspy is not None:
        h = _quiet_highs(highspy)
        A = enc.A.tocsc()
        lp = highspy.HighsLp()
        lp.num_col_, lp.num_row_ = enc.c.size, A.shape[0]
        lp.col_cost_ = enc.c
        lp.col_lower_, lp.col_upper_ = enc.lower, enc.upper
        lp.row_lower_, lp.row_upper_ = enc.lb, enc.ub
        lp.a_matrix_.format_ = highspy.MatrixFormat.kColwise
        lp.a_matrix_.start_, lp.a_matrix_.index_, lp.a_matrix_.value_ = A.indptr, A.indices, A.data
        h.passModel(lp)

        def solve_hs(new):  # type: ignore[no-untyped-def]
            if new is not None:
                R, ub = new
                h.addRows(
                    R.shape[0],
                    np.full(R.shape[0], -highspy.kHighsInf),
                    ub,
                    R.nnz,
                    R.indptr[:-1],
                    R.indices,
                    R.data,
                )
                return None
            h.run()
            if h.getModelStatus() != highspy.HighsModelStatus.kOptimal:
                return None
            return np.asarray(h.getSolution().col_value)

        return solve_hs
    state = {"A": enc.A, "lb": enc.lb, "ub": enc.ub}

    def solve_scipy(new):  # type: ignore[no-untyped-def]
        if new is not None:
            R, ub = new
            state["A"] = sp.vstack([state["A"], R]).tocsr()
            state["lb"] = np.concatenate([state["lb"], np.full(R.shape[0], -np.inf)])
            state["ub"] = np.concatenate([state["ub"], ub])
            return None
        e = Encoding(
            enc.c,
            state["A"],
            state["lb"],
            state["ub"],
            enc.lower,
            enc.upper,
            enc.integrality,
            enc.n_in,
            [],
            [],
        )
        A_ub, b_ub, A_eq, b_eq = _split(e)
        res = linprog(
            enc.c,
            A_ub=A_ub,
            b_ub=b_ub,
            A_eq=A_eq,
            b_eq=b_eq,
            bounds=list(zip(enc.lower, enc.upper)),
            method="highs",
        )
        return res.x if res.status == 0 else None

    return solve_scipy


#: Branch-and-bound settings measured on MNIST MLPs (``benchmarks/bench_preimage.py
#: --part b``): cut separation only at the root, and pseudo-costs trusted after one
#: strong-branching probe. The node LPs carry dense rows (a whole layer's weights), so
#: each simplex iteration is costly and fewer LPs win: the mean time per query fell
#: from 8.5 to 5.8 s and the slowest from 29.9 to 21.4 s.
_SEARCH = {
    "mip_allow_cut_separation_at_nodes": False,
    "mip_pscost_minreliable": 1,
}

_NO_HEURISTICS = {
    "mip_heuristic_effort": 0.0,
    "mip_heuristic_run_rins": False,
    "mip_heuristic_run_rens": False,
    "mip_heuristic_run_root_reduced_cost": False,
    "mip_heuristic_run_feasibility_jump": False,
}


def solve_milp(
    enc: Encoding,
    extra: tuple[sp.csr_matrix, np.ndarray] | None,
    time_limit: float,
    gap: float,
    start: np.ndarray | None = None,
    heuristics: bool = True,
) -> dict:
    """Solve the MILP; returns ``status`` (0 optimal, 1 time limit, 2 infeasible, 4 other),
    ``x``, ``fun``, ``dual_bound``, ``nodes``, ``message``.

    Uses highspy when installed (presolve off, which is faster on these models
    with dense rows, the settings in ``_SEARCH``, and ``start`` as the first
    incumbent), else
    :func:`scipy.optimize.milp` (the same HiGHS, fewer options).
    ``heuristics=False`` turns off HiGHS's primal heuristics (sub-MIPs, RINS,
    RENS, feasibility jump): worth it when ``start`` is already near-optimal,
    where they spend seconds at the root on these models without improving it.
    """
    A, lb, ub = enc.A, enc.lb, enc.ub
    if extra is not None and extra[0].shape[0]:
        A = sp.vstack([A, extra[0]]).tocsr()
        lb = np.concatenate([lb, np.full(extra[0].shape[0], -np.inf)])
        ub = np.concatenate([ub, extra[1]])
    try:
        import highspy
    except ImportError:
        highspy = None
    if highspy is None:
        from scipy.optimize import milp

        res = milp(
            enc.c,
            integrality=enc.integrality,
            bounds=enc.bounds(),
            constraints=LinearConstraint(A, lb, ub),
            options={"time_limit": time_limit, "mip_rel_gap": gap, "disp": False},
        )
        dual = getattr(res, "mip_dual_bound", None)
        return {
            "status": res.status,
            "x": res.x,
            "fun": res.fun,
            "dual_bound": dual,
            "nodes": int(getattr(res, "mip_node_count", 0) or 0),
            "message": res.message,
        }
    h = _quiet_highs(highspy)
    h.setOptionValue("time_limit", float(time_limit))
    h.setOptionValue("mip_rel_gap", float(gap))
    h.setOptionValue("presolve", "off")
    for opt, val in _SEARCH.items():
        h.setOptionValue(opt, val)
    if not heuristics:
        for opt, val in _NO_HEURISTICS.items():
            h.setOptionValue(opt, val)  # options missing from older HiGHS are ignored
    _pass_milp(h, highspy, enc, A, lb, ub)
    if start is not None:
        sol = highspy.HighsSolution()
        sol.col_value = list(start)
        sol.value_valid = True
        h.setSolution(sol)
    h.run()
    st = h.getModelStatus()
    info = h.getInfo()
    M = highspy.HighsModelStatus
    x = None
    if info.primal_solution_status == 2:  # feasible
        x = np.asarray(h.getSolution().col_value)
    if st == M.kOptimal:
        status = 0
    elif st in (M.kTimeLimit, M.kIterationLimit, M.kSolutionLimit, M.kInterrupt):
        status = 1
    elif st == M.kInfeasible:
        status = 2
    else:
        status = 4
    fun = info.objective_function_value if x is not None else None
    # with every neuron stable the model is an LP, whose optimum is its own bound
    is_lp = not bool(np.any(enc.integrality))
    return {
        "status": status,
        "x": x,
        "fun": fun,
        "dual_bound": fun if is_lp and status == 0 else info.mip_dual_bound,
        "nodes": max(0, int(info.mip_node_count)),
        "message": h.modelStatusToString(st),
    }


def solve_margin(
    enc: Encoding,
    cutoff: float,
    time_limit: float,
    extra: tuple[sp.csr_matrix, np.ndarray] | None = None,
) -> dict | None:
    """Decide whether a ``margin_objective`` encoding reaches ``s < cutoff``.

    ``extra = (C, ub)`` adds rows ``C v <= ub`` (cuts).

    Branch and bound with ``cutoff`` as the objective's upper limit: a node is
    pruned as soon as its LP bound reaches it, and the search stops at the first
    input below it. Returns ``status`` (``"none"``: proven that no input reaches
    the cutoff; ``"found"``: ``x`` holds one; ``"unknown"``: time ran out),
    ``x``, ``nodes``, ``message``; None without highspy (scipy's interface has
    no cutoff).
    """
    try:
        import highspy
    except ImportError:
        return None
    h = _quiet_highs(highspy)
    h.setOptionValue("time_limit", float(max(time_limit, 1e-3)))
    h.setOptionValue("presolve", "off")
    for opt, val in {**_SEARCH, **_NO_HEURISTICS}.items():
        h.setOptionValue(opt, val)
    h.setOptionValue("objective_bound", float(cutoff))
    h.setOptionValue("mip_max_improving_sols", 1)
    A, lb, ub = enc.A, enc.lb, enc.ub
    if extra is not None and extra[0].shape[0]:
        A = sp.vstack([A, extra[0]]).tocsr()
        lb = np.concatenate([lb, np.full(extra[0].shape[0], -np.inf)])
        ub = np.concatenate([ub, extra[1]])
    _pass_milp(h, highspy, enc, A, lb, ub)
    h.run()
    st = h.getModelStatus()
    info = h.getInfo()
    M = highspy.HighsModelStatus
    x = None
    if info.primal_solution_status == 2:
        v = np.asarray(h.getSolution().col_value)
        if v[-1] < cutoff:
            x = v
    if x is not None:
        status = "found"
    elif st in (M.kInfeasible, M.kOptimal, M.kObjectiveBound):
        # with the cutoff, "infeasible", an optimum at or above it, or (for a pure LP) the
        # dual simplex's bound reaching it: no input lies below it
        status = "none"
    else:
        status = "unknown"
    return {
        "status": status,
        "x": x,
        "nodes": max(0, int(info.mip_node_count)),
        "message": h.modelStatusToString(st),
    }


def _pass_milp(h, highspy, enc: Encoding, A: sp.spmatrix, lb: np.ndarray, ub: np.ndarray) -> None:  # type: ignore[no-untyped-def]
    """Load ``min enc.c . v`` s.t. ``lb <= A v <= ub``, the encoding's bounds and
    integrality into the highspy solver ``h``."""
    Ac = A.tocsc()
    lp = highspy.HighsLp()
    lp.num_col_, lp.num_row_ = enc.c.size, Ac.shape[0]
    lp.col_cost_ = enc.c
    lp.col_lower_, lp.col_upper_ = enc.lower, enc.upper
    lp.row_lower_, lp.row_upper_ = lb, ub
    lp.a_matrix_.format_ = highspy.MatrixFormat.kColwise
    lp.a_matrix_.start_, lp.a_matrix_.index_, lp.a_matrix_.value_ = Ac.indptr, Ac.indices, Ac.data
    kinds = (highspy.HighsVarType.kContinuous, highspy.HighsVarType.kInteger)
    lp.integrality_ = [kinds[int(v)] for v in enc.integrality]
    h.passModel(lp)


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


def _quiet_highs(highspy):  # type: ignore[no-untyped-def]
    """A silent ``highspy.Highs``: the first one a process makes prints a banner from C++
    to file descriptor 1, which would land in the middle of the command line's tables."""
    import os
    import sys

    try:
        sys.stdout.flush()
        saved = os.dup(1)
    except (OSError, ValueError):
        saved = None
    try:
        if saved is not None:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 1)
            os.close(devnull)
        h = highspy.Highs()
        h.setOptionValue("output_flag", False)
    finally:
        if saved is not None:
            os.dup2(saved, 1)
            os.close(saved)
    return h


def _split(enc: Encoding):  # type: ignore[no-untyped-def]
    """Rows of an encoding as linprog's ``A_ub x <= b_ub`` and ``A_eq x = b_eq``."""
    eq = np.isfinite(enc.lb) & (enc.lb == enc.ub)
    up = np.isfinite(enc.ub) & ~eq
    dn = np.isfinite(enc.lb) & ~eq
    A = enc.A
    A_ub = sp.vstack([A[up], -A[dn]]).tocsr()
    b_ub = np.concatenate([enc.ub[up], -enc.lb[dn]])
    A_eq = A[eq] if eq.any() else None
    b_eq = enc.lb[eq] if eq.any() else None
    return (A_ub if A_ub.shape[0] else None), (b_ub if A_ub.shape[0] else None), A_eq, b_eq


def region_lp(
    net: PLNet,
    pattern: list[np.ndarray],
    bounds: list[tuple[np.ndarray, np.ndarray]],
    lo: np.ndarray,
    hi: np.ndarray,
    x0: np.ndarray,
    norm: str,
    label: int,
    margin: float,
) -> tuple[np.ndarray | None, float]:
    """The closest input in class ``label`` (by ``margin``) inside one activation region.

    ``pattern[k]`` is the boolean activity of layer ``k``. On the region the
    network is affine, so this is one LP; only unstable neurons need their
    sign constrained (the others keep it on the whole box).
    """
    n = x0.size
    G, g = region_polytope(net, pattern, bounds, label, margin)
    if norm == "linf":
        # v = (x, t): min t, |x - x0| <= t
        c = np.zeros(n + 1)
        c[-1] = 1.0
        I = sp.eye(n)
        one = sp.csr_matrix(np.ones((n, 1)))
        A = sp.vstack(
            [
                sp.hstack([sp.csr_matrix(G), sp.csr_matrix((G.shape[0], 1))]),
                sp.hstack([I, -one]),
                sp.hstack([-I, -one]),
            ]
        ).tocsr()
        b = np.concatenate([g, x0, -x0])
        bnds = list(zip(lo, hi)) + [(0, None)]
    elif norm == "l1":
        c = np.concatenate([np.zeros(n), np.ones(n)])
        I = sp.eye(n)
        A = sp.vstack(
            [
                sp.hstack([sp.csr_matrix(G), sp.csr_matrix((G.shape[0], n))]),
                sp.hstack([I, -I]),
                sp.hstack([-I, -I]),
            ]
        ).tocsr()
        b = np.concatenate([g, x0, -x0])
        bnds = list(zip(lo, hi)) + [(0, None)] * n
    else:
        raise AssertionError(norm)
    res = linprog(c, A_ub=A, b_ub=b, bounds=bnds, method="highs", options=LP_OPTIONS)
    if res.status != 0:
        return None, math.inf
    x = np.clip(res.x[:n], lo, hi)
    return x, float(res.fun)


def region_polytope(
    net: PLNet,
    pattern: list[np.ndarray],
    bounds: list[tuple[np.ndarray, np.ndarray]],
    label: int,
    margin: float,
) -> tuple[np.ndarray, np.ndarray]:
    """``G x <= g`` for one activation region intersected with the class (by ``margin``)."""
    n = net.n_in
    M, m0 = np.eye(n), np.zeros(n)
    R_rows, r_vals = [], []
    for k, (W, b, a) in enumerate(zip(net.Ws[:-1], net.bs[:-1], net.slopes)):
        Z, z0 = W @ M, W @ m0 + b
        l, u = bounds[k]
        sel = (l < 0) & (u > 0)
        sign = np.where(pattern[k], -1.0, 1.0)
        R_rows.append(sign[sel, None] * Z[sel])
        r_vals.append(-sign[sel] * z0[sel])
        D = np.where(pattern[k], 1.0, a)
        M, m0 = D[:, None] * Z, D * z0
    WL, bL = net.Ws[-1], net.bs[-1]
    Z, z0 = WL @ M, WL @ m0 + bL
    others = [j for j in range(WL.shape[0]) if j != label]
    R_rows.append(Z[others] - Z[label])
    r_vals.append(z0[label] - z0[others] - margin)
    return np.vstack(R_rows), np.concatenate(r_vals)

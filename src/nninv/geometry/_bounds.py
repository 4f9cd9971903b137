"""Bounds on the pre-activations of a piecewise-linear network over an input box.

The big-M constants of the MILP encoding (:mod:`nninv.geometry._milp`) come
from bounds ``l <= z <= u`` on every pre-activation: first by interval
arithmetic (:func:`interval_bounds`), then, for neurons still unstable
(``l < 0 < u``), by linear programs over the LP relaxation of the whole
problem (:func:`tighten`, after Tjeng, Xiao & Tedrake 2019), which make most
of them stable and shrink the constants of the rest. :func:`ideal_cuts`
strengthens that relaxation with the cuts of each neuron's convex hull
(Anderson et al. 2020). The LPs are solved with HiGHS through highspy,
warm-started from the previous basis.

These three functions are the internal API of the exact engines.

References
----------
Tjeng, Xiao & Tedrake (2019), "Evaluating robustness of neural networks with
mixed integer programming", ICLR.
Anderson, Huchette, Ma, Tjandraatmadja & Vielma (2020), "Strong mixed-integer
programming formulations for trained neural networks", Math. Programming 183.
"""

from __future__ import annotations

__all__ = ["Bounds", "ideal_cuts", "interval_bounds", "tighten"]

import math
import time
from collections.abc import Callable

import highspy
import numpy as np
import scipy.sparse as sp

from ._highs import pass_model, quiet_highs
from ._milp import Encoding, Goal, PLNet, _act, encode

Bounds = list[tuple[np.ndarray, np.ndarray]]


def interval_bounds(
    net: PLNet, lo: np.ndarray, hi: np.ndarray, start: int = 0, known: Bounds | None = None
) -> Bounds:
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


def tighten(
    net: PLNet,
    bounds: Bounds,
    lo: np.ndarray,
    hi: np.ndarray,
    goal: Goal | int | None,
    deadline: float,
    rounds: int = 4,
    cuts: bool = False,
    skip: np.ndarray | None = None,
) -> tuple[Bounds, int, bool]:
    """Tighten the bounds of unstable neurons by LPs over the relaxation of the whole problem.

    The bounds only need to hold where the optimum can be: inputs in the box
    whose output meets ``goal`` (a :class:`~nninv.geometry._milp.Goal`, a class
    index, or None for every input of the box). Minimising and maximising each
    unstable pre-activation over the LP relaxation of that set (the output
    constraints included) makes most neurons stable, which removes their
    binaries and tightens the big-M constants of the rest. Rounds repeat while
    neurons become stable, until ``deadline``; each LP is re-solved from the
    previous basis (milliseconds each).

    With ``cuts=True`` each round first strengthens the relaxation with the
    cuts of :func:`ideal_cuts`, so that more neurons become stable.

    ``skip`` (a mask over the last hidden layer, e.g.
    :func:`~nninv.geometry._milp.monotone_neurons`) names neurons whose bounds
    are not worth two LPs; they keep their bounds.

    Returns the bounds, the number of LPs solved, and whether the relaxation
    was infeasible (then no input of the class lies in the box).
    """
    bounds = [(l.copy(), u.copy()) for l, u in bounds]
    n_lp = 0
    for _ in range(rounds):
        before = sum(int(((l < 0) & (u > 0)).sum()) for l, u in bounds)
        if before == 0:
            break
        enc = encode(net, bounds, lo, hi, goal=_goal(net, goal), relax=True)
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


def _goal(net: PLNet, goal: Goal | int | None) -> Goal | None:
    if goal is None or isinstance(goal, Goal):
        return goal
    return Goal.of_class(int(goal), net.Ws[-1].shape[0])


def _lp_solver(
    enc: Encoding, extra: tuple[sp.csr_matrix, np.ndarray] | None = None
) -> Callable[[int, float], tuple[str, float]]:
    """``solve(col, sign) -> (status, sign * min(sign * v[col]))`` over the encoding's LP,
    with ``extra = (C, ub)`` rows ``C v <= ub`` added."""
    if extra is not None:
        enc = enc.with_rows(*extra)
    h = quiet_highs()
    h.setOptionValue("primal_feasibility_tolerance", 1e-9)
    h.setOptionValue("dual_feasibility_tolerance", 1e-9)
    pass_model(h, enc, cost=np.zeros(enc.c.size), integer=False)
    prev: list[int | None] = [None]

    def solve(col: int, sign: float) -> tuple[str, float]:
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

    return solve


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


def _relaxation(
    enc: Encoding,
) -> Callable[[tuple[sp.csr_matrix, np.ndarray] | None], np.ndarray | None]:
    """``solve(new_rows)``: add rows ``A v <= ub`` (and return None), or with None
    return the LP optimum ``v`` (None when the LP has none)."""
    h = quiet_highs()
    pass_model(h, enc, integer=False)

    def solve(new: tuple[sp.csr_matrix, np.ndarray] | None) -> np.ndarray | None:
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

    return solve

"""Solving the MILP encodings of piecewise-linear networks with HiGHS.

:func:`solve_milp` minimises an :class:`~nninv.geometry._milp.Encoding`'s
objective (the distance MILP) and :func:`solve_margin` decides, with a cutoff,
whether a ``margin_objective`` encoding reaches the class; both run through
highspy when it is installed (presolve off, the tuned branch-and-bound
settings of ``_SEARCH``, a first incumbent), otherwise through
:func:`scipy.optimize.milp` (the same HiGHS, fewer options).
:func:`region_polytope` and :func:`region_lp` handle one activation region, on
which the network is affine: its polytope intersected with the class, and the
closest input in it by one LP. The small helpers ``_quiet_highs`` and
``_split`` are shared with the bound-tightening LPs of
:mod:`nninv.geometry._bounds`.
"""

from __future__ import annotations

__all__ = ["region_lp", "region_polytope", "solve_margin", "solve_milp"]

import math

import numpy as np
import scipy.sparse as sp
from scipy.optimize import LinearConstraint, linprog

from ._milp import Encoding, PLNet
from ._polytope import LP_OPTIONS

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


#: HiGHS options of :func:`region_lp`: presolve off. On a region barely wide enough for
#: the margin (bench_preimage.py (b), query 4), presolve took 3.5 s of a 3.8 s solve
#: (the same LP in 0.05 s without it, the same optimum to 1e-10).
REGION_LP_OPTIONS = {**LP_OPTIONS, "presolve": False}


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
    res = linprog(c, A_ub=A, b_ub=b, bounds=bnds, method="highs", options=REGION_LP_OPTIONS)
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

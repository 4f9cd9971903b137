"""Solving the MILP encodings of piecewise-linear networks with HiGHS.

:func:`solve_milp` minimises an :class:`~nninv.geometry._milp.Encoding`'s
objective (the distance MILP) and :func:`solve_margin` decides, with a cutoff,
whether a ``margin_objective`` encoding reaches its goal; both run through
highspy (presolve off, the tuned branch-and-bound settings of ``_SEARCH``, a
first incumbent) and answer with small frozen results (:class:`MilpResult`,
:class:`MarginResult`). :func:`region_polytope` and :func:`region_lp` handle
one activation region, on which the network is affine: its polytope
intersected with the goal, and the closest input in it by one LP.
:func:`quiet_highs` and :func:`pass_model` (a silent solver, an encoding
loaded into it) are shared with the bound-tightening LPs of
:mod:`nninv.geometry._bounds`.

These names are the internal API of the exact engines: :func:`solve_milp`,
:func:`solve_margin`, :func:`region_lp`, :func:`region_polytope`,
:func:`quiet_highs`, :func:`pass_model`.
"""

from __future__ import annotations

__all__ = [
    "MarginResult",
    "MilpResult",
    "pass_model",
    "quiet_highs",
    "region_lp",
    "region_polytope",
    "solve_margin",
    "solve_milp",
]

import math
from dataclasses import dataclass
from typing import Literal

import highspy
import numpy as np
import scipy.sparse as sp
from scipy.optimize import linprog

from ..highs import quiet_highs
from ._milp import Encoding, Goal, PLNet, as_goal
from ._polytope import LP_OPTIONS

#: Branch-and-bound settings measured on MNIST MLPs (``benchmarks/bench_preimage.py
#: --part b``): cut separation only at the root, and pseudo-costs trusted after one
#: strong-branching probe. The node LPs carry dense rows (a whole layer's weights), so
#: each simplex iteration is costly and fewer LPs win: the mean time per query fell
#: from 8.5 to 5.8 s and the slowest from 29.9 to 21.4 s.
_SEARCH: dict[str, bool | int | float] = {
    "mip_allow_cut_separation_at_nodes": False,
    "mip_pscost_minreliable": 1,
}

_NO_HEURISTICS: dict[str, bool | int | float] = {
    "mip_heuristic_effort": 0.0,
    "mip_heuristic_run_rins": False,
    "mip_heuristic_run_rens": False,
    "mip_heuristic_run_root_reduced_cost": False,
    "mip_heuristic_run_feasibility_jump": False,
}

MilpStatus = Literal["optimal", "time_limit", "infeasible", "other"]
MarginStatus = Literal["none", "found", "unknown"]


@dataclass(frozen=True)
class MilpResult:
    """What :func:`solve_milp` found.

    Attributes
    ----------
    status : {"optimal", "time_limit", "infeasible", "other"}
        ``"time_limit"`` also covers HiGHS's iteration, solution and interrupt limits.
    x : ndarray or None
        The best point found (all the encoding's variables), None without one.
    fun : float or None
        Its objective value.
    dual_bound : float or None
        HiGHS's proven lower bound on the optimum (the optimum itself for a pure LP).
    nodes : int
        Branch-and-bound nodes explored.
    message : str
        HiGHS's model status in words.
    """

    status: MilpStatus
    x: np.ndarray | None
    fun: float | None
    dual_bound: float | None
    nodes: int
    message: str


@dataclass(frozen=True)
class MarginResult:
    """What :func:`solve_margin` decided.

    Attributes
    ----------
    status : {"none", "found", "unknown"}
        ``"none"``: proven that no input reaches the cutoff; ``"found"``: ``x``
        holds one; ``"unknown"``: time ran out first.
    x : ndarray or None
    nodes : int
    message : str
    """

    status: MarginStatus
    x: np.ndarray | None
    nodes: int
    message: str


def _with_rows(enc: Encoding, extra: tuple[sp.csr_matrix, np.ndarray] | None) -> Encoding:
    return enc if extra is None else enc.with_rows(*extra)


def solve_milp(
    enc: Encoding,
    extra: tuple[sp.csr_matrix, np.ndarray] | None,
    time_limit: float,
    gap: float,
    start: np.ndarray | None = None,
    heuristics: bool = True,
) -> MilpResult:
    """Minimise the encoding's objective with HiGHS; ``extra = (C, ub)`` adds rows ``C v <= ub``.

    Presolve is off (faster on these models with dense rows), the settings in
    ``_SEARCH`` apply, ``start`` is the first incumbent and ``gap`` the
    relative MIP gap. ``heuristics=False`` turns off HiGHS's primal heuristics
    (sub-MIPs, RINS, RENS, feasibility jump): worth it when ``start`` is
    already near-optimal, where they spend seconds at the root on these models
    without improving it.
    """
    h = quiet_highs()
    h.setOptionValue("time_limit", float(time_limit))
    h.setOptionValue("mip_rel_gap", float(gap))
    h.setOptionValue("presolve", "off")
    for opt, val in _SEARCH.items():
        h.setOptionValue(opt, val)
    if not heuristics:
        for opt, val in _NO_HEURISTICS.items():
            h.setOptionValue(opt, val)  # options missing from older HiGHS are ignored
    pass_model(h, _with_rows(enc, extra))
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
    status: MilpStatus
    if st == M.kOptimal:
        status = "optimal"
    elif st in (M.kTimeLimit, M.kIterationLimit, M.kSolutionLimit, M.kInterrupt):
        status = "time_limit"
    elif st == M.kInfeasible:
        status = "infeasible"
    else:
        status = "other"
    fun = float(info.objective_function_value) if x is not None else None
    # with every neuron stable the model is an LP, whose optimum is its own bound
    is_lp = not bool(np.any(enc.integrality))
    return MilpResult(
        status=status,
        x=x,
        fun=fun,
        dual_bound=fun if is_lp and status == "optimal" else float(info.mip_dual_bound),
        nodes=max(0, int(info.mip_node_count)),
        message=h.modelStatusToString(st),
    )


def solve_margin(
    enc: Encoding,
    cutoff: float,
    time_limit: float,
    extra: tuple[sp.csr_matrix, np.ndarray] | None = None,
) -> MarginResult:
    """Decide whether a ``margin_objective`` encoding reaches ``s < cutoff``.

    ``extra = (C, ub)`` adds rows ``C v <= ub`` (cuts).

    Branch and bound with ``cutoff`` as the objective's upper limit: a node is
    pruned as soon as its LP bound reaches it, and the search stops at the first
    input below it.
    """
    h = quiet_highs()
    h.setOptionValue("time_limit", float(max(time_limit, 1e-3)))
    h.setOptionValue("presolve", "off")
    for opt, val in {**_SEARCH, **_NO_HEURISTICS}.items():
        h.setOptionValue(opt, val)
    h.setOptionValue("objective_bound", float(cutoff))
    h.setOptionValue("mip_max_improving_sols", 1)
    pass_model(h, _with_rows(enc, extra))
    h.run()
    st = h.getModelStatus()
    info = h.getInfo()
    M = highspy.HighsModelStatus
    x = None
    if info.primal_solution_status == 2:
        v = np.asarray(h.getSolution().col_value)
        if v[-1] < cutoff:
            x = v
    status: MarginStatus
    if x is not None:
        status = "found"
    elif st in (M.kInfeasible, M.kOptimal, M.kObjectiveBound):
        # with the cutoff, "infeasible", an optimum at or above it, or (for a pure LP) the
        # dual simplex's bound reaching it: no input lies below it
        status = "none"
    else:
        status = "unknown"
    return MarginResult(status, x, max(0, int(info.mip_node_count)), h.modelStatusToString(st))


def pass_model(
    h: highspy.Highs, enc: Encoding, cost: np.ndarray | None = None, integer: bool = True
) -> None:
    """Load ``min cost . v`` (``enc.c`` by default) s.t. ``lb <= A v <= ub`` and the
    encoding's bounds into the solver ``h``; with ``integer``, its integrality too (else
    the LP relaxation)."""
    Ac = enc.A.tocsc()
    lp = highspy.HighsLp()
    lp.num_col_, lp.num_row_ = enc.c.size, Ac.shape[0]
    lp.col_cost_ = enc.c if cost is None else cost
    lp.col_lower_, lp.col_upper_ = enc.lower, enc.upper
    lp.row_lower_, lp.row_upper_ = enc.lb, enc.ub
    lp.a_matrix_.format_ = highspy.MatrixFormat.kColwise
    lp.a_matrix_.start_, lp.a_matrix_.index_, lp.a_matrix_.value_ = Ac.indptr, Ac.indices, Ac.data
    if integer:
        kinds = (highspy.HighsVarType.kContinuous, highspy.HighsVarType.kInteger)
        lp.integrality_ = [kinds[int(v)] for v in enc.integrality]
    h.passModel(lp)


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
    goal: Goal | int,
    margin: float,
) -> tuple[np.ndarray | None, float]:
    """The closest input in ``goal`` (by ``margin``) inside one activation region.

    ``goal`` is a :class:`~nninv.geometry._milp.Goal` or a class index.
    ``pattern[k]`` is the boolean activity of layer ``k``. On the region the
    network is affine, so this is one LP; only unstable neurons need their
    sign constrained (the others keep it on the whole box). Returns the input
    (clipped to the box) and its distance, or ``(None, inf)`` when the region
    holds no input of the goal.
    """
    n = x0.size
    G, g = region_polytope(net, pattern, bounds, goal, margin)
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
        bnds: list[tuple[float | None, float | None]] = list(zip(lo, hi)) + [(0, None)]
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
    goal: Goal | int,
    margin: float,
) -> tuple[np.ndarray, np.ndarray]:
    """``G x <= g`` for one activation region intersected with ``goal`` (a
    :class:`~nninv.geometry._milp.Goal` or a class index), by ``margin``."""
    n = net.n_in
    M, m0 = np.eye(n), np.zeros(n)
    R_rows: list[np.ndarray] = []
    r_vals: list[np.ndarray] = []
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
    g = as_goal(goal, WL.shape[0])
    assert g is not None
    G, gv = g.affine(WL @ M, WL @ m0 + bL)
    R_rows.append(G)
    r_vals.append(gv - margin)
    return np.vstack(R_rows), np.concatenate(r_vals)

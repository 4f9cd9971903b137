"""The stages of :func:`nninv.geometry.closest`, for one :class:`~nninv.geometry._query.Query`.

:func:`solve` picks the route: the exact one for piecewise-linear networks
(:func:`exact` for ``linf`` and ``l1``, :func:`l2` for ``l2``), else the
gradient search alone. The exact route runs, in order: a quick gradient
search for a verified incumbent, which shrinks the box to its radius, and
the closest input in its activation region (:func:`incumbent`); interval and
LP bound tightening (:func:`tightened`); for ``linf``, a proof of the
incumbent by reachability (:func:`verify_linf`); else the distance MILP with
lazily added goal rows (:func:`distance_milp`); and the polish of the MILP's
point inside its activation region with a margin (:func:`polish`), so that
the model confirms it.

The solvers the stages call are the fields of :class:`Stages`, a frozen
dataclass that ``closest`` passes down: a test replaces one of them (a MILP
that stops at its time limit, no gradient search, a float64 margin ladder)
through that parameter, never through module globals.
"""

from __future__ import annotations

__all__ = ["STAGES", "Stages", "exact", "l2", "margins", "polish", "solve", "verify_linf"]

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

import numpy as np
import scipy.sparse as sp
import torch

from ..errors import NNInvError
from ._attack import Budget, attack
from ._bounds import Bounds, ideal_cuts, interval_bounds, tighten
from ._highs import MarginResult, MilpResult, region_lp, region_polytope, solve_margin, solve_milp
from ._milp import Encoding, PLNet, encode, monotone_neurons, start_point
from ._polytope import Polyhedron
from ._query import Outcome, Query, Status, Trace, dist

#: Relative gap of the linf proof in :func:`verify_linf`: the incumbent at distance
#: ``d`` is optimal when no input of the goal lies within ``d * (1 - VERIFY_GAP)``.
VERIFY_GAP = 1e-6
#: Better incumbents :func:`verify_linf` may find before the full MILP takes over.
VERIFY_ROUNDS = 3
#: Rounds of separation of the ideal cuts in each of :func:`verify_linf`'s MILPs.
VERIFY_CUT_ROUNDS = 1
#: The gradient search that seeds the exact route: cheaper than the heuristic route's.
INCUMBENT_BUDGET = Budget(steps=50, restarts=4, rounds=8)


class MilpSolver(Protocol):
    """The signature of :func:`nninv.geometry._highs.solve_milp`."""

    def __call__(
        self,
        enc: Encoding,
        extra: tuple[sp.csr_matrix, np.ndarray] | None,
        time_limit: float,
        gap: float,
        start: np.ndarray | None = None,
        heuristics: bool = True,
    ) -> MilpResult: ...


class MarginSolver(Protocol):
    """The signature of :func:`nninv.geometry._highs.solve_margin`."""

    def __call__(
        self,
        enc: Encoding,
        cutoff: float,
        time_limit: float,
        extra: tuple[sp.csr_matrix, np.ndarray] | None = None,
    ) -> MarginResult: ...


Attack = Callable[[Query, float, Budget], tuple[np.ndarray | None, dict[str, Any]]]


def margins(q: Query) -> list[float]:
    """The margins to try, smallest first: the caller's, or ``1e-9 s ... 1e-3 s``.

    ``s`` is the largest output at ``x0`` (at least 1). The ladder starts near
    the rounding of the caller's dtype (``1e-7 s`` for a float32 model):
    smaller margins cannot survive it, and each one tried costs an LP (on
    bench_preimage's query 4, 11 s of polish against 0.4 s).
    """
    if q.margin is not None:
        return [q.margin]
    scale = margin_scale(q.pl, q.x0)
    eps = float(torch.finfo(q.check.dtype).eps)
    start = max(-9, min(-3, math.floor(math.log10(8 * eps))))
    return [10.0**k * scale for k in range(start, -2)]


@dataclass(frozen=True)
class Stages:
    """The solvers the stages call; replace one to test a path.

    Attributes
    ----------
    attack : callable
        ``attack(query, deadline, budget) -> (x or None, info)``, the gradient search.
    solve_milp : callable
        The distance MILP (:func:`nninv.geometry._highs.solve_milp`).
    solve_margin : callable
        The reachability MILP (:func:`nninv.geometry._highs.solve_margin`).
    margins : callable
        ``margins(query)``: the polish's margins, smallest first.
    verify : bool
        For ``linf``, prove the incumbent by reachability (:func:`verify_linf`)
        before the distance MILP; False goes straight to the distance MILP.
    """

    attack: Attack = attack
    solve_milp: MilpSolver = solve_milp
    solve_margin: MarginSolver = solve_margin
    margins: Callable[[Query], list[float]] = margins
    verify: bool = True


#: The stages ``closest`` runs.
STAGES = Stages()


def solve(q: Query, stages: Stages = STAGES) -> Outcome:
    """Answer one query: exactly for a piecewise-linear ``q.net``, else by PGD alone."""
    if q.net is None:
        lo, hi = q.domain
        xv, info = stages.attack(replace(q, lo=lo, hi=hi), q.deadline, Budget())
        info["method"] = "pgd"
        return Outcome(xv, "heuristic", 0.0, info)
    if q.norm == "l2":
        return l2(q, stages)
    return exact(q, stages)


def margin_scale(net: PLNet, x0: np.ndarray) -> float:
    """``max(1, |f(x0)|_inf)``: the unit of the margins and of the rows' violations."""
    return max(1.0, float(np.abs(net.forward(x0[None])).max()))


def pattern(net: PLNet, x: np.ndarray) -> list[np.ndarray]:
    """The activation pattern (``z >= 0`` per hidden layer) of the network at ``x``."""
    out, h = [], x
    for W, b, a in zip(net.Ws[:-1], net.bs[:-1], net.slopes):
        z = W @ h + b
        out.append(z >= 0)
        h = np.where(z >= 0, z, a * z)
    return out


def polish(
    q: Query, stages: Stages, patterns: Sequence[list[np.ndarray]], bounds: Bounds
) -> tuple[np.ndarray | None, float]:
    """Re-solve inside each activation region with the goal met by a margin until the
    model confirms it: ``q.margin``, else a growing one (:func:`margins`); returns the
    input and its margin, or ``(None, 0.0)``."""
    for pat in patterns:
        for margin in stages.margins(q):
            x, _ = region_lp(q.pl, pat, bounds, q.lo, q.hi, q.x0, q.norm, q.goal, margin)
            if x is None:
                break
            if q.check.ok(x):
                return x, margin
    return None, 0.0


def _within(q: Query, radius: float) -> Query:
    """The query with its box narrowed to ``radius`` around ``x0``."""
    return replace(q, lo=np.maximum(q.lo, q.x0 - radius), hi=np.minimum(q.hi, q.x0 + radius))


@dataclass(frozen=True)
class Incumbent:
    """The exact route's start: the query with its box shrunk to ``radius`` (None: not
    shrunk) around a verified input ``x`` (None: none found)."""

    q: Query
    x: np.ndarray | None
    radius: float | None


def incumbent(q: Query, stages: Stages, trace: Trace) -> Incumbent:
    """A verified input from a quick gradient search, improved by one LP in its region.

    Its distance bounds the optimum from above, so the search can be restricted
    to that radius without losing it: the box shrinks, fewer neurons are unstable
    and every big-M constant tightens.
    """
    radius = q.max_distance
    budget = time.perf_counter() + 0.1 * max(0.0, q.deadline - time.perf_counter())
    x, _ = stages.attack(q, budget, INCUMBENT_BUDGET)
    if x is not None:
        d_ub = q.distance(x)
        trace.info["pgd_distance"] = d_ub
        if radius is None or d_ub < radius:
            radius = d_ub * (1 + 1e-9) + 1e-12
            q = _within(q, radius)
    trace.lap("pgd")
    if x is None:
        return Incumbent(q, None, radius)
    # the closest input in the gradient search's own activation region (one LP) is
    # often the optimum itself; as the first incumbent it lets branch and bound
    # prune from the start, and its radius shrinks the box further
    x_reg, _ = polish(q, stages, [pattern(q.pl, x)], interval_bounds(q.pl, q.lo, q.hi))
    if x_reg is not None and q.distance(x_reg) < q.distance(x):
        x = x_reg
        d_ub = q.distance(x)
        trace.info["region_distance"] = d_ub
        radius = d_ub * (1 + 1e-9) + 1e-12
        q = _within(q, radius)
    trace.lap("region")
    return Incumbent(q, x, radius)


def tightened(q: Query, trace: Trace) -> tuple[Bounds, bool]:
    """Pre-activation bounds over the box: interval arithmetic, then LPs over the
    relaxation (within 40% of the time left); True when that relaxation has no input
    of the goal (then neither has the MILP)."""
    net = q.pl
    bounds = interval_bounds(net, q.lo, q.hi)
    trace.info["n_unstable_interval"] = [int(((l < 0) & (u > 0)).sum()) for l, u in bounds]
    if net.slopes:
        budget = time.perf_counter() + 0.4 * max(0.0, q.deadline - time.perf_counter())
        # neurons whose binaries the MILP never needs need no tighter bounds either
        skip = monotone_neurons(net, q.goal)
        bounds, n_lp, empty = tighten(net, bounds, q.lo, q.hi, q.goal, budget, skip=skip)
        trace.info["lp_tightened"] = n_lp
        trace.lap("tighten")
        if empty:
            return bounds, True
    trace.info["n_unstable"] = [int(((l < 0) & (u > 0)).sum()) for l, u in bounds]
    return bounds, False


def _beaten(q: Query, x: np.ndarray, rows: set[int]) -> set[int]:
    """The goal's rows outside ``rows`` that ``x`` violates (by more than rounding)."""
    lead = q.goal.leads(q.pl.forward(x[None])[0])
    tol = 1e-7 * margin_scale(q.pl, q.x0)
    return {r for r in range(q.goal.n_rows) if lead[r] > tol} - rows


def exact(q: Query, stages: Stages) -> Outcome:
    """MILP (or LP for no hidden layer) for ``linf`` and ``l1``, then a verified polish.

    Measured on a 784-128-10 MNIST MLP (``benchmarks/bench_preimage.py --part b``):
    the ideal cuts of Anderson et al. (2020), in the tightening LPs or in the
    MILP, raise the root bound but make HiGHS's LPs denser and slower, so they
    are not used here, except in the small MILPs of :func:`verify_linf`.
    """
    net = q.pl
    trace = Trace({"method": "milp" if net.slopes else "lp"}).timed()
    info = trace.info
    start = Incumbent(q, None, q.max_distance)
    if net.slopes:
        start = incumbent(q, stages, trace)
    q, x_inc, radius = start.q, start.x, start.radius
    bounds, empty = tightened(q, trace)
    if empty:
        if x_inc is not None:
            info["note"] = "relaxation infeasible at the radius of a verified input"
            return Outcome(x_inc, "heuristic", 0.0, info)
        return Outcome(None, "infeasible", _far(q), info)
    # The rows of the goal that cannot be violated near x0 (for a class: the rivals
    # that cannot win) are rarely binding; they are left out (a relaxation: its bound
    # stays valid) and added back when the optimum violates them. Fewer rows also
    # free more binaries.
    rows = set(range(q.goal.n_rows))
    if net.slopes:
        rows = {q.goal.worst_row(net.forward(q.x0[None])[0])}
        if x_inc is not None:
            rows.add(q.goal.worst_row(net.forward(x_inc[None])[0]))
    if q.norm == "linf" and x_inc is not None and stages.verify:
        found = verify_linf(q, stages, trace, bounds, rows, x_inc)
        x_inc, rows = found.x, found.rows
        if found.proven:
            return Outcome(x_inc, "optimal", found.radius, info)
    return distance_milp(q, stages, trace, bounds, rows, x_inc, radius)


def _far(q: Query) -> float:
    """The bound of an infeasible answer: ``max_distance``, else infinity."""
    return q.max_distance if q.max_distance is not None else math.inf


@dataclass(frozen=True)
class Verified:
    """What :func:`verify_linf` ends with: the best verified input ``x``, whether it is
    proven optimal (with the bound ``radius``), and the goal rows kept so far."""

    x: np.ndarray
    proven: bool
    radius: float
    rows: set[int]


def verify_linf(
    q: Query, stages: Stages, trace: Trace, bounds: Bounds, rows: set[int], x_inc: np.ndarray
) -> Verified:
    """Prove a verified input optimal for ``linf``, or improve it.

    The incumbent at distance ``d`` is optimal (up to :data:`VERIFY_GAP`) when no
    input within radius ``r = d (1 - VERIFY_GAP)`` meets the goal. That question
    needs neither the distance variable nor its rows (the radius is the box), so
    its LPs are several times smaller than those of the distance MILP: branch and
    bound minimises the goal's largest violation (for a class, the largest
    rival's lead over the label) with the cutoff 0
    (:func:`nninv.geometry._highs.solve_margin`), pruning a node as soon as its
    relaxation proves the goal out of reach. On the MNIST MLP of
    ``bench_preimage.py`` this takes 2.6-2.8 s where the distance MILP took
    7.5-9.9 s. A point it finds in the goal is polished inside its activation
    region (one LP) into a closer incumbent, and the question is asked again, at
    most :data:`VERIFY_ROUNDS` times. The proof against a subset of rows holds
    for all of them (fewer constraints); a point that violates another row adds
    that row.
    """
    info, rows = trace.info, set(rows)
    r = math.inf
    for _ in range(VERIFY_ROUNDS + q.goal.n_rows):
        d_inc = dist(x_inc - q.x0, "linf")
        r = d_inc * (1 - VERIFY_GAP)
        qr = _within(q, r)
        if np.any(qr.lo > qr.hi):  # the box itself is farther than r
            return Verified(x_inc, True, r, rows)
        enc = encode(
            q.pl,
            bounds,
            qr.lo,
            qr.hi,
            goal=q.goal,
            rivals=sorted(rows),
            monotone=True,
            margin_objective=True,
        )
        # the ideal formulation's cuts (Anderson et al. 2020): on these small LPs they
        # pay, 7.2 -> 1.8 s on the slowest query of bench_preimage.py
        cuts, cub, _ = ideal_cuts(enc, q.deadline, max_rounds=VERIFY_CUT_ROUNDS)
        left = q.deadline - time.perf_counter()
        if left <= 0:
            return Verified(x_inc, False, r, rows)
        out = stages.solve_margin(enc, 0.0, left, (cuts, cub))
        trace.lap("verify")
        trace.count("nodes", out.nodes)
        trace.count("verify_rounds")
        info["n_binaries"] = enc.info["n_binaries"]
        info["rivals"] = q.goal.names(sorted(rows))
        if out.status == "none":
            info["margin"] = q.goal.slack(q.pl.forward(x_inc[None])[0])
            return Verified(x_inc, True, r, rows)
        if out.status != "found" or out.x is None:
            return Verified(x_inc, False, r, rows)
        xf = np.clip(out.x[: q.x0.size], qr.lo, qr.hi)
        beaten = _beaten(q, xf, rows)
        if beaten:
            rows |= beaten
            continue
        x_new, _ = polish(qr, stages, [pattern(q.pl, xf)], bounds)
        trace.lap("polish")
        if x_new is None and q.check.ok(xf):
            x_new = xf
        if x_new is None or dist(x_new - q.x0, "linf") >= d_inc:
            return Verified(x_inc, False, r, rows)
        x_inc = x_new
    return Verified(x_inc, False, r, rows)


def distance_milp(
    q: Query,
    stages: Stages,
    trace: Trace,
    bounds: Bounds,
    rows: set[int],
    x_inc: np.ndarray | None,
    radius: float | None,
) -> Outcome:
    """Minimise the distance by MILP, adding back the goal rows its optimum violates,
    then polish its point into one the model confirms."""
    info, net, n = trace.info, q.pl, q.x0.size
    info["rounds"] = 0
    while True:
        info["rounds"] += 1
        enc = encode(
            net,
            bounds,
            q.lo,
            q.hi,
            x0=q.x0,
            norm=q.norm,
            goal=q.goal,
            max_distance=radius,
            rivals=sorted(rows),
            monotone=True,
        )
        info["n_binaries"] = enc.info["n_binaries"]
        info["rivals"] = q.goal.names(sorted(rows))
        trace.lap("encode")
        start = None if x_inc is None else start_point(net, enc, x_inc, q.x0, q.norm)
        left = max(1.0, q.deadline - time.perf_counter())
        # with a verified start near the optimum, HiGHS's primal heuristics only cost time
        res = stages.solve_milp(enc, None, left, 1e-6, start, heuristics=x_inc is None)
        trace.lap("milp")
        trace.count("nodes", res.nodes)
        info["solver_status"] = res.message
        beaten: set[int] = set()
        if res.x is not None and len(rows) < q.goal.n_rows:
            beaten = _beaten(q, res.x[:n], rows)
        if not beaten or res.status != "optimal" or time.perf_counter() > q.deadline:
            break
        rows |= beaten
    return _from_milp(q, stages, trace, bounds, enc, res, beaten, x_inc)


def _from_milp(
    q: Query,
    stages: Stages,
    trace: Trace,
    bounds: Bounds,
    enc: Encoding,
    res: MilpResult,
    beaten: set[int],
    x_inc: np.ndarray | None,
) -> Outcome:
    """The answer from the distance MILP's result: its bound, and its point polished."""
    info, n = trace.info, q.x0.size
    if res.status == "infeasible":
        if x_inc is not None:
            # only rounding can make the radius of a verified input infeasible
            info["note"] = "MILP infeasible at the radius of a verified input; returning it"
            return Outcome(x_inc, "heuristic", 0.0, info)
        return Outcome(None, "infeasible", _far(q), info)
    dual = res.dual_bound
    if res.x is None or res.fun is None:
        if res.status == "time_limit":  # time limit without an incumbent
            bound = float(dual) if dual is not None and np.isfinite(dual) else 0.0
            return Outcome(x_inc, "time_limit", max(bound, 0.0), info)
        raise NNInvError(f"the MILP failed: {res.message}")
    # optimal only when the optimum of the relaxation meets every row of the goal
    status: Status = "optimal" if res.status == "optimal" and not beaten else "time_limit"
    fun = float(res.fun)
    bound = fun if dual is None or not np.isfinite(dual) else min(fun, float(dual))
    bound = max(0.0, bound)
    v = res.x
    # the pattern of the network at the MILP's x first: the binaries of neurons left
    # continuous (monotone) need not match it, and rounding may put x elsewhere
    alt = pattern(q.pl, v[:n])
    patterns = []
    for k, (J, cols) in enumerate(enc.delta_index):
        l, _ = bounds[k]
        on = l >= 0
        on[J] = v[cols] > 0.5
        patterns.append(on)
    x, margin = polish(q, stages, [alt, patterns], bounds)
    trace.lap("polish")
    if x is None and q.check.ok(np.clip(v[:n], q.lo, q.hi)):
        x, margin = np.clip(v[:n], q.lo, q.hi), 0.0
    info["margin"] = margin
    if x is not None and x_inc is not None and q.distance(x_inc) < q.distance(x):
        x = x_inc  # only within the solver's gap
    if x is None:
        return Outcome(x_inc, "heuristic", bound, info)
    return Outcome(x, status, bound, info)


def _projection(q: Query, pat: list[np.ndarray], bounds: Bounds, margin: float) -> Polyhedron:
    """The polytope of one activation region (all of the box with no hidden layer)
    intersected with the goal by ``margin``, as an exact-projection object."""
    G, g = region_polytope(q.pl, pat, bounds, q.goal, margin)
    poly, _ = Polyhedron.from_constraints(
        None,
        None,
        torch.from_numpy(G),
        torch.from_numpy(g),
        torch.from_numpy(q.lo),
        torch.from_numpy(q.hi),
    )
    return poly


def l2(q: Query, stages: Stages) -> Outcome:
    """``l2``: the exact projection QP for one affine layer; for deeper nets the exact
    ``linf`` distance as bound (``|v|_2 >= |v|_inf``) and the best of a projection inside
    the ``linf`` optimum's region and a gradient search, as a heuristic."""
    if not q.pl.slopes:
        return _l2_affine(q, stages)
    ex = exact(replace(q, norm="linf"), stages)
    info = dict(ex.info)
    info["method"] = "linf-milp bound + region QP + pgd"
    if ex.status == "infeasible":
        return Outcome(None, "infeasible", ex.bound, info)
    cands = []
    if ex.x is not None:
        pat = pattern(q.pl, ex.x)
        bounds = interval_bounds(q.pl, q.lo, q.hi)
        for margin in stages.margins(q):
            poly = _projection(q, pat, bounds, margin)
            if poly.centre()[0] is None:
                continue
            x = poly.project(torch.from_numpy(q.x0)).x.numpy()
            if q.check.ok(x):
                cands.append(x)
                break
        cands.append(ex.x)
    xa, _ = stages.attack(q, q.deadline, Budget())
    if xa is not None:
        cands.append(xa)
    info["pgd_found"] = xa is not None
    if not cands:
        return Outcome(None, "heuristic", ex.bound, info)
    best = min(cands, key=q.distance)
    return Outcome(best, "heuristic", ex.bound, info)


def _l2_affine(q: Query, stages: Stages) -> Outcome:
    """One affine layer: the goal is a polytope and the projection QP is exact."""
    for margin in stages.margins(q):
        poly = _projection(q, [], [], margin)
        centre, _ = poly.centre()
        if centre is None:
            return Outcome(None, "infeasible", _far(q), {"method": "qp"})
        res = poly.project(torch.from_numpy(q.x0))
        x = res.x.numpy()
        if q.check.ok(x):
            info = {"method": "qp", "margin": margin, "kkt": res.kkt}
            d = dist(x - q.x0, "l2")
            if q.max_distance is not None and d > q.max_distance:
                return Outcome(None, "infeasible", q.max_distance, info)
            return Outcome(x, "optimal", d, info)
    info = {"method": "qp", "note": "no projection onto the goal's polytope was confirmed"}
    return Outcome(None, "heuristic", 0.0, info)

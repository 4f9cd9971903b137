"""Small LPs over polytopes ``{u in [0, 1]^d : A u <= b}`` with HiGHS (highspy).

One ``Highs`` object is reused for every solve (building one costs more than
solving these LPs). The unit box is given as column bounds, not rows.
"""

from __future__ import annotations

__all__ = ["chebyshev", "minimize"]

from types import ModuleType
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from highspy import Highs

_SOLVER: list[tuple[Highs, ModuleType]] = []


def _highs() -> tuple[Highs, ModuleType]:
    """The shared ``Highs``, made with file descriptor 1 silenced: the first one a process
    makes prints a banner from C++ that would land in the middle of printed tables."""
    if not _SOLVER:
        import os
        import sys

        import highspy

        try:
            sys.stdout.flush()
            saved: int | None = os.dup(1)
        except (OSError, ValueError):
            saved = None
        try:
            if saved is not None:
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, 1)
                os.close(devnull)
            h = highspy.Highs()
        finally:
            if saved is not None:
                os.dup2(saved, 1)
                os.close(saved)
        h.setOptionValue("output_flag", False)
        h.setOptionValue("threads", 1)
        _SOLVER.append((h, highspy))
    return _SOLVER[0]


def _solve(
    cost: np.ndarray, A: np.ndarray, b: np.ndarray, lower: np.ndarray, upper: np.ndarray
) -> tuple[float, np.ndarray] | None:
    try:
        return _solve_once(cost, A, b, lower, upper)
    except RuntimeError:
        # The shared Highs object reports "Not Set" after some other tests of the suite
        # have run (cause not found); scipy's HiGHS interface builds its own each time.
        return _solve_scipy(cost, A, b, lower, upper)


def _solve_scipy(
    cost: np.ndarray, A: np.ndarray, b: np.ndarray, lower: np.ndarray, upper: np.ndarray
) -> tuple[float, np.ndarray] | None:
    from scipy.optimize import linprog

    bounds = [
        (None if not np.isfinite(lo) else lo, None if not np.isfinite(hi) else hi)
        for lo, hi in zip(lower, upper)
    ]
    res = linprog(cost, A_ub=A if A.shape[0] else None, b_ub=b if A.shape[0] else None,
                  bounds=bounds, method="highs")  # fmt: skip
    if res.status == 2:
        return None
    if res.status != 0:
        raise RuntimeError(f"HiGHS (scipy) failed: {res.message}")
    return float(res.fun), np.asarray(res.x, dtype=np.float64)


def _solve_once(
    cost: np.ndarray, A: np.ndarray, b: np.ndarray, lower: np.ndarray, upper: np.ndarray
) -> tuple[float, np.ndarray] | None:
    h, highspy = _highs()
    lp = highspy.HighsLp()
    n = cost.size
    lp.num_col_ = n
    lp.num_row_ = A.shape[0]
    lp.col_cost_ = np.ascontiguousarray(cost, dtype=np.float64)
    lp.col_lower_ = np.ascontiguousarray(lower, dtype=np.float64)
    lp.col_upper_ = np.ascontiguousarray(upper, dtype=np.float64)
    lp.row_lower_ = np.full(A.shape[0], -highspy.kHighsInf)
    lp.row_upper_ = np.ascontiguousarray(b, dtype=np.float64)
    lp.a_matrix_.format_ = highspy.MatrixFormat.kRowwise
    lp.a_matrix_.num_col_ = n
    lp.a_matrix_.num_row_ = A.shape[0]
    lp.a_matrix_.start_ = np.arange(0, A.size + 1, max(n, 1), dtype=np.int32)[: A.shape[0] + 1]
    lp.a_matrix_.index_ = np.tile(np.arange(n, dtype=np.int32), A.shape[0])
    lp.a_matrix_.value_ = np.ascontiguousarray(A, dtype=np.float64).ravel()
    h.clearModel()
    h.passModel(lp)
    h.run()
    status = h.getModelStatus()
    if status != highspy.HighsModelStatus.kOptimal:
        if status in (highspy.HighsModelStatus.kInfeasible,):
            return None
        # Unbounded cannot happen on a box; anything else is a solver failure.
        raise RuntimeError(f"HiGHS returned {h.modelStatusToString(status)}")
    x = np.array(h.getSolution().col_value, dtype=np.float64)
    return float(cost @ x), x


def minimize(c: np.ndarray, A: np.ndarray, b: np.ndarray) -> tuple[float, np.ndarray] | None:
    """``min c u`` over ``{u in [0,1]^d : A u <= b}``: (value, argmin), or None if empty."""
    d = c.size
    return _solve(c, A, b, np.zeros(d), np.ones(d))


def chebyshev(A: np.ndarray, b: np.ndarray) -> tuple[float, np.ndarray]:
    """Centre and radius of the largest ball in ``{u in [0,1]^d : A u <= b}``.

    Returns ``(radius, centre)``; the radius is 0 (or the result None-like with
    radius -1) when the polytope has no interior.
    """
    d = A.shape[1]
    norms = np.linalg.norm(A, axis=1)
    eye = np.eye(d)
    rows = np.vstack([np.hstack([A, norms[:, None]]), np.hstack([eye, np.ones((d, 1))]),
                      np.hstack([-eye, np.ones((d, 1))])])  # fmt: skip
    rhs = np.concatenate([b, np.ones(d), np.zeros(d)])
    cost = np.zeros(d + 1)
    cost[-1] = -1.0
    out = _solve(cost, rows, rhs, np.full(d + 1, -np.inf), np.full(d + 1, np.inf))
    if out is None:
        return -1.0, np.full(d, np.nan)
    return float(out[1][-1]), out[1][:d]

"""Small LPs over polytopes ``{u in [0, 1]^d : A u <= b}`` with HiGHS (highspy).

One ``Highs`` object is reused for every solve (building one costs more than
solving these LPs). The unit box is given as column bounds, not rows.
"""

from __future__ import annotations

__all__ = ["chebyshev", "minimize"]

from types import ModuleType
from typing import TYPE_CHECKING

import numpy as np

from ..highs import quiet_highs

if TYPE_CHECKING:
    from highspy import Highs

_SOLVER: list[tuple[Highs, ModuleType]] = []


def _highs() -> tuple[Highs, ModuleType]:
    """The shared ``Highs`` (building one costs more than solving these LPs)."""
    if not _SOLVER:
        import highspy

        _SOLVER.append((quiet_highs(), highspy))
    return _SOLVER[0]


def _solve(
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

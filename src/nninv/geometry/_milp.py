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
resulting :class:`Encoding` (with output constraints and a distance objective
as asked), :func:`monotone_neurons` says which binaries the output constraints
never need, and :func:`start_point` maps an input to a feasible point of the
encoding; :mod:`nninv.geometry._highs` solves it. The output constraints are a
:class:`Goal`: linear inequalities ``A z <= b`` on the network's output ``z``,
of which "class ``k`` wins" (``z_j - z_k <= 0`` for every ``j != k``) is the
common case.

These names are the internal API of the exact engines (``closest`` and any
verifier): :class:`PLNet`, :class:`Goal`, :class:`Encoding`, :func:`encode`,
:func:`monotone_neurons`, :func:`start_point`.

References
----------
Tjeng, Xiao & Tedrake (2019), "Evaluating robustness of neural networks with
mixed integer programming", ICLR.
"""

from __future__ import annotations

__all__ = [
    "Encoding",
    "Goal",
    "PLNet",
    "encode",
    "monotone_neurons",
    "start_point",
]

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

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

    def forward(self, x: np.ndarray) -> np.ndarray:
        h = x
        for W, b, a in zip(self.Ws[:-1], self.bs[:-1], self.slopes):
            z = h @ W.T + b
            h = np.where(z >= 0, z, a * z)
        return h @ self.Ws[-1].T + self.bs[-1]

    @classmethod
    def from_steps(
        cls, steps: list[Step], n_in: int, slope_of: Callable[[Step], float | None]
    ) -> PLNet:
        """Compose the chain's steps into layers; ``slope_of(step)`` gives a PL slope."""
        Ws: list[np.ndarray] = []
        bs: list[np.ndarray] = []
        slopes: list[float] = []
        W = np.eye(n_in)
        b = np.zeros(n_in)
        for step in steps:
            if isinstance(step, Affine):
                At, ct = step.matrix(torch.float64)
                A, c = At.numpy(), ct.numpy()
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


@dataclass(frozen=True)
class Goal:
    """Linear constraints ``A z <= b`` on a network's output ``z``: one polyhedron.

    ``label`` marks the common case "class ``label`` wins": the rows are
    ``z_j - z_label <= 0`` for every ``j != label``, in increasing ``j``; its
    arithmetic is then done on ``z`` directly (``z_j - z_label``), so that
    every number is the same as it was before goals were general.

    Row ``r`` is one constraint; the stages keep a subset of rows (the
    "rivals" of a class) and add the others back when they are violated.
    """

    A: np.ndarray
    b: np.ndarray
    label: int | None = None

    @classmethod
    def of_class(cls, label: int, n_out: int) -> Goal:
        """ "Class ``label`` wins" over ``n_out`` outputs (ties count as a win)."""
        others = [j for j in range(n_out) if j != label]
        A = np.zeros((len(others), n_out))
        for r, j in enumerate(others):
            A[r, j], A[r, label] = 1.0, -1.0
        return cls(A, np.zeros(len(others)), int(label))

    @property
    def n_rows(self) -> int:
        return int(self.A.shape[0])

    def others(self) -> list[int]:
        """For a class goal, the class of each row; else the row indices."""
        if self.label is None:
            return list(range(self.n_rows))
        return [j for j in range(self.A.shape[1]) if j != self.label]

    def affine(
        self, Z: np.ndarray, z0: np.ndarray, rows: Sequence[int] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(G, g)`` with the goal's ``rows`` (all by default) reading ``G x <= g``
        when the output is ``z = Z x + z0``."""
        sel = list(range(self.n_rows)) if rows is None else sorted(rows)
        if self.label is not None:
            others = self.others()
            cls = [others[r] for r in sel]
            return Z[cls] - Z[self.label], z0[self.label] - z0[cls]
        return self.A[sel] @ Z, self.b[sel] - self.A[sel] @ z0

    def leads(self, z: np.ndarray) -> np.ndarray:
        """``A z - b`` per row for one output ``z`` (positive where a row is violated)."""
        if self.label is not None:
            return z[self.others()] - z[self.label]
        return self.A @ z - self.b

    def slack(self, z: np.ndarray) -> float:
        """How far inside the goal ``z`` is: ``-max(A z - b)`` (``inf`` with no rows)."""
        if self.n_rows == 0:
            return float("inf")
        if self.label is not None:
            return float(z[self.label] - np.delete(z, self.label).max())
        return float(-(self.A @ z - self.b).max())

    def worst_row(self, z: np.ndarray) -> int:
        """The row nearest to being violated (most violated) at output ``z``."""
        if self.label is not None:
            out = z.copy()
            out[self.label] = -np.inf
            j = int(np.argmax(out))
            return j if j < self.label else j - 1
        return int(np.argmax(self.A @ z - self.b))

    def names(self, rows: Sequence[int]) -> list[int]:
        """Rows as reported: the rival classes for a class goal, else row indices."""
        others = self.others()
        return [others[r] for r in sorted(rows)]

    def only_order(self) -> bool:
        """Whether every row reads ``z_j - z_k <= 0``: then any increasing activation or
        softmax after ``z`` keeps the goal, as it keeps the arg-max."""
        if self.label is not None:
            return True
        if np.any(self.b != 0):
            return False
        for a in self.A:
            nz = np.nonzero(a)[0]
            if nz.size != 2 or sorted(a[nz].tolist()) != [-1.0, 1.0]:
                return False
        return True


def as_goal(goal: Goal | int | None, n_out: int) -> Goal | None:
    """A :class:`Goal` from a goal, a class index (``Goal.of_class``) or None."""
    if goal is None or isinstance(goal, Goal):
        return goal
    return Goal.of_class(int(goal), n_out)


def monotone_neurons(
    net: PLNet, goal: Goal | int, rivals: Sequence[int] | None = None
) -> np.ndarray:
    """Neurons of the last hidden layer whose binary the output constraints never need.

    The goal's rows read ``sum_k V[r, k] h_k + ... <= b_r`` with ``V = A W_L``
    (for a class, ``V[j] = W_L[j] - W_L[label]``). A neuron with
    ``V[r, k] >= 0`` for every kept row ``r`` only helps the goal by being
    smaller, and ``h = max(z, a z)`` is convex, so the relaxation
    ``h >= z, h >= a z`` is exact for it: any point of the relaxation stays
    feasible, with the same input and objective, when ``h`` is lowered to
    ``max(z, a z)`` (and ``delta`` set to its sign). Its binary can be made
    continuous and its bounds need no tightening (Fischetti & Jo 2018 make
    the same observation for ReLUs whose output is only penalised). ``goal``
    may be a class index; ``rivals`` are then classes, else rows of the goal
    (all by default). Returns a boolean mask over the last hidden layer.

    References
    ----------
    Fischetti & Jo (2018), "Deep neural networks and mixed integer linear
    optimization", Constraints 23.
    """
    WL = net.Ws[-1]
    g = as_goal(goal, WL.shape[0])
    assert g is not None
    rows = _rows(g, goal, rivals)
    if not rows:
        return np.ones(WL.shape[1], bool)
    V, _ = g.affine(WL, np.zeros(WL.shape[0]), rows)
    return np.all(V >= 0, axis=0)


def _rows(g: Goal, given: Goal | int, rivals: Sequence[int] | None) -> list[int]:
    """The goal's rows to keep: all, or ``rivals`` (classes when ``given`` is a class index)."""
    if rivals is None:
        return list(range(g.n_rows))
    if isinstance(given, Goal):
        return sorted(set(rivals))
    others = g.others()
    keep = set(rivals)
    return [r for r, j in enumerate(others) if j in keep]


@dataclass
class Encoding:
    """A MILP ``min c.v`` s.t. ``lb <= A v <= ub``, ``lower <= v <= upper``, ``integrality``.

    ``info`` holds ``"n_binaries"``, ``"z_cols"`` (per hidden layer, the columns
    of the unstable neurons' pre-activations), ``"z_def"`` (their defining
    rows, for :func:`nninv.geometry._bounds.ideal_cuts`) and, for a partial
    encoding, ``"z_next"``.
    """

    c: np.ndarray
    A: sp.csr_matrix
    lb: np.ndarray
    ub: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    integrality: np.ndarray
    n_in: int
    delta_index: list[tuple[np.ndarray, np.ndarray]]  # per layer: (neurons, variable indices)
    info: dict[str, Any] = field(default_factory=dict)

    def with_rows(self, C: sp.csr_matrix, ub: np.ndarray) -> Encoding:
        """The same problem with the rows ``C v <= ub`` added (cuts)."""
        if not C.shape[0]:
            return self
        return Encoding(
            self.c,
            sp.vstack([self.A, C]).tocsr(),
            np.concatenate([self.lb, np.full(C.shape[0], -np.inf)]),
            np.concatenate([self.ub, ub]),
            self.lower,
            self.upper,
            self.integrality,
            self.n_in,
            self.delta_index,
            self.info,
        )


#: One term of a row block: ``(offset, M)``, a dense block whose columns start at
#: ``offset``, or ``(None, (cols, vals))``, one entry per row.
_Part = tuple[int | None, np.ndarray | tuple[np.ndarray, np.ndarray | float]]


class _Rows:
    """Collects sparse constraint rows ``lb <= sum(parts) <= ub``."""

    def __init__(self) -> None:
        self.r: list[np.ndarray] = []
        self.c: list[np.ndarray] = []
        self.v: list[np.ndarray] = []
        self.lb: list[np.ndarray] = []
        self.ub: list[np.ndarray] = []
        self.m = 0

    def add(self, parts: list[_Part], lb: np.ndarray, ub: np.ndarray) -> None:
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
                self.c.append((off or 0) + cc)
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


@dataclass
class _Columns:
    """The variables of an encoding: ``x``, then per layer the unstable neurons' ``h``
    and ``z``, then per layer their binaries; bounds and integrality in that order."""

    unst: list[np.ndarray] = field(default_factory=list)
    h_cols: list[np.ndarray] = field(default_factory=list)
    z_cols: list[np.ndarray] = field(default_factory=list)
    d_cols: list[np.ndarray] = field(default_factory=list)
    lower: list[np.ndarray] = field(default_factory=list)
    upper: list[np.ndarray] = field(default_factory=list)
    integ: list[np.ndarray] = field(default_factory=list)
    nvar: int = 0

    def add(self, lower: np.ndarray, upper: np.ndarray, kind: np.ndarray) -> np.ndarray:
        """Append variables; returns their columns."""
        cols = self.nvar + np.arange(lower.size)
        self.lower.append(lower)
        self.upper.append(upper)
        self.integ.append(kind)
        self.nvar += lower.size
        return cols

    def encoding(self, cost: np.ndarray, rows: _Rows, n_in: int, info: dict[str, Any]) -> Encoding:
        """The finished :class:`Encoding` over ``cost.size`` variables."""
        A, lb, ub = rows.build(cost.size)
        return Encoding(
            cost,
            A,
            lb,
            ub,
            np.concatenate(self.lower),
            np.concatenate(self.upper),
            np.concatenate(self.integ),
            n_in,
            list(zip(self.unst, self.d_cols)),
            info,
        )


def _columns(
    net: PLNet,
    bounds: list[tuple[np.ndarray, np.ndarray]],
    lo: np.ndarray,
    hi: np.ndarray,
    L: int,
    free: np.ndarray | None,
    relax: bool,
) -> _Columns:
    cols = _Columns()
    cols.add(lo.copy(), hi.copy(), np.zeros(net.n_in))
    for k in range(L):
        l, u = bounds[k]
        a = net.slopes[k]
        J = np.nonzero((l < 0) & (u > 0))[0]
        cols.unst.append(J)
        cols.h_cols.append(cols.add(_act(l[J], a), _act(u[J], a), np.zeros(J.size)))
        # the pre-activation of each unstable neuron gets a variable too: one dense
        # row defines it, and its big-M rows stay sparse
        cols.z_cols.append(cols.add(l[J], u[J], np.zeros(J.size)))
    for k in range(L):
        J = cols.unst[k]
        kind = np.full(J.size, 0.0 if relax else 1.0)
        if free is not None and k == L - 1:
            kind[free[J]] = 0.0
        cols.d_cols.append(cols.add(np.zeros(J.size), np.ones(J.size), kind))
    return cols


def _hidden_rows(
    net: PLNet,
    bounds: list[tuple[np.ndarray, np.ndarray]],
    cols: _Columns,
    L: int,
    total: int,
    rows: _Rows,
) -> tuple[np.ndarray, np.ndarray, list[Any]]:
    """The big-M rows of the unstable neurons of the first ``L`` layers; returns the
    last layer's output as an affine expression ``(H, h0)`` in the variables, and the
    rows defining each layer's unstable pre-activations (``info["z_def"]``)."""
    n = net.n_in
    z_def: list[Any] = []
    # H (m, total), h0 (m,): the current layer's output as an affine expression
    H = np.zeros((n, total))
    H[:, :n] = np.eye(n)
    h0 = np.zeros(n)
    for k in range(L):
        W, b, a = net.Ws[k], net.bs[k], net.slopes[k]
        l, u = bounds[k]
        Z, z0 = W @ H, W @ h0 + b
        J, hc, dc, zc = cols.unst[k], cols.h_cols[k], cols.d_cols[k], cols.z_cols[k]
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
    return H, h0, z_def


def _goal_rows(
    G: np.ndarray,
    g: np.ndarray,
    cols: _Columns,
    rows: _Rows,
    cost: np.ndarray,
    margin: float,
    margin_objective: bool,
) -> None:
    """The goal's rows ``G v <= g - margin``; with ``margin_objective``, ``G v - s <= g``
    with a new free variable ``s`` (the next column) as the objective."""
    if margin_objective:
        s_col = cols.nvar
        G[:, s_col] = -1.0
        rows.add([(0, G)], np.full(len(g), -np.inf), g)
        cols.add(np.array([-np.inf]), np.array([np.inf]), np.zeros(1))
        cost[s_col] = 1.0
    else:
        rows.add([(0, G)], np.full(len(g), -np.inf), g - margin)


def _distance_rows(
    cols: _Columns,
    rows: _Rows,
    cost: np.ndarray,
    x0: np.ndarray,
    lo: np.ndarray,
    hi: np.ndarray,
    norm: str,
    max_distance: float | None,
) -> None:
    """The objective ``|x - x0|`` (``linf``: one variable ``t``; ``l1``: one per input)."""
    n = x0.size
    # |x_i - x0_i| as two rows, each only where the box lets x_i pass x0_i on that
    # side: on MNIST most pixels sit at 0, where x_i >= x0_i - t always holds
    up = np.nonzero(hi > x0)[0]
    dn = np.nonzero(lo < x0)[0]
    if norm == "linf":
        t = cols.nvar
        top = np.array([np.inf if max_distance is None else max_distance])
        cols.add(np.zeros(1), top, np.zeros(1))
        cost[t] = 1.0
        ta, tb = np.full(up.size, t), np.full(dn.size, t)
        rows.add([(None, (up, 1.0)), (None, (ta, -1.0))], np.full(up.size, -np.inf), x0[up])
        rows.add([(None, (dn, -1.0)), (None, (tb, -1.0))], np.full(dn.size, -np.inf), -x0[dn])
    elif norm == "l1":
        a0 = cols.nvar
        cols.add(np.zeros(n), np.full(n, np.inf), np.zeros(n))
        cost[a0:] = 1.0
        rows.add([(None, (up, 1.0)), (None, (a0 + up, -1.0))], np.full(up.size, -np.inf), x0[up])
        rows.add([(None, (dn, -1.0)), (None, (a0 + dn, -1.0))], np.full(dn.size, -np.inf), -x0[dn])
        if max_distance is not None:
            rows.add([(a0, np.ones((1, n)))], np.array([-np.inf]), np.array([max_distance]))
    else:
        raise AssertionError(norm)


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
    rivals: Sequence[int] | None = None,
    monotone: bool = False,
    margin_objective: bool = False,
    goal: Goal | None = None,
) -> Encoding:
    """Encode the first ``layers`` hidden layers (all by default) over ``lo <= x <= hi``.

    Only unstable neurons get variables (``h`` and a binary ``delta``); a
    stable neuron is an affine expression in ``x`` and the earlier unstable
    ``h``, substituted where it is used, so the model has no equality rows.
    With ``goal`` (a :class:`Goal`) or ``label`` (a class: ``Goal.of_class``),
    adds the goal's rows ``A z <= b - margin`` on the output ``z`` (for a class,
    ``z_label - z_j >= margin``); with ``norm`` (``"linf"`` or ``"l1"``) and
    ``x0``, the objective ``|x - x0|``, at most ``max_distance``.
    ``relax=True`` makes the binaries continuous (the LP relaxation).
    ``info["z_next"]`` holds the expression ``(A, a0)`` of the pre-activations
    of layer ``layers`` (for bound tightening).

    ``rivals`` restricts the output constraints to some rows (the classes, with
    ``label``; rows of ``goal`` otherwise), all by default: a relaxation, whose
    optimum is checked against the others afterwards. ``monotone=True`` makes
    the binaries of :func:`monotone_neurons` (for these rows) continuous:
    exact for the inputs, although ``h`` and ``delta`` of those neurons may
    then be off.

    ``margin_objective=True`` (with a goal, without ``norm``) turns the output
    constraints into the objective: a last, free variable ``s`` with
    ``a_r . z - b_r <= s`` for each kept row, minimised; its optimum is the
    largest violation at the best input, and the goal is reachable in the box
    (by ``margin``) exactly when it is ``<= -margin``.
    """
    L = len(net.slopes) if layers is None else layers
    n_out = net.Ws[-1].shape[0]
    given: Goal | int | None = goal if goal is not None else label
    g = as_goal(given, n_out)
    keep = None if g is None or given is None else _rows(g, given, rivals)
    free = None
    if monotone and g is not None and given is not None and L == len(net.slopes) and L:
        free = monotone_neurons(net, g, keep)
    cols = _columns(net, bounds, lo, hi, L, free, relax)
    nvar = cols.nvar
    extra = 0 if norm is None else (1 if norm == "linf" else net.n_in)
    if margin_objective and (g is None or norm is not None):
        raise AssertionError("margin_objective needs a goal and no norm")
    total = nvar + extra + int(margin_objective)
    rows = _Rows()
    H, h0, z_def = _hidden_rows(net, bounds, cols, L, total, rows)
    n_bin = int(sum(J.size for J in cols.unst))
    if free is not None and not relax:
        n_bin -= int(free[cols.unst[L - 1]].sum())
    info: dict[str, Any] = {"n_binaries": n_bin, "z_cols": cols.z_cols, "z_def": z_def}
    if L < len(net.slopes):
        info["z_next"] = (net.Ws[L] @ H, net.Ws[L] @ h0 + net.bs[L])
    cost = np.zeros(total)
    if g is not None:
        assert L == len(net.slopes)
        G, gv = g.affine(net.Ws[-1] @ H, net.Ws[-1] @ h0 + net.bs[-1], keep)
        _goal_rows(G, gv, cols, rows, cost, margin, margin_objective)
    if norm is not None:
        assert x0 is not None
        _distance_rows(cols, rows, cost, x0, lo, hi, norm, max_distance)
    return cols.encoding(cost, rows, net.n_in, info)


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

"""Exact MILP search for an input in a box whose output meets ``A y <= b`` (HiGHS).

The network is the float64 :class:`~nninv.bounds.Layers`; with
bounds ``l <= z <= u`` on every hidden pre-activation over the box, a stable
neuron is linear and an unstable one ``h = max(z, a z)`` gets one binary
``delta`` and the big-M rows

    h >= z,  h >= a z,  h <= z - (1 - a) l (1 - delta),  h <= a z + (1 - a) u delta,

exact for ``delta`` in ``{0, 1}`` (Tjeng, Xiao & Tedrake 2019). The output
rows read ``A y - b <= t`` with ``t <= 0``; the objective ``min t`` steers
the relaxation towards the deepest violation. Infeasible means no input of
the box reaches the set (given sound bounds); the first incumbent is a
candidate, which the caller confirms by running the model.

References
----------
Tjeng, Xiao & Tedrake (2019), "Evaluating robustness of neural networks with
mixed integer programming", ICLR.
"""

from __future__ import annotations

__all__ = ["search", "tighten"]

from types import ModuleType
from typing import TYPE_CHECKING

import numpy as np
import scipy.sparse as sp
from torch import Tensor

from ..bounds import Layers
from ..highs import quiet_highs

if TYPE_CHECKING:
    from highspy import Highs


#: What :func:`_encode` returns (see there).
_Encoding = tuple[list, list, list, list, list, list, list, list, int, int, np.ndarray, int]


def _encode(
    net: Layers, bounds: list[tuple[Tensor, Tensor]], lo: np.ndarray, hi: np.ndarray
) -> _Encoding:
    """Columns ``[x, h_0, ..., h_{L-1}, deltas]`` and the rows of the network.

    Returns the coo parts (rows, cols, vals), the row bounds, the column bounds,
    the integrality mask, the numbers of columns and rows, the columns of the
    last hidden layer and the number of binaries.
    """
    rows: list = []
    cols: list = []
    vals: list = []
    rlo: list = []
    rhi: list = []
    nrow = 0

    def add(
        idx: np.ndarray,
        W: np.ndarray,
        prv: np.ndarray,
        hc: np.ndarray,
        scale: float,
        dcols: np.ndarray | None,
        dcoef: np.ndarray | None,
        lo_r: np.ndarray,
        hi_r: np.ndarray,
    ) -> None:
        # rows  h[idx] - scale * W[idx] @ h_prev (+ dcoef * delta)  in [lo_r, hi_r]
        nonlocal nrow
        r_of = nrow + np.arange(idx.size)
        Wi = W[idx]
        rr, cc = np.nonzero(Wi)
        rows.extend([r_of[rr], r_of])
        cols.extend([prv[cc], hc[idx]])
        vals.extend([-scale * Wi[rr, cc], np.ones(idx.size)])
        if dcoef is not None:
            rows.append(r_of)
            cols.append(dcols)
            vals.append(dcoef)
        rlo.append(lo_r)
        rhi.append(hi_r)
        nrow += idx.size

    col_lo, col_hi = [lo], [hi]
    layers = []
    prev = np.arange(lo.size)
    ncol = lo.size
    for j, a in enumerate(net.slopes):
        l, u = (v.numpy() for v in bounds[j])
        n = l.size
        hc = ncol + np.arange(n)
        ncol += n
        col_lo.append(np.minimum(np.where(l >= 0, l, a * l), np.where(u >= 0, u, a * u)))
        col_hi.append(np.where(u >= 0, u, a * u))
        layers.append((prev, hc))
        prev = hc
    n_x_h = ncol
    n_delta = 0
    for j, a in enumerate(net.slopes):
        W, b = net.Ws[j].numpy(), net.bs[j].numpy()
        l, u = (v.numpy() for v in bounds[j])
        prv, hc = layers[j]
        active, dead = l >= 0, u <= 0
        unst = np.nonzero(~(active | dead))[0]
        idx = np.nonzero(active)[0]
        if idx.size:
            add(idx, W, prv, hc, 1.0, None, None, b[idx], b[idx])  # h = z
        idx = np.nonzero(dead)[0]
        if idx.size and a != 0.0:
            add(idx, W, prv, hc, a, None, None, a * b[idx], a * b[idx])  # h = a z
        if unst.size == 0:
            continue
        dc = ncol + np.arange(unst.size)
        ncol += unst.size
        n_delta += unst.size
        big = np.full(unst.size, np.inf)
        bi, li, ui = b[unst], l[unst], u[unst]
        add(unst, W, prv, hc, 1.0, None, None, bi, big)  # h >= z
        if a != 0.0:
            add(unst, W, prv, hc, a, None, None, a * bi, big)  # h >= a z
        # h <= z - (1 - a) l (1 - delta)
        add(unst, W, prv, hc, 1.0, dc, -(1 - a) * li, -big, bi - (1 - a) * li)
        # h <= a z + (1 - a) u delta
        add(unst, W, prv, hc, a, dc, -(1 - a) * ui, -big, a * bi)
        col_lo.append(np.zeros(unst.size))
        col_hi.append(np.ones(unst.size))
    integer = np.concatenate([np.zeros(n_x_h, bool), np.ones(ncol - n_x_h, bool)])
    last = prev
    return rows, cols, vals, rlo, rhi, col_lo, col_hi, list(integer), ncol, nrow, last, n_delta


def search(
    net: Layers,
    bounds: list[tuple[Tensor, Tensor]],
    lo: Tensor,
    hi: Tensor,
    A: Tensor,
    b: Tensor,
    time_limit: float,
    first: bool = True,
    options: dict | None = None,
    relax: bool = False,
) -> dict:
    """Is there an ``x`` in the box with ``A f(x) <= b``? Solved as a MILP by HiGHS.

    Returns ``status`` (``"infeasible"``: proven none, given sound ``bounds``;
    ``"found"``: ``x`` holds the solver's input; ``"unknown"``: time ran out
    or the solver failed), ``x``, ``t`` (the solver's ``max(A y - b)`` at it),
    ``nodes``, ``binaries``, ``message``. ``first=False`` keeps searching for
    the deepest violation instead of stopping at the first input found;
    ``relax=True`` solves the LP relaxation (binaries in ``[0, 1]``), whose
    infeasibility is a proof too and whose solutions prove nothing; ``options``
    go to HiGHS as they are.
    """
    import highspy

    lo_n, hi_n = lo.numpy(), hi.numpy()
    rows, cols, vals, rlo, rhi, col_lo, col_hi, integer, ncol, nrow, last, n_delta = _encode(
        net, bounds, lo_n, hi_n
    )
    # output rows: (A W_L) h_last - t <= b - A b_L
    WL, bL = net.Ws[-1].numpy(), net.bs[-1].numpy()
    An, bn = A.numpy(), b.numpy()
    G = An @ WL
    t_col = ncol
    ncol += 1
    m = G.shape[0]
    r_of = nrow + np.arange(m)
    rr, cc = np.nonzero(G != 0)
    rows.extend([r_of[rr], r_of])
    cols.extend([last[cc], np.full(m, t_col)])
    vals.extend([G[rr, cc], -np.ones(m)])
    rlo.append(np.full(m, -np.inf))
    rhi.append(bn - An @ bL)
    nrow += m
    col_lo.append(np.array([-np.inf]))
    col_hi.append(np.array([0.0]))
    integer.append(False)
    M = sp.csc_matrix(
        (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(nrow, ncol)
    )
    h = quiet_highs()
    h.setOptionValue("time_limit", float(max(time_limit, 1e-3)))
    if first:
        h.setOptionValue("mip_max_improving_sols", 1)
    for key, val in (options or {}).items():
        h.setOptionValue(key, val)
    lp = highspy.HighsLp()
    lp.num_col_, lp.num_row_ = ncol, nrow
    cost = np.zeros(ncol)
    cost[t_col] = 1.0
    lp.col_cost_ = cost
    lp.col_lower_ = np.concatenate(col_lo)
    lp.col_upper_ = np.concatenate(col_hi)
    lp.row_lower_ = np.concatenate(rlo) if rlo else np.zeros(0)
    lp.row_upper_ = np.concatenate(rhi) if rhi else np.zeros(0)
    lp.a_matrix_.format_ = highspy.MatrixFormat.kColwise
    lp.a_matrix_.start_, lp.a_matrix_.index_, lp.a_matrix_.value_ = M.indptr, M.indices, M.data
    kinds = (highspy.HighsVarType.kContinuous, highspy.HighsVarType.kInteger)
    if not relax:
        lp.integrality_ = [kinds[int(v)] for v in integer]
    h.passModel(lp)
    h.run()
    return _answer(highspy, h, lo_n.size, t_col, n_delta)


def _answer(highspy: ModuleType, h: Highs, n_x: int, t_col: int, n_delta: int) -> dict:
    """The dict :func:`search` returns, read from the solved model."""
    st = h.getModelStatus()
    info = h.getInfo()
    S = highspy.HighsModelStatus
    x = None
    t = None
    if info.primal_solution_status == 2:
        v = np.asarray(h.getSolution().col_value)
        x, t = v[:n_x].copy(), float(v[t_col])
    if x is not None:
        status = "found"
    elif st == S.kInfeasible:
        status = "infeasible"
    else:
        status = "unknown"
    return {
        "status": status,
        "x": x,
        "t": t,
        "nodes": max(0, int(info.mip_node_count)),
        "binaries": n_delta,
        "message": h.modelStatusToString(st),
    }


#: An LP bound is loosened by this much (relative) before use: the simplex stops within
#: its feasibility tolerances, and a big-M bound that cuts off a real point is unsound.
LP_SLACK = 1e-6


def tighten(
    net: Layers,
    bounds: list[tuple[Tensor, Tensor]],
    lo: Tensor,
    hi: Tensor,
    deadline: float,
) -> tuple[list[tuple[Tensor, Tensor]], int]:
    """Tighten the bounds of unstable neurons of the layers after the first by LPs.

    Each unstable pre-activation ``z_i = W_k[i] h_{k-1} + b_k[i]`` is minimised
    and maximised over the LP relaxation of the layers before it (inputs in the
    box); the optimum, loosened by ``LP_SLACK``, replaces the bound where it is
    tighter (Tjeng, Xiao & Tedrake 2019). Stops at ``deadline`` (``time.perf_counter``).
    Returns the bounds and the number of LPs solved.
    """
    import time

    import highspy

    out = [(l.clone(), u.clone()) for l, u in bounds]
    n_lp = 0
    lo_n, hi_n = lo.numpy(), hi.numpy()
    for k in range(1, len(net.slopes)):
        l, u = out[k]
        unst = ((l < 0) & (u > 0)).nonzero().flatten().tolist()
        if not unst:
            continue
        sub = Layers(net.Ws[:k] + [net.Ws[k]], net.bs[:k] + [net.bs[k]], net.slopes[:k])
        rows, cols, vals, rlo, rhi, col_lo, col_hi, _, ncol, nrow, last, _ = _encode(
            sub, out[:k], lo_n, hi_n
        )
        M = sp.csc_matrix(
            (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
            shape=(nrow, ncol),
        )
        h = quiet_highs()
        h.setOptionValue("presolve", "off")
        lp = highspy.HighsLp()
        lp.num_col_, lp.num_row_ = ncol, nrow
        lp.col_cost_ = np.zeros(ncol)
        lp.col_lower_, lp.col_upper_ = np.concatenate(col_lo), np.concatenate(col_hi)
        lp.row_lower_, lp.row_upper_ = np.concatenate(rlo), np.concatenate(rhi)
        lp.a_matrix_.format_ = highspy.MatrixFormat.kColwise
        lp.a_matrix_.start_, lp.a_matrix_.index_, lp.a_matrix_.value_ = M.indptr, M.indices, M.data
        h.passModel(lp)
        W, b = net.Ws[k].numpy(), net.bs[k].numpy()
        idx = np.asarray(last, dtype=np.int32)
        l, u = l.clone(), u.clone()
        for i in unst:
            for sign in (1.0, -1.0):
                if time.perf_counter() > deadline:
                    out[k] = (l, u)
                    return out, n_lp
                h.changeColsCost(idx.size, idx, sign * W[i])
                h.run()
                n_lp += 1
                if h.getModelStatus() != highspy.HighsModelStatus.kOptimal:
                    continue
                v = sign * h.getInfo().objective_function_value + b[i]
                pad = LP_SLACK * (1.0 + abs(v) + float(np.abs(W[i]).sum()))
                if sign > 0:
                    l[i] = max(float(l[i]), v - pad)
                else:
                    u[i] = min(float(u[i]), v + pad)
        out[k] = (l, u)
    return out, n_lp

"""Gauss-Newton projection onto the exact preimage ``{x : F(x) = y}`` within bounds, and polishing.

:func:`project` moves inputs onto the set an exact target asks for (or into
the class a class target asks for) by damped Gauss-Newton steps
``x <- x - M J^T (J M J^T + damping)^+ r`` in the prior's metric ``M`` (its
covariance; the identity without a Gaussian part), restricted to the
coordinates not at a bound, which are held there; a step that leaves the box
is clipped. The output is low-dimensional, so each step solves an ``m x m``
system per sample, and convergence near the solution is quadratic, down to
rounding. :func:`polish` then takes sequential quadratic programming steps
along that set against the gradient of ``-log p``, each projected back and
kept only if ``-log p`` went down, so that the answer is the prior's optimum
on it (Nocedal & Wright 2006, ch. 10 and 18). Both work on the
:class:`._constraint._Coords` and :class:`._constraint._Constraint` of a
problem; they are shared by ``method="optimize"`` (stages 3 and 4) and by
anything else that needs to land on the preimage.
"""

from __future__ import annotations

__all__ = ["polish", "project"]

import math

import torch
from torch import Tensor

from ._constraint import CLASS_MARGIN, _clip, _Constraint, _Coords, _jacobian, _out_dim

# --- Gauss-Newton projection --------------------------------------------------------------


def project(
    coords: _Coords,
    cons: _Constraint,
    rows: Tensor,
    x: Tensor,
    lo: Tensor | None,
    hi: Tensor | None,
    max_iter: int = 30,
) -> tuple[Tensor, int, Tensor, Tensor]:
    """Move ``x`` onto ``{r(x) = 0}`` (exact) or ``{r(x) <= 0}`` (class) within the box.

    The entry point of this module: damped Gauss-Newton steps in the prior's
    metric, each with a backtracking search on the residual, with coordinates
    at a bound held there. Rows stop on their own once their violation is at
    the goal or no step reduces it.

    Parameters
    ----------
    coords : _Coords
        The prior's coordinates, expanded to the rows of ``x`` (its metric
        ``coords.metric`` shapes the steps).
    cons : _Constraint
        The constraint to meet; ``cons.residual(F(x), rows)`` is ``r``.
    rows : Tensor
        ``(k,)`` long: for each row of ``x``, its sample in the target (rows of
        ``cons.t`` or ``cons.labels``).
    x : Tensor
        ``(k, n)`` flat inputs to start from, inside the box; not modified.
    lo, hi : Tensor or None
        ``(n,)`` bounds, both or neither.
    max_iter : int
        Gauss-Newton iterations at most.

    Returns
    -------
    x : Tensor
        ``(k, n)`` the projected inputs, inside the box.
    iterations : int
        Iterations used by the slowest row.
    err, goal : Tensor
        ``(k,)`` the violation reached per row (max-abs residual for an exact
        target, the margin's shortfall for a class target; inf where NaN) and
        the one aimed at: ``64 eps`` times the target's scale for an exact
        target, 0 for a class target. A row with ``err > goal`` failed.
    """
    T = x.shape[0]
    dev = x.device
    eps = torch.finfo(x.dtype).eps
    with torch.no_grad():
        r = cons.residual(cons.F(x), rows)
    if cons.kind == "exact":
        goal = 4 * eps * cons.scale[rows] * 16  # type: ignore[index]
    else:
        goal = torch.zeros(T, dtype=x.dtype, device=dev)
        r = r.clamp(min=-math.inf)
    err = _proj_err(cons, r)
    it_used = 0
    active = err > goal
    x = x.clone()
    damp = torch.zeros(T, dtype=x.dtype, device=dev)
    for it in range(1, max_iter + 1):
        a = active.nonzero().flatten()
        if a.numel() == 0:
            break
        it_used = it
        xa = x[a]
        va, J = _jacobian(cons.F, xa, cons.m if cons.kind == "exact" else _out_dim(cons, xa))
        if cons.kind == "class":
            with torch.enable_grad():
                z = va.detach().requires_grad_(True)
                rr = cons.residual(z, rows[a])
                (dz,) = torch.autograd.grad(rr.sum(), z)
            J = dz[:, None, :] @ J  # (k, 1, n)
            ra = rr.detach()
            # aim at half the margin beyond the threshold
            ra = ra + 0.5 * CLASS_MARGIN
        else:
            ra = cons.residual(va, rows[a])
        # coordinates on a bound are held there, the others projected
        free = None if lo is None else (xa > lo) & (xa < hi)
        step = _gn_step(coords, J, ra, a, damp[a], free)
        t = torch.ones(a.numel(), dtype=x.dtype, device=dev)
        old = _proj_err(cons, ra if cons.kind == "exact" else ra - 0.5 * CLASS_MARGIN)
        need = torch.ones(a.numel(), dtype=torch.bool, device=dev)
        xn = xa.clone()
        en = old.clone()
        with torch.no_grad():
            for _ in range(30):
                b = need.nonzero().flatten()
                cand = _clip(xa[b] - t[b, None] * step[b], lo, hi)
                rc = cons.residual(cons.F(cand), rows[a[b]])
                ec = _proj_err(cons, rc)
                better = ec < old[b]
                if cons.kind == "exact":
                    better = rc.norm(dim=1) < ra[b].norm(dim=1)
                    better &= torch.isfinite(ec)
                bb = b[better]
                xn[bb], en[bb] = cand[better], ec[better]
                need[bb] = False
                t[b[~better]] *= 0.5
                if not bool(need.any()):
                    break
        x[a] = xn
        err[a] = en
        full = t == 1
        damp[a] = torch.where(full, damp[a] / 10, (damp[a] * 10).clamp(min=1e-4, max=1e4))
        damp[a] = torch.where(damp[a] < 1e-8, 0.0, damp[a])
        active[a] = (en > goal[a]) & ~need
    return x, it_used, err, goal


def _gn_step(
    coords: _Coords, J: Tensor, r: Tensor, rows: Tensor, damp: Tensor, free: Tensor | None
) -> Tensor:
    """``M_F J_F^T (J_F M_F J_F^T + damp)^+ r``: the damped Gauss-Newton step (k, n).

    ``M_F`` is the prior's metric restricted to the free coordinates (all if None).
    """
    if free is not None:
        J = J * free[:, None, :].to(J.dtype)
    MJt = coords.metric(J.transpose(1, 2), rows)
    if free is not None:
        MJt = MJt * free[:, :, None].to(J.dtype)
    A = J @ MJt
    e, Q = torch.linalg.eigh(0.5 * (A + A.transpose(1, 2)))
    top = e.amax(1, keepdim=True).clamp(min=torch.finfo(J.dtype).tiny)
    # Levenberg-Marquardt damping relative to the largest eigenvalue; directions below
    # rounding are dropped, as in a pseudo-inverse
    inv = torch.where(e > 1e-13 * top, 1.0 / (e + damp[:, None] * top), 0.0)
    lam = Q @ (inv * (Q.transpose(1, 2) @ r[:, :, None])[:, :, 0])[:, :, None]
    return (MJt @ lam)[:, :, 0]


def _proj_err(cons: _Constraint, r: Tensor) -> Tensor:
    if cons.kind == "exact":
        return r.abs().amax(1).nan_to_num(nan=math.inf)
    return r[:, 0].clamp(min=0).nan_to_num(nan=math.inf)


# --- steps along the constraint set -------------------------------------------------------


def polish(
    coords: _Coords,
    cons: _Constraint,
    rows: Tensor,
    x: Tensor,
    lo: Tensor | None,
    hi: Tensor | None,
    steps: int = 3,
) -> tuple[Tensor, Tensor]:
    """Sequential quadratic programming steps on feasible ``x``, each followed by a projection.

    With ``M`` the prior's metric and ``J`` the constraint's Jacobian (both on the
    coordinates not at a bound), the step ``d = -(M g - M J^T (J M J^T)^+ J M g)``
    moves along the constraint set against the gradient ``g`` of ``-log p``; for a
    Gaussian prior ``M g = x - mu`` and the step is the Newton step of the reduced
    problem (exact for a linear model). A step is kept only if, after projecting
    back, the target still holds and ``-log p`` went down; a row stops at its
    first rejected step.

    Parameters
    ----------
    coords, cons, rows, lo, hi
        As for :func:`project`.
    x : Tensor
        ``(k, n)`` feasible inputs (as :func:`project` returns them); not modified.
    steps : int
        Steps at most per row.

    Returns
    -------
    x : Tensor
        ``(k, n)`` the polished inputs, still feasible.
    kept : Tensor
        ``(k,)`` long: the steps kept per row.
    """
    T = x.shape[0]
    kept = torch.zeros(T, dtype=torch.long, device=x.device)
    e, g = _energy_grad(coords, x)
    x = x.clone()
    act = torch.arange(T, device=x.device)  # rows whose last step was kept
    for _ in range(steps):
        if act.numel() == 0:
            break
        xa, ga = x[act], g[act]
        _, J = _jacobian(cons.F, xa, cons.m)
        free = None if lo is None else (xa > lo) & (xa < hi)
        gf = ga if free is None else ga * free
        Mg = coords.metric(gf[:, :, None], act)[:, :, 0]
        if free is not None:
            Mg = Mg * free
        zero = torch.zeros(len(act), dtype=x.dtype, device=x.device)
        d = _gn_step(coords, J, (J @ Mg[:, :, None])[:, :, 0], act, zero, free) - Mg
        # the minimiser of -log p along d (1 for a Gaussian alone; other terms
        # have their own curvature)
        sub = coords.expand(coords.comp[act] if coords.comp is not None else None)
        dHd = _curvature(sub, xa, d)
        t = torch.where(dHd > 0, -torch.linalg.vecdot(ga, d) / dHd.clamp(min=1e-300), 1.0)
        x_try = _clip(xa + t.clamp(0.0, 4.0)[:, None] * d, lo, hi)
        x_try, _, err, goal = project(sub, cons, rows[act], x_try, lo, hi)
        e_try, g_try = _energy_grad(sub, x_try)
        ok = (err <= goal) & (e_try < e[act])
        keep = act[ok]
        x[keep], e[keep], g[keep] = x_try[ok], e_try[ok], g_try[ok]
        kept[keep] += 1
        act = keep
    return x, kept


def _curvature(coords: _Coords, x: Tensor, d: Tensor) -> Tensor:
    """``d^T H d`` per row, with ``H`` the Hessian of ``-log p`` at ``x``."""
    with torch.enable_grad():
        xg = x.detach().requires_grad_(True)
        e = coords.energy(coords.to_u(xg, None), xg)
        (g,) = torch.autograd.grad(e.sum(), xg, create_graph=True)
        (hd,) = torch.autograd.grad((g * d).sum(), xg)
    return torch.linalg.vecdot(hd, d)


def _energy_grad(coords: _Coords, x: Tensor) -> tuple[Tensor, Tensor]:
    """``-log p(x)`` (up to a constant per component) and its gradient in ``x``."""
    with torch.enable_grad():
        xg = x.detach().requires_grad_(True)
        e = coords.energy(coords.to_u(xg, None), xg)
        (g,) = torch.autograd.grad(e.sum(), xg)
    return e.detach(), g

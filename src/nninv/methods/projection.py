"""The projection onto the preimage ``{x : f(x) = y}`` within a box, and polishing on it.

:func:`project` is the one way into it for every caller (the decoder method,
``nninv.posterior`` through it, the explorer): from starting inputs, it moves
each one onto the set an exact target asks for (or into the class a class
target asks for) by damped Gauss-Newton steps
``x <- x - M J^T (J M J^T + damping)^+ r`` in a metric ``M`` (the covariance
of a Gaussian prior, e.g. a decoder's error model; the identity without one),
restricted to the coordinates not at a bound, which are held there; a step
that leaves the box is clipped. An exact target is met before a last
invertible activation, where the constraint is best conditioned. The output is
low-dimensional, so each step solves an ``m x m`` system per sample, and
convergence near the solution is quadratic, down to rounding; the answer is a
nearby member, not a certified closest one. It returns a :class:`Projection`.

:func:`gauss_newton` is that algorithm on ``method="optimize"``'s own
coordinates and constraint (stage 3 of that method, per candidate row), and
:func:`polish` its stage 4: sequential quadratic programming steps along the
set against the gradient of ``-log p``, each projected back and kept only if
``-log p`` went down (Nocedal & Wright 2006, ch. 10 and 18).
:func:`solve_through_activation` is the per-layer variant that the
closed-form methods use inside a network (see its docstring for why it stays
separate).
"""

from __future__ import annotations

__all__ = ["Projection", "gauss_newton", "polish", "project"]

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..errors import NNInvError
from ..model.chain import Chain, analyse
from ..model.outputs import residual_of
from ..priors import Prior
from ..targets import ClassTarget
from ._constraint import (
    CLASS_MARGIN,
    _clip,
    _Constraint,
    _Coords,
    _jacobian,
    _ModelFunctions,
    _out_dim,
)

# --- the entry point ----------------------------------------------------------------------


@dataclass(frozen=True)
class Projection:
    """Inputs moved onto the preimage of a target, and how close they came.

    Attributes
    ----------
    x : Tensor
        The projected inputs, shaped like the starting inputs, inside the box.
    residual : Tensor
        ``(N,)`` ``max |f(x) - y|`` (for a class target: the shortfall from it),
        by running the model in the inputs' dtype.
    converged : Tensor
        ``(N,)`` bool: ``residual <= tol`` (and finite).
    iterations : int
        Gauss-Newton iterations used by the slowest sample.
    reasons : tuple of str or None
        Per sample, why it did not converge (None where it did).
    violation, goal : Tensor
        ``(N,)`` what the steps measure and drive down (the largest violation of
        the constraint, before a last invertible activation for an exact
        target; the margin's shortfall for a class target), and where they stop
        (``64 eps`` times the target's scale; 0 for a class target).
    start_residual : Tensor
        ``(N,)`` ``max |f(x_start) - y|`` at the starting inputs as given (before
        they are clipped into the box).
    """

    x: Tensor
    residual: Tensor
    converged: Tensor
    iterations: int
    reasons: tuple[str | None, ...]
    violation: Tensor
    goal: Tensor
    start_residual: Tensor


def project(
    model: nn.Module | Chain,
    y: Tensor | ClassTarget,
    x_start: Tensor,
    *,
    tol: float,
    bounds: tuple[Tensor | float, Tensor | float] | None = None,
    metric: Prior | None = None,
    max_iter: int = 30,
) -> Projection:
    """Move each starting input onto ``{x : f(x) = y}`` (or into the class) within a box.

    Parameters
    ----------
    model : nn.Module or Chain
        The network, or its analysis (:func:`nninv.model.chain.analyse`), which
        saves analysing it again; the projection runs a copy in ``x_start``'s
        dtype and device when the model's differ.
    y : Tensor or ClassTarget
        ``(N, *output_shape)`` exact outputs (checked by the caller to lie in the
        output layer's range), or a class target for ``N`` samples.
    x_start : Tensor
        ``(N, *input_shape)`` (or ``(N, n)``) inputs to start from; they are
        clipped into the box first. The dtype and device of the computation.
    tol : float
        ``converged`` is ``residual <= tol``.
    bounds : (lo, hi), optional
        Tensors (or numbers) that broadcast to ``(n,)``: ``lo <= x <= hi``
        elementwise, held exactly.
    metric : Prior, optional
        A prior whose Gaussian part's covariance is the metric of the steps
        (e.g. a :class:`~nninv.learned.Decoder`'s ``error``), so that the
        correction goes where it is largest; the identity by default.
    max_iter : int
        Gauss-Newton iterations at most.

    Returns
    -------
    Projection

    Raises
    ------
    NNInvError
        For starting inputs or bounds whose shapes do not fit the model.

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> f = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 2), nn.Sigmoid()).double()
    >>> g = torch.Generator().manual_seed(0)
    >>> y = f(torch.rand(3, 5, generator=g, dtype=torch.float64)).detach()
    >>> x0 = torch.rand(3, 5, generator=g, dtype=torch.float64)
    >>> p = project(f, y, x0, tol=1e-10, bounds=(0.0, 1.0))
    >>> bool(p.converged.all()), float(p.residual.max()) < 1e-12
    (True, True)
    """
    chain = model if isinstance(model, Chain) else analyse(model, tuple(x_start.shape[1:]))
    dtype, device = x_start.dtype, x_start.device
    N, n = x_start.shape[0], math.prod(chain.input_shape)
    if x_start[0].numel() != n:
        raise NNInvError(
            f"starting inputs have shape {tuple(x_start.shape)}; the model takes (N, "
            f"{', '.join(map(str, chain.input_shape))})"
        )
    n_target = len(y) if isinstance(y, ClassTarget) else int(y.shape[0])
    if n_target != N:
        raise NNInvError(f"{N} starting inputs for {n_target} targets")
    lo, hi = (
        (None, None)
        if bounds is None
        else (_box(bounds[0], n, x_start), _box(bounds[1], n, x_start))
    )
    fn = _ModelFunctions(chain.model, chain, dtype, device)
    cons = _Constraint.build(y, fn, dtype, device)
    coords = _Coords.build(metric, chain.input_shape, dtype, device).expand(None)
    x0 = _clip(x_start.reshape(N, n), lo, hi)
    rows = torch.arange(N, device=device)
    x, iterations, err, goal = gauss_newton(coords, cons, rows, x0, lo, hi, max_iter)

    def measured(v: Tensor) -> Tensor:
        with torch.no_grad():
            out = fn.full(v)
        return residual_of(y, out if isinstance(y, ClassTarget) else out.reshape(y.shape), chain)

    res = measured(x)
    ok = torch.isfinite(res) & (res <= tol)
    box = " within the bounds" if lo is not None else ""
    reasons = tuple(
        None
        if good
        else (
            f"the projection stalled at residual {r:.3g} after {iterations} iterations (the "
            f"target may be outside the model's range{box}, or the start too far from it)"
        )
        for good, r in zip(ok.tolist(), res.tolist())
    )
    return Projection(
        x.reshape(x_start.shape),
        res,
        ok,
        iterations,
        reasons,
        err,
        goal,
        measured(x_start.reshape(N, n)),
    )


def _box(v: Tensor | float, n: int, like: Tensor) -> Tensor:
    t = torch.as_tensor(v, dtype=like.dtype, device=like.device)
    try:
        return torch.broadcast_to(t.reshape(-1) if t.numel() == n else t, (n,))
    except RuntimeError:
        raise NNInvError(
            f"bounds of shape {tuple(t.shape)} do not broadcast to the {n} input values"
        ) from None


# --- Gauss-Newton projection --------------------------------------------------------------


def gauss_newton(
    coords: _Coords,
    cons: _Constraint,
    rows: Tensor,
    x: Tensor,
    lo: Tensor | None,
    hi: Tensor | None,
    max_iter: int = 30,
) -> tuple[Tensor, int, Tensor, Tensor]:
    """Move ``x`` onto ``{r(x) = 0}`` (exact) or ``{r(x) <= 0}`` (class) within the box.

    The algorithm behind :func:`project`, on ``method="optimize"``'s own
    coordinates and constraint (which it calls directly, per candidate row):
    damped Gauss-Newton steps in the prior's metric, each with a backtracking
    search on the residual, with coordinates at a bound held there. Rows stop
    on their own once their violation is at the goal or no step reduces it.

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
        assert cons.scale is not None  # an exact constraint keeps its target's scale
        goal = 4 * eps * cons.scale[rows] * 16
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
        free = None if lo is None or hi is None else (xa > lo) & (xa < hi)
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
        As for :func:`gauss_newton`.
    x : Tensor
        ``(k, n)`` feasible inputs (as :func:`gauss_newton` returns them); not modified.
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
        free = None if lo is None or hi is None else (xa > lo) & (xa < hi)
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
        x_try, _, err, goal = gauss_newton(sub, cons, rows[act], x_try, lo, hi)
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

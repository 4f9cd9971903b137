"""Stage 2 of ``method="optimize"``: the augmented Lagrangian, minimised by batched L-BFGS.

:class:`_AugmentedLagrangian` is the method of multipliers (Hestenes 1969,
Powell 1969, Rockafellar 1973) for the output constraint and the box, per
sample, in the prior-whitened coordinates of :class:`._constraint._Coords`; its
inner solves are :func:`_lbfgs`, a limited-memory BFGS batched over samples
with an Armijo backtracking line search per sample, from which samples leave
as they finish. It only has to come near the constraint: the Gauss-Newton
projection (:mod:`.projection`) closes the rest. :class:`_Track` keeps the
per-sample counts over the first solve and the retries, and
:func:`_progress_bar` is the run's progress bar.
"""

from __future__ import annotations

__all__ = []

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from ..errors import NNInvError
from ._constraint import _Constraint, _Coords

# --- augmented Lagrangian with batched L-BFGS ---------------------------------------------


class _Track:
    """Per-row bookkeeping over the first solve and the retries."""

    def __init__(self, T: int, device: torch.device, max_iter: int) -> None:
        self.max_iter = max_iter
        self.iterations = torch.zeros(T, dtype=torch.long, device=device)
        self.outer = torch.zeros(T, dtype=torch.long, device=device)
        self.retried = torch.zeros(T, dtype=torch.long, device=device)
        self.feas = torch.full((T,), math.inf, device=device)
        self.stalled = torch.zeros(T, dtype=torch.bool, device=device)
        self.polished = torch.zeros(T, dtype=torch.long, device=device)
        self.evaluations = 0
        self.projection = 0


def _progress_bar(progress: bool | None) -> Any:
    import sys

    from tqdm.auto import tqdm

    if progress is not None and not isinstance(progress, bool):
        raise NNInvError(f"option progress must be True, False or None, got {progress!r}")
    # None: appears only if the run is still going after a few seconds. On a terminal
    # the bar is erased when done; in a log it ends as one final line with its newline,
    # redrawn at most every 10 s in between.
    tty = sys.stderr.isatty()
    return tqdm(
        desc="nninv optimize",
        unit="it",
        delay=0 if progress else 3.0,
        disable=progress is False,
        leave=not tty,
        mininterval=0.1 if tty else 10.0,
    )


class _AugmentedLagrangian:
    """Method of multipliers, with L-BFGS on each sample's augmented Lagrangian.

    Per row: ``Phi(u) = E(u) + lam . c + rho/2 |c|^2`` for an exact target,
    ``E(u) + (max(0, mu + rho r)^2 - mu^2) / (2 rho)`` for a class target's
    inequality ``r <= 0``, plus the same inequality terms for each side of the
    box with their own weight. After each inner solve the multipliers move by
    ``rho`` times the violation and ``rho`` grows tenfold where the violation
    fell by less than a factor 4 (Nocedal & Wright, alg. 17.4). A row hands
    over to the projection once its violation is below ``eta_rel`` times the
    target's scale after at least ``min_outer`` updates.
    """

    outer_max = 30
    inner_max = 30
    class_inner_max = 10  # one inequality: shorter inner solves lose ~0.1 nat, run 3x faster
    history = 10
    rho0 = 1e3  # initial penalty, per unit of (violation / target scale)^2
    rho_b0 = 10.0  # initial penalty of the box
    gtol = 1e-3  # inner tolerance, relative to the first gradient
    eta_rel = 3e-3  # hand-over violation, relative to the target's scale
    bound_tol = 1e-2  # hand-over box violation (the projection clips the rest)
    min_outer = 3
    rho_max = 1e10
    class_scale = 10.0

    def __init__(
        self,
        coords: _Coords,
        cons: _Constraint,
        rows: Tensor,
        lo: Tensor | None,
        hi: Tensor | None,
        bar: Any,
    ) -> None:
        self.coords, self.cons, self.rows = coords, cons, rows
        self.lo, self.hi = lo, hi
        self.bar = bar
        self.evaluations = 0

    def _phi(self, u: Tensor, idx: Tensor) -> tuple[Tensor, Tensor]:
        """``Phi`` (k,) and its gradient (k, n) on rows ``idx``."""
        self.evaluations += 1
        coords = self.coords
        u = u.detach()
        with torch.enable_grad():
            # autograd runs on x only: the map from u is linear, its adjoint is cheaper
            x = coords.to_x(u, idx).requires_grad_(True)
            phi = coords.energy_x(x)
            r = self.cons.residual(self.cons.F(x), self.rows[idx])
            rho = self.rho[idx]
            if self.cons.kind == "exact":
                phi = phi + (self.lam[idx] * r).sum(1) + 0.5 * rho * r.pow(2).sum(1)
            else:
                mu = self.lam[idx, 0]
                phi = phi + ((mu + rho * r[:, 0]).clamp(min=0).pow(2) - mu.pow(2)) / (2 * rho)
            if self.lo is not None and self.hi is not None:
                rb = self.rho_b[idx, None]
                nu_hi, nu_lo = self.nu_hi[idx], self.nu_lo[idx]
                up = (nu_hi + rb * (x - self.hi)).clamp(min=0)
                dn = (nu_lo + rb * (self.lo - x)).clamp(min=0)
                box = (up.pow(2) - nu_hi.pow(2)) + (dn.pow(2) - nu_lo.pow(2))
                phi = phi + box.sum(1) / (2 * rb[:, 0])
            (gx,) = torch.autograd.grad(phi.sum(), x)
        g = coords.pullback(gx, idx)
        phi = phi.detach()
        if coords.whitened:
            phi = phi + (0.5 * coords.gauss_weight) * u.pow(2).sum(1)
            g = g.add_(u, alpha=coords.gauss_weight)
        return phi, g

    def _measure(self, u: Tensor, idx: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``x``, the constraint residual, its size and the box violation on rows ``idx``."""
        with torch.no_grad():
            x = self.coords.to_x(u, idx)
            r = self.cons.residual(self.cons.F(x), self.rows[idx])
        feas = self.cons.violation(r).nan_to_num(nan=math.inf)
        if self.lo is not None and self.hi is not None:
            bv = torch.maximum((x - self.hi).amax(1), (self.lo - x).amax(1)).clamp(min=0)
        else:
            bv = torch.zeros_like(feas)
        return x, r, feas, bv

    def start(self, u0: Tensor) -> None:
        """Set the state for rows starting at ``u0``."""
        T = u0.shape[0]
        n = math.prod(self.coords.shape)
        dev, dtype = u0.device, u0.dtype
        cons = self.cons
        self.u = u0.clone()
        self.iterations = torch.zeros(T, dtype=torch.long, device=dev)
        self.outer = torch.zeros(T, dtype=torch.long, device=dev)
        self.stalled = torch.zeros(T, dtype=torch.bool, device=dev)
        self.lam = torch.zeros(T, cons.m, dtype=dtype, device=dev)
        if cons.kind == "exact":
            assert cons.scale is not None
            self.scale = cons.scale[self.rows]
            self.rho = self.rho0 / self.scale.pow(2)
        else:
            # logit margins: the typical spread of logits sets the scale
            self.scale = torch.full((T,), self.class_scale, dtype=dtype, device=dev)
            self.rho = self.rho0 / self.scale.pow(2)
        if self.lo is not None:
            self.nu_hi = torch.zeros(T, n, dtype=dtype, device=dev)
            self.nu_lo = torch.zeros(T, n, dtype=dtype, device=dev)
            self.rho_b = torch.full((T,), self.rho_b0, dtype=dtype, device=dev)
        _, _, self.feas, self.bv = self._measure(self.u, torch.arange(T, device=dev))

    def run(self, active: Tensor, eta_rel: float, max_iter: int) -> None:
        """Outer iterations on rows ``active`` (bool) until each hands over or stops.

        A row hands over once its violation is below ``eta_rel`` times the
        target's scale (for class targets, the logit margin's ``class_scale``).
        """
        cons = self.cons
        u, feas, bv = self.u, self.feas, self.bv
        active = active.clone()
        # hand over near the constraint: the projection closes the rest
        eta = eta_rel * self.scale
        self.stalled[active] = False
        start_iters = self.iterations.clone()
        for _ in range(self.outer_max):
            idx = active.nonzero().flatten()
            if idx.numel() == 0:
                break
            budget = max_iter - (self.iterations[idx] - start_iters[idx])
            most = self.inner_max if cons.kind == "exact" else self.class_inner_max
            inner = min(most, int(budget.max()))
            u[idx], its = _lbfgs(self._phi, u[idx], idx, inner, self.history, budget, self.gtol)
            self.iterations[idx] += its
            self.outer[idx] += 1
            x, r, fi, bvi = self._measure(u[idx], idx)
            rho = self.rho[idx]
            if cons.kind == "exact":
                self.lam[idx] += rho[:, None] * r
            else:
                self.lam[idx, 0] = (self.lam[idx, 0] + rho * r[:, 0]).clamp(min=0)
            slow = fi > torch.maximum(0.25 * feas[idx], eta[idx])
            self.rho[idx] = torch.where(slow, rho * 10, rho)
            if self.lo is not None and self.hi is not None:
                rb = self.rho_b[idx]
                self.nu_hi[idx] = (self.nu_hi[idx] + rb[:, None] * (x - self.hi)).clamp(min=0)
                self.nu_lo[idx] = (self.nu_lo[idx] + rb[:, None] * (self.lo - x)).clamp(min=0)
                bslow = bvi > (0.25 * bv[idx]).clamp(min=self.bound_tol)
                self.rho_b[idx] = torch.where(bslow, (rb * 10).clamp(max=self.rho_max), rb)
                bv[idx] = bvi
            feas[idx] = fi
            finished = (fi <= eta[idx]) & (bvi <= self.bound_tol)
            finished &= self.outer[idx] >= self.min_outer
            stalled = self.rho[idx] > self.rho_max
            self.stalled[idx] = stalled
            spent = self.iterations[idx] - start_iters[idx] >= max_iter
            active[idx[finished | stalled | spent]] = False
            self.bar.update(int(its.max()))
            # refresh=False: the bar redraws on its own clock (and not before its delay)
            self.bar.set_postfix(
                active=int(active.sum()), violation=f"{float(feas.max()):.1e}", refresh=False
            )


def _lbfgs(
    fun: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]],
    u: Tensor,
    idx: Tensor,
    max_iter: int,
    history: int,
    budget: Tensor,
    gtol: float,
) -> tuple[Tensor, Tensor]:
    """Minimise ``fun`` row by row from ``u`` by L-BFGS; rows stop on their own.

    ``fun(u, idx)`` returns the values (k,) and gradients (k, n) of rows ``idx``.
    A row stops when ``|g|_inf <= gtol * max(1, |g0|_inf)``, when its Armijo
    backtracking finds no decrease, or after ``budget`` iterations. Returns the
    minimisers and the iterations each row used.
    """
    k, n = u.shape
    dev, dtype = u.device, u.dtype
    tiny = torch.finfo(dtype).tiny
    u = u.clone()
    its = torch.zeros(k, dtype=torch.long, device=dev)
    v, g = fun(u, idx)
    gstop = gtol * g.abs().amax(1).clamp(min=1.0)
    # the state of the rows still running, compacted whenever some stop
    pos = ((g.abs().amax(1) > gstop) & (budget > 0)).nonzero().flatten()
    ua, va, ga, gs, bud = u[pos], v[pos], g[pos], gstop[pos], budget[pos]
    S = torch.zeros(len(pos), history, n, dtype=dtype, device=dev)
    Y = torch.zeros_like(S)
    R = torch.zeros(len(pos), history, dtype=dtype, device=dev)
    gamma = torch.ones(len(pos), dtype=dtype, device=dev)
    head = 0  # next slot in the ring of curvature pairs
    for it in range(max_iter):
        if pos.numel() == 0:
            break
        kk = pos.numel()
        d = _two_loop(ga, S, Y, R, gamma, head)
        slope = torch.linalg.vecdot(ga, d)
        bad = ~(slope < 0)
        if bool(bad.any()):
            d[bad] = -ga[bad]
            slope[bad] = -ga[bad].pow(2).sum(1)
        if it == 0:
            t = (1.0 / ga.abs().amax(1).clamp(min=1e-12)).clamp(max=1.0)
        else:
            t = torch.ones(kk, dtype=dtype, device=dev)
        un, vn, gn = ua.clone(), va.clone(), ga.clone()
        need = torch.ones(kk, dtype=torch.bool, device=dev)
        b = torch.arange(kk, device=dev)
        for _ in range(10):
            cand = torch.addcmul(ua[b], t[b, None], d[b])
            vc, gc = fun(cand, idx[pos[b]])
            ok = (vc <= va[b] + 1e-4 * t[b] * slope[b]) & torch.isfinite(vc)
            bo = b[ok]
            un[bo], vn[bo], gn[bo] = cand[ok], vc[ok], gc[ok]
            need[bo] = False
            b = b[~ok]
            if b.numel() == 0:
                break
            t[b] *= 0.25
        s_, y_ = un - ua, gn - ga
        sy = torch.linalg.vecdot(s_, y_)
        good = (sy > 1e-10 * s_.norm(dim=1) * y_.norm(dim=1)) & ~need
        gf = good[:, None].to(dtype)
        S[:, head] = s_ * gf
        Y[:, head] = y_ * gf
        R[:, head] = torch.where(good, 1.0 / sy.clamp(min=tiny), 0.0)
        gamma = torch.where(good, sy / y_.pow(2).sum(1).clamp(min=tiny), gamma)
        head = (head + 1) % history
        ua, va, ga = un, vn, gn
        its[pos] += 1
        # a row whose line search found no decrease has no progress left at this scale
        go = (gn.abs().amax(1) > gs) & ~need & (its[pos] < bud)
        if not bool(go.all()):
            done = pos[~go]
            u[done] = ua[~go]
            pos, ua, va, ga, gs, bud = pos[go], ua[go], va[go], ga[go], gs[go], bud[go]
            S, Y, R, gamma = S[go], Y[go], R[go], gamma[go]
    u[pos] = ua
    return u, its


def _two_loop(ga: Tensor, S: Tensor, Y: Tensor, R: Tensor, gamma: Tensor, head: int) -> Tensor:
    """The L-BFGS direction ``-H g`` by the two-loop recursion (Nocedal & Wright, alg. 7.4).

    ``S``, ``Y`` (k, history, n) and ``R = 1 / (s.y)`` (k, history) are a ring of
    curvature pairs whose next slot is ``head``; empty slots have R = 0.
    """
    kk, history = R.shape
    q = ga.clone()
    alpha = torch.zeros(kk, history, dtype=R.dtype, device=R.device)
    for j in range(history):
        i = (head - 1 - j) % history
        alpha[:, i] = R[:, i] * torch.linalg.vecdot(S[:, i], q)
        q.sub_(alpha[:, i, None] * Y[:, i])
    q.mul_(gamma[:, None])
    for j in range(history):
        i = (head + j) % history
        beta = R[:, i] * torch.linalg.vecdot(Y[:, i], q)
        q.add_(S[:, i] * (alpha[:, i] - beta)[:, None])
    return q.neg_()

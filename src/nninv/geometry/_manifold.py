"""Curved preimages: the set ``{x : r(x) = 0}`` within the bounds, and a walk on it.

A chain of affine layers and injective activations maps its preimage onto a
smooth (or piecewise smooth) manifold. :class:`Manifold` holds the residual
``r`` whose zeros it is, its Jacobian and tangent space, and moves points onto
the set (sequential QP with exact box-constrained subproblems).
:func:`manifold_walk` samples it by the constrained random walk of Zappa,
Holmes-Cerfon & Goodman (2018), "Monte Carlo on manifolds: sampling densities
and integrating functions", Comm. Pure Appl. Math. 71(12): a tangent step,
a Newton projection back along the normal space, and a reverse check that
keeps the chain reversible.

These moves are not those of :func:`nninv.methods.projection.project` (the
package's projection onto a preimage, which finds a *nearby* member by
Gauss-Newton steps with the coordinates at a bound held there), and they
answer other questions: :meth:`Manifold.project` finds a *closest* member, a
KKT point of ``min |x - z|`` over the set and the box, as
:meth:`~nninv.geometry.Preimage.project` promises; :meth:`Manifold.restore`
steps to the exact closest point of the linearised set within the box (a QP,
:meth:`~nninv.geometry._polytope.Polyhedron.project`, which may move a
coordinate off its bound); and the walk's projection must move along the
normal space at the start for the chain to stay reversible.
"""

from __future__ import annotations

__all__ = ["Manifold", "manifold_step", "manifold_walk"]

import math
import time
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from ..linalg import factor
from ..model.chain import Step
from ._diagnostics import ess_rhat
from ._polytope import Polyhedron
from ._walks import Walk

_F64 = torch.float64


class Manifold:
    """``{x : r(x) = 0} \\cap box`` with ``r(x) = Ez core(x) - ez``, smooth or piecewise smooth."""

    def __init__(self, core: list[Step], Ez: Tensor, ez: Tensor, lo: Tensor, hi: Tensor):
        f = factor(Ez)
        d, _ = f.reduce(ez[None])
        self.B, self.d = f.Vh, d[0]  # orthonormal rows
        self.core, self.lo, self.hi = core, lo, hi

    def residual(self, X: Tensor) -> Tensor:
        h = X
        for step in self.core:
            h = step.forward(h)
        return h @ self.B.T - self.d

    def jacobian(self, X: Tensor) -> Tensor:
        from torch.func import jacrev, vmap

        def single(v: Tensor) -> Tensor:
            return self.residual(v.unsqueeze(0)).squeeze(0)

        return vmap(jacrev(single))(X)  # (N, r, n)

    def tangent(self, x: Tensor) -> tuple[Tensor, int]:
        J = self.jacobian(x[None])[0]
        f = factor(J)
        return f.null_basis(), f.rank

    def restore(self, X: Tensor, *, tol: float, max_iter: int = 50) -> tuple[Tensor, Tensor]:
        """Move each row onto the set within the box: repeated closest points of the
        linearised set (exact QPs), from the row itself."""
        X = torch.clamp(X.to(_F64), self.lo, self.hi)
        err = self.residual(X).abs().amax(1)
        for i in range(X.shape[0]):
            x = X[i]
            for _ in range(max_iter):
                if float(err[i]) <= tol:
                    break
                J = self.jacobian(x[None])[0]
                r = self.residual(x[None])[0]
                poly, out = Polyhedron.from_constraints(J, J @ x - r, None, None, self.lo, self.hi)
                x_new = poly.project(x).x if out < 1e-9 else x
                step = x_new - x
                t = 1.0
                for _ in range(30):
                    cand = x + t * step
                    e_new = float(self.residual(cand[None]).abs().amax())
                    if e_new < float(err[i]):
                        break
                    t /= 2
                else:
                    break
                x, err[i] = cand, e_new
            X[i] = x
        return X, err

    def project(
        self, z: Tensor, start: Tensor, *, tol: float, max_iter: int = 100
    ) -> tuple[Tensor, float, int]:
        """A closest member to ``z`` (a local minimum of ``|x - z|`` on the set): sequential
        QP with exact box-constrained subproblems, then restoration onto the set."""
        x = self.restore(start[None], tol=tol)[0][0]
        it = 0
        for it in range(1, max_iter + 1):  # noqa: B007
            J = self.jacobian(x[None])[0]
            r = self.residual(x[None])[0]
            poly, out = Polyhedron.from_constraints(J, J @ x - r, None, None, self.lo, self.hi)
            if out > 1e-9:
                break
            x_lin = poly.project(z).x
            step = x_lin - x
            t = 1.0
            d0 = float((x - z).norm())
            new = x
            for _ in range(20):
                cand, e = self.restore((x + t * step)[None], tol=tol)
                if float(e[0]) <= tol and float((cand[0] - z).norm()) <= d0 + 1e-12:
                    new = cand[0]
                    break
                t /= 2
            moved = float((new - x).norm())
            x = new
            if moved <= 1e-10 * max(1.0, d0):
                break
        err = float(self.residual(x[None]).abs().amax())
        return x, err, it


def manifold_walk(
    mf: Manifold,
    member: Tensor,
    dim: int,
    chains: int,
    per: int,
    burn: int | None,
    thin: int | None,
    gen: torch.Generator,
    logp: Callable[[Tensor], Tensor] | None = None,
) -> tuple[Walk, float, float]:
    """Run constrained random walks on the manifold, uniform or against a density.

    Each chain starts at the projection of a random point of the box (near
    ``member`` where the box is infinite; at ``member`` when the projection
    fails). A step is a Gaussian tangent proposal projected back onto the set
    (:func:`manifold_step`) and a Metropolis test against ``logp``; the step
    size adapts towards an acceptance rate of 0.3 during burn-in only.

    Parameters
    ----------
    mf : Manifold
    member : Tensor
        ``(n,)`` a member of the set, the fallback start.
    dim : int
        The set's dimension at ``member``; sets the default ``burn``
        (``4 dim``), ``thin`` (``dim / 4``) and the step size.
    chains, per : int
        Chains run in parallel and states kept per chain.
    burn, thin : int or None
        Burn-in steps and spacing of the kept states; None for the defaults.
    gen : torch.Generator
    logp : callable, optional
        ``X (C, n) -> (C,)`` log density; None for the uniform distribution.

    Returns
    -------
    walk : Walk
        Kept states and diagnostics over four random monitored directions.
    acceptance : float
        Fraction of accepted proposals after burn-in.
    step_size : float
        Mean final step size over the chains.
    """
    t0 = time.perf_counter()
    C, n = chains, member.numel()
    lo, hi = mf.lo, mf.hi
    tol = 1e-10
    # starting points: projections of random points of the box (or near the member)
    finite = torch.isfinite(lo) & torch.isfinite(hi)
    U = torch.rand(C, n, generator=gen, dtype=_F64)
    ref = torch.where(
        finite,
        lo + U * (hi - lo),
        member + torch.randn(C, n, generator=gen, dtype=_F64),
    )
    starts = []
    for i in range(C):
        x, err, _ = mf.project(ref[i], ref[i], tol=tol, max_iter=10)
        starts.append(x if err <= 1e-8 else member.clone())
    X = torch.stack(starts)
    d = max(dim, 1)
    burn = 4 * d if burn is None else burn
    thin = max(1, d // 4) if thin is None else thin
    steps = burn + per * thin
    sigma = torch.full(
        (C,),
        0.1 * float((hi - lo).clamp(max=1e6).mean()) if bool(finite.all()) else 0.1,
        dtype=_F64,
    )
    sigma = sigma / math.sqrt(d)
    lp = logp(X) if logp is not None else torch.zeros(C, dtype=_F64)
    monitor = torch.randn(4, n, generator=gen, dtype=_F64)
    monitor = monitor / monitor.norm(dim=1, keepdim=True)
    kept = torch.empty(C, per, n, dtype=_F64)
    trace = np.empty((per * thin, C, 4))
    n_acc = torch.zeros(C, dtype=_F64)
    window = torch.zeros(C, dtype=_F64)
    for s in range(1, steps + 1):
        Y, ok, lq = manifold_step(mf, X, sigma, gen, tol)
        if logp is not None:
            lpy = torch.where(ok, logp(torch.where(ok[:, None], Y, X)), -math.inf)
        else:
            lpy = torch.zeros(C, dtype=_F64)
        log_a = torch.where(ok, lpy - lp + lq, -math.inf)
        acc = torch.log(torch.rand(C, generator=gen, dtype=_F64)) < log_a
        X = torch.where(acc[:, None], Y, X)
        lp = torch.where(acc, lpy, lp)
        window += acc.to(_F64)
        if s <= burn:
            if s % 20 == 0:  # adapt the step size during burn-in only
                rate = window / 20
                sigma = sigma * torch.exp(rate - 0.3)
                window.zero_()
        else:
            n_acc += acc.to(_F64)
            j = s - burn - 1
            trace[j] = (X @ monitor.T).numpy()
            if (j + 1) % thin == 0:
                kept[:, (j + 1) // thin - 1] = X
    ess, rhat = ess_rhat(trace)
    w = Walk(kept, trace, ess, rhat, steps, burn, thin, time.perf_counter() - t0)
    acc_rate = float(n_acc.sum()) / max(1, C * (steps - burn))
    return w, acc_rate, float(sigma.mean())


def manifold_step(
    mf: Manifold, X: Tensor, sigma: Tensor, gen: torch.Generator, tol: float
) -> tuple[Tensor, Tensor, Tensor]:
    """One proposal of the constrained random walk with its reverse check.

    Returns the proposals, whether each is valid (projection converged, in the
    box, reverse projection returns to the start), and the log ratio of the
    reverse to the forward tangent proposal densities.
    """
    C, n = X.shape
    Jx = mf.jacobian(X)  # (C, r, n)
    xi = torch.randn(C, n, generator=gen, dtype=_F64) * sigma[:, None]
    v = _tangent_part(Jx, xi)
    Y, ok = _project_normal(mf, X + v, Jx, tol)
    ok &= ((Y >= mf.lo) & (Y <= mf.hi)).all(1)
    Jy = mf.jacobian(torch.where(ok[:, None], Y, X))
    v_back = _tangent_part(Jy, X - Y)
    Xb, ok_b = _project_normal(mf, Y + v_back, Jy, tol)
    ok &= ok_b & ((Xb - X).abs().amax(1) <= 1e-6 * (1 + X.abs().amax(1)))
    lq = -(v_back.pow(2).sum(1) - v.pow(2).sum(1)) / (2 * sigma**2)
    return Y, ok, lq


def _tangent_part(J: Tensor, V: Tensor) -> Tensor:
    JJt = J @ J.transpose(1, 2)
    coef = torch.linalg.solve(JJt, (J @ V[:, :, None]))
    return V - (J.transpose(1, 2) @ coef)[:, :, 0]


def _project_normal(
    mf: Manifold, Z: Tensor, J: Tensor, tol: float, max_iter: int = 12
) -> tuple[Tensor, Tensor]:
    """Solve ``r(Z + J^T a) = 0`` for ``a`` by Newton's method (the projection of
    Zappa et al. along the normal space at the start)."""
    C = Z.shape[0]
    a = torch.zeros(C, J.shape[1], dtype=_F64)
    Jt = J.transpose(1, 2)
    Y = Z
    for _ in range(max_iter):
        Y = Z + (Jt @ a[:, :, None])[:, :, 0]
        r = mf.residual(Y)
        if bool((r.abs().amax(1) <= tol).all()):
            break
        Jy = mf.jacobian(Y)
        M = Jy @ Jt
        try:
            step = torch.linalg.solve(M, r[:, :, None])[:, :, 0]
        except RuntimeError:
            break
        a = a - step
        a = torch.nan_to_num(a, nan=0.0, posinf=0.0, neginf=0.0)
    Y = Z + (Jt @ a[:, :, None])[:, :, 0]
    ok = mf.residual(Y).abs().amax(1) <= 1e-8
    return Y, ok

"""The gradient search of :func:`nninv.geometry.closest`: targeted PGD, bisected on the radius.

:func:`attack` looks for the smallest radius at which projected gradient
descent (:func:`_pgd`, several restarts, steps projected onto the ``linf``,
``l1`` or ``l2`` ball and the input box) reaches the query's goal, by
bisection (:func:`_bisect`); every input it returns is verified by the
query's :class:`~nninv.geometry._query.Checker` (the float64 model and the
caller's own, in its dtype). It is the whole answer for smooth networks and,
for piecewise-linear ones, gives the exact solver a verified incumbent whose
distance bounds the optimum.
"""

from __future__ import annotations

__all__ = ["Budget", "attack"]

import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ._milp import Goal
from ._polytope import one_thread
from ._query import Query, dist

_F64 = torch.float64


@dataclass(frozen=True)
class Budget:
    """PGD's effort: ``steps`` per run, ``restarts`` (random starts) and bisection ``rounds``."""

    steps: int = 100
    restarts: int = 4
    rounds: int = 12


def _project_ball(v: Tensor, eps: float, norm: str) -> Tensor:
    if norm == "linf":
        return v.clamp(-eps, eps)
    if norm == "l2":
        nrm = v.norm(dim=1, keepdim=True).clamp(min=1e-300)
        return v * (eps / nrm).clamp(max=1.0)
    # l1: Duchi et al. (2008), sort-based projection onto the l1 ball
    a = v.abs()
    out = v.clone()
    over = a.sum(1) > eps
    if bool(over.any()):
        u, _ = a[over].sort(1, descending=True)
        css = u.cumsum(1)
        k = torch.arange(1, u.shape[1] + 1, dtype=v.dtype)
        cond = u - (css - eps) / k > 0
        rho = cond.to(torch.long).cumsum(1).argmax(1)
        theta = (css.gather(1, rho[:, None])[:, 0] - eps) / (rho + 1).to(v.dtype)
        out[over] = v[over].sign() * (a[over] - theta[:, None]).clamp(min=0)
    return out


def _lead(out: Tensor, goal: Goal) -> Tensor:
    """The goal's largest violation per row of outputs ``out`` (negative inside it)."""
    if goal.label is not None:
        other = out.clone()
        other[:, goal.label] = -math.inf
        return other.amax(1) - out[:, goal.label]
    A = torch.from_numpy(goal.A).to(out.dtype)
    b = torch.from_numpy(goal.b).to(out.dtype)
    return (out @ A.T - b).amax(1)


def _pgd(
    model: nn.Module,
    in_shape: tuple[int, ...],
    x0: Tensor,
    goal: Goal,
    norm: str,
    lo: Tensor,
    hi: Tensor,
    eps: float,
    budget: Budget,
    gen: torch.Generator,
) -> Tensor | None:
    """Targeted PGD within the ``eps`` ball and the box; returns an input that reaches the
    goal in float64, or None."""
    n = x0.numel()
    steps, restarts = budget.steps, budget.restarts
    X0 = x0.expand(restarts, n)
    delta = torch.zeros(restarts, n, dtype=_F64)
    if restarts > 1:
        delta[1:] = _project_ball(
            (torch.rand(restarts - 1, n, generator=gen, dtype=_F64) * 2 - 1) * eps, eps, norm
        )
    delta = (torch.clamp(X0 + delta, lo, hi) - X0).requires_grad_(True)
    step = 2.5 * eps / steps
    best = None
    for _ in range(steps):
        out = model((X0 + delta).reshape(-1, *in_shape)).reshape(restarts, -1)
        lead = _lead(out, goal)
        loss = lead.clamp(min=-1e-3)
        won = lead < 0
        if bool(won.any()):
            best = (X0 + delta)[won.nonzero()[0, 0]].detach().clone()
            break
        (g,) = torch.autograd.grad(loss.sum(), delta)
        with torch.no_grad():
            d = _descend(delta, g, step, norm)
            d = _project_ball(d, eps, norm)
            d = torch.clamp(X0 + d, lo, hi) - X0
        delta = d.requires_grad_(True)
    return best


def _descend(delta: Tensor, g: Tensor, step: float, norm: str) -> Tensor:
    """One steepest-descent step of length ``step`` in ``norm``."""
    if norm == "linf":
        return delta - step * g.sign()
    if norm == "l2":
        return delta - step * g / g.norm(dim=1, keepdim=True).clamp(min=1e-300)
    # steepest l1 descent: move the coordinates with the largest gradient
    n = g.shape[1]
    k = max(1, n // 50)
    top = g.abs().topk(k, dim=1).indices
    upd = torch.zeros_like(g).scatter(1, top, g.gather(1, top).sign())
    return delta - step * upd * (n / k) ** 0.5


def attack(
    q: Query, deadline: float, budget: Budget = Budget()
) -> tuple[np.ndarray | None, dict[str, Any]]:
    """Smallest radius (up to ``q.max_distance``) at which PGD reaches ``q.goal`` within
    the box ``q.lo, q.hi``, by bisection until ``deadline``; ``(x or None, info)``.

    Every input is verified by ``q.check``; the search is seeded by ``q.seed``.
    """
    with one_thread():
        return _bisect(q, deadline, budget)


def _bisect(q: Query, deadline: float, budget: Budget) -> tuple[np.ndarray | None, dict[str, Any]]:
    gen = torch.Generator().manual_seed(q.seed)
    x0 = q.x0
    x0t = torch.from_numpy(np.asarray(x0, dtype=np.float64))
    lo_t, hi_t = torch.from_numpy(np.asarray(q.lo)), torch.from_numpy(np.asarray(q.hi))
    if q.max_distance is not None:
        top = q.max_distance
    else:
        span = torch.where(torch.isfinite(hi_t - lo_t), hi_t - lo_t, torch.ones_like(lo_t) * 10)
        top = float(dist(span.numpy(), q.norm))

    def run(eps: float) -> Tensor | None:
        return _pgd(q.model, q.input_shape, x0t, q.goal, q.norm, lo_t, hi_t, eps, budget, gen)

    best = None
    x = run(top)
    if x is not None and q.check.ok(x.numpy()):
        best = x.numpy()
        hi_r, lo_r = min(top, dist(best - x0, q.norm)), 0.0
        for _ in range(budget.rounds):
            if time.perf_counter() > deadline:
                break
            mid = 0.5 * (lo_r + hi_r)
            x = run(mid)
            if x is not None and q.check.ok(x.numpy()):
                best = x.numpy()
                hi_r = min(mid, dist(best - x0, q.norm))
            else:
                lo_r = mid
    return best, {"pgd_steps": budget.steps, "pgd_restarts": budget.restarts}

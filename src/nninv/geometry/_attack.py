"""The gradient search of :func:`nninv.geometry.closest`: targeted PGD, bisected on the radius.

:func:`_attack` looks for the smallest radius at which projected gradient
descent (:func:`_pgd`, several restarts, steps projected onto the ``linf``,
``l1`` or ``l2`` ball and the input box) reaches the target class, by bisection
(:func:`_bisect`); every input it returns is verified by running the float64
model and the caller's own, in its dtype (:class:`_Checker`). It is the whole
answer for smooth networks and, for piecewise-linear ones, gives the exact
solver a verified incumbent whose distance bounds the optimum. :func:`_dist`
is the distance in each norm, shared with the exact path.
"""

from __future__ import annotations

__all__ = ["_Checker", "_attack", "_dist"]  # private: what closest.py uses

import math
import time

import numpy as np
import torch
from torch import Tensor, nn

from ..model.outputs import class_shortfall
from ..targets import ClassTarget
from ._polytope import one_thread

_F64 = torch.float64


def _dist(v: np.ndarray, norm: str) -> float:
    if norm == "linf":
        return float(np.abs(v).max()) if v.size else 0.0
    if norm == "l1":
        return float(np.abs(v).sum())
    return float(np.linalg.norm(v))


class _Checker:
    """Says whether class ``c`` wins on flat inputs, run by the float64 model and by
    ``native``, the caller's own model in its own dtype and device (float32 rounds
    differently: a point on the decision boundary in float64 may lose there).

    ``rejected`` counts the inputs the float64 model accepted and ``native`` refused;
    ``margin`` is the caller's margin for the exact path's polish (None: a growing one).
    """

    def __init__(
        self,
        model: nn.Module,
        input_shape: tuple[int, ...],
        label: int,
        native: nn.Module | None = None,
    ):
        self.model, self.shape, self.label, self.native = model, input_shape, label, native
        self.rejected = 0
        self.margin: float | None = None
        self.dtype, self.device = _F64, torch.device("cpu")
        if native is not None:
            for t in (*native.parameters(), *native.buffers()):
                if t.is_floating_point():
                    self.dtype, self.device = t.dtype, t.device
                    break

    def logits(self, x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            out = self.model(torch.from_numpy(np.atleast_2d(x)).reshape(-1, *self.shape))
        return out.reshape(out.shape[0], -1).numpy()

    def native_ok(self, x: np.ndarray) -> bool:
        """The caller's model, in its dtype, puts ``x`` in the class: arg-max and no tie."""
        if self.native is None:
            return True
        xt = torch.from_numpy(np.atleast_2d(x)).reshape(-1, *self.shape)
        was = self.native.training
        self.native.eval()
        try:
            with torch.no_grad():
                out = self.native(xt.to(self.device, self.dtype))
        finally:
            self.native.train(was)
        out = out.reshape(out.shape[0], -1).detach().to("cpu", _F64)
        met = bool(class_shortfall(ClassTarget([self.label]), out)[0] == 0)
        return met and int(out[0].argmax()) == self.label

    def ok(self, x: np.ndarray) -> bool:
        out = torch.from_numpy(self.logits(x))
        if not bool(class_shortfall(ClassTarget([self.label]), out)[0] == 0):
            return False
        if not self.native_ok(x):
            self.rejected += 1
            return False
        return True


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


def _pgd(model, in_shape, x0, label, norm, lo, hi, eps, steps, restarts, gen):  # type: ignore[no-untyped-def]
    """Targeted PGD within the ``eps`` ball and the box; returns a verified input or None."""
    n = x0.numel()
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
        other = out.clone()
        other[:, label] = -math.inf
        loss = (other.amax(1) - out[:, label]).clamp(min=-1e-3)
        won = (other.amax(1) - out[:, label]) < 0
        if bool(won.any()):
            best = (X0 + delta)[won.nonzero()[0, 0]].detach().clone()
            break
        (g,) = torch.autograd.grad(loss.sum(), delta)
        with torch.no_grad():
            if norm == "linf":
                d = delta - step * g.sign()
            elif norm == "l2":
                d = delta - step * g / g.norm(dim=1, keepdim=True).clamp(min=1e-300)
            else:
                # steepest l1 descent: move the coordinates with the largest gradient
                k = max(1, n // 50)
                top = g.abs().topk(k, dim=1).indices
                upd = torch.zeros_like(g).scatter(1, top, g.gather(1, top).sign())
                d = delta - step * upd * (n / k) ** 0.5
            d = _project_ball(d, eps, norm)
            d = torch.clamp(X0 + d, lo, hi) - X0
        delta = d.requires_grad_(True)
    return best


def _attack(
    model64,
    in_shape,
    x0,
    label,
    norm,
    lo,
    hi,
    max_distance,
    deadline,
    seed,
    steps=100,
    restarts=4,
    rounds=12,
    check=None,
):  # type: ignore[no-untyped-def]
    """Smallest radius at which PGD reaches the class, by bisection; ``(x or None, info)``.

    ``check`` (a :class:`_Checker`) verifies each input; by default the float64 model's.
    """
    with one_thread():
        return _bisect(
            model64,
            in_shape,
            x0,
            label,
            norm,
            lo,
            hi,
            max_distance,
            deadline,
            seed,
            steps,
            restarts,
            rounds,
            check,
        )


def _bisect(
    model64,
    in_shape,
    x0,
    label,
    norm,
    lo,
    hi,
    max_distance,
    deadline,
    seed,
    steps,
    restarts,
    rounds,
    check=None,
):  # type: ignore[no-untyped-def]
    gen = torch.Generator().manual_seed(seed)
    x0t = torch.from_numpy(np.asarray(x0, dtype=np.float64))
    lo_t, hi_t = torch.from_numpy(np.asarray(lo)), torch.from_numpy(np.asarray(hi))
    if check is None:
        check = _Checker(model64, in_shape, label)
    if max_distance is not None:
        top = max_distance
    else:
        span = torch.where(torch.isfinite(hi_t - lo_t), hi_t - lo_t, torch.ones_like(lo_t) * 10)
        top = float(_dist(span.numpy(), norm))
    best = None
    x = _pgd(model64, in_shape, x0t, label, norm, lo_t, hi_t, top, steps, restarts, gen)
    if x is not None and check.ok(x.numpy()):
        best = x.numpy()
        hi_r, lo_r = min(top, _dist(best - x0, norm)), 0.0
        for _ in range(rounds):
            if time.perf_counter() > deadline:
                break
            mid = 0.5 * (lo_r + hi_r)
            x = _pgd(model64, in_shape, x0t, label, norm, lo_t, hi_t, mid, steps, restarts, gen)
            if x is not None and check.ok(x.numpy()):
                best = x.numpy()
                hi_r = min(mid, _dist(best - x0, norm))
            else:
                lo_r = mid
    return best, {"pgd_steps": steps, "pgd_restarts": restarts}

"""The Markov chains that sample a polytope: reflective HMC (billiards) and hit-and-run.

:meth:`~nninv.geometry._polytope.Polyhedron.billiard` and
:meth:`~nninv.geometry._polytope.Polyhedron.walk` are the entry points; this
module holds what they run. :class:`Billiard` is the event loop of the
reflective samplers, batched over chains: straight lines for the uniform
distribution (a billiard walk) or harmonic motion for a (mixture of)
Gaussian(s) restricted to the set (exact HMC for truncated Gaussians), with
the wall hits found in closed form. :class:`Dynamics` says which motion and
with what velocities, :class:`MixtureMoves` moves a chain between mixture
components, and :func:`hit_and_run` is the plain baseline walk. Each run
returns a :class:`Walk`, the kept states with their mixing diagnostics. The
set is seen through :class:`Walls` (what a chain needs of it); this module
does not import :mod:`._polytope`, which builds on it.

References
----------
Smith (1984), "Efficient Monte Carlo procedures for generating points
uniformly distributed over bounded regions", Operations Research 32(6).
Pakman & Paninski (2014), "Exact Hamiltonian Monte Carlo for truncated
multivariate Gaussians", J. Comput. Graph. Stat. 23(2).
Gryazina & Polyak (2014), "Random sampling: billiard walk algorithm", European
J. Oper. Res. 238(2).
Afshar & Domke (2015), "Reflection, refraction, and Hamiltonian Monte Carlo",
NeurIPS 28.
"""

from __future__ import annotations

__all__ = ["UNBOUNDED", "Billiard", "Dynamics", "MixtureMoves", "Walk", "Walls", "hit_and_run"]

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor

from ..errors import NNInvError
from ._diagnostics import ess_rhat

#: Why a uniform distribution cannot be sampled: a chord or a flight never meets a wall.
UNBOUNDED = (
    "the set is unbounded, so it has no uniform distribution; pass finite bounds=(lo, hi) "
    "or sample from a prior"
)

_F64 = torch.float64


def _np(t: Tensor) -> np.ndarray:
    return t.detach().to("cpu", _F64).numpy()


class Walls(Protocol):
    """What the chains need of the set ``{x : E x = e, G x <= g, lo <= x <= hi}`` they walk in.

    :class:`~nninv.geometry._polytope.Polyhedron` is one; this module does not
    import it, so that imports run one way (``_polytope`` uses the chains here).
    """

    E: Tensor
    G: Tensor
    g: Tensor
    lo: Tensor
    hi: Tensor

    @property
    def n(self) -> int: ...

    def null_basis(self) -> Tensor: ...

    def violation(self, x: Tensor) -> Tensor: ...

    def clean(self, x: Tensor) -> Tensor: ...


@dataclass(frozen=True)
class Walk:
    """Draws of a Markov chain run and its mixing diagnostics.

    Attributes
    ----------
    x : Tensor (chains, per_chain, n)
        Kept states, every ``thin`` steps after ``burn`` steps.
    trace : ndarray (steps, chains, q)
        Monitored projections ``x @ W^T`` at every step after burn-in.
    ess : ndarray (q,)
        Effective sample size of each monitored projection over the whole trace.
    rhat : ndarray (q,)
        Split R-hat of each monitored projection (1 means mixed).
    steps, burn, thin : int
    seconds : float
        Wall time of the walk.
    info : dict
        Sampler statistics (for :meth:`Polyhedron.billiard`: ``"bounces"``,
        reflections per trajectory; ``"rejected"``, the fraction of
        trajectories rejected for too many; ``"time"``, the final mean travel
        time).
    """

    x: Tensor
    trace: np.ndarray
    ess: np.ndarray
    rhat: np.ndarray
    steps: int
    burn: int
    thin: int
    seconds: float
    info: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Dynamics:
    """The reflective dynamics of :meth:`Polyhedron.billiard`, one per mixture component.

    Attributes
    ----------
    scale : Tensor (K, n, r)
        Velocities are ``w = scale[k] @ xi`` with ``xi ~ N(0, I_r)``; their
        covariance ``Sigma_k = scale[k] scale[k]^T`` is the metric in which
        walls reflect (the identity in whitened coordinates).
    mean : Tensor (K, n) or None
        Centre of the harmonic motion for a Gaussian target ``N(mean_k,
        Sigma_k)`` restricted to the set; None for straight lines (the uniform
        target).
    time : float
        Mean travel time of a trajectory (drawn uniformly in ``[time / 2,
        3 time / 2]``; below ``2 pi / 3`` for the harmonic motion).
    """

    scale: Tensor
    mean: Tensor | None
    time: float


class MixtureMoves:
    """Updates of the component of a Gaussian mixture restricted to the set.

    The target is ``pi(k, x) ~ w_k N(x; mu_k, Sigma_k)`` on the set. Two moves
    leave it invariant: a Gibbs step, ``k`` from ``pi(k | x)``; and a
    Metropolis jump that keeps the whitened coordinates ``z`` of ``x = m_k +
    N L_k z`` (``N`` the basis of the affine hull, ``L_k L_k^T`` the
    conditional covariance of component ``k`` in it) and proposes ``k'`` from
    the conditional weights ``c_k ~ w_k N(e; E mu_k, E Sigma_k E^T)`` of the
    untruncated mixture on ``E x = e``. In ``(k, z)`` the target is ``c_k
    phi(z)`` on the set, so the jump is accepted exactly when ``m_k' + N L_k'
    z`` lies inside. The Gibbs step alone only changes component where two
    components overlap; the jump crosses between separated ones (in low
    dimension; in high dimension it is rarely inside).

    Parameters
    ----------
    poly : Walls
    dyn : Dynamics
        From :meth:`Polyhedron.gaussian_dynamics` for the mixture.
    log_prob : callable
        ``X (C, n) -> (C, K)``: ``log w_k + log N(x; mu_k, Sigma_k)``.
    log_c : Tensor (K,)
        Log conditional weights ``log c_k`` (up to a constant).
    """

    def __init__(
        self,
        poly: Walls,
        dyn: Dynamics,
        log_prob: Callable[[Tensor], Tensor],
        log_c: Tensor,
    ) -> None:
        assert dyn.mean is not None
        self.poly, self.log_prob = poly, log_prob
        self.N = poly.null_basis()
        NW = self.N.T @ dyn.scale  # (K, d, r)
        S = NW @ NW.transpose(1, 2)
        self.L = torch.linalg.cholesky(0.5 * (S + S.transpose(1, 2)))
        self.m = dyn.mean
        self.p = torch.softmax(log_c.to(_F64), 0)
        self.accepted = 0
        self.proposed = 0

    def __call__(self, X: Tensor, gen: torch.Generator) -> tuple[Tensor, Tensor]:
        C = X.shape[0]
        comp = torch.multinomial(torch.softmax(self.log_prob(X), 1), 1, generator=gen)[:, 0]
        prop = torch.multinomial(self.p.expand(C, -1), 1, generator=gen)[:, 0]
        move = prop != comp
        Y = X.clone()
        for k in comp[move].unique().tolist():
            for k2 in prop[move & (comp == k)].unique().tolist():
                sel = move & (comp == k) & (prop == k2)
                z = torch.linalg.solve_triangular(
                    self.L[k], self.N.T @ (X[sel] - self.m[k]).T, upper=False
                )
                Y[sel] = self.m[k2] + (self.N @ (self.L[k2] @ z)).T
        inside = move & (self.poly.violation(Y) <= 1e-12)
        self.proposed += int(move.sum())
        self.accepted += int(inside.sum())
        X = torch.where(inside[:, None], self.poly.clean(Y), X)
        return X, torch.where(inside, prop, comp)


class Billiard:
    """The event loop of :meth:`Polyhedron.billiard`, batched over chains in NumPy.

    Walls are the rows of ``R = [I; G]`` with bounds ``L <= R x <= U``. The
    state of a chain is ``a = R x`` (minus ``R m`` for the harmonic motion) and
    ``b = R w``; a reflection at wall ``j`` is ``b -= 2 b_j / Q_jj Q_j`` with
    ``Q = R Sigma R^T``, so each event costs ``O(C (n + p))``. NumPy rather
    than torch here: its reductions and comparisons on these small arrays
    are several times faster per call, and an event is a dozen such calls.
    """

    def __init__(self, poly: Walls, dyn: Dynamics, max_bounces: int | None) -> None:
        self.poly = poly
        self.n = poly.n
        self.E, self.G = _np(poly.E), _np(poly.G)
        self.p = self.G.shape[0]
        self.m = self.n + self.p
        self.L = np.concatenate([_np(poly.lo), np.full(self.p, -np.inf)])
        self.U = np.concatenate([_np(poly.hi), _np(poly.g)])
        self.max_bounces = 20 * self.m + 1000 if max_bounces is None else max_bounces
        self.set(dyn)

    def set(self, dyn: Dynamics) -> None:
        if not (dyn.time > 0 and (dyn.mean is None or dyn.time < 2 * math.pi / 3)):
            # hit times are searched in (0, pi): the longest trajectory must stay below
            raise NNInvError(f"travel time {dyn.time} outside (0, 2 pi / 3) for the dynamics")
        E, G = self.E, self.G
        scale = _np(dyn.scale).copy()
        if E.shape[0]:
            scale -= np.einsum("ki,jkr->jir", E, np.einsum("ki,jir->jkr", E, scale))
        self.scale = scale
        Sig = scale @ scale.transpose(0, 2, 1)
        if self.p:
            SG = Sig @ G.T
            Q = np.concatenate(
                [np.concatenate([Sig, SG], 2), np.concatenate([SG.transpose(0, 2, 1), G @ SG], 2)],
                1,
            )
        else:
            Q = Sig
        Qd = np.einsum("kii->ki", Q).copy()
        off = Qd <= 1e-12 * Qd.max(1, keepdims=True)  # walls the motion cannot reach
        self.Q = Q
        self.coef = np.where(off, 0.0, 2.0 / np.where(off, 1.0, Qd))
        self.harmonic = dyn.mean is not None
        K = scale.shape[0]
        # centre of the motion in wall coordinates (zero for straight lines)
        self.c = np.zeros((K, self.m))
        if dyn.mean is not None:
            mu = _np(dyn.mean)
            self.c = np.concatenate([mu, mu @ G.T], 1) if self.p else mu
        wu, wl = self.U - self.c, self.L - self.c
        wu[off], wl[off] = np.inf, -np.inf
        self.wu, self.wl = wu, wl
        self.time = dyn.time

    def run(
        self,
        X0: Tensor,
        keep: int,
        thin: int,
        burn: int,
        gen: torch.Generator,
        monitor: Tensor,
        component: Callable[[Tensor, torch.Generator], tuple[Tensor, Tensor]] | None,
        adapt: Callable[[Tensor], Dynamics | None] | None,
    ) -> Walk:
        t0 = time.perf_counter()
        poly = self.poly
        X = poly.clean(X0)
        C = X.shape[0]
        steps = burn + keep * thin
        kept = torch.empty(C, keep, self.n, dtype=_F64)
        trace = np.empty((keep * thin, C, monitor.shape[0]))
        Mt = monitor.to(_F64).T
        # doubling windows (2, 4, 8, ..., then 3/4 of burn-in): each estimate can at
        # most grow by the distance the chains moved, so it needs several rounds
        stops = []
        if adapt is not None:
            stop = 2
            while stop <= 3 * burn // 4:
                stops.append(stop)
                stop *= 2
            if stops and 3 * burn // 4 - stops[-1] >= 2:
                stops.append(3 * burn // 4)
        window: list[Tensor] = []
        last = 0
        comp = torch.zeros(C, dtype=torch.long)
        n_bounce = n_reject = 0
        for s in range(1, steps + 1):
            if component is not None:
                X, comp = component(X, gen)
            X, bounces, rejected = self.trajectory(X, comp.numpy(), gen)
            n_bounce += bounces
            n_reject += rejected
            if stops:
                if s > (last + stops[0]) // 2:
                    window.append(X)
                if s == stops[0]:
                    assert adapt is not None
                    new = adapt(torch.stack(window))
                    if new is not None:
                        self.set(new)
                    window, last = [], stops.pop(0)
            if s > burn:
                j = s - burn - 1
                trace[j] = (X @ Mt).numpy()
                if (j + 1) % thin == 0:
                    kept[:, (j + 1) // thin - 1] = X
        ess, rhat = ess_rhat(trace)
        info = {
            "bounces": n_bounce / (steps * C),
            "rejected": n_reject / (steps * C),
            "time": self.time,
        }
        return Walk(kept, trace, ess, rhat, steps, burn, thin, time.perf_counter() - t0, info)

    def _velocities(
        self, C: int, comp: np.ndarray, gen: torch.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        """Each chain's random initial velocity (tangent to the equalities) and duration."""
        n, E = self.n, self.E
        K, _, r = self.scale.shape
        xi = torch.randn(C, r, generator=gen, dtype=_F64).numpy()
        T = self.time * (0.5 + torch.rand(C, generator=gen, dtype=_F64).numpy())
        if K == 1:
            w = xi @ self.scale[0].T
        else:
            w = np.empty((C, n))
            for k in np.unique(comp):
                sel = comp == k
                w[sel] = xi[sel] @ self.scale[k].T
        if E.shape[0]:
            w -= (w @ E.T) @ E
        return w, T

    def _reflect_outward(
        self,
        a: np.ndarray,
        b: np.ndarray,
        wu: np.ndarray,
        wl: np.ndarray,
        coef: np.ndarray,
        Qk: np.ndarray | None,
        kc: np.ndarray,
    ) -> None:
        """Reflect (in place, in ``b``) the velocities of states on a wall and moving out."""
        for _ in range(self.m):
            out = ((a >= wu) & (b > 0)) | ((a <= wl) & (b < 0))
            rows, j = out.nonzero()
            if not rows.size:
                break
            first = np.unique(rows, return_index=True)[1]
            rows, j = rows[first], j[first]
            Qr = Qk[j] if Qk is not None else self.Q[kc[rows], j]
            b[rows] -= (coef[rows, j] * b[rows, j])[:, None] * Qr

    def _first_walls(
        self,
        a: np.ndarray,
        b: np.ndarray,
        wu: np.ndarray,
        wl: np.ndarray,
        wu2: np.ndarray,
        wl2: np.ndarray,
        bufs: list[np.ndarray],
        rows: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The first wall each active chain reaches: its index, the time, whether upward."""
        c_ = rows.size
        if self.harmonic:
            inv_u, inv_l = _harmonic_rates(a, b, wu, wl, wu2, wl2, [q[:c_] for q in bufs])
            best = np.fmax(inv_u, inv_l, out=bufs[2][:c_])
            np.fmax(best, -1.0, out=best)
            j = best.argmax(1)
            top = best[rows, j]
            t = np.where(top > 0, 2.0 * np.arctan(1.0 / top), np.inf)
            up = inv_u[rows, j] == top
        else:
            tu = np.divide(wu - a, b, out=bufs[0][:c_])
            tt = np.fmax(tu, np.divide(wl - a, b), out=tu)
            j = tt.argmin(1)
            t = np.maximum(tt[rows, j], 0.0)
            up = b[rows, j] > 0
            if np.isinf(t).any():
                raise NNInvError(UNBOUNDED)
        return j, t, up

    def trajectory(
        self, X: Tensor, comp: np.ndarray, gen: torch.Generator
    ) -> tuple[Tensor, int, int]:
        """One trajectory of every chain; returns the new states (cleaned), the number
        of reflections, and the number of chains rejected for too many."""
        n, G = self.n, self.G
        C = X.shape[0]
        K = self.scale.shape[0]
        w, T = self._velocities(C, comp, gen)
        x = _np(X)
        a = np.concatenate([x, x @ G.T], 1) if self.p else x.copy()
        b = np.concatenate([w, w @ G.T], 1) if self.p else w
        if self.harmonic:
            a -= self.c[comp]
        wu, wl, coef = self.wu[comp], self.wl[comp], self.coef[comp]
        Qk = self.Q[0] if K == 1 else None
        kc = comp
        with np.errstate(all="ignore"):
            # a start on a wall and moving out (a clipped state) reflects first
            self._reflect_outward(a, b, wu, wl, coef, Qk, kc)
            a_out = a
            wu2, wl2 = wu * wu, wl * wl  # used by the harmonic motion only
            bufs = [np.empty_like(a) for _ in range(5 if self.harmonic else 1)]
            rem, act = T, np.arange(C)
            count = np.zeros(C, dtype=np.int64)
            rejected = np.zeros(C, dtype=bool)
            total = 0
            while act.size:
                c_ = act.size
                rows = np.arange(c_)
                j, t, up = self._first_walls(a, b, wu, wl, wu2, wl2, bufs, rows)
                hit = t < rem
                dt = np.where(hit, t, rem)
                if self.harmonic:
                    cs, sn = np.cos(dt)[:, None], np.sin(dt)[:, None]
                    t1 = np.multiply(a, sn, out=bufs[1][:c_])
                    t2 = np.multiply(b, sn, out=bufs[4][:c_])
                    a *= cs
                    a += t2
                    b *= cs
                    b -= t1
                else:
                    a += np.multiply(b, dt[:, None], out=bufs[0][:c_])
                rem = rem - dt
                h = hit.nonzero()[0]
                if h.size:
                    jh = j[h]
                    a[h, jh] = np.where(up[h], wu[h, jh], wl[h, jh])
                    f = np.where(hit, coef[rows, j] * b[rows, j], 0.0)
                    Qr = Qk[j] if Qk is not None else self.Q[kc, j]
                    b -= np.multiply(Qr, f[:, None], out=Qr)
                    count[act[h]] += 1
                    total += h.size
                    over = h[count[act[h]] > self.max_bounces]
                    if over.size:
                        rejected[act[over]] = True
                        rem[over] = 0.0
                done = rem <= 0
                nd = int(done.sum())
                if nd and (nd == c_ or nd >= c_ // 4):
                    a_out[act[done]] = a[done]
                    keep_ = ~done
                    act, a, b, rem = act[keep_], a[keep_], b[keep_], rem[keep_]
                    wu, wl, coef, kc = wu[keep_], wl[keep_], coef[keep_], kc[keep_]
                    wu2, wl2 = wu2[keep_], wl2[keep_]
        if self.harmonic:
            a_out += self.c[comp]
        Xn = torch.from_numpy(a_out[:, :n].copy())
        if rejected.any():
            back = torch.from_numpy(rejected)
            Xn[back] = X[back]
        return self.poly.clean(Xn), total, int(rejected.sum())


def _harmonic_rates(
    a: np.ndarray,
    b: np.ndarray,
    wu: np.ndarray,
    wl: np.ndarray,
    wu2: np.ndarray | None = None,
    wl2: np.ndarray | None = None,
    bufs: list[np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """``1 / tan(t / 2)`` for the first crossing time ``t`` in ``(0, pi)`` of each wall by
    ``a cos t + b sin t`` (upward through ``wu``, downward through ``wl``).

    Positive where the wall is hit in ``(0, pi)``, ``+inf`` for a state exactly on
    a wall and moving out, negative or NaN otherwise. With ``D = a^2 + b^2 - w^2``
    the upward crossing has ``tan(t / 2) = (w b - sqrt(D) a) / (a^2 + b^2 + w a +
    sqrt(D) b)``, the downward one the same with ``-sqrt(D)``; only square roots,
    no trigonometric functions, over the ``C x m`` walls.
    """
    with np.errstate(all="ignore"):
        return _rates(
            a,
            b,
            wu,
            wl,
            wu * wu if wu2 is None else wu2,
            wl * wl if wl2 is None else wl2,
            bufs if bufs is not None else [np.empty_like(a) for _ in range(5)],
        )


def _rates(
    a: np.ndarray,
    b: np.ndarray,
    wu: np.ndarray,
    wl: np.ndarray,
    wu2: np.ndarray,
    wl2: np.ndarray,
    bufs: list[np.ndarray],
) -> tuple[np.ndarray, np.ndarray]:
    r2, sq, num, inv_u, tmp = bufs
    np.multiply(a, a, out=r2)
    r2 += np.multiply(b, b, out=tmp)
    np.sqrt(np.subtract(r2, wu2, out=sq), out=sq)
    np.multiply(wu, b, out=num)
    num -= np.multiply(sq, a, out=tmp)
    np.multiply(wu, a, out=inv_u)
    inv_u += r2
    inv_u += np.multiply(sq, b, out=tmp)
    inv_u /= num
    np.sqrt(np.subtract(r2, wl2, out=sq), out=sq)
    np.multiply(wl, b, out=num)
    num += np.multiply(sq, a, out=tmp)
    # r2 is not needed below: it becomes the lower walls' rate
    r2 += np.multiply(wl, a, out=tmp)
    r2 -= np.multiply(sq, b, out=tmp)
    r2 /= num
    return inv_u, r2


def hit_and_run(
    poly: Walls,
    X0: Tensor,
    keep: int,
    thin: int,
    burn: int,
    gen: torch.Generator,
    monitor: Tensor,
) -> Walk:
    """Hit-and-run chains from ``X0`` (C, n), uniform on ``poly``, along the projections
    of coordinate axes onto the affine hull (the body of :meth:`Polyhedron.walk`).

    The direction for a random coordinate ``j`` is ``d = e_j - E^T E e_j``:
    ``x_j`` moves far while the compensation that keeps ``E x = e`` is
    spread thinly over all coordinates (it is the smallest one). Isotropic
    chords in a box are cut short by whichever of the ``n`` coordinates is
    nearest its bound and crawl; these move like a Gibbs sampler's. The
    choice of ``d`` does not depend on the state and is symmetric, so the
    uniform distribution stays invariant; the ``d`` span the hull. With
    ``G E^T`` and ``W E^T`` precomputed, only the box chord costs ``O(n)``.
    """
    t0 = time.perf_counter()
    rng = np.random.default_rng(int(torch.randint(2**62, (1,), generator=gen)))
    X = _np(X0).copy()
    C, n = X.shape
    lo, hi = _np(poly.lo), _np(poly.hi)
    E = _np(poly.E)
    Et = np.ascontiguousarray(E.T)  # (n, k)
    G, g = _np(poly.G), _np(poly.g)
    has_G = G.shape[0] > 0
    GE = G @ Et  # (p, k)
    Wm = _np(monitor.to(_F64))  # (q, n)
    WE = Wm @ Et
    S = g - X @ G.T if has_G else None
    proj = X @ Wm.T
    steps = burn + keep * thin
    kept = np.empty((C, keep, n))
    trace = np.empty((keep * thin, C, Wm.shape[0]))
    rows = np.arange(C)
    refresh = 500
    for s in range(1, steps + 1):
        j = rng.integers(0, n, C)
        Ej = Et[j]  # (C, k)
        D = -(Ej @ E)
        D[rows, j] += 1.0
        with np.errstate(divide="ignore", invalid="ignore"):
            a, b = (lo - X) / D, (hi - X) / D
            pos, neg = D > 0, D < 0
            tmin = np.where(pos, a, np.where(neg, b, -np.inf)).max(1)
            tmax = np.where(pos, b, np.where(neg, a, np.inf)).min(1)
            if has_G:
                GD = G[:, j].T - Ej @ GE.T  # (C, p)
                r = S / GD
                tmax = np.minimum(tmax, np.where(GD > 0, r, np.inf).min(1))
                tmin = np.maximum(tmin, np.where(GD < 0, r, -np.inf).max(1))
        tmin, tmax = np.minimum(tmin, 0.0), np.maximum(tmax, 0.0)
        if not (np.isfinite(tmin).all() and np.isfinite(tmax).all()):
            raise NNInvError(UNBOUNDED)
        t = tmin + rng.random(C) * (tmax - tmin)
        X += t[:, None] * D
        np.clip(X, lo, hi, out=X)
        if has_G:
            S -= t[:, None] * GD
        proj += t[:, None] * (Wm[:, j].T - Ej @ WE.T)
        if s % refresh == 0:
            # undo rounding drift: back onto the affine hull, into the box
            X = _np(poly.clean(torch.from_numpy(X))).copy()
            if has_G:
                S = g - X @ G.T
            proj = X @ Wm.T
        if s > burn:
            i = s - burn - 1
            trace[i] = proj
            if (i + 1) % thin == 0:
                kept[:, (i + 1) // thin - 1] = X
    x = poly.clean(torch.from_numpy(kept.reshape(C * keep, n))).reshape(C, keep, n)
    ess, rhat = ess_rhat(trace)
    return Walk(x, trace, ess, rhat, steps, burn, thin, time.perf_counter() - t0)

"""Polyhedra ``{x : E x = e, G x <= g, lo <= x <= hi}``: centre, extent, projection, sampling.

Every exact preimage that nninv describes is such a set: one affine layer
gives ``E x = e`` with the bounds, a class target or the activation region of
a ReLU network adds ``G x <= g``. :class:`Polyhedron` keeps ``E`` with
orthonormal rows (so ``x - E^T (E x - e)`` is the orthogonal projection onto
the affine hull) and answers four questions:

- :meth:`Polyhedron.centre`: a point deep inside, by a linear program (HiGHS)
  for the largest ball that fits in the set within its affine hull. An
  infeasible program proves the set empty; a zero radius reveals implicit
  equalities, which are moved into ``E`` so that the dimension is exact.
- :meth:`Polyhedron.extent`: the range of a linear functional (two LPs).
- :meth:`Polyhedron.project`: the closest member in L2, a convex QP solved on
  its dual (L-BFGS-B warm start, then primal-dual active-set steps) and
  accepted only when the KKT conditions hold at the returned point.
- :meth:`Polyhedron.billiard`: Markov chains that mix, vectorised over
  chains: the uniform distribution by a billiard walk (reflective HMC with no
  potential, velocities rounded by the spread of a pilot run) and a (mixture
  of) Gaussian(s) restricted to the set by exact HMC for truncated Gaussians,
  with reflections at the walls found in closed form.
  :meth:`Polyhedron.walk` is plain hit-and-run, kept as a baseline.

References
----------
Smith (1984), "Efficient Monte Carlo procedures for generating points
uniformly distributed over bounded regions", Operations Research 32(6).
Hintermueller, Ito & Kunisch (2002), "The primal-dual active set strategy as a
semismooth Newton method", SIAM J. Optim. 13(3).
Vehtari, Gelman, Simpson, Carpenter & Buerkner (2021), "Rank-normalization,
folding, and localization: an improved R-hat", Bayesian Analysis 16(2).
Pakman & Paninski (2014), "Exact Hamiltonian Monte Carlo for truncated
multivariate Gaussians", J. Comput. Graph. Stat. 23(2).
Gryazina & Polyak (2014), "Random sampling: billiard walk algorithm", European
J. Oper. Res. 238(2).
Afshar & Domke (2015), "Reflection, refraction, and Hamiltonian Monte Carlo",
NeurIPS 28.
Lovász & Vempala (2006), "Hit-and-run from a corner", SIAM J. Comput. 35(4).
"""

from __future__ import annotations

__all__ = ["Dynamics", "MixtureMoves", "Polyhedron", "QPResult", "Walk", "ess_rhat", "one_thread"]

import contextlib
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
from scipy.optimize import linprog, minimize
from torch import Tensor

from .._errors import NNInvError
from .._linalg import factor

#: HiGHS options for every LP here: tight feasibility, so members verify in float64.
LP_OPTIONS = {"primal_feasibility_tolerance": 1e-10, "dual_feasibility_tolerance": 1e-10}

_F64 = torch.float64


def _np(t: Tensor) -> np.ndarray:
    return t.detach().to("cpu", _F64).numpy()


@dataclass(frozen=True)
class QPResult:
    """The closest member of a polyhedron to a point, with its certificate.

    Attributes
    ----------
    x : Tensor (n,)
    kkt : float
        Largest violation of the KKT conditions at ``x`` (primal feasibility,
        dual signs, stationarity), relative to the scale of the problem.
    iterations : int
        Active-set iterations after the warm start.
    multipliers : tuple of Tensor
        ``(lam, mu)`` for ``E x = e`` and ``G x <= g``: ``z - x = E^T lam +
        G^T mu + (box multipliers)``, with ``mu >= 0``.
    """

    x: Tensor
    kkt: float
    iterations: int
    multipliers: tuple[Tensor, Tensor]


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


@dataclass
class Polyhedron:
    """``{x in R^n : E x = e, G x <= g, lo <= x <= hi}`` in float64.

    ``E`` has orthonormal rows; ``lo``/``hi`` may hold infinities. Build it
    with :meth:`from_constraints`, which reduces any equality system and says
    when it has no solution.
    """

    E: Tensor
    e: Tensor
    G: Tensor
    g: Tensor
    lo: Tensor
    hi: Tensor
    _cache: dict[str, Any] = field(default_factory=dict, repr=False)

    # --- construction -------------------------------------------------------------

    @classmethod
    def from_constraints(
        cls,
        A: Tensor | None,
        c: Tensor | None,
        G: Tensor | None,
        g: Tensor | None,
        lo: Tensor,
        hi: Tensor,
        *,
        rtol: float = 1e-9,
    ) -> tuple[Polyhedron, float]:
        """Reduce ``A x = c`` to orthonormal rows; return the set and the part of
        ``c`` outside the range of ``A`` (relative; above ``rtol`` the set is empty)."""
        n = lo.numel()
        lo, hi = lo.to(_F64).reshape(-1), hi.to(_F64).reshape(-1)
        if A is None or A.numel() == 0:
            E = torch.zeros(0, n, dtype=_F64)
            e = torch.zeros(0, dtype=_F64)
            outside = 0.0
        else:
            A, c = A.to(_F64), c.to(_F64).reshape(-1)
            f = factor(A)
            d, out = f.reduce(c[None])
            E, e = f.Vh, d[0]
            outside = float(out[0]) / max(1.0, float(c.abs().max()))
        if G is None or G.numel() == 0:
            G = torch.zeros(0, n, dtype=_F64)
            g = torch.zeros(0, dtype=_F64)
        else:
            G, g = G.to(_F64), g.to(_F64).reshape(-1)
            # unit rows, so slacks are distances and tolerances mean the same for each row
            s = torch.linalg.vector_norm(G, dim=1).clamp(min=1e-300)
            G, g = G / s[:, None], g / s
        return cls(E.contiguous(), e, G.contiguous(), g, lo, hi), outside

    @property
    def n(self) -> int:
        return int(self.lo.numel())

    @property
    def bounded_box(self) -> bool:
        return bool(torch.isfinite(self.lo).all() and torch.isfinite(self.hi).all())

    def null_basis(self) -> Tensor:
        """Orthonormal basis (n, n - k) of the directions inside the affine hull."""
        if "null" not in self._cache:
            if self.E.shape[0] == 0:
                N = torch.eye(self.n, dtype=_F64)
            else:
                Q, _ = torch.linalg.qr(self.E.T, mode="complete")
                N = Q[:, self.E.shape[0] :]
            self._cache["null"] = N.contiguous()
        return self._cache["null"]

    @property
    def dim(self) -> int:
        return self.n - int(self.E.shape[0])

    def add_equalities(self, rows: Tensor, values: Tensor) -> None:
        """Append equalities (already implied by the set) and re-orthonormalise ``E``."""
        A = torch.cat([self.E, rows.to(_F64)])
        c = torch.cat([self.e, values.to(_F64)])
        f = factor(A)
        d, _ = f.reduce(c[None])
        self.E, self.e = f.Vh.contiguous(), d[0]
        self._cache.clear()

    # --- membership ---------------------------------------------------------------

    def violation(self, x: Tensor) -> Tensor:
        """Largest constraint violation of each row of ``x`` (N, n); 0 inside."""
        x = x.to(_F64)
        v = torch.zeros(x.shape[0], dtype=_F64)
        if self.E.shape[0]:
            v = torch.maximum(v, (x @ self.E.T - self.e).abs().amax(1))
        if self.G.shape[0]:
            v = torch.maximum(v, (x @ self.G.T - self.g).amax(1).clamp(min=0))
        v = torch.maximum(v, (self.lo - x).amax(1).clamp(min=0))
        v = torch.maximum(v, (x - self.hi).amax(1).clamp(min=0))
        return v

    def region_violation(self, x: Tensor) -> Tensor:
        """Largest violation of ``G x <= g`` alone (N,)."""
        if not self.G.shape[0]:
            return torch.zeros(x.shape[0], dtype=_F64)
        return (x.to(_F64) @ self.G.T - self.g).amax(1).clamp(min=0)

    def clean(self, x: Tensor) -> Tensor:
        """Project rows of ``x`` onto the affine hull, then clip to the box."""
        x = x.to(_F64)
        if self.E.shape[0]:
            x = x - (x @ self.E.T - self.e) @ self.E
        return torch.clamp(x, self.lo, self.hi)

    # --- linear programs ----------------------------------------------------------

    def _lp_rows(self) -> tuple[Any, np.ndarray, list[tuple[float | None, float | None]]]:
        bounds = [
            (None if math.isinf(a) else a, None if math.isinf(b) else b)
            for a, b in zip(self.lo.tolist(), self.hi.tolist())
        ]
        return sp.csr_matrix(_np(self.G)) if self.G.shape[0] else None, _np(self.g), bounds

    def _linprog(self, cost: np.ndarray, **kw: Any) -> Any:
        return linprog(cost, method="highs", options=LP_OPTIONS, **kw)

    def centre(self, *, tol: float = 1e-9, max_rounds: int = 50) -> tuple[Tensor | None, float]:
        """A point with the largest inscribed ball (in the affine hull) and its radius.

        Returns ``(None, -inf)`` when the set is empty. Implicit equalities (a
        zero radius) are found from the LP's dual and moved into ``E``.
        """
        if "centre" in self._cache:
            return self._cache["centre"]
        n = self.n
        for _ in range(max_rounds):
            E = self.E
            # how far each constraint moves per unit step inside the affine hull
            nu_G = torch.linalg.vector_norm(self.G - (self.G @ E.T) @ E, dim=1)
            nu_box = (1 - E.pow(2).sum(0)).clamp(min=0).sqrt()
            rows, rhs, kinds = [], [], []
            if self.G.shape[0]:
                rows.append(
                    sp.hstack([sp.csr_matrix(_np(self.G)), sp.csr_matrix(_np(nu_G)[:, None])])
                )
                rhs.append(_np(self.g))
                kinds += [("G", i) for i in range(self.G.shape[0])]
            for sign, bound in ((1.0, self.hi), (-1.0, self.lo)):
                idx = torch.isfinite(bound).nonzero().flatten()
                if idx.numel():
                    k = idx.numel()
                    Ix = sp.csr_matrix(
                        (np.full(k, sign), (np.arange(k), _np(idx).astype(np.int64))), shape=(k, n)
                    )
                    rows.append(sp.hstack([Ix, sp.csr_matrix(_np(nu_box[idx])[:, None])]))
                    rhs.append(sign * _np(bound[idx]))
                    kinds += [("hi" if sign > 0 else "lo", int(i)) for i in idx.tolist()]
            cost = np.zeros(n + 1)
            cost[-1] = -1.0
            bounds = [
                (None if math.isinf(a) else a, None if math.isinf(b) else b)
                for a, b in zip(self.lo.tolist(), self.hi.tolist())
            ] + [(None, 1e6)]
            kw: dict[str, Any] = {"bounds": bounds}
            if rows:
                kw["A_ub"] = sp.vstack(rows).tocsr()
                kw["b_ub"] = np.concatenate(rhs)
            if E.shape[0]:
                kw["A_eq"] = np.hstack([_np(E), np.zeros((E.shape[0], 1))])
                kw["b_eq"] = _np(self.e)
            res = self._linprog(cost, **kw)
            if res.status == 2:
                self._cache["centre"] = (None, -math.inf)
                return self._cache["centre"]
            if res.status != 0:
                raise NNInvError(f"the centre LP failed: {res.message}")
            radius = float(res.x[-1])
            if radius < -tol:
                self._cache["centre"] = (None, -math.inf)
                return self._cache["centre"]
            if radius > tol or not rows:
                x = self.clean(torch.from_numpy(res.x[:n].copy())[None])[0]
                self._cache["centre"] = (x, radius)
                return self._cache["centre"]
            # Zero radius: constraints with a positive dual hold with equality on the
            # whole set (their weighted sum of slacks is zero and each term is <= 0).
            duals = -np.asarray(res.ineqlin.marginals)
            tight = np.nonzero(duals > 1e-9 * max(1.0, duals.max()))[0]
            if tight.size == 0:
                tight = np.array([int(np.argmax(duals))])
            new_rows, new_vals = [], []
            for j in tight.tolist():
                kind, i = kinds[j]
                if kind == "G":
                    new_rows.append(self.G[i])
                    new_vals.append(self.g[i])
                else:
                    r = torch.zeros(n, dtype=_F64)
                    r[i] = 1.0
                    new_rows.append(r)
                    new_vals.append(self.hi[i] if kind == "hi" else self.lo[i])
            self.add_equalities(torch.stack(new_rows), torch.stack(new_vals))
        raise NNInvError("could not find the affine hull of the set (too many implicit equalities)")

    def extent(self, w: Tensor) -> tuple[float, float, Tensor | None, Tensor | None]:
        """``(min, max)`` of ``w . x`` over the set and the members that attain them.

        An unbounded side gives ``-inf``/``inf`` and None for its member.
        """
        G, g, bounds = self._lp_rows()
        kw: dict[str, Any] = {"bounds": bounds}
        if G is not None:
            kw["A_ub"], kw["b_ub"] = G, g
        if self.E.shape[0]:
            kw["A_eq"], kw["b_eq"] = _np(self.E), _np(self.e)
        out: list[Any] = []
        for sign in (1.0, -1.0):
            res = self._linprog(sign * _np(w.reshape(-1)), **kw)
            if res.status == 3:
                out.append((-sign * math.inf, None))
            elif res.status == 0:
                x = self.clean(torch.from_numpy(res.x.copy())[None])[0]
                out.append((float(w.reshape(-1).to(_F64) @ x), x))
            elif res.status == 2:
                raise NNInvError("the set is empty; it has no extent")
            else:
                raise NNInvError(f"the extent LP failed: {res.message}")
        (lo, xlo), (hi, xhi) = out
        return lo, hi, xlo, xhi

    # --- projection ---------------------------------------------------------------

    def project(self, z: Tensor, *, tol: float = 1e-9, max_iter: int = 200) -> QPResult:
        """The member closest to ``z`` (n,) in L2: ``min |x - z|^2`` over the set.

        The dual of the QP keeps the box as the domain of ``x``:
        ``theta(y) = min_{lo<=x<=hi} |x - z|^2 / 2 + y.(C x - c)`` with
        ``C = [E; G]``, whose minimiser is ``x(y) = clip(z - C^T y, lo, hi)``.
        ``theta`` is concave with gradient ``C x(y) - c``; L-BFGS-B maximises
        it over ``mu >= 0`` for a warm start, and primal-dual active-set steps
        then solve the KKT system of the identified active set exactly. The
        result is checked against all KKT conditions; since the problem is
        convex they certify the global minimum.
        """
        z = z.to(_F64).reshape(-1)
        E, e, G, g, lo, hi = (_np(t) for t in (self.E, self.e, self.G, self.g, self.lo, self.hi))
        zn = _np(z)
        k, p = E.shape[0], G.shape[0]
        C = np.vstack([E, G]) if p else E
        c = np.concatenate([e, g]) if p else e
        q = k + p
        scale = max(1.0, float(np.abs(zn).max()), float(np.abs(c).max()) if q else 0.0)
        if q == 0:
            x = np.clip(zn, lo, hi)
            return QPResult(torch.from_numpy(x), 0.0, 0, (torch.zeros(0, dtype=_F64),) * 2)

        def neg_dual(y: np.ndarray) -> tuple[float, np.ndarray]:
            x = np.clip(zn - C.T @ y, lo, hi)
            r = C @ x - c
            val = 0.5 * float((x - zn) @ (x - zn)) + float(y @ r)
            return -val, -r

        y0 = np.zeros(q)
        bnds = [(None, None)] * k + [(0.0, None)] * p
        res = minimize(
            neg_dual,
            y0,
            jac=True,
            method="L-BFGS-B",
            bounds=bnds,
            options={"maxiter": 5000, "ftol": 1e-15, "gtol": 1e-12, "maxcor": 30},
        )
        y = res.x
        best = self._kkt(zn, y, C, c, k, lo, hi, scale)
        it = 0
        for it in range(1, max_iter + 1):  # noqa: B007
            y_new = self._active_set_step(zn, y, C, c, k, lo, hi)
            if y_new is None:
                break
            cand = self._kkt(zn, y_new, C, c, k, lo, hi, scale)
            if cand[1] < best[1]:
                best = cand
            same = np.array_equal(
                self._sets(zn, y_new, C, k, lo, hi), self._sets(zn, y, C, k, lo, hi)
            )
            y = y_new
            if best[1] <= tol or same:
                break
        x, kkt, y = best
        return QPResult(
            torch.from_numpy(x), float(kkt), it, (torch.from_numpy(y[:k]), torch.from_numpy(y[k:]))
        )

    @staticmethod
    def _sets(z, y, C, k, lo, hi) -> np.ndarray:
        w = z - C.T @ y
        code = np.zeros(w.shape[0] + C.shape[0] - k, dtype=np.int8)
        code[: w.shape[0]] = np.where(w <= lo, -1, np.where(w >= hi, 1, 0))
        return code

    @staticmethod
    def _active_set_step(z, y, C, c, k, lo, hi) -> np.ndarray | None:
        n = z.shape[0]
        w = z - C.T @ y
        at_lo, at_hi = w <= lo, w >= hi
        free = ~(at_lo | at_hi)
        x = np.clip(w, lo, hi)
        mu = y[k:]
        # primal-dual active set rule: an inequality is active if its multiplier is
        # positive or it is violated at the current primal point
        act_G = (mu + (C[k:] @ x - c[k:])) > 0
        rows = np.concatenate([np.ones(k, bool), act_G])
        Ca = C[rows]
        if Ca.shape[0] == 0:
            return np.zeros_like(y)
        fixed = ~free
        rhs = Ca[:, free] @ z[free] + Ca[:, fixed] @ x[fixed] - c[rows]
        Caf = Ca[:, free]
        M = Caf @ Caf.T
        try:
            nu = np.linalg.lstsq(M, rhs, rcond=None)[0]
        except np.linalg.LinAlgError:
            return None
        y_new = np.zeros_like(y)
        y_new[rows] = nu
        del n
        return y_new

    @staticmethod
    def _kkt(z, y, C, c, k, lo, hi, scale) -> tuple[np.ndarray, float, np.ndarray]:
        y = y.copy()
        y[k:] = np.maximum(y[k:], 0.0)
        w = z - C.T @ y
        x = np.clip(w, lo, hi)
        r = C @ x - c
        viol = np.abs(r[:k]).max() if k else 0.0
        if C.shape[0] > k:
            viol = max(viol, float(np.maximum(r[k:], 0).max()))
            # complementarity: a positive multiplier needs its constraint tight
            viol = max(viol, float(np.abs(y[k:] * r[k:]).max()))
        # stationarity and box-multiplier signs hold by construction of x = clip(w)
        return x, float(viol) / scale, y

    # --- sampling -----------------------------------------------------------------

    def starts(self, chains: int, gen: torch.Generator) -> Tensor:
        """Over-dispersed starting points: from the centre, 90% of the way along random chords."""
        x0, radius = self.centre()
        if x0 is None:
            raise NNInvError("the set is empty")
        X = x0.expand(chains, -1).clone()
        D = self._directions(chains, gen)
        tmin, tmax = self._chord(X, D, self._slack(X))
        if bool(torch.isinf(tmin).any() | torch.isinf(tmax).any()):
            raise NNInvError(_UNBOUNDED)
        side = torch.rand(chains, generator=gen, dtype=_F64) < 0.5
        t = 0.9 * torch.where(side, tmax, tmin)
        return self.clean(X + t[:, None] * D)

    def _directions(self, C: int, gen: torch.Generator) -> Tensor:
        """Isotropic unit directions inside the affine hull."""
        D = torch.randn(C, self.n, generator=gen, dtype=_F64)
        if self.E.shape[0]:
            D = D - (D @ self.E.T) @ self.E
        return D / torch.linalg.vector_norm(D, dim=1, keepdim=True).clamp(min=1e-300)

    def _slack(self, X: Tensor) -> Tensor:
        return self.g - X @ self.G.T if self.G.shape[0] else X.new_zeros(X.shape[0], 0)

    def _chord(self, X: Tensor, D: Tensor, S: Tensor) -> tuple[Tensor, Tensor]:
        inf = torch.tensor(math.inf, dtype=_F64)
        pos, neg = D > 0, D < 0
        up = torch.where(pos, (self.hi - X) / D, torch.where(neg, (self.lo - X) / D, inf))
        dn = torch.where(pos, (self.lo - X) / D, torch.where(neg, (self.hi - X) / D, -inf))
        tmax, tmin = up.amin(1), dn.amax(1)
        if S.shape[1]:
            GD = D @ self.G.T
            tmax = torch.minimum(tmax, torch.where(GD > 0, S / GD, inf).amin(1))
            tmin = torch.maximum(tmin, torch.where(GD < 0, S / GD, -inf).amax(1))
        # a state a rounding error outside must still allow t = 0
        return tmin.clamp(max=0), tmax.clamp(min=0)

    def walk(
        self, X0: Tensor, *, keep: int, thin: int, burn: int, gen: torch.Generator, monitor: Tensor
    ) -> Walk:
        """Run hit-and-run chains from ``X0`` (C, n), uniform on the set.

        ``monitor`` (q, n) projections are recorded at every step after burn-in.
        Kept for comparison: on large sets it mixes far more slowly than
        :meth:`billiard` (its autocorrelation time grows like the square of the
        dimension).
        """
        if self.dim == 0:
            raise NNInvError("the set is a single point; there is nothing to walk")
        with one_thread():
            return self._sparse_walk(X0, keep, thin, burn, gen, monitor)

    def _sparse_walk(self, X0, keep, thin, burn, gen, monitor) -> Walk:  # type: ignore[no-untyped-def]
        """Hit-and-run along the projections of coordinate axes onto the affine hull.

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
        lo, hi = _np(self.lo), _np(self.hi)
        E = _np(self.E)
        Et = np.ascontiguousarray(E.T)  # (n, k)
        G, g = _np(self.G), _np(self.g)
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
                raise NNInvError(_UNBOUNDED)
            t = tmin + rng.random(C) * (tmax - tmin)
            X += t[:, None] * D
            np.clip(X, lo, hi, out=X)
            if has_G:
                S -= t[:, None] * GD
            proj += t[:, None] * (Wm[:, j].T - Ej @ WE.T)
            if s % refresh == 0:
                # undo rounding drift: back onto the affine hull, into the box
                X = _np(self.clean(torch.from_numpy(X))).copy()
                if has_G:
                    S = g - X @ G.T
                proj = X @ Wm.T
            if s > burn:
                i = s - burn - 1
                trace[i] = proj
                if (i + 1) % thin == 0:
                    kept[:, (i + 1) // thin - 1] = X
        x = self.clean(torch.from_numpy(kept.reshape(C * keep, n))).reshape(C, keep, n)
        ess, rhat = ess_rhat(trace)
        return Walk(x, trace, ess, rhat, steps, burn, thin, time.perf_counter() - t0)

    # --- reflective samplers ------------------------------------------------------

    def uniform_dynamics(self) -> Dynamics:
        """Straight-line dynamics for a short pilot of the uniform distribution.

        Velocities are rounded by the box (each input's speed proportional to
        the width of its bounds; the median finite width where a bound is
        infinite) and a trajectory lasts a twentieth of that width: the set
        may be much thinner than its box, and :meth:`rounded` takes over.
        """
        width = self.hi - self.lo
        finite = torch.isfinite(width)
        if bool(finite.any()):
            typical = float(width[finite].median())
        else:
            _, radius = self.centre()
            typical = 4.0 * max(radius, 1e-12)
        width = torch.where(finite, width, typical).clamp(min=1e-300)
        return Dynamics(torch.diag(width)[None], None, 0.05)

    def rounded(self, states: Tensor, time: float = 2.0) -> Dynamics | None:
        """Straight-line dynamics rounded by the spread of ``states`` (S, C, n).

        Velocities ``P diag(s) xi`` (``P`` the projection onto the affine hull,
        ``s`` the standard deviation of each input over the states, floored at
        a tenth of their root mean square) make the set look near-isotropic
        to the walk, as rounding by the covariance does (Lovász & Vempala
        2006); per-coordinate spreads need far fewer states than a covariance
        in hundreds of dimensions. ``time`` is in units of that spread. None
        when the states do not spread (a single state).
        """
        var = states.reshape(-1, self.n).to(_F64).var(0, correction=0)
        if not (bool(torch.isfinite(var).all()) and float(var.max()) > 0):
            return None
        var = 0.99 * var + 0.01 * var.mean()
        return Dynamics(torch.diag(var.sqrt())[None], None, time)

    def gaussian_dynamics(self, means: Tensor, covariances: Tensor) -> Dynamics:
        """Harmonic dynamics for ``N(means[k], covariances[k])`` restricted to the set.

        On ``E x = e`` each component is the conditional Gaussian with mean
        ``m = mu + K (e - E mu)`` and covariance ``Sigma_c = W W^T``, where
        ``K = Sigma E^T (E Sigma E^T)^-1`` and ``W = (I - K E) L`` with
        ``L L^T = Sigma``: with velocities ``W xi`` (``xi ~ N(0, I)``) the
        harmonic motion about ``m`` is that of a standard normal in whitened
        coordinates, truncated by the walls (Pakman & Paninski 2014), however
        badly conditioned ``Sigma`` is.
        """
        mus = means.to(_F64).reshape(-1, self.n)
        covs = covariances.to(_F64).reshape(-1, self.n, self.n)
        Ls = torch.linalg.cholesky(0.5 * (covs + covs.transpose(1, 2)))
        E, e = self.E, self.e
        if E.shape[0]:
            S = E @ covs @ E.T
            Kk = torch.linalg.solve(S, E @ covs).transpose(1, 2)  # (K, n, r)
            W = Ls - Kk @ (E @ Ls)
            m = mus + (Kk @ (e - mus @ E.T)[:, :, None])[:, :, 0]
            m = m - (m @ E.T - e) @ E
        else:
            W, m = Ls, mus
        return Dynamics(W, m, 0.5 * math.pi)

    def billiard(
        self,
        X0: Tensor,
        *,
        keep: int,
        thin: int,
        burn: int,
        gen: torch.Generator,
        monitor: Tensor,
        dynamics: Dynamics,
        component: Callable[[Tensor, torch.Generator], tuple[Tensor, Tensor]] | None = None,
        adapt: Callable[[Tensor], Dynamics | None] | None = None,
        max_bounces: int | None = None,
    ) -> Walk:
        """Run reflective Hamiltonian chains from ``X0`` (C, n) inside the set.

        Each step draws a velocity ``w = scale[k] xi`` (``xi`` standard normal,
        ``w`` inside the affine hull) and follows the exact dynamics for a
        random time in ``[time / 2, 3 time / 2]``: straight lines (uniform
        target) or ``x(t) = m + (x - m) cos t + w sin t`` (Gaussian target),
        reflected specularly, in the metric of ``Sigma = scale scale^T``, at
        every wall ``lo <= x <= hi``, ``G x <= g`` it meets. Wall hits are found
        in closed form (no step size, no rejection), so the constraints hold
        along the whole path. A trajectory with more than ``max_bounces``
        reflections is rejected (the chain stays), which keeps the chain
        reversible.

        ``component(X, gen)`` returns the states and the mixture component of
        each chain before each step (e.g. :class:`MixtureMoves`);
        ``adapt(states)`` is called during burn-in after steps 2, 4, 8, ... and
        ``3 burn / 4``, with the states of the second half of the window
        since the last call, and returns new dynamics (rounding) or None.
        ``Walk.trace`` holds ``monitor`` projections after burn-in.

        References
        ----------
        Pakman & Paninski (2014), "Exact Hamiltonian Monte Carlo for truncated
        multivariate Gaussians", J. Comput. Graph. Stat. 23(2).
        Afshar & Domke (2015), "Reflection, refraction, and Hamiltonian Monte
        Carlo", NeurIPS 28.
        Gryazina & Polyak (2014), "Random sampling: billiard walk algorithm",
        European J. Oper. Res. 238(2).
        """
        with one_thread():
            return _Billiard(self, dynamics, max_bounces).run(
                X0, keep, thin, burn, gen, monitor, component, adapt
            )


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
    poly : Polyhedron
    dyn : Dynamics
        From :meth:`Polyhedron.gaussian_dynamics` for the mixture.
    log_prob : callable
        ``X (C, n) -> (C, K)``: ``log w_k + log N(x; mu_k, Sigma_k)``.
    log_c : Tensor (K,)
        Log conditional weights ``log c_k`` (up to a constant).
    """

    def __init__(
        self,
        poly: Polyhedron,
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


class _Billiard:
    """The event loop of :meth:`Polyhedron.billiard`, batched over chains in NumPy.

    Walls are the rows of ``R = [I; G]`` with bounds ``L <= R x <= U``. The
    state of a chain is ``a = R x`` (minus ``R m`` for the harmonic motion) and
    ``b = R w``; a reflection at wall ``j`` is ``b -= 2 b_j / Q_jj Q_j`` with
    ``Q = R Sigma R^T``, so each event costs ``O(C (n + p))``. NumPy rather
    than torch here: its reductions and comparisons on these small arrays
    are several times faster per call, and an event is a dozen such calls.
    """

    def __init__(self, poly: Polyhedron, dyn: Dynamics, max_bounces: int | None) -> None:
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

    def run(self, X0, keep, thin, burn, gen, monitor, component, adapt) -> Walk:  # type: ignore[no-untyped-def]
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

    def trajectory(
        self, X: Tensor, comp: np.ndarray, gen: torch.Generator
    ) -> tuple[Tensor, int, int]:
        """One trajectory of every chain; returns the new states (cleaned), the number
        of reflections, and the number of chains rejected for too many."""
        n, G, E = self.n, self.G, self.E
        C = X.shape[0]
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
            for _ in range(self.m):
                out = ((a >= wu) & (b > 0)) | ((a <= wl) & (b < 0))
                rows, j = out.nonzero()
                if not rows.size:
                    break
                first = np.unique(rows, return_index=True)[1]
                rows, j = rows[first], j[first]
                Qr = Qk[j] if Qk is not None else self.Q[kc[rows], j]
                b[rows] -= (coef[rows, j] * b[rows, j])[:, None] * Qr
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
                        raise NNInvError(_UNBOUNDED)
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


def _harmonic_rates(  # type: ignore[no-untyped-def]
    a: np.ndarray,
    b: np.ndarray,
    wu: np.ndarray,
    wl: np.ndarray,
    wu2: np.ndarray | None = None,
    wl2: np.ndarray | None = None,
    bufs: list[np.ndarray] | None = None,
):
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


def _rates(a, b, wu, wl, wu2, wl2, bufs):  # type: ignore[no-untyped-def]
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


_UNBOUNDED = (
    "the set is unbounded, so it has no uniform distribution; pass finite bounds=(lo, hi) "
    "or sample from a prior"
)


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Run torch on one thread: chains update small tensors, where intra-op threads
    cost more in spin-waiting than they save (tens of times on a busy machine)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def _autocov(x: np.ndarray) -> np.ndarray:
    """Autocovariance of each row of ``x`` (chains, T) by FFT, lags 0..T-1."""
    T = x.shape[1]
    xc = x - x.mean(1, keepdims=True)
    size = 1 << (2 * T - 1).bit_length()
    f = np.fft.rfft(xc, size, axis=1)
    return np.fft.irfft(f * np.conj(f), size, axis=1)[:, :T] / T


def ess_rhat(trace: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Effective sample size and split R-hat of each column of ``trace`` (T, chains, q).

    Chains are split in halves; the combined autocorrelation is summed with
    Geyer's initial monotone sequence (Vehtari et al. 2021, without rank
    normalisation).
    """
    T, C, q = trace.shape
    if T < 4:
        return np.full(q, np.nan), np.full(q, np.nan)
    h = T // 2
    ess, rhat = np.empty(q), np.empty(q)
    for j in range(q):
        x = np.concatenate([trace[:h, :, j].T, trace[h : 2 * h, :, j].T])  # (2C, h)
        m, n = x.shape
        means = x.mean(1)
        acov = _autocov(x)
        W = acov[:, 0].mean() * n / max(n - 1, 1)
        B = n * means.var(ddof=1) if m > 1 else 0.0
        var_plus = (n - 1) / n * W + B / n
        if var_plus <= 0 or W <= 0:
            ess[j], rhat[j] = np.nan, np.nan
            continue
        rhat[j] = math.sqrt(var_plus / W)
        rho = 1 - (W - acov.mean(0)) / var_plus
        rho[0] = 1.0
        # Geyer: sum pairs while positive, keep the pair sums monotone
        tau, prev = -1.0, math.inf
        for t in range(0, n - 1, 2):
            pair = rho[t] + rho[t + 1]
            if pair < 0:
                break
            pair = min(pair, prev)
            tau += 2 * pair
            prev = pair
        ess[j] = m * n / max(tau, 1e-12)
    return ess, rhat

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
- :meth:`Polyhedron.walk`: hit-and-run Markov chains, vectorised over many
  chains, with a uniform or a (mixture of) Gaussian density along each chord.

References
----------
Smith (1984), "Efficient Monte Carlo procedures for generating points
uniformly distributed over bounded regions", Operations Research 32(6).
Hintermueller, Ito & Kunisch (2002), "The primal-dual active set strategy as a
semismooth Newton method", SIAM J. Optim. 13(3).
Vehtari, Gelman, Simpson, Carpenter & Buerkner (2021), "Rank-normalization,
folding, and localization: an improved R-hat", Bayesian Analysis 16(2).
"""

from __future__ import annotations

__all__ = ["Polyhedron", "QPResult", "Walk", "ess_rhat", "one_thread"]

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

from ._errors import NNInvError
from ._linalg import factor

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
    """Draws of a hit-and-run run and its mixing diagnostics.

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
    """

    x: Tensor
    trace: np.ndarray
    ess: np.ndarray
    rhat: np.ndarray
    steps: int
    burn: int
    thin: int
    seconds: float


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
        self,
        X0: Tensor,
        *,
        keep: int,
        thin: int,
        burn: int,
        gen: torch.Generator,
        monitor: Tensor,
        line: Callable[..., Tensor] | None = None,
        directions: Callable[[Tensor, torch.Generator], Tensor] | None = None,
        every: Callable[[Tensor, torch.Generator], None] | None = None,
        refresh: int = 50,
    ) -> Walk:
        """Run hit-and-run chains from ``X0`` (C, n).

        ``line(X, D, tmin, tmax, gen)`` draws the step along each chord
        (uniform when None); ``directions(X, gen)`` draws directions inside the
        affine hull (isotropic when None); ``every(X, gen)`` runs after each
        step (e.g. a Gibbs update of a mixture component). ``monitor`` (q, n)
        projections are recorded at every step after burn-in.
        """
        with one_thread():
            return self._walk(X0, keep, thin, burn, gen, monitor, line, directions, every, refresh)

    def _walk(self, X0, keep, thin, burn, gen, monitor, line, directions, every, refresh) -> Walk:  # type: ignore[no-untyped-def]
        if line is None and directions is None and every is None and self._sparse_ok():
            return self._sparse_walk(X0, keep, thin, burn, gen, monitor)
        t0 = time.perf_counter()
        X = X0.to(_F64).clone()
        C = X.shape[0]
        S = self._slack(X)
        steps = burn + keep * thin
        kept = torch.empty(C, keep, self.n, dtype=_F64)
        trace = np.empty((keep * thin, C, monitor.shape[0]))
        Mt = monitor.to(_F64).T
        for s in range(1, steps + 1):
            D = self._directions(C, gen) if directions is None else directions(X, gen)
            tmin, tmax = self._chord(X, D, S)
            if line is None:
                if bool(torch.isinf(tmin).any() | torch.isinf(tmax).any()):
                    raise NNInvError(_UNBOUNDED)
                t = tmin + torch.rand(C, generator=gen, dtype=_F64) * (tmax - tmin)
            else:
                t = line(X, D, tmin, tmax, gen)
            X = torch.clamp(X + t[:, None] * D, self.lo, self.hi)
            if S.shape[1]:
                S = S - t[:, None] * (D @ self.G.T)
            if s % refresh == 0:
                X = self.clean(X)
                S = self._slack(X)
            if every is not None:
                every(X, gen)
            if s > burn:
                j = s - burn - 1
                trace[j] = (X @ Mt).numpy()
                if (j + 1) % thin == 0:
                    kept[:, (j + 1) // thin - 1] = self.clean(X)
        ess, rhat = ess_rhat(trace)
        return Walk(kept, trace, ess, rhat, steps, burn, thin, time.perf_counter() - t0)

    def _sparse_ok(self) -> bool:
        return self.dim > 0

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

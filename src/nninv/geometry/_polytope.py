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
  :meth:`Polyhedron.walk` is plain hit-and-run, kept as a baseline, and
  :func:`reflect` runs the billiard with rounding during burn-in. The chains
  themselves run in :mod:`~nninv.geometry._walks` (which does not import this
  module), their diagnostics in :mod:`~nninv.geometry._diagnostics`.

References
----------
Smith (1984), "Efficient Monte Carlo procedures for generating points
uniformly distributed over bounded regions", Operations Research 32(6).
Hintermueller, Ito & Kunisch (2002), "The primal-dual active set strategy as a
semismooth Newton method", SIAM J. Optim. 13(3).
Pakman & Paninski (2014), "Exact Hamiltonian Monte Carlo for truncated
multivariate Gaussians", J. Comput. Graph. Stat. 23(2).
Gryazina & Polyak (2014), "Random sampling: billiard walk algorithm", European
J. Oper. Res. 238(2).
Afshar & Domke (2015), "Reflection, refraction, and Hamiltonian Monte Carlo",
NeurIPS 28.
Lovász & Vempala (2006), "Hit-and-run from a corner", SIAM J. Comput. 35(4).
"""

from __future__ import annotations

__all__ = ["LP_OPTIONS", "Polyhedron", "QPResult", "one_thread", "reflect"]

import contextlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
from scipy.optimize import linprog, minimize
from torch import Tensor

from ..errors import NNInvError
from ..linalg import factor
from ._walks import UNBOUNDED, Billiard, Dynamics, MixtureMoves, Walk, hit_and_run

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
            if c is None:
                raise NNInvError("an equality system A x = c needs its right-hand side c")
            A, c = A.to(_F64), c.to(_F64).reshape(-1)
            f = factor(A)
            d, out = f.reduce(c[None])
            E, e = f.Vh, d[0]
            outside = float(out[0]) / max(1.0, float(c.abs().max()))
        if G is None or G.numel() == 0:
            G = torch.zeros(0, n, dtype=_F64)
            g = torch.zeros(0, dtype=_F64)
        else:
            if g is None:
                raise NNInvError("an inequality system G x <= g needs its right-hand side g")
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
        if not p:
            # equalities and the box only: active-set (semismooth Newton) steps on the
            # dual from 0 usually certify in a few steps, 10-100x faster than L-BFGS-B
            quick = self._active_set_from(zn, y0, C, c, k, lo, hi, scale, tol, 12)
            if quick is not None:
                x, kkt, y, it = quick
                duals = (torch.from_numpy(y[:k]), torch.from_numpy(y[k:]))
                return QPResult(torch.from_numpy(x), float(kkt), it, duals)
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

    def _active_set_from(self, z, y, C, c, k, lo, hi, scale, tol, steps):
        """Active-set steps from ``y``; ``(x, kkt, y, steps)`` once certified, else None."""
        for it in range(1, steps + 1):
            y_new = self._active_set_step(z, y, C, c, k, lo, hi)
            if y_new is None:
                return None
            x, kkt, y_new = self._kkt(z, y_new, C, c, k, lo, hi, scale)
            if kkt <= tol:
                return x, kkt, y_new, it
            y = y_new
        return None

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
        D = self.directions(chains, gen)
        tmin, tmax = self._chord(X, D, self._slack(X))
        if bool(torch.isinf(tmin).any() | torch.isinf(tmax).any()):
            raise NNInvError(UNBOUNDED)
        side = torch.rand(chains, generator=gen, dtype=_F64) < 0.5
        t = 0.9 * torch.where(side, tmax, tmin)
        return self.clean(X + t[:, None] * D)

    def directions(self, C: int, gen: torch.Generator) -> Tensor:
        """``C`` random unit directions (C, n) inside the affine hull, isotropic in it."""
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
            return hit_and_run(self, X0, keep, thin, burn, gen, monitor)

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
        each chain before each step (e.g. :class:`~nninv.geometry._walks.MixtureMoves`);
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
            return Billiard(self, dynamics, max_bounces).run(
                X0, keep, thin, burn, gen, monitor, component, adapt
            )


def reflect(
    poly: Polyhedron,
    X0: Tensor,
    per: int,
    thin: int,
    burn: int,
    gen: torch.Generator,
    monitor: Tensor,
    dyn: Dynamics,
    component: MixtureMoves | None = None,
) -> tuple[Walk, dict[str, Any]]:
    """Run :meth:`Polyhedron.billiard` chains, rounding uniform dynamics during burn-in.

    Straight-line (uniform) dynamics are replaced by
    :meth:`Polyhedron.rounded` at each adaptation window of the burn-in;
    harmonic (Gaussian) dynamics are whitened already and kept.

    Parameters
    ----------
    poly : Polyhedron
    X0 : Tensor
        ``(C, n)`` starting states.
    per, thin, burn : int
        States kept per chain, their spacing, and the burn-in steps.
    gen : torch.Generator
    monitor : Tensor
        ``(q, n)`` directions whose projections the diagnostics watch.
    dyn : Dynamics
    component : MixtureMoves, optional
        Moves between the components of a mixture before each step.

    Returns
    -------
    walk : Walk
    info : dict
        ``walk.info``, with ``"rounded"`` (whether any rounding was applied)
        for uniform dynamics.
    """
    uniform = dyn.mean is None
    rounded: list[bool] = []

    def adapt(states: Tensor) -> Dynamics | None:
        new = poly.rounded(states)
        rounded.append(new is not None)
        return new

    w = poly.billiard(
        X0,
        keep=per,
        thin=thin,
        burn=burn,
        gen=gen,
        monitor=monitor,
        dynamics=dyn,
        component=component,
        adapt=adapt if uniform else None,
    )
    info: dict[str, Any] = dict(w.info)
    if uniform:
        info["rounded"] = any(rounded)
    return w, info


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

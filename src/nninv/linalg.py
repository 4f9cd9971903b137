"""Linear algebra on tensors: rank-revealing factors, constraint reduction, projection.

Every affine constraint ``A x = c`` that the methods meet is reduced, through a
thin SVD computed once per operator, to ``B x = d`` with ``B`` having
orthonormal rows (``B = V_r^T``, ``d = diag(1/s) U_r^T c``). The minimum-norm
solution is then ``B^T d`` (the pseudo-inverse), and priors condition on
``B x = d`` in closed form. The part of ``c`` outside the range of ``A`` is
reported, never silently dropped.
"""

from __future__ import annotations

__all__ = [
    "Factor",
    "factor",
    "gauss_newton_onto",
    "gauss_newton_solve",
    "orthonormal_rows",
    "spd_solve",
]

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor


@dataclass
class Factor:
    """Thin SVD ``A = U_r diag(s) Vh_r`` truncated at the numerical rank.

    Attributes
    ----------
    U : Tensor (m, r)
    s : Tensor (r,)
    Vh : Tensor (r, n)
    singular_values : Tensor (min(m, n),)
        All singular values, largest first.
    tol : float
        Singular values at or below ``tol`` count as zero
        (``s_max * max(m, n) * eps``, as in NumPy's ``matrix_rank``).
    """

    U: Tensor
    s: Tensor
    Vh: Tensor
    singular_values: Tensor
    tol: float
    shape: tuple[int, int]
    _cache: dict[Any, Any] = field(default_factory=dict, repr=False)

    @property
    def rank(self) -> int:
        return int(self.s.numel())

    @property
    def nullity(self) -> int:
        return self.shape[1] - self.rank

    @property
    def cond(self) -> float:
        sv = self.singular_values
        if sv.numel() == 0:
            return float("nan")
        smin = float(sv[-1])
        return float("inf") if smin <= self.tol else float(sv[0]) / smin

    def reduce(self, c: Tensor) -> tuple[Tensor, Tensor]:
        """Reduce ``A x = c`` to ``Vh x = d``.

        Returns ``d`` (N, r) and the norm (N,) of the part of ``c`` outside the
        range of ``A`` (zero when the constraint can be met exactly).
        """
        if self.rank == self.shape[0]:
            # full row rank: every c is in the range
            return c @ self.scaled_U(), torch.zeros(c.shape[0], dtype=c.dtype, device=c.device)
        coef = c @ self.U
        d = coef / self.s
        outside = torch.linalg.vector_norm(c - coef @ self.U.T, dim=1)
        return d, outside

    def pinv(self, c: Tensor) -> Tensor:
        """``pinv(A) c`` for a batch ``c`` (N, m)."""
        return self.reduce(c)[0] @ self.Vh

    def scaled_U(self) -> Tensor:
        """``U_r diag(1/s)`` (m, r), cached: ``d = c @ scaled_U()`` in one product."""
        if "U/s" not in self._cache:
            src = self._cache.get("source")
            Us = src.scaled_U().to(self.U.dtype) if src is not None else self.U / self.s
            self._cache["U/s"] = Us.contiguous()
        return self._cache["U/s"]

    def pinv_T(self) -> Tensor:
        """``pinv(A)^T = U_r diag(1/s) Vh_r`` (m, n), cached: ``pinv(A) c`` for a batch
        of rows ``c`` (N, m) is then one product ``c @ pinv_T()``."""
        if "pinv_T" not in self._cache:
            src = self._cache.get("source")
            P = src.pinv_T().to(self.Vh.dtype) if src is not None else self.scaled_U() @ self.Vh
            self._cache["pinv_T"] = P.contiguous()
        return self._cache["pinv_T"]

    def to(self, dtype: torch.dtype) -> Factor:
        """A copy in another dtype (rank and tolerance kept); its derived matrices
        (:meth:`scaled_U`, :meth:`pinv_T`) are computed in this factor's dtype."""
        return Factor(
            self.U.to(dtype),
            self.s.to(dtype),
            self.Vh.to(dtype),
            self.singular_values.to(dtype),
            self.tol,
            self.shape,
            {"source": self},
        )

    def null_basis(self) -> Tensor:
        """Orthonormal basis (n, n - r) of the null space of ``A``."""
        if "null" not in self._cache:
            n = self.shape[1]
            if self.rank == 0:
                N = torch.eye(n, dtype=self.Vh.dtype, device=self.Vh.device)
            else:
                # full QR of Vh^T: the trailing columns span the orthogonal complement
                Q, _ = torch.linalg.qr(self.Vh.T, mode="complete")
                N = Q[:, self.rank :]
            self._cache["null"] = N.contiguous()
        return self._cache["null"]


def factor(A: Tensor, rtol: float | None = None) -> Factor:
    """Rank-revealing thin SVD of a dense matrix.

    Examples
    --------
    >>> A = torch.tensor([[1.0, 0.0, 0.0], [2.0, 0.0, 0.0]], dtype=torch.float64)
    >>> f = factor(A)
    >>> f.rank, f.nullity
    (1, 2)
    """
    m, n = A.shape
    U, s, Vh = torch.linalg.svd(A, full_matrices=False)
    eps = torch.finfo(A.dtype).eps
    smax = float(s[0]) if s.numel() else 0.0
    tol = smax * (rtol if rtol is not None else max(m, n) * eps)
    r = int((s > tol).sum())
    return Factor(U[:, :r].contiguous(), s[:r].contiguous(), Vh[:r].contiguous(), s, tol, (m, n))


def orthonormal_rows(M: Tensor) -> Tensor:
    """Orthonormal basis of the row space of ``M`` (rank-revealing)."""
    return factor(M).Vh


def spd_solve(M: Tensor, r: Tensor) -> Tensor:
    """``M^-1 r`` for a batch of damped symmetric positive semi-definite ``M`` (k, s, s).

    A Cholesky solve: for ``s`` in the thousands (a hidden layer of a CNN) it is
    about a hundred times cheaper than the eigendecomposition of ``pinv``, which
    is kept for the matrices whose factorisation fails (numerically singular).
    """
    L, info = torch.linalg.cholesky_ex(M)
    bad = info != 0
    if bool(bad.any()):
        lam = torch.empty_like(r)
        good = ~bad
        if bool(good.any()):
            lam[good] = torch.cholesky_solve(r[good].unsqueeze(-1), L[good]).squeeze(-1)
        lam[bad] = (torch.linalg.pinv(M[bad], hermitian=True) @ r[bad].unsqueeze(-1)).squeeze(-1)
        return lam
    return torch.cholesky_solve(r.unsqueeze(-1), L).squeeze(-1)


def gauss_newton_onto(
    B: Tensor,
    d: Tensor,
    g: Callable[[Tensor], Tensor],
    u0: Tensor,
    *,
    tol: float,
    max_iter: int = 50,
) -> tuple[Tensor, Tensor, int]:
    """Solve ``B g(u) = d`` for ``u`` near ``u0`` by minimum-norm Gauss-Newton steps.

    ``g`` is elementwise and strictly increasing, so each Jacobian
    ``B diag(g'(u))`` has the full row rank of ``B``, and each step solves an
    ``r x r`` system per sample. A backtracking line search keeps the residual
    decreasing.

    Returns
    -------
    u : Tensor (N, k)
    residual : Tensor (N,)
        ``max |B g(u) - d|`` per sample.
    iterations : int
    """
    u = u0.clone()
    eye = torch.eye(B.shape[0], dtype=B.dtype, device=B.device)

    def residual_of(u: Tensor, d: Tensor) -> Tensor:
        return g(u) @ B.T - d

    res = residual_of(u, d)
    err = res.abs().amax(1)
    it = 0
    for it in range(1, max_iter + 1):  # noqa: B007
        active = err > tol
        if not bool(active.any()):
            it -= 1
            break
        ua = u[active].detach().requires_grad_(True)
        with torch.enable_grad():
            ga = g(ua)
            (gp,) = torch.autograd.grad(ga.sum(), ua)
        ua = ua.detach()
        ra, da = res[active], d[active]
        JJt = (B * (gp * gp)[:, None, :]) @ B.T
        # Levenberg-Marquardt damping keeps saturated units (g' ~ 0) from making it singular
        scale = JJt.diagonal(dim1=1, dim2=2).amax(1).clamp(min=torch.finfo(B.dtype).tiny)
        JJt = JJt + (1e-12 * scale)[:, None, None] * eye
        lam = spd_solve(JJt, ra)
        step = gp * (lam @ B)
        t = torch.ones(ua.shape[0], 1, dtype=u.dtype, device=u.device)
        old = ra.norm(dim=1)
        for _ in range(30):
            cand = ua - t * step
            rc = residual_of(cand, da)
            better = rc.norm(dim=1) < old
            if bool(better.all()):
                break
            t = torch.where(better[:, None], t, t / 2)
        u[active] = cand
        res[active] = rc
        err = res.abs().amax(1)
    return u, err, it


def gauss_newton_solve(
    F: Callable[[Tensor], Tensor],
    x0: Tensor,
    target: Tensor,
    *,
    tol: float,
    max_iter: int = 50,
    metric: Tensor | None = None,
) -> tuple[Tensor, Tensor, int]:
    """Solve ``F(x) = target`` for ``x`` near ``x0`` by minimum-norm Gauss-Newton steps.

    Not :func:`nninv.methods.projection.project`: this is the closed-form
    methods' finishing step on an unbounded chain, whose minimum-norm steps keep
    ``pinv``'s answer the minimum-norm member (folding it into the projection,
    with its other damping and stopping rule, moved some ``pinv`` answers on
    saturated nets to other, larger members).

    ``F`` maps ``(N, n) -> (N, m)`` row by row, with ``m`` small: each step solves
    one damped ``m x m`` system per sample, ``x <- x - M J^T (J M J^T)^{-1} r``,
    where ``M`` is ``metric`` (identity by default), with a backtracking line
    search on ``|r|``. Jacobians come from ``torch.func`` (vmap of jacrev).

    Returns ``x``, the residual ``max |F(x) - target|`` per sample, and the
    number of iterations used.
    """
    from torch.func import jacrev, vmap

    def single(v: Tensor) -> Tensor:
        return F(v.unsqueeze(0)).squeeze(0)

    jac = vmap(jacrev(single))
    x = x0.clone()
    with torch.no_grad():
        res = F(x) - target
    err = res.abs().amax(1).nan_to_num(nan=float("inf"))
    it = 0
    for it in range(1, max_iter + 1):  # noqa: B007
        active = err > tol
        if not bool(active.any()):
            it -= 1
            break
        xa, ra, ta = x[active], res[active], target[active]
        J = jac(xa).detach()  # (k, m, n)
        MJt = J.transpose(1, 2) if metric is None else metric @ J.transpose(1, 2)
        JMJt = J @ MJt
        scale = JMJt.diagonal(dim1=1, dim2=2).amax(1).clamp(min=torch.finfo(x.dtype).tiny)
        eye = torch.eye(J.shape[1], dtype=x.dtype, device=x.device)
        JMJt = JMJt + (1e-12 * scale)[:, None, None] * eye
        lam = spd_solve(JMJt, ra)
        step = (MJt @ lam.unsqueeze(-1)).squeeze(-1)
        t = torch.ones(xa.shape[0], 1, dtype=x.dtype, device=x.device)
        old = ra.norm(dim=1)
        with torch.no_grad():
            for _ in range(30):
                cand = xa - t * step
                rc = F(cand) - ta
                better = rc.norm(dim=1) < old
                if bool(better.all()):
                    break
                t = torch.where(better[:, None], t, t / 2)
            keep = better | ~torch.isfinite(old)
            xa = torch.where(keep[:, None], cand, xa)
            ra = torch.where(keep[:, None], rc, ra)
        x[active] = xa
        res[active] = ra
        err = res.abs().amax(1).nan_to_num(nan=float("inf"))
        if not bool(keep.any()):
            break
    return x, err, it

"""``nninv.preimage``: the set of inputs that a model maps to one output, as an object.

A model ``f`` with more inputs than outputs sends whole sets to each output;
the seed's ``sigmoid(W x + b)`` (784 -> 10) sends a 774-dimensional slice of
the unit cube to every output it produces. :func:`preimage` describes that set
exactly where it can and says what kind of description it gave:

``"affine"``
    One affine layer, then injective activations (sigmoid, tanh, leaky ReLU,
    ...), or a softmax: ``{x : A x = c} \\cap bounds``, exactly. A final ReLU
    adds ``(A x)_j <= -b_j`` for every zero output, still exact.
``"class"``
    A :class:`~nninv.ClassTarget` on one affine layer (then a strictly
    increasing activation or a softmax): the polytope
    ``{x : z_c(x) >= z_j(x) for all j} \\cap bounds`` (ties count as class c).
``"piece"``
    A piecewise-linear network (ReLU, leaky ReLU, max pooling): the exact
    piece of the preimage inside the activation region of ``around``, an
    affine set intersected with the region's polytope and the bounds.
``"manifold"``
    Deeper chains of affine layers and injective activations: a curved set.
    It is described at a member by its tangent space (the null space of the
    Jacobian, dimension ``n - rank J``); projection and sampling work on the
    true set (sequential QP, and random walks that project back onto it),
    never on the tangent alone.

A preimage that is provably empty (the target is outside the image of the
bounded domain, or outside the range of the linear map) comes back with
``empty=True`` and its ``reason``; asking it for samples or projections then
raises :class:`~nninv.NNInvError` with that reason.
"""

from __future__ import annotations

__all__ = ["Extent", "Preimage", "Samples", "preimage"]

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .._errors import NNInvError
from .._linalg import factor
from ..model._chain import Affine, Chain, Elementwise, Shift, Step, Unsupported, analyse, eval_mode
from ..model._outputs import as_output, check_range, class_shortfall
from ..priors import GaussianMixturePrior, GaussianPrior, Prior
from ..targets import ClassTarget
from ._inputs import as_bounds, as_input, float64_copy, is_maxpool, peel_class_steps, pl_slope
from ._polytope import Dynamics, MixtureMoves, Polyhedron, Walk, ess_rhat

_F64 = torch.float64

#: Default tolerance of :meth:`Preimage.contains`: on outputs relative to ``max(1, |y|)``
#: and on bounds and region constraints in input units.
DEFAULT_TOL = 1e-6

_METHODS = ("auto", "billiard", "hit-and-run", "prior")


# --- results ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Samples:
    """Members of a preimage drawn by a Markov chain, with its mixing diagnostics.

    Attributes
    ----------
    x : Tensor
        ``(n, *input_shape)`` float64 members.
    method : str
        ``"billiard"`` or ``"hit-and-run"`` (uniform on the bounded set),
        ``"prior"`` (the prior restricted to the set, exact HMC),
        ``"manifold-walk"`` (uniform on a curved set, constrained random
        walk), ``"manifold-prior"`` or ``"exact"`` (independent draws, no
        chain).
    ess : float
        Smallest effective sample size over the monitored functionals (four
        random directions inside the set's affine hull and four random input
        entries), over the whole trace after burn-in (``nan`` for exact
        draws: they are independent, so ``ess = n``).
    rhat : float
        Largest split R-hat over the monitored functionals; near 1 (below
        about 1.01-1.05) when the chains have mixed.
    acceptance : float
        Fraction of accepted moves (1 for hit-and-run and exact HMC, which
        never reject; a billiard trajectory is rejected only after
        ``20 (n + p) + 1000`` reflections).
    chains, steps, burn, thin : int
        Chains run in parallel, steps per chain (burn-in included), burn-in
        steps, and the spacing of the kept states.
    seconds : float
    info : dict
        Method details: ``"step_size"`` of the manifold walk; for the
        reflective samplers ``"bounces"`` (reflections per trajectory),
        ``"time"`` (mean travel time), ``"rounded"`` (billiard),
        ``"components"`` and ``"jumps"`` (the acceptance rate of jumps between
        mixture components).
    """

    x: Tensor
    method: str
    ess: float
    rhat: float
    acceptance: float
    chains: int
    steps: int
    burn: int
    thin: int
    seconds: float
    info: dict[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:
        return (
            f"Samples(method={self.method!r}, n={self.x.shape[0]}, chains={self.chains}, "
            f"steps={self.steps}, ess={self.ess:.1f}, rhat={self.rhat:.3f}, "
            f"acceptance={self.acceptance:.2f}, seconds={self.seconds:.2f})"
        )


@dataclass(frozen=True)
class Extent:
    """The range of a linear functional ``w . x`` over a preimage.

    Attributes
    ----------
    low, high : float
        Its smallest and largest value (``-inf``/``inf`` when unbounded).
    x_low, x_high : Tensor or None
        Members ``(1, *input_shape)`` attaining them (None when unbounded).
    """

    low: float
    high: float
    x_low: Tensor | None
    x_high: Tensor | None

    def __iter__(self):  # so that ``lo, hi = pre.extent(w)`` works
        return iter((self.low, self.high))


# --- the output side: constraints on the last remaining step's output --------------------


@dataclass
class _OutCons:
    """``Ez h = ez``, ``Gz h <= gz`` on the output ``h`` of ``core`` (flat, m)."""

    core: list[Step]
    Ez: Tensor | None
    ez: Tensor | None
    Gz: Tensor | None
    gz: Tensor | None


def _exact_output(chain: Chain, y: Tensor) -> _OutCons:
    steps = list(chain.steps)
    z = y.clone()
    i = len(steps)
    while i > 0 and isinstance(steps[i - 1], Elementwise) and steps[i - 1].act.injective:
        z = steps[i - 1].act.inverse(z)
        i -= 1
    m = z.numel()
    if i > 0 and isinstance(steps[i - 1], Shift):
        s = steps[i - 1]
        if i < len(steps):
            raise NNInvError(
                f"{s.label()} is followed by a nonlinear activation; the preimage of a "
                "softmax through another activation has no closed form"
            )
        # softmax(h) = y  <=>  h = log y + c 1: fix everything but the common shift
        P = torch.eye(m, dtype=_F64) - 1.0 / m
        v = z if s.log else torch.log(z)
        return _OutCons(steps[: i - 1], P, P @ v, None, None)
    if i > 0 and pl_slope(steps[i - 1]) == 0.0:
        # y = relu(h): h_j = y_j where y_j > 0, h_j <= 0 where y_j = 0
        pos = z > 0
        eye = torch.eye(m, dtype=_F64)
        return _OutCons(
            steps[: i - 1], eye[pos], z[pos], eye[~pos], torch.zeros(int((~pos).sum()), dtype=_F64)
        )
    return _OutCons(steps[:i], torch.eye(m, dtype=_F64), z, None, None)


def _class_output(chain: Chain, c: int) -> _OutCons:
    core = peel_class_steps(list(chain.steps))
    m = chain.n_out
    rows = torch.eye(m, dtype=_F64)
    G = rows[[j for j in range(m) if j != c]] - rows[c]
    return _OutCons(core, None, None, G, torch.zeros(m - 1, dtype=_F64))


# --- the polyhedral kinds -------------------------------------------------------------


def _maxpool_windows(step: Unsupported) -> tuple[Tensor, tuple[int, ...]]:
    """Flat input indices of each pooling window (out_numel, k), -1 for padding."""
    import torch.nn.functional as F

    mod = step.layer.module
    shape = step.layer.in_shape
    if getattr(mod, "ceil_mode", False) or getattr(mod, "return_indices", False):
        raise NNInvError(f"{step.label()}: ceil_mode/return_indices are not supported here")
    if isinstance(mod, nn.MaxPool1d):
        C, L = shape[-2] if len(shape) == 2 else 1, shape[-1]
        H, W = 1, L
        k = (1, int(mod.kernel_size if isinstance(mod.kernel_size, int) else mod.kernel_size[0]))
        s = (1, int(mod.stride if isinstance(mod.stride, int) else mod.stride[0]))
        p = (0, int(mod.padding if isinstance(mod.padding, int) else mod.padding[0]))
        d = (1, int(mod.dilation if isinstance(mod.dilation, int) else mod.dilation[0]))
    else:
        C, H, W = (1, *shape) if len(shape) == 2 else shape[-3:]

        def pair(v: Any) -> tuple[int, int]:
            return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))

        k, s, p, d = pair(mod.kernel_size), pair(mod.stride), pair(mod.padding), pair(mod.dilation)
    idx = torch.arange(C * H * W, dtype=_F64).reshape(C, 1, H, W)
    idx = F.pad(idx, (p[1], p[1], p[0], p[0]), value=-1.0)
    win = F.unfold(idx, k, dilation=d, stride=s)  # (C, k*k, L)
    win = win.permute(0, 2, 1).reshape(-1, win.shape[1]).round().to(torch.long)
    if win.shape[0] != math.prod(step.layer.out_shape):
        raise NNInvError(f"{step.label()}: could not read its pooling windows")
    return win, step.layer.out_shape


def _piece(core: list[Step], x0: Tensor, n: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The affine map ``h = M x + m0`` of ``core`` on the activation region of ``x0`` and
    the region ``R x <= r``."""
    M = torch.eye(n, dtype=_F64)
    m0 = torch.zeros(n, dtype=_F64)
    v = x0.clone()
    R_rows: list[Tensor] = [torch.zeros(0, n, dtype=_F64)]
    r_vals: list[Tensor] = [torch.zeros(0, dtype=_F64)]
    for step in core:
        if isinstance(step, Affine):
            A, b = step.matrix(_F64)
            M, m0, v = A @ M, A @ m0 + b, A @ v + b
        elif (alpha := pl_slope(step)) is not None:
            act = v >= 0
            sign = torch.where(act, -1.0, 1.0).to(_F64)  # active: -h <= 0; inactive: h <= 0
            R_rows.append(sign[:, None] * M)
            r_vals.append(-sign * m0)
            D = torch.where(act, 1.0, alpha).to(_F64)
            M, m0, v = D[:, None] * M, D * m0, D * v
        elif is_maxpool(step):
            win, _ = _maxpool_windows(step)
            vals = torch.where(win >= 0, v[win.clamp(min=0)], -math.inf)
            chosen = win.gather(1, vals.argmax(1, keepdim=True))[:, 0]
            others = win.clone()
            others[others == chosen[:, None]] = -1
            o_idx, k_idx = (others >= 0).nonzero(as_tuple=True)
            j = others[o_idx, k_idx]
            jstar = chosen[o_idx]
            # the chosen entry stays the largest of its window: h_j - h_j* <= 0
            R_rows.append(M[j] - M[jstar])
            r_vals.append(m0[jstar] - m0[j])
            M, m0, v = M[chosen], m0[chosen], v[chosen]
        else:
            raise AssertionError(step)
    return M, m0, torch.cat(R_rows), torch.cat(r_vals)


# --- the curved kind -------------------------------------------------------------------


class _Manifold:
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


# --- the object ------------------------------------------------------------------------


class Preimage:
    """The set of inputs (within bounds) that a model maps to one target.

    Built by :func:`preimage`; see its docstring for the kinds of description.

    Attributes
    ----------
    kind : str
        ``"affine"``, ``"class"``, ``"piece"`` or ``"manifold"``.
    empty : bool
        True when the set is proven empty; ``reason`` says why.
    dim : int
        Its dimension (-1 when empty). For ``"manifold"``, the dimension at
        ``member`` (``n - rank J``).
    basis : Tensor
        ``(n, dim)`` orthonormal basis of the directions that keep the output
        fixed (the null space of the equality constraints; the tangent space
        at ``member`` for a manifold). ``n`` is the flattened input size.
    member : Tensor or None
        ``(1, *input_shape)``: a member deep inside (the centre of the largest
        inscribed ball for the polyhedral kinds).
    input_shape : tuple of int
    bounds : tuple of Tensor
        ``(lo, hi)`` flat, possibly infinite.
    info : dict
        E.g. ``"radius"`` of the inscribed ball, ``"n_constraints"``.
    """

    def __init__(
        self,
        *,
        kind: str,
        model: nn.Module,
        chain: Chain,
        target: Tensor | ClassTarget,
        lo: Tensor,
        hi: Tensor,
        poly: Polyhedron | None = None,
        manifold: _Manifold | None = None,
        region: Polyhedron | None = None,
        member: Tensor | None = None,
        reason: str | None = None,
        info: dict[str, Any] | None = None,
    ) -> None:
        self.kind = kind
        self._model = model
        self._chain = chain
        self.input_shape = chain.input_shape
        self._target = target
        self.bounds = (lo, hi)
        self._poly = poly
        self._manifold = manifold
        self._region = region
        self.reason = reason
        self.empty = reason is not None
        self.info = dict(info or {})
        self._member = member
        self._basis: Tensor | None = None
        self._dim: int | None = None

    # --- description ----------------------------------------------------------------

    @property
    def n(self) -> int:
        return math.prod(self.input_shape)

    @property
    def member(self) -> Tensor | None:
        if self._member is None:
            return None
        return self._member.reshape(1, *self.input_shape)

    @property
    def dim(self) -> int:
        if self.empty:
            return -1
        if self._dim is None:
            self._tangent()
        assert self._dim is not None
        return self._dim

    @property
    def basis(self) -> Tensor:
        if self.empty:
            return torch.zeros(self.n, 0, dtype=_F64)
        if self._basis is None:
            self._tangent()
        assert self._basis is not None
        return self._basis

    def _tangent(self) -> None:
        if self._poly is not None:
            self._basis = self._poly.null_basis()
            self._dim = self._poly.dim
        else:
            assert self._manifold is not None and self._member is not None
            self._basis, rank = self._manifold.tangent(self._member)
            self._dim = self.n - rank
            self.info["jacobian_rank"] = rank

    def __repr__(self) -> str:
        if self.empty:
            return f"Preimage(kind={self.kind!r}, empty=True, reason={self.reason!r})"
        return (
            f"Preimage(kind={self.kind!r}, dim={self.dim}, input_shape={self.input_shape}, "
            f"n={self.n})"
        )

    def _require_nonempty(self, what: str) -> None:
        if self.empty:
            raise NNInvError(f"cannot {what}: the preimage is empty ({self.reason})")

    # --- membership -----------------------------------------------------------------

    def contains(self, x: Any, tol: float = DEFAULT_TOL) -> Tensor:
        """Whether each input is a member, judged by running the model (in float64).

        A member reproduces the target (``max |f(x) - y| <= tol * max(1, max |y|)``;
        for a class target the class wins or ties), lies in the bounds within
        ``tol``, and for a ``"piece"`` also in the activation region within ``tol``.

        Parameters
        ----------
        x : Tensor
            ``(N, *input_shape)`` or one input.
        tol : float

        Returns
        -------
        Tensor
            ``(N,)`` bool.
        """
        X = as_input(x, self.input_shape)
        lo, hi = self.bounds
        ok = ((X >= lo - tol) & (X <= hi + tol)).all(1)
        with torch.no_grad():
            out = self._model(X.reshape(-1, *self.input_shape)).reshape(X.shape[0], -1)
        t = self._target
        if isinstance(t, ClassTarget):
            lab = ClassTarget(t.labels.expand(X.shape[0]).clone())
            ok &= class_shortfall(lab, out) <= tol
        else:
            scale = max(1.0, float(t.abs().max()))
            ok &= (out - t).abs().amax(1) <= tol * scale
        if self._region is not None:
            ok &= self._region.region_violation(X) <= tol
        return ok

    # --- geometry -------------------------------------------------------------------

    def project(self, x_ref: Any) -> Tensor:
        """The closest member to each reference input, in L2.

        For the polyhedral kinds this is the unique solution of a convex QP,
        solved on its dual and certified by its KKT conditions (the largest
        violation is kept in ``info["kkt"]``). For a manifold it is a local
        minimum, found by sequential QP on the true set.

        Parameters
        ----------
        x_ref : Tensor
            ``(N, *input_shape)`` or one input.

        Returns
        -------
        Tensor
            ``(N, *input_shape)`` float64.

        Raises
        ------
        NNInvError
            If the set is empty, or (manifold) no member is reached.
        """
        self._require_nonempty("project onto it")
        Z = as_input(x_ref, self.input_shape, "x_ref")
        out = torch.empty_like(Z)
        if self._poly is not None:
            worst = 0.0
            for i in range(Z.shape[0]):
                res = self._poly.project(Z[i])
                worst = max(worst, res.kkt)
                out[i] = res.x
            self.info["kkt"] = worst
            if worst > 1e-7:
                raise NNInvError(
                    f"the projection QP stopped with a KKT violation of {worst:.2e}; the "
                    "problem may be badly scaled"
                )
        else:
            assert self._manifold is not None and self._member is not None
            tol = 1e-10
            for i in range(Z.shape[0]):
                x, err, _ = self._manifold.project(Z[i], Z[i], tol=tol)
                if err > 1e-8:
                    x, err, _ = self._manifold.project(Z[i], self._member, tol=tol)
                if err > 1e-8:
                    raise NNInvError(
                        f"could not reach the preimage from input {i} (residual {err:.2e})"
                    )
                out[i] = x
        return out.reshape(-1, *self.input_shape)

    def extent(self, direction: Any) -> Extent:
        """The range of ``w . x`` over the set (two LPs with HiGHS).

        Parameters
        ----------
        direction : Tensor or int
            ``w`` shaped like one input, or an int: the flat index of one input
            entry (how dark and how bright that pixel can be).

        Returns
        -------
        Extent
            ``low``, ``high`` and the members attaining them.

        Raises
        ------
        NNInvError
            If the set is empty or curved (``kind="manifold"``: a linear
            program over a curved set would only describe its tangent).
        """
        self._require_nonempty("measure its extent")
        if self._poly is None:
            raise NNInvError(
                "extent() needs a polyhedral preimage (one affine layer, a class target, or "
                "the piece of a piecewise-linear network around an input); this preimage "
                "is curved and an LP would describe only its tangent"
            )
        if isinstance(direction, int | np.integer) and not isinstance(direction, bool):
            if not 0 <= int(direction) < self.n:
                raise NNInvError(f"direction index {direction} outside [0, {self.n})")
            w = torch.zeros(self.n, dtype=_F64)
            w[int(direction)] = 1.0
        else:
            w = as_input(direction, self.input_shape, "direction")
            if w.shape[0] != 1:
                raise NNInvError(f"direction must be one input, got {w.shape[0]}")
            w = w[0]
        lo, hi, xlo, xhi = self._poly.extent(w)

        def shaped(x: Tensor | None) -> Tensor | None:
            return None if x is None else x.reshape(1, *self.input_shape)

        return Extent(lo, hi, shaped(xlo), shaped(xhi))

    # --- sampling -------------------------------------------------------------------

    def sample(
        self,
        n: int,
        seed: int | None = None,
        method: str = "auto",
        *,
        prior: Prior | None = None,
        chains: int | None = None,
        burn: int | None = None,
        thin: int | None = None,
    ) -> Tensor:
        """``n`` members, shaped ``(n, *input_shape)`` (float64); see :meth:`draw`."""
        return self.draw(n, seed, method, prior=prior, chains=chains, burn=burn, thin=thin).x

    def draw(
        self,
        n: int,
        seed: int | None = None,
        method: str = "auto",
        *,
        prior: Prior | None = None,
        chains: int | None = None,
        burn: int | None = None,
        thin: int | None = None,
    ) -> Samples:
        """Draw ``n`` members with Markov chains and report how well they mixed.

        Parameters
        ----------
        n : int
            Number of members.
        seed : int, optional
            Seeds the chains (the same seed gives the same members).
        method : {"auto", "billiard", "hit-and-run", "prior"}
            ``"billiard"``: uniform on the bounded set, by reflective
            Hamiltonian Monte Carlo with no potential (a billiard walk): a
            Gaussian velocity inside the set's affine hull, straight flight for
            a random time, specular reflection at every bound it meets (hit
            times in closed form). During burn-in the velocities are rounded by
            the spread of each input over the chains, in doubling windows
            (rounding as in Lovász & Vempala 2006).
            ``"hit-and-run"``: uniform, by hit-and-run along projected
            coordinate axes (Smith 1984); it mixes far more slowly on large sets
            (its autocorrelation time grows like the square of the dimension)
            and is kept as a baseline. ``"prior"``: the prior restricted to the
            set (Gaussian or Gaussian mixture priors), by exact HMC for
            truncated Gaussians (Pakman & Paninski 2014): in coordinates where
            the prior's conditional Gaussian on the affine hull is standard,
            trajectories are ``z cos t + v sin t`` with reflections at the
            bounds, never rejected; a mixture's component is resampled before
            each trajectory by a Gibbs step and a Metropolis jump that keeps
            the whitened coordinates (:class:`~nninv._polytope.MixtureMoves`;
            well separated components may still not mix, which R-hat shows).
            Without bounds or other
            inequalities the conditional is sampled exactly, without a chain.
            ``"auto"``: ``"prior"`` when a prior is given, else ``"billiard"``.
            On a ``"manifold"`` the uniform methods run a constrained random
            walk that projects each proposal back onto the set (Zappa,
            Holmes-Cerfon & Goodman 2018), with a Metropolis test against the
            prior's density for ``"prior"``.
        prior : Prior, optional
            For ``method="prior"``.
        chains : int, optional
            Chains run in parallel (default ``min(n, 32)``).
        burn, thin : int, optional
            Steps discarded at the start of each chain, and spacing of the kept
            states. A step is one trajectory for ``"billiard"`` (defaults 20
            and 1; the velocities are rounded during burn-in) and ``"prior"``
            (defaults 10 and 1), and one chord for ``"hit-and-run"`` (defaults
            ``10 dim`` and ``dim``).

        Returns
        -------
        Samples
            The members and ``ess``, ``rhat``, ``acceptance``; for the
            reflective methods ``info["bounces"]`` (reflections per trajectory)
            and ``info["time"]`` (mean travel time).

        Raises
        ------
        NNInvError
            If the set is empty, unbounded (for the uniform distribution), or
            the method or prior is unknown.

        References
        ----------
        Smith (1984), Operations Research 32(6). Pakman & Paninski (2014),
        "Exact Hamiltonian Monte Carlo for truncated multivariate Gaussians",
        J. Comput. Graph. Stat. 23(2). Gryazina & Polyak (2014), "Random
        sampling: billiard walk algorithm", European J. Oper. Res. 238(2).
        Afshar & Domke (2015), "Reflection, refraction, and Hamiltonian Monte
        Carlo", NeurIPS 28. Lovász & Vempala (2006), "Hit-and-run from a
        corner", SIAM J. Comput. 35(4). Zappa, Holmes-Cerfon & Goodman (2018),
        "Monte Carlo on manifolds: sampling densities and integrating
        functions", Comm. Pure Appl. Math. 71(12).
        """
        self._require_nonempty("sample from it")
        if method not in _METHODS:
            raise NNInvError(f"unknown method {method!r}; valid: {', '.join(_METHODS)}")
        if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 1:
            raise NNInvError(f"n must be a positive integer, got {n!r}")
        n = int(n)
        if method == "auto":
            method = "prior" if prior is not None else "billiard"
        if method == "prior":
            if prior is None:
                raise NNInvError("method='prior' needs prior=...")
            if not isinstance(prior, GaussianPrior | GaussianMixturePrior):
                raise NNInvError(
                    f"method='prior' supports GaussianPrior and GaussianMixturePrior, got "
                    f"{type(prior).__name__}"
                )
            if prior.n_features != self.n:
                raise NNInvError(
                    f"the prior has {prior.n_features} features but the model has {self.n} inputs"
                )
        elif prior is not None:
            raise NNInvError("prior= is only used with method='prior'")
        for name, v in (("chains", chains), ("burn", burn), ("thin", thin)):
            if v is not None and (
                isinstance(v, bool) or not isinstance(v, int) or v < (name != "burn")
            ):
                raise NNInvError(
                    f"{name} must be a {'non-negative' if name == 'burn' else 'positive'} "
                    f"integer, got {v!r}"
                )
        gen = torch.Generator().manual_seed(
            int(seed) if seed is not None else int(torch.randint(2**62, (1,)))
        )
        C = min(n, chains or 32)
        per = math.ceil(n / C)
        if self.dim == 0:
            # a single point: every draw is it
            assert self._member is not None
            x = self._member.expand(n, -1).clone().reshape(n, *self.input_shape)
            return Samples(x, "exact", math.nan, math.nan, 1.0, 0, 0, 0, 1, 0.0, {"point": True})
        if self._poly is None:
            return self._draw_manifold(n, C, per, burn, thin, gen, prior)
        poly = self._poly
        monitor = self._monitor(gen)
        if method == "hit-and-run":
            # the walk's autocorrelation time is a few times the dimension
            d = max(self.dim, 1)
            burn = 10 * d if burn is None else burn
            thin = d if thin is None else thin
            X0 = poly.starts(C, gen)
            w = poly.walk(X0, keep=per, thin=thin, burn=burn, gen=gen, monitor=monitor)
            return self._samples(w, n, "hit-and-run", 1.0, C, {})
        # a trajectory crosses the set; exact HMC forgets its start within a few
        thin = 1 if thin is None else thin
        if method == "billiard":
            burn = 20 if burn is None else burn
            X0 = poly.starts(C, gen)
            w, info = self._reflect(X0, per, thin, burn, gen, monitor, poly.uniform_dynamics())
            return self._samples(w, n, "billiard", 1.0 - info["rejected"], C, info)
        assert prior is not None
        burn = 10 if burn is None else burn
        return self._draw_prior(n, C, per, burn, thin, gen, prior, monitor)

    def _reflect(
        self,
        X0: Tensor,
        per: int,
        thin: int,
        burn: int,
        gen: torch.Generator,
        monitor: Tensor,
        dyn: Dynamics,
        component: MixtureMoves | None = None,
    ) -> tuple[Walk, dict[str, Any]]:
        poly = self._poly
        assert poly is not None
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

    def _monitor(self, gen: torch.Generator, q: int = 4) -> Tensor:
        """What the diagnostics watch: ``q`` random unit directions inside the affine
        hull and ``q`` random input entries among those that can move."""
        assert self._poly is not None
        D = self._poly._directions(q, gen)
        moving = (self._poly.null_basis().pow(2).sum(1) > 1e-12).nonzero()[:, 0]
        pick = moving[torch.randperm(moving.numel(), generator=gen)[:q]]
        return torch.cat([D, torch.eye(self.n, dtype=_F64)[pick]])

    def _samples(
        self, w: Walk, n: int, method: str, acc: float, C: int, info: dict[str, Any]
    ) -> Samples:
        # kept states: chain-major; interleave so that the first n cover all chains
        x = w.x.transpose(0, 1).reshape(-1, self.n)[:n]
        return Samples(
            x.reshape(n, *self.input_shape),
            method,
            float(np.nanmin(w.ess)) if np.isfinite(w.ess).any() else math.nan,
            float(np.nanmax(w.rhat)) if np.isfinite(w.rhat).any() else math.nan,
            acc,
            C,
            w.steps,
            w.burn,
            w.thin,
            w.seconds,
            info,
        )

    def _draw_prior(
        self,
        n: int,
        C: int,
        per: int,
        burn: int,
        thin: int,
        gen: torch.Generator,
        prior: Prior,
        monitor: Tensor,
    ) -> Samples:
        poly = self._poly
        assert poly is not None
        t0 = time.perf_counter()
        E, e = poly.E, poly.e
        unbounded = poly.G.shape[0] == 0 and not bool(
            torch.isfinite(poly.lo).any() | torch.isfinite(poly.hi).any()
        )
        if unbounded:
            post = prior.posterior(E) if E.shape[0] else None
            if post is None:
                x = prior.sample(n, seed=int(torch.randint(2**62, (1,), generator=gen)))
                x = x.reshape(n, -1)
            else:
                x = post.sample(e[None], n, generator=gen)[0]
            return Samples(
                x.reshape(n, *self.input_shape),
                "exact",
                math.nan,
                math.nan,
                1.0,
                0,
                0,
                0,
                1,
                time.perf_counter() - t0,
                {"independent": True},
            )
        moves = None
        if isinstance(prior, GaussianPrior):
            dyn = poly.gaussian_dynamics(prior.mean[None], prior.covariance[None])
        else:
            assert isinstance(prior, GaussianMixturePrior)
            dyn = poly.gaussian_dynamics(prior.means, prior.covariances)
            if E.shape[0]:
                c = prior.posterior(E).weights(e[None])
                assert c is not None
                log_c = torch.log(c[0])
            else:
                log_c = torch.log(prior.weights)
            moves = MixtureMoves(poly, dyn, prior.component_log_prob, log_c)
        X0 = poly.starts(C, gen)
        w, info = self._reflect(X0, per, thin, burn, gen, monitor, dyn, moves)
        info["components"] = int(dyn.scale.shape[0])
        if moves is not None:
            info["jumps"] = moves.accepted / max(1, moves.proposed)
        return self._samples(w, n, "prior", 1.0 - info["rejected"], C, info)

    def _draw_manifold(
        self,
        n: int,
        C: int,
        per: int,
        burn: int | None,
        thin: int | None,
        gen: torch.Generator,
        prior: Prior | None,
    ) -> Samples:
        mf = self._manifold
        assert mf is not None and self._member is not None
        t0 = time.perf_counter()
        lo, hi = mf.lo, mf.hi
        tol = 1e-10
        # starting points: projections of random points of the box (or near the member)
        finite = torch.isfinite(lo) & torch.isfinite(hi)
        U = torch.rand(C, self.n, generator=gen, dtype=_F64)
        ref = torch.where(
            finite,
            lo + U * (hi - lo),
            self._member + torch.randn(C, self.n, generator=gen, dtype=_F64),
        )
        starts = []
        for i in range(C):
            x, err, _ = mf.project(ref[i], ref[i], tol=tol, max_iter=10)
            starts.append(x if err <= 1e-8 else self._member.clone())
        X = torch.stack(starts)
        logp = (
            (lambda Z: prior.log_prob(Z.reshape(-1, *self.input_shape)))
            if prior is not None
            else None
        )
        d = max(self.dim, 1)
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
        monitor = torch.randn(4, self.n, generator=gen, dtype=_F64)
        monitor = monitor / monitor.norm(dim=1, keepdim=True)
        kept = torch.empty(C, per, self.n, dtype=_F64)
        trace = np.empty((per * thin, C, 4))
        n_acc = torch.zeros(C, dtype=_F64)
        window = torch.zeros(C, dtype=_F64)
        for s in range(1, steps + 1):
            Y, ok, lq = _manifold_step(mf, X, sigma, gen, tol)
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
        return self._samples(
            w,
            n,
            "manifold-prior" if prior is not None else "manifold-walk",
            acc_rate,
            C,
            {"step_size": float(sigma.mean())},
        )


def _manifold_step(
    mf: _Manifold, X: Tensor, sigma: Tensor, gen: torch.Generator, tol: float
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
    mf: _Manifold, Z: Tensor, J: Tensor, tol: float, max_iter: int = 12
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


# --- the entry point -------------------------------------------------------------------


def preimage(
    model: nn.Module,
    target: Any,
    bounds: Any = None,
    around: Any = None,
    *,
    input_shape: Sequence[int] | None = None,
) -> Preimage:
    """The set of inputs within ``bounds`` that ``model`` maps to ``target``.

    Parameters
    ----------
    model : torch.nn.Module
        A chain of known layers (see :mod:`nninv._chain`); evaluated in float64.
    target : Tensor, ndarray or ClassTarget
        One output (``(*output_shape)`` or ``(1, *output_shape)``), or a
        :class:`~nninv.ClassTarget` with one label and no confidence.
    bounds : (lo, hi), optional
        Scalars or arrays broadcastable to the input shape; None (the default)
        for no bounds. Use ``(0, 1)`` for images.
    around : Tensor, optional
        A reference input. Required for piecewise-linear networks (ReLU, max
        pooling): the description is the piece inside its activation region.
        For a curved preimage it picks the member the description starts from.
    input_shape : sequence of int, optional
        When the model does not tell it.

    Returns
    -------
    Preimage

    Raises
    ------
    NNInvError
        For a target of the wrong shape, more than one target, values outside
        the output layer's range, a layer that has no exact description, or a
        piecewise-linear network without ``around``. An empty set is not an
        error: it comes back with ``empty=True`` and ``reason``.

    Examples
    --------
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> f = nn.Sequential(nn.Linear(20, 3), nn.Sigmoid()).double()
    >>> x = torch.rand(1, 20, dtype=torch.float64)
    >>> pre = preimage(f, f(x), bounds=(0, 1))
    >>> pre.kind, pre.dim
    ('affine', 17)
    >>> xs = pre.sample(5, seed=0)
    >>> bool(pre.contains(xs).all()), bool(((xs >= 0) & (xs <= 1)).all())
    (True, True)
    """
    if not isinstance(model, nn.Module):
        raise NNInvError(f"expected a torch.nn.Module, got {type(model).__name__}")
    with eval_mode(model):
        chain = analyse(model, input_shape)
    model64 = float64_copy(model)
    chain = analyse(model64, chain.input_shape)
    in_shape, n = chain.input_shape, chain.n_in
    lo, hi = as_bounds(bounds, in_shape)
    x_ar = None
    if around is not None:
        x_ar = as_input(around, in_shape, "around")
        if x_ar.shape[0] != 1:
            raise NNInvError(f"around must be one input, got {x_ar.shape[0]}")
        x_ar = x_ar[0]

    if isinstance(target, ClassTarget):
        if len(target) != 1:
            raise NNInvError(f"a preimage is one set: give one class, got {len(target)} labels")
        if target.confidence is not None:
            raise NNInvError(
                "a class target with a confidence is not a polytope; give ClassTarget(c) "
                "without confidence"
            )
        target.check_classes(chain.n_out)
        tgt: Tensor | ClassTarget = target
        cons = _class_output(chain, int(target.labels[0]))
    else:
        y = as_output(target, chain.output_shape, _F64, torch.device("cpu"))
        if y.shape[0] != 1:
            raise NNInvError(
                f"a preimage is the set for one output; got {y.shape[0]} targets (call "
                "preimage once per output)"
            )
        yf, _ = check_range(y.reshape(1, -1), chain)
        tgt = yf
        cons = _exact_output(chain, yf[0])
    core = cons.core
    for s in core:
        if isinstance(s, Unsupported) and not is_maxpool(s):
            raise NNInvError(f"preimage cannot describe {s.label()}: {s.reason}")
        if isinstance(s, Shift):
            raise NNInvError(f"preimage cannot describe {s.label()} inside the network")
    kinds_of = {
        "pl_noninj": any((pl_slope(s) == 0.0) or is_maxpool(s) for s in core),
        "smooth": any(isinstance(s, Elementwise) and pl_slope(s) is None for s in core),
        "nonlinear": any(not isinstance(s, Affine) for s in core),
    }
    common = {"model": model64, "chain": chain, "target": tgt, "lo": lo, "hi": hi}

    if not kinds_of["nonlinear"]:
        if len(core) != 1:
            raise AssertionError("consecutive affine steps are merged by the analysis")
        A, b = core[0].matrix(_F64)
        kind = "class" if isinstance(tgt, ClassTarget) else "affine"
        return _polyhedral(kind, common, cons, A, b, None, None, n)
    if kinds_of["pl_noninj"]:
        if kinds_of["smooth"]:
            bad = next(s for s in core if isinstance(s, Elementwise) and pl_slope(s) is None)
            raise NNInvError(
                f"the network mixes piecewise-linear layers with {bad.label()}; its preimage "
                "is neither a polytope piece nor a smooth manifold"
            )
        if x_ar is None:
            raise NNInvError(
                "this network is piecewise linear with non-injective layers (ReLU or max "
                "pooling): its preimage is a union of many polytopes; pass around=x to get "
                "the exact piece inside the activation region of x"
            )
        M, m0, R, r = _piece(core, x_ar, n)
        return _polyhedral("piece", common, cons, M, m0, R, r, n, around=x_ar)
    # a chain of affine layers and injective activations: a curved set
    if isinstance(tgt, ClassTarget):
        raise NNInvError(
            "the class preimage of a deep network is an open set with a curved boundary; "
            "use closest() for the nearest input of a class, or a single-layer model"
        )
    if cons.Gz is not None and cons.Gz.shape[0]:
        raise NNInvError(
            "a ReLU output after a nonlinear chain gives inequalities on a curved set, "
            "which preimage does not describe"
        )
    assert cons.Ez is not None and cons.ez is not None
    mf = _Manifold(core, cons.Ez, cons.ez, lo, hi)
    start = x_ar
    if start is None:
        from ..methods.invert import invert

        y_out = tgt if isinstance(tgt, Tensor) else None
        assert y_out is not None
        start = invert(model64, y_out.reshape(1, *chain.output_shape), method="pinv").x[0]
        start = start.reshape(-1).to(_F64)
    member, err, _ = mf.project(start, start, tol=1e-10)
    if err > 1e-8 or not bool(((member >= lo) & (member <= hi)).all()):
        raise NNInvError(
            f"could not reach a member of the preimage within the bounds from "
            f"{'around' if x_ar is not None else 'the minimum-norm solution'} (residual "
            f"{err:.2e}); the set may be empty, which is not decidable for curved sets; "
            "try another around="
        )
    return Preimage(kind="manifold", manifold=mf, member=member, info={}, **common)


def _polyhedral(
    kind: str,
    common: dict[str, Any],
    cons: _OutCons,
    M: Tensor,
    m0: Tensor,
    R: Tensor | None,
    r: Tensor | None,
    n: int,
    around: Tensor | None = None,
) -> Preimage:
    """Build the polyhedron of an affine output map ``h = M x + m0`` with the output's
    constraints and an optional region ``R x <= r``."""
    lo, hi = common["lo"], common["hi"]
    A = c = None
    if cons.Ez is not None and cons.ez is not None and cons.Ez.shape[0]:
        A, c = cons.Ez @ M, cons.ez - cons.Ez @ m0
    Gs, gs = [], []
    if cons.Gz is not None and cons.gz is not None and cons.Gz.shape[0]:
        Gs.append(cons.Gz @ M)
        gs.append(cons.gz - cons.Gz @ m0)
    if R is not None and r is not None and R.shape[0]:
        Gs.append(R)
        gs.append(r)
    G = torch.cat(Gs) if Gs else None
    g = torch.cat(gs) if gs else None
    poly, outside = Polyhedron.from_constraints(A, c, G, g, lo, hi)
    rank = int(poly.E.shape[0])
    region = None
    if R is not None and r is not None:
        region, _ = Polyhedron.from_constraints(None, None, R, r, lo, hi)
    info: dict[str, Any] = {
        "n_equalities": 0 if A is None else int(A.shape[0]),
        "n_inequalities": 0 if G is None else int(G.shape[0]),
    }
    if around is not None:
        info["around"] = around.reshape(1, *common["chain"].input_shape)
    if outside > 1e-9:
        reason = (
            f"the target is outside the range of the model's linear map (relative "
            f"distance {outside:.2e})"
        )
        return Preimage(kind=kind, poly=poly, region=region, reason=reason, info=info, **common)
    centre, radius = poly.centre()
    if centre is None:
        where = "the activation region of around" if kind == "piece" else "the bounds"
        reason = (
            f"no input within {where} reaches the target: the LP for a member is "
            "infeasible (the target is outside the image of the bounded domain)"
        )
        return Preimage(kind=kind, poly=poly, region=region, reason=reason, info=info, **common)
    info["radius"] = radius
    info["n_implicit_equalities"] = int(poly.E.shape[0]) - rank
    return Preimage(kind=kind, poly=poly, region=region, member=centre, info=info, **common)

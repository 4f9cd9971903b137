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
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..checks import positive_int
from ..errors import NNInvError, NNInvWarning
from ..model.chain import Affine, Chain, analyse, eval_mode
from ..model.io import as_module
from ..model.outputs import as_output, check_range, class_shortfall
from ..priors import GaussianMixturePrior, GaussianPrior, Prior
from ..targets import ClassTarget
from ._inputs import as_bounds, as_input, caller_kind, float64_copy, model_kind
from ._manifold import Manifold, manifold_walk
from ._polytope import Polyhedron, reflect
from ._results import Extent, Samples
from ._walks import MixtureMoves, Walk
from .sets import OutCons, class_output, core_kind, exact_output, piece, polyhedral

_F64 = torch.float64

#: Default tolerance of :meth:`Preimage.contains`: on outputs relative to ``max(1, |y|)``
#: and on bounds and region constraints in input units.
DEFAULT_TOL = 1e-6

_METHODS = ("auto", "billiard", "hit-and-run", "prior")


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
    dtype, device
        What the members it hands out come in (:meth:`sample`, :meth:`draw`,
        and :meth:`project` for references that are not floating tensors):
        the target's floating dtype (else the model's) on the model's device,
        as :func:`nninv.invert` answers. The geometry itself (``basis``,
        ``member``, ``bounds``, :meth:`extent`) is computed and kept in
        float64 on the CPU, whatever the model's device and dtype.
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
        manifold: Manifold | None = None,
        region: Polyhedron | None = None,
        member: Tensor | None = None,
        reason: str | None = None,
        info: dict[str, Any] | None = None,
        native: nn.Module | None = None,
        like: tuple[torch.dtype, torch.device] = (_F64, torch.device("cpu")),
    ) -> None:
        self.kind = kind
        self.dtype, self.device = like
        self._model = model
        self._native = native
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
            ``(N, *input_shape)``, in ``x_ref``'s floating dtype and on its device
            (else in :attr:`dtype` on :attr:`device`); solved in float64 on the
            CPU. Each row is also checked by running
            the caller's model in its own dtype (float32 included): the
            target's class wins (a class target), or the output is within the
            dtype's tolerance of the target (``1e-4`` relative in float32,
            ``1e-6`` in float64). The rows that fail are listed in
            ``info["project_unconfirmed"]``, with a warning (a class target's
            projection lies on the boundary, where float32 may answer a rival;
            :func:`nninv.closest` solves with a margin instead).

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
        out = out.reshape(-1, *self.input_shape)
        self._confirm(out)
        dtype, device = caller_kind(x_ref, (self.dtype, self.device))
        return out.to(device, dtype)

    def _confirm(self, X: Tensor) -> None:
        """Run the caller's model, in its dtype, on ``X``; warn about rows it refuses."""
        self.info["project_unconfirmed"] = []
        if self._native is None:
            return
        dtype, device = model_kind(self._native)
        with torch.no_grad(), eval_mode(self._native):
            out = self._native(X.to(device, dtype)).reshape(X.shape[0], -1)
        out = out.to("cpu", torch.float64)
        t = self._target
        if isinstance(t, ClassTarget):
            lab = ClassTarget(t.labels.expand(X.shape[0]).clone())
            ok = class_shortfall(lab, out) == 0
        else:
            tol = 1e-6 if dtype == torch.float64 else 1e-4
            ok = (out - t).abs().amax(1) <= tol * max(1.0, float(t.abs().max()))
        bad = (~ok).nonzero().flatten().tolist()
        self.info["project_unconfirmed"] = bad
        if bad:
            warnings.warn(
                f"{len(bad)} of {X.shape[0]} projections are not confirmed by the model "
                f"run in {str(dtype).replace('torch.', '')} (first: row {bad[0]})",
                NNInvWarning,
                stacklevel=3,
            )

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
        """``n`` members, shaped ``(n, *input_shape)`` in :attr:`dtype` on :attr:`device`;
        see :meth:`draw`."""
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
            the whitened coordinates (:class:`~nninv.geometry._walks.MixtureMoves`;
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
            The members (``x``, in :attr:`dtype` on :attr:`device`; the chains
            run in float64 on the CPU) and ``ess``, ``rhat``, ``acceptance``; for the
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
        n = positive_int(n, "n")
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
            positive_int(v, name, minimum=int(name != "burn"), allow_none=True)
        gen = torch.Generator().manual_seed(
            int(seed) if seed is not None else int(torch.randint(2**62, (1,)))
        )
        C = min(n, chains or 32)
        per = math.ceil(n / C)
        if self.dim == 0:
            # a single point: every draw is it
            assert self._member is not None
            x = self._member.expand(n, -1).reshape(n, *self.input_shape)
            x = x.to(self.device, self.dtype, copy=True)
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
            w, info = reflect(poly, X0, per, thin, burn, gen, monitor, poly.uniform_dynamics())
            return self._samples(w, n, "billiard", 1.0 - info["rejected"], C, info)
        assert prior is not None
        burn = 10 if burn is None else burn
        return self._draw_prior(n, C, per, burn, thin, gen, prior, monitor)

    def _monitor(self, gen: torch.Generator, q: int = 4) -> Tensor:
        """What the diagnostics watch: ``q`` random unit directions inside the affine
        hull and ``q`` random input entries among those that can move."""
        assert self._poly is not None
        D = self._poly.directions(q, gen)
        moving = (self._poly.null_basis().pow(2).sum(1) > 1e-12).nonzero()[:, 0]
        pick = moving[torch.randperm(moving.numel(), generator=gen)[:q]]
        return torch.cat([D, torch.eye(self.n, dtype=_F64)[pick]])

    def _samples(
        self, w: Walk, n: int, method: str, acc: float, C: int, info: dict[str, Any]
    ) -> Samples:
        # kept states: chain-major; interleave so that the first n cover all chains
        x = w.x.transpose(0, 1).reshape(-1, self.n)[:n]
        return Samples(
            x.reshape(n, *self.input_shape).to(self.device, self.dtype),
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
                x.reshape(n, *self.input_shape).to(self.device, self.dtype),
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
        w, info = reflect(poly, X0, per, thin, burn, gen, monitor, dyn, moves)
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
        logp = (
            (lambda Z: prior.log_prob(Z.reshape(-1, *self.input_shape)))
            if prior is not None
            else None
        )
        w, acc_rate, step_size = manifold_walk(
            mf, self._member, self.dim, C, per, burn, thin, gen, logp
        )
        return self._samples(
            w,
            n,
            "manifold-prior" if prior is not None else "manifold-walk",
            acc_rate,
            C,
            {"step_size": step_size},
        )


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
    model : torch.nn.Module or a fitted scikit-learn MLPClassifier/MLPRegressor
        A chain of known layers (see :mod:`nninv.model.chain`); evaluated in
        float64 on the CPU, and in its own dtype and device to confirm
        projections. Samples and projections come back on its device.
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
    model = as_module(model)
    with eval_mode(model):
        chain = analyse(model, input_shape)
    model64 = float64_copy(model)
    chain = analyse(model64, chain.input_shape)
    in_shape, n = chain.input_shape, chain.n_in
    lo, hi = as_bounds(bounds, in_shape)
    x_ar = _around(around, in_shape)
    tgt, cons = _output_constraints(target, chain)
    core = cons.core
    form = core_kind(core)
    mdtype, mdevice = model_kind(model)
    common: dict[str, Any] = {
        "like": (caller_kind(target, (mdtype, mdevice))[0], mdevice),
        "model": model64,
        "chain": chain,
        "target": tgt,
        "lo": lo,
        "hi": hi,
        "native": model,
    }

    if form == "linear":
        step = core[0]
        assert isinstance(step, Affine)  # core_kind says "linear" for one affine step only
        A, b = step.matrix(_F64)
        kind = "class" if isinstance(tgt, ClassTarget) else "affine"
        sets = polyhedral(kind, cons, A, b, None, None, lo, hi, in_shape)
        return Preimage(kind=kind, **sets.keywords(), **common)
    if form == "piecewise":
        if x_ar is None:
            raise NNInvError(
                "this network is piecewise linear with non-injective layers (ReLU or max "
                "pooling): its preimage is a union of many polytopes; pass around=x to get "
                "the exact piece inside the activation region of x"
            )
        M, m0, R, r = piece(core, x_ar, n)
        sets = polyhedral("piece", cons, M, m0, R, r, lo, hi, in_shape, around=x_ar)
        return Preimage(kind="piece", **sets.keywords(), **common)
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
    mf = Manifold(core, cons.Ez, cons.ez, lo, hi)
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


def _around(around: Any, in_shape: tuple[int, ...]) -> Tensor | None:
    """``around`` as one flat input of the model's shape, or None."""
    if around is None:
        return None
    x_ar = as_input(around, in_shape, "around")
    if x_ar.shape[0] != 1:
        raise NNInvError(f"around must be one input, got {x_ar.shape[0]}")
    return x_ar[0]


def _output_constraints(target: Any, chain: Chain) -> tuple[Tensor | ClassTarget, OutCons]:
    """The checked target (one output, or one class) and its constraints on the chain."""
    if isinstance(target, ClassTarget):
        if len(target) != 1:
            raise NNInvError(f"a preimage is one set: give one class, got {len(target)} labels")
        if target.confidence is not None:
            raise NNInvError(
                "a class target with a confidence is not a polytope; give ClassTarget(c) "
                "without confidence"
            )
        target.check_classes(chain.n_out)
        return target, class_output(chain, int(target.labels[0]))
    else:
        y = as_output(target, chain.output_shape, _F64, torch.device("cpu"))
        if y.shape[0] != 1:
            raise NNInvError(
                f"a preimage is the set for one output; got {y.shape[0]} targets (call "
                "preimage once per output)"
            )
        yf, _ = check_range(y.reshape(1, -1), chain)
        return yf, exact_output(chain, yf[0])

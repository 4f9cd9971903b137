"""``method="optimize"``: the most probable input under the prior that meets the target.

For any differentiable model ``f`` this solves, per sample,

    minimise  -log p(x)   subject to  f(x) = y  (or: f puts x in class c),  lo <= x <= hi,

in four stages.

1. **Coordinates.** With a Gaussian part ``N(mu, Sigma = L L^T)`` in the prior
   (a :class:`~nninv.priors.GaussianPrior`, one component of a
   :class:`~nninv.priors.GaussianMixturePrior`, or such a term of a
   :class:`~nninv.priors.CombinedPrior`), the search runs in whitened
   coordinates ``x = mu + L u``, where that part is ``|u|^2 / 2`` and
   perfectly conditioned; other terms (total variation, L2, user priors with a
   ``log_prob``) are added as they are; without a prior the objective is
   ``|x|^2 / 2`` (the minimum-norm member). For a mixture each sample works in
   one component: among those whose mean the model already maps to the
   target's class (largest output), the one with the largest Laplace evidence
   ``w_k N(y; f(mu_k), J_k Sigma_k J_k^T)`` of the model linearised at its
   mean (``components=k`` tries the k best and keeps the most probable answer).
2. **Augmented Lagrangian** (method of multipliers) for the output constraint
   and the box: per sample, an outer loop updates the multipliers and the
   penalty weight, and an inner loop minimises the augmented Lagrangian by
   L-BFGS, batched over samples with a backtracking (Armijo) line search per
   sample; samples leave the batch as they finish. An exact target is matched
   before a last invertible activation (``logit(y)`` for a sigmoid output,
   log-probabilities for a softmax), where the constraint is best conditioned;
   a class target is one inequality on the logit margin,
   ``z_c - logsumexp_{j != c} z_j >= logit(p)``. This stage only has to come
   near the answer (violation about 3e-3 of the target's scale), so for
   float64 problems it runs in float32, and for large inputs (at least 512
   values) it whitens with each covariance cut to its top 128 eigen-directions
   over an isotropic rest of the same trace (``whiten_rank``): a matrix product
   with ``n x 128`` instead of ``n x n`` factors per evaluation, several times
   cheaper; stages 3 and 4 use the full covariance, so the answer is the same
   optimum.
3. **Gauss-Newton projection** onto ``{f(x) = y}`` in float64: steps
   ``x <- x - M J^T (J M J^T + damping)^+ r`` with ``M`` the prior's
   covariance restricted to the coordinates not at a bound (those are held
   there; a step that leaves the box is clipped). The output is
   low-dimensional, so each step solves an ``m x m`` system per sample;
   convergence is quadratic near the solution, which gives residuals near
   rounding. A sample whose projection stalls goes back to stage 2, which now
   stops 1000 times closer to the constraint, and failing that starts again
   from a random draw of the prior (``retries``).
4. **Polish**: sequential quadratic programming steps along the constraint
   set, ``d = -(M g - M J^T (J M J^T)^+ J M g)`` with ``g`` the gradient of
   ``-log p``, each followed by a projection and kept only if ``-log p`` went
   down, so the answer is the prior's optimum on the constraint set to
   working precision (for a linear model and a Gaussian prior, the
   conditional mean).

Bounds hold exactly: every answer is clipped to the box and projected within
it. A sample that ends above the tolerance is flagged (``Solution.ok``) with
the reason: the iteration limit, a class margin that stalled (an unreachable
class or confidence), or a violation that stalled (a target outside the
model's range within the bounds, or a preimage too thin for a local method
to find from the starts tried).

References
----------
Hestenes (1969), "Multiplier and gradient methods", JOTA 4; Powell (1969), "A
method for nonlinear constraints in minimization problems"; Rockafellar
(1973), "The multiplier method of Hestenes and Powell applied to convex
programming", JOTA 12 (inequalities). Liu & Nocedal (1989), "On the limited
memory BFGS method for large scale optimization", Math. Programming 45.
Nocedal & Wright (2006), *Numerical Optimization*, 2nd ed., ch. 7 (L-BFGS),
10 (Gauss-Newton, Levenberg-Marquardt), 17 (augmented Lagrangian) and 18
(SQP). MacKay (1992), "Bayesian interpolation", Neural Computation 4 (the
Laplace evidence). Mahendran & Vedaldi (2015), "Understanding deep image
representations by inverting them", CVPR (priors for inversion).
"""

from __future__ import annotations

__all__ = ["invert_optimize"]

import contextlib
import copy
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from .._errors import NNInvError
from ..model._chain import Chain, Elementwise, Shift
from ..model._outputs import output_kind
from ..priors import CombinedPrior, GaussianMixturePrior, GaussianPrior
from ..targets import ClassTarget
from . import Problem, Solution, register

#: Margin (in logits) that a class target aims beyond its threshold, so that the
#: measured shortfall is 0 despite rounding.
CLASS_MARGIN = 1e-3

#: Covariance rank the augmented Lagrangian keeps by default, for inputs of at least
#: four times as many values.
AUTO_WHITEN_RANK = 128

_OPTIONS: dict[str, Any] = {
    "bounds": None,
    "x0": None,
    "restarts": 1,
    "seed": 0,
    "max_iter": 1000,
    "progress": None,
    "components": 1,
    "retries": 2,
    "precision": "mixed",
    "polish": 2,
    "whiten_rank": None,
}


@contextlib.contextmanager
def _flush_denormal() -> Iterator[None]:
    """Flush subnormal numbers to zero inside, restoring the caller's setting after.

    Arithmetic on subnormals is tens of times slower on x86 CPUs, and gradients of
    saturated units produce them; values below 1e-38 do not change the answer.
    """
    probe = torch.tensor([1e-39], dtype=torch.float32)
    was = bool((probe * 1.0).item() == 0.0)
    supported = torch.set_flush_denormal(True)
    try:
        yield
    finally:
        if supported:
            torch.set_flush_denormal(was)


@register("optimize")
def invert_optimize(problem: Problem) -> Solution:
    """The most probable input under the prior that meets the target.

    Called by :func:`nninv.invert` with ``method="optimize"``; see the module
    docstring for the algorithm.

    Options
    -------
    bounds : (float, float) or (Tensor, Tensor), optional
        ``lo <= x <= hi`` elementwise, held exactly; tensors broadcast to one sample.
    x0 : Tensor, optional
        Starting inputs ``(N, *input_shape)`` (clipped into the bounds); default
        the prior's mean (per component for a mixture), or 0 without a Gaussian
        part.
    restarts : int
        Starts per sample (1); the first is ``x0`` or the mean, the others are
        drawn from the prior's Gaussian part with ``seed``. The most probable
        converged answer is kept.
    seed : int
        Seeds the random starts; a run is deterministic for a given seed.
    max_iter : int
        L-BFGS iterations per sample, over all outer iterations (1000).
    progress : bool, optional
        Show a progress bar: True always, False never, None (default) when the
        run takes more than a few seconds.
    components : int
        For a mixture prior: how many components (the most probable first) are
        tried per sample (1).
    retries : int
        How many times a sample that failed starts again from a random draw (2).
    polish : int
        Sequential quadratic programming steps along the constraint set after the
        projection, each kept only if it lowers ``-log p`` (2; exact targets).
    precision : {"mixed", "full"}
        ``"mixed"`` (default) runs the augmented Lagrangian in float32 when the
        problem is float64 and projects in float64; ``"full"`` runs all of it in
        the problem's dtype.
    whiten_rank : int, optional
        How many eigen-directions of each covariance the augmented Lagrangian
        keeps (the rest becomes isotropic with the same trace); 0 keeps the full
        covariance. Default None: 128 for inputs of at least 512 values, else 0.
        The projection and polish always use the full covariance. The
        eigen-decomposition is computed on first use and kept with the prior.

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> from nninv import invert
    >>> g = torch.Generator().manual_seed(0)
    >>> f = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 2)).double()
    >>> y = f(torch.rand(3, 6, generator=g, dtype=torch.float64)).detach()
    >>> inv = invert(f, y, method="optimize", bounds=(0, 1), progress=False)
    >>> bool(inv.converged.all()), float(inv.residual.max()) < 1e-10
    (True, True)
    >>> bool(((inv.x >= 0) & (inv.x <= 1)).all())
    True
    """
    with _flush_denormal():
        return _invert(problem)


def _invert(problem: Problem) -> Solution:
    opts = problem.take_options(**_OPTIONS)
    t_start = time.perf_counter()
    dtype, device = problem.dtype, problem.device
    N = problem.n
    restarts = _positive_int(opts["restarts"], "restarts")
    n_comp = _positive_int(opts["components"], "components")
    max_iter = _positive_int(opts["max_iter"], "max_iter")
    retries = _positive_int(opts["retries"], "retries", zero=True)
    polish = _positive_int(opts["polish"], "polish", zero=True)
    seed = opts["seed"]
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise NNInvError(f"option seed must be an integer, got {seed!r}")
    if opts["precision"] not in ("mixed", "full"):
        raise NNInvError(f"option precision must be 'mixed' or 'full', got {opts['precision']!r}")
    lo, hi = _bounds(opts["bounds"], problem.input_shape, dtype, device)
    # the augmented Lagrangian only has to come near the solution: in float64 problems
    # it runs in float32 (about twice as fast), and the projection restores float64
    mixed = opts["precision"] == "mixed" and dtype == torch.float64
    wdtype = torch.float32 if mixed else dtype

    fn = _ModelFunctions(problem, dtype)
    cons = _Constraint.build(problem, fn, dtype)
    coords = _Coords.build(problem.prior, problem.input_shape, dtype, device)
    if wdtype == dtype:
        cons_w, coords_w = cons, coords
    else:
        cons_w = _Constraint.build(problem, _ModelFunctions(problem, wdtype), wdtype)
        coords_w = _Coords.build(problem.prior, problem.input_shape, wdtype, device)
    coords_w = coords_w.low_rank(_whiten_rank(opts["whiten_rank"], math.prod(problem.input_shape)))
    lo_w, hi_w = (None, None) if lo is None else (lo.to(wdtype), hi.to(wdtype))
    x0 = _start(opts["x0"], problem, lo, hi)

    comp_ids, n_comp = _choose_components(coords, cons, N, n_comp, lo, hi)
    n_starts = restarts * n_comp
    # sample i, candidate j sits at row j * N + i
    rows = torch.arange(N, device=device).repeat(n_starts)
    random = torch.arange(N * n_starts, device=device) >= N * n_comp  # restarts 2, 3, ...
    comp = comp_ids.T.reshape(-1) if comp_ids is not None else None
    if comp is not None:
        # rows of one component side by side: each component whitens one slice
        order = torch.argsort(comp, stable=True)
        rows, comp, random = rows[order], comp[order], random[order]
    coords = coords.expand(comp)
    x_init = coords.to_x(_initial_u(coords, x0, rows, random, seed, lo, hi, dtype), None)

    T = len(rows)
    track = _Track(T, device, max_iter)
    bar = _progress_bar(opts["progress"])
    AL = _AugmentedLagrangian

    def solve(sel: Tensor, x_start: Tensor) -> tuple[Tensor, Tensor]:
        """Augmented Lagrangian then projection for rows ``sel``; x and which failed."""
        sub = coords.expand(comp[sel] if comp is not None else None)
        sub_w = coords_w.expand(sub.comp)
        solver = AL(sub_w, cons_w, rows[sel], lo_w, hi_w, bar)
        solver.start(sub_w.to_u(x_start.to(wdtype), None))
        todo = torch.ones(len(sel), dtype=torch.bool, device=device)
        x_all: Tensor | None = None
        failed = torch.zeros_like(todo)
        for eta_rel in (AL.eta_rel, AL.eta_rel * 1e-3):
            solver.run(todo, eta_rel, max_iter)
            x = sub_w.to_x(solver.u[todo], todo.nonzero().flatten())
            x = _clip(x.to(dtype), lo, hi)
            x, it, err, goal = _project(sub, cons, rows[sel][todo], x, lo, hi)
            track.projection = max(track.projection, it)
            if x_all is None:
                x_all = x
            else:
                x_all[todo] = x
            failed[todo] = err > goal
            # a row whose projection stalled goes back to the augmented Lagrangian,
            # which now stops much closer to the constraint
            todo = failed & ~solver.stalled
            if not bool(todo.any()):
                break
        track.iterations[sel] += solver.iterations
        track.outer[sel] += solver.outer
        track.feas[sel] = solver.feas.to(track.feas)
        track.evaluations += solver.evaluations
        assert x_all is not None
        return x_all, failed

    x, failed = solve(torch.arange(T, device=device), x_init)
    # a row that still fails sits in a local infeasibility (a fold of the model, a
    # face of the box): it starts again from a random draw of the prior
    gen = torch.Generator().manual_seed(seed + 1)
    for _ in range(retries):
        sel = failed.nonzero().flatten()
        if sel.numel() == 0:
            break
        sub = coords.expand(comp[sel] if comp is not None else None)
        xr, fr = solve(sel, sub.to_x(_random_u(sub, len(sel), gen, lo, hi, dtype), None))
        x[sel], failed[sel] = xr, fr
        track.retried[sel] += 1
    if cons.kind == "exact" and polish and not bool(failed.all()):
        # the augmented Lagrangian stopped early: a few steps along the constraint
        # set move each answer to the prior's optimum on it
        sel = (~failed).nonzero().flatten()
        sub = coords.expand(comp[sel] if comp is not None else None)
        x[sel], track.polished[sel] = _polish(sub, cons, rows[sel], x[sel], lo, hi, polish)
    bar.close()

    ok, reasons, energy = _assess(problem, coords, cons, rows, x, track, lo, hi)
    best = _select(ok, energy, rows, N)
    xs = x[best].reshape(N, *problem.input_shape).to(dtype)
    info = {
        "outer_iterations": int(track.outer.max()),
        "evaluations": track.evaluations,
        "projection_iterations": track.projection,
        "retries": track.retried[best],
        "polish_steps": track.polished[best],
        "seconds": time.perf_counter() - t_start,
        "neg_log_prior": energy[best],
    }
    if comp is not None:
        info["components"] = comp[best]
    iterations = int(track.iterations[best].max())
    return Solution(xs, iterations, ok[best], [reasons[i] for i in best.tolist()], info)


# --- options --------------------------------------------------------------------------------


def _positive_int(v: Any, name: str, zero: bool = False) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < (0 if zero else 1):
        what = "a non-negative" if zero else "a positive"
        raise NNInvError(f"option {name} must be {what} integer, got {v!r}")
    return v


def _bounds(
    bounds: Any, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device
) -> tuple[Tensor | None, Tensor | None]:
    if bounds is None:
        return None, None
    try:
        lo, hi = bounds
    except (TypeError, ValueError):
        raise NNInvError(f"bounds must be a pair (lo, hi), got {bounds!r}") from None
    n = math.prod(shape)

    def one(v: Any, name: str) -> Tensor:
        t = torch.as_tensor(v, dtype=dtype, device=device)
        try:
            t = torch.broadcast_to(t, shape).reshape(n)
        except RuntimeError:
            raise NNInvError(
                f"bounds: {name} of shape {tuple(t.shape)} does not broadcast to the input "
                f"shape {shape}"
            ) from None
        if bool(torch.isnan(t).any()):
            raise NNInvError(f"bounds: {name} contains NaN")
        return t

    lo_t, hi_t = one(lo, "lo"), one(hi, "hi")
    if not bool((lo_t < hi_t).all()):
        i = int((lo_t >= hi_t).nonzero()[0])
        raise NNInvError(
            f"bounds: need lo < hi everywhere, got lo={float(lo_t[i])}, hi={float(hi_t[i])} "
            f"at input {i}"
        )
    return lo_t, hi_t


def _whiten_rank(v: Any, n: int) -> int:
    """The rank the augmented Lagrangian keeps of each covariance (0: all of it)."""
    if v is None:
        return AUTO_WHITEN_RANK if n >= 4 * AUTO_WHITEN_RANK else 0
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise NNInvError(f"option whiten_rank must be a non-negative integer or None, got {v!r}")
    return v if v < n else 0


def _clip(x: Tensor, lo: Tensor | None, hi: Tensor | None) -> Tensor:
    if lo is None or hi is None:
        return x
    return torch.maximum(torch.minimum(x, hi), lo)


def _start(x0: Any, problem: Problem, lo: Tensor | None, hi: Tensor | None) -> Tensor | None:
    if x0 is None:
        return None
    x0 = torch.as_tensor(x0).to(problem.device, problem.dtype)
    n = math.prod(problem.input_shape)
    if x0.shape[0] != problem.n or x0[0].numel() != n:
        raise NNInvError(
            f"x0 has shape {tuple(x0.shape)}; expected ({problem.n}, "
            f"{', '.join(map(str, problem.input_shape))})"
        )
    x0 = x0.reshape(problem.n, n)
    if not bool(torch.isfinite(x0).all()):
        raise NNInvError("x0 contains NaN or inf")
    return _clip(x0, lo, hi)


# --- the model as constraint functions ----------------------------------------------------


class _ModelFunctions:
    """The model in the computation dtype, on flat inputs, with its head split off.

    ``full(x)`` is the model's output ``(k, m)``; ``head(x)`` the values before a
    last activation, softmax or log-softmax (None if the model cannot be split).
    """

    def __init__(self, problem: Problem, dtype: torch.dtype) -> None:
        model = problem.model
        p = next(iter(model.parameters()), None)
        if p is None:
            p = next(iter(model.buffers()), None)
        if p is not None and (p.dtype != dtype or p.device != problem.device):
            model = copy.deepcopy(model).to(dtype=dtype, device=problem.device)
            model.requires_grad_(False)
        self.model = model
        self.shape = problem.input_shape
        chain: Chain = problem.chain
        self.kind = output_kind(chain)
        self.last = chain.steps[-1] if chain.steps else None
        self._head = _split_last(model, self.last)

    def full(self, x: Tensor) -> Tensor:
        return self.model(x.reshape(x.shape[0], *self.shape)).reshape(x.shape[0], -1)

    @property
    def has_head(self) -> bool:
        return self._head is not None

    def head(self, x: Tensor) -> Tensor:
        assert self._head is not None
        return self._head(x.reshape(x.shape[0], *self.shape)).reshape(x.shape[0], -1)


def _split_last(model: nn.Module, last: Any) -> nn.Module | None:
    """``model`` without its last leaf module, if it is a (nested) Sequential ending in it."""
    if not isinstance(last, (Elementwise, Shift)):
        return None
    want = type(last.layer.module)
    mods: list[nn.Module] = []
    cur = model
    while isinstance(cur, nn.Sequential) and len(cur) > 0:
        children = list(cur.children())
        mods.append(nn.Sequential(*children[:-1]))
        cur = children[-1]
    if not mods or type(cur) is not want:
        return None
    return nn.Sequential(*mods)


@dataclass
class _Constraint:
    """What the target asks of ``x``, in the space where it is best conditioned.

    Exact targets: ``c(x) = F(x) - t = 0`` with ``F`` the head and ``t`` the
    target before the last activation, or the output itself. Class targets:
    ``g(x) >= 0`` with ``g`` the margin of the class in logits.
    """

    kind: str  # "exact" or "class"
    F: Callable[[Tensor], Tensor]
    t: Tensor | None = None
    labels: Tensor | None = None
    threshold: float | None = None  # logit of the confidence, or None
    sigmoid: bool = False
    impossible: str | None = None
    scale: Tensor | None = None

    @property
    def m(self) -> int:
        return int(self.t.shape[1]) if self.t is not None else 1

    @classmethod
    def build(cls, problem: Problem, fn: _ModelFunctions, dtype: torch.dtype) -> _Constraint:
        target = problem.target
        if isinstance(target, ClassTarget):
            return cls._class(target, fn, problem, dtype)
        y = target.reshape(target.shape[0], -1).to(dtype)
        last = fn.last
        if fn.has_head and isinstance(last, Elementwise) and last.act.injective:
            t = last.act.inverse(y)
            F = fn.head
        elif fn.has_head and isinstance(last, Shift):
            t = y if last.log else torch.log(y)

            def F(x: Tensor) -> Tensor:
                return torch.log_softmax(fn.head(x), 1)

        else:
            t, F = y, fn.full
        if not bool(torch.isfinite(t).all()):  # an edge value the inverse cannot take
            t, F = y, fn.full
        return cls("exact", F, t=t, scale=t.abs().amax(1).clamp(min=1.0))

    @classmethod
    def _class(
        cls, target: ClassTarget, fn: _ModelFunctions, problem: Problem, dtype: torch.dtype
    ) -> _Constraint:
        kind = fn.kind
        if kind in ("softmax", "logsoftmax", "sigmoid") and fn.has_head:
            F = fn.head
        elif kind == "softmax":

            def F(x: Tensor) -> Tensor:
                return torch.log(fn.full(x))

        elif kind == "sigmoid":

            def F(x: Tensor) -> Tensor:
                return torch.logit(fn.full(x))

        else:
            F = fn.full
        p = target.confidence
        impossible = None
        if p is not None and p >= 1.0:
            impossible = (
                f"confidence {p:g} is not reachable: the {kind if kind != 'logits' else 'softmax'} "
                "of finite logits stays below 1"
            )
            # aim as high as the dtype resolves, and report the sample as unconverged
            p = 1.0 - 64 * torch.finfo(dtype).eps
        threshold = None if p is None else math.log(p) - math.log1p(-p)
        labels = target.labels.to(problem.device)
        return cls(
            "class",
            F,
            labels=labels,
            threshold=threshold,
            sigmoid=kind == "sigmoid",
            impossible=impossible,
        )

    def residual(self, v: Tensor, rows: Tensor) -> Tensor:
        """``c`` (k, m) for exact targets, ``CLASS_MARGIN - g`` (k, 1) for class targets."""
        if self.kind == "exact":
            assert self.t is not None
            return v - self.t[rows]
        return (CLASS_MARGIN - self.margin(v, rows))[:, None]

    def margin(self, z: Tensor, rows: Tensor) -> Tensor:
        """The class margin ``g`` (k,) of logits ``z``: >= 0 when the target is met."""
        assert self.labels is not None
        lab = self.labels[rows][:, None]
        zc = z.gather(1, lab)[:, 0]
        # logits far below the class add nothing but subnormal gradients, which are
        # slow on CPUs: hold them 60 below it
        others = torch.maximum(z, zc[:, None] - 60.0).scatter(1, lab, -math.inf)
        g = zc - others.amax(1)
        if self.threshold is not None:
            if self.sigmoid:
                g = torch.minimum(g, zc - self.threshold)
            else:
                gc = zc - torch.logsumexp(others, 1) - self.threshold
                g = gc if self.threshold >= 0 else torch.minimum(g, gc)
        return g

    def violation(self, r: Tensor) -> Tensor:
        """Per-sample size of the violation from :meth:`residual`."""
        if self.kind == "exact":
            assert self.scale is not None
            return r.abs().amax(1)
        return r[:, 0].clamp(min=0)


# --- coordinates and the prior's energy ---------------------------------------------------


@dataclass
class _Coords:
    """``x = mu_k + L_k u`` per sample (``k`` its component), or ``x = u``.

    ``energy(u, x)`` is ``-log p(x)`` up to a constant per component. In the
    low-rank form (:meth:`low_rank`) the Gaussian part's covariance is replaced
    by ``c_k I + W_k W_k^T`` (its top ``r`` eigen-directions over an isotropic
    rest of the same trace), with ``x = mu_k + sqrt(c_k) u_a + W_k u_b`` and
    ``u = (u_a, u_b)``: an over-complete parametrisation whose ``|u|^2 / 2``,
    minimised over the ``u`` that give one ``x``, is that Gaussian's energy.
    """

    shape: tuple[int, ...]
    mus: Tensor | None = None  # (K, n)
    Ls: Tensor | None = None  # (K, n, n)
    gauss_weight: float = 1.0
    mixture: GaussianMixturePrior | None = None
    extra: list[tuple[float, Any]] = field(default_factory=list)
    comp: Tensor | None = None  # (rows,) component of each row
    prior: Any = None
    Ss: Tensor | None = None  # (K, n, n) covariances
    # low-rank form: W = U diag(sqrt(dl)) (K, n, r), isotropic std sig (K,)
    Us: Tensor | None = None
    Ws: Tensor | None = None
    dl: Tensor | None = None
    sig: Tensor | None = None
    gauss: Any = None  # the prior's Gaussian part

    @classmethod
    def build(
        cls, prior: Any, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device
    ) -> _Coords:
        if prior is None:
            # no prior: the member nearest to 0 (the minimum-norm solution)
            return cls(shape, extra=[(0.5, _HalfSquaredNorm())])
        terms = list(prior.terms) if isinstance(prior, CombinedPrior) else [(1.0, prior)]
        gi = next(
            (
                i
                for i, (_, p) in enumerate(terms)
                if isinstance(p, (GaussianPrior, GaussianMixturePrior))
            ),
            None,
        )
        if gi is None:
            return cls(shape, extra=terms, prior=prior)
        w, g = terms.pop(gi)
        if isinstance(g, GaussianPrior):
            mu, S, L = g._t(dtype, device)
            mus, Ss, Ls = mu[None], S[None], L[None]
            mixture = None
        else:
            _, mus, Ss, Ls = g._t(dtype, device)
            mixture = g
        return cls(shape, mus, Ls, w, mixture, terms, prior=prior, Ss=Ss, gauss=g)

    def low_rank(self, rank: int) -> _Coords:
        """This parametrisation with each covariance cut to ``rank`` directions (see above).

        The eigen-decomposition of the Gaussian part's covariances is computed
        once (float64) and kept with the prior.
        """
        if self.mus is None or self.Ss is None or not 0 < rank < math.prod(self.shape):
            return self
        gauss = self.gauss
        cache = gauss._c.tensors
        key = ("eigh", self.mus.device)
        if key not in cache:
            cov = gauss.covariance[None] if isinstance(gauss, GaussianPrior) else gauss.covariances
            e, V = torch.linalg.eigh(cov.to(self.mus.device, torch.float64))
            cache[key] = (e.flip(-1), V.flip(-1))
        e, V = cache[key]
        n = e.shape[1]
        lam, U = e[:, :rank].clamp(min=0), V[:, :, :rank]
        # the rest as one isotropic variance with the same trace
        c = ((e.sum(1) - lam.sum(1)) / (n - rank)).clamp(min=torch.finfo(torch.float64).tiny)
        dl = (lam - c[:, None]).clamp(min=0)
        dtype = self.mus.dtype
        out = copy.copy(self)
        out.Ls, out.Ss = None, None
        out.Us = U.to(dtype).contiguous()
        out.dl = dl.to(dtype)
        out.Ws = (U * dl.sqrt()[:, None, :]).to(dtype).contiguous()
        out.sig = c.sqrt().to(dtype)
        return out

    @property
    def whitened(self) -> bool:
        return self.mus is not None

    @property
    def n_components(self) -> int:
        return 0 if self.mus is None else int(self.mus.shape[0])

    @property
    def u_dim(self) -> int:
        """Length of ``u``: the input size, plus the rank in the low-rank form."""
        n = math.prod(self.shape)
        return n if self.Ws is None else n + int(self.Ws.shape[2])

    def expand(self, comp: Tensor | None) -> _Coords:
        """A copy whose rows use components ``comp``, sorted (None: component 0 everywhere)."""
        out = copy.copy(self)
        out.comp = comp
        if comp is not None and bool((comp[1:] < comp[:-1]).any()):
            raise AssertionError("rows must be sorted by component")
        return out

    def _slices(self, idx: Tensor | None) -> list[tuple[int, slice]]:
        """``(component, rows)`` for the contiguous runs of rows ``idx`` (all if None)."""
        if self.comp is None:
            return [(0, slice(None))]
        c = self.comp if idx is None else self.comp[idx]
        ks, counts = torch.unique_consecutive(c, return_counts=True)
        out, start = [], 0
        for k, cnt in zip(ks.tolist(), counts.tolist()):
            out.append((k, slice(start, start + cnt)))
            start += cnt
        return out

    def to_x(self, u: Tensor, idx: Tensor | None) -> Tensor:
        if self.mus is None:
            return u
        if self.Ws is not None:
            assert self.sig is not None
            n = math.prod(self.shape)
            parts = [
                torch.addmm(self.mus[k], u[sl, n:], self.Ws[k].T) + self.sig[k] * u[sl, :n]
                for k, sl in self._slices(idx)
            ]
        else:
            assert self.Ls is not None
            parts = [torch.addmm(self.mus[k], u[sl], self.Ls[k].T) for k, sl in self._slices(idx)]
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def to_u(self, x: Tensor, idx: Tensor | None) -> Tensor:
        """The ``u`` that gives ``x`` (the shortest one in the low-rank form)."""
        if self.mus is None:
            return x.clone()
        u = x.new_empty(x.shape[0], self.u_dim)
        for k, sl in self._slices(idx):
            d = x[sl] - self.mus[k]
            if self.Ws is not None:
                assert self.Us is not None and self.dl is not None and self.sig is not None
                c = self.sig[k].pow(2)
                # Woodbury: (c I + U D U^T)^-1 d = (d - U diag(D / (c + D)) U^T d) / c
                p = d @ self.Us[k]
                w = (d - (p * (self.dl[k] / (c + self.dl[k]))) @ self.Us[k].T) / c
                n = d.shape[1]
                u[sl, :n] = self.sig[k] * w
                u[sl, n:] = w @ self.Ws[k]
            else:
                assert self.Ls is not None
                u[sl] = torch.linalg.solve_triangular(self.Ls[k], d.T, upper=False).T
        return u

    def energy(self, u: Tensor, x: Tensor) -> Tensor:
        """``-log p(x)`` (k,), up to a constant (per component for a mixture)."""
        e = self.energy_x(x)
        if self.mus is not None:
            e = e + (0.5 * self.gauss_weight) * u.pow(2).sum(1)
        return e

    def energy_x(self, x: Tensor) -> Tensor:
        """The terms of ``-log p(x)`` other than the Gaussian part (k,)."""
        e = x.new_zeros(x.shape[0])
        if self.extra:
            xs = x.reshape(x.shape[0], *self.shape)
            for w, p in self.extra:
                e = e - w * p.log_prob(xs).reshape(-1)
        return e

    def pullback(self, gx: Tensor, idx: Tensor | None) -> Tensor:
        """The gradient in ``u`` of a function of ``x = to_x(u)`` with gradient ``gx`` in ``x``."""
        if self.mus is None:
            return gx
        gu = gx.new_empty(gx.shape[0], self.u_dim)
        n = gx.shape[1]
        for k, sl in self._slices(idx):
            if self.Ws is not None:
                assert self.sig is not None
                torch.mul(gx[sl], self.sig[k], out=gu[sl, :n])
                torch.mm(gx[sl], self.Ws[k], out=gu[sl, n:])
            else:
                assert self.Ls is not None
                torch.mm(gx[sl], self.Ls[k], out=gu[sl])
        return gu

    def neg_log_prior(self, x: Tensor) -> Tensor:
        """The exact ``-log p(x)`` of the user's prior (for choosing among candidates)."""
        if self.prior is None:
            return 0.5 * x.pow(2).sum(1)
        with torch.no_grad():
            return -self.prior.log_prob(x.reshape(x.shape[0], *self.shape)).reshape(-1)

    def metric(self, V: Tensor, idx: Tensor | None) -> Tensor:
        """``Sigma_k V`` for ``V`` (k, n, r): the prior's metric for the projection."""
        if self.mus is None:
            return V
        out = torch.empty_like(V)
        n, r = V.shape[1], V.shape[2]
        for k, sl in self._slices(idx):
            # one (n, n) @ (n, rows * r) product reads the covariance once; a broadcast
            # batched product would read it once per row
            Vk = V[sl].transpose(0, 1).reshape(n, -1)
            if self.Ws is not None:
                assert self.sig is not None
                Mk = self.sig[k].pow(2) * Vk + self.Ws[k] @ (self.Ws[k].T @ Vk)
            else:
                assert self.Ss is not None
                Mk = self.Ss[k] @ Vk
            out[sl] = Mk.reshape(n, -1, r).transpose(0, 1)
        return out


class _HalfSquaredNorm:
    def log_prob(self, x: Tensor) -> Tensor:
        return -x.reshape(x.shape[0], -1).pow(2).sum(1)


def _initial_u(
    coords: _Coords,
    x0: Tensor | None,
    rows: Tensor,
    random: Tensor,
    seed: int,
    lo: Tensor | None,
    hi: Tensor | None,
    dtype: torch.dtype,
) -> Tensor:
    n = math.prod(coords.shape)
    device = rows.device
    total = len(rows)
    if x0 is not None:
        u = coords.to_u(x0[rows], None)
    elif coords.whitened:
        u = torch.zeros(total, n, dtype=dtype, device=device)
        if lo is not None:
            # start from the mean clipped into the box
            x = _clip(coords.to_x(u, None), lo, hi)
            u = coords.to_u(x, None)
    else:
        u = torch.zeros(total, n, dtype=dtype, device=device)
        if lo is not None:
            u = _clip(u, lo, hi)
    if bool(random.any()):
        rest = random.nonzero().flatten()
        sub = coords.expand(coords.comp[rest] if coords.comp is not None else None)
        g = torch.Generator().manual_seed(seed)
        u[rest] = _random_u(sub, len(rest), g, lo, hi, dtype)
    return u


def _random_u(
    coords: _Coords,
    k: int,
    gen: torch.Generator,
    lo: Tensor | None,
    hi: Tensor | None,
    dtype: torch.dtype,
) -> Tensor:
    """``k`` random starts: draws of the Gaussian part (or of N(0, I)), clipped to the box."""
    n = math.prod(coords.shape)
    device = (
        lo.device if lo is not None else (coords.mus.device if coords.mus is not None else None)
    )
    noise = torch.randn(k, n, generator=gen, dtype=torch.float64).to(device, dtype)
    x = _clip(coords.to_x(noise, None), lo, hi)
    return coords.to_u(x, None)


# --- mixture components -------------------------------------------------------------------


def _choose_components(
    coords: _Coords,
    cons: _Constraint,
    N: int,
    n_comp: int,
    lo: Tensor | None,
    hi: Tensor | None,
) -> tuple[Tensor | None, int]:
    """The ``n_comp`` most probable components per sample, (N, n_comp), by Laplace evidence."""
    K = coords.n_components
    if K <= 1:
        return None, 1
    n_comp = min(n_comp, K)
    assert coords.mus is not None and coords.Ls is not None and coords.mixture is not None
    means = _clip(coords.mus, lo, hi)
    logw = torch.log(coords.mixture.weights.to(means))
    if cons.kind == "exact":
        assert cons.t is not None
        v, J = _jacobian(cons.F, means, cons.m)  # (K, m), (K, m, n)
        LtJt = coords.Ls.transpose(1, 2) @ J.transpose(1, 2)  # (K, n, m)
        S = LtJt.transpose(1, 2) @ LtJt  # (K, m, m)
        eye = torch.eye(cons.m, dtype=S.dtype, device=S.device)
        # observation noise: the linearisation's own error, a fraction of the spread
        S = S + (1e-2 * S.diagonal(dim1=1, dim2=2).mean(1).clamp(min=1e-12))[:, None, None] * eye
        Lc = torch.linalg.cholesky(S)
        diff = (cons.t[None] - v[:, None]).transpose(1, 2)  # (K, m, N)
        z = torch.linalg.solve_triangular(Lc, diff, upper=False)
        logdet = 2 * torch.log(Lc.diagonal(dim1=1, dim2=2)).sum(1)
        score = -0.5 * (z.pow(2).sum(1) + logdet[:, None])  # (K, N)
        score = score + logw[:, None]
        if cons.m > 1:
            # the linearisation misjudges far components: those whose mean the model
            # already puts in the target's class (largest output) come first
            same = v.argmax(1)[:, None] == cons.t.argmax(1)[None]  # (K, N)
            score = torch.where(same, score, score - 1e6)
    else:
        assert cons.labels is not None
        # the margin of each class asked for, and its gradient, at each component's mean
        zs, Jz = _jacobian(cons.F, means, _out_dim(cons, means))
        LtJt = coords.Ls.transpose(1, 2) @ Jz.transpose(1, 2)  # (K, n, C)
        score = torch.empty(K, N, dtype=means.dtype, device=means.device)
        for c in cons.labels.unique().tolist():
            sel = (cons.labels == c).nonzero().flatten()
            with torch.enable_grad():
                z = zs.detach().clone().requires_grad_(True)
                g = cons.margin(z, sel[:1].expand(K))
                (dg,) = torch.autograd.grad(g.sum(), z)
            sd = (LtJt @ dg[:, :, None])[:, :, 0].norm(dim=1)  # |L^T grad g|
            # probability that the class is met under the component, to first order
            logphi = torch.special.log_ndtr((g.detach() - CLASS_MARGIN) / sd.clamp(min=1e-12))
            # as above, components whose mean is already in the class come first
            penalty = torch.where(zs.argmax(1) == c, 0.0, 1e6)
            score[:, sel] = (logphi + logw - penalty)[:, None]
    top = score.topk(n_comp, dim=0).indices.T  # (N, n_comp)
    return top.contiguous(), n_comp


def _jacobian(F: Callable[[Tensor], Tensor], x: Tensor, m: int) -> tuple[Tensor, Tensor]:
    """``F(x)`` (k, m) and its Jacobian (k, m, n), by one backward pass over ``m`` copies."""
    k, n = x.shape
    vals = torch.empty(k, m, dtype=x.dtype, device=x.device)
    J = torch.empty(k, m, n, dtype=x.dtype, device=x.device)
    # outputs per chunk so that a chunk holds about 4096 copies of the input
    step = max(1, min(m, 4096 // max(k, 1)))
    eye = torch.eye(m, dtype=x.dtype, device=x.device)
    with torch.enable_grad():
        for j0 in range(0, m, step):
            j1 = min(m, j0 + step)
            r = j1 - j0
            xr = x.detach().repeat(r, 1).requires_grad_(True)
            out = F(xr)  # (r * k, m)
            w = eye[j0:j1].repeat_interleave(k, 0)
            (g,) = torch.autograd.grad(out, xr, w)
            J[:, j0:j1] = g.reshape(r, k, n).transpose(0, 1)
            if j0 == 0:
                vals = out[:k].detach()
    return vals, J


# --- augmented Lagrangian with batched L-BFGS ---------------------------------------------


class _Track:
    """Per-row bookkeeping over the first solve and the retries."""

    def __init__(self, T: int, device: torch.device, max_iter: int) -> None:
        self.max_iter = max_iter
        self.iterations = torch.zeros(T, dtype=torch.long, device=device)
        self.outer = torch.zeros(T, dtype=torch.long, device=device)
        self.retried = torch.zeros(T, dtype=torch.long, device=device)
        self.feas = torch.full((T,), math.inf, device=device)
        self.stalled = torch.zeros(T, dtype=torch.bool, device=device)
        self.polished = torch.zeros(T, dtype=torch.long, device=device)
        self.evaluations = 0
        self.projection = 0


def _progress_bar(progress: bool | None) -> Any:
    from tqdm.auto import tqdm

    if progress is not None and not isinstance(progress, bool):
        raise NNInvError(f"option progress must be True, False or None, got {progress!r}")
    # None: appears only if the run is still going after a few seconds
    return tqdm(
        desc="nninv optimize",
        unit="it",
        delay=0 if progress else 3.0,
        disable=progress is False,
        leave=False,
    )


class _AugmentedLagrangian:
    """Method of multipliers, with L-BFGS on each sample's augmented Lagrangian.

    Per row: ``Phi(u) = E(u) + lam . c + rho/2 |c|^2`` for an exact target,
    ``E(u) + (max(0, mu + rho r)^2 - mu^2) / (2 rho)`` for a class target's
    inequality ``r <= 0``, plus the same inequality terms for each side of the
    box with their own weight. After each inner solve the multipliers move by
    ``rho`` times the violation and ``rho`` grows tenfold where the violation
    fell by less than a factor 4 (Nocedal & Wright, alg. 17.4). A row hands
    over to the projection once its violation is below ``eta_rel`` times the
    target's scale after at least ``min_outer`` updates.
    """

    outer_max = 30
    inner_max = 30
    class_inner_max = 10  # one inequality: shorter inner solves lose ~0.1 nat, run 3x faster
    history = 10
    rho0 = 1e3  # initial penalty, per unit of (violation / target scale)^2
    rho_b0 = 10.0  # initial penalty of the box
    gtol = 1e-3  # inner tolerance, relative to the first gradient
    eta_rel = 3e-3  # hand-over violation, relative to the target's scale
    bound_tol = 1e-2  # hand-over box violation (the projection clips the rest)
    min_outer = 3
    rho_max = 1e10
    class_scale = 10.0

    def __init__(
        self,
        coords: _Coords,
        cons: _Constraint,
        rows: Tensor,
        lo: Tensor | None,
        hi: Tensor | None,
        bar: Any,
    ) -> None:
        self.coords, self.cons, self.rows = coords, cons, rows
        self.lo, self.hi = lo, hi
        self.bar = bar
        self.evaluations = 0

    def _phi(self, u: Tensor, idx: Tensor) -> tuple[Tensor, Tensor]:
        """``Phi`` (k,) and its gradient (k, n) on rows ``idx``."""
        self.evaluations += 1
        coords = self.coords
        u = u.detach()
        with torch.enable_grad():
            # autograd runs on x only: the map from u is linear, its adjoint is cheaper
            x = coords.to_x(u, idx).requires_grad_(True)
            phi = coords.energy_x(x)
            r = self.cons.residual(self.cons.F(x), self.rows[idx])
            rho = self.rho[idx]
            if self.cons.kind == "exact":
                phi = phi + (self.lam[idx] * r).sum(1) + 0.5 * rho * r.pow(2).sum(1)
            else:
                mu = self.lam[idx, 0]
                phi = phi + ((mu + rho * r[:, 0]).clamp(min=0).pow(2) - mu.pow(2)) / (2 * rho)
            if self.lo is not None:
                rb = self.rho_b[idx, None]
                nu_hi, nu_lo = self.nu_hi[idx], self.nu_lo[idx]
                up = (nu_hi + rb * (x - self.hi)).clamp(min=0)
                dn = (nu_lo + rb * (self.lo - x)).clamp(min=0)
                box = (up.pow(2) - nu_hi.pow(2)) + (dn.pow(2) - nu_lo.pow(2))
                phi = phi + box.sum(1) / (2 * rb[:, 0])
            (gx,) = torch.autograd.grad(phi.sum(), x)
        g = coords.pullback(gx, idx)
        phi = phi.detach()
        if coords.whitened:
            phi = phi + (0.5 * coords.gauss_weight) * u.pow(2).sum(1)
            g = g.add_(u, alpha=coords.gauss_weight)
        return phi, g

    def _measure(self, u: Tensor, idx: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``x``, the constraint residual, its size and the box violation on rows ``idx``."""
        with torch.no_grad():
            x = self.coords.to_x(u, idx)
            r = self.cons.residual(self.cons.F(x), self.rows[idx])
        feas = self.cons.violation(r).nan_to_num(nan=math.inf)
        if self.lo is not None:
            bv = torch.maximum((x - self.hi).amax(1), (self.lo - x).amax(1)).clamp(min=0)
        else:
            bv = torch.zeros_like(feas)
        return x, r, feas, bv

    def start(self, u0: Tensor) -> None:
        """Set the state for rows starting at ``u0``."""
        T = u0.shape[0]
        n = math.prod(self.coords.shape)
        dev, dtype = u0.device, u0.dtype
        cons = self.cons
        self.u = u0.clone()
        self.iterations = torch.zeros(T, dtype=torch.long, device=dev)
        self.outer = torch.zeros(T, dtype=torch.long, device=dev)
        self.stalled = torch.zeros(T, dtype=torch.bool, device=dev)
        self.lam = torch.zeros(T, cons.m, dtype=dtype, device=dev)
        if cons.kind == "exact":
            assert cons.scale is not None
            self.scale = cons.scale[self.rows]
            self.rho = self.rho0 / self.scale.pow(2)
        else:
            # logit margins: the typical spread of logits sets the scale
            self.scale = torch.full((T,), self.class_scale, dtype=dtype, device=dev)
            self.rho = self.rho0 / self.scale.pow(2)
        if self.lo is not None:
            self.nu_hi = torch.zeros(T, n, dtype=dtype, device=dev)
            self.nu_lo = torch.zeros(T, n, dtype=dtype, device=dev)
            self.rho_b = torch.full((T,), self.rho_b0, dtype=dtype, device=dev)
        _, _, self.feas, self.bv = self._measure(self.u, torch.arange(T, device=dev))

    def run(self, active: Tensor, eta_rel: float, max_iter: int) -> None:
        """Outer iterations on rows ``active`` (bool) until each hands over or stops.

        A row hands over once its violation is below ``eta_rel`` times the
        target's scale (for class targets, the logit margin's ``class_scale``).
        """
        cons = self.cons
        u, feas, bv = self.u, self.feas, self.bv
        active = active.clone()
        # hand over near the constraint: the projection closes the rest
        eta = eta_rel * self.scale
        self.stalled[active] = False
        start_iters = self.iterations.clone()
        for _ in range(self.outer_max):
            idx = active.nonzero().flatten()
            if idx.numel() == 0:
                break
            budget = max_iter - (self.iterations[idx] - start_iters[idx])
            most = self.inner_max if cons.kind == "exact" else self.class_inner_max
            inner = min(most, int(budget.max()))
            u[idx], its = _lbfgs(self._phi, u[idx], idx, inner, self.history, budget, self.gtol)
            self.iterations[idx] += its
            self.outer[idx] += 1
            x, r, fi, bvi = self._measure(u[idx], idx)
            rho = self.rho[idx]
            if cons.kind == "exact":
                self.lam[idx] += rho[:, None] * r
            else:
                self.lam[idx, 0] = (self.lam[idx, 0] + rho * r[:, 0]).clamp(min=0)
            slow = fi > torch.maximum(0.25 * feas[idx], eta[idx])
            self.rho[idx] = torch.where(slow, rho * 10, rho)
            if self.lo is not None:
                rb = self.rho_b[idx]
                self.nu_hi[idx] = (self.nu_hi[idx] + rb[:, None] * (x - self.hi)).clamp(min=0)
                self.nu_lo[idx] = (self.nu_lo[idx] + rb[:, None] * (self.lo - x)).clamp(min=0)
                bslow = bvi > (0.25 * bv[idx]).clamp(min=self.bound_tol)
                self.rho_b[idx] = torch.where(bslow, (rb * 10).clamp(max=self.rho_max), rb)
                bv[idx] = bvi
            feas[idx] = fi
            finished = (fi <= eta[idx]) & (bvi <= self.bound_tol)
            finished &= self.outer[idx] >= self.min_outer
            stalled = self.rho[idx] > self.rho_max
            self.stalled[idx] = stalled
            spent = self.iterations[idx] - start_iters[idx] >= max_iter
            active[idx[finished | stalled | spent]] = False
            self.bar.update(int(its.max()))
            self.bar.set_postfix(active=int(active.sum()), violation=f"{float(feas.max()):.1e}")


def _lbfgs(
    fun: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]],
    u: Tensor,
    idx: Tensor,
    max_iter: int,
    history: int,
    budget: Tensor,
    gtol: float,
) -> tuple[Tensor, Tensor]:
    """Minimise ``fun`` row by row from ``u`` by L-BFGS; rows stop on their own.

    ``fun(u, idx)`` returns the values (k,) and gradients (k, n) of rows ``idx``.
    A row stops when ``|g|_inf <= gtol * max(1, |g0|_inf)``, when its Armijo
    backtracking finds no decrease, or after ``budget`` iterations. Returns the
    minimisers and the iterations each row used.
    """
    k, n = u.shape
    dev, dtype = u.device, u.dtype
    tiny = torch.finfo(dtype).tiny
    u = u.clone()
    its = torch.zeros(k, dtype=torch.long, device=dev)
    v, g = fun(u, idx)
    gstop = gtol * g.abs().amax(1).clamp(min=1.0)
    # the state of the rows still running, compacted whenever some stop
    pos = ((g.abs().amax(1) > gstop) & (budget > 0)).nonzero().flatten()
    ua, va, ga, gs, bud = u[pos], v[pos], g[pos], gstop[pos], budget[pos]
    S = torch.zeros(len(pos), history, n, dtype=dtype, device=dev)
    Y = torch.zeros_like(S)
    R = torch.zeros(len(pos), history, dtype=dtype, device=dev)
    gamma = torch.ones(len(pos), dtype=dtype, device=dev)
    head = 0  # next slot in the ring of curvature pairs
    for it in range(max_iter):
        if pos.numel() == 0:
            break
        kk = pos.numel()
        # two-loop recursion (Nocedal & Wright, alg. 7.4); empty slots have R = 0
        q = ga.clone()
        alpha = torch.zeros(kk, history, dtype=dtype, device=dev)
        for j in range(history):
            i = (head - 1 - j) % history
            alpha[:, i] = R[:, i] * torch.linalg.vecdot(S[:, i], q)
            q.sub_(alpha[:, i, None] * Y[:, i])
        q.mul_(gamma[:, None])
        for j in range(history):
            i = (head + j) % history
            beta = R[:, i] * torch.linalg.vecdot(Y[:, i], q)
            q.add_(S[:, i] * (alpha[:, i] - beta)[:, None])
        d = q.neg_()
        slope = torch.linalg.vecdot(ga, d)
        bad = ~(slope < 0)
        if bool(bad.any()):
            d[bad] = -ga[bad]
            slope[bad] = -ga[bad].pow(2).sum(1)
        if it == 0:
            t = (1.0 / ga.abs().amax(1).clamp(min=1e-12)).clamp(max=1.0)
        else:
            t = torch.ones(kk, dtype=dtype, device=dev)
        un, vn, gn = ua.clone(), va.clone(), ga.clone()
        need = torch.ones(kk, dtype=torch.bool, device=dev)
        b = torch.arange(kk, device=dev)
        for _ in range(10):
            cand = torch.addcmul(ua[b], t[b, None], d[b])
            vc, gc = fun(cand, idx[pos[b]])
            ok = (vc <= va[b] + 1e-4 * t[b] * slope[b]) & torch.isfinite(vc)
            bo = b[ok]
            un[bo], vn[bo], gn[bo] = cand[ok], vc[ok], gc[ok]
            need[bo] = False
            b = b[~ok]
            if b.numel() == 0:
                break
            t[b] *= 0.25
        s_, y_ = un - ua, gn - ga
        sy = torch.linalg.vecdot(s_, y_)
        good = (sy > 1e-10 * s_.norm(dim=1) * y_.norm(dim=1)) & ~need
        gf = good[:, None].to(dtype)
        S[:, head] = s_ * gf
        Y[:, head] = y_ * gf
        R[:, head] = torch.where(good, 1.0 / sy.clamp(min=tiny), 0.0)
        gamma = torch.where(good, sy / y_.pow(2).sum(1).clamp(min=tiny), gamma)
        head = (head + 1) % history
        ua, va, ga = un, vn, gn
        its[pos] += 1
        # a row whose line search found no decrease has no progress left at this scale
        go = (gn.abs().amax(1) > gs) & ~need & (its[pos] < bud)
        if not bool(go.all()):
            done = pos[~go]
            u[done] = ua[~go]
            pos, ua, va, ga, gs, bud = pos[go], ua[go], va[go], ga[go], gs[go], bud[go]
            S, Y, R, gamma = S[go], Y[go], R[go], gamma[go]
    u[pos] = ua
    return u, its


# --- steps along the constraint set -------------------------------------------------------


def _polish(
    coords: _Coords,
    cons: _Constraint,
    rows: Tensor,
    x: Tensor,
    lo: Tensor | None,
    hi: Tensor | None,
    steps: int = 3,
) -> tuple[Tensor, Tensor]:
    """Sequential quadratic programming steps on feasible ``x``, each followed by a projection.

    With ``M`` the prior's metric and ``J`` the constraint's Jacobian (both on the
    coordinates not at a bound), the step ``d = -(M g - M J^T (J M J^T)^+ J M g)``
    moves along the constraint set against the gradient ``g`` of ``-log p``; for a
    Gaussian prior ``M g = x - mu`` and the step is the Newton step of the reduced
    problem (exact for a linear model). A step is kept only if, after projecting
    back, the target still holds and ``-log p`` went down. Returns ``x`` and the
    steps kept per row.
    """
    T = x.shape[0]
    kept = torch.zeros(T, dtype=torch.long, device=x.device)
    e, g = _energy_grad(coords, x)
    x = x.clone()
    act = torch.arange(T, device=x.device)  # rows whose last step was kept
    for _ in range(steps):
        if act.numel() == 0:
            break
        xa, ga = x[act], g[act]
        _, J = _jacobian(cons.F, xa, cons.m)
        free = None if lo is None else (xa > lo) & (xa < hi)
        gf = ga if free is None else ga * free
        Mg = coords.metric(gf[:, :, None], act)[:, :, 0]
        if free is not None:
            Mg = Mg * free
        zero = torch.zeros(len(act), dtype=x.dtype, device=x.device)
        d = _gn_step(coords, J, (J @ Mg[:, :, None])[:, :, 0], act, zero, free) - Mg
        # the minimiser of -log p along d (1 for a Gaussian alone; other terms
        # have their own curvature)
        sub = coords.expand(coords.comp[act] if coords.comp is not None else None)
        dHd = _curvature(sub, xa, d)
        t = torch.where(dHd > 0, -torch.linalg.vecdot(ga, d) / dHd.clamp(min=1e-300), 1.0)
        x_try = _clip(xa + t.clamp(0.0, 4.0)[:, None] * d, lo, hi)
        x_try, _, err, goal = _project(sub, cons, rows[act], x_try, lo, hi)
        e_try, g_try = _energy_grad(sub, x_try)
        ok = (err <= goal) & (e_try < e[act])
        keep = act[ok]
        x[keep], e[keep], g[keep] = x_try[ok], e_try[ok], g_try[ok]
        kept[keep] += 1
        act = keep
    return x, kept


def _curvature(coords: _Coords, x: Tensor, d: Tensor) -> Tensor:
    """``d^T H d`` per row, with ``H`` the Hessian of ``-log p`` at ``x``."""
    with torch.enable_grad():
        xg = x.detach().requires_grad_(True)
        e = coords.energy(coords.to_u(xg, None), xg)
        (g,) = torch.autograd.grad(e.sum(), xg, create_graph=True)
        (hd,) = torch.autograd.grad((g * d).sum(), xg)
    return torch.linalg.vecdot(hd, d)


def _energy_grad(coords: _Coords, x: Tensor) -> tuple[Tensor, Tensor]:
    """``-log p(x)`` (up to a constant per component) and its gradient in ``x``."""
    with torch.enable_grad():
        xg = x.detach().requires_grad_(True)
        e = coords.energy(coords.to_u(xg, None), xg)
        (g,) = torch.autograd.grad(e.sum(), xg)
    return e.detach(), g


# --- Gauss-Newton projection --------------------------------------------------------------


def _project(
    coords: _Coords,
    cons: _Constraint,
    rows: Tensor,
    x: Tensor,
    lo: Tensor | None,
    hi: Tensor | None,
    max_iter: int = 30,
) -> tuple[Tensor, int, Tensor, Tensor]:
    """Move ``x`` onto ``{r(x) = 0}`` (exact) or ``{r(x) <= 0}`` (class) within the box.

    Returns ``x``, the iterations used, and per row the violation reached and the
    one aimed at.
    """
    T = x.shape[0]
    dev = x.device
    eps = torch.finfo(x.dtype).eps
    with torch.no_grad():
        r = cons.residual(cons.F(x), rows)
    if cons.kind == "exact":
        goal = 4 * eps * cons.scale[rows] * 16  # type: ignore[index]
    else:
        goal = torch.zeros(T, dtype=x.dtype, device=dev)
        r = r.clamp(min=-math.inf)
    err = _proj_err(cons, r)
    it_used = 0
    active = err > goal
    x = x.clone()
    damp = torch.zeros(T, dtype=x.dtype, device=dev)
    for it in range(1, max_iter + 1):
        a = active.nonzero().flatten()
        if a.numel() == 0:
            break
        it_used = it
        xa = x[a]
        va, J = _jacobian(cons.F, xa, cons.m if cons.kind == "exact" else _out_dim(cons, xa))
        if cons.kind == "class":
            with torch.enable_grad():
                z = va.detach().requires_grad_(True)
                rr = cons.residual(z, rows[a])
                (dz,) = torch.autograd.grad(rr.sum(), z)
            J = dz[:, None, :] @ J  # (k, 1, n)
            ra = rr.detach()
            # aim at half the margin beyond the threshold
            ra = ra + 0.5 * CLASS_MARGIN
        else:
            ra = cons.residual(va, rows[a])
        # coordinates on a bound are held there, the others projected
        free = None if lo is None else (xa > lo) & (xa < hi)
        step = _gn_step(coords, J, ra, a, damp[a], free)
        t = torch.ones(a.numel(), dtype=x.dtype, device=dev)
        old = _proj_err(cons, ra if cons.kind == "exact" else ra - 0.5 * CLASS_MARGIN)
        need = torch.ones(a.numel(), dtype=torch.bool, device=dev)
        xn = xa.clone()
        en = old.clone()
        with torch.no_grad():
            for _ in range(30):
                b = need.nonzero().flatten()
                cand = _clip(xa[b] - t[b, None] * step[b], lo, hi)
                rc = cons.residual(cons.F(cand), rows[a[b]])
                ec = _proj_err(cons, rc)
                better = ec < old[b]
                if cons.kind == "exact":
                    better = rc.norm(dim=1) < ra[b].norm(dim=1)
                    better &= torch.isfinite(ec)
                bb = b[better]
                xn[bb], en[bb] = cand[better], ec[better]
                need[bb] = False
                t[b[~better]] *= 0.5
                if not bool(need.any()):
                    break
        x[a] = xn
        err[a] = en
        full = t == 1
        damp[a] = torch.where(full, damp[a] / 10, (damp[a] * 10).clamp(min=1e-4, max=1e4))
        damp[a] = torch.where(damp[a] < 1e-8, 0.0, damp[a])
        active[a] = (en > goal[a]) & ~need
    return x, it_used, err, goal


def _gn_step(
    coords: _Coords, J: Tensor, r: Tensor, rows: Tensor, damp: Tensor, free: Tensor | None
) -> Tensor:
    """``M_F J_F^T (J_F M_F J_F^T + damp)^+ r``: the damped Gauss-Newton step (k, n).

    ``M_F`` is the prior's metric restricted to the free coordinates (all if None).
    """
    if free is not None:
        J = J * free[:, None, :].to(J.dtype)
    MJt = coords.metric(J.transpose(1, 2), rows)
    if free is not None:
        MJt = MJt * free[:, :, None].to(J.dtype)
    A = J @ MJt
    e, Q = torch.linalg.eigh(0.5 * (A + A.transpose(1, 2)))
    top = e.amax(1, keepdim=True).clamp(min=torch.finfo(J.dtype).tiny)
    # Levenberg-Marquardt damping relative to the largest eigenvalue; directions below
    # rounding are dropped, as in a pseudo-inverse
    inv = torch.where(e > 1e-13 * top, 1.0 / (e + damp[:, None] * top), 0.0)
    lam = Q @ (inv * (Q.transpose(1, 2) @ r[:, :, None])[:, :, 0])[:, :, None]
    return (MJt @ lam)[:, :, 0]


def _out_dim(cons: _Constraint, x: Tensor) -> int:
    with torch.no_grad():
        return int(cons.F(x[:1]).shape[1])


def _proj_err(cons: _Constraint, r: Tensor) -> Tensor:
    if cons.kind == "exact":
        return r.abs().amax(1).nan_to_num(nan=math.inf)
    return r[:, 0].clamp(min=0).nan_to_num(nan=math.inf)


# --- results -------------------------------------------------------------------------------


def _assess(
    problem: Problem,
    coords: _Coords,
    cons: _Constraint,
    rows: Tensor,
    x: Tensor,
    track: _Track,
    lo: Tensor | None,
    hi: Tensor | None,
) -> tuple[Tensor, list[str | None], Tensor]:
    """Per row: whether the target is met (measured on the model), why not, ``-log p(x)``."""
    from ..model._outputs import residual_of

    T = x.shape[0]
    with torch.no_grad():
        mdtype = next(_tensors(problem.model), x).dtype
        out = problem.model(x.reshape(T, *problem.input_shape).to(mdtype))
    tgt = problem.target
    if isinstance(tgt, ClassTarget):
        tgt = ClassTarget(tgt.labels[rows.cpu()], tgt.confidence)
    else:
        tgt = tgt[rows]
    res = residual_of(tgt, out.to(x.dtype), problem.chain)
    ok = torch.isfinite(res) & (res <= problem.tol)
    if cons.impossible is not None:
        ok[:] = False
    reasons: list[str | None] = [None] * T
    box = " within the bounds" if lo is not None else ""
    for i in (~ok).nonzero().flatten().tolist():
        its, tries = int(track.iterations[i]), 1 + int(track.retried[i])
        if cons.impossible is not None:
            why = cons.impossible
        elif cons.kind == "class":
            assert cons.labels is not None
            why = (
                f"class {int(cons.labels[rows[i]])} "
                f"{'not reached' if cons.threshold is None else 'not reached with the confidence'}"
                f": shortfall {float(res[i]):.3g} after {its} iterations from {tries} start(s); "
            )
            if int(track.iterations[i]) >= track.max_iter * tries:
                why += "max_iter reached"
            else:
                why += f"the margin stalled (the class may be unreachable{box})"
        elif bool(track.iterations[i] >= track.max_iter * tries):
            why = (
                f"max_iter={track.max_iter} reached with constraint violation "
                f"{float(track.feas[i]):.3g}; residual {float(res[i]):.3g} after the projection"
            )
        else:
            why = (
                f"residual {float(res[i]):.3g} above tol {problem.tol:g} after {tries} start(s): "
                f"the violation stalled (the target may be outside the model's range{box})"
            )
        reasons[i] = why
    return ok, reasons, coords.neg_log_prior(x)


def _tensors(model: nn.Module):
    yield from model.parameters()
    yield from model.buffers()


def _select(ok: Tensor, energy: Tensor, rows: Tensor, N: int) -> Tensor:
    """Per sample, the row of its most probable converged candidate (else most probable)."""
    T = len(rows)
    e = energy.nan_to_num(nan=math.inf)
    # rank rows: converged before not, then by -log p
    key = torch.argsort(torch.argsort(e)) + (~ok).long() * T
    best = torch.full((N,), 2 * T, dtype=torch.long, device=rows.device)
    best = best.scatter_reduce(0, rows, key, reduce="amin")
    chosen = torch.empty(N, dtype=torch.long, device=rows.device)
    hit = key == best[rows]
    chosen[rows[hit]] = hit.nonzero().flatten()
    return chosen

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

Stage 1's coordinates and constraint live in :mod:`._constraint`, stage 2 in
:mod:`._augmented_lagrangian`, stages 3 and 4 in :mod:`.projection`; this
module parses the options, runs the stages and chooses among the candidates.

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

__all__ = ["OptimizeOptions", "invert_optimize"]

import contextlib
import dataclasses
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from ..checks import as_bounds, positive_int
from ..errors import NNInvError
from ..targets import ClassTarget
from . import Problem, Solution, register
from ._augmented_lagrangian import _AugmentedLagrangian, _progress_bar, _Track
from ._coarse import coarse_problem

# CLASS_MARGIN, the margin a class target aims beyond its threshold, is defined with
# the constraint that uses it and re-exported here with the method's other constants
from ._constraint import CLASS_MARGIN as CLASS_MARGIN
from ._constraint import (
    _choose_components,
    _clip,
    _Constraint,
    _Coords,
    _initial_u,
    _ModelFunctions,
    _random_u,
)
from .projection import gauss_newton, polish

#: Covariance rank the augmented Lagrangian keeps by default, for inputs of at least
#: four times as many values.
AUTO_WHITEN_RANK = 128


@dataclass(frozen=True)
class OptimizeOptions:
    """Options of ``method="optimize"``, checked when built.

    Attributes
    ----------
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
        Seeds the random starts; a run is deterministic for a given seed (0).
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
    precision : {"mixed", "full"}
        ``"mixed"`` (default) runs the augmented Lagrangian in float32 when the
        problem is float64 and projects in float64; ``"full"`` runs all of it in
        the problem's dtype.
    polish : int
        Sequential quadratic programming steps along the constraint set after the
        projection, each kept only if it lowers ``-log p`` (2; exact targets).
    whiten_rank : int, optional
        How many eigen-directions of each covariance the augmented Lagrangian
        keeps (the rest becomes isotropic with the same trace); 0 keeps the full
        covariance. Default None: 128 for inputs of at least 512 values, else 0.
        The projection and polish always use the full covariance. The
        eigen-decomposition is computed on first use and kept with the prior.
    coarse : int or (int, int), optional
        For image inputs ``(C, H, W)`` or ``(H, W)``: first solve over ``(h, w)``
        images seen through a bilinear upsampling (the model run on ``up(u)``, the
        prior scored on ``up(u)``, ``x0`` and tensor bounds area-averaged), then
        start the full-resolution search from the upsampled answers
        (coarse-to-fine; see :mod:`._coarse`). Worth it for priors without data,
        such as :class:`~nninv.priors.BatchNormPrior`, which cannot rule out
        pixel-level patterns by themselves. The coarse stage's answers are only
        starts: what is returned is judged at full resolution. ``info["coarse"]``
        holds that stage's converged count and seconds. Default None: no coarse
        stage.
    """

    bounds: Any = None
    x0: Any = None
    restarts: int = 1
    seed: int = 0
    max_iter: int = 1000
    progress: bool | None = None
    components: int = 1
    retries: int = 2
    precision: Literal["mixed", "full"] = "mixed"
    polish: int = 2
    whiten_rank: int | None = None
    coarse: int | tuple[int, int] | None = None

    def __post_init__(self) -> None:
        for name in ("restarts", "components", "max_iter"):
            _positive_int(getattr(self, name), name)
        for name in ("retries", "polish"):
            _positive_int(getattr(self, name), name, zero=True)
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise NNInvError(f"option seed must be an integer, got {self.seed!r}")
        if self.precision not in ("mixed", "full"):
            raise NNInvError(f"option precision must be 'mixed' or 'full', got {self.precision!r}")
        positive_int(self.whiten_rank, "option whiten_rank", minimum=0, allow_none=True)


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


@register("optimize", options=OptimizeOptions)
def invert_optimize(problem: Problem) -> Solution:
    """The most probable input under the prior that meets the target.

    Called by :func:`nninv.invert` with ``method="optimize"``; see the module
    docstring for the algorithm.

    Options: :class:`OptimizeOptions` (``bounds``, ``x0`` and ``seed`` are
    :func:`nninv.invert`'s own arguments).

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
    opts = problem.options_as(OptimizeOptions)
    t_start = time.perf_counter()
    coarse_info = None
    if opts.coarse is not None:
        opts, coarse_info = _coarse_start(problem, opts)
    dtype, device = problem.dtype, problem.device
    N = problem.n
    restarts, n_comp, max_iter = opts.restarts, opts.components, opts.max_iter
    retries, polish_steps, seed = opts.retries, opts.polish, opts.seed
    lo, hi = _bounds(opts.bounds, problem.input_shape, dtype, device)
    # the augmented Lagrangian only has to come near the solution: in float64 problems
    # it runs in float32 (about twice as fast), and the projection restores float64
    mixed = opts.precision == "mixed" and dtype == torch.float64
    wdtype = torch.float32 if mixed else dtype

    fn = _ModelFunctions(problem.model, problem.chain, dtype, device)
    cons = _Constraint.build(problem.target, fn, dtype, device)
    coords = _Coords.build(problem.prior, problem.input_shape, dtype, device)
    cons_w, coords_w = _working_copies(problem, wdtype, cons, coords)
    coords_w = coords_w.low_rank(_whiten_rank(opts.whiten_rank, math.prod(problem.input_shape)))
    lo_w, hi_w = (None, None) if lo is None or hi is None else (lo.to(wdtype), hi.to(wdtype))
    x0 = _start(opts.x0, problem, lo, hi)

    comp_ids, n_comp = _choose_components(coords, cons, N, n_comp, lo, hi)
    rows, random, comp = _start_rows(comp_ids, N, restarts, n_comp, device)
    coords = coords.expand(comp)
    x_init = coords.to_x(_initial_u(coords, x0, rows, random, seed, lo, hi, dtype), None)

    T = len(rows)
    track = _Track(T, device, max_iter)
    bar = _progress_bar(opts.progress)
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
            x, it, err, goal = gauss_newton(sub, cons, rows[sel][todo], x, lo, hi)
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
        part = coords.expand(comp[sel] if comp is not None else None)
        xr, fr = solve(sel, part.to_x(_random_u(part, len(sel), gen, lo, hi, dtype), None))
        x[sel], failed[sel] = xr, fr
        track.retried[sel] += 1
    if cons.kind == "exact" and polish_steps and not bool(failed.all()):
        # the augmented Lagrangian stopped early: a few steps along the constraint
        # set move each answer to the prior's optimum on it
        sel = (~failed).nonzero().flatten()
        part = coords.expand(comp[sel] if comp is not None else None)
        x[sel], track.polished[sel] = polish(part, cons, rows[sel], x[sel], lo, hi, polish_steps)
    bar.close()

    ok, reasons, energy = _assess(problem, coords, cons, rows, x, track, lo, hi)
    best = _select(ok, energy, rows, N)
    xs = x[best].reshape(N, *problem.input_shape).to(dtype)
    info = _info(track, best, energy, comp, coarse_info, t_start)
    iterations = int(track.iterations[best].max())
    return Solution(xs, iterations, ok[best], [reasons[i] for i in best.tolist()], info)


def _coarse_start(problem: Problem, opts: OptimizeOptions) -> tuple[OptimizeOptions, dict]:
    """Coarse-to-fine: the answers over coarse images, upsampled, are the starts."""
    assert opts.coarse is not None
    fine = dataclasses.replace(opts, coarse=None)
    sub, up = coarse_problem(problem, opts.coarse, fine)
    rough = _invert(sub)
    with torch.no_grad():
        opts = dataclasses.replace(opts, x0=up(rough.x))
    coarse_info = {
        "shape": sub.input_shape,
        "converged": int(rough.ok.sum()) if rough.ok is not None else problem.n,
        "seconds": rough.info["seconds"],
    }
    return opts, coarse_info


def _working_copies(
    problem: Problem, wdtype: torch.dtype, cons: _Constraint, coords: _Coords
) -> tuple[_Constraint, _Coords]:
    """The constraint and the prior's coordinates in the working dtype ``wdtype``."""
    if wdtype == problem.dtype:
        return cons, coords
    device = problem.device
    fn_w = _ModelFunctions(problem.model, problem.chain, wdtype, device)
    cons_w = _Constraint.build(problem.target, fn_w, wdtype, device)
    coords_w = _Coords.build(problem.prior, problem.input_shape, wdtype, device)
    return cons_w, coords_w


def _start_rows(
    comp_ids: Tensor | None, N: int, restarts: int, n_comp: int, device: torch.device
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Sample of each candidate row, which rows start at random, and their components."""
    n_starts = restarts * n_comp
    # sample i, candidate j sits at row j * N + i
    rows = torch.arange(N, device=device).repeat(n_starts)
    random = torch.arange(N * n_starts, device=device) >= N * n_comp  # restarts 2, 3, ...
    comp = comp_ids.T.reshape(-1) if comp_ids is not None else None
    if comp is not None:
        # rows of one component side by side: each component whitens one slice
        order = torch.argsort(comp, stable=True)
        rows, comp, random = rows[order], comp[order], random[order]
    return rows, random, comp


def _info(
    track: _Track,
    best: Tensor,
    energy: Tensor,
    comp: Tensor | None,
    coarse_info: dict | None,
    t_start: float,
) -> dict[str, Any]:
    """The solution's ``info`` for the chosen candidate rows ``best``."""
    info: dict[str, Any] = {
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
    if coarse_info is not None:
        info["coarse"] = coarse_info
    return info


# --- options --------------------------------------------------------------------------------


def _positive_int(v: Any, name: str, zero: bool = False) -> int:
    return positive_int(v, f"option {name}", minimum=0 if zero else 1)


def _bounds(
    bounds: Any, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device
) -> tuple[Tensor | None, Tensor | None]:
    if bounds is None:
        return None, None
    return as_bounds(bounds, shape, dtype=dtype, device=device)


def _whiten_rank(v: Any, n: int) -> int:
    """The rank the augmented Lagrangian keeps of each covariance (0: all of it)."""
    if v is None:
        return AUTO_WHITEN_RANK if n >= 4 * AUTO_WHITEN_RANK else 0
    return v if v < n else 0


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
    from ..model.outputs import residual_of

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

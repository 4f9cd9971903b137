"""``nninv.closest``: the nearest input that a model puts in a given class or output set.

For a classifier this is an adversarial example with a certificate: the
returned ``x`` is in the target class (checked by running the model, both in
float64 and in the caller's own dtype and device, float32 included) and
``bound`` is a proven lower bound on the distance of every input in that
class, so no smaller perturbation exists.

``bound`` and ``distance`` are two numbers on purpose: the optimum of the
MILP is an infimum, reached on the decision boundary, where the class only
ties with a rival and float32 rounding often puts the input in the rival
class. ``bound`` is that infimum (certified); ``x`` is solved for with the
class winning by a small ``margin`` in its logits, so that the model confirms
it, and ``distance`` is its own distance, a little above ``bound`` (for an
``"optimal"`` answer at most ``bound * (1 + 1e-4) + 1e-6``, :data:`SLACK`). An
input the model does not confirm is never returned: the answer falls back to
another verified input, or to none, with a warning.

How each case is solved
-----------------------
- ReLU and leaky-ReLU networks, ``norm="linf"`` or ``"l1"``: exactly, by a
  mixed-integer linear program with HiGHS (:mod:`nninv.geometry._milp`): one binary
  per unstable neuron and big-M constants from its bounds. The problem is
  made as small as possible first: a quick projected-gradient search gives a
  verified input, whose distance bounds the optimum, so the box shrinks to
  that radius; interval arithmetic follows; then LPs over the relaxation of
  the whole problem (class constraints included) make most neurons stable
  (Tjeng, Xiao & Tedrake 2019). The MILP keeps only the class constraints
  against the rivals that win near ``x0`` and near the gradient search's point,
  and adds the others back when its optimum violates them (its bound is valid
  either way); with few rivals, many neurons of the last hidden layer only
  hurt the class and need no binary (:func:`nninv.geometry._milp.monotone_neurons`).
  For ``linf`` the verified input (at distance ``d``) is then usually proven
  optimal directly: a smaller MILP, with the radius as the box and no
  distance variable, decides whether any input within ``d (1 - 1e-6)`` is in
  the class (:func:`~nninv.geometry._stages.verify_linf`); when one is, it is
  polished into a closer incumbent and the question is asked again. Otherwise (``l1``, or undecided)
  the distance MILP runs, with the gradient search's input as HiGHS's first
  incumbent and its primal heuristics off. The MILP's point is polished
  inside its activation region by one LP that asks the class to win by a
  small ``margin`` (by default the smallest of ``1e-9 s, 1e-8 s, ...,
  1e-3 s``, with ``s`` the largest logit at ``x0``, that the model confirms in
  float64 and in its own dtype; for a float32 model the ladder starts at
  ``1e-7 s``, float32's rounding), so that the model confirms it despite the
  solver's tolerances and float32 rounding. ``bound`` is ``d (1 - 1e-6)``
  after a proof by reachability, else HiGHS's dual bound for the problem
  without margin (relative gap 1e-6).
  ``info["phase_seconds"]`` says where the time went.
- One affine layer followed by increasing activations or a softmax (the
  seed's model): the class region is a polytope; ``linf`` and ``l1`` are
  LPs and ``l2`` is the exact projection QP of :mod:`nninv.geometry._polytope`.
- ``norm="l2"`` on deeper ReLU networks: the MILP would be quadratic, which
  HiGHS does not solve. ``bound`` is the exact ``linf`` distance (proven,
  since ``|v|_2 >= |v|_inf``); ``x`` is the best of the exact projection onto
  the class inside the activation region of the ``linf`` optimum and a
  projected-gradient search; status ``"heuristic"``.
- Any other differentiable network: projected gradient descent with a
  bisection on the radius; status ``"heuristic"`` and ``bound`` 0.

Ties: an input is in class ``c`` when no other logit is strictly larger, as
in :func:`nninv.invert`; the returned ``x`` in fact wins by ``info["margin"]``
(float64 logits) and is the arg-max of the caller's model in its own dtype.

Output sets: the target may be an :class:`nninv.targets.OutputSet`, a union
of polyhedra ``{y : A y <= b}`` of the model's outputs (for example a
VNN-LIB property's output side). Each polyhedron is solved as above, with its
rows in place of the class constraints (``A z <= b - margin`` for the
returned ``x``), and the answer is the nearest of the parts' answers: its
``bound`` is the smallest of theirs, and it is ``"optimal"`` when the part it
comes from is and no other part has a smaller bound. Each later part is
searched only within the distance already found. The steps after the last
affine layer are kept (the set constrains the model's actual outputs),
except increasing activations and a softmax when every row only compares two
outputs (``y_j <= y_k``), which they do not change. The answer is checked by
running the model, in float64 and in its own dtype, like a class's.

The stages (:mod:`nninv.geometry._stages`) run on one frozen
:class:`~nninv.geometry._query.Query`; :func:`request` validates a call into
a :class:`Request` and :func:`answer` runs it with the solvers of a
:class:`~nninv.geometry._stages.Stages` (which tests replace).

References
----------
Tjeng, Xiao & Tedrake (2019), "Evaluating robustness of neural networks with
mixed integer programming", ICLR.
Fischetti & Jo (2018), "Deep neural networks and mixed integer linear
optimization", Constraints 23.
"""

from __future__ import annotations

__all__ = ["Closest", "closest"]

import math
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..errors import NNInvError
from ..model.chain import Affine, Step, analyse, eval_mode
from ..model.io import as_module
from ..targets import ClassTarget, OutputSet, as_output_set
from ._inputs import as_bounds, as_input, caller_kind, float64_copy, peel_class_steps, pl_slope
from ._milp import Goal, PLNet
from ._query import Checker, Norm, Outcome, Query, Status, dist
from ._stages import STAGES, Stages, solve

NORMS = ("linf", "l1", "l2")
#: ``(rel, abs)``: an ``"optimal"`` answer has ``distance <= bound * (1 + rel) + abs``;
#: one the margin pushed farther is reported ``"heuristic"`` (``info["note"]``).
SLACK = (1e-4, 1e-6)
STATUSES = ("optimal", "infeasible", "time_limit", "heuristic")


@dataclass(frozen=True)
class Closest:
    """The nearest input of a class (or output set), and what is proven about it.

    Attributes
    ----------
    x : Tensor or None
        ``(1, *input_shape)`` in the dtype and on the device of the caller's
        ``x`` (float64 on the CPU for a non-floating ``x``; the LP/MILP parts
        run in float64 on the CPU by nature, with HiGHS), in the target:
        the solver's float64 point is checked by running the model in float64
        and in its own dtype (``model(x.to(dtype))``, the returned value when
        ``x`` has the model's dtype, else checked as well), or None when no
        input of the target lies within
        ``max_distance`` (status ``"infeasible"``) or none was found or
        confirmed by the model (:attr:`found` False).
    distance : float
        ``|x - x0|`` in the chosen norm, of the returned ``x`` (``inf`` when
        ``x`` is None); at least ``bound``, since ``x`` wins by a margin.
    status : {"optimal", "infeasible", "time_limit", "heuristic"}
        ``"optimal"`` (``distance`` is the minimum, up to the solver's gap and
        the margin), ``"infeasible"`` (proven: nothing within
        ``max_distance``), ``"time_limit"`` (best found when time ran out) or
        ``"heuristic"`` (no optimality proof).
    bound : float
        A proven lower bound on the distance to any input of the target (for
        ``"optimal"``, the infimum, reached only on the decision boundary;
        ``>= max_distance`` when infeasible; 0 when nothing is proven).
    norm : str
    label : int or None
        The target class; None for an :class:`~nninv.targets.OutputSet`.
    info : dict
        ``"margin"``, ``"seconds"``, ``"n_binaries"``, ``"n_unstable"``,
        ``"nodes"``, ``"lp_tightened"``, ``"method"``, ``"rivals"`` (the
        classes whose constraints the MILP kept; rows of the set for an output
        set), ``"rounds"`` (MILPs solved), ``"phase_seconds"``, ``"dtype"``
        (the caller's, in which ``x`` was checked), ``"rejected"`` (inputs
        the float64 model put in the target and the caller's model did not),
        ``"note"``; for an output set of several parts, ``"part"`` (the one
        ``x`` is in) and ``"parts"`` (status, bound and distance of each).
    """

    x: Tensor | None
    distance: float
    status: Status
    bound: float
    norm: str
    label: int | None
    info: dict[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:
        return (
            f"Closest(status={self.status!r}, norm={self.norm!r}, label={self.label}, "
            f"distance={self.distance:.6g}, bound={self.bound:.6g})"
        )

    @property
    def found(self) -> bool:
        """Whether an input of the target, confirmed by the model, is returned."""
        return self.x is not None


def closest(
    model: nn.Module | Any,
    x: Any,
    target: ClassTarget | OutputSet,
    norm: str = "linf",
    max_distance: float | None = None,
    time_limit: float = 60.0,
    *,
    bounds: Any = (0.0, 1.0),
    input_shape: Sequence[int] | None = None,
    seed: int = 0,
    margin: float | None = None,
) -> Closest:
    """The input nearest to ``x`` that ``model`` puts in the target class or output set.

    Parameters
    ----------
    model : torch.nn.Module or a fitted scikit-learn MLP
        A classifier (logits, probabilities or log-probabilities); an
        ``MLPClassifier`` is converted by :func:`nninv.model.io.as_module`.
    x : Tensor
        One input, ``(*input_shape)`` or ``(1, *input_shape)``; the answer
        comes back in its dtype and on its device.
    target : ClassTarget or OutputSet
        One class, without confidence; or a union of polyhedra
        ``{y : A y <= b}`` of the model's outputs.
    norm : {"linf", "l1", "l2"}
    max_distance : float, optional
        Search only within this distance; smaller radii make the MILP much
        faster (the big-M bounds shrink with the box).
    time_limit : float
        Seconds for the solver (HiGHS's own limit on the MILP).
    bounds : (lo, hi) or None
        The valid input domain; ``(0, 1)`` by default, for images. None means
        unbounded, which the exact MILP accepts only with ``max_distance``.
    input_shape : sequence of int, optional
    seed : int
        Seeds the gradient search used by the heuristic cases.
    margin : float, optional
        How much the target logit must beat every rival's (float64, the
        model's output units) at the returned ``x``; for an output set, how far
        inside each row (``A y <= b - margin``). By default the smallest
        of ``1e-9 s, 1e-8 s, ..., 1e-3 s`` (``s`` the largest output at ``x0``,
        at least 1) that the model confirms, in float64 and in its own dtype;
        the ladder starts near that dtype's rounding (``1e-7 s`` for float32).
        ``margin=0`` asks for the boundary point itself, which float32 often
        refuses; such an input is then not returned. ``bound`` never depends
        on it.

    Returns
    -------
    Closest

    Raises
    ------
    NNInvError
        For an unknown norm, a target that is neither a single-label
        ClassTarget nor an OutputSet over the model's outputs, an ``x`` of the
        wrong shape or outside ``bounds``, or a negative ``max_distance``.

    Examples
    --------
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> f = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)).double()
    >>> x0 = torch.rand(1, 4, dtype=torch.float64)
    >>> c = int(f(x0).topk(2).indices[0, 1])  # the runner-up class
    >>> res = closest(f, x0, ClassTarget(c), norm="linf")
    >>> res.status, int(f(res.x).argmax()) == c, res.distance >= res.bound - 1e-9
    ('optimal', True, True)
    """
    req = request(
        model,
        x,
        target,
        norm,
        max_distance,
        time_limit,
        bounds=bounds,
        input_shape=input_shape,
        seed=seed,
        margin=margin,
    )
    return answer(req)


@dataclass(frozen=True)
class Request:
    """A validated call of :func:`closest`.

    Attributes
    ----------
    query : Query
        For the first part of the target; its ``check`` accepts every part.
    parts : tuple of Goal
        The target's polyhedra (one for a class).
    label : int or None
        The class, for a ClassTarget.
    t0 : float
        When the call began (``info["seconds"]``).
    like : (dtype, device)
        What the answer comes back in (the caller's ``x``).
    unbounded : bool
        The network is piecewise linear but the box is not finite: the exact
        route refuses it (after the check of ``x`` itself).
    """

    query: Query
    parts: tuple[Goal, ...]
    label: int | None
    t0: float
    like: tuple[torch.dtype, torch.device]
    unbounded: bool


def _check_options(
    max_distance: float | None, time_limit: float, margin: float | None
) -> tuple[float | None, float | None]:
    if max_distance is not None:
        max_distance = float(max_distance)
        if not max_distance >= 0 or math.isinf(max_distance):
            raise NNInvError(f"max_distance must be finite and >= 0, got {max_distance}")
    if not time_limit > 0:
        raise NNInvError(f"time_limit must be positive, got {time_limit}")
    if margin is not None:
        margin = float(margin)
        if not margin >= 0 or math.isinf(margin):
            raise NNInvError(f"margin must be finite and >= 0, got {margin}")
    return max_distance, margin


def _goals(target: ClassTarget | OutputSet, n_out: int) -> tuple[tuple[Goal, ...], int | None]:
    """The target's polyhedra as goals, and its class (None for an output set)."""
    if isinstance(target, OutputSet):
        parts = as_output_set(target, n_out).parts
        return tuple(Goal(p.A.numpy(), p.b.numpy()) for p in parts), None
    target.check_classes(n_out)
    label = int(target.labels[0])
    return (Goal.of_class(label, n_out),), label


def request(
    model: nn.Module | Any,
    x: Any,
    target: ClassTarget | OutputSet,
    norm: str = "linf",
    max_distance: float | None = None,
    time_limit: float = 60.0,
    *,
    bounds: Any = (0.0, 1.0),
    input_shape: Sequence[int] | None = None,
    seed: int = 0,
    margin: float | None = None,
) -> Request:
    """Validate a call of :func:`closest` (same parameters) into a :class:`Request`."""
    t0 = time.perf_counter()
    model = as_module(model)
    if norm not in NORMS:
        raise NNInvError(f"unknown norm {norm!r}; valid: {', '.join(NORMS)}")
    if not isinstance(target, (ClassTarget, OutputSet)):
        raise NNInvError(
            f"closest() needs a ClassTarget or an OutputSet, got {type(target).__name__}; "
            "for an exact output use preimage(...).project(x)"
        )
    if isinstance(target, ClassTarget) and (len(target) != 1 or target.confidence is not None):
        raise NNInvError("closest() needs a ClassTarget with one label and no confidence")
    max_distance, margin = _check_options(max_distance, time_limit, margin)
    with eval_mode(model):
        chain0 = analyse(model, input_shape)
    model64 = float64_copy(model)
    chain = analyse(model64, chain0.input_shape)
    in_shape = chain.input_shape
    parts, label = _goals(target, chain.n_out)
    x0t = as_input(x, in_shape)
    like = caller_kind(x, (torch.float64, torch.device("cpu")))
    if x0t.shape[0] != 1:
        raise NNInvError(f"closest() takes one input, got {x0t.shape[0]}; call it per input")
    x0 = x0t[0].numpy()
    lo_t, hi_t = as_bounds(bounds, in_shape)
    lo, hi = lo_t.numpy(), hi_t.numpy()
    if np.any(x0 < lo - 1e-12) or np.any(x0 > hi + 1e-12):
        i = int(np.nonzero((x0 < lo - 1e-12) | (x0 > hi + 1e-12))[0][0])
        raise NNInvError(
            f"x lies outside bounds at input {i} ({x0[i]} not in [{lo[i]}, {hi[i]}]); "
            "pass bounds=None or bounds that contain x"
        )
    steps = list(chain.steps)
    core = peel_class_steps(steps) if all(g.only_order() for g in parts) else steps
    net, unbounded = _network(core, chain.n_in, lo, hi, x0, max_distance)
    query = Query(
        model=model64,
        input_shape=in_shape,
        check=Checker(model64, in_shape, parts, native=model),
        x0=x0,
        lo=lo,
        hi=hi,
        domain=(lo, hi),
        norm=_norm(norm),
        goal=parts[0],
        max_distance=max_distance,
        deadline=t0 + time_limit,
        seed=seed,
        margin=margin,
        net=net,
    )
    query = _narrow(query, max_distance)
    return Request(query, parts, label, t0, like, unbounded)


def _norm(norm: str) -> Norm:
    if norm == "linf":
        return "linf"
    if norm == "l1":
        return "l1"
    return "l2"


def _narrow(q: Query, max_distance: float | None) -> Query:
    """The query with ``max_distance`` and its box within it of ``x0``."""
    lo, hi = q.domain
    if max_distance is not None:
        lo, hi = np.maximum(lo, q.x0 - max_distance), np.minimum(hi, q.x0 + max_distance)
    return replace(q, lo=lo, hi=hi, max_distance=max_distance)


def _network(
    core: list[Step],
    n_in: int,
    lo: np.ndarray,
    hi: np.ndarray,
    x0: np.ndarray,
    max_distance: float | None,
) -> tuple[PLNet | None, bool]:
    """The piecewise-linear network of ``core`` when the exact route takes it, and
    whether it is piecewise linear without a finite box (which that route refuses)."""
    pl = all(isinstance(s, Affine) or pl_slope(s) is not None for s in core)
    slopes = [pl_slope(s) for s in core]
    pl = pl and all(a is None or 0.0 <= a < 1.0 for a in slopes)
    blo, bhi = lo, hi
    if max_distance is not None:
        blo, bhi = np.maximum(lo, x0 - max_distance), np.minimum(hi, x0 + max_distance)
    finite = bool(np.isfinite(blo).all() and np.isfinite(bhi).all())
    if pl and (finite or len(core) == 1):
        return PLNet.from_steps(core, n_in, pl_slope), False
    return None, pl


def answer(req: Request, stages: Stages = STAGES) -> Closest:
    """Run a validated request through the stages (``stages``: the solvers they call)."""
    q = req.query
    if q.check.ok(q.x0):
        method = "already in class" if req.label is not None else "already in the set"
        return _finish(req, Outcome(q.x0.copy(), "optimal", 0.0, {"method": method, "margin": 0.0}))
    if req.unbounded:
        raise NNInvError(
            "the exact MILP needs a bounded domain: pass finite bounds=(lo, hi) or max_distance"
        )
    if len(req.parts) == 1:
        return _finish(req, solve(q, stages))
    return _finish(req, _union(req, stages))


def _union(req: Request, stages: Stages) -> Outcome:
    """The nearest of the answers for each part; each later part is searched only within
    the distance found so far."""
    q = req.query
    outs: list[Outcome] = []
    best: tuple[float, int] | None = None
    md = q.max_distance
    for i, g in enumerate(req.parts):
        check = Checker(q.model, q.input_shape, [g], native=q.check.native)
        part = _narrow(replace(q, goal=g, check=check), md)
        out = solve(part, stages)
        q.check.rejected += check.rejected
        outs.append(out)
        if out.x is not None:
            d = q.distance(out.x)
            if best is None or d < best[0]:
                best = (d, i)
                md = d if md is None else min(md, d)
    bound = min(o.bound for o in outs)
    summary = [
        {
            "status": o.status,
            "bound": o.bound,
            "distance": math.inf if o.x is None else q.distance(o.x),
        }
        for o in outs
    ]
    weaker: Status = "time_limit" if any(o.status == "time_limit" for o in outs) else "heuristic"
    if best is None:
        status = "infeasible" if all(o.status == "infeasible" for o in outs) else weaker
        return Outcome(None, status, bound, {**outs[0].info, "parts": summary})
    top = outs[best[1]]
    status = "optimal" if top.status == "optimal" and bound >= top.bound else weaker
    return Outcome(top.x, status, bound, {**top.info, "part": best[1], "parts": summary})


def _finish(req: Request, out: Outcome) -> Closest:
    """The answer as the caller gets it, after the final check by the model."""
    q, check = req.query, req.query.check
    x_dtype, x_device = req.like
    xv, status, bound, info = out.x, out.status, out.bound, out.info
    common: dict[str, Any] = {"norm": q.norm, "label": req.label}
    info["seconds"] = time.perf_counter() - req.t0
    info["dtype"] = str(check.dtype).replace("torch.", "")
    info["rejected"] = check.rejected
    # what comes back is x's dtype; the model's own-dtype check runs that rounding
    # when x and the model share a dtype, else it is checked again
    xr = None if xv is None else torch.from_numpy(xv).to(x_dtype).double().numpy()
    same = x_dtype in (torch.float64, check.dtype)
    if xv is not None and not (check.ok(xv) and (same or (xr is not None and check.ok(xr)))):
        what = f"class {req.label}" if req.label is not None else "the output set"
        info["note"] = (
            f"the solver's input is not in {what} when the model runs it "
            f"({info['dtype']}); not returned"
        )
        info["unverified_x"] = xv
        xv = None
        status = "heuristic" if status != "infeasible" else status
    if xv is None or xr is None:
        if status != "infeasible":
            what = f"class {req.label}" if req.label is not None else "the output set"
            warnings.warn(
                f"closest: no input of {what} confirmed by the model "
                f"({info['dtype']}) was found; {info.get('note', 'none within reach')}",
                stacklevel=4,
            )
        return Closest(None, math.inf, status, bound, info=info, **common)
    d = dist(xr - q.x0, q.norm)
    bound = min(bound, d)
    if status == "optimal" and d > bound * (1 + SLACK[0]) + SLACK[1]:
        status = "heuristic"
        info["note"] = (
            f"the margin {info.get('margin')} put x at {d:.6g}, beyond the slack "
            f"over the proven bound {bound:.6g}"
        )
    info["logits"] = check.logits(xr)[0]
    x_out = torch.from_numpy(xr.copy()).reshape(1, *q.input_shape).to(x_device, x_dtype)
    return Closest(x_out, d, status, bound, info=info, **common)

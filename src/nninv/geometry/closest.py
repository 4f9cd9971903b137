"""``nninv.closest``: the nearest input that a model puts in a given class.

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
  the class (:func:`_verify_linf`); when one is, it is polished into a closer
  incumbent and the question is asked again. Otherwise (``l1``, or undecided)
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
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..errors import NNInvError
from ..model.chain import Affine, analyse, eval_mode
from ..model.io import as_module
from ..targets import ClassTarget
from ._attack import _attack, _Checker, _dist
from ._bounds import ideal_cuts, interval_bounds, tighten
from ._highs import region_lp, region_polytope, solve_margin, solve_milp
from ._inputs import as_bounds, as_input, caller_kind, float64_copy, peel_class_steps, pl_slope
from ._milp import PLNet, encode, monotone_neurons, start_point
from ._polytope import Polyhedron

# solve_milp, solve_margin and _attack are called from this module's own code, as its
# globals, so that replacing them here (as the tests do) reaches every path of closest()

NORMS = ("linf", "l1", "l2")
#: ``(rel, abs)``: an ``"optimal"`` answer has ``distance <= bound * (1 + rel) + abs``;
#: one the margin pushed farther is reported ``"heuristic"`` (``info["note"]``).
SLACK = (1e-4, 1e-6)
STATUSES = ("optimal", "infeasible", "time_limit", "heuristic")


@dataclass(frozen=True)
class Closest:
    """The nearest input of a class, and what is proven about it.

    Attributes
    ----------
    x : Tensor or None
        ``(1, *input_shape)`` in the dtype and on the device of the caller's
        ``x`` (float64 on the CPU for a non-floating ``x``; the LP/MILP parts
        run in float64 on the CPU by nature, with HiGHS), in the target class:
        the solver's float64 point is checked by running the model in float64
        and in its own dtype (``model(x.to(dtype))``, the returned value when
        ``x`` has the model's dtype, else checked as well), or None when no
        input of the class lies within
        ``max_distance`` (status ``"infeasible"``) or none was found or
        confirmed by the model (:attr:`found` False).
    distance : float
        ``|x - x0|`` in the chosen norm, of the returned ``x`` (``inf`` when
        ``x`` is None); at least ``bound``, since ``x`` wins by a margin.
    status : str
        ``"optimal"`` (``distance`` is the minimum, up to the solver's gap and
        the margin), ``"infeasible"`` (proven: nothing within
        ``max_distance``), ``"time_limit"`` (best found when time ran out) or
        ``"heuristic"`` (no optimality proof).
    bound : float
        A proven lower bound on the distance to any input of the class (for
        ``"optimal"``, the infimum, reached only on the decision boundary;
        ``>= max_distance`` when infeasible; 0 when nothing is proven).
    norm : str
    label : int
        The target class.
    info : dict
        ``"margin"``, ``"seconds"``, ``"n_binaries"``, ``"n_unstable"``,
        ``"nodes"``, ``"lp_tightened"``, ``"method"``, ``"rivals"`` (the
        classes whose constraints the MILP kept), ``"rounds"`` (MILPs solved),
        ``"phase_seconds"``, ``"dtype"`` (the caller's, in which ``x`` was
        checked), ``"rejected"`` (inputs the float64 model put in the class
        and the caller's model did not), ``"note"``, ...
    """

    x: Tensor | None
    distance: float
    status: str
    bound: float
    norm: str
    label: int
    info: dict[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:
        return (
            f"Closest(status={self.status!r}, norm={self.norm!r}, label={self.label}, "
            f"distance={self.distance:.6g}, bound={self.bound:.6g})"
        )

    @property
    def found(self) -> bool:
        """Whether an input of the class, confirmed by the model, is returned."""
        return self.x is not None


def closest(
    model: nn.Module | Any,
    x: Any,
    target: ClassTarget,
    norm: str = "linf",
    max_distance: float | None = None,
    time_limit: float = 60.0,
    *,
    bounds: Any = (0.0, 1.0),
    input_shape: Sequence[int] | None = None,
    seed: int = 0,
    margin: float | None = None,
) -> Closest:
    """The input nearest to ``x`` that ``model`` puts in the target class.

    Parameters
    ----------
    model : torch.nn.Module or a fitted scikit-learn MLP
        A classifier (logits, probabilities or log-probabilities); an
        ``MLPClassifier`` is converted by :func:`nninv.model.io.as_module`.
    x : Tensor
        One input, ``(*input_shape)`` or ``(1, *input_shape)``; the answer
        comes back in its dtype and on its device.
    target : ClassTarget
        One class, without confidence.
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
        model's output units) at the returned ``x``. By default the smallest
        of ``1e-9 s, 1e-8 s, ..., 1e-3 s`` (``s`` the largest logit at ``x0``,
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
        For an unknown norm, a target that is not a single-label ClassTarget,
        an ``x`` of the wrong shape or outside ``bounds``, or a negative
        ``max_distance``.

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
    t0 = time.perf_counter()
    model = as_module(model)
    if norm not in NORMS:
        raise NNInvError(f"unknown norm {norm!r}; valid: {', '.join(NORMS)}")
    if not isinstance(target, ClassTarget):
        raise NNInvError(
            f"closest() needs a ClassTarget, got {type(target).__name__}; for an exact "
            "output use preimage(...).project(x)"
        )
    if len(target) != 1 or target.confidence is not None:
        raise NNInvError("closest() needs a ClassTarget with one label and no confidence")
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
    with eval_mode(model):
        chain0 = analyse(model, input_shape)
    model64 = float64_copy(model)
    chain = analyse(model64, chain0.input_shape)
    in_shape = chain.input_shape
    target.check_classes(chain.n_out)
    label = int(target.labels[0])
    x0t = as_input(x, in_shape)
    x_dtype, x_device = caller_kind(x, (torch.float64, torch.device("cpu")))
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
    check = _Checker(model64, in_shape, label, native=model)
    check.margin = margin
    common = {"norm": norm, "label": label}

    def done(xv: np.ndarray | None, status: str, bound: float, info: dict) -> Closest:
        info["seconds"] = time.perf_counter() - t0
        info["dtype"] = str(check.dtype).replace("torch.", "")
        info["rejected"] = check.rejected
        # what comes back is x's dtype; the model's own-dtype check runs that rounding
        # when x and the model share a dtype, else it is checked again
        xr = None if xv is None else torch.from_numpy(xv).to(x_dtype).double().numpy()
        same = x_dtype in (torch.float64, check.dtype)
        if xv is not None and not (check.ok(xv) and (same or check.ok(xr))):
            info["note"] = (
                f"the solver's input is not in class {label} when the model runs it "
                f"({info['dtype']}); not returned"
            )
            info["unverified_x"] = xv
            xv = None
            status = "heuristic" if status != "infeasible" else status
        if xv is None:
            if status != "infeasible":
                warnings.warn(
                    f"closest: no input of class {label} confirmed by the model "
                    f"({info['dtype']}) was found; {info.get('note', 'none within reach')}",
                    stacklevel=3,
                )
            return Closest(None, math.inf, status, bound, info=info, **common)
        xv = xr
        d = _dist(xv - x0, norm)
        bound = min(bound, d)
        if status == "optimal" and d > bound * (1 + SLACK[0]) + SLACK[1]:
            status = "heuristic"
            info["note"] = (
                f"the margin {info.get('margin')} put x at {d:.6g}, beyond the slack "
                f"over the proven bound {bound:.6g}"
            )
        info["logits"] = check.logits(xv)[0]
        return Closest(
            torch.from_numpy(xv.copy()).reshape(1, *in_shape).to(x_device, x_dtype),
            d,
            status,
            bound,
            info=info,
            **common,
        )

    if check.ok(x0):
        return done(x0.copy(), "optimal", 0.0, {"method": "already in class", "margin": 0.0})
    blo, bhi = lo.copy(), hi.copy()
    if max_distance is not None:
        blo, bhi = np.maximum(lo, x0 - max_distance), np.minimum(hi, x0 + max_distance)
    core = peel_class_steps(list(chain.steps))
    pl = all(isinstance(s, Affine) or pl_slope(s) is not None for s in core)
    pl = pl and all(pl_slope(s) is None or 0.0 <= pl_slope(s) < 1.0 for s in core)
    finite = bool(np.isfinite(blo).all() and np.isfinite(bhi).all())
    if pl and (finite or len(core) == 1):
        net = PLNet.from_steps(core, chain.n_in, pl_slope)
        deadline = t0 + time_limit
        if norm == "l2":
            return _l2(
                net,
                check,
                x0,
                blo,
                bhi,
                label,
                max_distance,
                deadline,
                done,
                model64,
                in_shape,
                seed,
            )
        return _exact(
            net,
            check,
            x0,
            blo,
            bhi,
            norm,
            label,
            max_distance,
            deadline,
            done,
            model64,
            in_shape,
            seed,
        )
    if pl and not finite:
        raise NNInvError(
            "the exact MILP needs a bounded domain: pass finite bounds=(lo, hi) or max_distance"
        )
    xv, info = _attack(
        model64, in_shape, x0, label, norm, lo, hi, max_distance, t0 + time_limit, seed, check=check
    )
    info["method"] = "pgd"
    return done(xv, "heuristic", 0.0, info)


def _lp_margin_scale(net: PLNet, x0: np.ndarray) -> float:
    return max(1.0, float(np.abs(net.forward(x0[None])).max()))


def _exact(
    net, check, x0, lo, hi, norm, label, max_distance, deadline, done, model64, in_shape, seed
):  # type: ignore[no-untyped-def]
    """MILP (or LP for no hidden layer) for linf/l1, then a verified polish.

    Measured on a 784-128-10 MNIST MLP (``benchmarks/bench_preimage.py --part b``):
    the ideal cuts of Anderson et al. (2020), in the tightening LPs or in the
    MILP, raise the root bound but make HiGHS's LPs denser and slower, so they
    are not used here (:func:`nninv.geometry._bounds.ideal_cuts` remains for callers).
    """
    info: dict[str, Any] = {"method": "milp" if net.slopes else "lp"}
    phases: dict[str, float] = {}
    info["phase_seconds"] = phases
    clock = [time.perf_counter()]

    def lap(name: str) -> None:
        now = time.perf_counter()
        phases[name] = phases.get(name, 0.0) + now - clock[0]
        clock[0] = now

    radius = max_distance
    x_pgd = None
    if net.slopes:
        # A verified input from a quick gradient search bounds the optimum from above,
        # so the search can be restricted to that radius without losing it; the box
        # shrinks, fewer neurons are unstable and every big-M constant tightens.
        budget = time.perf_counter() + 0.1 * max(0.0, deadline - time.perf_counter())
        x_pgd, _ = _attack(
            model64,
            in_shape,
            x0,
            label,
            norm,
            lo,
            hi,
            max_distance,
            budget,
            seed,
            steps=50,
            restarts=4,
            rounds=8,
            check=check,
        )
        if x_pgd is not None:
            d_ub = _dist(x_pgd - x0, norm)
            info["pgd_distance"] = d_ub
            if radius is None or d_ub < radius:
                radius = d_ub * (1 + 1e-9) + 1e-12
                lo = np.maximum(lo, x0 - radius)
                hi = np.minimum(hi, x0 + radius)
        lap("pgd")
        if x_pgd is not None:
            # the closest input in the gradient search's own activation region (one LP) is
            # often the optimum itself; as the first incumbent it lets branch and bound
            # prune from the start, and its radius shrinks the box further
            x_reg, _ = _polish(
                net,
                check,
                [_pattern(net, x_pgd)],
                interval_bounds(net, lo, hi),
                lo,
                hi,
                x0,
                norm,
                label,
            )
            if x_reg is not None and _dist(x_reg - x0, norm) < _dist(x_pgd - x0, norm):
                x_pgd = x_reg
                d_ub = _dist(x_pgd - x0, norm)
                info["region_distance"] = d_ub
                radius = d_ub * (1 + 1e-9) + 1e-12
                lo = np.maximum(lo, x0 - radius)
                hi = np.minimum(hi, x0 + radius)
            lap("region")
    bounds = interval_bounds(net, lo, hi)
    n_unst = [int(((l < 0) & (u > 0)).sum()) for l, u in bounds]
    info["n_unstable_interval"] = n_unst
    if net.slopes:
        budget = time.perf_counter() + 0.4 * max(0.0, deadline - time.perf_counter())
        # neurons whose binaries the MILP never needs (below) need no tighter bounds either
        skip = monotone_neurons(net, label)
        bounds, n_lp, empty = tighten(net, bounds, lo, hi, label, budget, skip=skip)
        info["lp_tightened"] = n_lp
        lap("tighten")
        if empty:
            # the LP relaxation has no input of the class in the box: neither has the MILP
            bound = max_distance if max_distance is not None else math.inf
            if x_pgd is not None:
                info["note"] = "relaxation infeasible at the radius of a verified input"
                return done(x_pgd, "heuristic", 0.0, info)
            return done(None, "infeasible", bound, info)
    info["n_unstable"] = [int(((l < 0) & (u > 0)).sum()) for l, u in bounds]
    # The class constraints against rivals that cannot win near x0 are rarely binding;
    # they are left out (a relaxation: its bound stays valid) and added back when the
    # optimum violates them. Fewer constraints also free more binaries.
    others = [j for j in range(net.Ws[-1].shape[0]) if j != label]
    rivals = set(others)
    if net.slopes:
        rivals = {_top_rival(net, x0, label)}
        if x_pgd is not None:
            rivals.add(_top_rival(net, x_pgd, label))
    scale = _lp_margin_scale(net, x0)
    n = x0.size
    if norm == "linf" and x_pgd is not None:
        found = _verify_linf(
            net, check, bounds, lo, hi, x0, label, rivals, others, x_pgd, deadline, info, lap
        )
        if found is not None:
            x_pgd, proven, r = found
            if proven:
                return done(x_pgd, "optimal", r, info)
    info["rounds"] = 0
    while True:
        info["rounds"] += 1
        enc = encode(
            net,
            bounds,
            lo,
            hi,
            x0=x0,
            norm=norm,
            label=label,
            max_distance=radius,
            rivals=sorted(rivals),
            monotone=True,
        )
        info["n_binaries"] = enc.info["n_binaries"]
        info["rivals"] = sorted(rivals)
        lap("encode")
        start = None
        if x_pgd is not None:
            start = start_point(net, enc, x_pgd, x0, norm)
        left = max(1.0, deadline - time.perf_counter())
        # with a verified start near the optimum, HiGHS's primal heuristics only cost time
        res = solve_milp(enc, None, left, 1e-6, start, heuristics=x_pgd is None)
        lap("milp")
        info["nodes"] = info.get("nodes", 0) + res["nodes"]
        info["solver_status"] = res["message"]
        beaten: set[int] = set()
        if res["x"] is not None and len(rivals) < len(others):
            out = net.forward(res["x"][None, :n])[0]
            beaten = {j for j in others if out[j] - out[label] > 1e-7 * scale} - rivals
        if not beaten or res["status"] != 0 or time.perf_counter() > deadline:
            break
        rivals |= beaten
    if res["status"] == 2:
        if x_pgd is not None:
            # only rounding can make the radius of a verified input infeasible
            info["note"] = "MILP infeasible at the radius of a verified input; returning it"
            return done(x_pgd, "heuristic", 0.0, info)
        bound = max_distance if max_distance is not None else math.inf
        return done(None, "infeasible", bound, info)
    dual = res["dual_bound"]
    if res["x"] is None:
        if res["status"] == 1:  # time limit without an incumbent
            bound = float(dual) if dual is not None and np.isfinite(dual) else 0.0
            return done(x_pgd, "time_limit", max(bound, 0.0), info)
        raise NNInvError(f"the MILP failed: {res['message']}")
    # optimal only when the optimum of the relaxation is in the class
    status = "optimal" if res["status"] == 0 and not beaten else "time_limit"
    fun = float(res["fun"])
    bound = fun if dual is None or not np.isfinite(dual) else min(fun, float(dual))
    bound = max(0.0, bound)
    v = res["x"]
    # the pattern of the network at the MILP's x first: the binaries of neurons left
    # continuous (monotone) need not match it, and rounding may put x elsewhere
    alt = _pattern(net, v[:n])
    patterns = []
    for k, (J, cols) in enumerate(enc.delta_index):
        l, u = bounds[k]
        on = l >= 0
        on[J] = v[cols] > 0.5
        patterns.append(on)
    x, margin = _polish(net, check, [alt, patterns], bounds, lo, hi, x0, norm, label)
    lap("polish")
    if x is None and check.ok(np.clip(v[:n], lo, hi)):
        x, margin = np.clip(v[:n], lo, hi), 0.0
    info["margin"] = margin
    if x is not None and x_pgd is not None and _dist(x_pgd - x0, norm) < _dist(x - x0, norm):
        x = x_pgd  # only within the solver's gap
    if x is None:
        return done(x_pgd, "heuristic", bound, info)
    return done(x, status, bound, info)


#: Relative gap of the linf proof in :func:`_verify_linf`: the incumbent at distance
#: ``d`` is optimal when no input of the class lies within ``d * (1 - VERIFY_GAP)``.
VERIFY_GAP = 1e-6
#: Better incumbents :func:`_verify_linf` may find before the full MILP takes over.
VERIFY_ROUNDS = 3
#: Rounds of separation of the ideal cuts in each of :func:`_verify_linf`'s MILPs.
VERIFY_CUT_ROUNDS = 1


def _verify_linf(net, check, bounds, lo, hi, x0, label, rivals, others, x_inc, deadline, info, lap):  # type: ignore[no-untyped-def]
    """Prove a verified input optimal for linf, or improve it; None without highspy.

    The incumbent at distance ``d`` is optimal (up to :data:`VERIFY_GAP`) when no
    input within radius ``r = d (1 - VERIFY_GAP)`` is in the class. That question
    needs neither the distance variable nor its rows (the radius is the box), so
    its LPs are several times smaller than those of the distance MILP: branch and
    bound minimises the largest rival's lead over the label with the cutoff 0
    (:func:`nninv.geometry._highs.solve_margin`), pruning a node as soon as its relaxation
    proves the class out of reach. On the MNIST MLP of ``bench_preimage.py`` this
    takes 2.6-2.8 s where the distance MILP took 7.5-9.9 s. A point it finds in the
    class is polished inside its activation region (one LP) into a closer
    incumbent, and the question is asked again, at most :data:`VERIFY_ROUNDS`
    times. The proof against a subset of rivals holds for all of them (fewer
    constraints); a point beaten by another class adds that class to ``rivals``.

    Returns ``(x, proven, r)``: ``proven`` True with the bound ``r``, or the best
    incumbent found so far with ``proven`` False; None without highspy.
    """
    n = x0.size
    scale = _lp_margin_scale(net, x0)
    for _ in range(VERIFY_ROUNDS + len(others)):
        d_inc = _dist(x_inc - x0, "linf")
        r = d_inc * (1 - VERIFY_GAP)
        lo_r, hi_r = np.maximum(lo, x0 - r), np.minimum(hi, x0 + r)
        if np.any(lo_r > hi_r):  # the box [lo, hi] itself is farther than r
            return x_inc, True, r
        enc = encode(
            net,
            bounds,
            lo_r,
            hi_r,
            label=label,
            rivals=sorted(rivals),
            monotone=True,
            margin_objective=True,
        )
        # the ideal formulation's cuts (Anderson et al. 2020): on these small LPs they
        # pay, 7.2 -> 1.8 s on the slowest query of bench_preimage.py
        cuts, cub, _ = ideal_cuts(enc, deadline, max_rounds=VERIFY_CUT_ROUNDS)
        left = deadline - time.perf_counter()
        if left <= 0:
            return x_inc, False, r
        out = solve_margin(enc, 0.0, left, (cuts, cub))
        lap("verify")
        if out is None:
            return None
        info["nodes"] = info.get("nodes", 0) + out["nodes"]
        info["verify_rounds"] = info.get("verify_rounds", 0) + 1
        info["n_binaries"] = enc.info["n_binaries"]
        info["rivals"] = sorted(rivals)
        if out["status"] == "none":
            z = net.forward(x_inc[None])[0]
            info["margin"] = float(z[label] - np.delete(z, label).max())
            return x_inc, True, r
        if out["status"] != "found":
            return x_inc, False, r
        xf = np.clip(out["x"][:n], lo_r, hi_r)
        z = net.forward(xf[None])[0]
        beaten = {j for j in others if z[j] - z[label] > 1e-7 * scale} - rivals
        if beaten:
            rivals |= beaten
            continue
        x_new, _ = _polish(net, check, [_pattern(net, xf)], bounds, lo_r, hi_r, x0, "linf", label)
        lap("polish")
        if x_new is None and check.ok(xf):
            x_new = xf
        if x_new is None or _dist(x_new - x0, "linf") >= d_inc:
            return x_inc, False, r
        x_inc = x_new
    return x_inc, False, r


def _pattern(net: PLNet, x: np.ndarray) -> list[np.ndarray]:
    """The activation pattern (``z >= 0`` per hidden layer) of the network at ``x``."""
    out, h = [], x
    for W, b, a in zip(net.Ws[:-1], net.bs[:-1], net.slopes):
        z = W @ h + b
        out.append(z >= 0)
        h = np.where(z >= 0, z, a * z)
    return out


def _top_rival(net: PLNet, x: np.ndarray, label: int) -> int:
    out = net.forward(x[None])[0].copy()
    out[label] = -np.inf
    return int(np.argmax(out))


def _polish(net, check, patterns, bounds, lo, hi, x0, norm, label):  # type: ignore[no-untyped-def]
    """Re-solve inside the region with the class winning by a margin until the model
    confirms it: ``check.margin``, else a growing one (:func:`_margins`)."""
    for pattern in patterns:
        for margin in _margins(check, net, x0):
            x, _ = region_lp(net, pattern, bounds, lo, hi, x0, norm, label, margin)
            if x is None:
                break
            if check.ok(x):
                return x, margin
    return None, 0.0


def _margins(check, net: PLNet, x0: np.ndarray) -> list[float]:  # type: ignore[no-untyped-def]
    """The margins to try, smallest first: the caller's, or ``1e-9 s ... 1e-3 s``.

    The ladder starts near the rounding of the caller's dtype (``1e-7 s`` for a
    float32 model): smaller margins cannot survive it, and each one tried costs
    an LP (on bench_preimage's query 4, 11 s of polish against 0.4 s).
    """
    if check.margin is not None:
        return [check.margin]
    scale = _lp_margin_scale(net, x0)
    eps = float(torch.finfo(check.dtype).eps)
    start = max(-9, min(-3, math.floor(math.log10(8 * eps))))
    return [10.0**k * scale for k in range(start, -2)]


def _l2(net, check, x0, lo, hi, label, max_distance, deadline, done, model64, in_shape, seed):  # type: ignore[no-untyped-def]
    if not net.slopes:
        # one affine layer: the class is a polytope and the projection QP is exact
        for margin in _margins(check, net, x0):
            G, g = region_polytope(net, [], [], label, margin)
            poly, _ = Polyhedron.from_constraints(
                None,
                None,
                torch.from_numpy(G),
                torch.from_numpy(g),
                torch.from_numpy(lo),
                torch.from_numpy(hi),
            )
            centre, _ = poly.centre()
            if centre is None:
                bound = max_distance if max_distance is not None else math.inf
                return done(None, "infeasible", bound, {"method": "qp"})
            res = poly.project(torch.from_numpy(x0))
            x = res.x.numpy()
            if check.ok(x):
                info = {"method": "qp", "margin": margin, "kkt": res.kkt}
                d = _dist(x - x0, "l2")
                if max_distance is not None and d > max_distance:
                    return done(None, "infeasible", max_distance, info)
                return done(x, "optimal", d, info)
        info = {"method": "qp", "note": "no projection onto the class polytope was confirmed"}
        return done(None, "heuristic", 0.0, info)
    # deeper ReLU nets: the exact linf distance bounds the l2 distance from below
    ex = _exact(
        net,
        check,
        x0,
        lo,
        hi,
        "linf",
        label,
        max_distance,
        deadline,
        lambda *a: a,
        model64,
        in_shape,
        seed,
    )
    xv, status, bound, info = ex
    info = dict(info)
    info["method"] = "linf-milp bound + region QP + pgd"
    if status == "infeasible":
        return done(None, "infeasible", bound, info)
    cands = []
    if xv is not None:
        pattern = []
        h = xv
        for W, b, a in zip(net.Ws[:-1], net.bs[:-1], net.slopes):
            z = W @ h + b
            pattern.append(z >= 0)
            h = np.where(z >= 0, z, a * z)
        bounds = interval_bounds(net, lo, hi)
        for margin in _margins(check, net, x0):
            G, g = region_polytope(net, pattern, bounds, label, margin)
            poly, _ = Polyhedron.from_constraints(
                None,
                None,
                torch.from_numpy(G),
                torch.from_numpy(g),
                torch.from_numpy(lo),
                torch.from_numpy(hi),
            )
            if poly.centre()[0] is None:
                continue
            x = poly.project(torch.from_numpy(x0)).x.numpy()
            if check.ok(x):
                cands.append(x)
                break
        cands.append(xv)
    xa, ia = _attack(
        model64, in_shape, x0, label, "l2", lo, hi, max_distance, deadline, seed, check=check
    )
    if xa is not None:
        cands.append(xa)
    info["pgd_found"] = xa is not None
    if not cands:
        return done(None, "heuristic", bound, info)
    best = min(cands, key=lambda v: _dist(v - x0, "l2"))
    return done(best, "heuristic", bound, info)

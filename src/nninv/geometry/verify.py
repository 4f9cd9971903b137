"""Answer a VNN-LIB property exactly: a confirmed counterexample, or a proof that none exists.

:func:`verify` asks whether some input in a box sends the network into an
output set (a union of polyhedra ``A y <= b``, :class:`~nninv.targets.OutputSet`).
For each case of the property and each polyhedron of its output set, in order:

1. a projected-gradient attack on the box, minimising ``max(A y - b)``
   (``sat`` as soon as the model confirms a point);
2. bound propagation (interval arithmetic and CROWN's linear relaxation,
   :mod:`nninv.bounds`; alpha-CROWN on what is left): a polyhedron
   with a row whose lower bound over the box exceeds its right-hand side is
   unreachable;
3. for the polyhedra still open, the bounds of the later layers tightened by
   LPs over the relaxation, then the LP relaxation of the polyhedron and the
   exact MILP (HiGHS): infeasible proves it unreachable, a MILP solution is
   a candidate.

A candidate is reported ``sat`` only after the model, run in its own dtype
(and, for an ONNX file, onnxruntime) puts the rounded input inside the box
and its output inside the set, with no tolerance. A wrong ``unsat`` is the
worst error: bounds are computed in float64 and must exceed the right-hand
side by a relative ``1e-9`` before a polyhedron counts as unreachable.
Max pooling is read as extra ReLU layers (:mod:`nninv.model.pooling`, an exact
rewrite), so steps 2-3 run through it; other non-piecewise-linear layers leave
only the attack (``unknown`` unless it finds a counterexample).
"""

from __future__ import annotations

__all__ = ["Certificate", "Verification", "verify"]

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

from ..bounds import Layers, alpha_crown, crown, layer_bounds
from ..errors import NNInvError
from ..model.chain import Affine, Unsupported, analyse, eval_mode
from ..model.pooling import MAXPOOL, maxpool_after
from ..targets import OutputSet
from ..vnnlib import Case, Property, read
from ._feasibility import search, tighten
from ._inputs import model_kind, pl_slope

_F64 = torch.float64
#: Steps of alpha-CROWN on the layers and on each polyhedron the plain bounds leave open.
ALPHA_STEPS = 20
#: HiGHS options: presolve only slows these models down (dense rows; measured on mnist_fc:
#: 11.5 s against 16.5 s on the slowest polyhedron of prop_6_0.03).
_HIGHS = {"presolve": "off"}
#: A bound counts as a proof only when it clears the right-hand side by this much (relative).
PROOF_SLACK = 1e-9

Status = Literal["sat", "unsat", "unknown", "timeout"]


@dataclass(frozen=True)
class Certificate:
    """How one polyhedron of one case was shown unreachable.

    ``method`` is ``"crown"`` or ``"alpha-crown"`` (``bound`` is the proven
    lower bound of ``max_r (A y - b)_r``, positive) or ``"milp"`` (``nodes``
    branch-and-bound nodes over ``binaries`` unstable neurons).
    """

    case: int
    part: int
    method: str
    bound: float
    nodes: int
    binaries: int
    seconds: float


@dataclass(frozen=True)
class Verification:
    """The answer to a property.

    Attributes
    ----------
    status : {"sat", "unsat", "unknown", "timeout"}
        ``sat``: ``x`` is a counterexample confirmed by the model in its own
        dtype (and by onnxruntime for an ONNX file); ``unsat``: every case and
        polyhedron has a :class:`Certificate`; ``unknown``: the engine cannot
        decide (a model it cannot encode, or a candidate the model refuses);
        ``timeout``: time ran out first.
    x : Tensor or None
        The counterexample, shape ``(1, *input_shape)``, in the model's dtype.
    y : Tensor or None
        The model's output at ``x`` (its own dtype), shape ``(1, n_outputs)``.
    case, part : int or None
        Which case and which polyhedron of its output set ``x`` reaches.
    certificates : tuple of Certificate
        For ``unsat``, one per polyhedron; for other answers, those proven so far.
    method : str
        What settled it: ``"attack"``, ``"bounds"``, ``"milp"``, ``"bounds+milp"``.
    seconds : float
        Wall time, including the model's analysis.
    info : dict
        ``onnxruntime`` (whether it confirmed ``x``), ``nodes``, ``unstable`` per
        layer of the first case, notes.
    """

    status: Status
    x: Tensor | None
    y: Tensor | None
    case: int | None
    part: int | None
    certificates: tuple[Certificate, ...]
    method: str
    seconds: float
    info: dict = field(default_factory=dict)


class _Confirm:
    """Runs candidates through the model in its own dtype and through onnxruntime."""

    def __init__(self, model: nn.Module, in_shape: tuple[int, ...], onnx_path: str | None):
        self.model, self.shape = model, in_shape
        self.dtype, self.device = model_kind(model)
        self.sess = None
        if onnx_path is not None:
            import onnxruntime as ort

            opts = ort.SessionOptions()
            opts.intra_op_num_threads = 1
            opts.log_severity_level = 3
            self.sess = ort.InferenceSession(onnx_path, opts, providers=["CPUExecutionProvider"])

    def rounded(self, x: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray | None:
        """``x`` in the model's dtype, nudged into the box if rounding left it; None if it can't."""
        np_dtype = torch.empty(0, dtype=self.dtype).numpy().dtype
        xr = np.clip(x, lo, hi).astype(np_dtype)
        for _ in range(4):
            below, above = xr.astype(np.float64) < lo, xr.astype(np.float64) > hi
            if not (below.any() or above.any()):
                return xr.astype(np.float64)
            xr[below] = np.nextafter(xr[below], np_dtype.type(np.inf))
            xr[above] = np.nextafter(xr[above], np_dtype.type(-np.inf))
        return None

    def outputs(self, x: np.ndarray) -> tuple[Tensor, np.ndarray | None]:
        xt = torch.from_numpy(x).reshape(1, *self.shape).to(self.device, self.dtype)
        with torch.no_grad(), eval_mode(self.model):
            y = self.model(xt).detach().to("cpu").reshape(1, -1)
        y_ort = None
        if self.sess is not None:
            inp = self.sess.get_inputs()[0]
            rank = len(inp.shape) if isinstance(inp.shape, list) else len(self.shape) + 1
            feed = x.reshape(self.shape) if rank == len(self.shape) else x.reshape(1, *self.shape)
            feed = feed.astype(torch.empty(0, dtype=self.dtype).numpy().dtype)
            y_ort = np.asarray(self.sess.run(None, {inp.name: feed})[0], np.float64).reshape(1, -1)
        return y, y_ort

    def check(
        self, x: np.ndarray, lo: np.ndarray, hi: np.ndarray, out: OutputSet
    ) -> tuple[np.ndarray, Tensor, bool] | None:
        """``(x_rounded, y, ort_ok)`` when confirmed, else None."""
        xr = self.rounded(x, lo, hi)
        if xr is None:
            return None
        y, y_ort = self.outputs(xr)
        if not bool(out.contains(y.to(_F64))[0]):
            return None
        if y_ort is not None and not bool(out.contains(torch.from_numpy(y_ort))[0]):
            return None
        return xr, y, y_ort is not None


def _layers(model: nn.Module, input_shape: tuple[int, ...] | None) -> tuple[Any, Layers | None]:
    with eval_mode(model):
        chain = analyse(model, input_shape)
    Ws: list[Tensor] = []
    bs: list[Tensor] = []
    slopes: list[float] = []
    n = chain.n_in
    W, b = torch.eye(n, dtype=_F64), torch.zeros(n, dtype=_F64)
    for step in chain.steps:
        if isinstance(step, Affine):
            A, c = step.matrix(_F64)
            W, b = A @ W, A @ b + c
            continue
        if isinstance(step, Unsupported) and type(step.layer.module) in MAXPOOL:
            # max pooling as ReLU layers, exactly (nninv.model.pooling)
            nonneg = bool(slopes) and slopes[-1] == 0.0
            pool, W2, b2 = maxpool_after(step, W.numpy(), b.numpy(), nonneg)
            for E, e in pool:
                Ws.append(torch.from_numpy(E))
                bs.append(torch.from_numpy(e))
                slopes.append(0.0)
            W, b = torch.from_numpy(W2), torch.from_numpy(b2)
            continue
        a = pl_slope(step)
        if a is None or not 0.0 <= a < 1.0:
            return chain, None
        Ws.append(W)
        bs.append(b)
        slopes.append(float(a))
        W, b = torch.eye(W.shape[0], dtype=_F64), torch.zeros(W.shape[0], dtype=_F64)
    Ws.append(W)
    bs.append(b)
    return chain, Layers(Ws, bs, slopes)


def _slack(C: Tensor, d: Tensor, bounds: list, net: Layers) -> Tensor:
    """How far a bound must clear ``d`` to count: relative to the magnitudes involved."""
    lu = bounds[-1] if bounds else (torch.zeros(1, dtype=_F64), torch.zeros(1, dtype=_F64))
    hmax = float(torch.maximum(lu[0].abs(), lu[1].abs()).max()) if bounds else 1.0
    scale = (C.abs() @ net.Ws[-1].abs()).sum(1) * max(hmax, 1.0) + d.abs() + 1.0
    return PROOF_SLACK * scale


def _attack(
    f: Callable[[Tensor], Tensor],
    lo: Tensor,
    hi: Tensor,
    parts: list[tuple[Tensor, Tensor]],
    steps: int,
    restarts: int,
    gen: torch.Generator,
    starts: list[Tensor] | None = None,
) -> list[tuple[float, np.ndarray, int]]:
    """PGD on the box towards each polyhedron; candidates ``(violation, x, part)``, best first.

    Each polyhedron gets ``restarts`` runs of signed-gradient descent on
    ``max(A y - b)``: from the box's centre (or ``starts[p]``, e.g. the corner
    where its linear bound is lowest) and from random points; the step shrinks
    geometrically from a fifth of the box's width.
    """
    P = len(parts)
    if P == 0:
        return []
    n = lo.numel()
    width = hi - lo
    x = lo + width * torch.rand(P * restarts, n, generator=gen, dtype=_F64)
    for p in range(P):
        x[p * restarts] = (lo + hi) / 2 if starts is None else starts[p]
    owner = torch.arange(P).repeat_interleave(restarts)
    best_v = torch.full((P * restarts,), math.inf, dtype=_F64)
    best_x = x.clone()
    decay = (1e-2) ** (1.0 / max(steps - 1, 1))
    for it in range(steps):
        x.requires_grad_(True)
        y = f(x)
        vs = []
        for p, (A, b) in enumerate(parts):
            yp = y[p * restarts : (p + 1) * restarts]
            if A.shape[0] == 0:  # the whole output space: any input reaches it
                vs.append(yp[:, 0] * 0.0 - 1.0)
            else:
                vs.append((yp @ A.T - b).max(dim=1).values)
        v = torch.cat(vs)
        g = torch.autograd.grad(v.sum(), x)[0]
        with torch.no_grad():
            vd = v.detach()
            better = vd < best_v
            best_v = torch.where(better, vd, best_v)
            best_x[better] = x.detach()[better]
            if bool((best_v < 0).any()) and it >= steps // 4:
                break
            step = 0.2 * width * decay**it
            x = torch.minimum(torch.maximum(x.detach() - step * g.sign(), lo), hi)
    order = torch.argsort(best_v)
    return [(float(best_v[i]), best_x[i].numpy(), int(owner[i])) for i in order if best_v[i] <= 0.0]


def verify(
    model: nn.Module | str | Path,
    prop: Property | str | Path,
    time_limit: float = 120.0,
    *,
    input_shape: tuple[int, ...] | None = None,
    seed: int = 0,
    progress: bool = False,
) -> Verification:
    """Decide a VNN-LIB property on a network: ``sat`` with a confirmed input, or ``unsat``.

    Parameters
    ----------
    model : torch.nn.Module, or a path to a model file (ONNX, Keras, ...)
        For an ONNX file, counterexamples are also confirmed by onnxruntime.
        The exact engine handles ReLU and leaky-ReLU networks (any affine
        layers: linear, convolution, batch norm); other models get the attack
        only (``sat`` or ``unknown``).
    prop : Property, or a path to a ``.vnnlib`` (or ``.vnnlib.gz``) file
    time_limit : float
        Seconds for everything after loading; past it the answer is ``timeout``.
    input_shape : tuple of int, optional
        The model's input shape when it does not say; ``X_i`` is the i-th
        element of the flattened input (C order).
    seed : int
        Seeds the attack's random starts.
    progress : bool
        Show a tqdm bar over the exact searches on stderr.

    Returns
    -------
    Verification

    Raises
    ------
    NNInvError
        For a property whose variable counts do not match the model, or a bad file.

    Examples
    --------
    >>> from nninv.targets import OutputSet
    >>> from nninv.vnnlib import Case, Property
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> f = nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 1)).double()
    >>> box = Case(torch.zeros(2, dtype=torch.float64), torch.ones(2, dtype=torch.float64),
    ...            OutputSet.linear([[-1.0]], [-100.0]))          # y >= 100 ?
    >>> verify(f, Property((box,), 2, 1)).status
    'unsat'
    """
    t0 = time.perf_counter()
    if not time_limit > 0:
        raise NNInvError(f"time_limit must be positive, got {time_limit}")
    onnx_path = None
    if isinstance(model, (str, Path)):
        from ..model.io import load_model

        if Path(model).suffix.lower() == ".onnx":
            onnx_path = str(model)
        model = load_model(model)
    if not isinstance(prop, Property):
        prop = read(prop)
    try:
        chain, net = _layers(model, tuple(input_shape) if input_shape else None)
    except NNInvError:
        if input_shape is not None or getattr(model, "input_shape", None) is not None:
            raise
        # a module that does not say its input shape: the property's flat input
        chain, net = _layers(model, (prop.n_inputs,))
    prop.check_model(chain.input_shape, chain.n_out)
    deadline = t0 + float(time_limit)
    confirm = _Confirm(model, chain.input_shape, onnx_path)
    gen = torch.Generator().manual_seed(seed)
    if net is not None:
        f = net.forward
    else:
        from ._inputs import float64_copy

        m64 = float64_copy(model)

        def f(x: Tensor) -> Tensor:
            return m64(x.reshape(-1, *chain.input_shape)).reshape(x.shape[0], -1)

    run = _Run(t0, deadline, chain.input_shape, net, confirm, f, gen)
    if progress:
        from tqdm.auto import tqdm

        total = sum(len(c.output.parts) for c in prop.cases)
        run.bar = tqdm(total=total, desc="verify", unit="part", leave=False)
    try:
        for ci, case in enumerate(prop.cases):
            found = run.case(ci, case)
            if found is not None:
                return found
            if run.timed_out:
                break
    finally:
        if run.bar is not None:
            run.bar.close()
    return run.final()


#: A confirmed counterexample: ``(x_rounded, y, ort_ok, case, part)``.
_Hit = tuple[np.ndarray, Tensor, bool, int, int]
_Pairs = list[tuple[Tensor, Tensor]]


class _Run:
    """The state of one :func:`verify` call: certificates, counters, the deadline."""

    def __init__(
        self,
        t0: float,
        deadline: float,
        in_shape: tuple[int, ...],
        net: Layers | None,
        confirm: _Confirm,
        f: Callable[[Tensor], Tensor],
        gen: torch.Generator,
    ) -> None:
        self.t0, self.deadline, self.in_shape = t0, deadline, in_shape
        self.net, self.confirm, self.f, self.gen = net, confirm, f, gen
        self.certs: list[Certificate] = []
        self.info: dict[str, Any] = {"nodes": 0}
        self.used: set[str] = set()
        self.bar: Any = None
        self.timed_out = False
        self.unknown_note: str | None = None

    def answer(self, status: Status, method: str, hit: _Hit | None = None) -> Verification:
        x: Tensor | None = None
        y: Tensor | None = None
        case: int | None = None
        part: int | None = None
        if hit is not None:
            xr, y, ort_ok, case, part = hit
            x = torch.from_numpy(xr).reshape(1, *self.in_shape).to(self.confirm.dtype)
            self.info["onnxruntime"] = ort_ok
        seconds = time.perf_counter() - self.t0
        return Verification(status, x, y, case, part, tuple(self.certs), method, seconds, self.info)

    def final(self) -> Verification:
        """The answer once every case ran without a counterexample."""
        method = "+".join(m for m in ("bounds", "milp") if m in self.used) or "none"
        if self.net is None:
            self.info["note"] = "the model is not piecewise linear: only the attack ran"
            return self.answer("unknown", "attack")
        if self.timed_out:
            return self.answer("timeout", method)
        if self.unknown_note is not None:
            self.info["note"] = self.unknown_note
            return self.answer("unknown", method)
        return self.answer("unsat", method)

    def try_candidates(
        self,
        cands: list[tuple[float, np.ndarray, int]],
        ci: int,
        lo: np.ndarray,
        hi: np.ndarray,
        out: OutputSet,
    ) -> _Hit | None:
        for _, xv, _ in cands[:8]:
            got = self.confirm.check(xv, lo, hi, out)
            if got is not None:
                y = got[1].to(_F64)
                part = next(i for i, q in enumerate(out.parts) if bool(q.contains(y)[0]))
                return (*got, ci, part)
        return None

    def prove(
        self,
        net: Layers,
        ci: int,
        parts: _Pairs,
        which: Iterable[int],
        bounds: _Pairs,
        lo: Tensor,
        hi: Tensor,
        steps: int,
        corners: dict[int, Tensor],
    ) -> list[int]:
        """Certify the polyhedra ``which`` by bounds; return those left open."""
        left = []
        for pi in which:
            A, b = parts[pi]
            if A.shape[0] == 0:
                left.append(pi)
                continue
            tb = time.perf_counter()
            slack = _slack(A, b, bounds, net)
            lb, xc = crown(net, len(net.slopes), A, bounds, lo, hi, corner=True)
            corners[pi] = xc[int(torch.argmin(lb - b))]
            method = "crown"
            if steps and not bool((lb - b > slack).any()):
                lb = alpha_crown(net, len(net.slopes), A, bounds, lo, hi, steps, stop_at=b + slack)
                method = "alpha-crown"
            lb = lb - b
            ok = lb > slack
            if bool(ok.any()):
                v = float(lb[ok].max())
                self.certs.append(Certificate(ci, pi, method, v, 0, 0, time.perf_counter() - tb))
                self.used.add("bounds")
                if self.bar is not None:
                    self.bar.update(1)
            else:
                left.append(pi)
        return left

    def case(self, ci: int, case: Case) -> Verification | None:
        """Attack, bound and (for what is left) search one case; a ``sat`` answer or None."""
        lo, hi = case.lo, case.hi
        lo_n, hi_n = lo.numpy(), hi.numpy()
        parts = [(q.A, q.b) for q in case.output.parts]
        # 1. a quick attack
        cands = _attack(self.f, lo, hi, parts, steps=30, restarts=4, gen=self.gen)
        hit = self.try_candidates(cands, ci, lo_n, hi_n, case.output)
        if hit is not None:
            self.used.add("attack")
            return self.answer("sat", "attack", hit)
        if self.net is None:
            return None
        net = self.net
        # 2. bounds: CROWN first, alpha-CROWN (on the layers too) only for what is left
        corners: dict[int, Tensor] = {}
        bounds = layer_bounds(net, lo, hi)
        if ci == 0:
            self.info["unstable"] = [int(((l < 0) & (u > 0)).sum()) for l, u in bounds]
        open_parts = self.prove(net, ci, parts, range(len(parts)), bounds, lo, hi, 0, corners)
        if open_parts and time.perf_counter() < self.deadline:
            # 1b. a longer attack on what bounds left open, from their worst corners
            sub = [parts[p] for p in open_parts]
            starts = [corners.get(p, (lo + hi) / 2) for p in open_parts]
            cands = _attack(self.f, lo, hi, sub, steps=100, restarts=4, gen=self.gen, starts=starts)
            cands = [(v, x, open_parts[p]) for v, x, p in cands]
            hit = self.try_candidates(cands, ci, lo_n, hi_n, case.output)
            if hit is not None:
                return self.answer("sat", "attack", hit)
        if open_parts and time.perf_counter() < self.deadline:
            bounds = layer_bounds(net, lo, hi, alpha_steps=ALPHA_STEPS, start=bounds)
            if ci == 0:
                self.info["unstable_alpha"] = [int(((l < 0) & (u > 0)).sum()) for l, u in bounds]
            open_parts = self.prove(
                net, ci, parts, open_parts, bounds, lo, hi, ALPHA_STEPS, corners
            )
        if open_parts and time.perf_counter() < self.deadline:
            # LP tightening of the later layers: cheap next to the MILPs it shortens
            budget = 0.2 * (self.deadline - time.perf_counter())
            bounds, n_lp = tighten(net, bounds, lo, hi, time.perf_counter() + budget)
            self.info["lps"] = self.info.get("lps", 0) + n_lp
        if time.perf_counter() > self.deadline:
            self.timed_out = True
            return None
        return self.exact(net, ci, case, parts, open_parts, bounds)

    def exact(
        self,
        net: Layers,
        ci: int,
        case: Case,
        parts: _Pairs,
        open_parts: list[int],
        bounds: _Pairs,
    ) -> Verification | None:
        """3. exact MILP per open polyhedron; a ``sat`` answer or None."""
        lo, hi = case.lo, case.hi
        for pi in open_parts:
            left = self.deadline - time.perf_counter()
            if left <= 0:
                self.timed_out = True
                break
            A, b = parts[pi]
            tm = time.perf_counter()
            # the LP relaxation first: cheap, and its infeasibility is a proof too
            res = search(net, bounds, lo, hi, A, b, left, relax=True, options=_HIGHS)
            kind = "lp"
            if res["status"] != "infeasible":
                left = self.deadline - time.perf_counter()
                res = search(net, bounds, lo, hi, A, b, max(left, 1e-3), options=_HIGHS)
                kind = "milp"
            self.info["nodes"] += res["nodes"]
            if res["status"] == "infeasible":
                seconds = time.perf_counter() - tm
                self.certs.append(
                    Certificate(ci, pi, kind, math.nan, res["nodes"], res["binaries"], seconds)
                )
                self.used.add("milp")
                if self.bar is not None:
                    self.bar.update(1)
                continue
            if res["status"] == "found":
                hit = self.confirm_found(net, ci, case, pi, res, bounds)
                if hit is not None:
                    self.used.add("milp")
                    return self.answer("sat", "milp", hit)
                continue
            self.timed_out = time.perf_counter() >= self.deadline - 1e-3
            self.unknown_note = f"case {ci}, part {pi}: HiGHS ended with {res['message']}"
            if self.timed_out:
                break
        return None

    def confirm_found(
        self, net: Layers, ci: int, case: Case, pi: int, res: dict, bounds: _Pairs
    ) -> _Hit | None:
        """The MILP's point confirmed by the model (or its deepest point); None notes why not."""
        lo, hi = case.lo, case.hi
        lo_n, hi_n = lo.numpy(), hi.numpy()
        A, b = case.output.parts[pi].A, case.output.parts[pi].b
        hit = self.try_candidates([(0.0, res["x"], pi)], ci, lo_n, hi_n, case.output)
        if hit is None:
            # the first solution may sit on the boundary: ask for the deepest one
            left = self.deadline - time.perf_counter()
            res = search(net, bounds, lo, hi, A, b, max(left, 1e-3), first=False, options=_HIGHS)
            self.info["nodes"] += res["nodes"]
            if res["x"] is not None:
                hit = self.try_candidates([(0.0, res["x"], pi)], ci, lo_n, hi_n, case.output)
        if hit is None:
            self.unknown_note = (
                f"case {ci}, part {pi}: the MILP's input (max(Ay-b) = {res['t']}) is "
                "not confirmed by the model in its own dtype"
            )
        return hit

"""Answer a VNN-LIB property exactly: a confirmed counterexample, or a proof that none exists.

:func:`verify` asks whether some input in a box sends the network into an
output set (a union of polyhedra ``A y <= b``, :class:`~nninv.targets.OutputSet`).
For each case of the property and each polyhedron of its output set, in order:

1. a projected-gradient attack on the box, minimising ``max(A y - b)``
   (``sat`` as soon as the model confirms a point);
2. bound propagation (interval arithmetic and CROWN's linear relaxation,
   :mod:`nninv.geometry._crown`; alpha-CROWN on what is left): a polyhedron
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
"""

from __future__ import annotations

__all__ = ["Certificate", "Verification", "verify"]

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

from ..errors import NNInvError
from ..model.chain import Affine, analyse, eval_mode
from ..targets import OutputSet
from ..vnnlib import Property, read
from ._crown import Layers, alpha_crown, crown, layer_bounds
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

    def check(self, x: np.ndarray, lo: np.ndarray, hi: np.ndarray, out: OutputSet):  # type: ignore[no-untyped-def]
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
    f,  # type: ignore[no-untyped-def]
    lo: Tensor,
    hi: Tensor,
    parts: list,
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

    certs: list[Certificate] = []
    info: dict[str, Any] = {"nodes": 0}
    used = set()

    def answer(status: Status, method: str, hit=None) -> Verification:  # type: ignore[no-untyped-def]
        x = y = None
        case = part = None
        if hit is not None:
            xr, y, ort_ok, case, part = hit
            x = torch.from_numpy(xr).reshape(1, *chain.input_shape).to(confirm.dtype)
            info["onnxruntime"] = ort_ok
        return Verification(
            status, x, y, case, part, tuple(certs), method, time.perf_counter() - t0, info
        )

    def try_candidates(cands, ci: int, lo: np.ndarray, hi: np.ndarray, out: OutputSet):  # type: ignore[no-untyped-def]
        for _, xv, _ in cands[:8]:
            got = confirm.check(xv, lo, hi, out)
            if got is not None:
                y = got[1].to(_F64)
                part = next(i for i, q in enumerate(out.parts) if bool(q.contains(y)[0]))
                return (*got, ci, part)
        return None

    def prove(ci, parts, which, bounds, lo, hi, steps, corners):  # type: ignore[no-untyped-def]
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
                certs.append(Certificate(ci, pi, method, v, 0, 0, time.perf_counter() - tb))
                used.add("bounds")
                if bar is not None:
                    bar.update(1)
            else:
                left.append(pi)
        return left

    bar = None
    if progress:
        from tqdm.auto import tqdm

        total = sum(len(c.output.parts) for c in prop.cases)
        bar = tqdm(total=total, desc="verify", unit="part", leave=False)
    timed_out = False
    unknown_note = None
    try:
        for ci, case in enumerate(prop.cases):
            lo, hi = case.lo, case.hi
            lo_n, hi_n = lo.numpy(), hi.numpy()
            parts = [(q.A, q.b) for q in case.output.parts]
            # 1. a quick attack
            cands = _attack(f, lo, hi, parts, steps=30, restarts=4, gen=gen)
            hit = try_candidates(cands, ci, lo_n, hi_n, case.output)
            if hit is not None:
                used.add("attack")
                return answer("sat", "attack", hit)
            if net is None:
                continue
            # 2. bounds: CROWN first, alpha-CROWN (on the layers too) only for what is left
            corners: dict[int, Tensor] = {}
            bounds = layer_bounds(net, lo, hi)
            if ci == 0:
                info["unstable"] = [int(((l < 0) & (u > 0)).sum()) for l, u in bounds]
            open_parts = prove(ci, parts, range(len(parts)), bounds, lo, hi, 0, corners)
            if open_parts and time.perf_counter() < deadline:
                # 1b. a longer attack on what bounds left open, from their worst corners
                sub = [parts[p] for p in open_parts]
                starts = [corners.get(p, (lo + hi) / 2) for p in open_parts]
                cands = _attack(f, lo, hi, sub, steps=100, restarts=4, gen=gen, starts=starts)
                cands = [(v, x, open_parts[p]) for v, x, p in cands]
                hit = try_candidates(cands, ci, lo_n, hi_n, case.output)
                if hit is not None:
                    return answer("sat", "attack", hit)
            if open_parts and time.perf_counter() < deadline:
                bounds = layer_bounds(net, lo, hi, alpha_steps=ALPHA_STEPS, start=bounds)
                if ci == 0:
                    info["unstable_alpha"] = [int(((l < 0) & (u > 0)).sum()) for l, u in bounds]
                open_parts = prove(ci, parts, open_parts, bounds, lo, hi, ALPHA_STEPS, corners)
            if open_parts and time.perf_counter() < deadline:
                # LP tightening of the later layers: cheap next to the MILPs it shortens
                budget = 0.2 * (deadline - time.perf_counter())
                bounds, n_lp = tighten(net, bounds, lo, hi, time.perf_counter() + budget)
                info["lps"] = info.get("lps", 0) + n_lp
            if time.perf_counter() > deadline:
                timed_out = True
                break
            # 3. exact MILP per open polyhedron
            for pi in open_parts:
                left = deadline - time.perf_counter()
                if left <= 0:
                    timed_out = True
                    break
                A, b = parts[pi]
                tm = time.perf_counter()
                # the LP relaxation first: cheap, and its infeasibility is a proof too
                res = search(net, bounds, lo, hi, A, b, left, relax=True, options=_HIGHS)
                kind = "lp"
                if res["status"] != "infeasible":
                    left = deadline - time.perf_counter()
                    res = search(net, bounds, lo, hi, A, b, max(left, 1e-3), options=_HIGHS)
                    kind = "milp"
                info["nodes"] += res["nodes"]
                if res["status"] == "infeasible":
                    certs.append(
                        Certificate(
                            ci,
                            pi,
                            kind,
                            math.nan,
                            res["nodes"],
                            res["binaries"],
                            time.perf_counter() - tm,
                        )
                    )
                    used.add("milp")
                    if bar is not None:
                        bar.update(1)
                    continue
                if res["status"] == "found":
                    hit = try_candidates([(0.0, res["x"], pi)], ci, lo_n, hi_n, case.output)
                    if hit is None:
                        # the first solution may sit on the boundary: ask for the deepest one
                        left = deadline - time.perf_counter()
                        res = search(
                            net, bounds, lo, hi, A, b, max(left, 1e-3), first=False, options=_HIGHS
                        )
                        info["nodes"] += res["nodes"]
                        if res["x"] is not None:
                            hit = try_candidates([(0.0, res["x"], pi)], ci, lo_n, hi_n, case.output)
                    if hit is not None:
                        used.add("milp")
                        return answer("sat", "milp", hit)
                    unknown_note = (
                        f"case {ci}, part {pi}: the MILP's input (max(Ay-b) = {res['t']}) is "
                        "not confirmed by the model in its own dtype"
                    )
                    continue
                timed_out = time.perf_counter() >= deadline - 1e-3
                unknown_note = f"case {ci}, part {pi}: HiGHS ended with {res['message']}"
                if timed_out:
                    break
            if timed_out:
                break
    finally:
        if bar is not None:
            bar.close()
    method = "+".join(m for m in ("bounds", "milp") if m in used) or "none"
    if net is None:
        info["note"] = "the model is not piecewise linear: only the attack ran"
        return answer("unknown", "attack")
    if timed_out:
        return answer("timeout", method)
    if unknown_note is not None:
        info["note"] = unknown_note
        return answer("unknown", method)
    return answer("unsat", method)

"""The output side of a preimage and the polyhedral sets it gives.

:func:`exact_output` and :func:`class_output` turn a target into constraints
(:class:`OutCons`) on the output of the last step that remains once the
invertible tail of the network is peeled off (injective activations, a
softmax, a final ReLU); :func:`core_kind` says which kind of set the rest
describes (or why none); :func:`piece` linearises a piecewise-linear network
(ReLU, leaky ReLU, max pooling via :func:`maxpool_windows`) on the
activation region of one input; and :func:`polyhedral` assembles the
:class:`~nninv.geometry._polytope.Polyhedron` of an affine output map with
those constraints, its member or the proof that it is empty
(:class:`PolySet`).
"""

from __future__ import annotations

__all__ = [
    "OutCons",
    "PolySet",
    "class_output",
    "core_kind",
    "exact_output",
    "maxpool_windows",
    "piece",
    "polyhedral",
]

import math
from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import NNInvError
from ..model.chain import Affine, Chain, Elementwise, Shift, Step, Unsupported
from ._inputs import is_maxpool, peel_class_steps, pl_slope
from ._polytope import Polyhedron

_F64 = torch.float64


@dataclass
class OutCons:
    """``Ez h = ez``, ``Gz h <= gz`` on the output ``h`` of ``core`` (flat, m)."""

    core: list[Step]
    Ez: Tensor | None
    ez: Tensor | None
    Gz: Tensor | None
    gz: Tensor | None


def exact_output(chain: Chain, y: Tensor) -> OutCons:
    """The constraints that one output ``y`` (flat) puts on the last remaining step.

    Injective activations at the end are inverted; a final softmax fixes its
    input up to a common shift, a final ReLU fixes the positive entries and
    bounds the zero ones above by 0.
    """
    steps = list(chain.steps)
    z = y.clone()
    i = len(steps)
    while i > 0:
        last = steps[i - 1]
        if not (isinstance(last, Elementwise) and last.act.injective):
            break
        z = last.act.inverse(z)
        i -= 1
    m = z.numel()
    s = steps[i - 1] if i > 0 else None
    if isinstance(s, Shift):
        if i < len(steps):
            raise NNInvError(
                f"{s.label()} is followed by a nonlinear activation; the preimage of a "
                "softmax through another activation has no closed form"
            )
        # softmax(h) = y  <=>  h = log y + c 1: fix everything but the common shift
        P = torch.eye(m, dtype=_F64) - 1.0 / m
        v = z if s.log else torch.log(z)
        return OutCons(steps[: i - 1], P, P @ v, None, None)
    if i > 0 and pl_slope(steps[i - 1]) == 0.0:
        # y = relu(h): h_j = y_j where y_j > 0, h_j <= 0 where y_j = 0
        pos = z > 0
        eye = torch.eye(m, dtype=_F64)
        return OutCons(
            steps[: i - 1], eye[pos], z[pos], eye[~pos], torch.zeros(int((~pos).sum()), dtype=_F64)
        )
    return OutCons(steps[:i], torch.eye(m, dtype=_F64), z, None, None)


def class_output(chain: Chain, c: int) -> OutCons:
    """``z_j <= z_c`` for every ``j``, on the logits ``z`` left once the steps that keep
    the winning class (increasing activations, a softmax) are peeled off."""
    core = peel_class_steps(list(chain.steps))
    m = chain.n_out
    rows = torch.eye(m, dtype=_F64)
    G = rows[[j for j in range(m) if j != c]] - rows[c]
    return OutCons(core, None, None, G, torch.zeros(m - 1, dtype=_F64))


def core_kind(core: list[Step]) -> str:
    """Which kind of set the steps before the output side describe.

    Parameters
    ----------
    core : list of Step
        The steps left once the output side is peeled off (:attr:`OutCons.core`).

    Returns
    -------
    str
        ``"linear"`` (one affine step: a polyhedron), ``"piecewise"``
        (piecewise-linear with non-injective layers, ReLU or max pooling: a
        polytope piece per activation region) or ``"curved"`` (affine layers
        and injective activations: a manifold).

    Raises
    ------
    NNInvError
        For a step with no exact description, a softmax inside the network, or
        a mix of piecewise-linear and smooth layers.
    """
    for s in core:
        if isinstance(s, Unsupported) and not is_maxpool(s):
            raise NNInvError(f"preimage cannot describe {s.label()}: {s.reason}")
        if isinstance(s, Shift):
            raise NNInvError(f"preimage cannot describe {s.label()} inside the network")
    if all(isinstance(s, Affine) for s in core):
        if len(core) != 1:
            raise AssertionError("consecutive affine steps are merged by the analysis")
        return "linear"
    if any((pl_slope(s) == 0.0) or is_maxpool(s) for s in core):
        smooth = [s for s in core if isinstance(s, Elementwise) and pl_slope(s) is None]
        if smooth:
            raise NNInvError(
                f"the network mixes piecewise-linear layers with {smooth[0].label()}; its "
                "preimage is neither a polytope piece nor a smooth manifold"
            )
        return "piecewise"
    return "curved"


# --- the polyhedral kinds -------------------------------------------------------------


@dataclass(frozen=True)
class PolySet:
    """What :func:`polyhedral` finds: the set, and a member or why it is empty.

    Attributes
    ----------
    poly : Polyhedron
        The inputs within the bounds that meet the output's constraints (and
        the region's, for a piece).
    region : Polyhedron or None
        The activation region of a piece within the bounds; None otherwise.
    member : Tensor or None
        ``(n,)`` the centre of the largest inscribed ball; None when empty.
    reason : str or None
        Why the set is empty; None when it has a member.
    info : dict
        ``"n_equalities"``, ``"n_inequalities"``, and ``"around"``,
        ``"radius"``, ``"n_implicit_equalities"`` where they apply.
    """

    poly: Polyhedron
    region: Polyhedron | None
    member: Tensor | None
    reason: str | None
    info: dict[str, Any]

    def keywords(self) -> dict[str, Any]:
        """The fields as keywords of :class:`~nninv.geometry.Preimage` (shallow)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


def maxpool_windows(step: Unsupported) -> tuple[Tensor, tuple[int, ...]]:
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


def piece(core: list[Step], x0: Tensor, n: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
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
        elif isinstance(step, Unsupported) and is_maxpool(step):
            win, _ = maxpool_windows(step)
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


def polyhedral(
    kind: str,
    cons: OutCons,
    M: Tensor,
    m0: Tensor,
    R: Tensor | None,
    r: Tensor | None,
    lo: Tensor,
    hi: Tensor,
    input_shape: tuple[int, ...],
    around: Tensor | None = None,
) -> PolySet:
    """The polyhedron of an affine output map ``h = M x + m0`` with the output's
    constraints and an optional region ``R x <= r``, within ``lo <= x <= hi``.

    Parameters
    ----------
    kind : str
        ``"affine"``, ``"class"`` or ``"piece"`` (it words the reason of an empty set).
    cons : OutCons
        The constraints on ``h``.
    M, m0 : Tensor
        ``(m, n)`` and ``(m,)``: the output map.
    R, r : Tensor or None
        The activation region ``R x <= r`` of a piece, None otherwise.
    lo, hi : Tensor
        ``(n,)`` flat bounds, possibly infinite.
    input_shape : tuple of int
    around : Tensor, optional
        ``(n,)`` the input whose piece this is, kept in ``info["around"]``.

    Returns
    -------
    PolySet
        The set, its region, ``info`` and either ``member`` (the centre of the
        largest inscribed ball) or ``reason`` (why the set is empty), for
        :class:`~nninv.geometry.Preimage`; the caller adds the rest (this
        module sits below the object, so it does not build it).
    """
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
        info["around"] = around.reshape(1, *input_shape)
    if outside > 1e-9:
        reason = (
            f"the target is outside the range of the model's linear map (relative "
            f"distance {outside:.2e})"
        )
        return PolySet(poly, region, None, reason, info)
    centre, radius = poly.centre()
    if centre is None:
        where = "the activation region of around" if kind == "piece" else "the bounds"
        reason = (
            f"no input within {where} reaches the target: the LP for a member is "
            "infeasible (the target is outside the image of the bounded domain)"
        )
        return PolySet(poly, region, None, reason, info)
    info["radius"] = radius
    info["n_implicit_equalities"] = int(poly.E.shape[0]) - rank
    return PolySet(poly, region, centre, None, info)

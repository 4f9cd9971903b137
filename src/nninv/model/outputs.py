"""Checking targets against a model: shapes, finite values, the output layer's range.

A sigmoid output of exactly 1.0 (or 0.0) is not an error: in floating point it
stands for the whole interval of pre-activations that round to it. Such values
are moved to the nearest representable value inside the open range (one ulp),
whose pre-image lies at the edge of that interval, and a
:class:`~nninv.NNInvWarning` says how many were moved. Values that no input can
produce (1.5 through a sigmoid, negative through a softplus, NaN, inf) raise
:class:`~nninv.NNInvError` naming the sample and the output.
"""

from __future__ import annotations

__all__ = ["as_output", "check_range", "class_shortfall", "output_kind", "residual_of"]

import math
import warnings
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..checks import as_batch
from ..errors import NNInvError, NNInvWarning
from ..targets import ClassTarget
from .chain import Chain, Elementwise, Shift


def as_output(
    y: Any, output_shape: tuple[int, ...], dtype: torch.dtype, device: torch.device
) -> Tensor:
    """``y`` as a tensor ``(N, *output_shape)``; a single unbatched output is accepted."""
    if isinstance(y, np.ndarray):
        if y.dtype.kind not in "fiub":
            raise NNInvError(f"target must be real-valued, got an array of dtype {y.dtype}")
        y = torch.from_numpy(np.ascontiguousarray(y))
    if not isinstance(y, Tensor):
        try:
            y = torch.as_tensor(y)
        except Exception:
            raise NNInvError(
                f"target must be a tensor, an array or a ClassTarget, got {type(y).__name__}"
            ) from None
    if not (y.dtype.is_floating_point or y.dtype in (torch.int32, torch.int64, torch.uint8)):
        raise NNInvError(f"target must be real-valued, got dtype {y.dtype}")
    y = y.detach().to(device=device, dtype=dtype)
    y = as_batch(y, output_shape, "target", "the model's outputs")
    if y.shape[0] == 0:
        raise NNInvError("target holds no samples")
    if all_finite(y):
        return y
    bad = ~torch.isfinite(y.reshape(y.shape[0], -1))
    if bool(bad.any()):
        i, j = (int(v) for v in bad.nonzero()[0])
        raise NNInvError(f"target sample {i}, output {j} is {float(y.reshape(len(y), -1)[i, j])}")
    return y


def all_finite(t: Tensor) -> bool:
    """Whether every value of ``t`` is finite, in one pass.

    ``torch.aminmax`` reads ``t`` once and returns NaN if any value is NaN, which
    fails both comparisons below; ``isfinite(t).all()`` costs about 20 times more.
    """
    if t.numel() == 0 or not t.dtype.is_floating_point:
        return True
    lo, hi = torch.aminmax(t)
    return bool(lo > -math.inf) and bool(hi < math.inf)


def _first_bad(mask: Tensor) -> tuple[int, int]:
    i, j = (int(v) for v in mask.nonzero()[0])
    return i, j


def check_range(y: Tensor, chain: Chain) -> tuple[Tensor, int]:
    """Validate flat ``y`` (N, m) against the last step's range; move edge values inside.

    Returns the possibly adjusted ``y`` and the number of values moved.
    """
    last = chain.steps[-1] if chain.steps else None
    moved = 0
    if isinstance(last, Elementwise):
        act = last.act
        # fast path, one pass: y is finite here (as_output checked), so its extremes decide
        mn, mx = torch.aminmax(y)
        lo_ok = (mn >= act.lo) if act.closed_lo else (mn > act.lo)
        if bool(lo_ok & (mx < act.hi)):
            return y, 0
        ok = act.in_range(y)
        edge = torch.zeros_like(ok)
        if math.isfinite(act.lo) and not act.closed_lo:
            edge |= y == act.lo
        if math.isfinite(act.hi):
            edge |= y == act.hi
        bad = ~ok & ~edge
        if bool(bad.any()):
            i, j = _first_bad(bad)
            raise NNInvError(
                f"target sample {i}, output {j} is {float(y[i, j]):g}, outside the range "
                f"{act.describe_range()} of {last.label()}, the output layer; no input "
                "produces it"
            )
        if bool(edge.any()):
            moved = int(edge.sum())
            inside = torch.full_like(
                y,
                (act.lo + act.hi) / 2
                if act.bounded and math.isfinite(act.hi) and math.isfinite(act.lo)
                else 0.0,
            )
            y = torch.where(edge, torch.nextafter(y, inside), y)
            # a value one ulp inside can still round back for wide ranges; guard it
            y = torch.where(edge & ~act.in_range(y), torch.nextafter(y, inside), y)
            warnings.warn(
                f"{moved} target value(s) lie on the edge of the range {act.describe_range()} "
                f"of {last.label()}; each stands for an interval of pre-activations and was "
                "moved one ulp inside it",
                NNInvWarning,
                stacklevel=4,
            )
    elif isinstance(last, Shift):
        if last.log:
            bad = y > 0
            if bool(bad.any()):
                i, j = _first_bad(bad)
                raise NNInvError(
                    f"target sample {i}, output {j} is {float(y[i, j]):g} > 0, "
                    f"impossible for the LogSoftmax output {last.label()}"
                )
            total = torch.logsumexp(y, 1)
        else:
            bad = y < 0
            if bool(bad.any()):
                i, j = _first_bad(bad)
                raise NNInvError(
                    f"target sample {i}, output {j} is {float(y[i, j]):g} < 0, "
                    f"impossible for the Softmax output {last.label()}"
                )
            zero = y == 0
            if bool(zero.any()):
                moved = int(zero.sum())
                y = torch.where(zero, torch.finfo(y.dtype).tiny, y)
                warnings.warn(
                    f"{moved} softmax target value(s) are exactly 0 (an underflow); each was "
                    "moved to the smallest positive normal number",
                    NNInvWarning,
                    stacklevel=4,
                )
            total = y.sum(1).log()
        off = total.abs() > 64 * torch.finfo(y.dtype).eps * y.shape[1] ** 0.5
        if bool(off.any()):
            i = int(off.nonzero()[0])
            what = "logsumexp" if last.log else "sum"
            val = float(total[i]) if last.log else float(total[i].exp())
            raise NNInvError(
                f"target sample {i} has {what} {val:.9g}, but outputs of {last.label()} "
                f"have {what} {'0' if last.log else '1'}"
            )
    return y, moved


def output_kind(chain: Chain | None) -> str:
    """What a model's outputs are, from its last step.

    ``"sigmoid"``, ``"softmax"``, ``"logsoftmax"``, or ``"logits"`` for anything
    else (a linear last layer, another activation, an unanalysable model).
    """
    last = chain.steps[-1] if chain is not None and chain.steps else None
    if isinstance(last, Shift):
        return "logsoftmax" if last.log else "softmax"
    if isinstance(last, Elementwise) and last.act.name == "sigmoid":
        return "sigmoid"
    return "logits"


def residual_of(target: Tensor | ClassTarget, out: Tensor, chain: Chain | None = None) -> Tensor:
    """Per-sample residual of model outputs ``out`` against ``target``.

    For an exact target, ``max |out - y|``. For a :class:`ClassTarget`, the
    shortfall from the target (0 when met), see :func:`class_shortfall`;
    ``chain`` tells what the outputs are (logits, probabilities, ...).
    """
    N = out.shape[0]
    if isinstance(target, ClassTarget):
        return class_shortfall(target, out, output_kind(chain) if chain is not None else None)
    return (out.reshape(N, -1) - target.reshape(N, -1)).abs().amax(1)


def class_shortfall(target: ClassTarget, out: Tensor, kind: str | None = None) -> Tensor:
    """Shortfall of outputs ``out`` (N, C) from a class target (0 when met).

    Parameters
    ----------
    target : ClassTarget
    out : Tensor
        Model outputs ``(N, C)``.
    kind : {"logits", "softmax", "logsoftmax", "sigmoid"}, optional
        What ``out`` holds (:func:`output_kind` reads it from the model). By
        default: probabilities if every row is non-negative and sums to 1,
        else logits.

    Returns
    -------
    Tensor
        ``(N,)``. Without a confidence: ``max(0, max_{j != c} out_j - out_c)``
        in the outputs' own units, so a tie counts as met only when no other
        class is strictly larger. With a confidence ``p``: in probability units,
        ``max(0, p - prob_c, max_{j != c} prob_j - prob_c)``, where ``prob`` is
        the softmax of logits (the outputs themselves after a softmax, their
        exponential after a log-softmax, and each sigmoid output on its own).
        ``1 - prob_c`` is computed without cancellation, so ``p = 1`` is met only
        by a probability that is 1 in exact arithmetic (never, for finite logits).

    Examples
    --------
    >>> z = torch.tensor([[2.0, 0.0], [0.0, 2.0]], dtype=torch.float64)
    >>> class_shortfall(ClassTarget([0, 0]), z)
    tensor([0., 2.], dtype=torch.float64)
    >>> class_shortfall(ClassTarget([0], confidence=1.0), z[:1], "logits") > 0
    tensor([True])
    """
    out = out.reshape(out.shape[0], -1)
    labels = target.labels.to(out.device)
    if labels.numel() != out.shape[0]:
        raise NNInvError(f"ClassTarget has {labels.numel()} labels for {out.shape[0]} samples")
    if kind is None:
        is_prob = bool(((out >= 0) & (out <= 1)).all()) and bool(
            (out.sum(1) - 1).abs().max() < 1e-3
        )
        kind = "softmax" if is_prob else "logits"
    if kind not in ("logits", "softmax", "logsoftmax", "sigmoid"):
        raise NNInvError(
            f"kind must be 'logits', 'softmax', 'logsoftmax' or 'sigmoid', got {kind!r}"
        )
    lab = labels[:, None]
    oc = out.gather(1, lab)[:, 0]
    others = out.scatter(1, lab, -math.inf)
    if target.confidence is None:
        return (others.amax(1) - oc).clamp(min=0)
    p = target.confidence
    if kind == "sigmoid":
        prob, rest = out, 1 - oc
    elif kind == "softmax":
        prob = out
        rest = out.scatter(1, lab, 0.0).sum(1)
    else:
        z = out
        lse = torch.logsumexp(z, 1)
        prob = torch.exp(z - lse[:, None])
        rest = torch.exp(torch.logsumexp(z.scatter(1, lab, -math.inf), 1) - lse)
    pc = prob.gather(1, lab)[:, 0]
    other_p = prob.scatter(1, lab, -math.inf).amax(1)
    short = rest - (1 - p)
    return torch.maximum(short, other_p - pc).clamp(min=0)

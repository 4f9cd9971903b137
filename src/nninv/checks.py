"""Checks every layer shares, written once: counts, box bounds, batches, a model's dtype and device.

Each check returns the cleaned value or raises :class:`~nninv.NNInvError`
naming the argument and the offending value. The rules, in one place:

- **Counts** (:func:`positive_int`): a Python or NumPy integer, not a bool,
  at least ``minimum`` (1 unless said otherwise); ``None`` only where allowed.
- **Bounds** (:func:`as_bounds`): ``None`` (no box) or a pair ``(lo, hi)`` of
  scalars or arrays that broadcast to one input; a side given as ``None`` is
  unbounded (``-inf`` or ``+inf``). ``lo <= hi`` elementwise: ``lo == hi``
  pins that coordinate; NaN is refused.
- **Batches** (:func:`as_batch`): values shaped ``(N, *shape)``; one unbatched
  value shaped ``shape`` gets ``N = 1``.
- **A model's dtype and device** (:func:`model_dtype_device`): those of its
  first floating parameter, else of its first floating buffer; a model with
  neither computes in whatever it is given, which is
  ``torch.get_default_dtype()`` on the CPU unless the caller says otherwise.
"""

from __future__ import annotations

__all__ = ["as_batch", "as_bounds", "model_dtype_device", "positive_int"]

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .errors import NNInvError


def positive_int(value: Any, name: str, *, minimum: int = 1, allow_none: bool = False) -> Any:
    """``value`` as an ``int`` of at least ``minimum``, else NNInvError naming ``name``.

    Parameters
    ----------
    value : Any
        The caller's value: an ``int`` or NumPy integer (a bool is refused).
    name : str
        How the message names it (``"n"``, ``"option max_iter"``, ``"--epochs"``).
    minimum : int
        The smallest value accepted: 1 for a positive count, 0 for a
        non-negative one.
    allow_none : bool
        Accept ``None`` and return it.

    Examples
    --------
    >>> positive_int(3, "n")
    3
    >>> positive_int(0, "retries", minimum=0)
    0
    >>> positive_int(0, "n")
    Traceback (most recent call last):
    ...
    nninv.errors.NNInvError: n must be a positive integer, got 0
    """
    if value is None and allow_none:
        return None
    if (
        isinstance(value, bool | np.bool_)
        or not isinstance(value, int | np.integer)
        or value < minimum
    ):
        what = {1: "a positive integer", 0: "a non-negative integer"}.get(
            minimum, f"an integer >= {minimum}"
        )
        raise NNInvError(f"{name} must be {what}{' or None' if allow_none else ''}, got {value!r}")
    return int(value)


def as_bounds(
    bounds: Any,
    shape: tuple[int, ...],
    *,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str = "cpu",
) -> tuple[Tensor, Tensor]:
    """``(lo, hi)`` as flat tensors of ``prod(shape)`` entries, checked by the one rule.

    Parameters
    ----------
    bounds : None or (lo, hi)
        ``None`` is no box (``-inf``, ``+inf`` everywhere). ``lo`` and ``hi``
        are scalars, arrays or tensors that broadcast to ``shape``, or ``None``
        for an unbounded side. ``lo <= hi`` everywhere; ``lo == hi`` pins the
        coordinate.
    shape : tuple of int
        One input's shape (no batch).
    dtype, device
        Of the tensors returned (float64 on the CPU by default).

    Raises
    ------
    NNInvError
        If ``bounds`` is not a pair, a side does not broadcast, holds NaN, or
        ``lo > hi`` somewhere (the message names the first such input).

    Examples
    --------
    >>> lo, hi = as_bounds((0, None), (2,))
    >>> lo.tolist(), hi.tolist()
    ([0.0, 0.0], [inf, inf])
    """
    n = math.prod(shape)
    if bounds is None:
        bounds = (None, None)
    try:
        lo_in, hi_in = bounds
    except (TypeError, ValueError):
        raise NNInvError(
            f"bounds must be None or a pair (lo, hi), got {type(bounds).__name__}"
        ) from None
    out = []
    for name, v, default in (("lo", lo_in, -math.inf), ("hi", hi_in, math.inf)):
        if isinstance(v, np.ndarray):
            v = torch.from_numpy(np.ascontiguousarray(v))
        try:
            t = torch.as_tensor(default if v is None else v).detach()
            t = t.to(device=device, dtype=dtype)
        except (TypeError, ValueError, RuntimeError):
            raise NNInvError(
                f"bounds {name} must be a number, an array or None, got {type(v).__name__}"
            ) from None
        try:
            t = torch.broadcast_to(t, shape).reshape(n).clone()
        except RuntimeError:
            raise NNInvError(
                f"bounds {name} of shape {tuple(t.shape)} does not broadcast to the input "
                f"shape {tuple(shape)}"
            ) from None
        if bool(torch.isnan(t).any()):
            raise NNInvError(f"bounds {name} contains NaN")
        out.append(t)
    lo, hi = out
    bad = lo > hi
    if bool(bad.any()):
        i = int(bad.nonzero()[0])
        raise NNInvError(
            f"bounds need lo <= hi (lo < hi, or lo == hi to pin an input); got lo > hi at "
            f"input {i} ({float(lo[i])} > {float(hi[i])})"
        )
    return lo, hi


def as_batch(v: Tensor, shape: tuple[int, ...], name: str, what: str = "values") -> Tensor:
    """``v`` shaped ``(N, *shape)``: one unbatched value shaped ``shape`` becomes ``N = 1``.

    Parameters
    ----------
    v : Tensor
        The caller's values.
    shape : tuple of int
        One value's shape.
    name : str
        How the message names ``v`` (``"target"``, ``"y"``).
    what : str
        What ``shape`` describes, for the message (``"the model's outputs"``).

    Raises
    ------
    NNInvError
        If ``v`` is neither ``shape`` nor ``(N, *shape)``.

    Examples
    --------
    >>> tuple(as_batch(torch.zeros(3), (3,), "y").shape)
    (1, 3)
    """
    shape = tuple(shape)
    if tuple(v.shape) == shape:
        v = v.unsqueeze(0)
    if tuple(v.shape[1:]) != shape:
        raise NNInvError(
            f"{name} has shape {tuple(v.shape)} but {what} are shaped "
            f"(N, {', '.join(map(str, shape))})"
        )
    return v


def model_dtype_device(
    model: nn.Module, default: torch.dtype | None = None
) -> tuple[torch.dtype, torch.device]:
    """The dtype and device ``model`` computes in.

    Those of its first floating parameter, else of its first floating buffer
    (a model of batch norms and fixed weights has only buffers). A model with
    neither computes in whatever it is given: ``default`` on the CPU, and
    ``default`` is ``torch.get_default_dtype()`` unless given.

    Examples
    --------
    >>> model_dtype_device(nn.Linear(2, 3).double())
    (torch.float64, device(type='cpu'))
    >>> model_dtype_device(nn.ReLU(), torch.float64)
    (torch.float64, device(type='cpu'))
    """
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype, p.device
    for b in model.buffers():
        if b.is_floating_point():
            return b.dtype, b.device
    return (default if default is not None else torch.get_default_dtype()), torch.device("cpu")

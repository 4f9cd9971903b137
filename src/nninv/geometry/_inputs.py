"""Input-side helpers shared by :mod:`~nninv.geometry.preimage` and
:mod:`~nninv.geometry.closest`: bounds and inputs as flat float64 rows, a float64
copy of the model, the dtype and device the caller's answers go back in, and the
reading of piecewise-linear steps (ReLU slopes, max pooling, the trailing steps
that keep the arg-max).
"""

from __future__ import annotations

__all__ = [
    "as_bounds",
    "as_input",
    "caller_kind",
    "float64_copy",
    "is_maxpool",
    "model_kind",
    "peel_class_steps",
    "pl_slope",
]

import copy
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..checks import as_bounds, model_dtype_device
from ..errors import NNInvError
from ..model.chain import Elementwise, Shift, Step, Unsupported

_F64 = torch.float64


def as_input(x: Any, input_shape: tuple[int, ...], name: str = "x") -> Tensor:
    """Flat float64 rows ``(N, n)`` from ``(N, *input_shape)`` or one unbatched input."""
    if isinstance(x, np.ndarray):
        if x.dtype.kind not in "fiub":
            raise NNInvError(f"{name} must be real-valued, got an array of dtype {x.dtype}")
        x = torch.from_numpy(np.ascontiguousarray(x))
    if not isinstance(x, Tensor):
        try:
            x = torch.as_tensor(x)
        except Exception:
            raise NNInvError(
                f"{name} must be a tensor or an array, got {type(x).__name__}"
            ) from None
    x = x.detach().to("cpu", _F64)
    if tuple(x.shape) == input_shape:
        x = x.unsqueeze(0)
    if tuple(x.shape[1:]) != input_shape:
        raise NNInvError(
            f"{name} has shape {tuple(x.shape)} but the model's inputs are shaped "
            f"(N, {', '.join(map(str, input_shape))})"
        )
    if x.shape[0] == 0:
        raise NNInvError(f"{name} holds no samples")
    x = x.reshape(x.shape[0], -1)
    if not bool(torch.isfinite(x).all()):
        raise NNInvError(f"{name} contains NaN or inf")
    return x


def model_kind(model: nn.Module) -> tuple[torch.dtype, torch.device]:
    """The dtype and device of the model's first floating parameter or buffer.

    A model without any computes in whatever it is given: float64 on the CPU here.
    """
    return model_dtype_device(model, _F64)


def caller_kind(
    v: Any, default: tuple[torch.dtype, torch.device]
) -> tuple[torch.dtype, torch.device]:
    """The floating dtype and device of a caller's tensor or array ``v``, else ``default``.

    A NumPy array lives on the CPU; integer, boolean and other values give ``default``.
    """
    if isinstance(v, Tensor) and v.is_floating_point():
        return v.dtype, v.device
    if isinstance(v, np.ndarray) and v.dtype in (np.float16, np.float32, np.float64):
        return torch.from_numpy(np.empty(0, v.dtype)).dtype, torch.device("cpu")
    return default


def float64_copy(model: nn.Module) -> nn.Module:
    """A float64 CPU copy of ``model`` in eval mode: the same function, evaluated exactly."""
    m = copy.deepcopy(model).to("cpu", _F64)
    m.eval()
    for p in m.parameters():
        p.requires_grad_(False)
    return m


def pl_slope(step: Step) -> float | None:
    """The negative-side slope of a ReLU or leaky ReLU step, else None."""
    if isinstance(step, Elementwise):
        mod = step.layer.module
        if isinstance(mod, nn.LeakyReLU):
            return float(mod.negative_slope)
        if isinstance(mod, nn.ReLU) or step.act.name == "relu":
            return 0.0
    return None


def is_maxpool(step: Step) -> bool:
    return isinstance(step, Unsupported) and isinstance(
        step.layer.module, nn.MaxPool1d | nn.MaxPool2d
    )


def peel_class_steps(steps: list[Step]) -> list[Step]:
    """Drop trailing steps that keep the arg-max: increasing activations and softmax."""
    i = len(steps)
    while i > 1:
        s = steps[i - 1]
        if isinstance(s, Shift) or (isinstance(s, Elementwise) and s.act.injective):
            i -= 1
            continue
        break
    return steps[:i]

"""``method="pinv"``: layer-by-layer pseudo-inverse (the minimum-norm member).

For the seed's model ``sigmoid(x W^T + b)`` this is ``pinv(W) (logit(y) - b)``,
made robust: batched, rank-aware (singular values below the numerical rank
tolerance are dropped, not inverted), with each block's SVD computed once per
model and reused. It reproduces ``y`` exactly whenever ``y`` is an output of
the model, yet it returns the member of the preimage nearest to 0, which for
images is noise: only the row-space part of the true input survives.
"""

from __future__ import annotations

__all__ = ["PinvOptions", "invert_pinv"]

from dataclasses import dataclass

import torch
from torch import Tensor

from ..errors import NNInvError
from . import Problem, Solution, register
from ._layerwise import backward_pass


@dataclass(frozen=True)
class PinvOptions:
    """``method="pinv"`` takes no options (nor ``bounds`` or ``x0``: it is a closed form)."""


@register("pinv", options=PinvOptions)
def invert_pinv(problem: Problem) -> Solution:
    """Minimum-norm inversion, layer by layer. Options: none (:class:`PinvOptions`)."""
    problem.options_as(PinvOptions)
    chain = problem.chain
    chain.require_closed_form("pinv")

    def choose(pos: int, B: Tensor, d: Tensor) -> Tensor:
        return d @ B

    y = _exact_target(problem, "pinv")
    x, ok, reasons, info = backward_pass(
        chain, y.reshape(y.shape[0], -1), choose, hidden_tol=_hidden_tol(y.dtype), min_norm=True
    )
    return Solution(x.reshape(-1, *problem.input_shape), 0, ok, reasons, info)


def _exact_target(problem: Problem, method: str) -> Tensor:
    y = problem.target
    if not isinstance(y, Tensor):
        raise NNInvError(
            f"method={method!r} needs an exact output target y; for a "
            f"{type(y).__name__} use method='optimize'"
        )
    return y


def _hidden_tol(dtype: torch.dtype) -> float:
    return 1e-10 if dtype == torch.float64 else 1e-5

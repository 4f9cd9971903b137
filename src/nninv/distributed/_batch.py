"""One batch of outputs inverted into plain arrays: the unit of work of streaming and Ray.

Both the single-machine stream (:mod:`nninv.distributed.stream`) and the Ray
workers (:mod:`nninv.distributed.ray_data`) call :func:`invert_batch` on a
NumPy batch and get NumPy columns back (``x`` flat, ``residual``,
``converged``), so a batch's result does not depend on which of the two ran
it, and a row is never tied to state outside its batch.
"""

from __future__ import annotations

__all__ = ["BatchResult", "invert_batch", "model_device"]

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import NNInvWarning
from ..methods.invert import invert
from ..priors import Prior


@dataclass(frozen=True)
class BatchResult:
    """The inversion of one batch as NumPy columns.

    Attributes
    ----------
    x : ndarray
        ``(n, prod(input_shape))``, the inputs found, flat, in the computation dtype.
    residual : ndarray
        ``(n,)``, ``max |f(x) - y|`` measured by running the model.
    converged : ndarray
        ``(n,)`` bool.
    reasons : list of str or None
        Why each sample did not converge (None where it did).
    method : str
        The method that ran (``"auto"`` resolved).
    tol : float
    """

    x: np.ndarray
    residual: np.ndarray
    converged: np.ndarray
    reasons: list[str | None]
    method: str
    tol: float


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter or buffer (CPU for a model with neither)."""
    for t in (*model.parameters(), *model.buffers()):
        return t.device
    return torch.device("cpu")


def invert_batch(
    model: nn.Module,
    y: np.ndarray,
    method: str,
    prior: Prior | None,
    *,
    tol: float | None,
    input_shape: Sequence[int] | None,
    options: Mapping[str, Any],
) -> BatchResult:
    """Invert the outputs ``y`` (n, *output_shape) with :func:`nninv.invert`.

    The batch is moved to the model's device and keeps its floating dtype; the
    results come back to the CPU as NumPy arrays. Non-convergence warnings are
    not raised per batch: ``converged`` and ``reasons`` carry them.
    """
    y = np.ascontiguousarray(y)
    if not y.flags.writeable:  # a slice of a memory-mapped file
        y = y.copy()
    t = torch.from_numpy(y).to(model_device(model))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "[0-9]+ of [0-9]+ samples did not converge", NNInvWarning)
        inv = invert(model, t, method, prior, tol=tol, input_shape=input_shape, **dict(options))
    x = inv.x.detach().reshape(len(inv), -1).cpu().numpy()
    return BatchResult(
        x,
        inv.residual.detach().cpu().numpy(),
        inv.converged.detach().cpu().numpy().astype(bool),
        list(inv.info.get("reasons", [None] * len(inv))),
        inv.method,
        float(inv.info["tol"]),
    )

"""Method ``"bijective"``: the exact inverse of a model that is invertible by construction.

A model qualifies by protocol, not by type (this layer does not import
``nninv.invertible``): it has ``bijective = True`` and an ``inverse(y)``
returning ``(x, report)`` with a per-sample ``report.converged``, as
:class:`nninv.invertible.BijectiveClassifier` does. ``method="auto"`` picks it
for such a model and an exact target; :func:`nninv.invert` then measures the
residual by running the model, as for every method.
"""

from __future__ import annotations

__all__ = ["BijectiveOptions", "bijective", "is_bijective"]

from dataclasses import dataclass
from typing import Any

import torch

from ..checks import model_dtype_device
from ..errors import NNInvError
from ..targets import ClassTarget
from . import Problem, Solution, register


def is_bijective(model: Any) -> bool:
    """Whether ``model`` follows the invertible-model protocol (``bijective`` and ``inverse``)."""
    return getattr(model, "bijective", False) is True and callable(getattr(model, "inverse", None))


@dataclass(frozen=True)
class BijectiveOptions:
    """``method="bijective"`` takes no options: the model's own ``inverse`` decides."""


@register("bijective", options=BijectiveOptions)
def bijective(problem: Problem) -> Solution:
    """Invert with the model's own ``inverse``; its report's flags become ``Solution.ok``."""
    problem.options_as(BijectiveOptions)
    # Any: a model that passes is_bijective has an inverse(y) method
    model: Any = problem.model
    if not is_bijective(model):
        raise NNInvError(
            f"method 'bijective' needs a model with bijective = True and an inverse(y) method "
            f"(e.g. nninv.invertible.BijectiveClassifier); {type(model).__name__} has none"
        )
    if isinstance(problem.target, ClassTarget):
        raise NNInvError(
            "method 'bijective' inverts exact outputs; for a class target fix the logits and "
            "draw the nuisance z (BijectiveClassifier.preimage_samples)"
        )
    mdtype = model_dtype_device(model, problem.dtype)[0]
    y = problem.target.reshape(problem.n, -1).to(mdtype)
    with torch.no_grad():
        x, report = model.inverse(y)
    ok = report.converged.to(torch.bool).cpu()
    reasons: list[str | None] = [None] * problem.n
    for i in (~ok).nonzero().flatten().tolist():
        reasons[i] = (
            f"the model's inverse did not converge (block residual "
            f"{float(report.residual[i]):.3g} after {int(report.iterations[i])} iterations)"
        )
    x = x.reshape(problem.n, *problem.input_shape).to(problem.dtype)
    info = {"inverse_report": report}
    return Solution(x, int(report.iterations.max()) if problem.n else 0, ok, reasons, info)

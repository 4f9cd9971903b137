"""Result dataclasses returned by the inversion methods."""

from __future__ import annotations

__all__ = ["Inversion"]

from dataclasses import dataclass, field
from typing import Any

from torch import Tensor


@dataclass(frozen=True)
class Inversion:
    """The inputs found for a batch of targets.

    Attributes
    ----------
    x : Tensor
        The inputs, shaped ``(N, *input_shape)``, in the model's dtype and device.
    residual : Tensor
        ``(N,)``: the largest absolute output error ``max |f(x) - y|`` per sample,
        measured by running the model on ``x``. For a :class:`~nninv.ClassTarget`
        it is the shortfall from the target (0 when the target is met).
    converged : Tensor
        ``(N,)`` bool: whether the sample met the method's tolerance.
    iterations : int
        Iterations the method used (0 for closed forms; the largest over the batch).
    method : str
        The registered name of the method.
    info : dict
        Method-specific details, e.g. ``"reason"`` (a list of str per sample for
        samples that did not converge), ``"tol"``, timings, warnings issued.
    """

    x: Tensor
    residual: Tensor
    converged: Tensor
    iterations: int
    method: str
    info: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def __repr__(self) -> str:
        n = len(self)
        nc = int(self.converged.sum())
        rmax = float(self.residual.max()) if n else float("nan")
        return (
            f"Inversion(method={self.method!r}, n={n}, input_shape={tuple(self.x.shape[1:])}, "
            f"converged={nc}/{n}, max_residual={rmax:.3g}, iterations={self.iterations})"
        )

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
        ``"tol"`` (the tolerance ``converged`` used), ``"reasons"`` (the same list
        as :attr:`reasons`, kept for code written before the field), and
        method-specific details: timings, ``"edge_values_moved"``, a decoder's
        ``"raw_residual"``, optimize's ``"retries"``...
    reasons : list of (str or None)
        One per sample: why it did not converge (the iteration limit, a stalled
        violation, the residual above ``tol``...), None for a converged sample.
    """

    x: Tensor
    residual: Tensor
    converged: Tensor
    iterations: int
    method: str
    info: dict[str, Any] = field(default_factory=dict)
    reasons: list[str | None] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.reasons:
            object.__setattr__(self, "reasons", [None] * int(self.x.shape[0]))
        elif len(self.reasons) != int(self.x.shape[0]):
            raise ValueError(
                f"reasons has {len(self.reasons)} entries for {int(self.x.shape[0])} samples"
            )

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

"""What an inversion aims at: an exact output, or a class the model must choose.

An exact target is a plain tensor ``y`` shaped like the model's output. A
:class:`ClassTarget` asks only that the model put each sample in a given class,
optionally with a minimum softmax probability.
"""

from __future__ import annotations

__all__ = ["ClassTarget"]

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ._errors import NNInvError


@dataclass(frozen=True)
class ClassTarget:
    """Inputs that the model assigns to given classes.

    Parameters
    ----------
    labels : int, sequence of int or 1-D integer tensor
        One class index per sample (an int means one sample).
    confidence : float, optional
        If given, the softmax probability of the class (the sigmoid output, for
        models ending in a sigmoid) must be at least this value. Must lie in
        (0, 1]; 1.0 is accepted but is impossible to reach exactly and ends
        unconverged with a reason.

    Examples
    --------
    >>> t = ClassTarget([3, 7], confidence=0.9)
    >>> t.labels
    tensor([3, 7])
    >>> len(t)
    2
    """

    labels: Tensor
    confidence: float | None = None

    def __init__(self, labels: int | Sequence[int] | Tensor, confidence: float | None = None):
        if isinstance(labels, int):
            labels = [labels]
        lab = torch.as_tensor(labels)
        if lab.dtype.is_floating_point or lab.dtype == torch.bool:
            if lab.dtype == torch.bool or not torch.equal(lab, lab.round()):
                raise NNInvError(f"ClassTarget: labels must be integers, got dtype {lab.dtype}")
        lab = lab.to(torch.long).reshape(-1)
        if lab.numel() == 0:
            raise NNInvError("ClassTarget: no labels given")
        if (lab < 0).any():
            raise NNInvError(f"ClassTarget: negative label {int(lab.min())}")
        if confidence is not None:
            confidence = float(confidence)
            if not (0.0 < confidence <= 1.0):
                raise NNInvError(f"ClassTarget: confidence must lie in (0, 1], got {confidence}")
        object.__setattr__(self, "labels", lab)
        object.__setattr__(self, "confidence", confidence)

    def __len__(self) -> int:
        return int(self.labels.numel())

    def check_classes(self, n_classes: int) -> None:
        """Raise :class:`NNInvError` if a label is not below ``n_classes``."""
        bad = (self.labels >= n_classes).nonzero().flatten()
        if bad.numel():
            i = int(bad[0])
            raise NNInvError(
                f"ClassTarget: sample {i} asks for class {int(self.labels[i])}, "
                f"but the model has {n_classes} outputs"
            )

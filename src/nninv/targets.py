"""What an inversion aims at: an exact output, a class the model must choose, or a set of outputs.

An exact target is a plain tensor ``y`` shaped like the model's output. A
:class:`ClassTarget` asks only that the model put each sample in a given class,
optionally with a minimum softmax probability. An :class:`OutputSet` is a union
of polyhedra ``{y : A y <= b}`` in output space: the output side of decision
regions and of VNN-LIB properties; ``OutputSet.from_class(k, n)`` is "class k wins".
"""

from __future__ import annotations

__all__ = ["ClassTarget", "OutputSet", "Polyhedron", "as_output_set"]

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from .errors import NNInvError


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


@dataclass(frozen=True)
class Polyhedron:
    """The outputs ``y`` with ``A @ y <= b``: one conjunction of linear constraints.

    Parameters
    ----------
    A : array_like, shape (m, n_outputs)
        One row per constraint.
    b : array_like, shape (m,)
        Right-hand sides.

    Both are stored as float64 CPU tensors (the constraints are data, not
    model state). A polyhedron with no rows (``m = 0``) is the whole output space.
    """

    A: Tensor
    b: Tensor

    def __init__(self, A: Tensor | Sequence[Sequence[float]], b: Tensor | Sequence[float]):
        A_t = torch.as_tensor(A, dtype=torch.float64).detach().cpu()
        b_t = torch.as_tensor(b, dtype=torch.float64).detach().cpu().reshape(-1)
        if A_t.ndim != 2:
            raise NNInvError(
                f"Polyhedron: A must be 2-D (m, n_outputs), got shape {tuple(A_t.shape)}"
            )
        if A_t.shape[0] != b_t.shape[0]:
            raise NNInvError(
                f"Polyhedron: A has {A_t.shape[0]} rows but b has {b_t.shape[0]} entries"
            )
        if not (torch.isfinite(A_t).all() and torch.isfinite(b_t).all()):
            raise NNInvError("Polyhedron: A and b must be finite (no NaN or inf)")
        object.__setattr__(self, "A", A_t)
        object.__setattr__(self, "b", b_t)

    @property
    def n_outputs(self) -> int:
        return int(self.A.shape[1])

    def contains(self, y: Tensor, tol: float = 0.0) -> Tensor:
        """Whether each row of ``y`` (shape ``(N, n_outputs)``) satisfies every
        constraint to within ``tol``; a boolean tensor of shape ``(N,)``."""
        Y = _as_rows(y, self.n_outputs)
        if self.A.shape[0] == 0:
            return torch.ones(Y.shape[0], dtype=torch.bool)
        return (Y @ self.A.T <= self.b + tol).all(dim=1)


@dataclass(frozen=True)
class OutputSet:
    """A set of outputs: a union (disjunction) of polyhedra ``{y : A_i y <= b_i}``.

    This is the output side of a decision region (:func:`nninv.region`) and of a
    VNN-LIB property (:mod:`nninv.vnnlib`): "class k wins" is one polyhedron,
    a property's disjunction of conjunctions is a union.

    Parameters
    ----------
    parts : sequence of Polyhedron
        At least one; all over the same number of outputs.

    Examples
    --------
    >>> s = OutputSet.from_class(2, n_outputs=3)       # y2 >= y0 and y2 >= y1
    >>> s.contains(torch.tensor([[0.0, 1.0, 3.0], [4.0, 1.0, 3.0]])).tolist()
    [True, False]
    >>> u = s | OutputSet.linear([[1.0, 0.0, 0.0]], [0.5])   # ... or y0 <= 0.5
    >>> len(u.parts)
    2
    """

    parts: tuple[Polyhedron, ...]

    def __init__(self, parts: Sequence[Polyhedron]):
        parts = tuple(parts)
        if not parts:
            raise NNInvError("OutputSet: give at least one polyhedron (an empty union is empty)")
        for p in parts:
            if not isinstance(p, Polyhedron):
                raise NNInvError(f"OutputSet: parts must be Polyhedron, got {type(p).__name__}")
        widths = {p.n_outputs for p in parts}
        if len(widths) != 1:
            raise NNInvError(f"OutputSet: parts over different numbers of outputs {sorted(widths)}")
        object.__setattr__(self, "parts", parts)

    @classmethod
    def linear(
        cls, A: Tensor | Sequence[Sequence[float]], b: Tensor | Sequence[float]
    ) -> OutputSet:
        """One polyhedron ``{y : A y <= b}``."""
        return cls([Polyhedron(A, b)])

    @classmethod
    def from_class(cls, label: int, n_outputs: int) -> OutputSet:
        """ "Class ``label`` wins": ``y_j - y_label <= 0`` for every other ``j``
        (ties count as a win, as in VNN-LIB's ``(>= Y_label Y_j)``)."""
        label, n_outputs = int(label), int(n_outputs)
        if n_outputs < 2:
            raise NNInvError(
                f"OutputSet.from_class: a class needs at least 2 outputs, got {n_outputs}"
            )
        if not 0 <= label < n_outputs:
            raise NNInvError(
                f"OutputSet.from_class: class {label} is not one of the {n_outputs} outputs"
            )
        others = [j for j in range(n_outputs) if j != label]
        A = torch.zeros(len(others), n_outputs, dtype=torch.float64)
        for r, j in enumerate(others):
            A[r, j], A[r, label] = 1.0, -1.0
        return cls([Polyhedron(A, torch.zeros(len(others), dtype=torch.float64))])

    @classmethod
    def union(cls, *sets: OutputSet) -> OutputSet:
        """The union of several output sets."""
        return cls([p for s in sets for p in s.parts])

    def __or__(self, other: OutputSet) -> OutputSet:
        return OutputSet.union(self, other)

    @property
    def n_outputs(self) -> int:
        return self.parts[0].n_outputs

    def contains(self, y: Tensor, tol: float = 0.0) -> Tensor:
        """Whether each row of ``y`` lies in some part (to within ``tol``); shape ``(N,)``."""
        Y = _as_rows(y, self.n_outputs)
        inside = torch.zeros(Y.shape[0], dtype=torch.bool)
        for p in self.parts:
            inside |= p.contains(Y, tol)
        return inside


def as_output_set(target: OutputSet | ClassTarget | int, n_outputs: int) -> OutputSet:
    """An :class:`OutputSet` over ``n_outputs`` outputs from what a user passes.

    ``target`` may be an :class:`OutputSet` (checked against ``n_outputs``), a
    :class:`ClassTarget` of one label without ``confidence``, or a class index.
    """
    if isinstance(target, OutputSet):
        if target.n_outputs != n_outputs:
            raise NNInvError(
                f"output set is over {target.n_outputs} outputs, but the model has {n_outputs}"
            )
        return target
    if isinstance(target, ClassTarget):
        if len(target) != 1:
            raise NNInvError(
                f"a ClassTarget with {len(target)} labels is not one output set; give one label"
            )
        if target.confidence is not None:
            raise NNInvError(
                "a ClassTarget with a confidence is not a linear output set; "
                "give ClassTarget(k) or an OutputSet"
            )
        target.check_classes(n_outputs)
        return OutputSet.from_class(int(target.labels[0]), n_outputs)
    if isinstance(target, (int,)) and not isinstance(target, bool):
        return OutputSet.from_class(target, n_outputs)
    raise NNInvError(
        f"expected an OutputSet, a ClassTarget or a class index, got {type(target).__name__}"
    )


def _as_rows(y: Tensor, n: int) -> Tensor:
    Y = torch.as_tensor(y).detach().to("cpu", torch.float64)
    if Y.ndim == 1:
        Y = Y.reshape(1, -1)
    if Y.ndim != 2 or Y.shape[1] != n:
        raise NNInvError(f"expected outputs of shape (N, {n}), got {tuple(Y.shape)}")
    return Y

"""One ``closest`` query as its stages see it, and the check of every answer.

:class:`Query` is frozen and carries what the stages of
:func:`nninv.geometry.closest` need: the float64 model and the caller's, the
point ``x0``, the box, the norm, the :class:`~nninv.geometry._milp.Goal` (one
polyhedron of outputs; a union is solved part by part), the time limit and
the seed. A stage that narrows the box makes a new query with
:func:`dataclasses.replace`. :class:`Checker` runs the model on a candidate,
in float64 and in the caller's own dtype and device, and says whether its
output meets the goal; :class:`Trace` collects what the stages report
(``info`` and the seconds per phase); :func:`dist` is the distance in each norm.
"""

from __future__ import annotations

__all__ = ["Checker", "Norm", "Outcome", "Query", "Status", "Trace", "dist"]

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from ..model.outputs import class_shortfall
from ..targets import ClassTarget
from ._milp import Goal, PLNet

_F64 = torch.float64

Norm = Literal["linf", "l1", "l2"]


def dist(v: np.ndarray, norm: str) -> float:
    """``|v|`` in ``norm`` (``"linf"``, ``"l1"`` or ``"l2"``)."""
    if norm == "linf":
        return float(np.abs(v).max()) if v.size else 0.0
    if norm == "l1":
        return float(np.abs(v).sum())
    return float(np.linalg.norm(v))


class Checker:
    """Says whether flat inputs meet one of ``goals``, run by the float64 ``model`` and
    by ``native``, the caller's own model in its own dtype and device (float32 rounds
    differently: a point on the decision boundary in float64 may lose there).

    For a class goal (``Goal.label``) an input is in the class when no logit beats
    the label's in float64, and the caller's model gives it the arg-max; for a
    general goal its output ``y`` must satisfy ``A y <= b`` in both. ``rejected``
    counts the inputs the float64 model accepted and ``native`` refused.
    """

    def __init__(
        self,
        model: nn.Module,
        input_shape: tuple[int, ...],
        goals: Sequence[Goal],
        native: nn.Module | None = None,
    ) -> None:
        self.model, self.shape, self.native = model, input_shape, native
        self.goals = tuple(goals)
        self.rejected = 0
        self.dtype, self.device = _F64, torch.device("cpu")
        if native is not None:
            for t in (*native.parameters(), *native.buffers()):
                if t.is_floating_point():
                    self.dtype, self.device = t.dtype, t.device
                    break

    def logits(self, x: np.ndarray) -> np.ndarray:
        """The float64 model's outputs at ``x``, one row per input."""
        with torch.no_grad():
            out = self.model(torch.from_numpy(np.atleast_2d(x)).reshape(-1, *self.shape))
        return out.reshape(out.shape[0], -1).numpy()

    def _meets(self, out: torch.Tensor, native: bool) -> bool:
        for g in self.goals:
            if g.label is not None:
                met = bool(class_shortfall(ClassTarget([g.label]), out)[0] == 0)
                if met and (not native or int(out[0].argmax()) == g.label):
                    return True
            elif bool((out[0].numpy() @ g.A.T <= g.b).all()):
                return True
        return False

    def native_ok(self, x: np.ndarray) -> bool:
        """The caller's model, in its dtype, puts ``x`` in a goal (a class: arg-max, no tie)."""
        if self.native is None:
            return True
        xt = torch.from_numpy(np.atleast_2d(x)).reshape(-1, *self.shape)
        was = self.native.training
        self.native.eval()
        try:
            with torch.no_grad():
                out = self.native(xt.to(self.device, self.dtype))
        finally:
            self.native.train(was)
        out = out.reshape(out.shape[0], -1).detach().to("cpu", _F64)
        return self._meets(out, native=True)

    def ok(self, x: np.ndarray) -> bool:
        """Both models put ``x`` in a goal."""
        if not self._meets(torch.from_numpy(self.logits(x)), native=False):
            return False
        if not self.native_ok(x):
            self.rejected += 1
            return False
        return True


@dataclass(frozen=True)
class Query:
    """What the stages of one ``closest`` query need (one goal; a union runs per part).

    Attributes
    ----------
    model : nn.Module
        The float64 CPU copy of the caller's model (gradients and checks).
    input_shape : tuple of int
    check : Checker
        Confirms candidates for ``goal``, also in the caller's dtype.
    x0 : ndarray
        The flat float64 input whose neighbour is sought.
    lo, hi : ndarray
        The box searched: the caller's bounds, within ``max_distance`` of ``x0``
        (narrowed further by the stages, with :func:`dataclasses.replace`).
    domain : tuple of ndarray
        The caller's bounds themselves (the gradient search of smooth nets).
    norm : {"linf", "l1", "l2"}
    goal : Goal
    max_distance : float or None
        The caller's; an infeasible answer's bound.
    deadline : float
        :func:`time.perf_counter` time at which the answer is due.
    seed : int
        Seeds the gradient search.
    margin : float or None
        The caller's margin for the polish (None: the ladder of
        :func:`nninv.geometry._stages.margins`).
    net : PLNet or None
        The network as dense piecewise-linear layers, for the exact stages.
    """

    model: nn.Module
    input_shape: tuple[int, ...]
    check: Checker
    x0: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    domain: tuple[np.ndarray, np.ndarray]
    norm: Norm
    goal: Goal
    max_distance: float | None
    deadline: float
    seed: int
    margin: float | None = None
    net: PLNet | None = None

    @property
    def pl(self) -> PLNet:
        """:attr:`net`, for the stages that need it."""
        if self.net is None:
            raise AssertionError("an exact stage ran on a network that is not piecewise linear")
        return self.net

    def distance(self, x: np.ndarray) -> float:
        """``|x - x0|`` in the query's norm."""
        return dist(x - self.x0, self.norm)


class Trace:
    """What the stages report: ``info`` and the seconds of each phase
    (``info["phase_seconds"]``, kept by :meth:`lap`)."""

    def __init__(self, info: dict[str, Any] | None = None) -> None:
        self.info: dict[str, Any] = {} if info is None else info
        self.phases: dict[str, float] = {}
        self._clock = time.perf_counter()

    def timed(self) -> Trace:
        """Report phase times in ``info["phase_seconds"]``; returns ``self``."""
        self.info["phase_seconds"] = self.phases
        return self

    def lap(self, name: str) -> None:
        """Charge the time since the last lap to phase ``name``."""
        now = time.perf_counter()
        self.phases[name] = self.phases.get(name, 0.0) + now - self._clock
        self._clock = now

    def count(self, key: str, n: int = 1) -> None:
        """Add ``n`` to the counter ``info[key]``."""
        self.info[key] = self.info.get(key, 0) + n


Status = Literal["optimal", "infeasible", "time_limit", "heuristic"]


@dataclass(frozen=True)
class Outcome:
    """What the stages answer for one goal, before the final check of
    :func:`nninv.geometry.closest`: a flat float64 input or None, its status, the
    proven lower bound on the distance, and ``info``."""

    x: np.ndarray | None
    status: Status
    bound: float
    info: dict[str, Any]

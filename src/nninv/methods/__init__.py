"""Inversion methods and their registry.

A method is a callable taking a :class:`Problem` and returning a
:class:`Solution`; :func:`nninv.invert` does the common work around it
(checking the target, running the model to measure the residual, building the
:class:`~nninv.Inversion`). New methods register themselves in :data:`METHODS`
with :func:`register`.

Contract for a method
---------------------
- It MUST return ``x`` shaped ``(N, *problem.input_shape)`` in
  ``problem.dtype`` on ``problem.device``.
- It MUST NOT claim success it has not checked: ``Solution.ok`` is False for a
  sample the method knows it failed on, with the reason in ``reasons``.
  ``invert`` ANDs it with ``residual <= tol`` measured by running the model.
- It MAY use ``problem.chain`` (the analysed model) and ``problem.prior``.
"""

from __future__ import annotations

__all__ = ["METHODS", "Problem", "Solution", "get_method", "register"]

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import NNInvError
from ..model.chain import Chain, analyse
from ..priors import Prior
from ..targets import ClassTarget


@dataclass
class Problem:
    """Everything a method needs to know.

    Attributes
    ----------
    model : nn.Module
    target : Tensor or ClassTarget
        An exact target is already checked and shaped ``(N, *output_shape)``,
        with edge values moved inside the output layer's range.
    prior : Prior or None
    input_shape, output_shape : tuple of int
    dtype, device
        Of the computation and of the returned ``x``.
    tol : float
        Residual tolerance for ``converged``.
    options : dict
        Method-specific keyword options; a method MUST reject unknown ones.
    """

    model: nn.Module
    target: Tensor | ClassTarget
    prior: Prior | None
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    dtype: torch.dtype
    device: torch.device
    tol: float
    options: dict[str, Any] = field(default_factory=dict)
    _chain: Chain | None = None

    @property
    def n(self) -> int:
        t = self.target
        return len(t) if isinstance(t, ClassTarget) else int(t.shape[0])

    @property
    def chain(self) -> Chain:
        if self._chain is None:
            self._chain = analyse(self.model, self.input_shape)
        return self._chain

    def take_options(self, **defaults: Any) -> dict[str, Any]:
        """Return the options with defaults filled in; raise on unknown names."""
        unknown = sorted(set(self.options) - set(defaults))
        if unknown:
            raise NNInvError(
                f"unknown option(s) {', '.join(unknown)}; valid: {', '.join(sorted(defaults))}"
            )
        return {**defaults, **self.options}


@dataclass
class Solution:
    """What a method returns; see the module's contract."""

    x: Tensor
    iterations: int = 0
    ok: Tensor | None = None
    reasons: list[str | None] | None = None
    info: dict[str, Any] = field(default_factory=dict)


Method = Callable[[Problem], Solution]

#: Registered methods by name.
METHODS: dict[str, Method] = {}


def register(name: str) -> Callable[[Method], Method]:
    """Decorator registering a method under ``name``."""

    def deco(fn: Method) -> Method:
        METHODS[name] = fn
        return fn

    return deco


def get_method(name: str) -> Method:
    """The method registered as ``name``; ValueError (NNInvError) listing valid names."""
    try:
        return METHODS[name]
    except KeyError:
        raise NNInvError(f"unknown method {name!r}; valid: {', '.join(sorted(METHODS))}") from None


# Importing the implementations registers them.
from . import analytic, bijective, decoder, optimize, pinv  # noqa: E402, F401

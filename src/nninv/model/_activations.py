"""Elementwise activations that nninv knows: forward map, inverse, range, derivative.

Each entry describes a monotone scalar function ``h = sigma(z)``. Bijective
ones (sigmoid, tanh, leaky ReLU with positive slope, ELU, SELU, softplus, exp) have a
closed-form inverse on their open range; ReLU is not injective (every
``z <= 0`` maps to 0) and is marked so. ``reparam`` maps the whole real line
onto the open range and is used to pull a hidden-layer solution back inside
the range (see :func:`nninv.linalg.gauss_newton_onto`).
"""

from __future__ import annotations

__all__ = ["Activation", "activation_of"]

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .layers import Exp


@dataclass(frozen=True)
class Activation:
    """An elementwise monotone activation.

    Attributes
    ----------
    name : str
        Short name, e.g. ``"sigmoid"``.
    forward : callable
        ``h = forward(z)``.
    inverse : callable
        ``z = inverse(h)`` for ``h`` strictly inside the range (for ReLU: the
        member ``z = h`` of the preimage, which is a ray at ``h = 0``).
    lo, hi : float
        The range is the open interval ``(lo, hi)`` (ReLU: ``[0, inf)``).
    injective : bool
        False for ReLU.
    reparam : callable
        A smooth bijection from R onto the open range, with ``reparam_inverse``.
    """

    name: str
    forward: Callable[[Tensor], Tensor]
    inverse: Callable[[Tensor], Tensor]
    lo: float
    hi: float
    injective: bool
    reparam: Callable[[Tensor], Tensor]
    reparam_inverse: Callable[[Tensor], Tensor]
    closed_lo: bool = False

    @property
    def bounded(self) -> bool:
        return math.isfinite(self.lo) or math.isfinite(self.hi)

    def in_range(self, h: Tensor) -> Tensor:
        """Elementwise bool: ``h`` lies in the range where the inverse is exact."""
        ok = torch.isfinite(h)
        if math.isfinite(self.lo):
            ok &= (h >= self.lo) if self.closed_lo else (h > self.lo)
        if math.isfinite(self.hi):
            ok &= h < self.hi
        return ok

    def describe_range(self) -> str:
        left = "[" if self.closed_lo else "("
        return f"{left}{self.lo:g}, {self.hi:g})"


def _softplus_inv(h: Tensor, beta: float = 1.0, threshold: float = 20.0) -> Tensor:
    bh = beta * h
    # log(expm1(t)) = t + log(-expm1(-t)), stable for large t
    out = torch.where(bh > threshold, bh, bh + torch.log(-torch.expm1(-bh)))
    return out / beta


def _elu_inv(h: Tensor, alpha: float) -> Tensor:
    return torch.where(h > 0, h, torch.log1p(h.clamp(max=0) / alpha))


def _make_sigmoid() -> Activation:
    return Activation(
        "sigmoid", torch.sigmoid, torch.logit, 0.0, 1.0, True, torch.sigmoid, torch.logit
    )


def _make_tanh() -> Activation:
    return Activation("tanh", torch.tanh, torch.atanh, -1.0, 1.0, True, torch.tanh, torch.atanh)


def _make_leaky(slope: float) -> Activation:
    def fwd(z: Tensor) -> Tensor:
        return F.leaky_relu(z, slope)

    def inv(h: Tensor) -> Tensor:
        return torch.where(h >= 0, h, h / slope)

    return Activation(f"leaky_relu({slope:g})", fwd, inv, -math.inf, math.inf, True, fwd, inv)


def _make_elu(alpha: float, scale: float = 1.0, name: str = "elu") -> Activation:
    def fwd(z: Tensor) -> Tensor:
        return scale * F.elu(z, alpha)

    def inv(h: Tensor) -> Tensor:
        return _elu_inv(h / scale, alpha)

    return Activation(
        f"{name}({alpha:g})" if name == "elu" else name,
        fwd,
        inv,
        -alpha * scale,
        math.inf,
        True,
        fwd,
        inv,
    )


def _make_softplus(beta: float, threshold: float) -> Activation:
    def fwd(z: Tensor) -> Tensor:
        return F.softplus(z, beta, threshold)

    def inv(h: Tensor) -> Tensor:
        return _softplus_inv(h, beta, threshold)

    return Activation("softplus", fwd, inv, 0.0, math.inf, True, fwd, inv)


def _make_relu() -> Activation:
    def inv(h: Tensor) -> Tensor:
        return h.clone()

    def sp_inv(h: Tensor) -> Tensor:
        return _softplus_inv(h.clamp(min=1e-6))

    return Activation(
        "relu", torch.relu, inv, 0.0, math.inf, False, F.softplus, sp_inv, closed_lo=True
    )


def _make_exp() -> Activation:
    return Activation("exp", torch.exp, torch.log, 0.0, math.inf, True, torch.exp, torch.log)


def activation_of(module: nn.Module) -> Activation | None:
    """The :class:`Activation` a module computes, or None if it is not one we know.

    Examples
    --------
    >>> activation_of(nn.Sigmoid()).name
    'sigmoid'
    >>> activation_of(nn.GELU()) is None
    True
    """
    if isinstance(module, nn.Sigmoid):
        return _make_sigmoid()
    if isinstance(module, Exp):
        return _make_exp()
    if isinstance(module, nn.Tanh):
        return _make_tanh()
    if isinstance(module, nn.LeakyReLU):
        slope = float(module.negative_slope)
        if slope > 0:
            return _make_leaky(slope)
        if slope == 0:
            return _make_relu()
        return None
    if isinstance(module, nn.ReLU):
        return _make_relu()
    if isinstance(module, nn.SELU):
        return _make_elu(1.6732632423543772, 1.0507009873554805, "selu")
    if isinstance(module, nn.CELU):
        a = float(module.alpha)

        def celu(z: Tensor) -> Tensor:
            return F.celu(z, a)

        def celu_inv(h: Tensor) -> Tensor:
            return torch.where(h > 0, h, a * torch.log1p(h.clamp(max=0) / a))

        return Activation(f"celu({a:g})", celu, celu_inv, -a, math.inf, True, celu, celu_inv)
    if isinstance(module, nn.ELU):
        return _make_elu(float(module.alpha))
    if isinstance(module, nn.Softplus):
        return _make_softplus(float(module.beta), float(module.threshold))
    return None

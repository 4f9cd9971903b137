"""Additive (NICE) and affine (RealNVP) coupling blocks, on zuko's coupling transform.

The input, flattened, splits by a mask into a part ``x_a`` passed through and
a part ``x_b`` transformed elementwise by a map whose parameters a small
network computes from ``x_a``; zuko's ``CouplingTransform`` with
``AdditiveTransform`` or ``MonotonicAffineTransform`` does the arithmetic, so
the inverse is closed form and exact up to rounding.

References
----------
Dinh, Krueger and Bengio, "NICE: Non-linear independent components estimation", 2014.
Dinh, Sohl-Dickstein and Bengio, "Density estimation using Real NVP", ICLR 2017.
"""

from __future__ import annotations

__all__ = ["AdditiveCoupling", "AffineCoupling"]

import math

import torch
from torch import Tensor, nn
from zuko.transforms import (
    AdditiveTransform,
    CouplingTransform,
    DependentTransform,
    MonotonicAffineTransform,
)

from ..errors import NNInvError
from ._base import InverseReport, InvertibleBlock


def _mlp(n_in: int, n_out: int, hidden: int, depth: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    d = n_in
    for _ in range(depth):
        layers += [nn.Linear(d, hidden), nn.ReLU()]
        d = hidden
    last = nn.Linear(d, n_out)
    # the block starts as the identity, which keeps deep stacks trainable
    nn.init.zeros_(last.weight)
    nn.init.zeros_(last.bias)
    return nn.Sequential(*layers, last)


class _Coupling(InvertibleBlock):
    n_params = 1

    def __init__(
        self,
        features: int,
        hidden: int = 256,
        *,
        depth: int = 2,
        mask: Tensor | None = None,
    ) -> None:
        super().__init__()
        if features < 2:
            raise NNInvError(f"a coupling block needs at least 2 features, got {features}")
        if mask is None:
            mask = torch.arange(features) < features // 2
        mask = torch.as_tensor(mask, dtype=torch.bool).reshape(-1)
        if mask.numel() != features or bool(mask.all()) or not bool(mask.any()):
            raise NNInvError(
                f"coupling mask must hold {features} booleans with both values present, got "
                f"{mask.numel()} values with {int(mask.sum())} True"
            )
        self.features = features
        self.register_buffer("mask", mask)
        n_a = int(mask.sum())
        self.net = _mlp(n_a, self.n_params * (features - n_a), hidden, depth)

    def _meta(self, x_a: Tensor) -> DependentTransform:  # pragma: no cover - abstract
        raise NotImplementedError

    def _transform(self) -> CouplingTransform:
        return CouplingTransform(self._meta, self.mask)

    def _flat(self, x: Tensor) -> Tensor:
        if x.ndim < 2 or math.prod(x.shape[1:]) != self.features:
            raise NNInvError(
                f"{type(self).__name__}({self.features}) got input of shape {tuple(x.shape)}"
            )
        return x.reshape(x.shape[0], -1)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        y, ladj = self._transform().call_and_ladj(self._flat(x))
        return y.reshape(x.shape), ladj

    def inverse(self, y: Tensor) -> tuple[Tensor, InverseReport]:
        t = self._transform()
        yf = self._flat(y)
        x = t.inv(yf)
        ladj = t.log_abs_det_jacobian(x, yf)
        return x.reshape(y.shape), InverseReport.exact(x, -ladj)


class AdditiveCoupling(_Coupling):
    """NICE's additive coupling ``y_b = x_b + t(x_a)``: volume-preserving (logdet 0).

    Parameters
    ----------
    features : int
        Number of values per sample (inputs of any shape are flattened).
    hidden : int
        Width of the conditioner network ``t``.
    depth : int
        Hidden layers of ``t``.
    mask : bool tensor, optional
        True for the passed-through part ``x_a``; default the first half.
    """

    def _meta(self, x_a: Tensor) -> DependentTransform:
        return DependentTransform(AdditiveTransform(self.net(x_a)), 1)


class AffineCoupling(_Coupling):
    """RealNVP's affine coupling ``y_b = exp(s(x_a)) x_b + t(x_a)``.

    The log-scale is squashed by zuko's ``MonotonicAffineTransform`` so that
    the scale stays within ``(slope, 1 / slope)``, which bounds the block's
    conditioning.

    Parameters
    ----------
    features, hidden, depth, mask
        As for :class:`AdditiveCoupling`.
    slope : float
        Smallest scale factor, in (0, 1).
    """

    n_params = 2

    def __init__(
        self,
        features: int,
        hidden: int = 256,
        *,
        depth: int = 2,
        mask: Tensor | None = None,
        slope: float = 1e-2,
    ) -> None:
        super().__init__(features, hidden, depth=depth, mask=mask)
        if not 0 < slope < 1:
            raise NNInvError(f"slope must be in (0, 1), got {slope}")
        self.slope = float(slope)

    def _meta(self, x_a: Tensor) -> DependentTransform:
        shift, scale = self.net(x_a).chunk(2, dim=-1)
        return DependentTransform(MonotonicAffineTransform(shift, scale, slope=self.slope), 1)

"""Regularisers: unnormalised priors ``log p(x) = -weight * penalty(x)``.

:class:`L2` (the squared distance to a centre) and :class:`TotalVariation` (the
smoothed total variation of images) apply to inputs of any shape, have a
differentiable ``log_prob`` for ``method="optimize"``, and cannot be sampled or
conditioned. Combine them with other priors by arithmetic, e.g.
``gauss + 0.1 * TotalVariation()``.
"""

from __future__ import annotations

__all__ = ["L2", "TotalVariation"]

import math
from abc import abstractmethod
from collections.abc import Sequence

import torch
from torch import Tensor

from ..errors import NNInvError
from ._base import Prior, _check_weight


class _Regulariser(Prior):
    """An unnormalised prior ``log p(x) = -weight * penalty(x)`` that cannot be sampled.

    Regularisers apply to inputs of any shape; ``event_shape`` is set only when given.
    """

    def __init__(self, weight: float, event_shape: Sequence[int] | None) -> None:
        self.weight = _check_weight(weight, f"{type(self).__name__} weight")
        if event_shape is not None:
            self.event_shape = tuple(int(s) for s in event_shape)

    @abstractmethod
    def penalty(self, x: Tensor) -> Tensor:
        """The penalty of each sample (N,), without the weight."""

    def log_prob(self, x: Tensor) -> Tensor:
        if x.ndim < 2:
            raise NNInvError(
                f"{type(self).__name__} expects a batch (N, ...), got shape {tuple(x.shape)}"
            )
        if hasattr(self, "event_shape"):
            self._flat(x)
        return -self.weight * self.penalty(x)

    def sample(self, n: int, seed: int | None = None) -> Tensor:
        raise NNInvError(
            f"{type(self).__name__} is an unnormalised regulariser and cannot be sampled"
        )


class L2(_Regulariser):
    """The squared L2 norm regulariser, ``log p(x) = -weight * ||x - center||^2``.

    Mahendran & Vedaldi's alpha-norm regulariser with ``alpha = 2``; on its own it
    makes ``method="optimize"`` return the member of the preimage nearest to
    ``center``.

    Parameters
    ----------
    weight : float
        Positive.
    center : float or Tensor
        A scalar, or a tensor broadcastable to one sample.
    event_shape : sequence of int, optional
        The input shape, if it should be checked.

    References
    ----------
    Mahendran & Vedaldi (2015), "Understanding deep image representations by
    inverting them", CVPR.

    Examples
    --------
    >>> L2(0.5).log_prob(torch.ones(2, 3))
    tensor([-1.5000, -1.5000])
    """

    def __init__(
        self,
        weight: float = 1.0,
        center: float | Tensor = 0.0,
        event_shape: Sequence[int] | None = None,
    ) -> None:
        super().__init__(weight, event_shape)
        self.center = torch.as_tensor(center, dtype=torch.float64)

    def penalty(self, x: Tensor) -> Tensor:
        c = self.center.to(x.device, x.dtype)
        return (x - c).pow(2).reshape(x.shape[0], -1).sum(1)


class TotalVariation(_Regulariser):
    """The total-variation regulariser of images, ``log p(x) = -weight * TV_beta(x)``.

    ``TV_beta(x) = sum_ij ((x[i, j+1] - x[i, j])^2 + (x[i+1, j] - x[i, j])^2 + eps^2)^(beta/2)
    - eps^beta``, summed over channels, with zero differences across the border.
    ``beta = 1`` is the isotropic total variation (smoothed by ``eps`` so that it
    is differentiable), ``beta = 2`` the squared-gradient (Sobolev) penalty.

    Parameters
    ----------
    weight : float
        Positive.
    beta : float
        Exponent, at least 1.
    eps : float
        Smoothing, positive.
    image_shape : sequence of int, optional
        ``(H, W)`` or ``(C, H, W)`` of one sample. By default the last two
        dimensions of the input are the image, and flat inputs ``(N, D)`` with
        ``D`` a perfect square are square images.
    event_shape : sequence of int, optional
        The input shape, if it should be checked.

    References
    ----------
    Rudin, Osher & Fatemi (1992), "Nonlinear total variation based noise
    removal algorithms", Physica D 60. Mahendran & Vedaldi (2015),
    "Understanding deep image representations by inverting them", CVPR.

    Examples
    --------
    >>> x = torch.zeros(1, 4, 4, dtype=torch.float64)
    >>> x[0, :, 2:] = 1.0  # a vertical edge of height 4
    >>> round(float(TotalVariation(eps=1e-9).penalty(x)[0]), 6)
    4.0
    """

    def __init__(
        self,
        weight: float = 1.0,
        *,
        beta: float = 1.0,
        eps: float = 1e-3,
        image_shape: Sequence[int] | None = None,
        event_shape: Sequence[int] | None = None,
    ) -> None:
        super().__init__(weight, event_shape)
        if not float(beta) >= 1:
            raise NNInvError(f"TotalVariation beta must be at least 1, got {beta}")
        if not float(eps) > 0:
            raise NNInvError(f"TotalVariation eps must be positive, got {eps}")
        self.beta, self.eps = float(beta), float(eps)
        self.image_shape = tuple(int(s) for s in image_shape) if image_shape else None
        if self.image_shape is not None and len(self.image_shape) not in (2, 3):
            raise NNInvError(f"image_shape must be (H, W) or (C, H, W), got {self.image_shape}")

    def _images(self, x: Tensor) -> Tensor:
        N = x.shape[0]
        if self.image_shape is not None:
            if math.prod(self.image_shape) != x[0].numel():
                raise NNInvError(
                    f"TotalVariation: samples of shape {tuple(x.shape[1:])} do not hold "
                    f"images of shape {self.image_shape}"
                )
            return x.reshape(N, -1, *self.image_shape[-2:])
        if x.ndim >= 3:
            return x.reshape(N, -1, *x.shape[-2:])
        side = math.isqrt(x.shape[1])
        if side * side != x.shape[1] or side < 2:
            raise NNInvError(
                f"TotalVariation: cannot read flat samples of size {x.shape[1]} as square "
                "images; pass image_shape=(H, W)"
            )
        return x.reshape(N, 1, side, side)

    def penalty(self, x: Tensor) -> Tensor:
        im = self._images(x)
        dh = torch.nn.functional.pad(im[..., :, 1:] - im[..., :, :-1], (0, 1))
        dv = torch.nn.functional.pad(im[..., 1:, :] - im[..., :-1, :], (0, 0, 0, 1))
        e2 = self.eps**2
        t = (dh * dh + dv * dv + e2).pow(self.beta / 2) - e2 ** (self.beta / 2)
        return t.reshape(x.shape[0], -1).sum(1)

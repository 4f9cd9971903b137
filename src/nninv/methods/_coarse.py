"""Coarse-to-fine starts for image inputs: solve at a lower resolution first.

``invert(..., method="optimize", coarse=14)`` on ``(C, 28, 28)`` inputs first
solves the same problem over ``(C, 14, 14)`` images seen through a bilinear
upsampling, ``f(up(u))`` with the prior scored on ``up(u)``, and then starts the
full-resolution search from ``up(u)``. A quarter as many unknowns, all of them
smooth at the pixel scale, make the first search faster and keep it away from
the pixel-level patterns that a prior without data (such as
:class:`~nninv.priors.BatchNormPrior`) cannot rule out; the second search only
adds the detail the target asks for. This is the octave scheme of feature
visualisation (Mordvintsev et al. 2015) and of multi-resolution image
inversion (Mahendran & Vedaldi 2015).

References
----------
Mordvintsev, Olah and Tyka (2015), "Inceptionism: going deeper into neural
networks", Google Research blog. Mahendran & Vedaldi (2015), "Understanding
deep image representations by inverting them", CVPR.
"""

from __future__ import annotations

__all__ = ["coarse_problem", "coarse_shape"]

import dataclasses
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import NNInvError
from ..priors import Prior
from . import Problem


def coarse_shape(size: Any, input_shape: tuple[int, ...]) -> tuple[int, ...]:
    """The coarse input shape for option ``coarse=size``; NNInvError if it does not apply.

    ``size`` is an int (square) or a pair ``(h, w)``, smaller than the input's
    ``(H, W)`` and at least 2; the inputs must be images ``(C, H, W)`` or ``(H, W)``.
    """
    if len(input_shape) not in (2, 3):
        raise NNInvError(
            f"option coarse needs image inputs (C, H, W) or (H, W); the input shape is "
            f"{input_shape}"
        )
    if isinstance(size, int) and not isinstance(size, bool):
        hw = (size, size)
    elif (
        isinstance(size, (tuple, list))
        and len(size) == 2
        and all(isinstance(s, int) and not isinstance(s, bool) for s in size)
    ):
        hw = (int(size[0]), int(size[1]))
    else:
        raise NNInvError(f"option coarse must be an int or a pair of ints (h, w), got {size!r}")
    H, W = input_shape[-2:]
    if not (2 <= hw[0] <= H and 2 <= hw[1] <= W) or hw == (H, W):
        raise NNInvError(
            f"option coarse={size!r}: the coarse size must be at least 2 and below the "
            f"input's (H, W) = ({H}, {W})"
        )
    return (*input_shape[:-2], *hw)


class _Upsample(nn.Module):
    """``(N, *coarse) -> (N, *fine)`` by bilinear interpolation (as ``F.interpolate``)."""

    def __init__(self, fine: tuple[int, ...]) -> None:
        super().__init__()
        self.fine = fine

    def forward(self, u: Tensor) -> Tensor:
        flat = u.dim() == 3  # (N, h, w): add the channel axis for interpolate
        v = u.unsqueeze(1) if flat else u
        v = F.interpolate(v, size=self.fine[-2:], mode="bilinear", align_corners=False)
        return v.squeeze(1) if flat else v


class _Upsampled(Prior):
    """The fine prior scored on upsampled coarse images: ``log p(up(u))``."""

    def __init__(self, prior: Prior, up: _Upsample, shape: tuple[int, ...]) -> None:
        self.prior, self.up, self.event_shape = prior, up, shape

    def log_prob(self, x: Tensor) -> Tensor:
        u = x.reshape(x.shape[0], *self.event_shape)
        return self.prior.log_prob(self.up(u))

    def sample(self, n: int, seed: int | None = None) -> Tensor:
        raise NNInvError("the coarse stage's prior cannot be sampled")

    def __repr__(self) -> str:
        return f"Upsampled({self.prior!r}, {self.event_shape})"


def downsample(x: Tensor, shape: tuple[int, ...]) -> Tensor:
    """Area-average ``x`` (any leading batch axes) to the spatial size of ``shape``."""
    lead = x.shape[: x.dim() - len(shape)]
    v = x.reshape(-1, *([1] if len(shape) == 2 else []), *x.shape[x.dim() - len(shape) :])
    v = F.adaptive_avg_pool2d(v, cast(tuple[int, int], shape[-2:]))  # the last two axes
    return v.reshape(*lead, *shape)


def coarse_problem(problem: Problem, size: Any, options: Any) -> tuple[Problem, _Upsample]:
    """The problem over coarse images, and the upsampling that maps its answers back.

    ``options`` are the fine run's options (a dataclass with fields ``x0`` and
    ``bounds``, such as ``OptimizeOptions`` without ``coarse``); ``x0`` and tensor
    ``bounds`` are area-averaged to the coarse size, scalar bounds kept (bilinear
    upsampling keeps a coarse image inside them).
    """
    shape = coarse_shape(size, problem.input_shape)
    up = _Upsample(problem.input_shape)
    model = nn.Sequential(up, problem.model)
    prior = None if problem.prior is None else _Upsampled(problem.prior, up, shape)
    changes: dict[str, Any] = {}
    if options.x0 is not None:
        x0 = torch.as_tensor(options.x0).to(problem.device, problem.dtype)
        changes["x0"] = downsample(x0.reshape(problem.n, *problem.input_shape), shape)
    bounds = options.bounds
    if bounds is not None:
        try:
            lo, hi = bounds
        except (TypeError, ValueError):
            raise NNInvError(f"bounds must be a pair (lo, hi), got {bounds!r}") from None
        changes["bounds"] = tuple(
            downsample(
                torch.broadcast_to(torch.as_tensor(b, dtype=problem.dtype), problem.input_shape),
                shape,
            )
            if torch.as_tensor(b).dim() > 0
            else b
            for b in (lo, hi)
        )
    opts = dataclasses.replace(options, **changes)
    sub = dataclasses.replace(
        problem, model=model, prior=prior, input_shape=shape, options=opts, _chain=None
    )
    return sub, up

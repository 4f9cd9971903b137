"""A piecewise-linear network as float64 matrices on the unit cube of the box.

The model is analysed into its chain (:mod:`nninv.model.chain`): affine blocks
(Linear, Conv, average pooling, BatchNorm in eval, reshapes), ReLU or leaky
ReLU activations, and max pooling, rewritten exactly as extra ReLU layers
(:mod:`nninv.model.pooling`). The input box ``[lo, hi]`` is mapped onto ``[0, 1]^d`` (``x = lo
+ s u``) and folded into the first affine map, so every polytope, LP and volume
works on well-scaled coordinates; :meth:`PLNet.to_x` maps constraints back.
"""

from __future__ import annotations

__all__ = ["PLNet", "as_plnet"]

import math
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import torch
from torch import nn

from ..bounds import Layers
from ..errors import NNInvError
from ..model.chain import Affine, Elementwise, Unsupported, analyse
from ..model.layers import set_input_shape
from ..model.pooling import MAXPOOL, maxpool_after


@dataclass(frozen=True)
class PLNet:
    """``y = W_L a(... a(W_1 u + c_1) ...) + c_L`` on ``u in [0, 1]^d``.

    ``slopes[i]`` is the slope for negative inputs of the activation after layer ``i``
    (0 for ReLU); the last layer has none.
    """

    weights: tuple[np.ndarray, ...]
    biases: tuple[np.ndarray, ...]
    slopes: tuple[float, ...]
    lo: np.ndarray
    hi: np.ndarray

    @cached_property
    def layers(self) -> Layers:
        """The same network as torch float64 :class:`~nninv.bounds.Layers` (on ``u``)."""
        return Layers(
            [torch.from_numpy(W) for W in self.weights],
            [torch.from_numpy(c) for c in self.biases],
            list(self.slopes),
        )

    @property
    def d(self) -> int:
        return int(self.lo.size)

    @property
    def n_out(self) -> int:
        return int(self.biases[-1].size)

    @property
    def scale(self) -> np.ndarray:
        return self.hi - self.lo

    @property
    def box_volume(self) -> float:
        return float(np.prod(self.scale))

    def forward_u(self, u: np.ndarray) -> np.ndarray:
        """Outputs at unit-cube points ``u`` (N, d), float64."""
        h = np.asarray(u, dtype=np.float64)
        for i, (W, c) in enumerate(zip(self.weights, self.biases)):
            h = h @ W.T + c
            if i < len(self.slopes):
                h = np.where(h >= 0, h, self.slopes[i] * h)
        return h

    def maps_into(self, u: np.ndarray, parts: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
        """Which unit-cube points ``u`` the net maps into the union of ``{G y <= g}``."""
        Y = self.forward_u(u)
        R = np.zeros(len(Y), dtype=bool)
        for G, g in parts:
            R |= np.all(Y @ G.T <= g, axis=1) if G.shape[0] else True
        return R

    def to_u(self, x: np.ndarray) -> np.ndarray:
        return (np.asarray(x, dtype=np.float64) - self.lo) / self.scale

    def to_x(self, u: np.ndarray) -> np.ndarray:
        return self.lo + np.asarray(u, dtype=np.float64) * self.scale

    def constraints_to_x(self, A: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``A u <= b`` as ``A' x <= b'`` with ``u = (x - lo) / s``."""
        Ax = A / self.scale
        return Ax, b + Ax @ self.lo


def _box(box: Any, d: int, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    try:
        arr = np.asarray(box, dtype=np.float64)
    except (TypeError, ValueError):
        raise NNInvError(f"box must be a (d, 2) array of [lo, hi] rows, got {box!r}") from None
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise NNInvError(f"box must have shape (d, 2) of [lo, hi] rows, got shape {arr.shape}")
    if arr.shape[0] != d:
        raise NNInvError(
            f"box has {arr.shape[0]} rows but the model's input has {d} values "
            f"(input shape {shape})"
        )
    lo, hi = arr[:, 0].copy(), arr[:, 1].copy()
    bad = np.flatnonzero(~np.isfinite(arr).all(1) | (hi <= lo))
    if bad.size:
        i = int(bad[0])
        raise NNInvError(
            f"box row {i} is [{lo[i]}, {hi[i]}]: every row needs finite lo < hi "
            f"(a region has volume only in a box of positive width)"
        )
    return lo, hi


def _rowwise(model: nn.Module, shape: tuple[int, ...], d: int) -> nn.Module | None:
    """A model whose layers all act on the last axis, read as a map of one row."""
    if len(shape) < 2 or shape[-1] != d or not isinstance(model, nn.Sequential):
        return None
    ok = (nn.Linear, nn.ReLU, nn.LeakyReLU, nn.Identity, nn.Dropout)
    if not all(isinstance(m, ok) for m in model):
        return None
    row = nn.Sequential(*model)
    set_input_shape(row, (d,))
    return row


@dataclass
class _Builder:
    """The layers read so far and the affine map ``W h + c`` since the last activation."""

    W: np.ndarray
    c: np.ndarray
    nonneg_source: bool  # the ``h`` that W acts on is >= 0
    Ws: list[np.ndarray]
    cs: list[np.ndarray]
    slopes: list[float]

    def activation(self, slope: float) -> None:
        self.Ws.append(self.W)
        self.cs.append(self.c)
        self.slopes.append(slope)
        self.W, self.c = np.eye(self.W.shape[0]), np.zeros(self.W.shape[0])
        self.nonneg_source = slope == 0.0

    def maxpool(self, step: Unsupported) -> None:
        layers, W_out, c_out = maxpool_after(step, self.W, self.c, self.nonneg_source)
        for W, c in layers:
            self.W, self.c = W, c
            self.activation(0.0)
        self.W, self.c = W_out, c_out


def as_plnet(model: nn.Module, box: Any) -> PLNet:
    """Read ``model`` and ``box`` into a :class:`PLNet`.

    A model whose declared input is ``(..., k)`` and whose layers all act on the
    last axis (Linear and activations only; auto_park declares ``(batch, 2, 2)``)
    maps every row alike: a box of ``k`` rows is then the region of one row.
    Max pooling (1-3-D, adaptive, any kernel, stride, padding, dilation and
    ``ceil_mode``) becomes extra ReLU layers (:mod:`nninv.model.pooling`).

    Raises
    ------
    NNInvError
        For a layer that is not piecewise linear (naming it), or a box that does not
        fit the input.
    """
    chain = analyse(model)
    shape = chain.input_shape
    n_box = np.shape(box)[0] if np.ndim(box) >= 1 else -1
    if n_box != chain.n_in and n_box > 0:
        row = _rowwise(model, shape, n_box)
        if row is not None:
            chain = analyse(row)
            shape = chain.input_shape
    lo, hi = _box(box, chain.n_in, shape)
    n = chain.n_in
    build = _Builder(np.eye(n), np.zeros(n), bool((lo >= 0).all()), [], [], [])
    for step in chain.steps:
        if isinstance(step, Affine):
            A, b = (t.numpy() for t in step.matrix(torch.float64))
            build.W, build.c = A @ build.W, A @ build.c + b
        elif isinstance(step, Elementwise) and (
            step.act.name == "relu" or step.act.name.startswith("leaky_relu")
        ):
            build.activation(float(getattr(step.layer.module, "negative_slope", 0.0)))
        elif isinstance(step, Unsupported) and type(step.layer.module) in MAXPOOL:
            build.maxpool(step)
        else:
            raise NNInvError(
                f"decision regions need a piecewise-linear network (Linear, Conv, ReLU, "
                f"LeakyReLU, max or average pooling, BatchNorm in eval, reshapes); "
                f"{step.label()} is not one of them"
            )
    Ws, cs = [*build.Ws, build.W], [*build.cs, build.c]
    s = hi - lo
    Ws[0], cs[0] = Ws[0] * s, cs[0] + Ws[0] @ lo
    if not all(math.isfinite(float(np.abs(w).sum())) for w in Ws):
        raise NNInvError("the network's weights are not finite")
    return PLNet(tuple(Ws), tuple(cs), tuple(build.slopes), lo, hi)

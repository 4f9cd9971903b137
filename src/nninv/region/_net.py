"""A piecewise-linear network as float64 matrices on the unit cube of the box.

The model is analysed into its chain (:mod:`nninv.model.chain`): affine blocks
(Linear, Conv, average pooling, BatchNorm in eval, reshapes), ReLU or leaky
ReLU activations, and max pooling, rewritten exactly as extra ReLU layers
(:func:`maxpool_layers`: ``max(a, b) = b + relu(a - b)``, a tree of pairwise
maxima over each window). The input box ``[lo, hi]`` is mapped onto ``[0, 1]^d`` (``x = lo
+ s u``) and folded into the first affine map, so every polytope, LP and volume
works on well-scaled coordinates; :meth:`PLNet.to_x` maps constraints back.
"""

from __future__ import annotations

__all__ = ["PLNet", "as_plnet"]

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import NNInvError
from ..model.chain import Affine, Elementwise, Unsupported, analyse
from ..model.layers import set_input_shape

#: Max pooling modules read as ReLU layers, with the number of axes each pools over.
_MAXPOOL: dict[type, int] = {
    nn.MaxPool1d: 1,
    nn.MaxPool2d: 2,
    nn.MaxPool3d: 3,
    nn.AdaptiveMaxPool1d: 1,
    nn.AdaptiveMaxPool2d: 2,
    nn.AdaptiveMaxPool3d: 3,
}


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


def _per_axis(value: Any, nd: int) -> tuple[int, ...]:
    v = (value,) * nd if isinstance(value, int) else tuple(value)
    return tuple(int(t) for t in (v * nd if len(v) == 1 else v))


def _axis_windows(mod: nn.Module, axis: int, nd: int, n: int, n_out: int) -> list[list[int]]:
    """The input positions along one pooled axis that each output position reads."""
    if isinstance(mod, nn.AdaptiveMaxPool1d | nn.AdaptiveMaxPool2d | nn.AdaptiveMaxPool3d):
        return [list(range((o * n) // n_out, -((-(o + 1) * n) // n_out))) for o in range(n_out)]
    k = _per_axis(mod.kernel_size, nd)[axis]
    s = _per_axis(mod.stride, nd)[axis]
    p = _per_axis(mod.padding, nd)[axis]
    dil = _per_axis(mod.dilation, nd)[axis]
    # Max pooling pads with -inf: a padded slot is never the max, so it is left out.
    return [
        [i for i in range(o * s - p, o * s - p + dil * k, dil) if 0 <= i < n] for o in range(n_out)
    ]


def pool_windows(step: Unsupported) -> list[np.ndarray]:
    """Flat input indices of each max pooling window, in the order of the flat output.

    Kernel, stride, padding, dilation, ``ceil_mode`` and the adaptive pools are read
    off the module and its recorded output shape.

    Raises
    ------
    NNInvError
        For a window without any input.
    """
    mod, info = step.layer.module, step.layer
    nd = _MAXPOOL[type(mod)]
    lead, sp_in, sp_out = info.in_shape[:-nd], info.in_shape[-nd:], info.out_shape[-nd:]
    if len(info.in_shape) < nd or info.out_shape[:-nd] != lead:
        raise NNInvError(
            f"{step.label()}: cannot read its windows from input shape {info.in_shape} "
            f"and output shape {info.out_shape}"
        )
    axes = [_axis_windows(mod, a, nd, sp_in[a], sp_out[a]) for a in range(nd)]
    if any(not w for ax in axes for w in ax):
        raise NNInvError(f"{step.label()}: a pooling window holds only padding")
    strides = np.cumprod((1, *sp_in[::-1]))[:-1][::-1]
    per_map: list[np.ndarray] = []
    for combo in np.ndindex(*sp_out):
        grids = np.meshgrid(*[np.asarray(axes[a][o]) for a, o in enumerate(combo)], indexing="ij")
        per_map.append(sum(g.ravel() * st for g, st in zip(grids, strides)))
    size = math.prod(sp_in)
    return [w + c * size for c in range(math.prod(lead)) for w in per_map]


def maxpool_layers(
    windows: list[np.ndarray], n: int, nonneg: bool
) -> tuple[list[np.ndarray], np.ndarray]:
    """Max over ``windows`` as ReLU layers: ``h_{l+1} = relu(E_l h_l)``, output ``P h_m``.

    ``h_0`` is the pooling input (``n`` values). Each level pairs the terms of every
    window, ``max(a, b) = b + relu(a - b)``, and carries ``b`` (and an unpaired
    term) through the ReLU as ``relu(b) - relu(-b)``, or as ``relu(b)`` when
    ``nonneg`` says the inputs are ``>= 0``. Subtrees shared by overlapping windows
    are built once. Exact: ``P h_m`` equals the max over each window for every
    input. Returns ``([E_0, ..., E_{m-1}], P)``; no layers when every window holds
    one input.
    """
    terms: list[list[Any]] = [[int(i) for i in w] for w in windows]
    expr: dict[Any, dict[int, float]] = {i: {i: 1.0} for i in range(n)}
    width = n
    layers: list[np.ndarray] = []
    while any(len(t) > 1 for t in terms):
        level = _Level(expr, nonneg)
        terms = [level.reduce(t) for t in terms]
        layers.append(_dense(level.rows, width))
        expr, width = level.out, len(level.rows)
    return layers, _dense([expr[t[0]] for t in terms], width)


class _Level:
    """One ReLU layer of the max tree: its neurons (rows over the level below) and the
    terms of the level above as combinations of them; shared terms are built once."""

    def __init__(self, expr: dict[Any, dict[int, float]], nonneg: bool) -> None:
        self.expr, self.nonneg = expr, nonneg
        self.rows: list[dict[int, float]] = []
        self.index: dict[Any, int] = {}
        self.out: dict[Any, dict[int, float]] = {}

    def neuron(self, key: Any, row: dict[int, float]) -> int:
        if key not in self.index:
            self.index[key] = len(self.rows)
            self.rows.append(row)
        return self.index[key]

    def carry(self, node: Any) -> dict[int, float]:
        """``node`` through the ReLU: ``relu(v)``, or ``relu(v) - relu(-v)``."""
        e = self.expr[node]
        up = self.neuron(("+", node), e)
        if self.nonneg:
            return {up: 1.0}
        return {up: 1.0, self.neuron(("-", node), {k: -v for k, v in e.items()}): -1.0}

    def reduce(self, t: list[Any]) -> list[Any]:
        """Pair the terms of one window: ``max(a, b) = b + relu(a - b)``."""
        nt = []
        for a, b in zip(t[0:-1:2], t[1::2]):
            node = (a, b)
            if node not in self.out:
                diff = dict(self.expr[a])
                for k, v in self.expr[b].items():
                    diff[k] = diff.get(k, 0.0) - v
                self.out[node] = {**self.carry(b), self.neuron(("d", node), diff): 1.0}
            nt.append(node)
        if len(t) % 2:
            self.out.setdefault(t[-1], self.carry(t[-1]))
            nt.append(t[-1])
        return nt


def _dense(rows: list[dict[int, float]], width: int) -> np.ndarray:
    M = np.zeros((len(rows), width))
    for r, row in enumerate(rows):
        for k, v in row.items():
            M[r, k] += v
    return M


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
        nonneg = self.nonneg_source and bool((self.W >= 0).all() and (self.c >= 0).all())
        Es, P = maxpool_layers(pool_windows(step), self.W.shape[0], nonneg)
        for E in Es:
            self.W, self.c = E @ self.W, E @ self.c
            self.activation(0.0)
        self.W, self.c = P @ self.W, P @ self.c


def as_plnet(model: nn.Module, box: Any) -> PLNet:
    """Read ``model`` and ``box`` into a :class:`PLNet`.

    A model whose declared input is ``(..., k)`` and whose layers all act on the
    last axis (Linear and activations only; auto_park declares ``(batch, 2, 2)``)
    maps every row alike: a box of ``k`` rows is then the region of one row.
    Max pooling (1-3-D, adaptive, any kernel, stride, padding, dilation and
    ``ceil_mode``) becomes extra ReLU layers (:func:`maxpool_layers`).

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
        elif isinstance(step, Unsupported) and type(step.layer.module) in _MAXPOOL:
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

"""Max pooling as ReLU layers: the exact rewrite that lets piecewise-linear tools take it.

Max pooling is piecewise linear: ``max(a, b) = b + relu(a - b)``, and a window
of ``k`` values is a tree of pairwise maxima, ``ceil(log2 k)`` ReLU layers deep.
A value carried through a ReLU layer unchanged is ``relu(v) - relu(-v)``, or
``relu(v)`` when it is known to be non-negative (a ReLU right before the pool).
Padding is ``-inf`` for max pooling, so a padded slot is never the max and is
left out of its window. :func:`pool_windows` reads the windows of a chain's
max pooling step (1-3-D, adaptive, any kernel, stride, padding, dilation and
``ceil_mode``); :func:`maxpool_layers` builds the layers; :func:`maxpool_after`
composes them with the affine map before the pool.
"""

from __future__ import annotations

__all__ = ["MAXPOOL", "maxpool_after", "maxpool_layers", "pool_windows"]

import math
from typing import Any

import numpy as np
from torch import nn

from ..errors import NNInvError
from .chain import Unsupported

#: Max pooling modules rewritten here, with the number of axes each pools over.
MAXPOOL: dict[type, int] = {
    nn.MaxPool1d: 1,
    nn.MaxPool2d: 2,
    nn.MaxPool3d: 3,
    nn.AdaptiveMaxPool1d: 1,
    nn.AdaptiveMaxPool2d: 2,
    nn.AdaptiveMaxPool3d: 3,
}


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
    nd = MAXPOOL[type(mod)]
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


def maxpool_after(
    step: Unsupported, W: np.ndarray, c: np.ndarray, source_nonneg: bool
) -> tuple[list[tuple[np.ndarray, np.ndarray]], np.ndarray, np.ndarray]:
    """The pool of ``v = W h + c`` as ReLU layers: ``([(W_1, c_1), ...], W', c')``.

    Each ``(W_k, c_k)`` is a layer followed by a ReLU (the first acts on ``h``, the
    others on the previous layer's output); ``W' g + c'`` is the pool's output on the
    last layer's output ``g`` (on ``h`` when no layer is needed). ``source_nonneg``
    says ``h >= 0`` (it comes out of a ReLU); with ``W, c >= 0`` the pooled values are
    then non-negative, which halves the carried neurons.
    """
    nonneg = source_nonneg and bool((W >= 0).all() and (c >= 0).all())
    Es, P = maxpool_layers(pool_windows(step), W.shape[0], nonneg)
    layers = [(Es[0] @ W, Es[0] @ c)] if Es else []
    layers += [(E, np.zeros(E.shape[0])) for E in Es[1:]]
    if not Es:
        return layers, P @ W, P @ c
    return layers, P, np.zeros(P.shape[0])

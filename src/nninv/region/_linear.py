"""Linear bounds of a piecewise-linear network's output over a box (CROWN).

For a box ``S`` of the unit cube and rows ``G y - g``, :func:`linear_bounds` finds
``a_r . u + a0_r`` below (``upper=False``) or above (``upper=True``) each
``G_r y(u) - g_r`` for every ``u`` in ``S``. Pre-activation bounds of each layer
come from the same backward pass run on that layer (Zhang et al., "Efficient
neural network robustness certification with general activation functions",
NeurIPS 2018); an unstable ReLU ``z in [l, h]`` is bounded above by its chord and
below by ``alpha z`` (alpha in {slope, 1}, the one with the smaller area).
"""

from __future__ import annotations

__all__ = ["linear_bounds", "pre_bounds"]

import numpy as np

from ._net import PLNet


def _relax(l: np.ndarray, h: np.ndarray, a: float) -> tuple[np.ndarray, ...]:
    """Per neuron: lower slope, upper slope and upper intercept of ``max(z, a z)``."""
    lower = np.where(l >= 0, 1.0, a)
    upper = lower.copy()
    icpt = np.zeros_like(l)
    mixed = (l < 0) & (h > 0)
    if mixed.any():
        lm, hm = l[mixed], h[mixed]
        s = (hm - a * lm) / (hm - lm)
        upper[mixed] = s
        icpt[mixed] = a * lm - s * lm
        lower[mixed] = np.where(hm >= -lm, 1.0, a)
    return lower, upper, icpt


def _backward(
    net: PLNet,
    upto: int,
    C: np.ndarray,
    c0: np.ndarray,
    bounds: list[tuple[np.ndarray, np.ndarray]],
    upper: bool,
) -> tuple[np.ndarray, np.ndarray]:
    """``C z_upto + c0`` bounded (below, or above if ``upper``) by ``Lam u + const``."""
    Lam = C.copy()
    const = c0.astype(np.float64).copy()
    for i in range(upto - 1, -1, -1):
        # z_{i+1} = W_{i+1} h_i + c_{i+1}; h_i = act(z_i)
        const = const + Lam @ net.biases[i + 1]
        Lh = Lam @ net.weights[i + 1]
        lo_s, up_s, up_t = _relax(*bounds[i], net.slopes[i])
        use_up = (Lh < 0) != upper  # the upper relaxation where it bounds the right way
        slope = np.where(use_up, up_s, lo_s)
        const = const + (np.where(use_up, Lh, 0.0) * up_t).sum(axis=1)
        Lam = Lh * slope
    const = const + Lam @ net.biases[0]
    return Lam @ net.weights[0], const


def _concretize(
    A: np.ndarray, a0: np.ndarray, lo: np.ndarray, hi: np.ndarray, upper: bool
) -> np.ndarray:
    mid, rad = (lo + hi) / 2, (hi - lo) / 2
    centre = A @ mid + a0
    spread = np.abs(A) @ rad
    return centre + spread if upper else centre - spread


def pre_bounds(net: PLNet, lo: np.ndarray, hi: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """CROWN bounds ``(l, h)`` of every hidden layer's pre-activations over ``[lo, hi]``."""
    bounds: list[tuple[np.ndarray, np.ndarray]] = []
    for k in range(len(net.weights) - 1):
        n = net.weights[k].shape[0]
        eye, zero = np.eye(n), np.zeros(n)
        Al, al = _backward(net, k, eye, zero, bounds, upper=False)
        Au, au = _backward(net, k, eye, zero, bounds, upper=True)
        bounds.append(
            (_concretize(Al, al, lo, hi, upper=False), _concretize(Au, au, lo, hi, upper=True))
        )
    return bounds


def linear_bounds(
    net: PLNet,
    lo: np.ndarray,
    hi: np.ndarray,
    G: np.ndarray,
    g: np.ndarray,
    *,
    upper: bool,
    bounds: list[tuple[np.ndarray, np.ndarray]] | None = None,
) -> tuple[np.ndarray, np.ndarray, list[tuple[np.ndarray, np.ndarray]]]:
    """``(A, a0)`` with ``A u + a0`` below (or above) ``G y(u) - g`` on ``[lo, hi]``.

    Also returns the pre-activation bounds used, to reuse for other rows.
    """
    if bounds is None:
        bounds = pre_bounds(net, lo, hi)
    L = len(net.weights)
    # Output y = W_L h_{L-2} + c_L: fold G into the last layer.
    C = G @ net.weights[-1]
    c0 = G @ net.biases[-1] - g
    if L == 1:
        return C, c0, bounds
    Lam = C
    const = c0
    lo_s, up_s, up_t = _relax(*bounds[L - 2], net.slopes[L - 2])
    use_up = (Lam < 0) != upper
    slope = np.where(use_up, up_s, lo_s)
    const = const + (np.where(use_up, Lam, 0.0) * up_t).sum(axis=1)
    A, a0 = _backward(net, L - 2, Lam * slope, const, bounds, upper)
    return A, a0, bounds

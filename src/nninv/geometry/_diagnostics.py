"""Mixing diagnostics of Markov chains: effective sample size and split R-hat.

Every sampler in :mod:`nninv.geometry` (the polytope walks and the walk on a
curved preimage) records the projections of its states on a few monitored
directions after burn-in; :func:`ess_rhat` turns that trace into the two
numbers a :class:`~nninv.geometry.Samples` reports. The estimators follow
Vehtari, Gelman, Simpson, Carpenter & Buerkner (2021), "Rank-normalization,
folding, and localization: an improved R-hat", Bayesian Analysis 16(2),
without rank normalisation.
"""

from __future__ import annotations

__all__ = ["ess_rhat"]

import math

import numpy as np


def _autocov(x: np.ndarray) -> np.ndarray:
    """Autocovariance of each row of ``x`` (chains, T) by FFT, lags 0..T-1."""
    T = x.shape[1]
    xc = x - x.mean(1, keepdims=True)
    size = 1 << (2 * T - 1).bit_length()
    f = np.fft.rfft(xc, size, axis=1)
    return np.fft.irfft(f * np.conj(f), size, axis=1)[:, :T] / T


def ess_rhat(trace: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Effective sample size and split R-hat of each column of ``trace`` (T, chains, q).

    Chains are split in halves; the combined autocorrelation is summed with
    Geyer's initial monotone sequence (Vehtari et al. 2021, without rank
    normalisation).
    """
    T, C, q = trace.shape
    if T < 4:
        return np.full(q, np.nan), np.full(q, np.nan)
    h = T // 2
    ess, rhat = np.empty(q), np.empty(q)
    for j in range(q):
        x = np.concatenate([trace[:h, :, j].T, trace[h : 2 * h, :, j].T])  # (2C, h)
        m, n = x.shape
        means = x.mean(1)
        acov = _autocov(x)
        W = acov[:, 0].mean() * n / max(n - 1, 1)
        B = n * means.var(ddof=1) if m > 1 else 0.0
        var_plus = (n - 1) / n * W + B / n
        if var_plus <= 0 or W <= 0:
            ess[j], rhat[j] = np.nan, np.nan
            continue
        rhat[j] = math.sqrt(var_plus / W)
        rho = 1 - (W - acov.mean(0)) / var_plus
        rho[0] = 1.0
        # Geyer: sum pairs while positive, keep the pair sums monotone
        tau, prev = -1.0, math.inf
        for t in range(0, n - 1, 2):
            pair = rho[t] + rho[t + 1]
            if pair < 0:
                break
            pair = min(pair, prev)
            tau += 2 * pair
            prev = pair
        ess[j] = m * n / max(tau, 1e-12)
    return ess, rhat

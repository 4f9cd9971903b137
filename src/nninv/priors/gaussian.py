"""The multivariate normal prior, fitted with a shrunk covariance.

:class:`GaussianPrior` has a closed-form ``log_prob`` and ``sample``, and
conditions exactly on linear equalities ``B x = d`` through the standard
Gaussian conditioning formulas; the posterior for each ``B`` is built once and
cached.
"""

from __future__ import annotations

__all__ = ["GaussianPrior"]

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from ..errors import NNInvError
from ._base import _LOG_2PI, LinearPosterior, Prior, _as_data, _Cached, _check_n
from ._covariance import _shrunk_covariance


class GaussianPrior(Prior):
    """A multivariate normal over inputs, with a shrunk covariance.

    Attributes
    ----------
    mean : Tensor (n,)
    covariance : Tensor (n, n)
    shrinkage : float
        The weight given to the scaled identity when fitting.

    Examples
    --------
    >>> g = torch.Generator().manual_seed(0)
    >>> X = torch.rand(500, 3, generator=g, dtype=torch.float64)
    >>> prior = GaussianPrior.fit(X)
    >>> prior.event_shape
    (3,)
    >>> B = torch.tensor([[1.0, 0.0, 0.0]], dtype=torch.float64)
    >>> x = prior.posterior(B).mean(torch.tensor([[0.25]], dtype=torch.float64))
    >>> round(float(x[0, 0]), 12)
    0.25
    """

    def __init__(
        self,
        mean: Tensor,
        covariance: Tensor,
        event_shape: Sequence[int] | None = None,
        shrinkage: float = 0.0,
    ) -> None:
        mean = torch.as_tensor(mean, dtype=torch.float64).reshape(-1)
        covariance = torch.as_tensor(covariance, dtype=torch.float64)
        n = mean.numel()
        if covariance.shape != (n, n):
            raise NNInvError(
                f"covariance must be ({n}, {n}) for a mean of {n} entries, "
                f"got {tuple(covariance.shape)}"
            )
        self.event_shape = tuple(event_shape) if event_shape is not None else (n,)
        if math.prod(self.event_shape) != n:
            raise NNInvError(f"event_shape {self.event_shape} does not hold {n} entries")
        self.mean = mean
        self.covariance = 0.5 * (covariance + covariance.T)
        L, bad = torch.linalg.cholesky_ex(self.covariance)
        if int(bad):
            raise NNInvError("covariance is not positive definite; fit with shrinkage > 0")
        self.scale_tril = L
        self.shrinkage = shrinkage
        self._c = _Cached()

    @classmethod
    def fit(cls, X: Any, shrinkage: float | str = "ledoit-wolf") -> GaussianPrior:
        """Fit mean and covariance to data ``X`` shaped ``(N, *input_shape)``.

        Parameters
        ----------
        X : Tensor or ndarray
        shrinkage : "ledoit-wolf" or float in [0, 1]
            Weight of the scaled identity in the covariance, so that a
            rank-deficient sample covariance (e.g. constant border pixels) still
            gives a proper density.
        """
        X = _as_data(X)
        Xf = X.reshape(X.shape[0], -1)
        mean = Xf.mean(0)
        cov, alpha = _shrunk_covariance(Xf - mean, shrinkage)
        return cls(mean, cov, tuple(X.shape[1:]), alpha)

    def _t(self, dtype: torch.dtype, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
        key = (dtype, device)
        if key not in self._c.tensors:
            self._c.tensors[key] = (
                self.mean.to(device, dtype),
                self.covariance.to(device, dtype),
                self.scale_tril.to(device, dtype),
            )
        return self._c.tensors[key]

    def log_prob(self, x: Tensor) -> Tensor:
        xf = self._flat(x)
        mu, _, L = self._t(xf.dtype, xf.device)
        z = torch.linalg.solve_triangular(L, (xf - mu).T, upper=False)
        logdet = 2 * torch.log(L.diagonal()).sum()
        return -0.5 * (z.pow(2).sum(0) + logdet + self.n_features * _LOG_2PI)

    def sample(self, n: int, seed: int | None = None) -> Tensor:
        n = _check_n(n)
        g = torch.Generator().manual_seed(seed) if seed is not None else None
        eps = torch.randn(n, self.n_features, generator=g, dtype=torch.float64)
        return (self.mean + eps @ self.scale_tril.T).reshape(n, *self.event_shape)

    def posterior(self, B: Tensor) -> LinearPosterior:
        return self._c.posterior_for(B, lambda: _GaussPosterior(self, B))


class _GaussPosterior(LinearPosterior):
    """A :class:`GaussianPrior` conditioned on ``B x = d``.

    Uses the gain ``K = Sigma B^T (B Sigma B^T)^-1``, computed once per ``B``.
    """

    def __init__(self, prior: GaussianPrior, B: Tensor) -> None:
        mu, cov, L = prior._t(B.dtype, B.device)
        G = cov @ B.T  # (n, r)
        S = B @ G
        Ls = torch.linalg.cholesky(0.5 * (S + S.T))
        self.K = torch.cholesky_solve(G.T, Ls).T.contiguous()  # (n, r) = G S^-1
        self.mu, self.L, self.B = mu, L, B
        self.Bmu = B @ mu

    def mean(self, d: Tensor) -> Tensor:
        return torch.addmm(self.mu, d - self.Bmu, self.K.T)

    def sample(self, d: Tensor, n: int, generator: torch.Generator | None = None) -> Tensor:
        N = d.shape[0]
        eps = torch.randn(N * n, self.mu.numel(), generator=generator, dtype=d.dtype)
        xs = self.mu + eps.to(d.device) @ self.L.T
        dd = d.repeat_interleave(n, 0)
        return (xs + (dd - xs @ self.B.T) @ self.K.T).reshape(N, n, -1)

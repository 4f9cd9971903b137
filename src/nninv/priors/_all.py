"""Priors over a model's inputs, fitted like scikit-learn estimators.

A prior says which members of a preimage look like data. Every prior has an
``event_shape`` (the model's input shape, without the batch dimension) and a
differentiable ``log_prob``. Linear-Gaussian families (:class:`GaussianPrior`,
:class:`GaussianMixturePrior`) also condition exactly on linear equality
constraints ``B x = d``: :meth:`Prior.posterior` returns an object whose
``mean(d)`` is the conditional mean ``E[x | B x = d]`` and whose
``sample(d, n)`` draws from the conditional distribution.

Priors are fitted on data shaped like the model input, ``(N, *input_shape)``,
given as a torch tensor or a NumPy array; they are stored in float64 and cast
to the dtype and device of whatever they meet.
"""

from __future__ import annotations

__all__ = [
    "L2",
    "CombinedPrior",
    "GaussianMixturePrior",
    "GaussianPrior",
    "LinearPosterior",
    "Prior",
    "TotalVariation",
]

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .._errors import NNInvError

_LOG_2PI = math.log(2 * math.pi)


def _as_data(X: Any, name: str = "X") -> Tensor:
    if isinstance(X, np.ndarray):
        X = torch.from_numpy(np.ascontiguousarray(X))
    if not isinstance(X, Tensor):
        raise NNInvError(f"{name} must be a torch tensor or a NumPy array, got {type(X).__name__}")
    if X.ndim < 2:
        raise NNInvError(f"{name} must be shaped (N, *input_shape), got shape {tuple(X.shape)}")
    if X.shape[0] < 2:
        raise NNInvError(f"{name} needs at least 2 samples to fit a prior, got {X.shape[0]}")
    X = X.detach().to("cpu", torch.float64)
    if not bool(torch.isfinite(X).all()):
        i = int((~torch.isfinite(X.reshape(X.shape[0], -1))).any(1).nonzero()[0])
        raise NNInvError(f"{name} contains NaN or inf (first in sample {i})")
    return X


def _ledoit_wolf_shrinkage(Xc: Tensor, S: Tensor) -> float:
    """Ledoit-Wolf shrinkage weight for centred data ``Xc`` with covariance ``S``.

    The same estimate as :func:`sklearn.covariance.ledoit_wolf_shrinkage`, but
    with ``sum_i |x_i|^4`` in O(N n) instead of a second N n^2 product.
    """
    N, n = Xc.shape
    mu = float(S.diagonal().sum()) / n
    beta_sum = float(Xc.pow(2).sum(1).pow(2).sum())  # sum_i |x_i|^4
    delta_ = float(S.pow(2).sum())  # |S|_F^2
    beta = (beta_sum / N - delta_) / (n * N)
    delta = (delta_ - 2.0 * mu * float(S.diagonal().sum()) + n * mu**2) / n
    beta = min(beta, delta)
    return 0.0 if beta == 0 else beta / delta


def _shrunk_covariance(Xc: Tensor, shrinkage: float | str) -> tuple[Tensor, float]:
    """Covariance of centred data, shrunk towards a scaled identity.

    ``shrinkage="ledoit-wolf"`` picks the weight of Ledoit & Wolf (2004); a float
    in [0, 1] fixes it. A floor of ``1e-6 * mean variance`` on the diagonal keeps
    the result positive definite even for constant pixels.
    """
    N, n = Xc.shape
    S = (Xc.T @ Xc) / N
    mu = float(S.diagonal().mean())
    if isinstance(shrinkage, str):
        if shrinkage != "ledoit-wolf":
            raise NNInvError(f"shrinkage must be 'ledoit-wolf' or a float, got {shrinkage!r}")
        alpha = _ledoit_wolf_shrinkage(Xc, S)
    else:
        alpha = float(shrinkage)
        if not 0.0 <= alpha <= 1.0:
            raise NNInvError(f"shrinkage must lie in [0, 1], got {alpha}")
    cov = (1 - alpha) * S
    cov.diagonal().add_(alpha * mu + 1e-6 * max(mu, 1e-12))
    return cov, alpha


class LinearPosterior(ABC):
    """A prior conditioned on ``B x = d`` for one fixed ``B`` with orthonormal rows.

    Built by :meth:`Prior.posterior`; the work that depends only on ``B`` is
    done once, so ``mean`` and ``sample`` cost about one matrix product per batch.
    """

    @abstractmethod
    def mean(self, d: Tensor) -> Tensor:
        """Conditional mean, flat (N, n); satisfies ``B x = d`` exactly."""

    @abstractmethod
    def sample(self, d: Tensor, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` conditional samples per row of ``d``: (N, n, n_features)."""

    def weights(self, d: Tensor) -> Tensor | None:
        """Posterior component weights (N, K) for mixtures, else None."""
        return None


class Prior(ABC):
    """Base class of priors over model inputs.

    Contract
    --------
    - ``event_shape`` MUST be the input shape without the batch dimension.
    - ``log_prob(x)`` MUST accept ``(N, *event_shape)`` in any floating dtype and
      return ``(N,)``, differentiable with respect to ``x``.
    - ``sample(n, seed)`` MUST return ``(n, *event_shape)`` and be reproducible
      for a given seed.
    - ``posterior(B)`` MAY be implemented by families that condition on linear
      equalities in closed form; others raise :class:`~nninv.NNInvError`.
    """

    event_shape: tuple[int, ...]

    @property
    def n_features(self) -> int:
        return math.prod(self.event_shape)

    @abstractmethod
    def log_prob(self, x: Tensor) -> Tensor:
        """Log-density of each sample (N,)."""

    @abstractmethod
    def sample(self, n: int, seed: int | None = None) -> Tensor:
        """Draw ``n`` samples shaped ``(n, *event_shape)``."""

    def posterior(self, B: Tensor) -> LinearPosterior:
        """Condition on ``B x = d``; see :class:`LinearPosterior`."""
        raise NNInvError(
            f"{type(self).__name__} has no closed-form conditional; use method='optimize'"
        )

    def __add__(self, other: Any) -> CombinedPrior:
        """``p + q``: the unnormalised prior with log-density ``log p + log q``."""
        if not hasattr(other, "log_prob"):
            return NotImplemented
        return CombinedPrior([*_terms(self), *_terms(other)])

    def __radd__(self, other: Any) -> Prior:
        if isinstance(other, (int, float)) and other == 0:  # lets sum() start from 0
            return self
        if not hasattr(other, "log_prob"):
            return NotImplemented
        return CombinedPrior([*_terms(other), *_terms(self)])

    def __mul__(self, weight: Any) -> CombinedPrior:
        """``w * p``: log-density ``w log p`` (a tempered, unnormalised prior)."""
        if isinstance(weight, bool) or not isinstance(weight, (int, float)):
            return NotImplemented
        return CombinedPrior([(weight * w, p) for w, p in _terms(self)])

    __rmul__ = __mul__

    def _flat(self, x: Tensor) -> Tensor:
        if tuple(x.shape[1:]) != self.event_shape and x.shape[1:].numel() != self.n_features:
            raise NNInvError(
                f"{type(self).__name__} expects inputs shaped (N, *{self.event_shape}), "
                f"got {tuple(x.shape)}"
            )
        return x.reshape(x.shape[0], -1)


class _Cached:
    """Per-(dtype, device) copies of a prior's tensors and per-B posteriors."""

    def __init__(self) -> None:
        self.tensors: dict[Any, Any] = {}
        self.posteriors: list[tuple[Tensor, LinearPosterior]] = []

    def posterior_for(self, B: Tensor, make: Any) -> LinearPosterior:
        for Bc, post in self.posteriors:
            if Bc is B:
                return post
        post = make()
        self.posteriors.append((B, post))
        del self.posteriors[:-8]
        return post


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
        g = torch.Generator().manual_seed(seed) if seed is not None else None
        eps = torch.randn(n, self.n_features, generator=g, dtype=torch.float64)
        return (self.mean + eps @ self.scale_tril.T).reshape(n, *self.event_shape)

    def posterior(self, B: Tensor) -> LinearPosterior:
        return self._c.posterior_for(B, lambda: _GaussPosterior(self, B))


class _GaussPosterior(LinearPosterior):
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


class GaussianMixturePrior(Prior):
    """A mixture of Gaussians with full, shrunk covariances.

    Fitting uses the hard-assignment (classification-EM) estimator: k-means
    finds the clusters, then each component takes its cluster's share as
    weight, its mean, and its Ledoit-Wolf shrunk covariance. One full EM step
    with dense covariances costs O(N K n^2) (about 4e11 flops for 20
    components on MNIST) and would take minutes here; this estimator takes
    seconds and is consistent for well separated clusters.

    Attributes
    ----------
    weights : Tensor (K,)
    means : Tensor (K, n)
    covariances : Tensor (K, n, n)

    References
    ----------
    Celeux & Govaert (1992), "A classification EM algorithm for clustering and
    two stochastic versions", Computational Statistics & Data Analysis 14(3).
    Ledoit & Wolf (2004), "A well-conditioned estimator for large-dimensional
    covariance matrices", J. Multivariate Analysis 88(2).

    Examples
    --------
    >>> g = torch.Generator().manual_seed(0)
    >>> X = torch.cat([torch.randn(200, 2, generator=g) - 4, torch.randn(200, 2, generator=g) + 4])
    >>> gmm = GaussianMixturePrior.fit(X, n_components=2, seed=0)
    >>> sorted(round(float(w), 2) for w in gmm.weights)
    [0.5, 0.5]
    """

    def __init__(
        self,
        weights: Tensor,
        means: Tensor,
        covariances: Tensor,
        event_shape: Sequence[int] | None = None,
    ) -> None:
        self.weights = torch.as_tensor(weights, dtype=torch.float64).reshape(-1)
        self.means = torch.as_tensor(means, dtype=torch.float64)
        self.covariances = torch.as_tensor(covariances, dtype=torch.float64)
        K, n = self.means.shape
        if self.weights.numel() != K or self.covariances.shape != (K, n, n):
            raise NNInvError(
                f"mixture parts disagree: weights {tuple(self.weights.shape)}, means "
                f"{tuple(self.means.shape)}, covariances {tuple(self.covariances.shape)}"
            )
        if (self.weights < 0).any() or abs(float(self.weights.sum()) - 1) > 1e-6:
            raise NNInvError("mixture weights must be non-negative and sum to 1")
        self.event_shape = tuple(event_shape) if event_shape is not None else (n,)
        L, bad = torch.linalg.cholesky_ex(self.covariances)
        if bool((bad != 0).any()):
            raise NNInvError(
                f"covariance of component {int(bad.nonzero()[0])} is not positive definite"
            )
        self.scale_trils = L
        self._c = _Cached()

    @property
    def n_components(self) -> int:
        return int(self.weights.numel())

    @classmethod
    def fit(
        cls,
        X: Any,
        n_components: int = 20,
        *,
        shrinkage: float | str = "ledoit-wolf",
        seed: int = 0,
        n_init: int = 1,
        max_iter: int = 100,
        verbose: bool = False,
    ) -> GaussianMixturePrior:
        """Fit a ``n_components`` mixture to ``X`` shaped ``(N, *input_shape)``.

        Parameters
        ----------
        X : Tensor or ndarray
        n_components : int
        shrinkage : "ledoit-wolf" or float
            Per-component covariance shrinkage, as in :meth:`GaussianPrior.fit`.
        seed : int
            Seeds k-means.
        n_init, max_iter : int
            Passed to :class:`sklearn.cluster.KMeans`.
        verbose : bool
            Show a progress bar over the components.
        """
        from sklearn.cluster import KMeans, kmeans_plusplus
        from tqdm.auto import tqdm

        X = _as_data(X)
        Xf = X.reshape(X.shape[0], -1)
        N, n = Xf.shape
        if not 1 <= n_components <= N // 2:
            raise NNInvError(
                f"n_components must lie in [1, N/2] = [1, {N // 2}], got {n_components}"
            )
        # k-means++ seeding on a float64 subsample: sklearn's seeding on float32 data
        # up-casts distances block by block and dominated the fit time on MNIST
        rng = np.random.default_rng(seed)
        sub = Xf.numpy()[rng.choice(N, size=min(N, max(6000, 100 * n_components)), replace=False)]
        inits = [
            kmeans_plusplus(sub, n_components, random_state=seed + i)[0] for i in range(n_init)
        ]
        X32 = Xf.to(torch.float32).numpy()
        best = None
        for init in inits:
            km = KMeans(
                n_components,
                init=init.astype(np.float32),
                n_init=1,
                max_iter=max_iter,
                random_state=seed,
            ).fit(X32)
            if best is None or km.inertia_ < best.inertia_:
                best = km
        assert best is not None
        labels = torch.from_numpy(best.labels_.astype(np.int64))
        weights, means, covs = [], [], []
        for k in tqdm(range(n_components), desc="mixture components", disable=not verbose):
            Xk = Xf[labels == k]
            if Xk.shape[0] < 2:
                continue
            mk = Xk.mean(0)
            ck, _ = _shrunk_covariance(Xk - mk, shrinkage)
            weights.append(Xk.shape[0] / N)
            means.append(mk)
            covs.append(ck)
        w = torch.tensor(weights, dtype=torch.float64)
        return cls(w / w.sum(), torch.stack(means), torch.stack(covs), tuple(X.shape[1:]))

    def _t(self, dtype: torch.dtype, device: torch.device) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        key = (dtype, device)
        if key not in self._c.tensors:
            self._c.tensors[key] = tuple(
                t.to(device, dtype)
                for t in (self.weights, self.means, self.covariances, self.scale_trils)
            )
        return self._c.tensors[key]

    def component_log_prob(self, x: Tensor) -> Tensor:
        """``log w_k + log N(x; mu_k, Sigma_k)`` for each sample and component (N, K)."""
        xf = self._flat(x)
        w, mu, _, L = self._t(xf.dtype, xf.device)
        diff = (xf[None] - mu[:, None]).transpose(1, 2)  # (K, n, N)
        z = torch.linalg.solve_triangular(L, diff, upper=False)
        logdet = 2 * torch.log(L.diagonal(dim1=1, dim2=2)).sum(1)
        lp = -0.5 * (z.pow(2).sum(1) + logdet[:, None] + self.n_features * _LOG_2PI)
        return (lp + torch.log(w)[:, None]).T

    def log_prob(self, x: Tensor) -> Tensor:
        return torch.logsumexp(self.component_log_prob(x), 1)

    def sample(self, n: int, seed: int | None = None) -> Tensor:
        g = torch.Generator().manual_seed(seed) if seed is not None else None
        k = torch.multinomial(self.weights, n, replacement=True, generator=g)
        eps = torch.randn(n, self.n_features, generator=g, dtype=torch.float64)
        x = self.means[k] + torch.einsum("nij,nj->ni", self.scale_trils[k], eps)
        return x.reshape(n, *self.event_shape)

    def posterior(self, B: Tensor) -> LinearPosterior:
        return self._c.posterior_for(B, lambda: _MixturePosterior(self, B))


class _MixturePosterior(LinearPosterior):
    def __init__(self, prior: GaussianMixturePrior, B: Tensor) -> None:
        w, mu, cov, L = prior._t(B.dtype, B.device)
        G = cov @ B.T  # (K, n, r)
        S = B @ G  # (K, r, r)
        Ls = torch.linalg.cholesky(0.5 * (S + S.transpose(1, 2)))
        self.K = torch.cholesky_solve(G.transpose(1, 2), Ls).transpose(1, 2)  # (K, n, r)
        self.Kstack = self.K.permute(0, 2, 1).reshape(-1, self.K.shape[1])  # (K*r, n)
        self.Ls, self.mu, self.L, self.B, self.logw = Ls, mu, L, B, torch.log(w)
        self.Bmu = mu @ B.T  # (K, r)
        self.logdet = 2 * torch.log(Ls.diagonal(dim1=1, dim2=2)).sum(1)

    def weights(self, d: Tensor) -> Tensor:
        diff = (d[None] - self.Bmu[:, None]).transpose(1, 2)  # (K, r, N)
        z = torch.linalg.solve_triangular(self.Ls, diff, upper=False)
        r = d.shape[1]
        lp = -0.5 * (z.pow(2).sum(1) + self.logdet[:, None] + r * _LOG_2PI) + self.logw[:, None]
        return torch.softmax(lp.T, 1)

    def mean(self, d: Tensor) -> Tensor:
        w = self.weights(d)  # (N, K)
        coef = (d[:, None, :] - self.Bmu[None]) * w[:, :, None]  # (N, K, r)
        return w @ self.mu + coef.reshape(d.shape[0], -1) @ self.Kstack

    def sample(self, d: Tensor, n: int, generator: torch.Generator | None = None) -> Tensor:
        N = d.shape[0]
        w = self.weights(d)
        k = torch.multinomial(w.cpu(), n, replacement=True, generator=generator).reshape(-1)
        k = k.to(d.device)
        eps = torch.randn(N * n, self.mu.shape[1], generator=generator, dtype=d.dtype)
        xs = self.mu[k] + torch.einsum("nij,nj->ni", self.L[k], eps.to(d.device))
        dd = d.repeat_interleave(n, 0)
        corr = torch.einsum("nir,nr->ni", self.K[k], dd - xs @ self.B.T)
        return (xs + corr).reshape(N, n, -1)


# --- regularisers and combinations ---------------------------------------------------------


def _terms(prior: Any) -> list[tuple[float, Any]]:
    """``(weight, prior)`` pairs of a prior, flattening combinations."""
    if isinstance(prior, CombinedPrior):
        return list(prior.terms)
    return [(1.0, prior)]


def _check_weight(weight: Any, what: str) -> float:
    if isinstance(weight, bool) or not isinstance(weight, (int, float)):
        raise NNInvError(f"{what} must be a real number, got {type(weight).__name__}")
    w = float(weight)
    if not (w > 0 and math.isfinite(w)):
        raise NNInvError(f"{what} must be positive and finite, got {w}")
    return w


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


class CombinedPrior(Prior):
    """A weighted sum of log-densities, ``log p(x) = sum_i w_i log p_i(x)`` (unnormalised).

    Also written with arithmetic on priors: ``gauss + 0.1 * TotalVariation()``
    is ``CombinedPrior([(1.0, gauss), (0.1, TotalVariation())])``. A term may
    be any object with a differentiable ``log_prob(x) -> (N,)``.

    Parameters
    ----------
    terms : sequence of (float, prior)
        Positive weights and priors; nested combinations are flattened.

    Raises
    ------
    NNInvError
        For no terms, a weight that is not positive and finite, a term without
        ``log_prob``, or terms with different ``event_shape``.

    Examples
    --------
    >>> p = L2(1.0) + 0.5 * TotalVariation(eps=1e-9)
    >>> [(w, type(t).__name__) for w, t in p.terms]
    [(1.0, 'L2'), (0.5, 'TotalVariation')]
    >>> p.log_prob(torch.ones(1, 2, 2, dtype=torch.float64))
    tensor([-4.], dtype=torch.float64)
    """

    def __init__(self, terms: Sequence[tuple[float, Any]]) -> None:
        flat: list[tuple[float, Any]] = []
        for item in terms:
            try:
                w, p = item
            except (TypeError, ValueError):
                raise NNInvError(
                    f"CombinedPrior terms must be (weight, prior) pairs, got {item!r}"
                ) from None
            w = _check_weight(w, "CombinedPrior weight")
            if not hasattr(p, "log_prob"):
                raise NNInvError(f"CombinedPrior term {type(p).__name__} has no log_prob method")
            flat.extend((w * wi, pi) for wi, pi in _terms(p))
        if not flat:
            raise NNInvError("CombinedPrior needs at least one term")
        shapes = {tuple(p.event_shape) for _, p in flat if hasattr(p, "event_shape")}
        if len(shapes) > 1:
            raise NNInvError(f"CombinedPrior terms disagree on event_shape: {sorted(shapes)}")
        if shapes:
            self.event_shape = shapes.pop()
        self.terms: tuple[tuple[float, Any], ...] = tuple(flat)

    def log_prob(self, x: Tensor) -> Tensor:
        total = None
        for w, p in self.terms:
            lp = p.log_prob(x)
            total = w * lp if total is None else total + w * lp
        assert total is not None
        return total

    def sample(self, n: int, seed: int | None = None) -> Tensor:
        if len(self.terms) == 1 and self.terms[0][0] == 1.0 and hasattr(self.terms[0][1], "sample"):
            return self.terms[0][1].sample(n, seed)
        raise NNInvError(
            "CombinedPrior is an unnormalised product of densities and cannot be sampled"
        )

    def __repr__(self) -> str:
        return " + ".join(f"{w:g} * {type(p).__name__}" for w, p in self.terms)

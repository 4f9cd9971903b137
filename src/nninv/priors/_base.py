"""The base class of priors, their linear conditionals, and weighted combinations.

:class:`Prior` is the contract every prior over model inputs follows;
:class:`LinearPosterior` is what a family that conditions on ``B x = d`` in
closed form returns from :meth:`Prior.posterior`; :class:`CombinedPrior` is the
unnormalised weighted sum of log-densities that ``p + q`` and ``w * p`` build.
It also holds the small helpers the families share: checking fitting data,
per-dtype caches, and checking weights.
"""

from __future__ import annotations

__all__ = ["CombinedPrior", "LinearPosterior", "Prior"]

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..checks import positive_int
from ..errors import NNInvError

_LOG_2PI = math.log(2 * math.pi)


def _as_data(X: Any, name: str = "X") -> Tensor:
    """Check fitting data ``(N, *input_shape)``, ``N >= 2``, finite; return it as float64 on CPU."""
    if isinstance(X, np.ndarray):
        if X.dtype.kind not in "fiub":
            raise NNInvError(f"{name} must hold real numbers, got an array of dtype {X.dtype}")
        X = torch.from_numpy(np.ascontiguousarray(X))
    if not isinstance(X, Tensor):
        raise NNInvError(f"{name} must be a torch tensor or a NumPy array, got {type(X).__name__}")
    if X.is_complex():
        raise NNInvError(f"{name} must hold real numbers, got dtype {X.dtype}")
    if X.ndim < 2:
        raise NNInvError(f"{name} must be shaped (N, *input_shape), got shape {tuple(X.shape)}")
    if X.shape[0] < 2:
        raise NNInvError(f"{name} needs at least 2 samples to fit a prior, got {X.shape[0]}")
    X = X.detach().to("cpu", torch.float64)
    if not bool(torch.isfinite(X).all()):
        i = int((~torch.isfinite(X.reshape(X.shape[0], -1))).any(1).nonzero()[0])
        raise NNInvError(f"{name} contains NaN or inf (first in sample {i})")
    return X


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

    Notes
    -----
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
        """Number of entries in one sample, ``prod(event_shape)``."""
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


def _terms(prior: Any) -> list[tuple[float, Any]]:
    """``(weight, prior)`` pairs of a prior, flattening combinations."""
    if isinstance(prior, CombinedPrior):
        return list(prior.terms)
    return [(1.0, prior)]


def _check_n(n: Any) -> int:
    """``n``, the number of samples to draw, as a non-negative int."""
    return positive_int(n, "n, the number of samples,", minimum=0)


def _check_weight(weight: Any, what: str) -> float:
    """``weight`` as a float, or :class:`~nninv.NNInvError` unless it is real, positive, finite."""
    if isinstance(weight, bool) or not isinstance(weight, (int, float)):
        raise NNInvError(f"{what} must be a real number, got {type(weight).__name__}")
    w = float(weight)
    if not (w > 0 and math.isfinite(w)):
        raise NNInvError(f"{what} must be positive and finite, got {w}")
    return w


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
    >>> from nninv.priors import L2, TotalVariation
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

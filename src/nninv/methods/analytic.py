"""``method="analytic"``: the prior's exact conditional mean, layer by layer.

At the input, the member chosen from ``{x : B x = d}`` is ``E[x | B x = d]``
under the prior: for a Gaussian ``N(mu, Sigma)`` it is
``mu + Sigma B^T (B Sigma B^T)^{-1} (d - B mu)``; for a mixture it is the
average of the components' conditional means weighted by each component's
evidence ``w_k N(d; B mu_k, B Sigma_k B^T)``. Both satisfy the constraint
exactly, so ``f(x) = y`` holds to rounding. For a single affine layer followed
by a bijective activation this is the whole answer. In deeper chains, hidden
vectors are chosen as conditional means under a Gaussian fitted to the prior's
samples pushed through the layers before them (moment matching); the output is
still reproduced exactly, but image quality on deep nets is the job of
``method="optimize"``.
"""

from __future__ import annotations

__all__ = ["AnalyticOptions", "invert_analytic"]

import weakref
from dataclasses import dataclass

import torch
from torch import Tensor

from ..errors import NNInvError
from ..model.chain import Chain
from ..priors import GaussianPrior, Prior
from . import Problem, Solution, register
from ._layerwise import backward_pass
from .pinv import _exact_target, _hidden_tol

_HIDDEN: weakref.WeakKeyDictionary[Prior, dict] = weakref.WeakKeyDictionary()


def _hidden_prior(prior: Prior, chain: Chain, pos: int, n_samples: int) -> GaussianPrior:
    cache = _HIDDEN.setdefault(prior, {})
    key = (id(chain), pos, n_samples)
    if key not in cache:
        x = prior.sample(n_samples, seed=0).reshape(n_samples, -1)
        with torch.no_grad():
            h = chain.forward_flat(x, upto=pos)
        cache[key] = GaussianPrior.fit(h)
    return cache[key]


@dataclass(frozen=True)
class AnalyticOptions:
    """Options of ``method="analytic"`` (no ``bounds`` nor ``x0``: it is a closed form).

    Attributes
    ----------
    hidden_samples : int
        Draws of the prior pushed through the layers before a hidden layer, to fit
        the Gaussian that chooses its vector (4096; drawn with a fixed seed).
    """

    hidden_samples: int = 4096

    def __post_init__(self) -> None:
        v = self.hidden_samples
        if isinstance(v, bool) or not isinstance(v, int) or v < 2:
            raise NNInvError(f"option hidden_samples must be an integer >= 2, got {v!r}")


@register("analytic", options=AnalyticOptions)
def invert_analytic(problem: Problem) -> Solution:
    """Conditional mean under the prior. Options: :class:`AnalyticOptions`."""
    opts = problem.options_as(AnalyticOptions)
    prior = problem.prior
    if prior is None:
        raise NNInvError(
            "method='analytic' needs a prior, e.g. nninv.priors.GaussianPrior.fit(X); "
            "without one use method='pinv'"
        )
    chain = problem.chain
    chain.require_closed_form("analytic")
    if prior.n_features != chain.n_in:
        raise NNInvError(
            f"the prior is over {prior.event_shape} ({prior.n_features} values) but the model "
            f"input is {chain.input_shape} ({chain.n_in} values)"
        )

    def choose(pos: int, B: Tensor, d: Tensor) -> Tensor:
        p = prior if pos == 0 else _hidden_prior(prior, chain, pos, opts.hidden_samples)
        return p.posterior(B).mean(d)

    y = _exact_target(problem, "analytic")
    x, ok, reasons, info = backward_pass(
        chain, y.reshape(y.shape[0], -1), choose, hidden_tol=_hidden_tol(y.dtype)
    )
    return Solution(x.reshape(-1, *problem.input_shape), 0, ok, reasons, info)

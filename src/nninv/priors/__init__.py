"""Priors over a model's inputs, fitted like scikit-learn estimators."""

from ._all import (
    L2,
    CombinedPrior,
    GaussianMixturePrior,
    GaussianPrior,
    LinearPosterior,
    Prior,
    TotalVariation,
)

__all__ = [
    "L2",
    "CombinedPrior",
    "GaussianMixturePrior",
    "GaussianPrior",
    "LinearPosterior",
    "Prior",
    "TotalVariation",
]

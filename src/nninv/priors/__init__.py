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

The package holds one module per prior family (``gaussian``, ``mixture``,
``regularizers``, and ``batchnorm``: :class:`BatchNormPrior`, a data-free prior
read from a network's own BatchNorm running statistics) on top of the base
class and combinations in ``_base``; later priors go in this package in the
same way, one file per family.
"""

from __future__ import annotations

__all__ = [
    "L2",
    "BatchNormPrior",
    "CombinedPrior",
    "GaussianMixturePrior",
    "GaussianPrior",
    "LinearPosterior",
    "Prior",
    "TotalVariation",
]

from ._base import CombinedPrior, LinearPosterior, Prior
from .batchnorm import BatchNormPrior
from .gaussian import GaussianPrior
from .mixture import GaussianMixturePrior
from .regularizers import L2, TotalVariation

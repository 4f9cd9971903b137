"""Covariance estimates shrunk towards a scaled identity, shared by the Gaussian families.

:func:`_shrunk_covariance` gives the covariance of centred data with a
Ledoit-Wolf (or fixed) shrinkage weight, so that rank-deficient samples (e.g.
constant border pixels) still give a positive-definite matrix; both
:class:`~nninv.priors.GaussianPrior` and each component of
:class:`~nninv.priors.GaussianMixturePrior` are fitted with it.
"""

from __future__ import annotations

__all__ = []

from torch import Tensor

from ..errors import NNInvError


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

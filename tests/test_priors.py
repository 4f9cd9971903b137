"""Tests of the Gaussian and mixture priors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import multivariate_normal

from nninv import NNInvError
from nninv.priors import GaussianMixturePrior, GaussianPrior
from tolerances import EPS

TOL = EPS[torch.float64]["close"]


def data(n=400, d=6, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d)) @ rng.normal(size=(d, d))


def test_gaussian_fit_and_log_prob_match_scipy():
    X = data()
    p = GaussianPrior.fit(X, shrinkage=0.0)
    np.testing.assert_allclose(p.mean.numpy(), X.mean(0), atol=1e-12)
    ref = multivariate_normal(p.mean.numpy(), p.covariance.numpy()).logpdf(X[:5])
    np.testing.assert_allclose(p.log_prob(torch.from_numpy(X[:5])).numpy(), ref, atol=1e-9)


def test_gaussian_shrinkage_makes_rank_deficient_data_proper():
    X = np.zeros((50, 10))
    X[:, :3] = np.random.default_rng(0).normal(size=(50, 3))  # 7 constant features
    p = GaussianPrior.fit(X)
    assert bool(torch.isfinite(p.log_prob(torch.from_numpy(X))).all())
    assert torch.linalg.eigvalsh(p.covariance).min() > 0


def test_gaussian_fixed_shrinkage_value():
    X = data()
    p = GaussianPrior.fit(X, shrinkage=1.0)
    off = p.covariance - torch.diag(p.covariance.diagonal())
    assert float(off.abs().max()) < 1e-12
    assert p.shrinkage == 1.0


def test_keeps_input_shape():
    X = torch.rand(30, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    p = GaussianPrior.fit(X)
    assert p.event_shape == (1, 4, 4)
    assert p.sample(5, seed=0).shape == (5, 1, 4, 4)
    assert p.log_prob(X[:3]).shape == (3,)


def test_sampling_is_seeded_and_has_right_moments():
    p = GaussianPrior.fit(data())
    a, b = p.sample(20000, seed=1), p.sample(20000, seed=1)
    assert torch.equal(a, b)
    emp = torch.cov(a.T)
    assert float((emp - p.covariance).abs().max()) < 0.1 * float(p.covariance.abs().max())


def test_gaussian_posterior_mean_and_samples_satisfy_constraint():
    p = GaussianPrior.fit(data(d=8))
    B = torch.linalg.qr(
        torch.randn(8, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    )[0].T
    d = torch.randn(4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    post = p.posterior(B)
    assert post is p.posterior(B)  # cached per B
    m = post.mean(d)
    assert torch.allclose(m @ B.T, d, atol=TOL)
    s = post.sample(d, 2000, torch.Generator().manual_seed(0))
    assert torch.allclose(s @ B.T, d[:, None, :].expand_as(s @ B.T), atol=TOL)
    # Monte Carlo mean agrees with the closed form
    assert float((s.mean(1) - m).abs().max()) < 0.15


def test_posterior_covariance_matches_closed_form():
    p = GaussianPrior.fit(data(d=5, n=1000))
    B = torch.tensor([[1.0, 0, 0, 0, 0]], dtype=torch.float64)
    d = torch.tensor([[0.3]], dtype=torch.float64)
    s = p.posterior(B).sample(d, 40000, torch.Generator().manual_seed(0))[0]
    S = p.covariance
    ref = S - S[:, :1] @ S[:1, :] / S[0, 0]
    assert float((torch.cov(s.T) - ref).abs().max()) < 0.05 * float(S.abs().max())


def test_mixture_fit_recovers_separated_clusters():
    rng = np.random.default_rng(0)
    X = np.concatenate([rng.normal(-5, 1, (300, 3)), rng.normal(5, 1, (100, 3))])
    g = GaussianMixturePrior.fit(X, n_components=2, seed=0)
    order = torch.argsort(g.means[:, 0])
    np.testing.assert_allclose(g.weights[order].numpy(), [0.75, 0.25], atol=1e-12)
    np.testing.assert_allclose(g.means[order, 0].numpy(), [-5, 5], atol=0.3)


def test_mixture_log_prob_matches_scipy():
    X = data(d=4)
    g = GaussianMixturePrior.fit(X, n_components=3, seed=0)
    ref = np.logaddexp.reduce(
        [
            np.log(g.weights[k].item())
            + multivariate_normal(g.means[k].numpy(), g.covariances[k].numpy()).logpdf(X[:7])
            for k in range(3)
        ],
        axis=0,
    )
    np.testing.assert_allclose(g.log_prob(torch.from_numpy(X[:7])).numpy(), ref, atol=1e-9)


def test_mixture_posterior_constraint_and_weights():
    X = data(d=6)
    g = GaussianMixturePrior.fit(X, n_components=3, seed=0)
    B = torch.eye(6, dtype=torch.float64)[:2]
    d = torch.from_numpy(X[:5, :2])
    post = g.posterior(B)
    w = post.weights(d)
    assert torch.allclose(w.sum(1), torch.ones(5, dtype=torch.float64))
    assert torch.allclose(post.mean(d) @ B.T, d, atol=TOL)
    s = post.sample(d, 50, torch.Generator().manual_seed(0))
    assert s.shape == (5, 50, 6)
    assert torch.allclose(s[:, :, :2], d[:, None].expand(5, 50, 2), atol=TOL)


def test_float32_use():
    p = GaussianPrior.fit(data())
    x = torch.randn(3, 6)
    assert p.log_prob(x).dtype == torch.float32


@pytest.mark.parametrize(
    ("X", "match"),
    [
        (np.zeros(5), "shaped"),
        (np.zeros((1, 3)), "at least 2"),
        (np.array([[0.0, np.nan], [1, 2]]), "NaN"),
        ("abc", "tensor or a NumPy array"),
    ],
)
def test_fit_errors(X, match):
    with pytest.raises(NNInvError, match=match):
        GaussianPrior.fit(X)


def test_bad_shrinkage_and_components():
    with pytest.raises(NNInvError, match="shrinkage"):
        GaussianPrior.fit(data(), shrinkage=1.5)
    with pytest.raises(NNInvError, match="shrinkage"):
        GaussianPrior.fit(data(), shrinkage="oas")
    with pytest.raises(NNInvError, match="n_components"):
        GaussianMixturePrior.fit(data(n=10), n_components=8)


def test_wrong_shape_log_prob():
    p = GaussianPrior.fit(data())
    with pytest.raises(NNInvError, match="expects inputs shaped"):
        p.log_prob(torch.zeros(2, 5, dtype=torch.float64))


def test_constructor_validation():
    with pytest.raises(NNInvError, match="covariance must be"):
        GaussianPrior(torch.zeros(3), torch.eye(2))
    with pytest.raises(NNInvError, match="positive definite"):
        GaussianPrior(torch.zeros(2), torch.zeros(2, 2))
    with pytest.raises(NNInvError, match="weights"):
        GaussianMixturePrior(
            torch.tensor([0.5, 0.6]), torch.zeros(2, 2), torch.eye(2).expand(2, 2, 2)
        )


def test_ledoit_wolf_weight_matches_sklearn():
    from sklearn.covariance import ledoit_wolf_shrinkage

    X = data(n=300, d=12)
    Xc = X - X.mean(0)
    ref = ledoit_wolf_shrinkage(Xc, assume_centered=True)
    p = GaussianPrior.fit(X)
    assert abs(p.shrinkage - ref) < 1e-12

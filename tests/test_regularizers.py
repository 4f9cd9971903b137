"""Tests of the regularisers (L2, TotalVariation) and of combining priors."""

from __future__ import annotations

import math

import pytest
import torch

from nninv import NNInvError
from nninv.priors import L2, CombinedPrior, GaussianPrior, Prior, TotalVariation
from tolerances import EPS

F64 = torch.float64


def edge_image(h: int = 4, w: int = 5) -> torch.Tensor:
    x = torch.zeros(1, h, w, dtype=F64)
    x[0, :, 2:] = 1.0  # a vertical edge of height h
    return x


# --- L2 ----------------------------------------------------------------------------------


def test_l2_value_and_center():
    x = torch.arange(6, dtype=F64).reshape(2, 3)
    assert torch.allclose(L2(0.5).log_prob(x), -0.5 * (x**2).sum(1))
    c = torch.tensor([1.0, 1.0, 1.0], dtype=F64)
    assert torch.allclose(L2(2.0, center=c).log_prob(x), -2.0 * ((x - c) ** 2).sum(1))


def test_l2_gradient_is_linear():
    x = torch.randn(3, 4, dtype=F64, requires_grad=True)
    (g,) = torch.autograd.grad(L2(3.0).log_prob(x).sum(), x)
    assert torch.allclose(g, -6.0 * x, atol=EPS[F64]["close"])


def test_l2_checks_event_shape_when_given():
    with pytest.raises(NNInvError, match="expects inputs shaped"):
        L2(event_shape=(3,)).log_prob(torch.zeros(2, 4, dtype=F64))
    assert L2().log_prob(torch.zeros(2, 7, 7, dtype=F64)).shape == (2,)


# --- total variation -----------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(1, 4, 5), (1, 1, 4, 5)])
def test_tv_of_an_edge_is_its_length(shape):
    x = edge_image().reshape(shape)
    tv = TotalVariation(eps=1e-12).penalty(x)
    assert tv.shape == (1,)
    assert math.isclose(float(tv[0]), 4.0, rel_tol=1e-9)


def test_tv_beta2_is_squared_gradient():
    x = edge_image() * 0.5
    assert math.isclose(
        float(TotalVariation(beta=2.0, eps=1e-12).penalty(x)[0]), 4 * 0.25, rel_tol=1e-9
    )


def test_tv_constant_image_is_zero_and_weight_scales():
    x = torch.full((2, 1, 6, 6), 0.3, dtype=F64)
    assert torch.allclose(TotalVariation(7.0).log_prob(x), torch.zeros(2, dtype=F64))
    e = edge_image()
    assert torch.allclose(
        TotalVariation(3.0, eps=1e-9).log_prob(e), -3.0 * TotalVariation(eps=1e-9).penalty(e)
    )


def test_tv_flat_square_and_image_shape():
    e = edge_image(5, 5)
    flat = e.reshape(1, 25)
    ref = TotalVariation(eps=1e-9).penalty(e)
    assert torch.allclose(TotalVariation(eps=1e-9).penalty(flat), ref)
    rect = edge_image(4, 5).reshape(1, 20)
    tv = TotalVariation(eps=1e-9, image_shape=(4, 5)).penalty(rect)
    assert math.isclose(float(tv[0]), 4.0, rel_tol=1e-6)


def test_tv_channels_add():
    e = edge_image()
    two = torch.cat([e, 2 * e]).reshape(1, 2, 4, 5)
    tv = TotalVariation(eps=1e-12).penalty(two)
    assert math.isclose(float(tv[0]), 4.0 + 8.0, rel_tol=1e-9)


def test_tv_gradcheck():
    x = torch.rand(2, 1, 4, 4, dtype=F64, requires_grad=True)
    tv = TotalVariation(0.7, eps=1e-2)
    assert torch.autograd.gradcheck(lambda v: tv.log_prob(v), (x,))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"beta": 0.5}, "beta"),
        ({"eps": 0.0}, "eps"),
        ({"weight": -1.0}, "weight"),
        ({"weight": float("inf")}, "weight"),
        ({"image_shape": (2, 3, 4, 5)}, "image_shape"),
    ],
)
def test_tv_bad_arguments(kwargs, match):
    with pytest.raises(NNInvError, match=match):
        TotalVariation(**kwargs)


def test_tv_unreadable_inputs():
    with pytest.raises(NNInvError, match="square"):
        TotalVariation().penalty(torch.zeros(2, 10, dtype=F64))
    with pytest.raises(NNInvError, match="do not hold"):
        TotalVariation(image_shape=(3, 3)).penalty(torch.zeros(2, 10, dtype=F64))
    with pytest.raises(NNInvError, match="batch"):
        TotalVariation().log_prob(torch.zeros(16, dtype=F64))


@pytest.mark.parametrize("reg", [L2(), TotalVariation()])
def test_regularisers_cannot_be_sampled(reg):
    with pytest.raises(NNInvError, match="cannot be sampled"):
        reg.sample(3)


# --- combinations --------------------------------------------------------------------------


@pytest.fixture
def gauss() -> GaussianPrior:
    g = torch.Generator().manual_seed(0)
    return GaussianPrior.fit(torch.rand(200, 1, 4, 4, generator=g, dtype=F64))


def test_arithmetic_builds_weighted_sums(gauss):
    tv = TotalVariation()
    p = gauss + 0.1 * tv
    assert isinstance(p, CombinedPrior)
    assert [(w, type(t)) for w, t in p.terms] == [(1.0, GaussianPrior), (0.1, TotalVariation)]
    q = 2 * (p + L2())  # nested combinations flatten, weights multiply
    assert [w for w, _ in q.terms] == [2.0, 0.2, 2.0]
    assert sum([gauss, tv]).terms == (gauss + tv).terms
    assert p.event_shape == (1, 4, 4)


def test_combined_log_prob_is_the_weighted_sum(gauss):
    x = torch.rand(5, 1, 4, 4, dtype=F64)
    tv, l2 = TotalVariation(), L2(center=0.5)
    p = CombinedPrior([(1.0, gauss), (0.1, tv), (3.0, l2)])
    ref = gauss.log_prob(x) + 0.1 * tv.log_prob(x) + 3.0 * l2.log_prob(x)
    assert torch.allclose(p.log_prob(x), ref, atol=EPS[F64]["close"])
    assert torch.allclose((gauss + 0.1 * tv + 3.0 * l2).log_prob(x), ref, atol=EPS[F64]["close"])


def test_user_defined_terms_are_accepted(gauss):
    class Smooth:  # any object with a differentiable log_prob
        def log_prob(self, x):
            return -x.reshape(len(x), -1).pow(4).sum(1)

    p = gauss + 0.5 * CombinedPrior([(1.0, Smooth())])
    x = torch.rand(3, 1, 4, 4, dtype=F64)
    assert torch.allclose(p.log_prob(x), gauss.log_prob(x) - 0.5 * x.reshape(3, -1).pow(4).sum(1))
    left = Smooth() + gauss  # Smooth has no __add__: Prior.__radd__ builds it
    assert [type(t) for _, t in left.terms] == [Smooth, GaussianPrior]
    assert isinstance(gauss + Smooth(), CombinedPrior)


def test_single_unit_term_samples_like_its_prior(gauss):
    assert torch.equal(CombinedPrior([(1.0, gauss)]).sample(4, seed=1), gauss.sample(4, seed=1))
    with pytest.raises(NNInvError, match="cannot be sampled"):
        (gauss + TotalVariation()).sample(2)


@pytest.mark.parametrize(
    "terms, match",
    [
        ([], "at least one"),
        ([(0.0, L2())], "positive"),
        ([(float("nan"), L2())], "positive"),
        ([("a", L2())], "real number"),
        ([(1.0, object())], "log_prob"),
        ([L2()], "pairs"),
        ([(1.0, L2(event_shape=(3,))), (1.0, L2(event_shape=(4,)))], "disagree"),
    ],
)
def test_combined_bad_terms(terms, match):
    with pytest.raises(NNInvError, match=match):
        CombinedPrior(terms)


def test_arithmetic_with_wrong_types(gauss):
    with pytest.raises(TypeError):
        gauss + 1.0  # noqa: B018
    with pytest.raises(TypeError):
        "2" * gauss  # noqa: B018
    with pytest.raises(NNInvError, match="positive"):
        -1.0 * gauss  # noqa: B018


def test_existing_priors_keep_their_behaviour(gauss):
    x = torch.rand(3, 1, 4, 4, dtype=F64)
    lp = gauss.log_prob(x)
    _ = gauss + TotalVariation()
    assert torch.equal(gauss.log_prob(x), lp)
    assert isinstance(gauss, Prior) and gauss.sample(2, seed=0).shape == (2, 1, 4, 4)

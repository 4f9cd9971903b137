"""Tests of nninv.invert with the closed-form methods (pinv, analytic)."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import nninv
from nninv import ClassTarget, NNInvError, NNInvWarning, invert
from nninv.priors import GaussianMixturePrior, GaussianPrior
from tolerances import EPS

ACTS = {
    "sigmoid": nn.Sigmoid,
    "tanh": nn.Tanh,
    "leaky": lambda: nn.LeakyReLU(0.1),
    "elu": nn.ELU,
    "softplus": nn.Softplus,
}


#: Two outputs of the seed's model shape (2, 10).
Y_HALF = torch.full((2, 10), 0.3, dtype=torch.float64)


def random_chain(widths, act, dtype, seed):
    torch.manual_seed(seed)
    layers = []
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(widths) - 2 or act != "none":
            layers.append(ACTS[act]() if act != "none" else nn.Identity())
    return nn.Sequential(*layers).to(dtype)


# --- the seed's model ------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_pinv_matches_seed_formula(seed_model, dtype):
    f = seed_model(dtype)
    x = torch.rand(16, 784, generator=torch.Generator().manual_seed(1)).to(dtype)
    with torch.no_grad():
        y = f(x)
    inv = invert(f, y, method="pinv")
    W, b = f[0].weight.double(), f[0].bias.double()
    ref = (torch.logit(y.double()) - b) @ torch.linalg.pinv(W).T
    tol = EPS[dtype]["close"]
    assert torch.allclose(inv.x.double(), ref, atol=tol * 10, rtol=0)
    assert inv.x.dtype == dtype and inv.x.shape == (16, 784)
    assert float(inv.residual.max()) <= EPS[dtype]["residual"]
    assert bool(inv.converged.all())
    assert inv.method == "pinv" and inv.iterations == 0


def test_pinv_is_min_norm_member_and_loses_null_space(seed_model):
    f = seed_model()
    x = torch.rand(4, 784, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        y = f(x)
    xp = invert(f, y, method="pinv").x
    W = f[0].weight.detach()
    # pinv's answer lies in the row space of W and equals the row-space projection of x
    P = torch.linalg.pinv(W) @ W
    assert torch.allclose(xp, x @ P.T, atol=1e-10)
    assert bool((xp.norm(dim=1) < x.norm(dim=1)).all())


def test_residual_is_measured_by_running_the_model(seed_model):
    f = seed_model()
    y = torch.full((3, 10), 0.5, dtype=torch.float64)
    inv = invert(f, y, method="pinv")
    with torch.no_grad():
        measured = (f(inv.x) - y).abs().amax(1)
    assert torch.equal(inv.residual, measured)


def test_reverse_net_pinv_recovers_one_hot_exactly():
    torch.manual_seed(0)
    g = nn.Sequential(nn.Linear(10, 784), nn.Sigmoid()).double()
    onehot = torch.eye(10, dtype=torch.float64)
    with torch.no_grad():
        y = g(onehot)
    inv = invert(g, y, method="pinv")
    assert torch.allclose(inv.x, onehot, atol=1e-10, rtol=0)
    assert bool(inv.converged.all())
    assert torch.equal(inv.x.argmax(1), torch.arange(10))


def test_reverse_net_unreachable_target_is_flagged():
    torch.manual_seed(0)
    g = nn.Sequential(nn.Linear(10, 784), nn.Sigmoid()).double()
    y = torch.rand(2, 784, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    y = y.clamp(0.05, 0.95)
    with pytest.warns(NNInvWarning, match="did not converge"):
        inv = invert(g, y, method="pinv")
    assert not bool(inv.converged.any())
    assert "not in the range" in inv.info["reasons"][0]


# --- property tests --------------------------------------------------------------------


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    depth=st.integers(1, 3),
    act=st.sampled_from(["sigmoid", "tanh", "leaky"]),
    seed=st.integers(0, 10_000),
    n_in=st.integers(4, 12),
)
@pytest.mark.parametrize("method", ["pinv", "analytic"])
def test_roundtrip_random_chains_float64(method, depth, act, seed, n_in):
    widths = [n_in] + [max(2, n_in - 2 * (i + 1)) for i in range(depth)]
    f = random_chain(widths, act, torch.float64, seed)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(8, n_in, generator=g, dtype=torch.float64)
    with torch.no_grad():
        y = f(x)
    prior = GaussianPrior.fit(torch.randn(200, n_in, generator=g, dtype=torch.float64))
    inv = invert(f, y, method=method, prior=prior if method == "analytic" else None)
    with torch.no_grad():
        err = (f(inv.x) - y).abs().max()
    assert float(err) <= 1e-8
    assert bool(inv.converged.all())


@settings(max_examples=15, deadline=None)
@given(act=st.sampled_from(["sigmoid", "tanh", "leaky"]), seed=st.integers(0, 10_000))
def test_roundtrip_random_chains_float32(act, seed):
    f = random_chain([12, 8, 5], act, torch.float32, seed)
    x = torch.randn(8, 12, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        y = f(x)
    inv = invert(f, y, method="pinv")
    assert inv.x.dtype == torch.float32
    assert float(inv.residual.max()) <= EPS[torch.float32]["residual"]


@pytest.mark.parametrize("act", list(ACTS))
def test_each_bijective_activation_roundtrip(act):
    f = random_chain([6, 4], act, torch.float64, 1)
    x = torch.randn(5, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    with torch.no_grad():
        y = f(x)
    inv = invert(f, y, method="pinv")
    assert float(inv.residual.max()) <= EPS[torch.float64]["residual"]


def test_softmax_output_inverts_up_to_constant():
    torch.manual_seed(0)
    f = nn.Sequential(nn.Linear(20, 6), nn.Softmax(dim=1)).double()
    x = torch.randn(4, 20, dtype=torch.float64)
    with torch.no_grad():
        y = f(x)
    for method, prior in [("pinv", None), ("analytic", GaussianPrior.fit(torch.randn(100, 20)))]:
        inv = invert(f, y, method=method, prior=prior)
        assert float(inv.residual.max()) <= EPS[torch.float64]["residual"]


def test_logsoftmax_output():
    torch.manual_seed(0)
    f = nn.Sequential(nn.Linear(20, 6), nn.LogSoftmax(dim=1)).double()
    with torch.no_grad():
        y = f(torch.randn(4, 20, dtype=torch.float64))
    inv = invert(f, y, method="pinv")
    assert float(inv.residual.max()) <= EPS[torch.float64]["residual"]


def test_hidden_sigmoid_layer_outside_range_is_projected():
    # a 6 -> 8 -> 3 sigmoid net: the min-norm hidden vector often leaves (0, 1)
    torch.manual_seed(3)
    f = nn.Sequential(nn.Linear(6, 8), nn.Sigmoid(), nn.Linear(8, 3), nn.Sigmoid()).double()
    with torch.no_grad():
        f[2].weight.mul_(4)
        y = f(torch.randn(32, 6, dtype=torch.float64) * 3)
    inv = invert(f, y, method="pinv")
    assert float(inv.residual.max()) <= 1e-9
    assert bool(inv.converged.all())


def test_conv_and_avgpool_chain_as_linear_operators():
    torch.manual_seed(0)
    f = nn.Sequential(
        nn.Conv2d(1, 2, 3),
        nn.Tanh(),
        nn.AvgPool2d(2),
        nn.Flatten(),
        nn.Linear(2 * 3 * 3, 5),
        nn.Sigmoid(),
    ).double()
    x = torch.rand(3, 1, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        y = f(x)
    inv = invert(f, y, method="pinv", input_shape=(1, 8, 8))
    assert inv.x.shape == (3, 1, 8, 8)
    assert float(inv.residual.max()) <= 1e-9


def test_batchnorm_eval_and_dropout_are_affine():
    torch.manual_seed(0)
    f = nn.Sequential(
        nn.Linear(12, 8),
        nn.BatchNorm1d(8),
        nn.Dropout(0.5),
        nn.LeakyReLU(0.2),
        nn.Linear(8, 4),
        nn.Sigmoid(),
    ).double()
    f.train()
    f(torch.randn(64, 12, dtype=torch.float64))  # give BatchNorm running statistics
    f.eval()
    with torch.no_grad():
        y = f(torch.randn(5, 12, dtype=torch.float64))
    f.train()  # invert evaluates in eval mode and restores the mode
    inv = invert(f, y, method="pinv")
    assert f.training
    assert float(inv.residual.max()) <= 1e-9


def test_factorisation_is_cached_per_model(seed_model):
    from nninv.model.chain import analyse

    f = seed_model()
    assert analyse(f) is analyse(f)
    c1 = analyse(f)
    with torch.no_grad():
        f[0].weight.add_(1.0)
    assert analyse(f) is not c1  # weights changed: analysis redone


# --- analytic method -------------------------------------------------------------------


def brute_force_conditional_mean(mu, Sigma, W, b, z):
    """E[x | W x + b = z] for x ~ N(mu, Sigma), from the joint Gaussian of (x, W x)."""
    S = W @ Sigma @ W.T
    return mu + (Sigma @ W.T @ np.linalg.solve(S, (z - b - W @ mu).T)).T


def test_analytic_matches_brute_force_gaussian():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(400, 30)) @ rng.normal(size=(30, 30)) * 0.3
    prior = GaussianPrior.fit(X)
    torch.manual_seed(0)
    f = nn.Sequential(nn.Linear(30, 7), nn.Sigmoid()).double()
    with torch.no_grad():
        y = f(torch.from_numpy(X[:10]))
    inv = invert(f, y, method="analytic", prior=prior)
    W = f[0].weight.detach().numpy()
    b = f[0].bias.detach().numpy()
    z = np.log(y.numpy() / (1 - y.numpy()))
    ref = brute_force_conditional_mean(prior.mean.numpy(), prior.covariance.numpy(), W, b, z)
    np.testing.assert_allclose(inv.x.numpy(), ref, atol=1e-9, rtol=0)


def test_analytic_matches_brute_force_mixture():
    rng = np.random.default_rng(1)
    X = np.concatenate([rng.normal(-2, 1, size=(300, 8)), rng.normal(2, 0.5, size=(300, 8))])
    prior = GaussianMixturePrior.fit(X, n_components=2, seed=0)
    torch.manual_seed(1)
    f = nn.Sequential(nn.Linear(8, 3), nn.Tanh()).double()
    with torch.no_grad():
        y = f(torch.from_numpy(X[::60]))
    inv = invert(f, y, method="analytic", prior=prior)
    W = f[0].weight.detach().numpy()
    b = f[0].bias.detach().numpy()
    z = np.arctanh(y.numpy())
    # evidence of each component for z = W x + b, then the weighted conditional means
    from scipy.stats import multivariate_normal

    means, weights = [], []
    for k in range(2):
        mu, S = prior.means[k].numpy(), prior.covariances[k].numpy()
        means.append(brute_force_conditional_mean(mu, S, W, b, z))
        ev = multivariate_normal(W @ mu + b, W @ S @ W.T).logpdf(z)
        weights.append(np.log(prior.weights[k].item()) + ev)
    w = np.exp(np.array(weights) - np.logaddexp(*weights))
    ref = w[0][:, None] * means[0] + w[1][:, None] * means[1]
    np.testing.assert_allclose(inv.x.numpy(), ref, atol=1e-8, rtol=0)
    assert float(inv.residual.max()) <= 1e-10


def test_analytic_deep_chain_exact():
    torch.manual_seed(0)
    f = nn.Sequential(
        nn.Linear(20, 12),
        nn.LeakyReLU(0.1),
        nn.Linear(12, 6),
        nn.Tanh(),
        nn.Linear(6, 3),
        nn.Sigmoid(),
    ).double()
    X = torch.randn(300, 20, dtype=torch.float64)
    prior = GaussianMixturePrior.fit(X, n_components=3)
    with torch.no_grad():
        y = f(X[:16])
    inv = invert(f, y, method="analytic", prior=prior)
    assert float(inv.residual.max()) <= 1e-9


def test_auto_method(seed_model):
    f = seed_model()
    y = torch.full((2, 10), 0.3, dtype=torch.float64)
    assert invert(f, y).method == "pinv"
    prior = GaussianPrior.fit(
        torch.rand(50, 784, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    )
    assert invert(f, y, prior=prior).method == "analytic"


# --- targets at the edge and bad input -------------------------------------------------


def test_sigmoid_saturated_float32_outputs_are_handled(seed_model):
    f = seed_model(torch.float32)
    y = torch.full((2, 10), 0.5)
    y[0, 3] = 1.0
    y[1, 7] = 0.0
    with pytest.warns(NNInvWarning, match="edge of the range"):
        inv = invert(f, y, method="pinv")
    assert bool(torch.isfinite(inv.x).all())
    assert float(inv.residual.max()) <= EPS[torch.float32]["residual"]
    assert bool(inv.converged.all())
    assert inv.info["edge_values_moved"] == 2


@pytest.mark.parametrize(
    ("value", "match"),
    [
        (1.5, r"sample 1, output 4 is 1.5, outside the range \(0, 1\)"),
        (-0.2, r"sample 1, output 4 is -0.2"),
        (float("nan"), "sample 1, output 4 is nan"),
        (float("inf"), "sample 1, output 4 is inf"),
    ],
)
def test_impossible_sigmoid_targets(seed_model, value, match):
    f = seed_model()
    y = torch.full((2, 10), 0.5, dtype=torch.float64)
    y[1, 4] = value
    with pytest.raises(NNInvError, match=match):
        invert(f, y, method="pinv")


def test_negative_softplus_target():
    f = random_chain([5, 3], "softplus", torch.float64, 0)
    with pytest.raises(NNInvError, match=r"output 2 is -1.*softplus|Softplus"):
        invert(f, torch.tensor([[1.0, 1.0, -1.0]], dtype=torch.float64), method="pinv")


def test_softmax_target_must_sum_to_one():
    f = nn.Sequential(nn.Linear(5, 3), nn.Softmax(dim=1)).double()
    with pytest.raises(NNInvError, match="sum"):
        invert(f, torch.tensor([[0.2, 0.2, 0.2]], dtype=torch.float64), method="pinv")


@pytest.mark.parametrize("shape", [(3, 9), (3, 10, 1), (784,)])
def test_wrong_target_shape(seed_model, shape):
    f = seed_model()
    with pytest.raises(NNInvError, match="shape"):
        invert(f, torch.full(shape, 0.5, dtype=torch.float64), method="pinv")


def test_single_unbatched_target_accepted(seed_model):
    f = seed_model()
    inv = invert(f, torch.full((10,), 0.5, dtype=torch.float64), method="pinv")
    assert inv.x.shape == (1, 784)


def test_numpy_target_accepted(seed_model):
    f = seed_model()
    inv = invert(f, np.full((2, 10), 0.5), method="pinv")
    assert inv.x.dtype == torch.float64


def test_unknown_method_lists_valid_ones(seed_model):
    with pytest.raises(ValueError, match="unknown method 'magic'; valid: .*analytic.*pinv"):
        invert(seed_model(), torch.full((1, 10), 0.5, dtype=torch.float64), method="magic")


def test_unknown_option(seed_model):
    with pytest.raises(NNInvError, match="unknown option.*frobnicate.*'pinv'.*takes none"):
        invert(
            seed_model(),
            torch.full((1, 10), 0.5, dtype=torch.float64),
            method="pinv",
            frobnicate=True,
        )
    with pytest.raises(NNInvError, match="unknown option.*frobnicate.*valid: hidden_samples$"):
        gauss = GaussianPrior.fit(torch.rand(50, 784, dtype=torch.float64))
        invert(seed_model(), Y_HALF, method="analytic", prior=gauss, frobnicate=1)
    # auto: no method takes it, and the message says what each candidate takes
    with pytest.raises(
        NNInvError, match=r"no method takes frobnicate.*pinv: none; optimize: bounds"
    ):
        invert(seed_model(), torch.full((1, 10), 0.5, dtype=torch.float64), frobnicate=True)


# --- shared arguments, options and the auto rule ----------------------------------------


def test_bounds_with_auto_picks_optimize(seed_model):
    """Issue 26: ``invert(f, y, bounds=(0, 1))`` raised "unknown option(s) bounds; valid: "."""
    f = seed_model(n=20, m=3)
    x = torch.rand(2, 20, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    with torch.no_grad():
        y = f(x)
    inv = invert(f, y, bounds=(0, 1), progress=False)
    assert inv.method == "optimize"
    assert bool(inv.converged.all()), inv.reasons
    assert float(inv.x.min()) >= 0 and float(inv.x.max()) <= 1
    assert float(inv.residual.max()) <= EPS[torch.float64]["residual"]


@pytest.mark.parametrize("method", ["pinv", "analytic"])
@pytest.mark.parametrize("shared", ["bounds", "x0"])
def test_closed_forms_refuse_bounds_and_x0(seed_model, method, shared):
    prior = GaussianPrior.fit(torch.rand(50, 784, dtype=torch.float64))
    value = (0, 1) if shared == "bounds" else torch.zeros(2, 784, dtype=torch.float64)
    with pytest.raises(NNInvError, match=rf"'{method}' does not take {shared}.*decoder, optimize"):
        invert(seed_model(), Y_HALF, method=method, prior=prior, **{shared: value})


def test_seed_is_accepted_by_every_method_and_reaches_optimize(seed_model):
    f = seed_model()
    assert torch.equal(invert(f, Y_HALF, method="pinv", seed=3).x, invert(f, Y_HALF).x)
    g = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 2)).double()
    y = torch.tensor([[0.1, -0.2], [0.3, 0.0]], dtype=torch.float64)
    kw = {"method": "optimize", "restarts": 3, "progress": False}
    a, b = invert(g, y, seed=7, **kw), invert(g, y, options={"seed": 7}, **kw)
    assert torch.equal(a.x, b.x)
    with pytest.raises(NNInvError, match="seed given twice"):
        invert(g, y, seed=7, options={"seed": 7}, **kw)


def test_options_dict_keywords_and_dataclass_agree(seed_model):
    from nninv.methods.optimize import OptimizeOptions

    g = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 2)).double()
    y = torch.tensor([[0.1, -0.2]], dtype=torch.float64)
    runs = [
        invert(g, y, method="optimize", restarts=2, progress=False),
        invert(g, y, method="optimize", options={"restarts": 2, "progress": False}),
        invert(g, y, options=OptimizeOptions(restarts=2, progress=False)),  # auto: its method
    ]
    assert all(r.method == "optimize" for r in runs)
    assert all(torch.equal(r.x, runs[0].x) for r in runs)
    with pytest.raises(NNInvError, match="restarts given twice"):
        invert(g, y, method="optimize", options={"restarts": 2}, restarts=2)
    with pytest.raises(NNInvError, match="OptimizeOptions do not belong to method 'pinv'"):
        invert(seed_model(), Y_HALF, method="pinv", options=OptimizeOptions())
    with pytest.raises(NNInvError, match="options must be a dict"):
        invert(seed_model(), Y_HALF, options=[("restarts", 2)])


@pytest.mark.parametrize(
    ("name", "value", "match"),
    [
        ("restarts", 0, "option restarts must be a positive integer, got 0"),
        ("retries", -1, "option retries must be a non-negative integer"),
        ("seed", 1.5, "option seed must be an integer"),
        ("precision", "half", "option precision must be 'mixed' or 'full'"),
        ("whiten_rank", True, "option whiten_rank must be a non-negative integer or None"),
    ],
)
def test_optimize_options_checked_when_built(seed_model, name, value, match):
    from nninv.methods.optimize import OptimizeOptions

    with pytest.raises(NNInvError, match=match):
        OptimizeOptions(**{name: value})
    with pytest.raises(NNInvError, match=match):  # by invert, before any work
        invert(seed_model(), Y_HALF, method="optimize", options={name: value})


def test_options_classes_are_frozen_and_listed():
    from nninv.methods import METHODS, method_options, takes

    for name in METHODS:
        cls = method_options(name)
        assert cls is not None and cls.__dataclass_params__.frozen, name
    assert takes("optimize", "bounds") and takes("decoder", "x0") and not takes("pinv", "bounds")
    with pytest.raises(NNInvError, match="must be a frozen dataclass"):
        nninv.methods.register("bad", options=dict)


def test_choose_method_rule(seed_model):
    from nninv.methods import choose_method

    f = seed_model()
    gauss = GaussianPrior.fit(torch.rand(50, 784, dtype=torch.float64))
    dec = object()  # only the names of the options matter to the rule
    relu = nn.Sequential(nn.Linear(784, 10), nn.GELU()).double()
    cases = [
        ((f, Y_HALF), {}, "pinv"),
        ((f, Y_HALF, gauss), {}, "analytic"),
        ((f, Y_HALF), {"bounds": (0, 1)}, "optimize"),
        ((f, Y_HALF, gauss), {"x0": torch.zeros(2, 784)}, "optimize"),
        ((f, ClassTarget([1, 2])), {}, "optimize"),
        ((relu, Y_HALF), {}, "optimize"),
        ((f, Y_HALF), {"options": {"restarts": 2}}, "optimize"),
        ((f, Y_HALF, gauss), {"options": {"hidden_samples": 10}}, "analytic"),
        ((f, Y_HALF), {"options": {"decoder": dec}}, "decoder"),
        ((f, Y_HALF), {"options": {"decoder": dec}, "bounds": (0, 1)}, "decoder"),
    ]
    for args, kw, want in cases:
        assert choose_method(*args, **kw) == want, (kw, want)
    with pytest.raises(NNInvError, match="no method takes hidden_samples, restarts"):
        choose_method(f, Y_HALF, gauss, options={"restarts": 1, "hidden_samples": 2})
    with pytest.raises(NNInvError, match="no method takes hidden_samples.*tried pinv, optimize"):
        choose_method(f, Y_HALF, options={"hidden_samples": 2})  # analytic needs a prior


def test_reasons_is_a_field_and_agrees_with_info():
    torch.manual_seed(0)
    f = nn.Sequential(nn.Linear(10, 784), nn.Sigmoid()).double()
    with torch.no_grad():
        y = f(torch.rand(2, 10, generator=torch.Generator().manual_seed(1), dtype=torch.float64))
    y[1, :5] = 0.9  # not an output of this reverse net
    with pytest.warns(NNInvWarning, match="did not converge"):
        inv = invert(f, y, method="pinv")
    assert inv.reasons is inv.info["reasons"] and len(inv.reasons) == 2
    assert inv.reasons[0] is None and "not in the range" in inv.reasons[1]
    assert inv.converged.tolist() == [True, False]
    plain = nninv.Inversion(inv.x, inv.residual, inv.converged, 0, "pinv")
    assert plain.reasons == [None, None]
    with pytest.raises(ValueError, match="reasons has 1 entries for 2 samples"):
        nninv.Inversion(inv.x, inv.residual, inv.converged, 0, "pinv", {}, ["x"])


def test_analytic_needs_prior(seed_model):
    with pytest.raises(NNInvError, match="needs a prior"):
        invert(seed_model(), torch.full((1, 10), 0.5, dtype=torch.float64), method="analytic")


def test_prior_of_wrong_size(seed_model):
    prior = GaussianPrior.fit(
        torch.rand(50, 20, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    )
    with pytest.raises(NNInvError, match="prior is over"):
        invert(
            seed_model(),
            torch.full((1, 10), 0.5, dtype=torch.float64),
            method="analytic",
            prior=prior,
        )


def test_unsupported_layer_named_with_index():
    f = nn.Sequential(nn.Linear(6, 5), nn.GELU(), nn.Linear(5, 3)).double()
    with pytest.raises(NNInvError, match=r"layer 1 '1' \(GELU\).*method='optimize'"):
        invert(f, torch.zeros(1, 3, dtype=torch.float64), method="pinv")


def test_maxpool_refused_by_closed_form():
    f = nn.Sequential(nn.Conv2d(1, 2, 3), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(18, 3))
    with pytest.raises(NNInvError, match=r"MaxPool2d.*piecewise"):
        invert(f, torch.zeros(1, 3), method="pinv", input_shape=(1, 8, 8))


def test_huge_operator_not_densified_silently():
    f = nn.Sequential(nn.Conv2d(3, 64, 3, padding=1), nn.Sigmoid())
    with pytest.raises(NNInvError, match=r"262144 x 12288 linear operator.*dense limit"):
        invert(f, torch.full((1, 64, 64, 64), 0.5), method="pinv", input_shape=(3, 64, 64))


def test_small_composite_of_large_layers_is_densified_in_chunks():
    torch.manual_seed(0)
    f = nn.Sequential(
        nn.Conv2d(3, 64, 3, padding=1), nn.Flatten(), nn.Linear(64 * 32 * 32, 2), nn.Sigmoid()
    ).double()
    x = torch.rand(2, 3, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        y = f(x)
    inv = invert(f, y, method="pinv", input_shape=(3, 32, 32))
    assert float(inv.residual.max()) <= EPS[torch.float64]["residual"]


def test_non_module_model():
    with pytest.raises(NNInvError, match="torch.nn.Module"):
        invert(lambda x: x, torch.zeros(1, 2), method="pinv")


def test_class_target_not_for_pinv(seed_model):
    with pytest.raises(NNInvError):
        invert(seed_model(), ClassTarget([1]), method="pinv")


def test_input_shape_needed_for_conv():
    f = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten())
    with pytest.raises(NNInvError, match="input_shape"):
        invert(f, torch.zeros(1, 2 * 6 * 6), method="pinv")


def test_fx_traced_chain_module():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1 = nn.Linear(8, 6)
            self.fc2 = nn.Linear(6, 3)

        def forward(self, x):
            return torch.sigmoid(self.fc2(torch.tanh(self.fc1(x))))

    torch.manual_seed(0)
    f = Net().double()
    with torch.no_grad():
        y = f(torch.randn(4, 8, dtype=torch.float64))
    inv = invert(f, y, method="pinv")
    assert float(inv.residual.max()) <= 1e-9


def test_no_warning_for_clean_inputs(seed_model):
    f = seed_model()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        invert(f, torch.full((2, 10), 0.4, dtype=torch.float64), method="pinv")
    assert [str(w.message) for w in caught] == []


def test_public_api_names():
    for name in ["invert", "diagnose", "Inversion", "NNInvError", "ClassTarget", "priors"]:
        assert hasattr(nninv, name)
    assert issubclass(nninv.NNInvError, ValueError)


def test_all_finite_one_pass_check():
    from nninv.model.outputs import all_finite

    t = torch.rand(50, 10, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert all_finite(t)
    for bad in (math.nan, math.inf, -math.inf):
        u = t.clone()
        u[17, 3] = bad
        assert not all_finite(u)
        assert not all_finite(u.float())
    assert all_finite(torch.empty(0, 10)) and all_finite(torch.arange(5))


def test_decoder_takes_x0_as_its_start():
    from nninv.learned import Decoder

    g = torch.Generator().manual_seed(0)
    f = nn.Sequential(nn.Linear(20, 3), nn.Sigmoid()).double()
    X = torch.rand(200, 20, generator=g, dtype=torch.float64)
    dec = Decoder.fit(f, X, hidden=(16,), epochs=2, progress=False)
    with torch.no_grad():
        y = f(X[:3])
    start = X[3:6]
    a = invert(f, y, decoder=dec, x0=start)  # auto: decoder= picks "decoder"
    b = invert(f, y, method="decoder", decoder=dec, start=start)
    assert a.method == b.method == "decoder"
    assert torch.equal(a.x, b.x) and bool(a.converged.all())
    assert not torch.equal(a.x, invert(f, y, decoder=dec).x)  # the start matters
    with pytest.raises(NNInvError, match="x0 or its older name start, not both"):
        invert(f, y, decoder=dec, x0=start, start=start)
    with pytest.raises(NNInvError, match=r"x0 has shape \(2, 20\); expected \(3, 20\)"):
        invert(f, y, decoder=dec, x0=start[:2])

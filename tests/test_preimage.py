"""Tests of nninv.preimage: exact descriptions, membership, projection, extent, sampling."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import nninv
from nninv import ClassTarget, NNInvError, Preimage, preimage
from nninv.geometry._diagnostics import ess_rhat
from nninv.geometry._polytope import Polyhedron
from nninv.priors import GaussianPrior

D = torch.float64
#: Tolerances (float64): outputs of members, KKT conditions, agreement with other solvers.
TOL = {"output": 1e-8, "kkt": 1e-8, "solver": 1e-6, "basis": 1e-10}
ACTS = {
    "sigmoid": nn.Sigmoid,
    "tanh": nn.Tanh,
    "leaky": lambda: nn.LeakyReLU(0.1),
    "softplus": nn.Softplus,
    "none": nn.Identity,
}


def one_layer(n=24, m=4, act="sigmoid", seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(n, m), ACTS[act]()).to(D)


def rand_x(n, seed=1, k=1):
    return torch.rand(k, n, generator=torch.Generator().manual_seed(seed), dtype=D)


def out_err(f, xs, y):
    with torch.no_grad():
        return float((f(xs) - y).abs().max())


# --- exact affine sets --------------------------------------------------------------------


@pytest.mark.parametrize("act", list(ACTS))
def test_affine_samples_reproduce_the_output_and_respect_bounds(act):
    f = one_layer(act=act)
    x = rand_x(24)
    y = f(x).detach()
    pre = preimage(f, y, bounds=(0, 1))
    assert isinstance(pre, Preimage) and pre.kind == "affine" and not pre.empty
    assert pre.dim == 24 - 4
    xs = pre.sample(20, seed=0, burn=200, thin=10)
    assert xs.shape == (20, 24) and xs.dtype == D
    assert out_err(f, xs, y) <= TOL["output"]
    assert bool(((xs >= 0) & (xs <= 1)).all())
    assert bool(pre.contains(xs).all())
    assert len({tuple(r.tolist()) for r in xs}) == 20  # different inputs


def test_samples_are_reproducible_and_shaped_like_the_input():
    torch.manual_seed(0)
    f = nn.Sequential(nn.Flatten(), nn.Linear(36, 3), nn.Sigmoid()).to(D)
    x = torch.rand(1, 1, 6, 6, dtype=D)
    pre = preimage(f, f(x).detach(), bounds=(0, 1), input_shape=(1, 6, 6))
    a = pre.sample(5, seed=3, burn=50, thin=5)
    b = pre.sample(5, seed=3, burn=50, thin=5)
    assert a.shape == (5, 1, 6, 6) and torch.equal(a, b)
    assert pre.member.shape == (1, 1, 6, 6)


def test_basis_spans_the_directions_that_keep_the_output():
    f = one_layer(n=30, m=5, act="tanh")
    x = rand_x(30)
    pre = preimage(f, f(x).detach())
    B = pre.basis
    assert B.shape == (30, 25)
    assert torch.allclose(B.T @ B, torch.eye(25, dtype=D), atol=TOL["basis"])
    W = f[0].weight.detach()
    assert float((W @ B).abs().max()) <= TOL["basis"]
    moved = pre.member + (B @ torch.randn(25, dtype=D)).reshape(1, -1)
    assert out_err(f, moved, f(x)) <= TOL["output"]


def test_softmax_and_relu_outputs_are_exact():
    torch.manual_seed(0)
    x = rand_x(20)
    f = nn.Sequential(nn.Linear(20, 4), nn.Softmax(dim=1)).to(D)
    pre = preimage(f, f(x).detach(), bounds=(0, 1))
    assert pre.dim == 20 - 3  # softmax forgets a common shift of the logits
    xs = pre.sample(8, seed=0, burn=100, thin=5)
    assert out_err(f, xs, f(x)) <= TOL["output"]
    g = nn.Sequential(nn.Linear(20, 6), nn.ReLU()).to(D)
    y = g(x).detach()
    pre = preimage(g, y, bounds=(0, 1))
    assert pre.info["n_inequalities"] == int((y == 0).sum())
    xs = pre.sample(8, seed=0, burn=100, thin=5)
    assert out_err(g, xs, y) <= TOL["output"]


def test_flat_set_gets_its_true_dimension():
    # x0 + x1 = 0 on [0, 1]^6 forces x0 = x1 = 0: an implicit equality each
    f = nn.Sequential(nn.Linear(6, 1)).to(D)
    with torch.no_grad():
        f[0].weight.copy_(torch.tensor([[1.0, 1.0, 0, 0, 0, 0]]))
        f[0].bias.zero_()
    pre = preimage(f, torch.zeros(1, 1, dtype=D), bounds=(0, 1))
    assert pre.dim == 4
    xs = pre.sample(6, seed=0, burn=50, thin=5)
    assert float(xs[:, :2].abs().max()) <= 1e-12 and bool(pre.contains(xs).all())


# --- membership, projection, extent -------------------------------------------------------


def test_contains_agrees_with_the_model():
    f = one_layer()
    x = rand_x(24)
    y = f(x).detach()
    pre = preimage(f, y, bounds=(0, 1))
    members = pre.sample(10, seed=1, burn=100, thin=5)
    noise = torch.randn(10, 24, generator=torch.Generator().manual_seed(2), dtype=D)
    cand = torch.cat([members, members + 1e-3 * noise, rand_x(24, seed=5, k=10), members - 2.0])
    with torch.no_grad():
        by_model = (f(cand) - y).abs().amax(1) <= 1e-6
    in_box = ((cand >= -1e-6) & (cand <= 1 + 1e-6)).all(1)
    assert torch.equal(pre.contains(cand), by_model & in_box)
    assert bool(pre.contains(members).all())


def _kkt_affine(A, c, lo, hi, x_ref, x):
    """Largest KKT violation of min |x - x_ref| s.t. A x = c, lo <= x <= hi, checked
    independently: lambda from the free coordinates, signs of the box multipliers."""
    r = x_ref - x
    free = (x > lo + 1e-9) & (x < hi - 1e-9)
    lam = torch.linalg.lstsq(A[:, free].T, r[free][:, None]).solution[:, 0]
    mu = r - A.T @ lam  # = -mu_lo + mu_hi
    viol = [
        float((A @ x - c).abs().max()),
        float(mu[free].abs().max()) if free.any() else 0.0,
        float(mu[x <= lo + 1e-9].clamp(min=0).max()) if (x <= lo + 1e-9).any() else 0.0,
        float((-mu[x >= hi - 1e-9]).clamp(min=0).max()) if (x >= hi - 1e-9).any() else 0.0,
        float((lo - x).clamp(min=0).max()),
        float((x - hi).clamp(min=0).max()),
    ]
    return max(viol)


def test_projection_satisfies_kkt():
    f = one_layer(n=40, m=6, act="none")
    x = rand_x(40)
    y = f(x).detach()
    pre = preimage(f, y, bounds=(0, 1))
    refs = torch.randn(5, 40, generator=torch.Generator().manual_seed(4), dtype=D) * 2
    P = pre.project(refs)
    assert P.shape == (5, 40)
    A, b = f[0].weight.detach(), f[0].bias.detach()
    lo, hi = torch.zeros(40, dtype=D), torch.ones(40, dtype=D)
    for i in range(5):
        assert _kkt_affine(A, y[0] - b, lo, hi, refs[i], P[i]) <= TOL["kkt"]
        # active bounds are present (the test exercises the inequalities)
    assert bool(((P == 0) | (P == 1)).any())
    assert bool(pre.contains(P).all())
    # a member projects onto itself
    m = pre.sample(1, seed=0, burn=50, thin=1)
    assert torch.allclose(pre.project(m), m, atol=1e-10)


def test_projection_matches_clarabel_on_polytopes():
    clarabel = pytest.importorskip("clarabel")
    import scipy.sparse as sp

    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        n, k, p = 30, 3, 6
        x_in = torch.rand(n, generator=g, dtype=D)
        A = torch.randn(k, n, generator=g, dtype=D)
        G = torch.randn(p, n, generator=g, dtype=D)
        h = G @ x_in + 0.2 * torch.rand(p, generator=g, dtype=D)
        poly, _ = Polyhedron.from_constraints(
            A, A @ x_in, G, h, torch.zeros(n, dtype=D), torch.ones(n, dtype=D)
        )
        z = 2 * torch.randn(n, generator=g, dtype=D)
        res = poly.project(z)
        assert res.kkt <= TOL["kkt"]
        E, e, Gn, gn = (t.numpy() for t in (poly.E, poly.e, poly.G, poly.g))
        M = sp.vstack([sp.csc_matrix(E), sp.csc_matrix(Gn), sp.eye(n), -sp.eye(n)]).tocsc()
        rhs = np.concatenate([e, gn, np.ones(n), np.zeros(n)])
        cones = [clarabel.ZeroConeT(k), clarabel.NonnegativeConeT(p + 2 * n)]
        s = clarabel.DefaultSettings()
        s.verbose = False
        sol = clarabel.DefaultSolver(sp.eye(n).tocsc(), -z.numpy(), M, rhs, cones, s).solve()
        assert np.abs(res.x.numpy() - np.array(sol.x)).max() <= TOL["solver"]


def test_extent_brackets_every_member():
    f = one_layer(n=24, m=4)
    x = rand_x(24)
    pre = preimage(f, f(x).detach(), bounds=(0, 1))
    ext = pre.extent(7)
    lo, hi = ext
    assert 0 <= lo <= float(x[0, 7]) <= hi <= 1
    assert bool(pre.contains(ext.x_low).all() and pre.contains(ext.x_high).all())
    assert float(ext.x_low[0, 7]) == pytest.approx(lo, abs=1e-9)
    xs = pre.sample(30, seed=0, burn=100, thin=5)
    assert bool((xs[:, 7] >= lo - 1e-9).all() and (xs[:, 7] <= hi + 1e-9).all())
    w = torch.randn(24, dtype=D)
    e2 = pre.extent(w)
    vals = xs @ w
    assert e2.low - 1e-9 <= float(vals.min()) and float(vals.max()) <= e2.high + 1e-9
    unb = preimage(f, f(x).detach())
    assert unb.extent(0).high == math.inf and unb.extent(0).x_high is None


# --- class targets and piecewise-linear pieces --------------------------------------------


def test_class_target_is_the_polytope_of_the_class():
    torch.manual_seed(0)
    f = nn.Sequential(nn.Linear(10, 3), nn.Softmax(dim=1)).to(D)
    x = rand_x(10)
    c = int(f(x).argmax())
    pre = preimage(f, ClassTarget(c), bounds=(0, 1))
    assert pre.kind == "class" and pre.dim == 10
    xs = pre.sample(30, seed=0, burn=200, thin=5)
    assert bool((f(xs).argmax(1) == c).all())
    assert bool(pre.contains(xs).all())
    other = (c + 1) % 3
    assert not bool(preimage(f, ClassTarget(other), bounds=(0, 1)).contains(xs).any())


def relu_net(widths, seed=0, act=nn.ReLU):
    torch.manual_seed(seed)
    layers = []
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(widths) - 2:
            layers.append(act())
    return nn.Sequential(*layers).to(D)


def test_relu_piece_around_an_input():
    f = relu_net([12, 16, 8, 3])
    x = rand_x(12)
    y = f(x).detach()
    pre = preimage(f, y, bounds=(0, 1), around=x)
    assert pre.kind == "piece" and pre.dim == 12 - 3
    assert bool(pre.contains(x).all())
    xs = pre.sample(15, seed=0, burn=200, thin=5)
    assert out_err(f, xs, y) <= TOL["output"]
    assert bool(pre.contains(xs).all())

    def pattern(v):
        return torch.cat([(f[0](v) >= 0), (f[:3](v) >= 0)], 1)

    assert bool((pattern(xs) == pattern(x)).all())  # same activation region
    P = pre.project(rand_x(12, seed=9, k=3))
    assert bool(pre.contains(P).all())


def test_maxpool_piece():
    torch.manual_seed(0)
    f = nn.Sequential(
        nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(32, 3)
    ).to(D)
    with torch.no_grad():
        f[0].bias.fill_(0.3)  # most units active, so the piece is not degenerate
    x = torch.rand(1, 1, 8, 8, dtype=D)
    y = f(x).detach()
    pre = preimage(f, y, bounds=(0, 1), around=x, input_shape=(1, 8, 8))
    J = torch.func.jacrev(lambda v: f(v.reshape(1, 1, 8, 8))[0])(x.reshape(-1))
    assert int(torch.linalg.matrix_rank(J)) == 3
    assert pre.kind == "piece" and pre.dim == 64 - 3
    xs = pre.sample(6, seed=0, burn=200, thin=10)
    assert xs.shape == (6, 1, 8, 8)
    assert out_err(f, xs, y) <= TOL["output"]


def test_manifold_of_a_deeper_smooth_chain():
    torch.manual_seed(0)
    f = nn.Sequential(nn.Linear(8, 6), nn.Tanh(), nn.Linear(6, 2), nn.Sigmoid()).to(D)
    x = rand_x(8)
    y = f(x).detach()
    pre = preimage(f, y, bounds=(0, 1), around=x)
    assert pre.kind == "manifold" and pre.dim == 6
    assert pre.basis.shape == (8, 6)
    J = torch.func.jacrev(lambda v: f(v[None])[0])(pre.member.reshape(-1)).detach()
    assert float((J @ pre.basis).abs().max()) <= 1e-10  # the tangent space at the member
    s = pre.draw(6, seed=0, chains=3, burn=20, thin=4)
    assert s.method == "manifold-walk" and 0 < s.acceptance <= 1
    assert out_err(f, s.x, y) <= TOL["output"]
    assert bool(((s.x >= 0) & (s.x <= 1)).all())
    P = pre.project(rand_x(8, seed=3, k=2))
    assert bool(pre.contains(P).all())
    with pytest.raises(NNInvError, match="curved"):
        pre.extent(0)


# --- sampling quality ---------------------------------------------------------------------


def test_hit_and_run_is_uniform_on_a_simple_set():
    # x in [0,1]^3 with x0 + x1 + x2 = 1.5: a regular hexagon, symmetric in the coordinates
    f = nn.Sequential(nn.Linear(3, 1)).to(D)
    with torch.no_grad():
        f[0].weight.fill_(1.0)
        f[0].bias.zero_()
    pre = preimage(f, torch.tensor([[1.5]], dtype=D), bounds=(0, 1))
    s = pre.draw(4000, seed=0, chains=40, burn=100, thin=5)
    assert s.rhat < 1.05 and s.ess > 500
    assert torch.allclose(s.x.mean(0), torch.full((3,), 0.5, dtype=D), atol=0.02)
    # the marginal density of x0 on the hexagon is (0.5 + a) / 0.75 for a <= 0.5, so
    # [0, 0.25] holds 0.15625 / 0.75 = 5/24 of the mass
    frac = float((s.x[:, 0] < 0.25).double().mean())
    assert abs(frac - 5 / 24) < 0.02


def test_prior_samples():
    g = torch.Generator().manual_seed(0)
    data = torch.rand(400, 12, generator=g, dtype=D) * 0.6 + 0.2
    prior = GaussianPrior.fit(data)
    f = one_layer(n=12, m=3)
    x = data[:1]
    y = f(x).detach()
    bounded = preimage(f, y, bounds=(0, 1))
    s = bounded.draw(12, seed=0, prior=prior, burn=50, thin=5, chains=6)
    assert s.method == "prior"
    assert out_err(f, s.x, y) <= TOL["output"] and bool(((s.x >= 0) & (s.x <= 1)).all())
    free = preimage(f, y)
    s = free.draw(12, seed=0, prior=prior)
    assert s.method == "exact" and out_err(f, s.x, y) <= TOL["output"]


#: Tolerances of the sampling tests (float64, seeded): moments and probabilities
#: against exact values, a few standard errors at the effective sample sizes reached.
MC = {"mean": 0.02, "prob": 0.025, "sd": 0.02, "rhat": 1.05, "z": 4.0}


def _line_model(w, n=None):
    """A linear model with one output, weights ``w``, no bias: its preimage of 0 is a
    hyperplane through the origin."""
    w = torch.as_tensor(w, dtype=D)
    f = nn.Sequential(nn.Linear(w.numel(), 1)).to(D)
    with torch.no_grad():
        f[0].weight.copy_(w[None])
        f[0].bias.zero_()
    return f


def test_billiard_is_the_default_and_uniform_on_a_triangle():
    # class 0 of z = (1, x0 + x1) on [0, 1]^2 is the triangle x0 + x1 <= 1 (an inequality
    # wall G x <= g as well as box walls): mean 1/3, E x0^2 = 1/6, P(x0 < 1/2) = 3/4
    f = nn.Sequential(nn.Linear(2, 2)).to(D)
    with torch.no_grad():
        f[0].weight.copy_(torch.tensor([[0.0, 0.0], [1.0, 1.0]]))
        f[0].bias.copy_(torch.tensor([1.0, 0.0]))
    pre = preimage(f, ClassTarget(0), bounds=(0, 1))
    assert pre.kind == "class"
    s = pre.draw(4000, seed=0, chains=20)
    assert s.method == "billiard" and s.acceptance == 1.0 and s.info["bounces"] > 0
    assert s.rhat < MC["rhat"] and s.ess > 1000
    x = s.x
    assert float(x.sum(1).max()) <= 1 + 1e-12 and bool(((x >= 0) & (x <= 1)).all())
    assert torch.allclose(x.mean(0), torch.full((2,), 1 / 3, dtype=D), atol=MC["mean"])
    assert abs(float(x[:, 0].pow(2).mean()) - 1 / 6) < MC["mean"]
    assert abs(float((x[:, 0] < 0.5).double().mean()) - 0.75) < MC["prob"]


def test_billiard_rounds_a_long_thin_set():
    # x1 = x2 in [0, 100] x [0, 1] x [0, 1]: a 100 x 1.4 rectangle; uniform x0 has mean
    # 50 and sd 100 / sqrt(12). Rounding gives x0 a velocity a hundred times larger.
    f = _line_model([0.0, 1.0, -1.0])
    pre = preimage(
        f, torch.zeros(1, 1, dtype=D), bounds=(torch.zeros(3), torch.tensor([100, 1, 1]))
    )
    s = pre.draw(2000, seed=1, chains=20)
    assert s.info["rounded"] and s.rhat < MC["rhat"]
    assert float((s.x[:, 1] - s.x[:, 2]).abs().max()) <= TOL["output"]
    # a long set: the tolerance is four standard errors at the reported ESS
    assert abs(float(s.x[:, 0].mean()) / 100 - 0.5) < MC["z"] / math.sqrt(12 * s.ess)
    assert abs(float(s.x[:, 0].std()) / 100 - 1 / math.sqrt(12)) < MC["sd"]
    assert abs(float(s.x[:, 1].mean()) - 0.5) < MC["mean"]


@pytest.mark.parametrize("method", ["billiard", "hit-and-run", "prior"])
def test_draws_are_deterministic_for_a_seed(method):
    data = torch.rand(200, 6, generator=torch.Generator().manual_seed(0), dtype=D)
    prior = GaussianPrior.fit(data) if method == "prior" else None
    f = one_layer(n=6, m=2)
    pre = preimage(f, f(data[:1]).detach(), bounds=(0, 1))
    a = pre.draw(12, seed=5, method=method, prior=prior, chains=4, burn=10)
    b = pre.draw(12, seed=5, method=method, prior=prior, chains=4, burn=10)
    c = pre.draw(12, seed=6, method=method, prior=prior, chains=4, burn=10)
    assert torch.equal(a.x, b.x) and not torch.equal(a.x, c.x)
    assert out_err(f, a.x, f(data[:1])) <= TOL["output"]


@pytest.mark.parametrize("mu, sd", [(0.3, 0.5), (-1.0, 0.4), (0.5, 4.0)])
def test_prior_on_a_segment_is_the_truncated_normal(mu, sd):
    # x0 = x1 in [0, 1]^2 under N((mu, mu), sd^2 I): along the segment x = (t, t), t is
    # N(mu, sd^2 / 2) truncated to [0, 1] (the mean far outside in one case)
    from scipy.stats import truncnorm

    prior = GaussianPrior(torch.full((2,), mu, dtype=D), sd**2 * torch.eye(2, dtype=D))
    pre = preimage(_line_model([1.0, -1.0]), torch.zeros(1, 1, dtype=D), bounds=(0, 1))
    s = pre.draw(4000, seed=0, prior=prior, chains=20)
    assert s.method == "prior" and s.acceptance == 1.0 and s.rhat < MC["rhat"]
    t = s.x[:, 0].numpy()
    assert float((s.x[:, 0] - s.x[:, 1]).abs().max()) <= TOL["output"]
    scale = sd / math.sqrt(2)
    ref = truncnorm((0 - mu) / scale, (1 - mu) / scale, loc=mu, scale=scale)
    assert abs(t.mean() - ref.mean()) < MC["mean"] * 0.5
    assert abs(t.std() - ref.std()) < MC["sd"] * 0.5
    assert abs((t < 0.5).mean() - ref.cdf(0.5)) < MC["prob"]


def test_prior_on_a_square_matches_rejection_sampling():
    # a correlated 2-D Gaussian truncated to [0, 1]^2 (no equality): exact HMC against
    # the exact answer of rejection sampling, with 200 000 proposals
    mean = torch.tensor([0.2, 0.9], dtype=D)
    cov = torch.tensor([[0.3, 0.2], [0.2, 0.4]], dtype=D)
    prior = GaussianPrior(mean, cov)
    f = nn.Sequential(nn.Linear(2, 2), nn.Softmax(dim=1)).to(D)
    pre = preimage(f, ClassTarget(0), bounds=(0, 1))
    with torch.no_grad():
        f[0].weight.zero_()
        f[0].bias.zero_()
    pre = preimage(f, ClassTarget(0), bounds=(0, 1))  # ties count: the whole square
    assert pre.dim == 2
    s = pre.draw(6000, seed=2, prior=prior, chains=20)
    assert s.rhat < MC["rhat"]
    z = prior.sample(200_000, seed=0)
    z = z[((z >= 0) & (z <= 1)).all(1)]
    assert torch.allclose(s.x.mean(0), z.mean(0), atol=MC["mean"])
    assert torch.allclose(s.x.std(0), z.std(0), atol=MC["sd"])
    assert (
        abs(float((s.x[:, 0] < s.x[:, 1]).double().mean() - (z[:, 0] < z[:, 1]).double().mean()))
        < MC["prob"]
    )


def test_mixture_prior_on_a_segment_matches_quadrature():
    from nninv.priors import GaussianMixturePrior

    # two components on the segment x0 = x1; the restricted density of t is
    # sum_k w_k N((t, t); mu_k, Sigma_k) on [0, 1], integrated on a fine grid
    means = torch.tensor([[0.1, 0.2], [0.8, 0.7]], dtype=D)
    covs = torch.stack(
        [0.05 * torch.eye(2, dtype=D), torch.tensor([[0.04, 0.01], [0.01, 0.03]], dtype=D)]
    )
    prior = GaussianMixturePrior(torch.tensor([0.3, 0.7], dtype=D), means, covs)
    pre = preimage(_line_model([1.0, -1.0]), torch.zeros(1, 1, dtype=D), bounds=(0, 1))
    s = pre.draw(4000, seed=0, prior=prior, chains=20)
    assert s.info["components"] == 2 and s.info["jumps"] > 0.2 and s.rhat < MC["rhat"]
    t = torch.linspace(0, 1, 20001, dtype=D)
    dens = prior.log_prob(torch.stack([t, t], 1)).exp()
    dens = dens / torch.trapezoid(dens, t)
    mean = float(torch.trapezoid(t * dens, t))
    low = float(torch.trapezoid(dens * (t < 0.5), t))
    assert abs(float(s.x[:, 0].mean()) - mean) < MC["mean"]
    assert abs(float((s.x[:, 0] < 0.5).double().mean()) - low) < MC["prob"]


def test_prior_respects_inequality_walls():
    # the prior restricted to a class polytope with an equality: every member keeps both
    data = torch.rand(300, 8, generator=torch.Generator().manual_seed(1), dtype=D)
    prior = GaussianPrior.fit(data)
    torch.manual_seed(3)
    f = nn.Sequential(nn.Linear(8, 3), nn.ReLU()).to(D)
    x = data[:1]
    y = f(x).detach()
    pre = preimage(f, y, bounds=(0, 1))
    s = pre.draw(200, seed=0, prior=prior, chains=10)
    assert out_err(f, s.x, y) <= TOL["output"] and bool(pre.contains(s.x).all())
    assert bool(((s.x >= 0) & (s.x <= 1)).all())


def test_harmonic_hit_times_match_a_fine_time_grid():
    from nninv.geometry._walks import _harmonic_rates

    rng = np.random.default_rng(0)
    a = rng.uniform(-1, 1, (100, 1))
    b = rng.standard_normal((100, 1))
    wu = a + rng.uniform(0, 1.5, (100, 1))  # walls above and below the start
    wl = a - rng.uniform(0, 1.5, (100, 1))
    inv_u, inv_l = _harmonic_rates(a, b, wu, wl)
    grid = np.linspace(0, np.pi, 50_001)[1:]
    path = a * np.cos(grid) + b * np.sin(grid)  # (100, T)
    for inv, out in ((inv_u, path >= wu), (inv_l, path <= wl)):
        hit = out.any(1)
        first = grid[out.argmax(1)]
        with np.errstate(divide="ignore", invalid="ignore"):
            t = np.where(inv[:, 0] > 0, 2 * np.arctan(1 / inv[:, 0]), np.inf)
        assert np.array_equal(np.isfinite(t), hit)
        assert np.abs(t[hit] - first[hit]).max() < 2 * (grid[1] - grid[0])
    # on the upper wall and moving out: an immediate hit; moving in: none soon
    iu, _ = _harmonic_rates(
        np.array([[0.5]]), np.array([[1.0]]), np.array([[0.5]]), np.array([[-1.0]])
    )
    assert iu[0, 0] == np.inf
    iu, _ = _harmonic_rates(
        np.array([[0.5]]), np.array([[-1.0]]), np.array([[0.5]]), np.array([[-1.0]])
    )
    assert not iu[0, 0] > 0


def test_billiard_rejects_trajectories_with_too_many_bounces():
    poly, _ = Polyhedron.from_constraints(
        None, None, None, None, torch.zeros(3, dtype=D), torch.ones(3, dtype=D)
    )
    gen = torch.Generator().manual_seed(0)
    X0 = poly.starts(4, gen)
    w = poly.billiard(
        X0, keep=3, thin=1, burn=0, gen=gen, monitor=torch.eye(3, dtype=D),
        dynamics=poly.rounded(torch.rand(10, 4, 3, dtype=D), time=50.0), max_bounces=0,
    )  # fmt: skip
    assert w.info["rejected"] == 1.0
    assert torch.equal(w.x, X0[:, None].expand(-1, 3, -1))


def test_old_hit_and_run_still_runs():
    f = one_layer(n=10, m=2)
    y = f(rand_x(10)).detach()
    s = preimage(f, y, bounds=(0, 1)).draw(8, seed=0, method="hit-and-run", burn=40, thin=4)
    assert s.method == "hit-and-run" and out_err(f, s.x, y) <= TOL["output"]


def test_ess_and_rhat_on_independent_chains():
    rng = np.random.default_rng(0)
    ess, rhat = ess_rhat(rng.standard_normal((1000, 4, 2)))
    assert np.all(np.abs(rhat - 1) < 0.01) and np.all(ess > 2500)
    stuck = rng.standard_normal((1000, 4, 1)) * 0.01 + np.arange(4)[None, :, None]
    assert ess_rhat(stuck)[1][0] > 10


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.integers(3, 12),
    m=st.integers(1, 3),
    act=st.sampled_from(["sigmoid", "tanh", "leaky", "none"]),
    seed=st.integers(0, 10_000),
)
def test_property_members_reproduce_the_output(n, m, act, seed):
    f = one_layer(n=n, m=m, act=act, seed=seed)
    x = rand_x(n, seed=seed)
    y = f(x).detach()
    pre = preimage(f, y, bounds=(0, 1))
    assert not pre.empty  # x itself is a member
    assert pre.dim == n - m
    xs = pre.sample(4, seed=seed, burn=30, thin=3)
    assert out_err(f, xs, y) <= TOL["output"]
    assert bool(((xs >= 0) & (xs <= 1)).all())


# --- empty sets and errors ----------------------------------------------------------------


def test_target_outside_the_image_of_the_bounds_is_an_explicit_empty_set():
    f = one_layer(n=10, m=3)
    y = torch.tensor([[1 - 1e-9, 1e-9, 1 - 1e-9]], dtype=D)
    pre = preimage(f, y, bounds=(0, 1))
    assert pre.empty and pre.dim == -1 and "outside the image" in pre.reason
    assert not bool(pre.contains(rand_x(10, k=3)).any())
    for call in (lambda: pre.sample(2), lambda: pre.project(rand_x(10)), lambda: pre.extent(0)):
        with pytest.raises(NNInvError, match="empty"):
            call()
    assert not preimage(f, y).empty  # without bounds the set exists


def test_rank_deficient_map_and_target_outside_its_range():
    f = nn.Sequential(nn.Linear(5, 2)).to(D)
    with torch.no_grad():
        f[0].weight.copy_(torch.tensor([[1.0, 0, 0, 0, 0], [2.0, 0, 0, 0, 0]]))
        f[0].bias.zero_()
    assert preimage(f, torch.tensor([[1.0, 2.0]], dtype=D)).dim == 4
    pre = preimage(f, torch.tensor([[1.0, 1.0]], dtype=D))
    assert pre.empty and "range" in pre.reason


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda f: preimage(f, torch.zeros(1, 5, dtype=D)), "shape"),
        (lambda f: preimage(f, torch.full((1, 3), 1.5, dtype=D)), "range"),
        (lambda f: preimage(f, torch.full((2, 3), 0.5, dtype=D)), "one output"),
        (lambda f: preimage(f, ClassTarget([0, 1])), "one class"),
        (lambda f: preimage(f, ClassTarget(0, confidence=0.9)), "confidence"),
        (lambda f: preimage(f, ClassTarget(7)), "outputs"),
        (lambda f: preimage(f, torch.full((1, 3), 0.5, dtype=D), bounds=(1, 0)), "lo > hi"),
        (lambda f: preimage(f, torch.full((1, 3), 0.5, dtype=D), bounds=3), "pair"),
        (lambda f: preimage(f, torch.full((1, 3), 0.5, dtype=D), around=torch.zeros(3)), "shape"),
        (lambda f: preimage("model", torch.zeros(1, 3)), "Module"),
    ],
)
def test_bad_inputs_raise(make, match):
    with pytest.raises(NNInvError, match=match):
        make(one_layer(n=10, m=3))


def test_bad_sampling_arguments_raise():
    f = one_layer(n=10, m=3)
    y = f(rand_x(10)).detach()
    pre = preimage(f, y, bounds=(0, 1))
    with pytest.raises(NNInvError, match="unknown method"):
        pre.sample(2, method="gibbs")
    with pytest.raises(NNInvError, match="positive integer"):
        pre.sample(0)
    with pytest.raises(NNInvError, match="needs prior"):
        pre.sample(2, method="prior")
    with pytest.raises(NNInvError, match="unbounded"):
        preimage(f, y).sample(2)
    with pytest.raises(NNInvError, match="around"):
        preimage(relu_net([10, 8, 3]), torch.zeros(1, 3, dtype=D))
    with pytest.raises(NNInvError, match="curved boundary"):
        preimage(relu_net([10, 8, 3], act=nn.Tanh), ClassTarget(0))


def test_exported():
    assert nninv.preimage is preimage and nninv.Preimage is Preimage

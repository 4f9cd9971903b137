"""``closest`` answers are in the class when the caller's model runs them (issue 18).

The MILP's optimum is an infimum, on the decision boundary; the returned ``x`` wins by
a small margin and is checked by the model in its own dtype. These tests run float32
and float64 ReLU nets on the answers, compare the distance with a brute-force optimum
(every activation pattern of a tiny net, one LP each) and show that the margin and the
caller-dtype check are what keeps boundary points out.
"""

from __future__ import annotations

import itertools
import warnings
from collections import Counter
from dataclasses import replace

import numpy as np
import pytest
import torch
from scipy.optimize import linprog
from torch import nn

import nninv
from nninv import ClassTarget
from nninv.geometry._query import Checker
from nninv.geometry._stages import STAGES, Stages, margin_scale
from nninv.geometry.closest import SLACK, answer, request


def relu_net(sizes: list[int], seed: int, dtype: torch.dtype) -> nn.Sequential:
    """A seeded ReLU MLP (weights drawn from a local generator)."""
    g = torch.Generator().manual_seed(seed)
    layers: list[nn.Module] = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        lin = nn.Linear(a, b)
        with torch.no_grad():
            lin.weight.copy_(torch.randn(b, a, generator=g) / a**0.5)
            lin.bias.copy_(0.1 * torch.randn(b, generator=g))
        layers += [lin, nn.ReLU()]
    return nn.Sequential(*layers[:-1]).to(dtype)


def query(f: nn.Module, n_in: int, seed: int) -> tuple[torch.Tensor, int]:
    """A seeded input in [0, 1] and its runner-up class."""
    g = torch.Generator().manual_seed(100 + seed)
    dtype = next(f.parameters()).dtype
    x0 = torch.rand(1, n_in, generator=g, dtype=torch.float64)
    with torch.no_grad():
        c = int(f(x0.to(dtype)).argsort(descending=True)[0, 1])
    return x0, c


def in_class(f: nn.Module, x: torch.Tensor, c: int) -> bool:
    """The caller's check: run the model, in its dtype, on x."""
    dtype = next(f.parameters()).dtype
    with torch.no_grad():
        return int(f(x.to(dtype)).argmax()) == c


NETS = [([20, 16, 3], s, torch.float32) for s in range(6)] + [
    ([20, 16, 3], s, torch.float64) for s in range(3)
]


def test_answers_are_in_class_when_the_model_runs_them():
    statuses: Counter[str] = Counter()
    for norm in ("linf", "l1"):
        for sizes, seed, dtype in NETS:
            f = relu_net(sizes, seed, dtype)
            x0, c = query(f, sizes[0], seed)
            r = nninv.closest(f, x0.to(dtype), ClassTarget(c), norm=norm, max_distance=0.5)
            assert r.status in ("optimal", "infeasible")
            statuses[r.status] += 1
            if r.status == "infeasible":
                assert r.x is None and not r.found
                continue
            assert r.found and in_class(f, r.x, c)
            assert r.info["dtype"] == str(dtype).replace("torch.", "")
            assert r.bound <= r.distance <= r.bound * (1 + SLACK[0]) + SLACK[1]
    # both branches ran: l1 balls of radius 0.5 miss the class on some of these nets
    assert statuses["optimal"] >= 9 and statuses["infeasible"] >= 1, statuses


@pytest.mark.slow
def test_mnist_sized_float32_net_answer_in_class():
    f = relu_net([784, 128, 10], 1, torch.float32)
    x0, c = query(f, 784, 1)
    r = nninv.closest(f, x0.float(), ClassTarget(c), norm="linf", max_distance=0.1)
    assert r.status == "optimal" and in_class(f, r.x, c)
    assert r.distance <= r.bound * (1 + SLACK[0]) + SLACK[1]


def brute_force(f: nn.Sequential, x0: np.ndarray, c: int, norm: str) -> float:
    """The infimum of the distance to class c over [0, 1]^n: one LP per activation pattern
    of a one-hidden-layer ReLU net (class constraints without margin)."""
    W1, b1 = (t.detach().double().numpy() for t in (f[0].weight, f[0].bias))
    W2, b2 = (t.detach().double().numpy() for t in (f[2].weight, f[2].bias))
    n, h = W1.shape[1], W1.shape[0]
    best = np.inf
    for on in itertools.product([0.0, 1.0], repeat=h):
        D = np.diag(on)
        A, a = W2 @ D @ W1, W2 @ D @ b1 + b2  # the logits inside the region
        rows, rhs = [], []
        for j in range(h):  # z_j >= 0 when on, <= 0 when off
            s = -1.0 if on[j] else 1.0
            rows.append(s * W1[j]), rhs.append(-s * b1[j])
        for k in range(A.shape[0]):
            if k != c:
                rows.append(A[k] - A[c]), rhs.append(a[c] - a[k])
        if norm == "linf":  # variables x, t: min t, |x - x0| <= t
            G = np.hstack([np.array(rows), np.zeros((len(rows), 1))])
            eye = np.eye(n)
            G = np.vstack(
                [G, np.hstack([eye, -np.ones((n, 1))]), np.hstack([-eye, -np.ones((n, 1))])]
            )
            g = np.concatenate([rhs, x0, -x0])
            cost = np.r_[np.zeros(n), 1.0]
            bnds = [(0, 1)] * n + [(0, None)]
        else:  # variables x, u: min sum u, |x - x0| <= u
            G = np.hstack([np.array(rows), np.zeros((len(rows), n))])
            eye = np.eye(n)
            G = np.vstack([G, np.hstack([eye, -eye]), np.hstack([-eye, -eye])])
            g = np.concatenate([rhs, x0, -x0])
            cost = np.r_[np.zeros(n), np.ones(n)]
            bnds = [(0, 1)] * n + [(0, None)] * n
        res = linprog(cost, A_ub=G, b_ub=g, bounds=bnds, method="highs")
        if res.status == 0:
            best = min(best, float(res.fun))
    return best


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("norm", ["linf", "l1"])
@pytest.mark.parametrize("seed", [1, 2])
def test_distance_within_the_slack_of_the_brute_force_optimum(dtype, norm, seed):
    f = relu_net([3, 6, 3], seed, dtype)
    x0, c = query(f, 3, seed)
    opt = brute_force(f, x0[0].numpy(), c, norm)
    assert np.isfinite(opt)  # these nets reach the runner-up class in [0, 1]^3
    r = nninv.closest(f, x0.to(dtype), ClassTarget(c), norm=norm)
    assert r.status == "optimal" and in_class(f, r.x, c)
    # the bound is the infimum (HiGHS's tolerances), the distance at most the slack above it
    assert abs(r.bound - opt) <= 1e-6 * max(1.0, opt)
    assert opt - 1e-6 <= r.distance <= opt * (1 + SLACK[0]) + SLACK[1]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("norm", ["linf", "l1"])
@pytest.mark.parametrize("seed", [0, 3])
def test_infeasible_where_brute_force_finds_no_input(dtype, norm, seed):
    f = relu_net([3, 6, 3], seed, dtype)
    x0, c = query(f, 3, seed)
    assert not np.isfinite(brute_force(f, x0[0].numpy(), c, norm))  # no input of c in [0, 1]^3
    r = nninv.closest(f, x0.to(dtype), ClassTarget(c), norm=norm)
    assert r.status == "infeasible" and not r.found and r.distance == np.inf


class Float64Only(Checker):
    """The mutation: the check in the caller's dtype dropped (as before issue 18)."""

    def native_ok(self, x):
        return True


def float64_ladder(q):
    """The margin ladder from float64's ``1e-9 s``, whatever the model's dtype."""
    return [10.0**k * margin_scale(q.pl, q.x0) for k in range(-9, -2)]


def test_margin_too_small_for_float32_is_caught():
    """The mutation: the margin only as large as float64 needs (the check in the
    caller's dtype dropped, as before issue 18). On these float32 nets some answer is
    then a point float32 puts in another class. With the check kept, no answer is out of
    class, with margin=0 (boundary points refused, another verified input returned) or
    the default margin."""
    nets = [relu_net([20, 16, 3], s, torch.float32) for s in range(6)]
    queries = [query(f, 20, s) for s, f in enumerate(nets)]

    def run(margin: float | None, stages: Stages = STAGES, unchecked: bool = False):
        bad = rejected = 0
        for f, (x0, c) in zip(nets, queries):
            req = request(
                f, x0.float(), ClassTarget(c), norm="linf", max_distance=0.5, margin=margin
            )
            if unchecked:
                q = req.query
                check = Float64Only(q.model, q.input_shape, q.check.goals, native=f)
                req = replace(req, query=replace(q, check=check))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                r = answer(req, stages)
            bad += r.found and not in_class(f, r.x, c)
            rejected += r.info.get("rejected", 0)
        return bad, rejected

    for margin in (0.0, None):
        bad, _ = run(margin)
        assert bad == 0
    # the margin ladder from float64's 1e-9 s: the float32 check refuses what float64
    # accepted, the margin grows, and no answer is out of class
    ladder = Stages(margins=float64_ladder)
    bad, rejected = run(None, ladder)
    assert bad == 0 and rejected > 0
    # the mutation: that ladder and no check in float32
    bad, _ = run(None, ladder, unchecked=True)
    assert bad > 0


def test_margin_option_is_checked():
    f = relu_net([20, 16, 3], 0, torch.float32)
    x0, c = query(f, 20, 0)
    for bad in (-1e-3, float("nan"), float("inf")):
        with pytest.raises(nninv.NNInvError, match="margin"):
            nninv.closest(f, x0.float(), ClassTarget(c), margin=bad)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_project_is_confirmed_by_the_model_in_its_dtype(dtype):
    f = relu_net([20, 16, 3], 0, dtype)
    x0, _ = query(f, 20, 0)
    with torch.no_grad():
        y = f(x0.to(dtype))
    pre = nninv.preimage(f, y, bounds=(0.0, 1.0), around=x0.to(dtype))
    g = torch.Generator().manual_seed(1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        x = pre.project(torch.rand(3, 20, generator=g, dtype=torch.float64))
    assert pre.info["project_unconfirmed"] == []
    with torch.no_grad():
        out = f(x.to(dtype)).double()
    tol = 1e-4 if dtype == torch.float32 else 1e-6
    assert (out - y.double()).abs().max() <= tol


def test_invert_class_target_converged_only_in_class():
    f = relu_net([20, 16, 3], 1, torch.float32)
    x0, c = query(f, 20, 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        inv = nninv.invert(f, ClassTarget([c, c]), method="optimize")
    assert bool(inv.converged.any())  # the check below is not vacuous
    for x, ok in zip(inv.x, inv.converged.tolist()):
        if ok:
            assert in_class(f, x[None], c)

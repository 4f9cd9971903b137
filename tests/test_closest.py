"""Tests of nninv.closest: exactness against brute force, status and bound semantics, errors."""

from __future__ import annotations

import itertools
import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from scipy.optimize import linprog
from torch import nn

import nninv
from nninv import ClassTarget, Closest, NNInvError, OutputSet, closest
from nninv.geometry._stages import STAGES, Stages
from nninv.geometry.closest import answer, request

D = torch.float64
#: Tolerances: agreement with brute force, and the margin the class wins by.
TOL = {"distance": 1e-6, "bound": 1e-9}


def mlp(widths, seed=0, slope=0.0, gain=1.0):
    torch.manual_seed(seed)
    layers = []
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        layers.append(nn.Linear(a, b))
        with torch.no_grad():
            layers[-1].weight.mul_(gain)
        if i < len(widths) - 2:
            layers.append(nn.ReLU() if slope == 0 else nn.LeakyReLU(slope))
    return nn.Sequential(*layers).to(D)


def closest_with(stages, f, x0, target, **kw):
    """:func:`closest` with some of its solvers replaced (injected, not patched)."""
    return answer(request(f, x0, target, **kw), stages)


def no_attack(q, deadline, budget):
    """A gradient search that finds nothing."""
    return None, {}


def runner_up(f, x):
    with torch.no_grad():
        return int(f(x.reshape(1, -1)).argsort(descending=True)[0, 1])


def weights(f):
    """The float64 weights and biases of an ``mlp``'s linear layers, as arrays."""
    lin = [m for m in f if isinstance(m, nn.Linear)]
    return [m.weight.detach().numpy() for m in lin], [m.bias.detach().numpy() for m in lin]


def plnet(f):
    """The ReLU ``mlp`` ``f`` as the MILP's :class:`nninv.geometry._milp.PLNet`."""
    from nninv.geometry._milp import PLNet

    Ws, bs = weights(f)
    return PLNet(Ws, bs, [0.0] * (len(Ws) - 1))


def brute_force(f, x0, c, norm, slope=0.0):
    """Minimum distance to class ``c`` over all activation patterns, one LP per pattern
    (x in [0, 1]^n)."""
    m = weights(f)[0][-1].shape[0]
    others = [j for j in range(m) if j != c]
    A = np.eye(m)[others] - np.eye(m)[c]
    return brute_force_set(f, x0, [(A, np.zeros(len(others)))], norm, slope)


def brute_force_set(f, x0, parts, norm, slope=0.0):
    """Minimum distance to the outputs ``A z <= b`` of any part ``(A, b)``, over all
    activation patterns, one LP per pattern and part (x in [0, 1]^n)."""
    Ws, bs = weights(f)
    n = Ws[0].shape[1]
    sizes = [W.shape[0] for W in Ws[:-1]]
    best = math.inf
    for pat in itertools.product([False, True], repeat=sum(sizes)):
        pat = np.array(pat)
        M, m0, G0, g0, i = np.eye(n), np.zeros(n), [], [], 0
        for W, b, k in zip(Ws[:-1], bs[:-1], sizes):
            Z, z0 = W @ M, W @ m0 + b
            on = pat[i : i + k]
            i += k
            s = np.where(on, -1.0, 1.0)
            G0.append(s[:, None] * Z)
            g0.append(-s * z0)
            d = np.where(on, 1.0, slope)
            M, m0 = d[:, None] * Z, d * z0
        Z, z0 = Ws[-1] @ M, Ws[-1] @ m0 + bs[-1]
        for A_out, b_out in parts:
            G = np.vstack([*G0, A_out @ Z])
            g = np.concatenate([*g0, b_out - A_out @ z0])
            k = 1 if norm == "linf" else n
            A = np.vstack(
                [
                    np.hstack([G, np.zeros((len(g), k))]),
                    np.hstack([np.eye(n), -np.ones((n, 1)) if k == 1 else -np.eye(n)]),
                    np.hstack([-np.eye(n), -np.ones((n, 1)) if k == 1 else -np.eye(n)]),
                ]
            )
            res = linprog(
                np.r_[np.zeros(n), np.ones(k)],
                A_ub=A,
                b_ub=np.r_[g, x0, -x0],
                bounds=[(0, 1)] * n + [(0, None)] * k,
                method="highs",
            )
            if res.status == 0:
                best = min(best, res.fun)
    return best


@pytest.mark.parametrize(
    "norm, path",
    [("linf", "verify"), ("linf", "distance MILP"), ("l1", "distance MILP")],
)
@pytest.mark.parametrize(
    "widths, slope, gain",
    [([2, 3, 2], 0.0, 1.0), ([3, 4, 3], 0.0, 1.0), ([3, 4, 4, 3], 0.0, 3.0), ([3, 4, 3], 0.1, 1.0)],
)
def test_milp_agrees_with_brute_force(widths, slope, gain, norm, path):
    # linf first asks whether the class is reachable within the incumbent's radius
    # (verify_linf); "distance MILP" takes that step away
    stages = STAGES if path == "verify" else Stages(verify=False)
    n_opt = n_verified = 0
    for seed in range(4):
        f = mlp(widths, seed, slope, gain)
        x0 = torch.rand(widths[0], generator=torch.Generator().manual_seed(seed), dtype=D)
        if seed % 2:
            # on faces of the box, as MNIST pixels at 0 and 1: the encoding leaves out
            # the distance rows the box implies there
            x0[0], x0[-1] = 0.0, 1.0
        with torch.no_grad():
            top = int(f(x0[None]).argmax())
        for c in (j for j in range(widths[-1]) if j != top):
            res = closest_with(stages, f, x0, ClassTarget(c), norm=norm)
            bf = brute_force(f, x0.numpy(), c, norm, slope)
            if math.isinf(bf):
                assert res.status == "infeasible" and res.x is None and res.distance == math.inf
                continue
            n_opt += 1
            assert res.status == "optimal"
            assert abs(res.distance - bf) <= TOL["distance"]
            assert res.bound <= res.distance + TOL["bound"]
            assert res.distance - res.bound <= TOL["distance"]
            with torch.no_grad():
                out = f(res.x)[0]
            assert int(out.argmax()) == c  # checked by running the model
            assert bool(((res.x >= 0) & (res.x <= 1)).all())
            v = (res.x[0] - x0).abs()
            assert res.distance == pytest.approx(float(v.max() if norm == "linf" else v.sum()))
            n_verified += "verify_rounds" in res.info
    assert n_opt >= 2  # the comparison is not vacuous
    assert (n_verified > 0) == (path == "verify")


def test_verify_linf_improves_a_poor_incumbent_to_the_optimum():
    # a far input of the class as incumbent: the reachability question finds a closer
    # one, polishes it in its region, and proves the result
    from nninv.geometry._bounds import interval_bounds
    from nninv.geometry._query import Trace
    from nninv.geometry._stages import verify_linf

    improved = 0
    for seed in range(4):
        f = mlp([3, 4, 3], seed)
        x0 = torch.rand(3, generator=torch.Generator().manual_seed(seed), dtype=D).numpy()
        net = plnet(f)
        top = int(np.argmax(net.forward(x0[None])[0]))
        grid = np.random.default_rng(seed).random((4000, 3))
        labels = net.forward(grid).argmax(1)
        for c in (j for j in range(3) if j != top):
            bf = brute_force(f, x0, c, "linf")
            dist = np.abs(grid - x0).max(1)
            far = np.nonzero((labels == c) & (dist > 1.2 * bf))[0]
            if math.isinf(bf) or far.size == 0:
                continue
            x_inc = grid[far[np.argmin(dist[far])]]
            d_inc = float(np.abs(x_inc - x0).max())
            lo, hi = np.clip(x0 - d_inc, 0, 1), np.clip(x0 + d_inc, 0, 1)
            q = replace(request(f, x0, ClassTarget(c)).query, lo=lo, hi=hi, deadline=math.inf)
            trace = Trace()
            out = verify_linf(q, STAGES, trace, interval_bounds(net, lo, hi), {0, 1}, x_inc)
            assert out.proven
            assert float(np.abs(out.x - x0).max()) == pytest.approx(bf, abs=TOL["distance"])
            assert out.radius <= bf + TOL["bound"] and bf - out.radius <= TOL["distance"]
            assert trace.info["verify_rounds"] >= 2  # one round found a closer input
            improved += 1
    assert improved >= 2


def test_margin_milp_decides_reachability_like_brute_force():
    from nninv.geometry._bounds import interval_bounds
    from nninv.geometry._highs import solve_margin
    from nninv.geometry._milp import encode

    seen = {"found": 0, "none": 0}
    for seed in range(4):
        f = mlp([3, 4, 3], seed)
        x0 = torch.rand(3, generator=torch.Generator().manual_seed(seed), dtype=D)
        net = plnet(f)
        with torch.no_grad():
            top = int(f(x0[None]).argmax())
        for c in (j for j in range(3) if j != top):
            bf = brute_force(f, x0.numpy(), c, "linf")
            if math.isinf(bf):
                continue
            for r in (0.5 * bf, 0.99 * bf, 1.01 * bf, 2.0 * bf):
                lo = np.clip(x0.numpy() - r, 0, 1)
                hi = np.clip(x0.numpy() + r, 0, 1)
                enc = encode(
                    net, interval_bounds(net, lo, hi), lo, hi, label=c, margin_objective=True
                )
                out = solve_margin(enc, 0.0, 10.0)
                assert out.status == ("found" if r > bf else "none")
                seen[out.status] += 1
                if out.status == "found":
                    x = out.x[:3]
                    assert np.all(x >= lo - 1e-9) and np.all(x <= hi + 1e-9)
                    z = net.forward(x[None])[0]
                    assert z[c] >= np.delete(z, c).max() - 1e-6  # in the class
    assert min(seen.values()) >= 2  # both answers were exercised


def test_max_distance_semantics():
    f = mlp([4, 6, 3], seed=1)
    x0 = torch.rand(4, generator=torch.Generator().manual_seed(1), dtype=D)
    c = runner_up(f, x0)
    free = closest(f, x0, ClassTarget(c))
    assert free.status == "optimal"
    d = free.distance
    near = closest(f, x0, ClassTarget(c), max_distance=0.5 * d)
    assert near.status == "infeasible" and near.x is None and near.distance == math.inf
    assert near.bound == 0.5 * d
    far = closest(f, x0, ClassTarget(c), max_distance=2 * d)
    assert far.status == "optimal" and far.distance == pytest.approx(d, abs=TOL["distance"])


def test_input_already_in_the_class():
    f = mlp([4, 6, 3])
    x0 = torch.rand(1, 4, dtype=D)
    c = int(f(x0).argmax())
    res = closest(f, x0, ClassTarget(c))
    assert isinstance(res, Closest)
    assert res.status == "optimal" and res.distance == 0 and res.bound == 0
    assert torch.equal(res.x, x0)


def seed_like(n=30, m=4, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(n, m), nn.Sigmoid()).to(D)


def test_single_layer_sigmoid_is_exact_in_every_norm():
    clarabel = pytest.importorskip("clarabel")
    import scipy.sparse as sp

    f = seed_like()
    x0 = torch.rand(30, generator=torch.Generator().manual_seed(3), dtype=D)
    c = runner_up(f, x0)
    W, b = f[0].weight.detach().numpy(), f[0].bias.detach().numpy()
    others = [j for j in range(4) if j != c]
    G, g = W[others] - W[c], b[c] - b[others]
    for norm in ("linf", "l1"):
        res = closest(f, x0, ClassTarget(c), norm=norm)
        assert res.status == "optimal" and res.info["method"] == "lp"
        k = 1 if norm == "linf" else 30
        I = np.eye(30)
        A = np.vstack(
            [
                np.hstack([G, np.zeros((3, k))]),
                np.hstack([I, -np.ones((30, 1)) if k == 1 else -I]),
                np.hstack([-I, -np.ones((30, 1)) if k == 1 else -I]),
            ]
        )
        x0n = x0.numpy()
        lp = linprog(
            np.r_[np.zeros(30), np.ones(k)],
            A_ub=A,
            b_ub=np.r_[g, x0n, -x0n],
            bounds=[(0, 1)] * 30 + [(0, None)] * k,
        )
        assert res.distance == pytest.approx(lp.fun, abs=TOL["distance"])
    res = closest(f, x0, ClassTarget(c), norm="l2")
    assert res.status == "optimal" and res.info["method"] == "qp"
    M = sp.vstack([sp.csc_matrix(G), sp.eye(30), -sp.eye(30)]).tocsc()
    s = clarabel.DefaultSettings()
    s.verbose = False
    sol = clarabel.DefaultSolver(
        sp.eye(30).tocsc(),
        -x0.numpy(),
        M,
        np.r_[g, np.ones(30), np.zeros(30)],
        [clarabel.NonnegativeConeT(3 + 60)],
        s,
    ).solve()
    assert res.distance == pytest.approx(
        np.linalg.norm(np.array(sol.x) - x0.numpy()), abs=TOL["distance"]
    )


def test_l2_on_relu_nets_is_a_heuristic_with_the_linf_bound():
    for seed in range(10):
        f = mlp([5, 8, 3], seed=seed)
        x0 = torch.rand(5, generator=torch.Generator().manual_seed(seed), dtype=D)
        c = runner_up(f, x0)
        linf = closest(f, x0, ClassTarget(c), norm="linf")
        if linf.status == "optimal" and linf.distance > 0:
            break
    res = closest(f, x0, ClassTarget(c), norm="l2")
    assert res.status == "heuristic"
    assert res.bound == pytest.approx(linf.bound) and res.bound <= res.distance
    assert int(f(res.x).argmax()) == c


def test_smooth_networks_get_a_verified_heuristic():
    torch.manual_seed(0)
    f = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3)).to(D)
    x0 = torch.full((6,), 0.5, dtype=D)
    c = runner_up(f, x0)
    res = closest(f, x0, ClassTarget(c), norm="linf")
    assert res.status == "heuristic" and res.bound == 0.0
    assert res.x is not None and int(f(res.x).argmax()) == c


def test_time_limit_returns_the_incumbent_and_the_dual_bound():
    from nninv.geometry._highs import MarginResult, solve_milp

    def stopped(*args, **kwargs):
        res = solve_milp(*args, **kwargs)
        return replace(res, status="time_limit", dual_bound=0.5 * res.fun, message="Time limit")

    # the linf proof by reachability (verify_linf) runs out of time undecided first
    stages = Stages(
        solve_milp=stopped, solve_margin=lambda *a, **k: MarginResult("unknown", None, 0, "")
    )
    for seed in range(10):
        f = mlp([3, 4, 3], seed=seed)
        x0 = torch.rand(3, generator=torch.Generator().manual_seed(seed), dtype=D)
        c = runner_up(f, x0)
        res = closest_with(stages, f, x0, ClassTarget(c))
        if res.x is not None and res.distance > 0:
            break
    assert res.status == "time_limit"
    assert res.bound == pytest.approx(0.5 * res.distance, rel=1e-6)
    assert int(f(res.x).argmax()) == c


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"norm": "l3"}, "unknown norm"),
        ({"target": 1}, "ClassTarget"),
        ({"target": ClassTarget([0, 1])}, "one label"),
        ({"target": ClassTarget(0, confidence=0.5)}, "one label"),
        ({"target": ClassTarget(5)}, "outputs"),
        ({"x": torch.rand(2, 4, dtype=D)}, "one input"),
        ({"x": torch.rand(5, dtype=D)}, "shape"),
        ({"x": torch.full((4,), 2.0, dtype=D)}, "outside bounds"),
        ({"max_distance": -1.0}, "max_distance"),
        ({"bounds": None}, "bounded domain"),
        ({"time_limit": 0}, "time_limit"),
    ],
)
def test_bad_inputs_raise(kwargs, match):
    f = mlp([4, 6, 3])
    args = {"x": torch.full((4,), 0.5, dtype=D), "target": ClassTarget(0), **kwargs}
    with pytest.raises(NNInvError, match=match):
        closest(f, args.pop("x"), args.pop("target"), **args)


def test_exported():
    assert nninv.closest is closest and nninv.Closest is Closest


# --- the MILP's reductions: lazy rivals, monotone neurons, incumbent radius -----------------


def _milp_optimum(f, x0, c, **kw):
    """Solve the linf MILP over [0, 1]^n directly, with interval bounds only."""
    from nninv.geometry._bounds import interval_bounds
    from nninv.geometry._highs import solve_milp
    from nninv.geometry._inputs import pl_slope
    from nninv.geometry._milp import PLNet, encode
    from nninv.model.chain import analyse

    net = PLNet.from_steps(list(analyse(f, None).steps), f[0].in_features, pl_slope)
    lo, hi = np.zeros(net.n_in), np.ones(net.n_in)
    b = interval_bounds(net, lo, hi)
    enc = encode(net, b, lo, hi, x0=x0, norm="linf", label=c, **kw)
    res = solve_milp(enc, None, 60.0, 1e-9)
    return res, net, enc


@pytest.mark.parametrize("slope", [0.0, 0.1])
def test_monotone_neurons_keep_the_optimum(slope):
    """Binaries of last-layer neurons that only hurt the class can be relaxed: same optimum,
    and the relaxed optimum's input is in the class (checked on the network)."""
    from nninv.geometry._milp import monotone_neurons

    n_freed = 0
    for seed in range(6):
        f = mlp([3, 6, 4], seed, slope, gain=2.0)
        x0 = torch.rand(3, generator=torch.Generator().manual_seed(seed), dtype=D).numpy()
        c = runner_up(f, torch.from_numpy(x0))
        full, net, _ = _milp_optimum(f, x0, c)
        mono, _, enc = _milp_optimum(f, x0, c, monotone=True)
        assert full.status == mono.status
        if full.status != "optimal":
            continue
        free = monotone_neurons(net, c)
        n_freed += int(free.sum())
        assert enc.info["n_binaries"] == int(enc.integrality.sum())
        assert mono.fun == pytest.approx(full.fun, abs=TOL["distance"])
        out = net.forward(mono.x[None, : net.n_in])[0]
        assert out[c] >= np.delete(out, c).max() - 1e-6
    assert n_freed > 0  # not vacuous


def test_lazy_rivals_agree_with_brute_force():
    """Rivals left out of the MILP are added back when its optimum violates them. Without
    the gradient search's point only the top class is a rival at first, so the re-solve
    path runs."""
    stages = Stages(attack=no_attack)
    rounds = []
    for seed in range(8):
        f = mlp([3, 6, 6], seed, gain=2.0)
        x0 = torch.rand(3, generator=torch.Generator().manual_seed(seed), dtype=D)
        with torch.no_grad():
            top = int(f(x0[None]).argmax())
        for c in (j for j in range(6) if j != top):
            res = closest_with(stages, f, x0, ClassTarget(c), norm="linf")
            bf = brute_force(f, x0.numpy(), c, "linf")
            if math.isinf(bf):
                assert res.status == "infeasible"
                continue
            assert res.status == "optimal"
            assert abs(res.distance - bf) <= TOL["distance"]
            assert res.bound <= res.distance + TOL["bound"]
            assert int(f(res.x).argmax()) == c
            rounds.append(res.info["rounds"])
    assert max(rounds) >= 2  # the re-solve path ran


def test_incumbent_radius_gives_the_same_optimum():
    """Shrinking the box to the gradient search's distance loses nothing: the same optimum
    as the MILP over the whole max_distance box."""
    n_optimal = 0
    for seed in range(4):
        f = mlp([4, 8, 3], seed)
        x0 = torch.rand(4, generator=torch.Generator().manual_seed(seed), dtype=D)
        c = runner_up(f, x0)
        with_pgd = closest(f, x0, ClassTarget(c), max_distance=0.8)
        without = closest_with(Stages(attack=no_attack), f, x0, ClassTarget(c), max_distance=0.8)
        assert with_pgd.status == without.status
        if with_pgd.status == "optimal":
            n_optimal += 1
            assert "pgd_distance" in with_pgd.info and "pgd_distance" not in without.info
            assert with_pgd.distance == pytest.approx(without.distance, abs=TOL["distance"])
    assert n_optimal >= 2  # the comparison is not vacuous


@pytest.mark.parametrize("norm", ["linf", "l1"])
def test_bound_never_exceeds_distance(norm):
    seen = {"found": 0, "infeasible": 0}
    for seed in range(6):
        f = mlp([5, 10, 10, 4], seed, gain=1.5)
        x0 = torch.rand(5, generator=torch.Generator().manual_seed(seed), dtype=D)
        for c in range(4):
            res = closest(f, x0, ClassTarget(c), norm=norm, max_distance=0.6)
            assert 0 <= res.bound
            if res.x is None:
                assert res.status == "infeasible" and res.bound == 0.6
                seen["infeasible"] += 1
            else:
                assert res.bound <= res.distance + TOL["bound"]
                assert int(f(res.x).argmax()) == c
                seen["found"] += 1
    assert min(seen.values()) >= 1, seen  # both branches ran


def test_tighten_skips_monotone_neurons():
    from nninv.geometry._bounds import interval_bounds, tighten
    from nninv.geometry._milp import monotone_neurons

    f = mlp([4, 12, 3], seed=2, gain=2.0)
    x0 = np.full(4, 0.5)
    c = runner_up(f, torch.from_numpy(x0))
    _, net, _ = _milp_optimum(f, x0, c)
    lo, hi = np.zeros(4), np.ones(4)
    b = interval_bounds(net, lo, hi)
    skip = monotone_neurons(net, c)
    assert skip.any() and not skip.all()
    tb, _, empty = tighten(net, b, lo, hi, c, math.inf, skip=skip)
    assert not empty
    (l0, u0), (l1, u1) = b[0], tb[0]
    assert np.array_equal(l1[skip], l0[skip]) and np.array_equal(u1[skip], u0[skip])
    assert np.all(l1 >= l0 - 1e-12) and np.all(u1 <= u0 + 1e-12)


# --- output sets: unions of polyhedra A y <= b ------------------------------------------------


def random_set(f, x0, seed, n_parts):
    """A union of ``n_parts`` random polyhedra (1-2 rows each) that ``x0``'s output violates."""
    rng = np.random.default_rng(seed)
    with torch.no_grad():
        y0 = f(x0[None])[0].numpy()
    parts = []
    for _ in range(n_parts):
        A = rng.normal(size=(int(rng.integers(1, 3)), y0.size))
        b = A @ y0 - rng.uniform(0.05, 0.5, size=A.shape[0])
        parts.append((A, b))
    return parts


@pytest.mark.parametrize("norm", ["linf", "l1"])
def test_output_set_agrees_with_brute_force(norm):
    """The nearest input whose output lies in a union of polyhedra: equal to the minimum
    over every activation pattern and part (one LP each), and inside the set when run."""
    seen = {"optimal": 0, "infeasible": 0, "union": 0}
    for seed in range(8):
        f = mlp([3, 5, 3], seed, gain=1.5)
        x0 = torch.rand(3, generator=torch.Generator().manual_seed(seed), dtype=D)
        parts = random_set(f, x0, seed, n_parts=1 + seed % 2)
        target = OutputSet.union(*(OutputSet.linear(A, b) for A, b in parts))
        res = closest(f, x0, target, norm=norm)
        bf = brute_force_set(f, x0.numpy(), parts, norm)
        assert res.label is None
        if math.isinf(bf):
            assert res.status == "infeasible" and res.x is None
            seen["infeasible"] += 1
            continue
        assert res.status == "optimal", res.info.get("note")
        assert abs(res.distance - bf) <= TOL["distance"]
        assert res.bound <= res.distance + TOL["bound"]
        assert res.distance - res.bound <= TOL["distance"]
        with torch.no_grad():
            assert bool(target.contains(f(res.x))[0])  # checked by running the model
        assert bool(((res.x >= 0) & (res.x <= 1)).all())
        seen["optimal"] += 1
        if len(parts) > 1:
            assert res.info["part"] in (0, 1) and len(res.info["parts"]) == 2
            seen["union"] += 1
    assert min(seen.values()) >= 1, seen  # every branch ran


def test_output_set_of_a_class_matches_the_class_target():
    n_optimal = 0
    for seed in range(4):
        f = mlp([4, 6, 3], seed)
        x0 = torch.rand(4, generator=torch.Generator().manual_seed(seed), dtype=D)
        c = runner_up(f, x0)
        a = closest(f, x0, ClassTarget(c))
        b = closest(f, x0, OutputSet.from_class(c, 3))
        assert a.status == b.status
        assert b.bound == pytest.approx(a.bound, abs=TOL["distance"])
        if a.status == "optimal":
            assert b.distance == pytest.approx(a.distance, abs=TOL["distance"])
            n_optimal += 1
    assert n_optimal >= 2  # the comparison is not vacuous


def test_output_set_on_a_softmax_model():
    """Order constraints keep the softmax out of the problem (exact); a bound on a
    probability does not (the gradient search, confirmed by the model)."""
    torch.manual_seed(0)
    f = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3), nn.Softmax(dim=1)).to(D)
    x0 = torch.full((1, 4), 0.5, dtype=D)
    c = runner_up(f, x0)
    exact = closest(f, x0, OutputSet.from_class(c, 3))
    assert exact.status == "optimal" and int(f(exact.x).argmax()) == c
    grid = torch.rand(4000, 4, generator=torch.Generator().manual_seed(0), dtype=D)
    with torch.no_grad():
        p, p_max = float(f(x0)[0, c]), float(f(grid)[:, c].max())
    want = 0.5 * (p + p_max)  # reached somewhere in the box
    target = OutputSet.linear([[0.0] * c + [-1.0] + [0.0] * (2 - c)], [-want])
    res = closest(f, x0, target)  # p_c >= want
    assert res.status == "heuristic" and res.info["method"] == "pgd"
    with torch.no_grad():
        assert float(f(res.x)[0, c]) >= want


def test_output_set_already_met_and_max_distance():
    f = mlp([4, 6, 3], 1)
    x0 = torch.rand(1, 4, generator=torch.Generator().manual_seed(1), dtype=D)
    with torch.no_grad():
        y0 = f(x0)[0]
    inside = OutputSet.linear([[1.0, 0.0, 0.0]], [float(y0[0]) + 1.0])
    res = closest(f, x0, inside)
    assert res.status == "optimal" and res.distance == 0 and torch.equal(res.x, x0)
    grid = torch.rand(4000, 4, generator=torch.Generator().manual_seed(0), dtype=D)
    with torch.no_grad():
        low = float(f(grid)[:, 0].min())
    assert low < float(y0[0])
    far = OutputSet.linear([[1.0, 0.0, 0.0]], [0.5 * (low + float(y0[0]))])  # reached in the box
    free = closest(f, x0, far)
    assert free.status == "optimal" and free.distance > 0
    near = closest(f, x0, far, max_distance=0.5 * free.distance)
    assert near.status == "infeasible" and near.x is None and near.bound == 0.5 * free.distance


@pytest.mark.parametrize(
    "target, match",
    [
        (OutputSet.linear([[1.0, 0.0]], [0.0]), "over 2 outputs, but the model has 3"),
        (OutputSet.from_class(0, 4), "over 4 outputs, but the model has 3"),
    ],
)
def test_output_set_of_the_wrong_width_is_refused(target, match):
    f = mlp([4, 6, 3])
    with pytest.raises(NNInvError, match=match):
        closest(f, torch.full((4,), 0.5, dtype=D), target)

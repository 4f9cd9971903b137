"""Preimage sampling and exact closest inputs on MNIST.

(a) Sampling the seed's preimage: the seed's model ``sigmoid(W x + b)``
(784 -> 10) is trained on full MNIST (or loaded from ``benchmarks/_cache``,
weights it saved itself), and the set ``{x in [0, 1]^784 : f(x) = f(x_test)}``
(774-dimensional) is sampled with ``Preimage.draw`` at its default settings:
uniformly by the billiard walk, and from the Gaussian prior restricted to the
set by exact HMC; the old hit-and-run is run as a baseline
(``--baseline-steps``, 0 to skip). Samples per second (chain states
generated), the smallest effective sample size and largest split R-hat over
four random directions and four random pixels after burn-in, ESS per second,
reflections per trajectory, and the exactness of the members.

(b) ``nninv.closest`` on a 784-128-10 ReLU MLP trained on MNIST: linf,
``max_distance`` 0.1, ``--n`` (10) test images, the runner-up class as target.
Time per query (target <= 10 s), status counts, and the distance against a
targeted PGD attack (Madry et al. 2018) on the same queries, implemented here:
``--restarts`` random starts of ``--steps`` signed-gradient steps, with a
bisection on the radius for the smallest one at which it succeeds. The exact
distance must never be larger than PGD's.

Run ``python benchmarks/bench_preimage.py --help`` for the options.
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import nninv
from nninv import ClassTarget
from nninv.datasets import default_mnist_dir, load_mnist
from nninv.priors import GaussianPrior

CACHE = Path(__file__).resolve().parent / "_cache"
TARGETS = {"time_per_query": 10.0}


# --- models -------------------------------------------------------------------------------


def train(model: nn.Module, X: Tensor, y: Tensor, loss_fn, epochs: int, seed: int) -> nn.Module:
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(X), generator=gen).split(128):
            opt.zero_grad(set_to_none=True)
            loss_fn(model(X[idx]), y[idx]).backward()
            opt.step()
    return model.eval()


def cached(name: str, make, X: Tensor, y: Tensor, loss_fn, epochs: int) -> nn.Module:
    path = CACHE / f"{name}_e{epochs}.pt"
    torch.manual_seed(0)
    model = make()
    if path.exists():
        model.load_state_dict(torch.load(path, weights_only=True))
        return model.eval()
    t = time.perf_counter()
    train(model, X, y, loss_fn, epochs, seed=0)
    CACHE.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    print(f"  trained {name} ({epochs} epochs) in {time.perf_counter() - t:.0f} s -> {path.name}")
    return model.eval()


def accuracy(model: nn.Module, X: Tensor, y: Tensor) -> float:
    with torch.no_grad():
        return float((model(X).argmax(1) == y).double().mean())


# --- the PGD baseline -----------------------------------------------------------------------


def pgd(model, x0: Tensor, c: int, eps: float, steps: int, restarts: int, gen) -> Tensor | None:
    """Targeted linf PGD on the margin ``max_{j != c} z_j - z_c``; a verified input or None."""
    X0 = x0.expand(restarts, -1)
    delta = (torch.rand(restarts, x0.numel(), generator=gen, dtype=x0.dtype) * 2 - 1) * eps
    delta[0] = 0
    delta = (torch.clamp(X0 + delta, 0, 1) - X0).requires_grad_(True)
    alpha = 2.5 * eps / steps
    for _ in range(steps + 1):
        z = model(X0 + delta)
        other = z.clone()
        other[:, c] = -math.inf
        gap = other.amax(1) - z[:, c]
        won = gap < 0
        if bool(won.any()):
            return (X0 + delta)[won.nonzero()[0, 0]].detach()
        (g,) = torch.autograd.grad(gap.sum(), delta)
        with torch.no_grad():
            d = (delta - alpha * g.sign()).clamp(-eps, eps)
            d = torch.clamp(X0 + d, 0, 1) - X0
        delta = d.requires_grad_(True)
    return None


def pgd_min(
    model, x0: Tensor, c: int, eps: float, steps: int, restarts: int, rounds: int, seed: int
):
    """Smallest linf distance at which PGD reaches class ``c`` (bisection below ``eps``)."""
    gen = torch.Generator().manual_seed(seed)
    best = pgd(model, x0, c, eps, steps, restarts, gen)
    if best is None:
        return None, math.inf
    lo, hi = 0.0, float((best - x0).abs().max())
    for _ in range(rounds):
        mid = 0.5 * (lo + hi)
        x = pgd(model, x0, c, mid, steps, restarts, gen)
        if x is None:
            lo = mid
        else:
            best, hi = x, min(mid, float((x - x0).abs().max()))
    return best, float((best - x0).abs().max())


# --- the two parts ------------------------------------------------------------------------


def part_a(args, train_X, train_y, test_X) -> None:
    print("\n(a) sampling the seed's preimage {x in [0,1]^784 : f(x) = f(x_test)}")
    f = cached(
        "seed_sigmoid",
        lambda: nn.Sequential(nn.Linear(784, 10), nn.Sigmoid()),
        train_X,
        train_y,
        lambda out, y: F.binary_cross_entropy(out, F.one_hot(y, 10).float()),
        args.epochs,
    ).double()
    x0 = test_X[:1].double()
    with torch.no_grad():
        y = f(x0)
    t = time.perf_counter()
    pre = nninv.preimage(f, y, bounds=(0, 1))
    t_pre = time.perf_counter() - t
    print(
        f"  preimage: kind {pre.kind!r}, dim {pre.dim}, inscribed radius "
        f"{pre.info['radius']:.3f}, built in {t_pre:.2f} s (rank-revealing SVD + centre LP)"
    )
    C = args.chains
    # (label, method, prior, draw keyword arguments)
    configs = [("uniform", "billiard", None, {"burn": args.burn})]
    if not args.no_prior:
        prior = GaussianPrior.fit(train_X[: args.prior_n].double())
        configs.append(("gaussian prior", "prior", prior, {"burn": args.burn}))
    if args.baseline_steps:
        hr = {"burn": args.baseline_steps // 5, "thin": 1}
        configs.append(("uniform", "hit-and-run", None, hr))
    rows = []
    for name, method, prior, kw in configs:
        keep = args.keep if method != "hit-and-run" else args.baseline_steps - kw["burn"]
        s = pre.draw(C * keep, seed=0, method=method, prior=prior, chains=C, **kw)
        with torch.no_grad():
            res = float((f(s.x) - y).abs().max())
        out = float(torch.clamp(-s.x, min=0).max().maximum(torch.clamp(s.x - 1, min=0).max()))
        rows.append((name, s, res, out))
    print(
        f"  {'target':<15} {'method':<12} {'chains':>6} {'steps':>6} {'seconds':>8} "
        f"{'samples/s':>10} {'ESS':>7} {'ESS/s':>7} {'R-hat':>6} {'bounces':>8} "
        f"{'max|f(x)-y|':>12} {'out of box':>10}"
    )
    for name, s, res, out in rows:
        sps = s.steps * s.chains / s.seconds
        bounces = s.info.get("bounces", math.nan)
        print(
            f"  {name:<15} {s.method:<12} {s.chains:>6} {s.steps:>6} {s.seconds:>8.1f} "
            f"{sps:>10.0f} {s.ess:>7.1f} {s.ess / s.seconds:>7.2f} {s.rhat:>6.3f} "
            f"{bounces:>8.0f} {res:>12.1e} {out:>10.1e}"
        )
    print(
        "  steps: per chain, burn-in included (a billiard or HMC step is one trajectory with\n"
        "  'bounces' reflections, a hit-and-run step one chord); samples/s: chain states per\n"
        "  second (all chains); ESS and R-hat: smallest effective sample size and largest split\n"
        "  R-hat over 4 random directions and 4 random pixels, after burn-in (Geyer); seconds\n"
        "  include burn-in and the velocity rounding."
    )


def part_b(args, train_X, train_y, test_X, test_y) -> bool:
    print(
        f"\n(b) closest on a 784-128-10 ReLU MLP: linf, max_distance {args.eps}, "
        f"{args.n} test images, runner-up class"
    )
    f = cached(
        "relu_mlp_784_128_10",
        lambda: nn.Sequential(nn.Linear(784, 128), nn.ReLU(), nn.Linear(128, 10)),
        train_X,
        train_y,
        F.cross_entropy,
        args.epochs,
    ).float()
    # closest gets the float32 model as a user has it; its answers are run by that model
    f64 = copy.deepcopy(f).double()
    print(f"  test accuracy {accuracy(f64, test_X.double(), test_y):.4f}")
    print(
        f"  {'#':>3} {'label':>5} {'target':>6} {'status':>11} {'exact':>9} {'bound':>9} "
        f"{'PGD':>9} {'exact/PGD':>9} {'s exact':>8} {'s PGD':>7} {'bins':>5} {'f32':>4}"
    )
    statuses: Counter[str] = Counter()
    times, ratios = [], []
    worse = in_class = answered = 0
    for i in range(args.n):
        x0 = test_X[i : i + 1].double()
        with torch.no_grad():
            c = int(f64(x0).argsort(descending=True)[0, 1])
        t = time.perf_counter()
        r = nninv.closest(
            f, x0, ClassTarget(c), norm="linf", max_distance=args.eps, time_limit=args.time_limit
        )
        te = time.perf_counter() - t
        t = time.perf_counter()
        with torch.enable_grad():
            _, d_pgd = pgd_min(
                f64, x0.reshape(-1), c, args.eps, args.steps, args.restarts, 10, seed=i
            )
        tp = time.perf_counter() - t
        statuses[r.status] += 1
        with torch.no_grad():
            f32_ok = r.x is not None and int(f(r.x.float()).argmax()) == c
        # a proven-infeasible query has no input to run; any other must return one
        answered += r.status != "infeasible"
        in_class += f32_ok
        f32 = "-" if r.status == "infeasible" else ("yes" if f32_ok else "NO")
        times.append(te)
        ratio = (
            r.distance / d_pgd if math.isfinite(d_pgd) and math.isfinite(r.distance) else math.nan
        )
        if math.isfinite(ratio):
            ratios.append(ratio)
        # exact never worse: no larger distance, and no "infeasible" where PGD found one
        if (math.isfinite(d_pgd) and r.distance > d_pgd + 1e-9) or (
            r.status == "infeasible" and math.isfinite(d_pgd)
        ):
            worse += 1
        print(
            f"  {i:>3} {int(test_y[i]):>5} {c:>6} {r.status:>11} {r.distance:>9.5f} {r.bound:>9.5f} "
            f"{d_pgd:>9.5f} {ratio:>9.4f} {te:>8.2f} {tp:>7.2f} {r.info.get('n_binaries', 0):>5} {f32:>4}"
        )
    counts = ", ".join(f"{k} {v}" for k, v in sorted(statuses.items()))
    under = sum(t <= TARGETS["time_per_query"] for t in times)
    print(
        f"  time per query: mean {np.mean(times):.2f} s, max {np.max(times):.2f} s, "
        f"{under}/{len(times)} within the target (<= {TARGETS['time_per_query']:g} s)"
    )
    print(f"  status: {counts}")
    infeasible = args.n - answered
    print(
        f"  in class when run (float32): {in_class}/{answered} answers"
        + (
            f" ({infeasible} of {args.n} queries proven infeasible: no input to run)"
            if infeasible
            else ""
        )
    )
    if ratios:
        print(
            f"  exact/PGD distance: mean {np.mean(ratios):.4f}, max {np.max(ratios):.4f} over "
            f"{len(ratios)} queries both solved; exact worse than PGD: {worse}"
        )
    print(
        "  'bins': binaries left after bound tightening; 'infeasible': proven, no input of the\n"
        "  target class within max_distance; PGD inf: PGD found none within max_distance;\n"
        "  'f32': the float32 model, run on x (cast to float32), puts it in the target class\n"
        "  ('-': proven infeasible, nothing returned)."
    )
    return worse == 0 and in_class == answered and max(times) <= TARGETS["time_per_query"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--data-dir", help="MNIST IDX folder (default: nninv.datasets.default_mnist_dir())"
    )
    p.add_argument(
        "--epochs", type=int, default=2, help="training epochs of both models (default: 2)"
    )
    p.add_argument("--n", type=int, default=10, help="test images for closest (default: 10)")
    p.add_argument("--eps", type=float, default=0.1, help="linf max_distance (default: 0.1)")
    p.add_argument("--time-limit", type=float, default=60.0, help="per query (default: 60 s)")
    p.add_argument("--steps", type=int, default=100, help="PGD steps (default: 100)")
    p.add_argument("--restarts", type=int, default=5, help="PGD restarts (default: 5)")
    p.add_argument("--chains", type=int, default=32, help="(a) chains (default: 32)")
    p.add_argument(
        "--burn", type=int, default=None, help="(a) burn-in trajectories (default: the sampler's)"
    )
    p.add_argument(
        "--keep", type=int, default=60, help="(a) trajectories per chain kept (default: 60)"
    )
    p.add_argument(
        "--baseline-steps",
        type=int,
        default=5000,
        help="(a) hit-and-run steps per chain, a fifth of them burn-in; 0 skips (default: 5000)",
    )
    p.add_argument("--prior-n", type=int, default=20000, help="images to fit the Gaussian prior on")
    p.add_argument("--no-prior", action="store_true", help="skip the prior row of (a)")
    p.add_argument("--part", choices=("a", "b", "both"), default="both")
    args = p.parse_args(argv)
    # small tensors: intra-op threads only spin-wait (tens of times slower on a busy machine)
    torch.set_num_threads(1)
    data_dir = args.data_dir or default_mnist_dir()
    if data_dir is None:
        print("full MNIST not found: pass --data-dir or set NNINV_MNIST_DIR", file=sys.stderr)
        return 2
    tr, te = load_mnist(data_dir, "train"), load_mnist(data_dir, "test")
    train_X, train_y = tr.flat(), tr.labels
    test_X, test_y = te.flat(), te.labels
    print(
        f"MNIST: {len(tr)} train, {len(te)} test; torch {torch.__version__}, {torch.get_num_threads()} threads"
    )
    ok = True
    if args.part in ("a", "both"):
        part_a(args, train_X, train_y, test_X)
    if args.part in ("b", "both"):
        ok = part_b(args, train_X, train_y, test_X, test_y)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

"""``method="optimize"`` on MNIST: exact inversion of deep nets, and class targets vs MIFace.

Trains (or loads from ``benchmarks/_cache``, weights it saved itself) three
classifiers ending in logits: a deep leaky-ReLU MLP 784-256-64-10, a ReLU MLP
784-256-128-10 and a small CNN (two conv + BatchNorm + ReLU + max-pool blocks),
plus an independent judge: a CNN of another architecture trained with PGD
adversarial training (L-inf 0.3, Madry et al. 2018), so that noise patterns
which fool a plain classifier do not count as recognised digits.

(a) Exact outputs: the outputs of ``--n`` (256) test images are inverted with
``invert(f, y, method="optimize", prior=..., bounds=(0, 1))`` on float64 copies
of the nets, with a ``GaussianMixturePrior`` (``--components`` 40, fitted on
``--n-prior`` 60,000 training images) and with a ``GaussianPrior``; the table
gives the wall time, the largest residual ``max |f(x) - y|``, the mean PSNR
against the original images and the judge's recognition (its label for the
inversion equals the original's label), next to layer-by-layer ``pinv`` and
``analytic`` where they apply. Targets: residual <= 1e-5, recognition >= 0.95,
256 inversions in <= 10 s (MLPs) and <= 30 s (CNN).

(b) Class targets, ``--per-class`` (10) images per class: nninv
(``ClassTarget(labels, confidence=0.99)``, mixture prior) against ART's MIFace
(Fredrikson et al. 2015) on the same float32 model, time per image and
recognition, with ratios measured in the same run. Target: at least 10x faster
per image, with higher recognition.

Run ``python benchmarks/bench_optimize.py --help`` for the options.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import nninv
from nninv import ClassTarget, NNInvWarning, invert
from nninv.datasets import default_mnist_dir, load_mnist
from nninv.metrics import psnr
from nninv.priors import GaussianMixturePrior, GaussianPrior

CACHE = Path(__file__).resolve().parent / "_cache"
TARGETS = {"residual": 1e-5, "recognition": 0.95, "time_mlp": 10.0, "time_cnn": 30.0}


# --- models -------------------------------------------------------------------------------


def leaky_mlp() -> nn.Module:
    return nn.Sequential(
        nn.Linear(784, 256),
        nn.LeakyReLU(0.1),
        nn.Linear(256, 64),
        nn.LeakyReLU(0.1),
        nn.Linear(64, 10),
    )


def relu_mlp() -> nn.Module:
    return nn.Sequential(
        nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 128), nn.ReLU(), nn.Linear(128, 10)
    )


def small_cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 8, 5),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 5),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(256, 64),
        nn.ReLU(),
        nn.Linear(64, 10),
    )


def judge_cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 16, 5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(1568, 128),
        nn.ReLU(),
        nn.Linear(128, 10),
    )


#: name -> (constructor, input shape, epochs)
NETS: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...], int]] = {
    "leaky MLP 784-256-64-10": (leaky_mlp, (784,), 4),
    "ReLU MLP 784-256-128-10": (relu_mlp, (784,), 4),
    "CNN conv-bn-relu-pool x2": (small_cnn, (1, 28, 28), 3),
}
JUDGE = {"n_train": 60_000, "epochs": 5, "eps": 0.3, "steps": 7, "alpha": 0.1}


def _cache_path(name: str, config: object) -> Path:
    key = hashlib.sha256(repr((name, config)).encode()).hexdigest()[:12]
    slug = "".join(c if c.isalnum() else "-" for c in name.split()[0].lower())
    return CACHE / f"{slug}-{key}.pt"


def _load_or_train(
    name: str, make: Callable[[], nn.Module], config: object, train: Callable[[nn.Module], None]
) -> tuple[nn.Module, bool]:
    model = make()
    path = _cache_path(name, config)
    if path.is_file():
        model.load_state_dict(torch.load(path, weights_only=True))
        return model.eval(), True
    train(model)
    CACHE.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    return model.eval(), False


def _fit(model: nn.Module, X: Tensor, labels: Tensor, epochs: int, seed: int, attack=None) -> None:
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    n_batches = -(-len(X) // 128)
    for epoch in range(epochs):
        perm = torch.randperm(len(X), generator=g)
        for b in range(n_batches):
            idx = perm[b * 128 : (b + 1) * 128]
            xb, yb = X[idx], labels[idx]
            if attack is not None:
                xb = attack(model, xb, yb, (epoch * n_batches + b) / n_batches, g)
            model.train()
            opt.zero_grad()
            F.cross_entropy(model(xb), yb).backward()
            opt.step()
    model.eval()


def pgd(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    eps: float,
    steps: int,
    alpha: float,
    g: torch.Generator | None = None,
) -> Tensor:
    """L-inf PGD with a random start, inside [0, 1] (Madry et al. 2018)."""
    model.eval()
    delta = (torch.rand(x.shape, generator=g, dtype=x.dtype) * 2 - 1) * eps
    xa = (x + delta).clamp(0, 1)
    for _ in range(steps):
        xa.requires_grad_(True)
        (grad,) = torch.autograd.grad(F.cross_entropy(model(xa), y), xa)
        xa = xa.detach() + alpha * grad.sign()
        xa = (x + (xa - x).clamp(-eps, eps)).clamp(0, 1)
    return xa.detach()


def _pgd_schedule(model, x, y, progress, g):
    # eps ramps up over the first epoch: PGD training at 0.3 from scratch can stall
    eps = JUDGE["eps"] * min(1.0, 0.2 + 0.8 * progress)
    return pgd(model, x, y, eps, JUDGE["steps"], JUDGE["alpha"] * eps / JUDGE["eps"], g)


def accuracy(model: nn.Module, X: Tensor, labels: Tensor) -> float:
    with torch.no_grad():
        pred = torch.cat([model(X[i : i + 1000]).argmax(1) for i in range(0, len(X), 1000)])
    return float((pred == labels).double().mean())


def get_models(train, seed: int, log=print) -> tuple[dict[str, nn.Module], nn.Module]:
    Xtr, ytr = train.images, train.labels
    nets = {}
    for name, (make, shape, epochs) in NETS.items():
        t = time.perf_counter()
        Xs = Xtr.reshape(len(Xtr), *shape)
        model, cached = _load_or_train(
            name,
            make,
            (shape, epochs, seed, "adam1e-3"),
            lambda m, Xs=Xs, epochs=epochs: _fit(m, Xs, ytr, epochs, seed),
        )
        nets[name] = model
        log(f"  {name}: {'loaded' if cached else 'trained'} in {time.perf_counter() - t:.1f} s")
    t = time.perf_counter()
    n = JUDGE["n_train"]
    judge, cached = _load_or_train(
        "judge pgd",
        judge_cnn,
        (tuple(sorted(JUDGE.items())), seed + 1),
        lambda m: _fit(m, Xtr[:n], ytr[:n], JUDGE["epochs"], seed + 1, _pgd_schedule),
    )
    log(f"  judge: {'loaded' if cached else 'trained'} in {time.perf_counter() - t:.1f} s")
    return nets, judge


# --- (a) exact outputs --------------------------------------------------------------------


def _timed(fn: Callable[[], object]) -> tuple[object, float]:
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def recognised(judge: nn.Module, x: Tensor, labels: Tensor) -> float:
    """Share of ``x`` (any shape holding 28x28 images) the judge labels as ``labels``."""
    with torch.no_grad():
        pred = judge(x.reshape(-1, 1, 28, 28).to(torch.float32)).argmax(1)
    return float((pred == labels).double().mean())


def exact_rows(name, f32, X, labels, priors, judge, log=print):
    """Table rows for the exact-output inversion of ``f32``'s outputs on ``X``."""
    shape = NETS[name][1]
    f = copy.deepcopy(f32).double().eval()
    Xs = X.reshape(len(X), *shape).double()
    with torch.no_grad():
        y = f(Xs)
    calls = {
        "nninv optimize, mixture prior": dict(
            method="optimize", prior=priors["mixture"], bounds=(0, 1), progress=False
        ),
        "nninv optimize, Gaussian prior": dict(
            method="optimize", prior=priors["gaussian"], bounds=(0, 1), progress=False
        ),
        "nninv analytic, Gaussian (layerwise)": dict(method="analytic", prior=priors["gaussian"]),
        "nninv pinv (layerwise)": dict(method="pinv", input_shape=shape),
    }
    rows, images = [], {"original": Xs}
    for label, kw in calls.items():
        try:
            # warm-up on 4 outputs: one-time casts and caches stay out of the timing
            if kw["method"] == "optimize":
                invert(f, y[:4], **kw)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", NNInvWarning)
                inv, dt = _timed(lambda kw=kw: invert(f, y, **kw))
        except nninv.NNInvError as e:
            rows.append((label, None, str(e).split(";")[0][:60]))
            continue
        x = inv.x.reshape(len(X), 784).clamp(0, 1)
        rows.append(
            (
                label,
                dict(
                    seconds=dt,
                    residual=float(inv.residual.max()),
                    converged=int(inv.converged.sum()),
                    psnr=float(psnr(x, X.reshape(len(X), 784).double()).mean()),
                    recognition=recognised(judge, inv.x, labels),
                ),
                None,
            )
        )
        images[label] = inv.x
    rows.append(
        (
            "(originals)",
            dict(recognition=recognised(judge, X, labels)),
            None,
        )
    )
    return rows, images


def print_exact_table(results: dict[str, list], n: int) -> list[str]:
    head = (
        f"{'net':<26} {'method':<38} {'time s':>7} {'x mix':>6} {'max residual':>12} "
        f"{'conv':>8} {'PSNR dB':>8} {'judge':>6}"
    )
    print(head)
    print("-" * len(head))
    missed = []
    for net, rows in results.items():
        t_mix = next((r["seconds"] for lab, r, _ in rows if r and "mixture" in lab), None)
        for label, r, err in rows:
            if r is None:
                print(f"{net:<26} {label:<38} {'n/a: ' + err}")
                continue
            if "seconds" not in r:
                print(
                    f"{net:<26} {label:<38} {'':>7} {'':>6} {'':>12} {'':>8} {'':>8} "
                    f"{r['recognition']:>6.3f}"
                )
                continue
            ratio = r["seconds"] / t_mix if t_mix else float("nan")
            print(
                f"{net:<26} {label:<38} {r['seconds']:>7.2f} {ratio:>5.2f}x "
                f"{r['residual']:>12.1e} {r['converged']:>4}/{n:<3} {r['psnr']:>8.2f} "
                f"{r['recognition']:>6.3f}"
            )
            if "mixture" in label:
                limit = TARGETS["time_cnn"] if "CNN" in net else TARGETS["time_mlp"]
                if r["residual"] > TARGETS["residual"]:
                    missed.append(f"{net}: residual {r['residual']:.1e}")
                if r["recognition"] < TARGETS["recognition"]:
                    missed.append(f"{net}: recognition {r['recognition']:.3f}")
                if n == 256 and r["seconds"] > limit:
                    missed.append(f"{net}: {r['seconds']:.1f} s for 256 (limit {limit:g} s)")
        print()
    return missed


# --- (b) class targets ----------------------------------------------------------------------


def miface(
    f32: nn.Module, shape: tuple[int, ...], labels: Tensor, max_iter: int
) -> tuple[Tensor, float]:
    """ART's MIFace on ``f32`` followed by a softmax, inside [0, 1].

    ART's defaults except ``max_iter``: its stopping rule keeps going while the
    class probability stays above 1 - threshold, so with the default 10,000
    iterations every image takes all of them (about 10 s each here).
    """
    from art.attacks.inference.model_inversion import MIFace
    from art.estimators.classification import PyTorchClassifier

    model = nn.Sequential(copy.deepcopy(f32).float().eval(), nn.Softmax(dim=1))
    clf = PyTorchClassifier(
        model,
        loss=nn.NLLLoss(),
        input_shape=shape,
        nb_classes=10,
        clip_values=(0.0, 1.0),
    )
    attack = MIFace(clf, max_iter=max_iter, verbose=False)
    t = time.perf_counter()
    x = attack.infer(None, labels.numpy())
    return torch.from_numpy(x), time.perf_counter() - t


def class_rows(name, f32, labels, priors, judge, confidence, miface_iter):
    shape = NETS[name][1]
    f = copy.deepcopy(f32).float().eval()
    target = ClassTarget(labels, confidence=confidence)
    kw = dict(method="optimize", prior=priors["mixture"], bounds=(0, 1), progress=False)
    invert(f, ClassTarget(labels[:2], confidence=confidence), **kw)  # warm-up
    inv, dt = _timed(lambda: invert(f, target, **kw))
    with torch.no_grad():
        p_nninv = float(f(inv.x).softmax(1).gather(1, labels[:, None]).mean())
    out = {
        "nninv": dict(
            seconds=dt,
            recognition=recognised(judge, inv.x, labels),
            prob=p_nninv,
            met=int(inv.converged.sum()),
        )
    }
    images = {"nninv": inv.x}
    try:
        xm, dtm = miface(f, shape, labels, miface_iter)
    except Exception as e:  # report exactly why ART could not run
        out["MIFace"] = dict(error=f"{type(e).__name__}: {e}")
        return out, images
    with torch.no_grad():
        pm = f(xm.reshape(len(xm), *shape)).softmax(1)
    out["MIFace"] = dict(
        seconds=dtm,
        recognition=recognised(judge, xm, labels),
        prob=float(pm.gather(1, labels[:, None]).mean()),
        met=int((pm.argmax(1) == labels).sum()),
    )
    images["MIFace"] = xm
    return out, images


def print_class_table(results: dict[str, dict], n: int, confidence: float) -> list[str]:
    head = (
        f"{'net':<26} {'method':<16} {'s / image':>10} {'MIFace/x':>9} {'in class':>9} "
        f"{'p(class)':>9} {'judge':>6}"
    )
    print(head)
    print("-" * len(head))
    missed = []
    for net, r in results.items():
        ours = r["nninv"]
        for label, v in r.items():
            if "error" in v:
                print(f"{net:<26} {label:<16} could not run: {v['error']}")
                continue
            per = v["seconds"] / n
            ratio = (
                (r["MIFace"]["seconds"] / v["seconds"])
                if "seconds" in r.get("MIFace", {})
                else float("nan")
            )
            print(
                f"{net:<26} {label:<16} {per:>10.4f} {ratio:>8.1f}x {v['met']:>5}/{n:<3} "
                f"{v['prob']:>9.3f} {v['recognition']:>6.3f}"
            )
        mf = r.get("MIFace", {})
        if "seconds" in mf:
            speedup = mf["seconds"] / ours["seconds"]
            if speedup < 10:
                missed.append(f"{net}: class targets only {speedup:.1f}x faster than MIFace")
            if ours["recognition"] <= mf["recognition"]:
                missed.append(f"{net}: class-target recognition not above MIFace's")
        print()
    print(
        f"(nninv: ClassTarget(labels, confidence={confidence:g}), mixture prior, bounds (0, 1);"
        " MIFace: ART defaults but max_iter, on the model plus a softmax, clip (0, 1). 'MIFace/x': MIFace's"
        " time over this row's.)"
    )
    return missed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", help="folder of the MNIST IDX files (default: found)")
    parser.add_argument("--n", type=int, default=256, help="exact outputs inverted (256)")
    parser.add_argument("--per-class", type=int, default=10, help="class targets per class (10)")
    parser.add_argument("--confidence", type=float, default=0.99, help="class targets' (0.99)")
    parser.add_argument(
        "--components",
        type=int,
        default=40,
        help="mixture components (40; more recognise better on the CNN but run slower: "
        "see benchmarks/README.md)",
    )
    parser.add_argument(
        "--n-prior", type=int, default=60_000, help="training images the priors see (60000)"
    )
    parser.add_argument("--figure", help="write a PNG grid of originals / inversions here")
    parser.add_argument("--no-miface", action="store_true", help="skip ART's MIFace")
    parser.add_argument(
        "--miface-iter", type=int, default=300, help="MIFace max_iter (300: ~0.3 s per image)"
    )
    parser.add_argument("--train-only", action="store_true", help="train and cache, then stop")
    parser.add_argument("--threads", type=int, help="torch intra-op threads")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    folder = args.data_dir or default_mnist_dir()
    if folder is None:
        sys.exit("bench_optimize: full MNIST not found; pass --data-dir")
    t_all = time.perf_counter()
    train, test = load_mnist(folder, "train"), load_mnist(folder, "test")
    print(f"data: full MNIST ({folder}); torch threads {torch.get_num_threads()}")
    print("models:")
    nets, judge = get_models(train, args.seed)
    Xte, yte = test.images, test.labels
    for name, (_, shape, _) in NETS.items():
        acc = accuracy(nets[name], Xte.reshape(len(Xte), *shape), yte)
        print(f"  {name}: test accuracy {acc:.4f}")
    print(
        f"  judge: {JUDGE['epochs']} epochs of PGD-{JUDGE['steps']} adversarial training "
        f"(L-inf {JUDGE['eps']}) on {JUDGE['n_train']} images; clean test accuracy "
        f"{accuracy(judge, Xte, yte):.4f}, PGD-20 (0.3) accuracy on 1000 test images "
        f"{accuracy(judge, pgd(judge, Xte[:1000], yte[:1000], 0.3, 20, 0.03), yte[:1000]):.4f}"
    )
    if args.train_only:
        return 0

    Xp = train.images[: args.n_prior].double()
    t = time.perf_counter()
    gauss = GaussianPrior.fit(Xp)
    t_g = time.perf_counter() - t
    t = time.perf_counter()
    mix = GaussianMixturePrior.fit(Xp, args.components, seed=args.seed)
    t_m = time.perf_counter() - t
    priors = {"gaussian": gauss, "mixture": mix}
    print(
        f"priors on {len(Xp)} training images: Gaussian {t_g:.1f} s, "
        f"{args.components}-component mixture {t_m:.1f} s"
    )

    print(f"\n(a) exact outputs of {args.n} test images, float64 copies of the nets")
    X, labels = Xte[: args.n], yte[: args.n]
    exact, figs = {}, {}
    for name, f32 in nets.items():
        exact[name], figs[name] = exact_rows(name, f32, X, labels, priors, judge)
    print()
    missed = print_exact_table(exact, args.n)
    print(
        "(time: one call of nninv.invert on all outputs after a warm-up call; x mix: time over "
        "the mixture row's; judge: share the PGD-trained judge labels as the original's label)"
    )

    labels_c = torch.arange(10).repeat_interleave(args.per_class)
    nc = len(labels_c)
    print(f"\n(b) class targets, {args.per_class} per class, float32 nets")
    classes, cfigs = {}, {}
    if not args.no_miface:
        for name, f32 in nets.items():
            classes[name], cfigs[name] = class_rows(
                name, f32, labels_c, priors, judge, args.confidence, args.miface_iter
            )
        print()
        missed += print_class_table(classes, nc, args.confidence)

    if args.figure:
        from nninv.figures import save_grid

        k = 12
        rows = {"original": X[:k]}
        short = {
            "nninv optimize, mixture prior": "mixture",
            "nninv optimize, Gaussian prior": "Gaussian",
            "nninv analytic, Gaussian (layerwise)": "analytic",
            "nninv pinv (layerwise)": "pinv",
        }
        for name, imgs in figs.items():
            for label, v in imgs.items():
                if label in short:
                    rows[f"{name.split()[0]}: {short[label]}"] = v[:k]
        pick = torch.arange(0, nc, args.per_class)
        for name, imgs in cfigs.items():
            for label, v in imgs.items():
                rows[f"{name.split()[0]}: class, {label}"] = v[pick]
        path = save_grid(rows, args.figure, image_shape=(28, 28))
        print(f"\nfigure: {path}")

    print(f"\ntotal {time.perf_counter() - t_all:.0f} s")
    if missed:
        print("targets missed: " + "; ".join(missed))
        return 1
    print("targets met")
    return 0


if __name__ == "__main__":
    sys.exit(main())

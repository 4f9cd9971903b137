"""``method="optimize"`` on MNIST: exact inversion of deep nets, and class targets vs MIFace.

Trains (or loads from ``benchmarks/_cache``, weights it saved itself) three
classifiers ending in logits: a deep leaky-ReLU MLP 784-256-64-10, a ReLU MLP
784-256-128-10 and a small CNN (two conv + BatchNorm + ReLU + max-pool blocks),
plus an independent judge: a CNN of another architecture trained with PGD
adversarial training (L-inf 0.3, Madry et al. 2018), so that noise patterns
which fool a plain classifier do not count as recognised digits.

(a) Exact outputs: the outputs of ``--n`` (256) test images are inverted with
``invert(f, y, method="optimize", prior=GaussianPrior.fit(train), bounds=(0, 1))``
on float64 copies of the nets; the table gives the wall time, the largest
residual ``max |f(x) - y|``, the mean PSNR against the original images and the
judge's recognition (its label for the inversion equals the original's label),
next to layer-by-layer ``pinv`` and ``analytic`` where they apply.

(b) Class targets, ``--per-class`` (10) images per class: nninv
(``ClassTarget(labels, confidence=0.9)``) against ART's MIFace (Fredrikson et
al. 2015) on the same float32 model, time per image and recognition, with
ratios measured in the same run.

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
from nninv.priors import GaussianPrior

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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", help="folder of the MNIST IDX files (default: found)")
    parser.add_argument("--n", type=int, default=256, help="exact outputs inverted (256)")
    parser.add_argument("--per-class", type=int, default=10, help="class targets per class (10)")
    parser.add_argument("--train-only", action="store_true", help="train and cache, then stop")
    parser.add_argument("--threads", type=int, help="torch intra-op threads")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    folder = args.data_dir or default_mnist_dir()
    if folder is None:
        sys.exit("bench_optimize: full MNIST not found; pass --data-dir")
    train, test = load_mnist(folder, "train"), load_mnist(folder, "test")
    print("models:")
    nets, judge = get_models(train, args.seed)
    Xte, yte = test.images, test.labels
    print(f"  judge (PGD-trained, eps 0.3) clean test accuracy {accuracy(judge, Xte, yte):.4f}")
    print(f"  judge PGD-{JUDGE['steps']} eps 0.3 accuracy on 1000 test images ", end="")
    xa = pgd(judge, Xte[:1000], yte[:1000], 0.3, 20, 0.03)
    print(f"{accuracy(judge, xa, yte[:1000]):.4f}")
    for name, (_, shape, _) in NETS.items():
        acc = accuracy(nets[name], Xte.reshape(len(Xte), *shape), yte)
        print(f"  {name}: test accuracy {acc:.4f}")
    if args.train_only:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())

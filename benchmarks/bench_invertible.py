"""A bijective MNIST classifier and inverses that report their convergence (issue 14).

Trains :class:`~nninv.invertible.BijectiveClassifier` (784 -> 10 logits + 774-D
nuisance z) on the 60,000 MNIST training images (seeded; the weights are cached
in ``benchmarks/_cache`` as safetensors, with the training time and load in a
JSON beside them), then on the 10,000 test images, in float32:

- test accuracy (target >= 97%) and training time (target < 10 minutes on this
  2-core machine, with ``--threads 1``);
- the inverse round trip ``max |f^-1(f(x)) - x|`` (target <= 1e-4), with the
  i-ResNet block's iterations (median, max) for the fixed-point and the Newton
  solver, the samples within tolerance against those reported converged, and
  the silent failures (reported converged yet off by more than the target;
  target 0);
- side by side, the same architecture inverted FrEIA/i-ResNet style: a
  fixed 10 (and 3) fixed-point iterations with no check, and nninv's inverse
  capped at the same count, whose report flags every sample it leaves
  outside the tolerance.

It writes two figures: ``docs/metamers.png`` (the logits of one digit, the z
of another: the same logits, a different image) and ``docs/zsamples.png``
(one test digit's logits per row, with z drawn from that class's Gaussian of
training z's).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path

import torch

from nninv.datasets import load_mnist
from nninv.invertible import BijectiveClassifier, IResBlock

HERE = Path(__file__).resolve().parent
CACHE = HERE / "_cache"
DOCS = HERE.parent / "docs"

TARGETS = {"accuracy": 0.97, "round_trip": 1e-4, "train_s": 600.0}
CONFIG = dict(
    couplings=2,
    hidden=256,
    head_hidden=512,
    iresnet=1,
    iresnet_hidden=64,
    slope=0.5,
    mixing="fixed",
)
FIT = dict(epochs=4, batch_size=128, lr=1e-3, clip=1.0)


def _trained(args: argparse.Namespace, train) -> tuple[BijectiveClassifier, dict]:
    key = json.dumps({"config": CONFIG, "fit": FIT, "seed": args.seed}, sort_keys=True)
    stem = CACHE / f"bijective-{hashlib.sha256(key.encode()).hexdigest()[:12]}"
    path, meta_path = stem.with_suffix(".safetensors"), stem.with_suffix(".json")
    if path.exists() and meta_path.exists() and not args.retrain:
        print(f"weights from {path.relative_to(HERE.parent)} (--retrain to train again)")
        return BijectiveClassifier.load(path), json.loads(meta_path.read_text())
    f = BijectiveClassifier(**CONFIG, seed=args.seed)
    load0 = os.getloadavg()[0]
    t = time.perf_counter()
    f.fit(train.images, train.labels, seed=args.seed, **FIT)
    train_s = time.perf_counter() - t
    f.fit_z(train.images, train.labels)
    meta = {
        "train_s": train_s,
        "load_before": load0,
        "load_after": os.getloadavg()[0],
        "threads": torch.get_num_threads(),
        "history": f.history,
    }
    f.save(path)
    meta_path.write_text(json.dumps(meta, indent=1))
    print(f"trained in {train_s:.0f} s, cached in {path.relative_to(HERE.parent)}")
    return f, meta


def _unchecked_inverse(f: BijectiveClassifier, y: torch.Tensor, iterations: int) -> torch.Tensor:
    """FrEIA/i-ResNet style: each i-ResNet block by ``iterations`` fixed-point steps, no check."""
    x = y
    with torch.no_grad():
        for b in reversed(list(f.flow)):
            if isinstance(b, IResBlock):
                w1, w2 = b.weights()
                h = x.clone()
                for _ in range(iterations):
                    h = x - b._g(h, w1, w2)[0]
                x = h
            else:
                x = b.inverse(x)[0]
    return x


def _row(name: str, err: torch.Tensor, report, tol: float, cap: int) -> dict:
    within = err <= tol
    row = {"inverse": name, "max_err": float(err.max()), "within": int(within.sum())}
    if report is None:
        row.update(its=f"{cap}, {cap}", reported="(no report)", silent=int((~within).sum()))
    else:
        its = report.blocks[-1].iterations
        row.update(
            its=f"{float(its.double().median()):g}, {int(its.max())}",
            reported=int(report.converged.sum()),
            silent=int((report.converged & ~within).sum()),
        )
    return row


def _figures(f: BijectiveClassifier, test, args: argparse.Namespace) -> list[tuple[bool, str]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    checks = []
    X, lab = test.images.reshape(len(test), -1), test.labels
    g = torch.Generator().manual_seed(args.seed)
    # metamers: 8 pairs of test digits of different classes
    a = torch.randperm(len(X), generator=g)[:40]
    pairs = []
    for i in a.tolist():
        for j in a.tolist():
            if lab[i] != lab[j] and len(pairs) < 8 and all(i != p and j != q for p, q in pairs):
                pairs.append((i, j))
                break
    ia, ib = [p for p, _ in pairs], [q for _, q in pairs]
    m, rep = f.metamers(X[ia], X[ib])
    with torch.no_grad():
        dl = float((f.logits(m) - f.logits(X[ia])).abs().max())
    checks.append((bool(rep.converged.all()), "metamers: every inverse converged"))
    print(
        f"metamers: max |logits(metamer) - logits(A)| = {dl:.2e}; all converged: "
        f"{bool(rep.converged.all())}"
    )
    fig, axes = plt.subplots(3, 8, figsize=(8, 3.4))
    rows = [(X[ia], "A (logits)"), (X[ib], "B (z)"), (m.detach(), "metamer")]
    for r, (imgs, title) in enumerate(rows):
        with torch.no_grad():
            pred = f.logits(imgs).argmax(1)
        for c in range(8):
            ax = axes[r, c]
            ax.imshow(imgs[c].reshape(28, 28).clamp(0, 1), cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"pred {int(pred[c])}", fontsize=7)
            if c == 0:
                ax.set_ylabel(title, fontsize=8)
    fig.suptitle("Metamers: logits of A + z of B = same prediction as A, looks like B", fontsize=9)
    fig.tight_layout()
    DOCS.mkdir(exist_ok=True)
    fig.savefig(DOCS / "metamers.png", dpi=110)
    plt.close(fig)
    # z samples: one test digit's logits per class, 8 z's from the class Gaussian
    fig, axes = plt.subplots(10, 9, figsize=(6.3, 7.2))
    worst = 0.0
    n_conv = 0
    for c in range(10):
        k = int((lab == c).nonzero()[0])
        with torch.no_grad():
            logits = f.logits(X[k : k + 1])[0]
        xs, rep = f.preimage_samples(logits, 8, generator=g)
        n_conv += int(rep.converged.sum())
        with torch.no_grad():
            worst = max(worst, float((f.logits(xs) - logits).abs().max()))
        for j, img in enumerate([X[k], *xs.detach()]):
            ax = axes[c, j]
            ax.imshow(img.reshape(28, 28).clamp(0, 1), cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[c, 0].set_ylabel(f"class {c}", fontsize=7)
    axes[0, 0].set_title("digit", fontsize=7)
    for j in range(1, 9):
        axes[0, j].set_title(f"z {j}", fontsize=7)
    fig.suptitle("One output per row (a test digit's logits), z drawn from its class", fontsize=9)
    fig.tight_layout()
    fig.savefig(DOCS / "zsamples.png", dpi=110)
    plt.close(fig)
    print(f"z samples: {n_conv}/80 converged; max |logits(sample) - logits| = {worst:.2e}")
    checks.append((n_conv == 80, "z samples: every inverse converged"))
    print(f"wrote {DOCS / 'metamers.png'} and {DOCS / 'zsamples.png'}")
    return checks


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", help="folder of the MNIST IDX files ($NNINV_MNIST_DIR)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--retrain", action="store_true", help="ignore the cached weights")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    train = load_mnist(args.data_dir, "train")
    test = load_mnist(args.data_dir, "test")
    f, meta = _trained(args, train)
    checks: list[tuple[bool, str]] = []

    acc = f.accuracy(test.images, test.labels)
    print(
        f"training: {meta['train_s']:.0f} s ({FIT['epochs']} epochs, {meta['threads']} thread, "
        f"load average {meta['load_before']:.1f} before, {meta['load_after']:.1f} after)"
    )
    print(f"test accuracy: {acc:.4f} on {len(test)} images; Lipschitz bounds {f.lipschitz()}")
    checks.append((acc >= TARGETS["accuracy"], f"accuracy >= {TARGETS['accuracy']}"))
    checks.append((meta["train_s"] < TARGETS["train_s"], "training under 10 minutes"))

    X = test.images.reshape(len(test), -1)
    with torch.no_grad():
        y = f(X)
    tol = TARGETS["round_trip"]
    rows = []
    iresnet = [b for b in f.flow if isinstance(b, IResBlock)]
    caps = (10, 3)
    runs = [("nninv fixed point (tol, cap 200)", "fixed_point", 200)]
    runs.append(("nninv Newton (tol, cap 200)", "newton", 200))
    for cap in caps:
        runs.append((f"nninv fixed point, cap {cap}", "fixed_point", cap))
        runs.append((f"FrEIA/i-ResNet style: {cap} iterations, no check", None, cap))
    for name, solver, cap in runs:
        t = time.perf_counter()
        if solver is None:
            x2, report = _unchecked_inverse(f, y, cap), None
        else:
            for b in iresnet:
                b.solver, b.max_iter = solver, cap
            with torch.no_grad():
                x2, report = f.inverse(y)
        dt = time.perf_counter() - t
        err = (x2 - X).abs().amax(dim=1)
        rows.append({**_row(name, err, report, tol, cap), "s": dt})
    for b in iresnet:
        b.solver, b.max_iter = "fixed_point", 200

    print(f"\ninverse of all {len(X)} test outputs, float32; within = max |x' - x| <= {tol:g}")
    print("silent = not within tol yet reported converged (for no report: every miss is silent)")
    head = ("inverse", "max_err", "its (median, max)", "within", "reported ok", "silent", "s")
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in rows:
        print(
            f"| {r['inverse']} | {r['max_err']:.2e} | {r['its']} | {r['within']} | "
            f"{r['reported']} | {r['silent']} | {r['s']:.1f} |"
        )
    checks.append((rows[0]["max_err"] <= tol, f"round trip max error <= {tol:g} (fixed point)"))
    checks.append((rows[1]["max_err"] <= tol, f"round trip max error <= {tol:g} (Newton)"))
    nninv_rows = [r for r in rows if r["reported"] != "(no report)"]
    checks.append(
        (all(r["silent"] == 0 for r in nninv_rows), "zero silent failures in nninv's inverses")
    )
    print()
    checks += _figures(f, test, args)
    print()
    for ok, what in checks:
        print(f"[{'PASS' if ok else 'FAIL'}] {what}")
    return 0 if all(ok for ok, _ in checks) else 1


if __name__ == "__main__":
    sys.exit(main())

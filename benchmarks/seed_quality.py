"""Done-when check of issue 2: image quality of the seed's inversions on full MNIST.

Trains the seed's model ``f(x) = sigmoid(x W^T + b)`` (784 -> 10, 5 epochs of
Adam, BCE against one-hot labels) on the 60,000 MNIST training images, fits a
Gaussian and a 20-component Gaussian mixture prior on them, inverts the outputs
of the 10,000 test images (float64) with ``pinv`` and ``analytic`` under each
prior, and checks:

- every method reproduces the outputs: max ``|f(x_hat) - y|`` <= 1e-5;
- ``pinv`` gives about 11 dB PSNR (between 10 and 12);
- the Gaussian prior gives >= 14 dB, the mixture >= 15 dB;
- the mixture fit on 60,000 images takes < 30 s.

Prints a table and the fit times; exits 0 when every check passes, 1 when one
fails, and 0 with a message when full MNIST is not found (``--data-dir``, else
``$NNINV_MNIST_DIR`` or ``../shared/data/mnist``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from nninv.datasets import default_mnist_dir
from nninv.experiments.seed import DemoConfig, format_table, run_demo

MAX_RESIDUAL = 1e-5
PINV_PSNR = (10.0, 12.0)
MIN_PSNR = {"gaussian": 14.0, "mixture": 15.0}
MAX_MIXTURE_FIT_S = 30.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data-dir", help="folder of the MNIST IDX files (default: found automatically)"
    )
    parser.add_argument("--out", help="also write the figures to this folder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads",
        type=int,
        help="limit torch, BLAS and OpenMP (k-means) threads (default: the libraries' choice)",
    )
    args = parser.parse_args(argv)
    if args.threads:
        import torch
        from threadpoolctl import threadpool_limits

        torch.set_num_threads(args.threads)
        with threadpool_limits(args.threads):
            return check(args)
    return check(args)


def check(args: argparse.Namespace) -> int:
    """Run the experiment and the checks; return the exit status."""
    folder = Path(args.data_dir) if args.data_dir else default_mnist_dir()
    if folder is None or not folder.is_dir():
        where = folder if folder is not None else "$NNINV_MNIST_DIR or ../shared/data/mnist"
        print(f"seed_quality: SKIPPED: full MNIST not found ({where}); pass --data-dir DIR")
        return 0

    config = DemoConfig(dataset="mnist", data_dir=folder, seed=args.seed)
    report = run_demo(config, args.out, log=print)
    t = report.timings
    print()
    print(
        f"{report.n_test} MNIST test outputs inverted in float64 (model trained on {report.n_train}):"
    )
    print(format_table(report.rows))
    print(
        f"fit times on {report.n_train} images: Gaussian {t['fit gaussian']:.1f} s, "
        f"{config.components}-component mixture {t['fit mixture']:.1f} s"
    )
    inv = sum(v for k, v in t.items() if k.startswith("invert "))
    print(
        f"time: loading {t['load']:.1f} s, training f and the classifier {t['train']:.1f} s, "
        f"inversions {inv:.1f} s, reverse experiment {t['reverse']:.1f} s, "
        f"total {t['total']:.1f} s"
    )
    print()

    checks: list[tuple[str, bool]] = []
    rows = {r.name: r for r in report.rows}
    for name in ("pinv", "gaussian", "mixture"):
        r = rows[name]
        checks.append(
            (
                f"{name}: max residual {r.residual:.1e} <= {MAX_RESIDUAL:g}",
                r.residual <= MAX_RESIDUAL,
            )
        )
    lo, hi = PINV_PSNR
    p = rows["pinv"].psnr
    checks.append((f"pinv: PSNR {p:.2f} dB in [{lo:g}, {hi:g}] (about 11)", lo <= p <= hi))
    for name, floor in MIN_PSNR.items():
        p = rows[name].psnr
        checks.append((f"{name}: PSNR {p:.2f} dB >= {floor:g}", p >= floor))
    fit = t["fit mixture"]
    checks.append((f"mixture fit {fit:.1f} s < {MAX_MIXTURE_FIT_S:g} s", fit < MAX_MIXTURE_FIT_S))
    for text, ok in checks:
        print(f"  [{'ok' if ok else 'FAIL'}] {text}")
    failed = [text for text, ok in checks if not ok]
    print("all checks passed" if not failed else f"{len(failed)} check(s) failed")
    return 0 if not failed else 1


if __name__ == "__main__":
    sys.exit(main())

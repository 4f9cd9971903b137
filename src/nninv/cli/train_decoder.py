"""``nninv train-decoder``: learn an inverse of a saved model from example inputs.

Loads the model with :func:`nninv.load_model`, runs it on the inputs in
``--data``, trains a :class:`~nninv.learned.Decoder` ``g: y -> x`` on those
pairs (with a progress bar), and writes it as a safetensors file that
``nninv invert --decoder FILE`` reads.
"""

from __future__ import annotations

__all__ = ["add_parser", "run"]

import argparse
import time
from typing import Any

from ..checks import positive_int
from ..errors import NNInvError
from ._common import load_training_data

_DESCRIPTION = """\
Train a decoder g: y -> x on pairs (model(X), X) for the inputs X in --data
(shaped like the model input, or flat), as the seed's "reverse net" did, and
write it to --out (safetensors: weights and a JSON configuration, no pickle).
The decoder keeps the covariance of its errors on held-out inputs; 'nninv
invert MODEL --outputs Y.npy --decoder FILE' projects its guesses onto the
exact preimage in that metric, so that model(x) = y to the tolerance.

Exit status: 0 on success, 2 on a usage or input error (missing or corrupt
file, data of the wrong shape, NaN in the data)."""

_EPILOG = """\
examples:
  nninv train-decoder mnist.onnx --data train.npy --out dec.safetensors
  nninv invert mnist.onnx --outputs y.npy --decoder dec.safetensors --out x.npy"""


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``train-decoder`` with the ``nninv`` parser."""
    parser = subparsers.add_parser(
        "train-decoder",
        help="learn an inverse y -> x of a saved model from example inputs",
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "model",
        metavar="MODEL",
        help="model file: .keras, .h5, .onnx, TorchScript .pt/.pth or a scikit-learn MLP .skops",
    )
    parser.add_argument(
        "--data", required=True, metavar="X.npy", help="example inputs to train on (N >= 10)"
    )
    parser.add_argument(
        "--out", required=True, metavar="DEC.safetensors", help="where to write the decoder"
    )
    parser.add_argument(
        "--arch",
        choices=("auto", "mlp", "conv"),
        default="mlp",
        help="decoder architecture: mlp (default), conv (transposed convolutions, for "
        "(C, H, W) images), or auto (conv for such images, else mlp)",
    )
    parser.add_argument(
        "--hidden",
        default="512,512,512,512",
        metavar="W1,W2,...",
        help="hidden widths of the MLP (default: 512,512,512,512)",
    )
    parser.add_argument(
        "--epochs", type=int, default=30, metavar="E", help="training epochs (default: 30)"
    )
    parser.add_argument(
        "--input-shape",
        metavar="C,H,W",
        help="the model's input shape without the batch dimension, when the file does not tell it",
    )
    parser.add_argument("--seed", type=int, default=0, metavar="S", help="random seed (default: 0)")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Train and write the decoder; return 0."""
    from pathlib import Path

    from ..learned import Decoder

    try:
        hidden = [int(h) for h in args.hidden.split(",")]
    except ValueError:
        raise NNInvError(
            f"--hidden must be integers separated by commas, got {args.hidden!r}"
        ) from None
    if any(h < 1 for h in hidden):
        raise NNInvError(f"--hidden must be positive widths, got {args.hidden!r}")
    positive_int(args.epochs, "--epochs")
    out = Path(args.out)
    if out.is_dir():
        raise NNInvError(f"--out '{out}' is a directory; give the file to write")
    model, _, X = load_training_data(args.model, args.data, args.input_shape)
    t = time.perf_counter()
    dec = Decoder.fit(
        model, X, arch=args.arch, hidden=hidden, epochs=args.epochs, seed=args.seed, progress=True
    )
    seconds = time.perf_counter() - t
    out.parent.mkdir(parents=True, exist_ok=True)
    dec.save(out)
    print(
        f"trained {dec!r} on {X.shape[0]} inputs in {seconds:.1f} s; final training loss "
        f"{dec.history[-1]:.4g}"
    )
    print(f"wrote {out}")
    return 0

"""``nninv train-flow``: learn the posterior p(x | y) of a saved model from example inputs.

Trains a :class:`~nninv.learned.ConditionalFlow` (a decoder, read with
``--decoder`` or trained here, plus a conditional flow over its errors) and
writes it as one safetensors file for ``nninv posterior --flow FILE``.
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
Train a conditional normalising flow for p(x | y) on the inputs X in --data:
a decoder g: y -> x (read from --decoder, or trained here) and a masked
autoregressive flow (zuko) over its errors, conditioned on y. Writes both to
--out (safetensors: weights and JSON configurations, no pickle). 'nninv
posterior MODEL --outputs Y.npy --flow FILE' draws from it and projects every
draw onto the exact preimage.

Exit status: 0 on success, 2 on a usage or input error."""


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``train-flow`` with the ``nninv`` parser."""
    parser = subparsers.add_parser(
        "train-flow",
        help="learn the posterior p(x | y) of a saved model from example inputs",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "model",
        metavar="MODEL",
        help="model file: .keras, .h5, .onnx, TorchScript .pt/.pth or a scikit-learn MLP .skops",
    )
    parser.add_argument("--data", required=True, metavar="X.npy", help="example inputs (N >= 10)")
    parser.add_argument(
        "--out", required=True, metavar="FLOW.safetensors", help="where to write the flow"
    )
    parser.add_argument(
        "--decoder", metavar="DEC.safetensors", help="a decoder from 'nninv train-decoder'"
    )
    parser.add_argument(
        "--epochs", type=int, default=12, metavar="E", help="flow training epochs (default: 12)"
    )
    parser.add_argument(
        "--transforms", type=int, default=3, metavar="T", help="flow transforms (default: 3)"
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
    """Train and write the flow; return 0."""
    from pathlib import Path

    from ..learned import ConditionalFlow, Decoder

    for option, value in (("--epochs", args.epochs), ("--transforms", args.transforms)):
        positive_int(value, option)
    out = Path(args.out)
    if out.is_dir():
        raise NNInvError(f"--out '{out}' is a directory; give the file to write")
    model, chain, X = load_training_data(args.model, args.data, args.input_shape)
    decoder = None
    if args.decoder is not None:
        decoder = Decoder.load(args.decoder)
        decoder.check_model(chain.input_shape, chain.output_shape, model)
    t = time.perf_counter()
    flow = ConditionalFlow.fit(
        model,
        X,
        decoder=decoder,
        transforms=args.transforms,
        epochs=args.epochs,
        seed=args.seed,
        progress=True,
    )
    seconds = time.perf_counter() - t
    out.parent.mkdir(parents=True, exist_ok=True)
    flow.save(out)
    print(f"trained {flow!r} on {X.shape[0]} inputs in {seconds:.1f} s")
    print(f"wrote {out}")
    return 0

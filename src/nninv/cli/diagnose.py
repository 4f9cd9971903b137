"""``nninv diagnose``: print what a saved model keeps of its input and what it forgets.

Loads a Keras, ONNX or TorchScript file with :func:`nninv.load_model` and
prints :func:`nninv.diagnose`'s table (per layer: rank, nullity, condition
number, injectivity, and with ``--data`` the share of the data's energy each
linear layer keeps) followed by the verdict.
"""

from __future__ import annotations

__all__ = ["add_parser", "run"]

import argparse
from typing import Any

from ._common import analyse_model, fit_to_shape, load_array, parse_shape

_DESCRIPTION = """\
Print, for each layer of the model, its shapes, and for linear layers the rank,
nullity (input directions it ignores) and condition number; for activations
whether they are injective. With --data, also the share of the data's energy
in each linear layer's row space: the part of the input the pseudo-inverse
recovers. Ends with the dimension of the preimage of one output and a verdict.

Exit status: 0 on success, 2 on a usage or input error (missing or corrupt
file, data of the wrong shape)."""


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``diagnose`` with the ``nninv`` parser."""
    parser = subparsers.add_parser(
        "diagnose",
        help="show, layer by layer, how much of its input a saved model forgets",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "model",
        metavar="MODEL",
        help="model file: .keras, .h5, .onnx, TorchScript .pt/.pth or a scikit-learn MLP .skops",
    )
    parser.add_argument(
        "--data",
        metavar="X.npy",
        help="example inputs, shaped like the model input or flat (N, n)",
    )
    parser.add_argument(
        "--input-shape",
        metavar="C,H,W",
        help="the model's input shape without the batch dimension, when the file does not tell it",
    )
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Print the diagnosis; return 0."""
    from .. import diagnose, load_model

    shape = parse_shape(args.input_shape) if args.input_shape is not None else None
    model = load_model(args.model, input_shape=shape)
    data = load_array(args.data, "data") if args.data is not None else None
    shape = analyse_model(model, shape, data, "--data").input_shape
    if data is not None:
        data = fit_to_shape(data, shape, "data", args.data)
    print(diagnose(model, data, input_shape=shape))
    return 0

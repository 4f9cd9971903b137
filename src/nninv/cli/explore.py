"""``nninv explore``: serve the interactive preimage explorer on a local port.

With no MODEL it trains the seed's model on the embedded digits (a few
seconds), so it works on a fresh machine with no options. It binds to
127.0.0.1 unless told otherwise, prints its URL, and reads only the files named
on its command line (MODEL, ``--data``, ``--decoder``). The web part needs the
``explorer`` extra; without it the command says how to install it.
"""

from __future__ import annotations

__all__ = ["add_parser", "run"]

import argparse
import importlib.util
import os
import sys
from typing import Any

from ..errors import NNInvError

_DESCRIPTION = """\
Start a local web page for moving through the preimage of a model's output:
pick a test image or type an output, see its inversions under pinv, a Gaussian
prior, a Gaussian mixture and (with a decoder) a learned inverse; move sliders
along the preimage's principal directions while f(x) stays fixed; draw on the
image and watch it projected back onto the preimage; find the closest input of
another class with its certified distance. Without MODEL, the seed's model
sigmoid(x W^T + b) is trained on the embedded 5,000 MNIST digits.

Exit status: 0 when stopped with Ctrl-C, 2 on a usage error (a missing file,
the explorer extra not installed)."""

INSTALL_HINT = (
    "the explorer needs FastAPI, uvicorn and pydantic: pip install 'nninv[explorer]' "
    "(or pip install fastapi uvicorn 'pydantic>=2')"
)


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``explore`` with the ``nninv`` parser."""
    parser = subparsers.add_parser(
        "explore",
        help="an interactive web page for moving through a preimage (local, offline)",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("model", nargs="?", metavar="MODEL", help="a saved model (optional)")
    src = parser.add_mutually_exclusive_group()
    src.add_argument("--data", metavar="X.npy", help="images to pick from and fit priors on")
    src.add_argument(
        "--dataset",
        metavar="NAME",
        help="an embedded data set for MODEL's images and priors: mnist5k (default) or digits8x8",
    )
    parser.add_argument("--decoder", metavar="FILE", help="a decoder saved by train-decoder")
    parser.add_argument(
        "--no-decoder",
        action="store_true",
        help="without MODEL: train no decoder (it is otherwise trained in the background "
        "after the page is up, and its row appears when done)",
    )
    parser.add_argument("--input-shape", metavar="C,H,W", help="when the model does not tell it")
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default: %(default)s)"
    )
    parser.add_argument("--port", type=int, default=8765, help="port (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, metavar="N", help="random seed (default: 0)")
    parser.set_defaults(func=run)
    return parser


def _have_web() -> bool:
    return all(importlib.util.find_spec(m) is not None for m in ("fastapi", "uvicorn", "pydantic"))


def build(args: argparse.Namespace) -> Any:
    """The :class:`~nninv.explorer.Explorer` the arguments ask for."""
    import torch

    from ..explorer import default_explorer, explorer_for

    if not 0 < args.port < 65536:
        raise NNInvError(f"--port must be in 1..65535, got {args.port}")
    if args.model is None:
        if args.data or args.dataset or args.decoder or args.input_shape:
            raise NNInvError("--data, --dataset, --decoder and --input-shape need a MODEL")
        return default_explorer(
            seed=args.seed,
            decoder_epochs=0 if args.no_decoder else 10,
            progress=True,
            background_decoder=True,
        )
    from ..learned import Decoder
    from ._common import load_training_data, parse_shape

    decoder = Decoder.load(args.decoder) if args.decoder else None
    if args.data:
        model, chain, X = load_training_data(args.model, args.data, args.input_shape)
        images = torch.as_tensor(X).double()
        return explorer_for(
            model, images, images, decoder=decoder, seed=args.seed, input_shape=chain.input_shape
        )
    from .. import load_model
    from ..experiments.seed import load_split

    shape = parse_shape(args.input_shape) if args.input_shape else None
    model = load_model(args.model, input_shape=shape)
    train, test = load_split(args.dataset or "mnist5k", None, None, args.seed)
    return explorer_for(
        model,
        train.images,
        test.images[:200],
        test.labels[:200],
        decoder=decoder,
        seed=args.seed,
        input_shape=shape,
    )


def run(args: argparse.Namespace) -> int:
    """Build the explorer and serve it until interrupted; return the exit status."""
    if not _have_web():
        raise NNInvError(INSTALL_HINT)
    from ..explorer import busy, create_app, serve

    explorer = build(args)
    app = create_app(explorer)
    host = f"[{args.host}]" if ":" in args.host else args.host
    print(f"nninv explore: serving on http://{host}:{args.port}/ (Ctrl-C to stop)", flush=True)
    serve(app, args.host, args.port)
    if busy():
        # torch work still runs in a background thread (an inversion, the decoder's
        # training): tearing the interpreter down under it aborts the process
        # ("terminate called without an active exception"), so leave at once.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    return 0

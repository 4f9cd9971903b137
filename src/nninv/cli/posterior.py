"""``nninv posterior``: many inputs with one exact output each, drawn from a learned posterior.

Reads a model and a flow from ``nninv train-flow``, draws ``--n`` inputs for
each output in ``--outputs`` with :func:`nninv.posterior` (each projected onto
the exact preimage), writes them as ``samples.npy`` and, for images, a PNG grid
(rows: targets; columns: samples) titled with the largest residual.
"""

from __future__ import annotations

__all__ = ["add_parser", "run"]

import argparse
import math
from typing import Any

import numpy as np

from ..checks import model_dtype_device, positive_int
from ..errors import NNInvError
from ._common import analyse_model, load_array, parse_pair, parse_shape, plural

_DESCRIPTION = """\
Draw --n inputs for each output y in --outputs from the flow's posterior
p(x | y) and project each onto the exact preimage {x : model(x) = y}. Writes
DIR/samples.npy, shaped (N, n, *input_shape), and DIR/posterior.png when the
inputs are images (rows: targets, at most 16; columns: samples).

Exit status: 0 when every sample converged, 1 when some did not, 2 on a usage
or input error."""


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``posterior`` with the ``nninv`` parser."""
    parser = subparsers.add_parser(
        "posterior",
        help="draw many inputs with one exact output from a learned posterior (figure)",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "model",
        metavar="MODEL",
        help="model file: .keras, .h5, .onnx, TorchScript .pt/.pth or a scikit-learn MLP .skops",
    )
    parser.add_argument("--outputs", required=True, metavar="Y.npy", help="outputs (N, *shape)")
    parser.add_argument(
        "--flow", required=True, metavar="FLOW.safetensors", help="from 'nninv train-flow'"
    )
    parser.add_argument("--n", type=int, default=16, metavar="N", help="samples per target (16)")
    parser.add_argument("--bounds", metavar="LO,HI", help="keep every input value in [LO, HI]")
    parser.add_argument(
        "--input-shape",
        metavar="C,H,W",
        help="the model's input shape without the batch dimension, when the file does not tell it",
    )
    parser.add_argument("--seed", type=int, default=0, metavar="S", help="random seed (default: 0)")
    parser.add_argument(
        "--out",
        default="nninv-posterior",
        metavar="DIR",
        help="output folder (default: %(default)s)",
    )
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Draw, project and write; return 0 if every sample converged, else 1."""
    from pathlib import Path

    import torch

    from .. import load_model, posterior
    from ..figures import is_image_shape, save_grid
    from ..learned import ConditionalFlow

    positive_int(args.n, "--n")
    bounds = parse_pair(args.bounds, "--bounds") if args.bounds is not None else None
    shape = parse_shape(args.input_shape) if args.input_shape is not None else None
    flow = ConditionalFlow.load(args.flow)
    model = load_model(args.model, input_shape=shape or flow.input_shape)
    chain = analyse_model(model, shape or flow.input_shape, None, "--input-shape")
    flow.decoder.check_model(chain.input_shape, chain.output_shape, model)
    y = load_array(args.outputs, "outputs")
    m = math.prod(chain.output_shape)
    if y.ndim < 2 or math.prod(y.shape[1:]) != m:
        raise NNInvError(
            f"outputs file '{args.outputs}' holds shape {y.shape}, but the model's outputs are "
            f"shaped (N, {', '.join(map(str, chain.output_shape))})"
        )
    dtype = model_dtype_device(model)[0]
    yt = torch.from_numpy(np.ascontiguousarray(y)).to(dtype).reshape(len(y), *chain.output_shape)
    post = posterior(model, yt, flow, n=args.n, bounds=bounds, seed=args.seed, progress=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / "samples.npy", post.x.detach().cpu().numpy())
    total, ok = post.converged.numel(), int(post.converged.sum())
    rmax = float(post.residual.max())
    print(
        f"{plural(len(y), 'target')} x {plural(args.n, 'sample')}: {ok} of {total} "
        f"converged, max residual {rmax:.3g} (tol {post.info['tol']:g}); mean pairwise distance "
        f"{float(post.info['diversity'].mean()):.3g}"
    )
    print(f"wrote {out / 'samples.npy'}")
    in_shape = chain.input_shape
    if is_image_shape(in_shape):
        image_shape = (math.isqrt(in_shape[0]),) * 2 if len(in_shape) == 1 else in_shape
        # each row names the class its output points to (the digit whose output it samples)
        top = y.reshape(len(y), -1).argmax(1)
        rows = {
            f"y#{i}: class {int(top[i])}": post.x[i].detach().cpu() for i in range(min(16, len(y)))
        }
        lo, hi = bounds if bounds is not None else (0.0, 1.0)
        path = save_grid(
            rows,
            out / "posterior.png",
            image_shape=image_shape,
            title=(
                f"nninv posterior: {plural(args.n, 'sample')} per target, max residual {rmax:.2g}"
            ),
            vmin=lo,
            vmax=hi,
        )
        print(f"wrote {path}")
    return 0 if ok == total else 1

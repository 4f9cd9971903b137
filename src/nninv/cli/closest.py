"""``nninv closest``: the nearest input of another class, with a proof (adversarial examples).

For each input ``x0``, :func:`nninv.closest` finds the input nearest to it that
the model puts in a target class (by default the runner-up), exactly for
ReLU networks (mixed-integer programming) and for one-layer models, and
proves a lower bound on that distance. The figure shows the original, the
closest input of the target class, and their difference.
"""

from __future__ import annotations

__all__ = ["add_parser", "run"]

import argparse
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..checks import model_dtype_device, positive_int
from ..errors import NNInvError
from ._common import (
    analyse_model,
    fit_to_shape,
    image_view,
    load_array,
    parse_pair,
    parse_shape,
    save_samples,
)

_DESCRIPTION = """\
For each input x0, find the input x nearest to it (in --norm) that the model
puts in the target class, prove a lower bound on that distance, and write a
figure OUT/closest.png (original, closest input, difference) and an array
OUT/closest.npy of the inputs found (NaN where none exists).

Without MODEL, a 784-128-10 ReLU network is trained for a few seconds on the
embedded MNIST digits and the first --count held-out digits are used. With
MODEL (Keras, ONNX, TorchScript or a scikit-learn MLP in a .skops file), give
the inputs with --input X.npy (and --input-shape when the file does not tell
it). Images (28x28, 8x8, ...) are drawn as images, other inputs (tabular
features) as heat strips.

distance is that of the input returned, which the model (run in its own dtype)
puts in the target class; bound is a proven lower bound on the distance of
every such input (the infimum, on the decision boundary); for optimal answers
distance <= bound * (1 + 1e-4) + 1e-6.

Status per input: optimal (exact minimum), infeasible (proven: nothing within
--eps), time_limit (best found, with the solver's bound), heuristic (no proof).

Exit status: 0 on success, 2 on a usage error."""

_EPILOG = """\
examples:
  nninv closest --eps 0.1 --out figs
  nninv closest model.onnx --input x.npy --target class=3 --norm l1 --out figs"""


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``closest`` with the ``nninv`` parser."""
    parser = subparsers.add_parser(
        "closest",
        help="nearest input of another class, with a proven bound (adversarial examples)",
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "model", nargs="?", metavar="MODEL", help="model file (default: train a ReLU MLP)"
    )
    parser.add_argument("--input", metavar="X.npy", help="with MODEL: the inputs x0")
    parser.add_argument(
        "--input-shape",
        metavar="C,H,W",
        help="with MODEL: its input shape without the batch dimension, when the file does "
        "not tell it",
    )
    parser.add_argument(
        "--target",
        default="runner-up",
        metavar="class=K",
        help="target class for every input, or runner-up (default: the second-highest logit)",
    )
    parser.add_argument(
        "--norm", choices=("linf", "l1", "l2"), default="linf", help="distance (default: linf)"
    )
    parser.add_argument("--eps", type=float, metavar="E", help="search only within this distance")
    parser.add_argument(
        "--time-limit",
        type=float,
        default=60.0,
        metavar="S",
        help="seconds per input (default: 60)",
    )
    parser.add_argument(
        "--bounds", default="0,1", metavar="LO,HI", help="input bounds (default: 0,1)"
    )
    parser.add_argument(
        "--count", type=int, default=4, metavar="N", help="inputs to attack (default: 4)"
    )
    parser.add_argument(
        "--dataset",
        default="mnist5k",
        metavar="NAME",
        help="without MODEL: mnist5k (default) or digits8x8",
    )
    parser.add_argument("--seed", type=int, default=0, metavar="S", help="random seed (default: 0)")
    parser.add_argument(
        "--out", default="nninv-closest", metavar="DIR", help="output folder (default: %(default)s)"
    )
    parser.set_defaults(func=run)
    return parser


def _target(text: str) -> int | None:
    if text == "runner-up":
        return None
    if not text.startswith("class="):
        raise NNInvError(f"--target must be class=K or runner-up, got {text!r}")
    try:
        return int(text[len("class=") :])
    except ValueError:
        raise NNInvError(f"--target must be class=K with an integer K, got {text!r}") from None


def run(args: argparse.Namespace) -> int:
    """Find the closest inputs of the target class; return the exit status."""
    from .. import ClassTarget, closest

    positive_int(args.count, "--count")
    lo, hi = parse_pair(args.bounds, "--bounds")
    label = _target(args.target)
    model, X = _model_and_inputs(args, lo, hi)
    found, diffs = [], []
    was, became, dists = [], [], []  # captions: the classes and the distance
    print(
        f"{'#':>3} {'class':>5} {'target':>6} {'status':>11} {'distance':>10} {'bound':>10} "
        f"{'seconds':>8}"
    )
    for i, x0 in enumerate(X):
        xt = torch.from_numpy(x0[None])
        with torch.no_grad():
            logits = model(xt.to(_dtype(model))).reshape(-1)
        order = logits.argsort(descending=True)
        c = int(order[1]) if label is None else label
        res = closest(
            model,
            xt,
            ClassTarget(c),
            norm=args.norm,
            max_distance=args.eps,
            time_limit=args.time_limit,
            bounds=(lo, hi),
        )
        print(
            f"{i:>3} {int(order[0]):>5} {c:>6} {res.status:>11} {res.distance:>10.4g} "
            f"{res.bound:>10.4g} "
            f"{res.info['seconds']:>8.2f}",
            flush=True,
        )
        was.append(f"class {int(order[0])}")
        found_any = res.x is not None
        became.append(f"class {c}" if found_any else f"class {c}: none")
        dists.append(f"{args.norm} {res.distance:.3g}" if found_any else "-")
        if res.x is None:
            found.append(np.full_like(x0, np.nan))
            diffs.append(np.zeros_like(x0))
        else:
            x = res.x.reshape(x0.shape).numpy()
            found.append(x)
            diffs.append(x - x0)
    captions = {"original": was, "closest": became, "difference": dists}
    _save(args, X, np.stack(found), np.stack(diffs), lo, hi, captions)
    return 0


def _model_and_inputs(args: argparse.Namespace, lo: float, hi: float) -> tuple[Any, np.ndarray]:
    """The model and the float64 inputs to attack: MODEL and --input, or a network
    trained here on the embedded digits and their test images."""
    model: Any
    if args.model is None:
        if args.input is not None or args.input_shape is not None:
            raise NNInvError(f"--{'input' if args.input else 'input-shape'} needs MODEL")
        from ..datasets import load_embedded
        from ..experiments.seed import train_classifier

        ds = load_embedded(args.dataset)
        train, test = ds.split(min(1000, len(ds) // 5), args.seed)
        print(
            f"training a {train.n_pixels}-128-10 ReLU network on {len(train)} "
            f"{args.dataset} digits ...",
            flush=True,
        )
        model = train_classifier(train.images, train.labels, hidden=128, seed=args.seed)
        X = test.images[: args.count].reshape(args.count, -1).numpy()
    else:
        from .. import load_model

        if args.input is None:
            raise NNInvError("with MODEL, give the inputs with --input X.npy")
        given = parse_shape(args.input_shape) if args.input_shape is not None else None
        x_in = load_array(args.input, "input", "--input")
        model = load_model(args.model, input_shape=given)
        shape = analyse_model(model, given, x_in, "--input").input_shape
        X = fit_to_shape(x_in, shape, "input", args.input)[: args.count]
        outside = (X < lo) | (X > hi)
        if outside.any():
            i = int(np.argwhere(outside.reshape(len(X), -1))[0, 0])
            raise NNInvError(
                f"--input {args.input}: row {i} lies outside --bounds {lo:g},{hi:g}; give "
                "--bounds that contain the inputs"
            )
    return model, np.asarray(X, dtype=np.float64)


def _save(
    args: argparse.Namespace,
    X: np.ndarray,
    A: np.ndarray,
    diffs: np.ndarray,
    lo: float,
    hi: float,
    captions: dict[str, list[str]],
) -> None:
    """Write closest.npy (NaN rows where nothing was found) and the figure, each
    image captioned with its class and the distance."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    shape = tuple(X.shape[1:])
    np.save(out / "closest.npy", A)
    rows = {
        "original": X,
        "closest": np.nan_to_num(A, nan=0.5 * (lo + hi)),
        "difference": diffs,
    }
    zero = "grey = 0, scaled per image" if image_view(X[:1], shape) else "white = 0"
    title = f"closest input of the target class ({args.norm}); difference: {zero}"
    fig = save_samples(
        rows,
        out / "closest.png",
        shape,
        title=title,
        value_range=(lo, hi),
        diverging=["difference"],
        captions=captions,
    )
    print(f"figure: {fig}")
    print(f"inputs: {out / 'closest.npy'}")


def _dtype(model: Any) -> torch.dtype:
    return model_dtype_device(model)[0]

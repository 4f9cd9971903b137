"""``nninv preimage``: draw many different inputs that a model maps to one output.

The seed's pigeonhole argument, made visible: a 784 -> 10 model sends a
774-dimensional set of images to every output it produces. This command takes
one input ``x``, describes the preimage of ``y = f(x)`` within the bounds with
:func:`nninv.preimage`, and draws members of it: uniform samples (billiard walk),
samples from a prior fitted on data (when given), and the members closest to
other images (exact projections). Every image in the figure reproduces ``y``;
the printed table measures it by running the model.
"""

from __future__ import annotations

__all__ = ["add_parser", "run"]

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import NNInvError
from ._common import analyse_model, fit_to_shape, load_array, parse_pair, parse_shape, save_samples

_DESCRIPTION = """\
Draw members of the preimage {x in bounds : model(x) = model(x0)} of one input
x0 and save them as a figure (OUT/preimage.png) and an array (OUT/members.npy).

Without MODEL, the seed's model sigmoid(W x + b) (784 -> 10) is trained for a
few seconds on the embedded MNIST digits (--dataset), x0 is held-out digit
--index, and a prior is fitted on the training digits. With MODEL (Keras, ONNX,
TorchScript or a scikit-learn MLP in a .skops file, read by nninv.load_model),
give x0 with --input X.npy and optionally --prior-data X.npy (and --input-shape
when the file does not tell it). For a ReLU network the set drawn is the piece
of the preimage inside the activation region of x0.

Rows of the figure: x0; uniform samples of the set (billiard walk); samples of
the prior restricted to the set (exact HMC) and how each differs from their
mean; and the members closest to other images (other digits, or --others
X.npy), each found by an exact projection. Images (28x28, 8x8, ...) are shown as
images, other inputs (tabular features) as heat strips. The title gives each
chain's R-hat (near 1 = mixed).

Exit status: 0 on success, 1 when the preimage is empty (the reason is
printed), 2 on a usage error."""

_EPILOG = """\
examples:
  nninv preimage --out figs
  nninv preimage --dataset digits8x8 --prior mixture --out figs
  nninv preimage model.onnx --input x.npy --prior-data train.npy --out figs"""


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``preimage`` with the ``nninv`` parser."""
    parser = subparsers.add_parser(
        "preimage",
        help="draw many different inputs that all give the same output (figure)",
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "model", nargs="?", metavar="MODEL", help="model file (default: train the seed's model)"
    )
    parser.add_argument("--input", metavar="X.npy", help="with MODEL: the input x0 (first sample)")
    parser.add_argument(
        "--input-shape",
        metavar="C,H,W",
        help="with MODEL: its input shape without the batch dimension, when the file does "
        "not tell it",
    )
    parser.add_argument("--others", metavar="X.npy", help="images to project onto the preimage")
    parser.add_argument(
        "--prior-data", metavar="X.npy", help="with MODEL: data to fit the prior on"
    )
    parser.add_argument(
        "--prior",
        choices=("gaussian", "mixture", "none"),
        default="gaussian",
        help="prior for the prior row (default: gaussian)",
    )
    parser.add_argument(
        "--components", type=int, default=20, metavar="K", help="mixture components (default: 20)"
    )
    parser.add_argument(
        "--dataset",
        default="mnist5k",
        metavar="NAME",
        help="without MODEL: mnist5k (default) or digits8x8",
    )
    parser.add_argument(
        "--index",
        type=int,
        default=0,
        metavar="I",
        help="without MODEL: which held-out digit is x0 (default: 0)",
    )
    parser.add_argument(
        "--n", type=int, default=10, metavar="N", help="images per row (default: 10)"
    )
    parser.add_argument(
        "--bounds", default="0,1", metavar="LO,HI", help="input bounds (default: 0,1)"
    )
    parser.add_argument(
        "--burn",
        type=int,
        metavar="B",
        help="burn-in trajectories of each chain (default: the sampler's, 20)",
    )
    parser.add_argument(
        "--thin",
        type=int,
        default=30,
        metavar="T",
        help="trajectories between kept states; one state per chain is kept, so the "
        "diagnostics see T trajectories of each (default: 30, enough for R-hat near 1.1 "
        "or below on the seed's 774-dimensional set)",
    )
    parser.add_argument("--seed", type=int, default=0, metavar="S", help="random seed (default: 0)")
    parser.add_argument(
        "--out",
        default="nninv-preimage",
        metavar="DIR",
        help="output folder (default: %(default)s)",
    )
    parser.set_defaults(func=run)
    return parser


def _seed_setup(args: argparse.Namespace) -> tuple[Any, np.ndarray, np.ndarray | None, np.ndarray]:
    from ..datasets import load_embedded
    from ..experiments.seed import train_seed_model

    ds = load_embedded(args.dataset)
    train, test = ds.split(min(1000, len(ds) // 5), args.seed)
    if not 0 <= args.index < len(test):
        raise NNInvError(f"--index must lie in [0, {len(test)}), got {args.index}")
    print(
        f"training the seed's model sigmoid(W x + b) on {len(train)} {args.dataset} digits ...",
        flush=True,
    )
    model = train_seed_model(train.images, train.labels, seed=args.seed)
    x0 = test.flat()[args.index : args.index + 1].numpy()
    label = int(test.labels[args.index])
    # other digits: the first held-out image of each other class
    others = [
        int((test.labels == c).nonzero()[0])
        for c in range(10)
        if c != label and (test.labels == c).any()
    ]
    return model, x0, train.flat().numpy(), test.flat()[others].numpy()


def _check_counts(args: argparse.Namespace) -> None:
    """Refuse a sample count, thinning, burn-in or component count below its least value."""
    for option, value, least in (
        ("--n", args.n, 1),
        ("--thin", args.thin, 1),
        ("--burn", args.burn, 0),
        ("--components", args.components, 1),
    ):
        if value is not None and value < least:
            kind = "a positive" if least else "a non-negative"
            raise NNInvError(f"{option} must be {kind} integer, got {value}")


def _setup(args: argparse.Namespace) -> tuple[Any, Any, Any, Any]:
    """The model, x0, prior data and other inputs: the seed's, or those named on the line."""
    if args.model is None:
        for opt in ("input", "prior_data", "input_shape"):
            if getattr(args, opt) is not None:
                raise NNInvError(f"--{opt.replace('_', '-')} needs MODEL")
        model, x0, data, others = _seed_setup(args)
    else:
        from .. import load_model

        if args.input is None:
            raise NNInvError("with MODEL, give the input x0 with --input X.npy")
        given = parse_shape(args.input_shape) if args.input_shape is not None else None
        x_in = load_array(args.input, "input", "--input")
        model = load_model(args.model, input_shape=given)
        shape = analyse_model(model, given, x_in, "--input").input_shape
        x0 = fit_to_shape(x_in, shape, "input", args.input)[:1]
        data = None
        if args.prior_data is not None:
            data = fit_to_shape(
                load_array(args.prior_data, "prior data", "--prior-data"),
                shape,
                "prior data",
                args.prior_data,
            )
        others = None
    if args.others is not None:
        shape = tuple(x0.shape[1:])
        others = fit_to_shape(
            load_array(args.others, "others", "--others"), shape, "others", args.others
        )
    return model, x0, data, others


def _draw_rows(
    args: argparse.Namespace, pre: Any, data: Any, others: Any, x0t: torch.Tensor
) -> tuple[dict[str, torch.Tensor], list[tuple[str, Any]]]:
    """The figure's rows (x0, uniform draws, prior draws, closest members) and their stats."""
    from ..priors import GaussianMixturePrior, GaussianPrior

    rows: dict[str, torch.Tensor] = {"x0": x0t}
    stats: list[tuple[str, Any]] = []
    n = args.n
    uni = pre.draw(n, seed=args.seed, chains=n, burn=args.burn, thin=args.thin)
    rows["uniform"] = uni.x
    stats.append((f"uniform ({uni.method})", uni))
    if args.prior != "none" and data is not None:
        X = torch.from_numpy(np.asarray(data, dtype=np.float64))
        prior: GaussianPrior | GaussianMixturePrior
        if args.prior == "gaussian":
            prior = GaussianPrior.fit(X)
        else:
            prior = GaussianMixturePrior.fit(X[:3000], n_components=args.components, seed=args.seed)
        pr = pre.draw(n, seed=args.seed, prior=prior, chains=n, burn=args.burn, thin=args.thin)
        rows[f"{args.prior} prior"] = pr.x
        stats.append((f"{args.prior} prior", pr))
        # the prior's samples share much of their mean: show how each one differs from it
        rows["prior - mean"] = pr.x - pr.x.mean(0, keepdim=True)
    if others is not None and len(others):
        proj = pre.project(torch.from_numpy(np.asarray(others[:n], dtype=np.float64)))
        rows["other digits"] = torch.from_numpy(np.asarray(others[:n], dtype=np.float64))
        rows["closest members"] = proj
        stats.append(("closest to other digits", None))
    return rows, stats


def _print_table(
    stats: list[tuple[str, Any]], rows: dict[str, torch.Tensor], res: torch.Tensor, t: float
) -> None:
    """Print each row's size, residual, ESS, R-hat and seconds (``t``: when drawing began)."""
    print()
    print(f"{'row':<26} {'n':>4} {'max|f(x)-y|':>12} {'ESS':>7} {'R-hat':>7} {'seconds':>8}")
    k = 0
    for name, s in stats:
        cnt = len(s.x) if s is not None else len(rows["closest members"])
        r = float(res[k : k + cnt].max())
        k += cnt
        if s is None:
            print(f"{name:<26} {cnt:>4} {r:>12.1e} {'-':>7} {'-':>7} {'-':>8}")
        else:
            print(f"{name:<26} {cnt:>4} {r:>12.1e} {s.ess:>7.1f} {s.rhat:>7.2f} {s.seconds:>8.1f}")
    print(
        f"({time.perf_counter() - t:.1f} s) ESS and R-hat: mixing of the chains "
        "(R-hat near 1 = mixed)."
    )


def run(args: argparse.Namespace) -> int:
    """Draw the preimage of one input's output; return the exit status."""
    from .. import preimage

    _check_counts(args)
    lo, hi = parse_pair(args.bounds, "--bounds")
    model, x0, data, others = _setup(args)
    model = model.double().eval()
    x0t = torch.from_numpy(np.asarray(x0, dtype=np.float64))
    with torch.no_grad():
        y = model(x0t)
    t = time.perf_counter()
    if np.any(x0 < lo) or np.any(x0 > hi):
        raise NNInvError(
            f"--input {args.input}: x0 lies outside --bounds {lo:g},{hi:g} (values "
            f"{float(x0.min()):.4g} .. {float(x0.max()):.4g}); give --bounds that contain it"
        )
    # around=x0: a ReLU network's piece of the preimage is the one x0 lies in
    pre = preimage(model, y, bounds=(lo, hi), around=x0t)
    if pre.empty:
        print(f"nninv preimage: the preimage is empty: {pre.reason}")
        return 1
    print(
        f"preimage of y = f(x0) in [{lo:g}, {hi:g}]^{pre.n}: kind {pre.kind!r}, dimension "
        f"{pre.dim} ({time.perf_counter() - t:.1f} s)",
        flush=True,
    )
    n = args.n
    t = time.perf_counter()
    rows, stats = _draw_rows(args, pre, data, others, x0t)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    members = torch.cat(
        [v for k, v in rows.items() if k not in ("x0", "other digits", "prior - mean")]
    )
    with torch.no_grad():
        res = (model(members) - y).abs().reshape(len(members), -1).amax(1)
    # no-break spaces: a wrapped title never parts a name from its number
    nb = "\u00a0"
    mixing = ", ".join(f"{name.split(' (')[0]}{nb}R-hat{nb}{s.rhat:.2f}" for name, s in stats if s)
    title = (
        f"{len(members)} different inputs, one output: max{nb}|f(x){nb}-{nb}f(x0)|"
        f"{nb}={nb}{float(res.max()):.1e} (a {pre.dim}-dimensional set); {mixing}"
    )
    shape = tuple(x0t.shape[1:])
    fig = save_samples(
        rows,
        out / "preimage.png",
        shape,
        title=title,
        value_range=(lo, hi),
        ncols=n,
        diverging=[k for k in rows if k == "prior - mean"],
    )
    np.save(out / "members.npy", members.numpy())
    _print_table(stats, rows, res, t)
    print(f"figure: {fig}")
    print(f"members: {out / 'members.npy'}")
    return 0

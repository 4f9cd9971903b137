"""``nninv invert``: find inputs that a saved model maps to given outputs.

Loads a Keras, ONNX or TorchScript file with :func:`nninv.load_model`, reads
the outputs from a ``.npy`` file (or builds a :class:`~nninv.ClassTarget` from
``--target class=K``), optionally fits a prior on example inputs, calls
:func:`nninv.invert`, and writes the inputs found to a ``.npy`` file, with a
figure beside it fitted to their shape (image grid or heat strips).
"""

from __future__ import annotations

__all__ = ["add_parser", "run"]

import argparse
import math
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..checks import model_dtype_device, positive_int
from ..errors import NNInvError, NNInvWarning
from ._common import (
    analyse_model,
    fit_to_shape,
    image_view,
    load_array,
    parse_pair,
    parse_shape,
    plural,
    save_samples,
)
from ._stream import add_scale_arguments, check_scale_options, refuse_overwrite, run_scaled

if TYPE_CHECKING:
    from torch import nn

    from ..priors import Prior

#: Images shown in the PNG grid beside the output: at most ``_ROWS`` rows of ``_COLS``.
_COLS, _ROWS = 10, 5

_DESCRIPTION = """\
Find inputs x with model(x) = y for every output y in --outputs (an array
shaped (N, *output_shape), or flat (N, m)), or inputs that the model puts in
the classes given by --target. The inputs go to --out as a .npy array shaped
(N, *input_shape) in the model's dtype, with a figure beside it (same name,
.png): a grid of images when the inputs are images (8x8 digits included),
else heat strips of the features (tabular inputs).

Methods: pinv (minimum-norm input, layer by layer), analytic (the prior's
conditional mean, needs --prior-data), optimize (any differentiable model, when
installed), decoder (a learned inverse from 'nninv train-decoder', --decoder
FILE, its guess projected onto the exact preimage), auto (the default:
decoder with --decoder, else analytic with a prior, pinv without, optimize for
class targets or layers without a closed form).

With --prior-data X.npy a prior is fitted on example inputs, shaped like the
model input or flat: a Gaussian (--prior gaussian, the default) or a Gaussian
mixture (--prior mixture --components K). Without data, --prior batchnorm reads
a prior from the model's own BatchNorm running statistics (method optimize,
started from seeded faint noise; --samples S inputs per class of --target):
BatchNormPrior(model, first_multiplier=10), plus 0.2 * TotalVariation(beta=1)
and a coarse-to-fine first search at half the size (--coarse) for images of
at least 16x16 pixels. Ask for a high --confidence (0.9999 in
bench_datafree): a sample that only just crosses into its class is rarely
recognisable.
The residual of every sample, max |model(x) - y|, is measured by running the
model on the inputs written.

Exit status: 0 when every sample converged (residual <= tol), 1 when some did
not (the summary gives the first reason), 2 on a usage or input error (missing
or corrupt file, outputs of the wrong shape, NaN in the outputs, a pickled
.npy)."""

_EPILOG = """\
examples:
  nninv invert mnist.keras --outputs y.npy --out x.npy
  nninv invert mnist.keras --outputs y.npy --prior-data train.npy --out x.npy
  nninv invert mnist.onnx --target class=3,7 --prior-data train.npy --out x.npy
  nninv invert mnist.onnx --outputs y.npy --decoder dec.safetensors --out x.npy
  nninv invert bn_cnn.onnx --target class=0,1,2,3,4,5,6,7,8,9 --samples 8 \\
      --prior batchnorm --bounds 0,1 --confidence 0.9999 --out x.npy
  nninv invert mnist.onnx --outputs big.npy --batch-size 8192 --out x.npy [--resume]
  nninv invert mnist.onnx --outputs 'parts/*.npy' --ray --address auto --out results/"""


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``invert`` with the ``nninv`` parser."""
    parser = subparsers.add_parser(
        "invert",
        help="find inputs that a saved model (Keras, ONNX, TorchScript, skops) maps to given "
        "outputs",
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_io_arguments(parser)
    _add_method_arguments(parser)
    parser.add_argument(
        "--coarse",
        metavar="H[,W]",
        help="method optimize on images: first search over H x W images through a bilinear "
        "upsampling, then at full size (coarse to fine); 0: none (default: half the image "
        "size with --prior batchnorm on images of at least 16x16 pixels, else none)",
    )
    parser.add_argument(
        "--confidence",
        type=float,
        metavar="P",
        help="with --target: the class must get at least this probability, in (0, 1]",
    )
    parser.add_argument(
        "--bounds",
        metavar="LO,HI",
        help="keep every input value in [LO, HI] (e.g. 0,1 for images); needs the "
        "optimize or decoder method (auto then picks optimize, or decoder with --decoder)",
    )
    parser.add_argument(
        "--tol",
        type=float,
        metavar="T",
        help="residual tolerance for convergence (default: 1e-5 for a float64 model, 1e-4 for "
        "a float32 one; the outputs are solved for in the model's dtype)",
    )
    parser.add_argument(
        "--input-shape",
        metavar="C,H,W",
        help="the model's input shape without the batch dimension, when the file does not tell it",
    )
    parser.add_argument("--seed", type=int, default=0, metavar="S", help="random seed (default: 0)")
    add_scale_arguments(parser)
    parser.set_defaults(func=run)
    return parser


def _add_io_arguments(parser: argparse.ArgumentParser) -> None:
    """MODEL, what to invert (--outputs or --target), --out and --overwrite."""
    parser.add_argument(
        "model",
        metavar="MODEL",
        help="model file: .keras, .h5, .onnx, TorchScript .pt/.pth or a scikit-learn MLP .skops",
    )
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument(
        "--outputs", metavar="Y.npy", help="outputs to invert, shaped (N, *output_shape)"
    )
    what.add_argument(
        "--target",
        action="append",
        metavar="class=K",
        help="class target instead of --outputs: one sample per class; repeat it or give "
        "a list (class=3,7,1)",
    )
    parser.add_argument(
        "--out", required=True, metavar="X.npy", help="where to write the inputs found (.npy)"
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing --out (without it, or --resume, an existing result is kept "
        "and the command stops)",
    )


def _add_method_arguments(parser: argparse.ArgumentParser) -> None:
    """The method, the decoder, the prior and its data, samples per class, components."""
    parser.add_argument(
        "--method",
        default="auto",
        metavar="M",
        help="auto (default), pinv, analytic, optimize or decoder (needs --decoder)",
    )
    parser.add_argument(
        "--decoder",
        metavar="DEC.safetensors",
        help="a decoder written by 'nninv train-decoder' for this model: its guesses are "
        "projected onto the exact preimage (method decoder, which auto then picks)",
    )
    parser.add_argument(
        "--prior-data",
        metavar="X.npy",
        help="example inputs, shaped like the model input or flat, to fit a prior on",
    )
    parser.add_argument(
        "--prior",
        choices=("gaussian", "mixture", "batchnorm"),
        help="prior fitted on --prior-data (default: gaussian), or batchnorm: from the "
        "model's BatchNorm statistics, no data needed",
    )
    parser.add_argument(
        "--samples",
        type=int,
        metavar="S",
        help="with --target: inputs per class (default: 1); the PNG grid has a row per class",
    )
    parser.add_argument(
        "--components",
        type=int,
        metavar="K",
        help="mixture components, with --prior mixture (default: 20, as the demo)",
    )


def _parse_targets(items: list[str]) -> list[int]:
    labels: list[int] = []
    for item in items:
        key, sep, values = item.partition("=")
        if key.strip() != "class" or not sep:
            raise NNInvError(f"--target must read class=K or class=K1,K2,...; got {item!r}")
        for v in values.split(","):
            try:
                labels.append(int(v))
            except ValueError:
                raise NNInvError(
                    f"--target: class labels must be integers, got {v!r} in {item!r}"
                ) from None
    return labels


def _check_options(args: argparse.Namespace) -> None:
    """Usage errors that need no file: raise before anything is loaded."""
    if args.prior == "batchnorm" and args.prior_data is not None:
        raise NNInvError("--prior batchnorm needs no --prior-data: it reads the model's statistics")
    if args.samples is not None:
        if args.target is None:
            raise NNInvError("--samples applies to --target class=K")
        positive_int(args.samples, "--samples")
    if args.prior not in (None, "batchnorm") and args.prior_data is None:
        raise NNInvError(f"--prior {args.prior} needs --prior-data X.npy to fit it on")
    if args.components is not None:
        if args.prior != "mixture":
            raise NNInvError("--components applies to --prior mixture")
        positive_int(args.components, "--components")
    if args.confidence is not None and args.target is None:
        raise NNInvError("--confidence applies to --target class=K")
    if args.method == "decoder" and args.decoder is None:
        raise NNInvError("--method decoder needs --decoder DEC.safetensors (nninv train-decoder)")
    if args.decoder is not None and args.method not in ("auto", "decoder"):
        raise NNInvError(f"--decoder applies to --method decoder, not {args.method}")
    if args.decoder is not None and args.target is not None:
        raise NNInvError("--decoder inverts --outputs; for --target use --method optimize")
    if args.tol is not None and not (args.tol > 0 and math.isfinite(args.tol)):
        raise NNInvError(f"--tol must be positive and finite, got {args.tol}")


def _check_method(name: str) -> None:
    from ..methods import METHODS

    valid = ["auto", *sorted(METHODS)]
    if name not in valid:
        raise NNInvError(f"unknown method {name!r}; valid: {', '.join(valid)}")


def _pick_method(
    name: str,
    bounds: tuple[float, float] | None,
    chain: Any,
    prior: Any,
    target: Any,
    x0: Any = None,
    options: dict[str, Any] | None = None,
) -> str:
    """The method ``invert`` will run: ``auto`` resolved here by the library's own rule
    (:func:`nninv.methods.choose_method`), so that the options can follow it."""
    from ..methods import METHODS, choose_method, takes

    if name == "auto":
        name = choose_method(chain, target, prior, bounds=bounds, x0=x0, options=options)
    elif bounds is not None and name in METHODS and not takes(name, "bounds"):
        can = sorted((m for m in METHODS if takes(m, "bounds")), key=lambda m: (m != "optimize", m))
        raise NNInvError(
            f"--bounds needs --method {' or '.join(can)}; {name} solves without bounds"
        )
    if name not in METHODS:
        why = "--bounds" if bounds is not None else "this model or target"
        raise NNInvError(
            f"{why} needs the {name} method, which this installation lacks "
            f"(available: {', '.join(sorted(METHODS))})"
        )
    return name


def _read_outputs(path: str, out_shape: tuple[int, ...]) -> np.ndarray:
    y = load_array(path, "outputs", "--outputs")
    m = math.prod(out_shape)
    want = f"(N, {', '.join(map(str, out_shape))})"
    if y.shape == out_shape or (y.ndim == 1 and y.size == m):
        y = y.reshape(1, *out_shape)
    if y.ndim < 2 or math.prod(y.shape[1:]) != m:
        raise NNInvError(
            f"outputs file '{path}' holds shape {y.shape}, but the model's outputs are "
            f"shaped {want}"
        )
    if y.shape[0] == 0:
        raise NNInvError(f"outputs file '{path}' holds no samples (shape {y.shape})")
    y = y.reshape(y.shape[0], *out_shape)
    flat = y.reshape(y.shape[0], -1)
    bad = ~np.isfinite(flat)
    if bad.any():
        i, j = (int(v) for v in np.argwhere(bad)[0])
        raise NNInvError(
            f"outputs file '{path}': sample {i}, output {j} is {flat[i, j]}; outputs must "
            f"be finite ({int(bad.sum())} value(s) are not)"
        )
    return y


def _fit_prior(args: argparse.Namespace, X: np.ndarray, in_shape: tuple[int, ...]) -> Any:
    from ..priors import GaussianMixturePrior, GaussianPrior

    X = fit_to_shape(X, in_shape, "prior data", args.prior_data)
    try:
        if (args.prior or "gaussian") == "gaussian":
            return GaussianPrior.fit(X)
        k = args.components if args.components is not None else 20
        return GaussianMixturePrior.fit(X, n_components=k, seed=args.seed)
    except NNInvError as e:
        raise NNInvError(f"prior data file '{args.prior_data}': {e}") from None


#: ``x`` (N, *shape) as images, or None (kept under this name for the tests).
_image_view = image_view


def _save_figure(
    x: np.ndarray,
    in_shape: tuple[int, ...],
    path: Path,
    method: str,
    value_range: tuple[float, float] | None,
    per_class: tuple[list[int], int] | None = None,
    classes: list[int] | None = None,
) -> Path:
    """Images as a grid, other inputs (tabular) as heat strips: a row per class or per 10.

    Rows are named by the inputs they hold (``inputs 0-9``); with class targets
    (``classes``, one per input) each image is captioned with its class.
    """
    cols = min(_COLS, len(x))
    captions = None
    if per_class is not None:  # a row per class: (labels, samples per class)
        labels, cols = per_class
        shown = x[: cols * _ROWS * 2]
        rows = {f"class {labels[i]}": shown[i : i + cols] for i in range(0, len(shown), cols)}
    elif image_view(x[:1], in_shape) is not None:
        shown = x[: _COLS * _ROWS]
        rows = {
            _span(i, len(shown[i : i + _COLS])): shown[i : i + _COLS]
            for i in range(0, len(shown), _COLS)
        }
        if classes is not None:
            captions = {
                k: [f"class {c}" for c in classes[i : i + _COLS]]
                for k, i in zip(rows, range(0, len(shown), _COLS))
            }
    else:
        shown = x[: _COLS * _ROWS]
        rows = {_span(0, len(shown)): shown}
    title = f"nninv invert, method {method}: {len(shown)} of {len(x)} inputs"
    return save_samples(
        rows,
        path,
        in_shape,
        title=title,
        value_range=value_range,
        ncols=cols,
        captions=captions,
    )


def _span(start: int, count: int) -> str:
    """A row label naming the inputs it holds: ``input 0``, ``inputs 0-9``."""
    return f"input {start}" if count == 1 else f"inputs {start}-{start + count - 1}"


def _short(value: float) -> str:
    """``1e-4`` as ``1e-4`` (as --help writes it), ``3.25e-06`` as ``3.25e-6``."""
    mantissa, exponent = f"{value:.3e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


def run(args: argparse.Namespace) -> int:
    """Invert the outputs; return 0 if all converged, 1 if some did not."""
    import torch

    from .. import invert, load_model
    from ..targets import ClassTarget

    _check_options(args)
    bounds = parse_pair(args.bounds, "--bounds") if args.bounds is not None else None
    labels = _parse_targets(args.target) if args.target is not None else None
    shape = parse_shape(args.input_shape) if args.input_shape is not None else None
    _check_method(args.method)
    scaled = check_scale_options(args)
    out = _out_path(args)

    model = load_model(args.model, input_shape=shape)
    mdtype = model_dtype_device(model)[0]
    X = None
    if args.prior_data is not None:
        X = load_array(args.prior_data, "prior data", "--prior-data")
    chain = analyse_model(model, shape, X, "--prior-data")
    in_shape, out_shape = chain.input_shape, chain.output_shape

    target: Any
    if labels is not None:
        labels = [k for k in labels for _ in range(args.samples or 1)]
        target = ClassTarget(labels, confidence=args.confidence)
        target.check_classes(math.prod(out_shape))
    elif scaled:
        target = torch.zeros(1, *out_shape, dtype=mdtype)  # read batch by batch later
    else:
        y = _read_outputs(args.outputs, out_shape)
        # solved in the model's dtype, so that tol's default is the model's (1e-4 for a
        # float32 model), as --help says, whatever dtype the file holds
        target = torch.from_numpy(np.ascontiguousarray(y)).to(mdtype)
    prior = _fit_prior(args, X, in_shape) if X is not None else None
    if args.prior == "batchnorm":
        prior = _batchnorm_prior(model, in_shape)
    # Images are drawn on the scale of the bounds or of the example inputs, if given.
    value_range = bounds
    if value_range is None and X is not None and float(X.min()) < float(X.max()):
        value_range = (float(X.min()), float(X.max()))

    options: dict[str, Any] = {}
    x0 = None
    if args.decoder is not None:
        from ..learned import Decoder

        decoder = Decoder.load(args.decoder)
        decoder.check_model(in_shape, out_shape, model)
        options["decoder"] = decoder
    elif args.prior == "batchnorm" and args.method in ("auto", "optimize"):
        # features of a constant input have no spatial variance, where the prior's
        # gradient vanishes: start from faint seeded noise (also makes samples differ);
        # with a start, auto picks optimize
        g = torch.Generator().manual_seed(args.seed)
        n = len(labels) if labels is not None else len(target)
        lo = bounds[0] if bounds is not None else 0.0
        x0 = lo + 0.1 * torch.rand(n, *in_shape, generator=g, dtype=mdtype)
    method = _pick_method(args.method, bounds, chain, prior, target, x0, options)
    if bounds is not None:
        options["bounds"] = bounds
    if method == "optimize":
        options["seed"] = args.seed
        if x0 is not None:
            options["x0"] = x0
        coarse = _coarse(args.coarse, in_shape, args.prior == "batchnorm")
        if coarse is not None:
            options["coarse"] = coarse
    elif args.coarse is not None:
        raise NNInvError(f"--coarse applies to method optimize, not {method}")
    torch.manual_seed(args.seed)
    refuse_overwrite(out, args)  # after every usage check, before any work
    if scaled:
        return run_scaled(args, model, in_shape, method, prior, options)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", NNInvWarning)
        inv = invert(model, target, method, prior, tol=args.tol, input_shape=in_shape, **options)
    _pass_on(caught)

    x = inv.x.detach().to("cpu", mdtype).numpy()
    out.parent.mkdir(parents=True, exist_ok=True)
    np.save(out, x)
    per_class = (labels, args.samples) if labels is not None and args.samples else None
    figure = _save_figure(
        x, in_shape, out.with_suffix(".png"), inv.method, value_range, per_class, labels
    )
    return _summarize(inv, out, x, figure)


def _out_path(args: argparse.Namespace) -> Path:
    """``--out`` as the .npy file to write; a directory is refused unless ``--ray``."""
    out = Path(args.out)
    if out.is_dir() and not args.ray:
        raise NNInvError(
            f"--out '{out}' is a directory; give the file to write, e.g. {out / 'x.npy'}"
        )
    if out.suffix != ".npy":
        out = out.with_name(out.name + ".npy")
    return out


def _batchnorm_prior(model: nn.Module, in_shape: tuple[int, ...]) -> Prior:
    """``--prior batchnorm``: the model's BatchNorm statistics, plus total variation on images."""
    from ..priors import BatchNormPrior

    prior: Prior = BatchNormPrior(model, first_multiplier=10.0, input_shape=in_shape)
    if _is_image(in_shape):
        from ..priors import TotalVariation

        prior = prior + 0.2 * TotalVariation(beta=1)
    return prior


def _pass_on(caught: list[warnings.WarningMessage]) -> None:
    """Print the library's warnings (not non-convergence: the summary says it); re-warn others."""
    for w in caught:
        if issubclass(w.category, NNInvWarning) and "did not converge" in str(w.message):
            continue  # the summary says it
        if issubclass(w.category, NNInvWarning):
            print(f"nninv invert: warning: {w.message}", file=sys.stderr)
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)


def _summarize(inv: Any, out: Path, x: np.ndarray, figure: Path | None) -> int:
    """Print the method, convergence and files written; 0 if all converged, else 1."""
    n, n_ok = len(inv), int(inv.converged.sum())
    rmax = float(inv.residual.max())
    print(
        f"method {inv.method}: {plural(n, 'sample')}, {n_ok} converged, max residual {rmax:.3g} "
        f"(tol {_short(inv.info['tol'])})"
    )
    if n_ok < n:
        i, reason = next((i, r) for i, r in enumerate(inv.info["reasons"]) if r is not None)
        print(f"{n - n_ok} of {n} did not converge; first, sample {i}: {reason}")
    print(f"wrote {out} {x.shape} {x.dtype}")
    if figure is not None:
        print(f"wrote {figure}")
    return 0 if n_ok == n else 1


def _is_image(shape: tuple[int, ...]) -> bool:
    """Image inputs ``(C, H, W)`` or ``(H, W)`` with both sides at least 16 pixels."""
    return len(shape) in (2, 3) and min(shape[-2:]) >= 16


def _coarse(value: str | None, shape: tuple[int, ...], batchnorm: bool) -> Any:
    """``--coarse``: None for no coarse stage, else an int or ``(h, w)`` for optimize."""
    if value is None:
        return (shape[-2] // 2, shape[-1] // 2) if batchnorm and _is_image(shape) else None
    try:
        sizes = [int(v) for v in value.split(",")]
    except ValueError:
        raise NNInvError(f"--coarse must be H or H,W (integers), got {value!r}") from None
    if sizes == [0]:
        return None
    if len(sizes) not in (1, 2):
        raise NNInvError(f"--coarse must be H or H,W (integers), got {value!r}")
    return sizes[0] if len(sizes) == 1 else tuple(sizes)

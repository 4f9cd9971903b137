"""``nninv verify``: answer a VNN-LIB property on a network, as the VNN-COMP tools do.

Reads MODEL (ONNX, or any file :func:`nninv.load_model` reads) and PROP (a
``.vnnlib`` or ``.vnnlib.gz`` file), runs :func:`nninv.verify`, prints the
status and what settled it, and writes the competition's result file.
"""

from __future__ import annotations

__all__ = ["add_parser", "result_text", "run"]

import argparse
import sys
from pathlib import Path
from typing import Any

from ..errors import NNInvError

_DESCRIPTION = """\
Decide whether some input in PROP's box sends MODEL's output into PROP's output
set: sat (a counterexample, confirmed by running the model in its own dtype and,
for an ONNX file, by onnxruntime), unsat (proven: bound propagation, then an
exact MILP), unknown, or timeout. X_i is the i-th element of the flattened input.

With --out, writes the VNN-COMP result file: the status on the first line and,
for sat, the counterexample as ((X_0 v) ... (Y_0 v) ...).

Exit status: 0 for sat or unsat, 1 for unknown or timeout, 2 for a bad file,
a property that does not match the model, or another usage error."""

_EPILOG = """\
examples:
  nninv verify mnist-net_256x2.onnx prop_0_0.03.vnnlib
  nninv verify net.onnx prop.vnnlib.gz --timeout 120 --out result.txt"""


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``verify`` with the ``nninv`` parser."""
    parser = subparsers.add_parser(
        "verify",
        help="decide a VNN-LIB property (sat with a counterexample, or unsat with a proof)",
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("model", metavar="MODEL", help="the network (ONNX, Keras, ...)")
    parser.add_argument("prop", metavar="PROP", help="the property (.vnnlib or .vnnlib.gz)")
    parser.add_argument(
        "--timeout", type=float, default=120.0, metavar="S", help="seconds (default: 120)"
    )
    parser.add_argument("--out", metavar="RESULT", help="write the VNN-COMP result file here")
    parser.add_argument(
        "--threads", type=int, default=1, metavar="N", help="torch threads (default: 1)"
    )
    parser.add_argument("--seed", type=int, default=0, metavar="S", help="attack seed (default: 0)")
    parser.set_defaults(func=run)
    return parser


def result_text(res: Any) -> str:
    """The VNN-COMP result file for a :class:`~nninv.geometry.verify.Verification`."""
    if res.status != "sat":
        return res.status + "\n"
    xs = res.x.reshape(-1).double().tolist()
    ys = res.y.reshape(-1).double().tolist()
    items = [f"(X_{i} {v!r})" for i, v in enumerate(xs)]
    items += [f"(Y_{j} {v!r})" for j, v in enumerate(ys)]
    return "sat\n(" + "\n ".join(items) + ")\n"


def run(args: argparse.Namespace) -> int:
    """Verify the property; return the exit status."""
    import torch

    from .. import verify
    from ..vnnlib import read

    if not args.timeout > 0:
        raise NNInvError(f"--timeout must be positive, got {args.timeout}")
    if args.threads < 1:
        raise NNInvError(f"--threads must be a positive integer, got {args.threads}")
    for p in (args.model, args.prop):
        if not Path(p).is_file():
            raise FileNotFoundError(f"no such file: {p}")
    torch.set_num_threads(args.threads)
    prop = read(args.prop)
    res = verify(args.model, prop, time_limit=args.timeout, seed=args.seed, progress=True)
    how = f"{res.method}, {res.seconds:.2f} s"
    if res.status == "sat":
        how += f", case {res.case} part {res.part}"
        if res.info.get("onnxruntime"):
            how += ", confirmed by onnxruntime"
    elif res.status == "unsat":
        how += f", {len(res.certificates)} certificates, {res.info.get('nodes', 0)} MILP nodes"
    elif "note" in res.info:
        how += f"; {res.info['note']}"
    print(f"{res.status} ({how})")
    if args.out:
        Path(args.out).write_text(result_text(res))
        print(f"wrote {args.out}", file=sys.stderr)
    return 0 if res.status in ("sat", "unsat") else 1

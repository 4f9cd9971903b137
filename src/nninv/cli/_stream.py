"""``nninv invert`` at scale: streamed batch by batch on one machine, or on a Ray cluster.

The options (``--batch-size``, ``--resume``, ``--ray``, ``--address``) and the
run that :mod:`nninv.cli.invert` hands over once the model, prior, method and
options are known. A ``.npy`` of more than :data:`STREAM_ROWS` rows is
streamed even without ``--batch-size``, so a large file never has to fit in
memory.
"""

from __future__ import annotations

__all__ = [
    "STREAM_ROWS",
    "add_scale_arguments",
    "check_scale_options",
    "refuse_overwrite",
    "run_scaled",
]

import argparse
from pathlib import Path
from typing import Any

import numpy as np

from ..checks import positive_int
from ..errors import NNInvError
from ._common import plural

#: Outputs files with more rows than this are streamed whatever the options.
STREAM_ROWS = 100_000


def add_scale_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the streaming and Ray options of ``nninv invert``."""
    group = parser.add_argument_group("large outputs files")
    group.add_argument(
        "--batch-size",
        type=int,
        metavar="B",
        help="stream the outputs file: memory-mapped, B rows at a time, results appended to "
        "--out (X.npy, X.residual.npy, X.converged.npy); automatic above "
        f"{STREAM_ROWS:,} rows (B=4096)",
    )
    group.add_argument(
        "--resume",
        action="store_true",
        help="continue a streamed run that stopped, from the rows --out already holds",
    )
    group.add_argument(
        "--ray",
        action="store_true",
        help="invert on Ray Data (pip install 'nninv[ray]'): --outputs a .npy/.parquet file, "
        "folder or glob; --out a folder of Parquet files (row, x, residual, converged)",
    )
    group.add_argument(
        "--address", metavar="ADDR", help="with --ray: the cluster to join, e.g. auto"
    )
    group.add_argument(
        "--workers", type=int, metavar="W", help="with --ray: actors in the pool (default: 1)"
    )


def _rows(path: str) -> int | None:
    p = Path(path)
    if p.suffix != ".npy" or not p.is_file():
        return None
    try:
        return int(np.load(p, mmap_mode="r", allow_pickle=False).shape[0])
    except (ValueError, OSError, IndexError):
        return None  # the ordinary reader names the problem


def check_scale_options(args: argparse.Namespace) -> bool:
    """Usage errors of the scale options; True when the run is streamed or on Ray."""
    if args.address is not None and not args.ray:
        raise NNInvError("--address applies to --ray")
    if args.workers is not None and not args.ray:
        raise NNInvError("--workers applies to --ray")
    positive_int(args.workers, "--workers", allow_none=True)
    positive_int(args.batch_size, "--batch-size", allow_none=True)
    asked = args.ray or args.resume or args.batch_size is not None
    if asked and args.outputs is None:
        raise NNInvError("--batch-size, --resume and --ray invert --outputs, not --target")
    if args.ray and args.resume:
        raise NNInvError("--resume applies to streamed runs; Ray retries failed batches itself")
    if args.ray:
        from ..distributed.ray_data import require_ray

        require_ray()  # says how to install it before anything is loaded
        return True
    rows = _rows(args.outputs) if args.outputs is not None else None
    return asked or (rows is not None and rows > STREAM_ROWS)


def refuse_overwrite(out: Path, args: argparse.Namespace) -> None:
    """Stop before anything runs when ``--out`` already holds a result.

    A result can be hours of work (a streamed run writes hundreds of MB): it is
    replaced only with ``--overwrite``, or continued with ``--resume``.
    """
    if args.overwrite or args.resume:
        return
    if args.ray:
        folder = Path(args.out)
        taken = folder.is_dir() and any(folder.iterdir())
        what = f"--out '{folder}' is a folder that already holds files"
    else:
        stem = out.name[: -len(".npy")]
        found = [p for p in (out, out.with_name(stem + ".residual.npy")) if p.exists()]
        taken = bool(found)
        what = f"'{found[0]}' already exists" if found else ""
    if taken:
        raise NNInvError(
            f"{what}; pass --overwrite to replace it"
            + ("" if args.ray else ", or --resume to continue a streamed run that stopped")
        )


def run_scaled(
    args: argparse.Namespace,
    model: Any,
    in_shape: tuple[int, ...],
    method: str,
    prior: Any,
    options: dict[str, Any],
) -> int:
    """Run the inversion streamed or on Ray, print the summary; 0 if all converged, else 1."""
    from ..distributed import invert_dataset, invert_file

    batch = args.batch_size or 4096
    if args.ray:
        run = invert_dataset(
            model,
            args.outputs,
            method,
            prior,
            out=args.out,
            batch_size=batch,
            num_workers=args.workers or 1,
            tol=args.tol,
            input_shape=in_shape,
            address=args.address,
            **options,
        )
        n, n_ok, rmax = run.n, run.n_converged, run.max_residual
        print(f"method {method}: {plural(n, 'sample')}, {n_ok} converged, max residual {rmax:.3g}")
        print(f"wrote {len(run.files)} Parquet file(s) to {run.out}")
        return 0 if n_ok == n else 1
    res = invert_file(
        model,
        args.outputs,
        args.out,
        method,
        prior,
        batch_size=batch,
        tol=args.tol,
        input_shape=in_shape,
        resume=args.resume,
        progress=True,
        **options,
    )
    if res.resumed_from:
        print(f"resumed after {res.resumed_from} rows already in {res.x_path}")
    print(
        f"method {res.method}: {plural(res.n, 'sample')}, {res.n_converged} converged, "
        f"max residual {res.max_residual:.3g} (tol {res.tol:g})"
    )
    if res.first_failure is not None:
        i, reason = res.first_failure
        print(f"{res.n - res.n_converged} of {res.n} did not converge; first, sample {i}: {reason}")
    print(f"wrote {res.x_path}, {res.residual_path.name}, {res.converged_path.name}")
    return 0 if res.n_converged == res.n else 1

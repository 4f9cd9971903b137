"""Streaming inversion of a large ``.npy`` of outputs on one machine, in bounded memory.

The outputs file is memory-mapped (``np.load(mmap_mode="r")``) and inverted
``batch_size`` rows at a time; each batch's results are appended to three
``.npy`` files (``X.npy`` with the inputs, ``X.residual.npy``,
``X.converged.npy``) whose headers already state the full shape, so memory
stays at a few batches whatever the number of rows. A run that is interrupted
leaves whole rows on disk (a partial row is cut off on resume), and
``resume=True`` continues from the last row all three files hold; a small
``X.json`` beside them records what the run was, so a resume of a different
run is refused rather than mixed in.
"""

from __future__ import annotations

__all__ = ["StreamResult", "invert_file"]

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from torch import nn
from tqdm.auto import tqdm

from ..checks import positive_int
from ..errors import NNInvError
from ..model.chain import analyse, eval_mode
from ..priors import Prior
from ._batch import BatchResult, invert_batch

#: Rows per batch when none is given.
DEFAULT_BATCH = 4096


@dataclass(frozen=True)
class StreamResult:
    """What a streamed run wrote.

    Attributes
    ----------
    x_path, residual_path, converged_path : Path
        The ``.npy`` files: inputs ``(N, *input_shape)``, residuals ``(N,)``, flags ``(N,)``.
    n : int
        Rows in the outputs file (all of them are in the files once the run ends).
    n_converged : int
    max_residual : float
    first_failure : tuple of (int, str) or None
        The first row that did not converge and why.
    method : str
        The method that ran.
    tol : float
    resumed_from : int
        Rows already on disk when the run started (0 for a fresh run).
    """

    x_path: Path
    residual_path: Path
    converged_path: Path
    n: int
    n_converged: int
    max_residual: float
    first_failure: tuple[int, str] | None
    method: str
    tol: float
    resumed_from: int


def _paths(out: str | Path) -> tuple[Path, Path, Path, Path]:
    out = Path(out)
    if out.suffix != ".npy":
        out = out.with_name(out.name + ".npy")
    stem = out.name[: -len(".npy")]
    return (
        out,
        out.with_name(stem + ".residual.npy"),
        out.with_name(stem + ".converged.npy"),
        out.with_name(stem + ".json"),
    )


def _open_outputs(path: Path) -> np.ndarray:
    if not path.exists():
        raise NNInvError(f"outputs file '{path}' does not exist")
    try:
        y = np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as e:
        raise NNInvError(f"outputs file '{path}' is not a readable .npy file ({e})") from None
    if not isinstance(y, np.memmap) and not isinstance(y, np.ndarray):
        raise NNInvError(f"outputs file '{path}' is not a .npy array (an .npz archive?)")
    if y.dtype.kind not in "fiu":
        raise NNInvError(f"outputs file '{path}' holds dtype {y.dtype}; expected real numbers")
    if y.ndim < 1 or y.shape[0] == 0:
        raise NNInvError(f"outputs file '{path}' holds no samples (shape {y.shape})")
    return y


def _header(path: Path) -> tuple[tuple[int, ...], np.dtype, int]:
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        else:
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        if fortran:
            raise NNInvError(f"'{path}' is in Fortran order; it was not written by nninv")
        return tuple(shape), dtype, f.tell()


def _start(path: Path, shape: tuple[int, ...], dtype: np.dtype) -> BinaryIO:
    f = open(path, "wb")
    header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": shape}
    np.lib.format.write_array_header_1_0(f, header)
    return f


def _rows_on_disk(path: Path, shape: tuple[int, ...], dtype: np.dtype) -> tuple[int, int]:
    """Whole rows in a partly written file, and where its data start."""
    got_shape, got_dtype, offset = _header(path)
    if got_shape != shape or got_dtype != dtype:
        raise NNInvError(
            f"cannot resume into '{path}': it holds {got_shape} {got_dtype}, this run writes "
            f"{shape} {dtype}"
        )
    row = dtype.itemsize * math.prod(shape[1:])
    return min((path.stat().st_size - offset) // row, shape[0]), offset


def _reopen(
    old: dict[str, Any],
    meta: dict[str, Any],
    paths: tuple[Path, Path, Path],
    n: int,
    in_shape: tuple[int, ...],
) -> tuple[int, list[BinaryIO]]:
    """Check a previous run's ``.json`` and reopen its files after the rows all of them hold."""
    x_path = paths[0]
    run = {k: old.get(k) for k in meta}
    if run != meta:
        diff = ", ".join(f"{k}: {run[k]!r} != {meta[k]!r}" for k in meta if run[k] != meta[k])
        raise NNInvError(
            f"cannot resume into '{x_path}': it was written by a different run ({diff}); "
            "give another --out or run without --resume"
        )
    dtype = np.dtype(old["dtype"])
    shapes = [(n, *in_shape), (n,), (n,)]
    dtypes = [dtype, dtype, np.dtype(bool)]
    counts = []
    for p, s, dt in zip(paths, shapes, dtypes):
        counts.append(_rows_on_disk(p, s, dt) if p.exists() else (0, 0))
    done = min(c for c, _ in counts)
    files: list[BinaryIO] = []
    for p, (_, offset), s, dt in zip(paths, counts, shapes, dtypes):
        if not p.exists():
            files.append(_start(p, s, dt))
            continue
        f = open(p, "r+b")
        f.truncate(offset + done * dt.itemsize * math.prod(s[1:]))
        f.seek(0, os.SEEK_END)
        files.append(f)
    return done, files


def _append(files: list[BinaryIO], res: BatchResult) -> None:
    """Append one batch's inputs, residuals and flags to the three open files."""
    for f, a in zip(files, (res.x, res.residual, res.converged)):
        f.write(np.ascontiguousarray(a).data.cast("B"))  # no copy
        f.flush()


def _summary(
    paths: tuple[Path, Path, Path],
    n: int,
    first: tuple[int, str] | None,
    used: str,
    used_tol: float,
    resumed_from: int,
) -> StreamResult:
    """Read the finished residual and flag files back into a :class:`StreamResult`."""
    x_path, r_path, c_path = paths
    residual = np.load(r_path, mmap_mode="r")
    converged = np.load(c_path, mmap_mode="r")
    n_ok = int(converged.sum())
    if n_ok < n and (first is None or resumed_from):
        i = int(np.argmin(converged))
        if first is None or i < first[0]:
            first = (i, f"residual {float(residual[i]):.3g} above tol {used_tol:g}")
    return StreamResult(
        x_path,
        r_path,
        c_path,
        n,
        n_ok,
        float(residual.max()),
        first,
        used,
        used_tol,
        resumed_from,
    )


def invert_file(
    model: nn.Module,
    outputs: str | Path,
    out: str | Path,
    method: str = "auto",
    prior: Prior | None = None,
    *,
    batch_size: int = DEFAULT_BATCH,
    tol: float | None = None,
    input_shape: Sequence[int] | None = None,
    resume: bool = False,
    progress: bool = True,
    **options: Any,
) -> StreamResult:
    """Invert every row of a ``.npy`` of outputs, batch by batch, appending to ``out``.

    Parameters
    ----------
    model : torch.nn.Module
        The network; batches are moved to its device.
    outputs : str or Path
        A ``.npy`` file of outputs shaped ``(N, *output_shape)`` or flat ``(N, m)``;
        memory-mapped, never read whole.
    out : str or Path
        The ``.npy`` to write the inputs to; ``.residual.npy``, ``.converged.npy``
        and ``.json`` files are written beside it.
    method, prior, tol, input_shape, **options
        As for :func:`nninv.invert`, per batch.
    batch_size : int
        Rows inverted at once; memory grows with it, not with ``N``.
    resume : bool
        Continue a run that wrote some rows of ``out`` and stopped (its
        ``.json`` must describe the same outputs file, method and shapes).
        Without it, existing files are overwritten.
    progress : bool
        Show a tqdm progress bar (rows).

    Returns
    -------
    StreamResult

    Raises
    ------
    NNInvError
        For a missing or unreadable outputs file, rows of the wrong size, NaN or
        inf in a batch (the rows named), a resume into files of a different run,
        or a bad ``batch_size``.

    Examples
    --------
    >>> import tempfile, torch
    >>> from pathlib import Path
    >>> f = torch.nn.Sequential(torch.nn.Linear(6, 3), torch.nn.Sigmoid()).double()
    >>> d = Path(tempfile.mkdtemp())
    >>> y = f(torch.rand(10, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(0)))
    >>> np.save(d / "y.npy", y.detach().numpy())
    >>> r = invert_file(f, d / "y.npy", d / "x.npy", "pinv", batch_size=4, progress=False)
    >>> r.n, r.n_converged, np.load(d / "x.npy").shape
    (10, 10, (10, 6))
    """
    batch_size = positive_int(batch_size, "batch_size")
    outputs = Path(outputs)
    x_path, r_path, c_path, meta_path = _paths(out)
    y = _open_outputs(outputs)
    with eval_mode(model):
        chain = analyse(model, input_shape)
    in_shape, out_shape = chain.input_shape, chain.output_shape
    m, n = math.prod(out_shape), int(y.shape[0])
    if math.prod(y.shape[1:]) != m:
        raise NNInvError(
            f"outputs file '{outputs}' holds shape {y.shape}, but the model's outputs are "
            f"shaped (N, {', '.join(map(str, out_shape))})"
        )
    meta = {
        "outputs": str(outputs.resolve()),
        "n": n,
        "output_shape": list(out_shape),
        "input_shape": list(in_shape),
        "method": method,
    }
    done = 0
    old: dict[str, Any] = {}
    files: list[BinaryIO] = []
    if resume and meta_path.exists() and x_path.exists():
        old = json.loads(meta_path.read_text())
        done, files = _reopen(old, meta, (x_path, r_path, c_path), n, in_shape)
    resumed_from = done
    used = str(old.get("method_used", method)) if done else method
    used_tol = float(old.get("tol", float("nan"))) if done else float("nan")
    first: tuple[int, str] | None = None
    bar = tqdm(total=n, initial=done, unit="row", disable=not progress, desc="nninv invert")
    try:
        for start in range(done, n, batch_size):
            stop = min(start + batch_size, n)
            yb = np.asarray(y[start:stop]).reshape(stop - start, *out_shape)
            try:
                res = invert_batch(
                    model, yb, method, prior, tol=tol, input_shape=in_shape, options=options
                )
            except NNInvError as e:
                where = f"outputs file '{outputs}', rows {start}..{stop - 1}"
                raise NNInvError(f"{where}: {e}") from None
            used, used_tol = res.method, res.tol
            if first is None and not res.converged.all():
                i = int(np.argmin(res.converged))
                first = (start + i, res.reasons[i] or f"residual above tol {res.tol:g}")
            if not files:
                meta_path.parent.mkdir(parents=True, exist_ok=True)
                info = {"dtype": res.x.dtype.str, "method_used": res.method, "tol": res.tol}
                meta_path.write_text(json.dumps({**meta, **info}) + "\n")
                files = [
                    _start(x_path, (n, *in_shape), res.x.dtype),
                    _start(r_path, (n,), res.residual.dtype),
                    _start(c_path, (n,), np.dtype(bool)),
                ]
            _append(files, res)
            bar.update(stop - start)
    finally:
        bar.close()
        for f in files:
            f.close()
    return _summary((x_path, r_path, c_path), n, first, used, used_tol, resumed_from)

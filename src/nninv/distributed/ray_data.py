"""Data-set-scale inversion on Ray Data: ``map_batches`` over an actor pool, results as Parquet.

Each actor of the pool loads the model and the prior once (a model file is
read with :func:`nninv.load_model` on the worker) and inverts the batches it
is sent with the same per-batch code as the single-machine stream
(:func:`nninv.distributed._batch.invert_batch`). ``.npy`` inputs are not
shipped through Ray: the data set is a range of row numbers and every actor
memory-maps the files itself (they must be readable from every node), so a
row keeps its number. Results go to Parquet files with the columns ``row``
(for ``.npy`` inputs), every other column of a Parquet or Ray input (e.g. an
id), ``x`` (the input found, flat, a fixed-size list), ``residual`` and
``converged``. When a worker dies, Ray Data restarts the actor and retries its
batches (its default for actor pools: restarts and retries without limit), so
no row is lost; the rows written are counted
back from the files at the end.
"""

from __future__ import annotations

__all__ = ["DatasetRun", "invert_dataset"]

import contextlib
import glob as _glob
import logging
import math
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from ..checks import positive_int
from ..errors import NNInvError
from ..model.chain import analyse, eval_mode
from ..model.io import load_model
from ..priors import Prior
from ._batch import invert_batch

#: Reads and writes reserve no CPU, so a pool as large as the cluster does not starve them.
_IO = {"num_cpus": 0}

#: Install hint when Ray is missing.
INSTALL = "pip install 'nninv[ray]' (ray[data]>=2.9 and pyarrow)"


@dataclass(frozen=True)
class DatasetRun:
    """What :func:`invert_dataset` wrote.

    Attributes
    ----------
    out : Path
        The folder of Parquet files.
    files : list of Path
    n : int
        Rows written (equal to the rows of the input when none was lost).
    n_converged : int
    max_residual : float
    """

    out: Path
    files: list[Path]
    n: int
    n_converged: int
    max_residual: float


def require_ray() -> Any:
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise NNInvError(f"Ray is not installed; {INSTALL}") from None
    return ray


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Ray 2.60 deprecates ``ray_remote_args``, which 2.9 still needs: keep it, unwarned."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "`ray_remote_args` is deprecated")
        yield


@contextlib.contextmanager
def _data_logs_at(level: int) -> Iterator[None]:
    """Ray Data's logger at ``level`` for the ``with`` block (and back)."""
    logger = logging.getLogger("ray.data")
    old = logger.level
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(old)


def _sources(outputs: Any) -> tuple[str, list[Path]]:
    """``("npy" | "parquet", files)`` for a path, folder, glob or list of them."""
    items = list(outputs) if isinstance(outputs, (list, tuple)) else [outputs]
    files: list[Path] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            found = sorted(q for q in p.iterdir() if q.suffix in (".npy", ".parquet"))
        elif any(c in str(item) for c in "*?["):
            found = sorted(Path(q) for q in _glob.glob(str(item)))
        else:
            found = [p]
        if not found:
            raise NNInvError(f"outputs '{item}' names no .npy or .parquet file")
        files.extend(found)
    kinds = {q.suffix for q in files}
    if len(kinds) != 1 or not kinds <= {".npy", ".parquet"}:
        raise NNInvError(
            f"outputs must be .npy files or .parquet files, not a mix; got {sorted(kinds)}"
        )
    for q in files:
        if not q.exists():
            raise NNInvError(f"outputs file '{q}' does not exist")
    return kinds.pop()[1:], files


class _Worker:
    """One actor: the model and prior loaded once, then batch after batch inverted."""

    def __init__(
        self,
        model: nn.Module | str,
        prior: Prior | None,
        method: str,
        tol: float | None,
        input_shape: tuple[int, ...],
        output_shape: tuple[int, ...],
        options: Mapping[str, Any],
        npy: list[str] | None,
        column: str,
        threads: int,
    ) -> None:
        import torch

        torch.set_num_threads(max(1, threads))
        self.model = load_model(model) if isinstance(model, str) else model
        self.model.eval()
        self.prior, self.method, self.tol = prior, method, tol
        self.input_shape, self.output_shape = input_shape, output_shape
        self.options, self.column = dict(options), column
        self.arrays = [np.load(p, mmap_mode="r", allow_pickle=False) for p in npy or []]
        self.offsets = np.cumsum([0] + [len(a) for a in self.arrays])

    def _rows(self, rows: np.ndarray) -> np.ndarray:
        m = math.prod(self.output_shape)
        file = np.searchsorted(self.offsets, rows, side="right") - 1
        out = np.empty((len(rows), m), dtype=np.result_type(*[a.dtype for a in self.arrays]))
        for k in np.unique(file):
            sel = file == k
            out[sel] = self.arrays[k][rows[sel] - self.offsets[k]].reshape(int(sel.sum()), m)
        return out

    def __call__(self, batch: dict[str, np.ndarray]) -> Any:
        import pyarrow as pa

        if self.arrays:
            rows = np.asarray(batch["data"], dtype=np.int64)
            y = self._rows(rows)
            keep: dict[str, Any] = {"row": rows}
        else:
            if self.column not in batch:
                raise NNInvError(
                    f"the outputs have no column {self.column!r} (columns: {sorted(batch)})"
                )
            y = np.stack([np.asarray(v) for v in batch[self.column]])
            keep = {k: v for k, v in batch.items() if k != self.column}
        y = y.reshape(len(y), *self.output_shape)
        res = invert_batch(
            self.model,
            y,
            self.method,
            self.prior,
            tol=self.tol,
            input_shape=self.input_shape,
            options=self.options,
        )
        x = pa.FixedSizeListArray.from_arrays(pa.array(res.x.reshape(-1)), res.x.shape[1])
        cols = {k: pa.array(np.asarray(v)) for k, v in keep.items()}
        cols.update(x=x, residual=pa.array(res.residual), converged=pa.array(res.converged))
        return pa.table(cols)


def invert_dataset(
    model: nn.Module | str | Path,
    outputs: Any,
    method: str = "auto",
    prior: Prior | None = None,
    *,
    out: str | Path,
    batch_size: int = 4096,
    num_workers: int = 1,
    cpus_per_worker: float = 1,
    gpus_per_worker: float = 0,
    tol: float | None = None,
    input_shape: Sequence[int] | None = None,
    column: str = "y",
    address: str | None = None,
    **options: Any,
) -> DatasetRun:
    """Invert every output of a data set on Ray and write the results as Parquet.

    Parameters
    ----------
    model : torch.nn.Module, str or Path
        The network, or a model file that every worker loads with :func:`nninv.load_model`.
    outputs : path, folder, glob, list of them, or ray.data.Dataset
        ``.npy`` files (rows numbered across the files in sorted order) or Parquet
        files / a Ray data set with the outputs in column ``column``.
    method, prior, tol, input_shape, **options
        As for :func:`nninv.invert`, per batch.
    out : str or Path
        The folder for the Parquet files (created; files already there are kept,
        so give an empty one).
    batch_size : int
        Rows per batch sent to a worker.
    num_workers : int
        Actors in the pool; each loads the model and the prior once.
    cpus_per_worker, gpus_per_worker : float
        Resources of one actor (its torch threads follow ``cpus_per_worker``).
        With a GPU, move the model there first (it keeps its device on the worker).
    column : str
        The outputs' column in a Parquet or Ray input.
    address : str, optional
        The cluster to connect to (``"auto"``) when Ray is not initialised yet;
        otherwise a local cluster is started.

    Returns
    -------
    DatasetRun

    Raises
    ------
    NNInvError
        When Ray is not installed (with how to install it), for outputs that name
        no file or mix file kinds, or a bad ``batch_size``/``num_workers``.
    """
    ray = require_ray()
    batch_size = positive_int(batch_size, "batch_size")
    num_workers = positive_int(num_workers, "num_workers")
    local = model if isinstance(model, nn.Module) else load_model(model)
    with eval_mode(local):
        chain = analyse(local, input_shape)
    sendable: nn.Module | str = model if isinstance(model, nn.Module) else str(model)
    if not ray.is_initialized():
        # Ray's INFO lines (local instance started, dashboard) are not the user's business
        ray.init(
            address=address,
            ignore_reinit_error=True,
            include_dashboard=False,
            logging_level=logging.WARNING,
        )
    npy: list[str] | None = None
    if isinstance(outputs, ray.data.Dataset):
        ds = outputs
    else:
        kind, files = _sources(outputs)
        if kind == "npy":
            npy = [str(p.resolve()) for p in files]
            sizes = [int(np.load(p, mmap_mode="r", allow_pickle=False).shape[0]) for p in files]
            ids = np.arange(sum(sizes), dtype=np.int64)
            # one block per batch, so that every actor of the pool gets work
            ds = ray.data.from_numpy(np.array_split(ids, max(1, math.ceil(len(ids) / batch_size))))
        else:
            with _quiet():
                ds = ray.data.read_parquet([str(p) for p in files], ray_remote_args=_IO)
    results = ds.map_batches(
        _Worker,
        batch_size=batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=num_workers),
        fn_constructor_kwargs={
            "model": sendable,
            "prior": prior,
            "method": method,
            "tol": tol,
            "input_shape": chain.input_shape,
            "output_shape": chain.output_shape,
            "options": options,
            "npy": npy,
            "column": column,
            "threads": int(cpus_per_worker),
        },
        num_cpus=cpus_per_worker,
        num_gpus=gpus_per_worker,
    )
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with _quiet(), _data_logs_at(logging.ERROR):
        # Ray Data logs each plan at INFO and warns when an actor pool outnumbers the
        # input blocks ("2 actors, 1 input"), which is harmless here; its bar stays
        results.write_parquet(str(out), ray_remote_args=_IO)
    return _summary(out)


def _summary(out: Path) -> DatasetRun:
    import pyarrow.parquet as pq

    files = sorted(out.glob("*.parquet"))
    if not files:
        return DatasetRun(out, [], 0, 0, float("nan"))
    table = pq.ParquetDataset([str(f) for f in files]).read(columns=["residual", "converged"])
    residual = table.column("residual").to_numpy()
    converged = table.column("converged").to_numpy()
    rmax = float(residual.max()) if len(residual) else float("nan")
    return DatasetRun(out, files, len(residual), int(converged.sum()), rmax)

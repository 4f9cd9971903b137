"""Helpers shared by the sub-commands: reading arrays and shapes given on the command line.

Arrays are read with ``np.load(..., allow_pickle=False)`` so that a file never
runs code, and every failure becomes an :class:`~nninv.NNInvError` naming the
file, which the command line prints as one line.
"""

from __future__ import annotations

__all__ = [
    "analyse_model",
    "fit_to_shape",
    "image_view",
    "load_array",
    "load_training_data",
    "parse_pair",
    "parse_shape",
    "plural",
    "save_samples",
]

import math
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from ..errors import NNInvError


def plural(n: int, word: str) -> str:
    """``"1 sample"``, ``"3 samples"``: a count with its noun."""
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def load_array(path: str | Path, what: str, option: str | None = None) -> np.ndarray:
    """Read a real-valued array from a ``.npy`` file (or a ``.npz`` holding one array).

    Parameters
    ----------
    path : str or Path
    what : str
        What the array is, for messages (``"outputs"``, ``"prior data"``).
    option : str, optional
        The command-line option that named the file (``"--input"``): a message
        about the values starts with it and the file, ``--input x.npy: row 0
        contains NaN ...``.

    Raises
    ------
    NNInvError
        If the file is missing, is a pickle or holds an object array (refused:
        unpickling runs code), is not a NumPy file, holds no real numbers, holds
        no samples, or holds NaN or inf (the message names the file and the index).
    """
    path = Path(path)
    if not path.exists():
        raise NNInvError(f"{what} file '{path}' does not exist")
    if path.is_dir():
        raise NNInvError(f"{what} file '{path}' is a directory; give a .npy file")
    with open(path, "rb") as f:
        magic = f.read(6)
    if not magic.startswith((b"\x93NUMPY", b"PK")):
        # np.load would try to unpickle anything else: tell a pickle from other bytes.
        if magic[:1] == b"\x80" or path.suffix.lower() in {".pkl", ".pickle"}:
            raise NNInvError(
                f"{what} file '{path}' is a Python pickle; refusing to unpickle (it could run "
                "code). Save a numeric array with np.save(path, array)"
            )
        raise NNInvError(
            f"{what} file '{path}' is not a readable .npy file (no NumPy header): save it "
            "with np.save(path, array)"
        )
    try:
        loaded = np.load(path, allow_pickle=False)
    except ValueError as e:
        # NumPy says "pickled data" for a pickle and "Object arrays" for dtype=object.
        if "pickle" in str(e).lower() or "object arrays" in str(e).lower():
            raise NNInvError(
                f"{what} file '{path}' holds pickled Python objects (an object array); "
                "refusing to unpickle (it could run code). Save a numeric array with "
                "np.save(path, np.asarray(a, dtype=np.float32))"
            ) from None
        raise NNInvError(f"{what} file '{path}' is not a readable .npy file ({e})") from None
    except (OSError, EOFError, zipfile.BadZipFile) as e:
        raise NNInvError(
            f"{what} file '{path}' is not a readable .npy file ({type(e).__name__}: {e})"
        ) from None
    if isinstance(loaded, np.lib.npyio.NpzFile):
        with loaded:
            names = list(loaded.files)
            if len(names) != 1:
                raise NNInvError(
                    f"{what} file '{path}' is an .npz archive of {len(names)} arrays "
                    f"({', '.join(names[:5])}); give a .npy file or an .npz with one array"
                )
            try:
                arr = loaded[names[0]]
            except ValueError:
                raise NNInvError(
                    f"{what} file '{path}' holds pickled Python objects; refusing to unpickle"
                ) from None
    else:
        arr = loaded
    if arr.dtype.kind not in "fiu":
        raise NNInvError(
            f"{what} file '{path}' holds an array of dtype {arr.dtype}; expected real numbers"
        )
    if arr.size == 0:
        raise NNInvError(f"{what} file '{path}' holds no samples (shape {arr.shape})")
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        bad = ~np.isfinite(arr)
        where = tuple(int(i) for i in np.argwhere(bad)[0])
        value = arr[where]
        kind = "NaN" if np.isnan(value) else ("inf" if value > 0 else "-inf")
        head = f"{option} {path}" if option is not None else f"{what} file '{path}'"
        raise NNInvError(
            f"{head}: row {where[0]} contains {kind} (at index {where}; {int(bad.sum())} "
            "value(s) are not finite); expected finite numbers"
        )
    return arr


def parse_shape(text: str) -> tuple[int, ...]:
    """``"1,28,28"`` as ``(1, 28, 28)``; raise :class:`NNInvError` on anything else."""
    try:
        shape = tuple(int(s) for s in text.replace("x", ",").split(","))
    except ValueError:
        raise NNInvError(
            f"--input-shape must be positive integers separated by commas, e.g. 1,28,28; "
            f"got {text!r}"
        ) from None
    if not shape or any(s <= 0 for s in shape):
        raise NNInvError(f"--input-shape must be positive integers, got {text!r}")
    return shape


def parse_pair(text: str, option: str) -> tuple[float, float]:
    """``"0,1"`` as ``(0.0, 1.0)`` with ``lo < hi``."""
    parts = text.split(",")
    try:
        lo, hi = (float(p) for p in parts)
    except ValueError:
        raise NNInvError(f"{option} must be two numbers LO,HI, e.g. 0,1; got {text!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi)) or not lo < hi:
        raise NNInvError(f"{option} needs finite LO < HI, got {text!r}")
    return lo, hi


def fit_to_shape(
    arr: np.ndarray, shape: tuple[int, ...], what: str, path: str | Path
) -> np.ndarray:
    """``arr`` reshaped to ``(N, *shape)``.

    Accepted: ``(N, *shape)`` itself, flat ``(N, prod(shape))``, and any
    ``(N, ...)`` of the right size that differs from ``shape`` only by axes of
    length 1 (e.g. ``(N, 1, 28, 28)`` for a channels-last ``(28, 28, 1)``
    input), where reshaping keeps every value in place.
    """
    want = f"(N, {', '.join(map(str, shape))})"
    if arr.ndim < 2:
        raise NNInvError(
            f"{what} file '{path}' holds shape {arr.shape}; expected samples shaped {want}"
        )
    sample = tuple(arr.shape[1:])
    n = math.prod(shape)
    ok = sample == shape or sample == (n,)
    ok = ok or (
        math.prod(sample) == n
        and tuple(s for s in sample if s != 1) == tuple(s for s in shape if s != 1)
    )
    if not ok:
        raise NNInvError(
            f"{what} file '{path}' holds shape {arr.shape}, but the model's inputs are "
            f"shaped {want} (flat (N, {n}) is accepted too)"
        )
    return arr.reshape(arr.shape[0], *shape)


def analyse_model(
    model: nn.Module, shape: tuple[int, ...] | None, data: np.ndarray | None, data_option: str
) -> Any:
    """The model's chain (``nninv.model.chain.Chain``) for ``--input-shape`` or its own shape.

    When neither tells the input shape (a TorchScript file starting with a
    convolution), the shape of one sample of ``data`` is used, as
    :func:`nninv.invert` does with a prior.
    """
    from ..model.chain import analyse, eval_mode

    with eval_mode(model):
        try:
            return analyse(model, shape)
        except NNInvError as e:
            if shape is not None:
                raise
            if data is None or data.ndim < 2:
                raise NNInvError(
                    f"{e}; on the command line: --input-shape C,H,W or {data_option} X.npy"
                ) from None
        return analyse(model, tuple(data.shape[1:]))


def load_training_data(
    model_path: str, data_path: str, input_shape: str | None, least: int = 10
) -> tuple[nn.Module, Any, np.ndarray]:
    """The model, its chain and the ``--data`` inputs shaped for it (at least ``least``)."""
    from .. import load_model

    shape = parse_shape(input_shape) if input_shape is not None else None
    model = load_model(model_path, input_shape=shape)
    data = load_array(data_path, "data")
    chain = analyse_model(model, shape, data, "--data")
    X = fit_to_shape(data, chain.input_shape, "data", data_path)
    if X.shape[0] < least:
        raise NNInvError(
            f"data file '{data_path}' holds {X.shape[0]} samples; need at least {least}"
        )
    return model, chain, X


def image_view(x: np.ndarray, shape: tuple[int, ...]) -> tuple[np.ndarray, tuple[int, ...]] | None:
    """``x`` (N, *shape) as images :func:`~nninv.figures.save_grid` can show, or None."""
    from ..figures import is_image_shape

    if is_image_shape(shape):
        if len(shape) == 1:
            side = math.isqrt(shape[0])
            return x, (side, side)
        return x, shape
    # Keras lays images out channels-last, (H, W, C): show them channels-first.
    if len(shape) == 3 and shape[-1] in (1, 3) and min(shape[:2]) >= 4:
        h, w, c = shape
        x = np.moveaxis(x.reshape(-1, h, w, c), -1, 1)
        return (x[:, 0], (h, w)) if c == 1 else (x, (c, h, w))
    return None


def save_samples(
    rows: Mapping[str, Any],
    path: Path,
    shape: tuple[int, ...],
    *,
    title: str,
    value_range: tuple[float, float] | None = None,
    ncols: int | None = None,
    diverging: Sequence[str] = (),
    captions: Mapping[str, Sequence[str]] | None = None,
) -> Path:
    """Save rows of inputs shaped ``(N, *shape)`` as a figure fitted to that shape.

    Images (``(H, W)``, ``(C, H, W)``, channels-last, square flat vectors such as
    8x8 digits) go to :func:`~nninv.figures.save_grid` on ``value_range`` (or the
    range of the values shown); anything else (tabular features) to
    :func:`~nninv.figures.save_vectors` as heat strips, with the rows named in
    ``diverging`` on their own scale about 0. Rows named in ``diverging`` are
    differences: as images they are drawn grey at 0, scaled per image.
    ``captions`` (row label to one caption per image) go under the images.
    """
    from ..figures import save_grid, save_vectors

    arrays = {
        k: np.asarray(v.detach().cpu().numpy() if hasattr(v, "detach") else v)
        for k, v in rows.items()
    }
    arrays = {k: v.reshape(len(v), *shape) for k, v in arrays.items()}
    views = {k: image_view(v, shape) for k, v in arrays.items()}
    if any(v is None for v in views.values()):
        return save_vectors(
            arrays,
            path,
            title=title,
            diverging=diverging,
            vmin=value_range[0] if value_range else None,
            vmax=value_range[1] if value_range else None,
        )
    images: dict[str, np.ndarray] = {}
    image_shape: tuple[int, ...] = ()
    for k, view in views.items():
        assert view is not None
        images[k], image_shape = view
    shown = [v for k, v in images.items() if k not in diverging]
    if value_range is None:
        finite = np.concatenate([v.ravel() for v in shown])
        finite = finite[np.isfinite(finite)]
        lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
        if not lo < hi:
            lo, hi = lo - 0.5, hi + 0.5
    else:
        lo, hi = value_range
    for k in diverging:
        d = images[k].reshape(len(images[k]), -1)
        scale = np.maximum(np.abs(d).max(1, keepdims=True), 1e-12)
        images[k] = (lo + (hi - lo) * (0.5 + 0.5 * d / scale)).reshape(images[k].shape)
    return save_grid(
        images,
        path,
        ncols=ncols,
        image_shape=image_shape,
        title=title,
        vmin=lo,
        vmax=hi,
        captions=captions,
    )

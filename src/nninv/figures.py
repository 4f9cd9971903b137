"""Figures of image batches: one labelled row per batch, written to a PNG file.

Uses matplotlib's object interface with the Agg canvas, never ``pyplot``, so
making a figure neither opens a window nor changes the user's backend.
"""

from __future__ import annotations

__all__ = ["is_image_shape", "save_grid"]

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from torch import Tensor

from ._errors import NNInvError

_CELL_INCHES = 1.0
_DPI = 100


def is_image_shape(shape: Sequence[int]) -> bool:
    """Whether one sample of this shape can be shown as an image.

    True for ``(H, W)``, ``(1, H, W)`` and ``(3, H, W)`` with ``H, W >= 4``, and
    for a flat ``(D,)`` with ``D`` a perfect square of at least 16.

    Parameters
    ----------
    shape : sequence of int
        Shape of one sample, without the batch dimension.

    Returns
    -------
    bool

    Examples
    --------
    >>> is_image_shape((1, 28, 28)), is_image_shape((784,)), is_image_shape((10,))
    (True, True, False)
    """
    dims = tuple(int(s) for s in shape)
    if len(dims) == 1:
        d = dims[0]
        return d >= 16 and math.isqrt(d) ** 2 == d
    if len(dims) == 2:
        return min(dims) >= 4
    if len(dims) == 3:
        return dims[0] in (1, 3) and min(dims[1:]) >= 4
    return False


def _to_numpy(value: Tensor | np.ndarray) -> np.ndarray:
    if isinstance(value, Tensor):
        return value.detach().cpu().numpy()
    return np.asarray(value)


def _as_images(
    label: str, value: Tensor | np.ndarray, image_shape: Sequence[int] | None
) -> np.ndarray:
    """Return ``(N, H, W)`` grey or ``(N, H, W, 3)`` colour images."""
    arr = _to_numpy(value).astype(np.float64, copy=False)
    if arr.ndim < 2:
        raise NNInvError(
            f"save_grid: row {label!r}: expected a batch (N, ...) of images, got shape {arr.shape}"
        )
    n = arr.shape[0]
    if image_shape is not None:
        shape = tuple(int(s) for s in image_shape)
        if len(shape) not in (2, 3) or math.prod(shape) != math.prod(arr.shape[1:]):
            raise NNInvError(
                f"save_grid: row {label!r}: cannot show samples of shape {arr.shape[1:]} "
                f"as image_shape {shape} (need (H, W) or (C, H, W) with the same size)"
            )
        arr = arr.reshape(n, *shape)
    elif arr.ndim == 2:
        d = arr.shape[1]
        side = math.isqrt(d)
        if side * side != d:
            raise NNInvError(
                f"save_grid: row {label!r}: flat samples of size {d} are not square; "
                "pass image_shape=(H, W)"
            )
        arr = arr.reshape(n, side, side)
    if arr.ndim == 4:
        if arr.shape[1] == 1:
            arr = arr[:, 0]
        elif arr.shape[1] == 3:
            arr = arr.transpose(0, 2, 3, 1)
        else:
            raise NNInvError(
                f"save_grid: row {label!r}: images must have 1 or 3 channels, got shape "
                f"{arr.shape} (N, C, H, W)"
            )
    elif arr.ndim != 3:
        raise NNInvError(
            f"save_grid: row {label!r}: expected (N, H, W), (N, C, H, W) or (N, D), "
            f"got shape {arr.shape}"
        )
    return arr


def save_grid(
    rows: Mapping[str, Tensor | np.ndarray],
    path: str | os.PathLike[str],
    *,
    ncols: int | None = None,
    image_shape: Sequence[int] | None = None,
    title: str | None = None,
    vmin: float = 0.0,
    vmax: float = 1.0,
    clip: bool = True,
) -> Path:
    """Save batches of images as a grid, one labelled row per batch.

    Parameters
    ----------
    rows : mapping of str to Tensor or numpy.ndarray
        Row label to batch, in display order. A batch is ``(N, H, W)``,
        ``(N, 1, H, W)``, ``(N, 3, H, W)`` (shown in colour) or flat ``(N, D)``
        with ``D`` a perfect square or ``image_shape`` given. Rows may differ in
        length and image size.
    path : str or path-like
        Output file; parent folders are created. Without a suffix ``.png`` is
        added; another suffix matplotlib knows (``.pdf``, ``.svg``) picks that
        format.
    ncols : int, optional
        Images per row; longer batches are cut, shorter ones leave blanks.
        Default: the longest batch.
    image_shape : sequence of int, optional
        ``(H, W)`` or ``(C, H, W)`` to reshape every sample to.
    title : str, optional
        Title above the grid.
    vmin, vmax : float, optional
        Values shown black and white (grey images) or mapped to 0 and 1 (colour).
    clip : bool, optional
        If True, values outside ``[vmin, vmax]`` are shown as black or white. If
        False, grey images mark them in colour, blue below and red above, so
        that an inversion leaving the valid range shows where; colour images
        are always clipped.

    Returns
    -------
    Path
        The file written.

    Raises
    ------
    NNInvError
        If ``rows`` is empty, a batch cannot be read as images (the message
        names the row and its shape), ``ncols < 1`` or ``vmin >= vmax``.

    Examples
    --------
    >>> import tempfile, torch
    >>> out = save_grid(
    ...     {"target": torch.rand(4, 1, 28, 28), "found": torch.rand(3, 784)},
    ...     Path(tempfile.mkdtemp()) / "figs" / "grid.png",
    ...     title="inversion",
    ... )
    >>> out.name, out.stat().st_size > 0
    ('grid.png', True)
    """
    if not rows:
        raise NNInvError("save_grid: no rows given")
    if not vmin < vmax:
        raise NNInvError(f"save_grid: need vmin < vmax, got vmin={vmin}, vmax={vmax}")
    images = {
        str(label): _as_images(str(label), value, image_shape) for label, value in rows.items()
    }
    if ncols is None:
        ncols = max(1, *(len(batch) for batch in images.values()))
    elif isinstance(ncols, bool) or not isinstance(ncols, int) or ncols < 1:
        raise NNInvError(f"save_grid: ncols must be a positive integer, got {ncols!r}")

    cmap = colormaps["gray"]
    if not clip:
        cmap = cmap.with_extremes(under="tab:blue", over="tab:red")
    # Each row as tall as its images are relative to their width.
    heights = [batch.shape[1] / batch.shape[2] for batch in images.values()]
    fig = Figure(
        figsize=(_CELL_INCHES * (ncols + 1), _CELL_INCHES * (sum(heights) + 0.4 * bool(title))),
        dpi=_DPI,
        layout="constrained",
    )
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(images), ncols, squeeze=False, gridspec_kw={"height_ratios": heights})
    for r, (label, batch) in enumerate(images.items()):
        for j in range(ncols):
            ax = axes[r, j]
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            if j < len(batch):
                img = batch[j]
                if img.ndim == 3:
                    img = (np.clip(img, vmin, vmax) - vmin) / (vmax - vmin)
                    ax.imshow(img, interpolation="nearest")
                else:
                    if clip:
                        img = np.clip(img, vmin, vmax)
                    ax.imshow(img, cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
        axes[r, 0].set_ylabel(label, rotation=0, ha="right", va="center")
    if title:
        fig.suptitle(title)

    path = Path(path)
    if not path.suffix:
        path = path.with_suffix(".png")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path

"""Figures of batches of inputs: one labelled row per batch, written to a PNG file.

:func:`save_grid` shows samples that are images (``(H, W)``, ``(C, H, W)``,
square flat vectors) as a grid of images; :func:`save_vectors` shows any other
samples (tabular features, short vectors) as heat strips, one row of colour
per sample, features along the horizontal axis. Both size the figure to its
contents and its title (a long title is wrapped, never cut). Uses matplotlib's
object interface with the Agg canvas, never ``pyplot``, so making a figure
neither opens a window nor changes the user's backend.
"""

from __future__ import annotations

__all__ = ["is_image_shape", "save_grid", "save_vectors"]

import math
import os
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from torch import Tensor

from .checks import positive_int
from .errors import NNInvError

_CELL_INCHES = 1.0
_DPI = 100
#: A figure narrower than this is widened (up to it) to fit its title before wrapping.
_TITLE_INCHES = 7.0


def _fit_title(fig: Figure, title: str) -> None:
    """Put ``title`` above ``fig``, widening a narrow figure or wrapping the text to fit."""
    text = fig.suptitle(title)
    canvas = fig.canvas
    assert isinstance(canvas, FigureCanvasAgg)  # every figure here is drawn on an Agg canvas
    renderer = canvas.get_renderer()
    width, height = fig.get_size_inches()
    need = text.get_window_extent(renderer).width / fig.dpi + 0.3
    if need > width:
        width = max(width, min(need, _TITLE_INCHES))
    lines = 1
    if need > width:
        chars = max(10, int(len(title) * (width - 0.3) / (need - 0.3)))
        # break only at spaces: "R-hat" stays one word (a no-break space binds a number)
        wrapped = textwrap.wrap(title, chars, break_on_hyphens=False)
        lines = len(wrapped)
        text.set_text("\n".join(wrapped))
    fig.set_size_inches(width, height + 0.22 * (lines - 1))


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
    captions: Mapping[str, Sequence[str]] | None = None,
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
    captions : mapping of str to sequence of str, optional
        Row label to one caption per image, written under each image (a class,
        a distance). A row label may hold line breaks (a method and its score).

    Returns
    -------
    Path
        The file written.

    Raises
    ------
    NNInvError
        If ``rows`` is empty, a batch cannot be read as images (the message
        names the row and its shape), ``ncols < 1``, ``vmin >= vmax``, or
        ``captions`` names a row not in ``rows``.

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
    else:
        ncols = positive_int(ncols, "save_grid: ncols")
    notes = {str(k): [str(c) for c in v] for k, v in (captions or {}).items()}
    unknown = [k for k in notes if k not in images]
    if unknown:
        raise NNInvError(f"save_grid: captions for rows not given: {', '.join(unknown)}")

    cmap = colormaps["gray"]
    if not clip:
        cmap = cmap.with_extremes(under="tab:blue", over="tab:red")
    # Each row as tall as its images are relative to their width.
    heights = [
        batch.shape[1] / batch.shape[2] + 0.22 * (label in notes) for label, batch in images.items()
    ]
    # The width follows the columns actually used and the longest row label.
    used = min(ncols, max(len(batch) for batch in images.values()))
    label_inches = 0.1 + 0.075 * max(len(line) for label in images for line in label.split("\n"))
    fig = Figure(
        figsize=(
            _CELL_INCHES * used + label_inches + 0.2,
            _CELL_INCHES * (sum(heights) + 0.4 * bool(title)),
        ),
        dpi=_DPI,
        layout="constrained",
    )
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(images), used, squeeze=False, gridspec_kw={"height_ratios": heights})
    for r, (label, batch) in enumerate(images.items()):
        for j in range(used):
            ax = axes[r, j]
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            if label in notes and j < len(notes[label]):
                ax.set_xlabel(notes[label][j], fontsize=7, labelpad=1)
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
        _fit_title(fig, title)
    return _save(fig, path)


def _save(fig: Figure, path: str | os.PathLike[str]) -> Path:
    path = Path(path)
    if not path.suffix:
        path = path.with_suffix(".png")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


def _vector_strips(rows: Mapping[str, Tensor | np.ndarray]) -> tuple[dict[str, np.ndarray], int]:
    """Each row flattened to an ``(N, D)`` float64 strip, and the common ``D``."""
    if not rows:
        raise NNInvError("save_vectors: no rows given")
    strips: dict[str, np.ndarray] = {}
    for label, value in rows.items():
        arr = _to_numpy(value).astype(np.float64, copy=False)
        if arr.ndim < 2 or arr.shape[0] < 1:
            raise NNInvError(
                f"save_vectors: row {label!r}: expected a batch (N, ...) with N >= 1, got "
                f"shape {arr.shape}"
            )
        strips[str(label)] = arr.reshape(arr.shape[0], -1)
    dims = {label: strip.shape[1] for label, strip in strips.items()}
    if len(set(dims.values())) != 1:
        raise NNInvError(f"save_vectors: rows differ in their number of features: {dims}")
    return strips, next(iter(dims.values()))


def _shared_range(
    strips: Mapping[str, np.ndarray],
    diverging: Sequence[str],
    vmin: float | None,
    vmax: float | None,
) -> tuple[float, float]:
    """The shared colour scale's ends: ``vmin``/``vmax``, else the finite values' range."""
    shared = [s for label, s in strips.items() if label not in diverging]
    values = np.concatenate([s.ravel() for s in shared]) if shared else np.zeros(1)
    finite = values[np.isfinite(values)]
    lo = float(finite.min()) if vmin is None and finite.size else (vmin or 0.0)
    hi = float(finite.max()) if vmax is None and finite.size else (vmax or 1.0)
    if vmin is not None and vmax is not None and not vmin < vmax:
        raise NNInvError(f"save_vectors: need vmin < vmax, got vmin={vmin}, vmax={vmax}")
    if not lo < hi:
        lo, hi = lo - 0.5, hi + 0.5
    return lo, hi


def save_vectors(
    rows: Mapping[str, Tensor | np.ndarray],
    path: str | os.PathLike[str],
    *,
    title: str | None = None,
    vmin: float | None = None,
    vmax: float | None = None,
    diverging: Sequence[str] = (),
    feature_names: Sequence[str] | None = None,
) -> Path:
    """Save batches of vectors (samples that are not images) as labelled heat strips.

    Each row of the mapping becomes one panel: an ``(N, D)`` strip with one line
    of colour per sample and the ``D`` features along the horizontal axis,
    sized to ``N`` and ``D`` (a 30-feature tabular input and an 8x8 digit read
    as 64 values alike). Panels share one colour scale, shown by a colour bar;
    rows named in ``diverging`` (differences) get their own scale, symmetric
    about 0 (blue below, red above).

    Parameters
    ----------
    rows : mapping of str to Tensor or numpy.ndarray
        Row label to batch ``(N, ...)``; every sample is flattened and all rows
        must have the same number of features ``D``.
    path : str or path-like
        Output file (``.png`` added without a suffix); parent folders are created.
    title : str, optional
        Title above the panels (wrapped to the figure's width).
    vmin, vmax : float, optional
        Ends of the shared colour scale; default the range of the values shown.
    diverging : sequence of str
        Labels of rows drawn on a scale symmetric about 0.
    feature_names : sequence of str, optional
        Names for the horizontal axis (used as tick labels when ``D <= 40``).

    Returns
    -------
    Path
        The file written.

    Raises
    ------
    NNInvError
        If ``rows`` is empty, a batch is not ``(N, ...)`` with ``N >= 1``, the
        rows differ in ``D``, ``vmin >= vmax``, ``feature_names`` has the wrong
        length, or a name in ``diverging`` is not a row.

    Examples
    --------
    >>> import tempfile, torch
    >>> out = save_vectors(
    ...     {"x0": torch.rand(1, 30), "found": torch.rand(4, 30)},
    ...     Path(tempfile.mkdtemp()) / "vectors.png",
    ...     title="tabular inversion",
    ... )
    >>> out.suffix
    '.png'
    """
    strips, d = _vector_strips(rows)
    unknown = [name for name in diverging if name not in strips]
    if unknown:
        raise NNInvError(f"save_vectors: diverging names rows that do not exist: {unknown}")
    if feature_names is not None and len(feature_names) != d:
        raise NNInvError(f"save_vectors: {len(feature_names)} feature names for {d} features")
    lo, hi = _shared_range(strips, diverging, vmin, vmax)

    heights = [0.35 + 0.18 * len(s) for s in strips.values()]
    named = feature_names is not None and d <= 40
    label_inches = 0.2 + 0.075 * max(len(label) for label in strips)
    width = min(12.0, max(4.5, 0.16 * d + label_inches + 1.2))
    fig = Figure(
        figsize=(width, sum(heights) + 0.5 + 0.4 * bool(title) + 0.6 * named),
        dpi=_DPI,
        layout="constrained",
    )
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(strips), 1, squeeze=False, gridspec_kw={"height_ratios": heights})
    shared_image = None
    for r, (label, strip) in enumerate(strips.items()):
        ax = axes[r, 0]
        if label in diverging:
            m = float(np.nanmax(np.abs(strip))) if np.isfinite(strip).any() else 0.0
            m = m if m > 0 else 1.0
            im = ax.imshow(
                strip, cmap="RdBu_r", vmin=-m, vmax=m, aspect="auto", interpolation="nearest"
            )
            fig.colorbar(im, ax=ax, pad=0.01, fraction=0.04)
        else:
            shared_image = ax.imshow(
                strip, cmap="viridis", vmin=lo, vmax=hi, aspect="auto", interpolation="nearest"
            )
        ax.set_ylabel(label, rotation=0, ha="right", va="center", labelpad=8)
        ax.set_yticks(range(len(strip)) if len(strip) <= 12 else [])
        if r < len(strips) - 1:
            ax.set_xticks([])
    bottom = axes[-1, 0]
    if named:
        assert feature_names is not None
        bottom.set_xticks(range(d), [str(n) for n in feature_names], rotation=90, fontsize=7)
    else:
        bottom.set_xlabel(f"feature (0 .. {d - 1})")
    if shared_image is not None:
        fig.colorbar(
            shared_image,
            ax=[axes[r, 0] for r, lab in enumerate(strips) if lab not in diverging],
            pad=0.01,
            fraction=0.04,
            aspect=30,
        )
    if title:
        _fit_title(fig, title)
    return _save(fig, path)

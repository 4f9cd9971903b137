"""Tests of nninv.figures: grids written to PNG and read back."""

import sys
from pathlib import Path

import matplotlib
import numpy as np
import pytest
import torch
from matplotlib.image import imread

from nninv.errors import NNInvError
from nninv.figures import is_image_shape, save_grid, save_vectors


def digits(n: int, side: int = 28) -> torch.Tensor:
    """Bright squares on black, so a PNG of them is anything but blank."""
    x = torch.zeros(n, 1, side, side)
    for i in range(n):
        x[i, 0, 4 + i % 5 : side - 4, 6 : side - 6 - i % 4] = 1.0
    return x


def read_png(path: Path) -> np.ndarray:
    img = imread(path)
    assert img.ndim == 3 and img.shape[2] in (3, 4)
    return img[..., :3]


def test_save_grid_mixed_inputs(tmp_path):
    rows = {
        "target": digits(6),
        "found (N,H,W)": digits(4)[:, 0].numpy(),
        "flat": digits(5).flatten(1),
        "colour": digits(3).repeat(1, 3, 1, 1) * torch.tensor([1.0, 0.5, 0.0]).view(1, 3, 1, 1),
    }
    out = save_grid(rows, tmp_path / "grid.png", title="test grid")
    assert out == tmp_path / "grid.png" and out.is_file()
    img = read_png(out)
    h, w = img.shape[:2]
    # 6 columns plus a label column at 100 dpi, 4 rows plus a title.
    assert 500 <= w <= 900 and 350 <= h <= 600
    grey = img.mean(axis=2)
    assert grey.std() > 0.1
    assert (grey < 0.05).mean() > 0.05 and (grey > 0.95).mean() > 0.05
    # The colour row shows as colour.
    assert (np.abs(img[..., 0] - img[..., 2]) > 0.5).any()


def test_save_grid_creates_parent_and_adds_suffix(tmp_path):
    out = save_grid({"x": digits(2)}, tmp_path / "a" / "b" / "grid")
    assert out == tmp_path / "a" / "b" / "grid.png"
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_save_grid_ncols_and_image_shape(tmp_path):
    flat = torch.rand(7, 6 * 10)
    narrow = save_grid({"r": flat}, tmp_path / "narrow.png", image_shape=(6, 10), ncols=2)
    wide = save_grid({"r": flat}, tmp_path / "wide.png", image_shape=(6, 10))
    assert read_png(narrow).shape[1] < read_png(wide).shape[1]


def test_save_grid_string_path_and_numpy(tmp_path):
    out = save_grid({"r": np.random.default_rng(0).random((3, 16))}, str(tmp_path / "s.png"))
    assert isinstance(out, Path) and out.is_file()


def test_save_grid_marks_out_of_range_when_not_clipping(tmp_path):
    x = digits(2) * 1.5 - 0.25  # values in [-0.25, 1.25]
    clipped = read_png(save_grid({"x": x}, tmp_path / "c.png"))
    marked = read_png(save_grid({"x": x}, tmp_path / "m.png", clip=False))
    assert np.abs(clipped[..., 0] - clipped[..., 2]).max() < 1e-6
    red = (marked[..., 0] > 0.7) & (marked[..., 2] < 0.3)
    blue = (marked[..., 2] > 0.6) & (marked[..., 0] < 0.3)
    assert red.sum() > 100 and blue.sum() > 100


def test_save_grid_leaves_backend_and_pyplot_alone(tmp_path):
    # Read the raw rcParams entry: rcParams["backend"] would itself resolve the backend.
    backend = dict.__getitem__(matplotlib.rcParams, "backend")
    had_pyplot = "matplotlib.pyplot" in sys.modules
    save_grid({"x": np.zeros((2, 16))}, tmp_path / "p.png")
    assert dict.__getitem__(matplotlib.rcParams, "backend") == backend
    assert ("matplotlib.pyplot" in sys.modules) == had_pyplot


@pytest.mark.parametrize(
    ("rows", "kwargs", "match"),
    [
        ({}, {}, "no rows given"),
        ({"a": torch.zeros(3, 10)}, {}, "row 'a': flat samples of size 10 are not square"),
        ({"a": torch.zeros(3, 10)}, {"image_shape": (3, 4)}, r"row 'a': cannot show .*\(3, 4\)"),
        ({"a": torch.zeros(2, 5, 4, 4)}, {}, "row 'a': images must have 1 or 3 channels"),
        ({"a": torch.zeros(2, 1, 1, 4, 4)}, {}, r"row 'a': expected \(N, H, W\)"),
        ({"a": torch.zeros(16)}, {}, r"row 'a': expected a batch"),
        ({"a": torch.zeros(2, 16)}, {"ncols": 0}, "ncols must be a positive integer"),
        ({"a": torch.zeros(2, 16)}, {"vmin": 1.0, "vmax": 1.0}, "need vmin < vmax"),
    ],
)
def test_save_grid_errors(tmp_path, rows, kwargs, match):
    with pytest.raises(NNInvError, match=match):
        save_grid(rows, tmp_path / "e.png", **kwargs)
    assert not (tmp_path / "e.png").exists()


@pytest.mark.parametrize(
    ("shape", "expected"),
    [
        ((28, 28), True),
        ((1, 28, 28), True),
        ((3, 32, 32), True),
        ((4, 4), True),
        ((784,), True),
        ((16,), True),
        ((9,), False),
        ((10,), False),
        ((3, 4), False),
        ((2, 28, 28), False),
        ((1, 3, 28), False),
        ((1, 1, 28, 28), False),
        ((), False),
    ],
)
def test_is_image_shape(shape, expected):
    assert is_image_shape(shape) is expected
    assert is_image_shape(torch.Size(shape)) is expected


#: The issue's closest.png title, once cut at both edges of a 500 px figure.
LONG_TITLE = (
    "closest input of the target class (linf); difference: grey = 0, scaled per image and "
    "shown for every one of the inputs given"
)


def _title_band(img: np.ndarray) -> np.ndarray:
    """Rows above the first image or panel (a dark run of 40 px): where the title is drawn."""
    dark = img.mean(axis=2) < 0.5
    runs = np.zeros(dark.shape[0], dtype=int)
    for r, row in enumerate(dark):
        edges = np.flatnonzero(np.diff(np.concatenate([[0], row.astype(int), [0]])))
        runs[r] = int((edges[1::2] - edges[::2]).max()) if len(edges) else 0
    first_cell = int(np.argmax(runs >= 40))
    return dark[:first_cell]


@pytest.mark.parametrize("n", [1, 2, 4])
def test_title_fits_the_figure(tmp_path, n):
    img = read_png(save_grid({"x": digits(n, 8)}, tmp_path / "t.png", title=LONG_TITLE))
    band = _title_band(img)
    assert band.any(), "no title drawn"
    # no ink in the outer 4 px: the text is inside the figure, not cut at its edges
    assert not band[:, :4].any() and not band[:, -4:].any()
    # the title is wrapped rather than widened without limit
    assert img.shape[1] <= 720


def test_width_follows_the_samples_shown(tmp_path):
    two = read_png(save_grid({"#0": digits(2)}, tmp_path / "two.png", ncols=10))
    ten = read_png(save_grid({"#0": digits(10)}, tmp_path / "ten.png", ncols=10))
    # two samples: two cells and the label, not ten cells with eight blank
    assert two.shape[1] <= 320 and ten.shape[1] >= 1000
    # no blank half: ink reaches into the right third of the figure
    ink = (two.mean(axis=2) > 0.5).any(axis=0)
    assert ink[2 * two.shape[1] // 3 :].any()


def test_save_vectors_heat_strips(tmp_path):
    gen = torch.Generator().manual_seed(0)
    rows = {
        "x0": torch.rand(1, 30, generator=gen),
        "found": torch.rand(5, 30, generator=gen),
        "difference": torch.randn(5, 30, generator=gen),
    }
    out = save_vectors(
        rows,
        tmp_path / "v",
        title=LONG_TITLE,
        diverging=["difference"],
        feature_names=[f"feature {i}" for i in range(30)],
    )
    assert out == tmp_path / "v.png"
    img = read_png(out)
    h, w = img.shape[:2]
    # 30 features across, 11 sample lines in three panels: not a 28x28 grid of cells
    assert 500 <= w <= 900 and 350 <= h <= 800, (w, h)
    band = _title_band(img)
    assert not band[:, :4].any() and not band[:, -4:].any()
    # the diverging panel is red and blue, the shared one viridis (green-yellow-purple)
    red = (img[..., 0] > 0.6) & (img[..., 2] < 0.4) & (img[..., 1] < 0.4)
    blue = (img[..., 2] > 0.6) & (img[..., 0] < 0.4)
    assert red.sum() > 200 and blue.sum() > 200
    wider = read_png(save_vectors({"x": torch.rand(3, 60, generator=gen)}, tmp_path / "w.png"))
    assert wider.shape[1] > read_png(save_vectors({"x": rows["x0"]}, tmp_path / "n.png")).shape[1]


@pytest.mark.parametrize(
    ("rows", "kwargs", "match"),
    [
        ({}, {}, "no rows given"),
        ({"a": torch.zeros(30)}, {}, r"row 'a': expected a batch"),
        ({"a": torch.zeros(2, 30), "b": torch.zeros(2, 29)}, {}, "differ in their number"),
        ({"a": torch.zeros(2, 30)}, {"diverging": ["b"]}, r"rows that do not exist: \['b'\]"),
        ({"a": torch.zeros(2, 3)}, {"feature_names": ["u", "v"]}, "2 feature names for 3"),
        ({"a": torch.zeros(2, 3)}, {"vmin": 1.0, "vmax": 0.0}, "need vmin < vmax"),
    ],
)
def test_save_vectors_errors(tmp_path, rows, kwargs, match):
    with pytest.raises(NNInvError, match=match):
        save_vectors(rows, tmp_path / "e.png", **kwargs)
    assert not (tmp_path / "e.png").exists()


def _capture(monkeypatch):
    """Keep the matplotlib Figure each save writes, to read its texts back."""
    import nninv.figures as figures

    seen = []
    real = figures._save

    def keep(fig, path):
        seen.append(fig)
        return real(fig, path)

    monkeypatch.setattr(figures, "_save", keep)
    return seen


def _texts(fig) -> dict[str, list[str]]:
    axes = fig.axes
    return {
        "rows": [ax.get_ylabel() for ax in axes if ax.get_ylabel()],
        "captions": [ax.get_xlabel() for ax in axes if ax.get_xlabel()],
        "title": [fig._suptitle.get_text()] if fig._suptitle else [],
    }


def test_save_grid_captions_under_images(tmp_path, monkeypatch):
    seen = _capture(monkeypatch)
    save_grid(
        {"original": digits(3), "closest": digits(3)},
        tmp_path / "g.png",
        captions={"original": ["class 1", "class 2", "class 3"], "closest": ["a", "b"]},
    )
    t = _texts(seen[0])
    assert t["captions"] == ["class 1", "class 2", "class 3", "a", "b"]
    with pytest.raises(NNInvError, match="captions for rows not given: nope"):
        save_grid({"a": digits(2)}, tmp_path / "h.png", captions={"nope": ["x"]})


def test_wrapped_title_keeps_a_name_with_its_number(tmp_path, monkeypatch):
    seen = _capture(monkeypatch)
    nb = "\u00a0"
    title = (
        "48 different inputs, one output: max |f(x) - f(x0)| = 2.1e-13 (a 774-dimensional "
        f"set); uniform{nb}R-hat{nb}1.03, gaussian prior{nb}R-hat{nb}1.01"
    )
    save_grid({"x0": digits(2)}, tmp_path / "t.png", title=title)
    lines = _texts(seen[0])["title"][0].split("\n")
    assert len(lines) > 1
    for line in lines:
        assert not line.endswith("R-hat") and not line.startswith(("1.03", "1.01", "hat"))


def test_cli_invert_figure_names_rows_and_classes(tmp_path, monkeypatch):
    import contextlib
    import io

    from torch import nn

    from nninv.cli import main

    seen = _capture(monkeypatch)
    torch.manual_seed(0)
    f = nn.Sequential(nn.Linear(64, 10), nn.Sigmoid())
    torch.jit.script(f).save(str(tmp_path / "m.pt"))
    argv = ["invert", str(tmp_path / "m.pt"), "--target", "class=3,7,1", "--out"]
    with contextlib.redirect_stdout(io.StringIO()):
        assert main([*argv, str(tmp_path / "x.npy")]) == 0
    t = _texts(seen[-1])
    assert t["rows"] == ["inputs 0-2"]
    assert t["captions"] == ["class 3", "class 7", "class 1"]


def test_demo_rows_show_psnr_and_residual():
    from nninv.experiments.seed import MethodResult, _row_label

    r = MethodResult("pinv", torch.zeros(1, 28, 28), 3e-13, 12.34, 0.5, 0.8, 1, 0.1)
    assert _row_label(r) == "pinv\nPSNR 12.3 dB\nres. 3e-13"

"""Tests of nninv.figures: grids written to PNG and read back."""

import sys
from pathlib import Path

import matplotlib
import numpy as np
import pytest
import torch
from matplotlib.image import imread

from nninv._errors import NNInvError
from nninv.figures import is_image_shape, save_grid


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

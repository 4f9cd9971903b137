"""Small and non-image inputs end to end: scikit-learn MLPs on 8x8 digits and 30 features.

Two models as scikit-learn users have them, saved with skops: an
``MLPClassifier`` on scikit-learn's bundled 8x8 digits (64 pixels) and one on the
breast-cancer table (30 features scaled to [0, 1]). Each goes through
``nninv invert`` (analytic and optimize), ``preimage``, ``closest`` and
``diagnose``; the inputs written are checked with the estimator's own
``predict_proba``/``predict``, and the figures by their size and content read
back from the PNG: digits as 8x8 images, the table as heat strips (never a
28x28 grid). Also here: messages that name the file and option, the float32
tol default, and the progress bar's last line.
"""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_breast_cancer, load_digits
from sklearn.neural_network import MLPClassifier

import nninv
from nninv.cli import main
from tolerances import EPS

sio = pytest.importorskip("skops.io")
pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")

CLOSE = EPS[torch.float64]["close"]
SUMMARY = re.compile(r"^method (\w+): (\d+) samples, (\d+) converged, .* \(tol (\S+)\)$", re.M)
ROW = re.compile(r"^\s*(\d+)\s+(\d+)\s+(\d+)\s+(\w+)\s+(\S+)\s+(\S+)\s+\S+$", re.M)


def png_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as im:
        return im.size


def _save(d: Path, est: MLPClassifier, X: np.ndarray, n_train: int) -> dict:
    sio.dump(est, d / "model.skops")
    np.save(d / "train.npy", X[:n_train])
    np.save(d / "x.npy", X[n_train : n_train + 4])
    np.save(d / "y.npy", est.predict_proba(X[n_train : n_train + 2]))
    return {"dir": d, "est": est, "X": X, "n": n_train, "model": d / "model.skops"}


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> dict:
    X, y = load_digits(return_X_y=True)
    X = X / 16.0
    est = MLPClassifier((32,), max_iter=300, random_state=0).fit(X[:1200], y[:1200])
    return _save(tmp_path_factory.mktemp("digits"), est, X, 1200)


@pytest.fixture(scope="module")
def tabular(tmp_path_factory) -> dict:
    X, y = load_breast_cancer(return_X_y=True)
    X = (X - X.min(0)) / (X.max(0) - X.min(0))  # 30 features in [0, 1]
    est = MLPClassifier((16,), max_iter=500, random_state=0).fit(X[:450], y[:450])
    return _save(tmp_path_factory.mktemp("tabular"), est, X, 450)


CASES = ["digits", "tabular"]


@pytest.mark.parametrize("case", CASES)
def test_invert_analytic_reproduces_predict_proba(run_cli, case, request, tmp_path):
    m = request.getfixturevalue(case)
    code, out, err = run_cli(
        ["invert", m["model"], "--outputs", m["dir"] / "y.npy",
         "--prior-data", m["dir"] / "train.npy", "--out", tmp_path / "x.npy"]
    )  # fmt: skip
    assert code == 0, out + err
    method, n, ok, tol = SUMMARY.search(out).groups()
    assert (method, n, ok, tol) == ("analytic", "2", "2", "1e-5")
    x = np.load(tmp_path / "x.npy")
    d = m["X"].shape[1]
    assert x.shape == (2, d)
    np.testing.assert_allclose(
        m["est"].predict_proba(x), np.load(m["dir"] / "y.npy"), atol=CLOSE, rtol=0
    )
    w, h = png_size(tmp_path / "x.png")
    if case == "digits":  # two 8x8 images, as wide as two cells and the title
        assert 250 <= w <= 500 and 100 <= h <= 200, (w, h)
    else:  # heat strips over 30 features
        assert 450 <= w <= 800 and 100 <= h <= 300, (w, h)


@pytest.mark.parametrize("case", CASES)
def test_invert_class_target(run_cli, case, request, tmp_path):
    m = request.getfixturevalue(case)
    labels = [3, 7] if case == "digits" else [0, 1]
    code, out, err = run_cli(
        ["invert", m["model"], "--target", f"class={labels[0]},{labels[1]}", "--samples", "2",
         "--bounds", "0,1", "--out", tmp_path / "x.npy"]
    )  # fmt: skip
    assert code == 0, out + err
    assert SUMMARY.search(out).groups()[:3] == ("optimize", "4", "4")
    x = np.load(tmp_path / "x.npy")
    assert x.min() >= 0 and x.max() <= 1
    assert m["est"].predict(x).tolist() == [labels[0]] * 2 + [labels[1]] * 2
    assert (tmp_path / "x.png").is_file()


@pytest.mark.parametrize("case", CASES)
def test_preimage_members_reproduce_the_output(run_cli, case, request, tmp_path):
    m = request.getfixturevalue(case)
    code, out, err = run_cli(
        ["preimage", m["model"], "--input", m["dir"] / "x.npy", "--prior-data",
         m["dir"] / "train.npy", "--n", "4", "--thin", "5", "--out", tmp_path]
    )  # fmt: skip
    assert code == 0, out + err
    assert "kind 'piece'" in out  # a ReLU net: the piece around x0
    members = np.load(tmp_path / "members.npy")
    assert members.shape == (8, m["X"].shape[1])  # uniform and prior rows
    x0 = m["X"][m["n"] : m["n"] + 1]
    np.testing.assert_allclose(
        m["est"].predict_proba(members),
        np.repeat(m["est"].predict_proba(x0), len(members), 0),
        atol=CLOSE,
        rtol=0,
    )
    # the members differ from x0 and from each other
    assert np.abs(members - x0).max() > 0.05
    assert np.linalg.norm(members[0] - members[1]) > 0.05
    w, h = png_size(tmp_path / "preimage.png")
    # rows: x0, uniform, prior, prior - mean; 4 cells of 8x8 images or 30-feature strips
    assert 350 <= w <= 800 and 300 <= h <= 800, (w, h)


@pytest.mark.parametrize("case", CASES)
def test_closest_answers_are_in_class(run_cli, case, request, tmp_path):
    m = request.getfixturevalue(case)
    code, out, err = run_cli(
        ["closest", m["model"], "--input", m["dir"] / "x.npy", "--count", "2",
         "--out", tmp_path]
    )  # fmt: skip
    assert code == 0, out + err
    rows = ROW.findall(out)
    assert len(rows) == 2, out
    found = np.load(tmp_path / "closest.npy")
    x0 = m["X"][m["n"] : m["n"] + 2]
    for (_, _, target, status, dist, bound), x, x_orig in zip(rows, found, x0, strict=True):
        assert status == "optimal", out
        assert m["est"].predict(x[None])[0] == int(target)
        d = float(np.abs(x - x_orig).max())
        assert abs(d - float(dist)) <= 1e-3 * d
        # both printed to 4 significant digits
        assert float(bound) * (1 - 1e-3) <= d <= float(bound) * (1 + 1e-4) + 1e-6 + 1e-3 * d
    w, h = png_size(tmp_path / "closest.png")
    assert w >= 300 and h >= 200


@pytest.mark.parametrize("case", CASES)
def test_diagnose(run_cli, case, request):
    m = request.getfixturevalue(case)
    code, out, err = run_cli(["diagnose", m["model"], "--data", m["dir"] / "train.npy"])
    assert code == 0, out + err
    d = m["X"].shape[1]
    assert f"The model maps {d} inputs to 2 outputs" in out or f"maps {d} inputs" in out


def test_nan_input_is_named_before_any_table(run_cli, digits, tmp_path):
    x = np.load(digits["dir"] / "x.npy")
    x[1, 5] = np.nan
    bad = tmp_path / "xnan.npy"
    np.save(bad, x)
    for command in ("closest", "preimage"):
        code, out, err = run_cli([command, digits["model"], "--input", bad, "--out", tmp_path])
        assert code == 2 and out == "", out
        assert re.fullmatch(
            rf"nninv {command}: error: --input \S*xnan\.npy: row 1 contains NaN "
            r"\(at index \(1, 5\); 1 value\(s\) are not finite\); expected finite numbers\n",
            err,
        ), err


def test_float32_torchscript_uses_the_documented_tol(run_cli, tmp_path):
    gen = torch.Generator().manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(6, 4), torch.nn.Tanh(), torch.nn.Linear(4, 3))
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=gen))
    path = tmp_path / "m.pt"
    torch.jit.save(torch.jit.script(net.eval()), str(path))
    x = torch.rand(3, 6, generator=gen)
    with torch.no_grad():
        np.save(tmp_path / "y.npy", net(x).double().numpy())  # a float64 file
    code, out, err = run_cli(
        ["invert", path, "--outputs", tmp_path / "y.npy", "--input-shape", "6",
         "--out", tmp_path / "x.npy"]
    )  # fmt: skip
    assert code == 0, out + err
    assert SUMMARY.search(out).group(4) == "1e-4"
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), pytest.raises(SystemExit):
        main(["invert", "--help"])
    assert "1e-4 for a float32" in " ".join(buf.getvalue().split())


def test_progress_bar_ends_with_one_line(digits, capsys):
    inv = nninv.invert(digits["est"], nninv.ClassTarget([1, 2]), method="optimize", progress=True)
    assert inv.converged.all()
    err = capsys.readouterr().err
    assert err.endswith("\n") and err.count("\n") == 1, repr(err)
    last = err.rstrip("\n").split("\r")[-1]
    assert last.startswith("nninv optimize: ") and f" {inv.iterations}it " in last

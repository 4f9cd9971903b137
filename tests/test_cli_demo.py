"""Tests of ``nninv demo`` and the experiment code behind it (``nninv.experiments.seed``)."""

from __future__ import annotations

import contextlib
import io
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from matplotlib.image import imread

from nninv.cli import main
from nninv.experiments import seed as _demo
from tolerances import EPS

METHOD_ROWS = ("originals", "pinv", "gaussian", "mixture", "decoder")


@pytest.fixture(scope="module")
def quick_run(run_cli, tmp_path_factory: pytest.TempPathFactory) -> tuple[int, str, str, Path]:
    out_dir = tmp_path_factory.mktemp("demo") / "figs"
    code, out, err = run_cli(["demo", "--quick", "--out", str(out_dir)])
    return code, out, err, out_dir


def table_rows(text: str) -> dict[str, list[str]]:
    return {
        line.split()[0]: line.split()
        for line in text.splitlines()
        if line.split() and line.split()[0] in METHOD_ROWS
    }


def test_quick_demo_succeeds(quick_run):
    code, out, _, _ = quick_run
    assert code == 0, out
    assert "nninv demo: mnist5k (quick), seed 0" in out


@pytest.mark.parametrize("name", ["inversions.png", "reverse.png"])
def test_quick_demo_writes_nontrivial_figures(quick_run, name):
    _, out, _, out_dir = quick_run
    path = out_dir / name
    assert path.is_file()
    assert str(path) in out  # the demo says where the figures went
    img = imread(path)
    assert img.ndim == 3 and img.shape[0] >= 100 and img.shape[1] >= 400
    grey = img[..., :3].mean(-1)
    assert float(grey.std()) > 0.1  # digits on a white page, not a blank image
    assert float(grey.min()) < 0.1 and float(grey.max()) > 0.9


def test_quick_demo_table_lists_every_method(quick_run):
    _, out, _, _ = quick_run
    rows = table_rows(out)
    assert set(rows) == set(METHOD_ROWS)
    assert re.search(r"method\s+max residual\s+PSNR \(dB\)\s+SSIM\s+clf acc", out)


def test_quick_demo_residuals_are_rounding(quick_run):
    _, out, _, _ = quick_run
    rows = table_rows(out)
    for name in ("pinv", "gaussian", "mixture", "decoder"):
        assert float(rows[name][1]) <= EPS[torch.float64]["residual"], rows[name]


def test_quick_demo_priors_beat_pinv(quick_run):
    _, out, _, _ = quick_run
    rows = table_rows(out)
    db = {name: float(rows[name][2]) for name in ("pinv", "gaussian", "mixture")}
    assert db["pinv"] < db["gaussian"] <= db["mixture"] + 0.5
    assert rows["originals"][2] == "inf"


def test_quick_demo_reverse_experiment_is_exact(quick_run):
    _, out, _, _ = quick_run
    line = next(line for line in out.splitlines() if "max |c_hat - e_k|" in line)
    assert "class accuracy 100% (10/10)" in line
    err = float(re.search(r"max \|c_hat - e_k\| = (\S+),", line).group(1))
    assert err <= EPS[torch.float64]["close"]


def test_quick_demo_shows_progress_on_stderr(quick_run):
    _, _, err, _ = quick_run
    assert "training f (784->10)" in err


def test_unknown_dataset_exits_2_with_one_line(tmp_path, capsys):
    code = main(["demo", "--dataset", "nosuch", "--out", str(tmp_path / "out")])
    captured = capsys.readouterr()
    assert code == 2
    msg = captured.err.strip()
    assert "\n" not in msg
    assert msg.startswith("nninv demo: error:")
    assert "'nosuch'" in msg and "mnist5k" in msg and "mnist" in msg


def test_mnist_missing_data_dir_exits_2_naming_it(tmp_path, capsys):
    missing = tmp_path / "no-mnist-here"
    code = main(
        ["demo", "--dataset", "mnist", "--data-dir", str(missing), "--out", str(tmp_path / "out")]
    )
    captured = capsys.readouterr()
    assert code == 2
    msg = captured.err.strip()
    assert "\n" not in msg
    assert str(missing) in msg


def test_mnist_folder_without_files_exits_2_naming_it(tmp_path, capsys):
    code = main(
        ["demo", "--dataset", "mnist", "--data-dir", str(tmp_path), "--out", str(tmp_path / "out")]
    )
    msg = capsys.readouterr().err.strip()
    assert code == 2
    assert "\n" not in msg and str(tmp_path) in msg


def test_mnist_without_data_dir_and_none_found_exits_2(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(_demo, "default_mnist_dir", lambda: None)
    code = main(["demo", "--dataset", "mnist", "--out", str(tmp_path / "out")])
    msg = capsys.readouterr().err.strip()
    assert code == 2
    assert "\n" not in msg and "--data-dir" in msg


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["--dataset", "mnist5k", "--data-dir", "somewhere"], "--data-dir"),
        (["--components", "0"], "--components"),
    ],
)
def test_bad_options_exit_2(argv, needle, tmp_path, capsys):
    code = main(["demo", *argv, "--out", str(tmp_path / "out")])
    msg = capsys.readouterr().err.strip()
    assert code == 2
    assert needle in msg


def test_console_script_demo_help():
    script = Path(sys.executable).parent / "nninv"
    if not script.is_file():
        pytest.skip(f"console script not installed next to {sys.executable}")
    proc = subprocess.run(
        [str(script), "demo", "--help"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    for option in ("--dataset", "--data-dir", "--out", "--quick", "--seed", "--components"):
        assert option in proc.stdout


def test_reverse_experiment_recovers_codes_exactly():
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(10).repeat(20)
    images = torch.rand(200, 1, 8, 8, generator=g) * 0.5 + labels[:, None, None, None] / 20
    rev = _demo.reverse_experiment(images, labels, epochs=2)
    assert rev.images.shape == (10, 1, 8, 8)
    assert rev.accuracy == 1.0
    assert rev.max_error <= EPS[torch.float64]["close"]
    assert rev.residual <= EPS[torch.float64]["residual"]


def test_format_table_layout():
    row = _demo.MethodResult("pinv", torch.zeros(1), 1.5e-15, 11.234, 0.1234, 0.5, 1, 0.25)
    orig = _demo.MethodResult("originals", torch.zeros(1), 0.0, float("inf"), 1.0, 0.9, 1, 0.0)
    lines = _demo.format_table([orig, row]).splitlines()
    assert lines[0].split()[:3] == ["method", "max", "residual"]
    assert lines[2].split() == ["originals", "-", "inf", "1.000", "90.0%", "-"]
    assert lines[3].split() == ["pinv", "1.5e-15", "11.23", "0.123", "50.0%", "0.25"]


def test_training_is_seeded():
    x = torch.rand(300, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    y = torch.arange(10).repeat(30)
    a = _demo.train_seed_model(x, y, epochs=1, seed=3)
    b = _demo.train_seed_model(x, y, epochs=1, seed=3)
    np.testing.assert_array_equal(a[0].weight.detach().numpy(), b[0].weight.detach().numpy())


def _help(command: str) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        main([command, "--help"])
    return out.getvalue()


def test_help_texts_are_true():
    invert_help = _help("invert")
    # the example's line continuation is shown, not swallowed into a run of spaces
    assert not re.search(r"--samples 8 {2,}--prior", invert_help)
    assert "--samples 8 \\\n" in invert_help
    for command in ("diagnose", "train-decoder", "train-flow", "posterior", "invert"):
        assert ".skops" in _help(command), command
    demo = _help("demo")
    assert "decoder" in demo and "--decoder-epochs" in demo
    # --components has one default everywhere: the CLI's, README's and the demo's 20
    assert "(default: 20" in invert_help and "(default: 20" in _help("preimage")
    assert _demo.DemoConfig().components == 20
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert "opens the browser" not in readme and "open the browser" not in readme


def test_demo_unknown_dataset_prints_only_its_error(run_cli):
    code, out, err = run_cli(["demo", "--dataset", "nope"])
    assert code == 2 and out == ""
    assert "unknown data set 'nope'" in err

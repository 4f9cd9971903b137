"""Tests of the ``nninv preimage`` and ``nninv closest`` sub-commands."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nninv.cli import main


def test_preimage_figure_offline(tmp_path, capsys):
    out = tmp_path / "figs"
    code = main(
        ["preimage", "--dataset", "digits8x8", "--n", "4", "--burn", "20", "--thin", "2",
         "--out", str(out)]
    )  # fmt: skip
    assert code == 0
    assert (out / "preimage.png").stat().st_size > 0
    members = np.load(out / "members.npy")
    assert members.shape[1] == 64 and len(members) >= 4 + 4
    text = capsys.readouterr().out
    assert "dimension 54" in text and "uniform (billiard)" in text


def test_preimage_figure_reproduces_the_output(tmp_path):
    """Every member written reproduces the output of x0 (the pigeonhole argument)."""
    from nninv.datasets import load_embedded
    from nninv.experiments.seed import train_seed_model

    out = tmp_path / "f"
    argv = ["preimage", "--dataset", "digits8x8", "--n", "3", "--prior", "none", "--burn",
            "10", "--thin", "2", "--seed", "1", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    ds = load_embedded("digits8x8")
    train, test = ds.split(min(1000, len(ds) // 5), 1)
    model = train_seed_model(train.images, train.labels, seed=1).double()
    members = torch.from_numpy(np.load(out / "members.npy"))
    with torch.no_grad():
        y = model(test.flat()[:1].double())
        assert float((model(members) - y).abs().max()) < 1e-9


def test_closest_figure_offline(tmp_path, capsys):
    out = tmp_path / "c"
    code = main(
        ["closest", "--dataset", "digits8x8", "--count", "2", "--eps", "0.3", "--out", str(out)]
    )
    assert code == 0
    assert (out / "closest.png").stat().st_size > 0
    found = np.load(out / "closest.npy")
    assert found.shape == (2, 64)
    text = capsys.readouterr().out
    assert "status" in text and any(s in text for s in ("optimal", "infeasible"))


@pytest.mark.parametrize(
    "argv, message",
    [
        (["preimage", "--n", "0"], "--n must be"),
        (["preimage", "--bounds", "1,0"], "LO < HI"),
        (["preimage", "--input", "x.npy"], "needs MODEL"),
        (["preimage", "--dataset", "nope"], "unknown data set"),
        (["closest", "--target", "three"], "class=K"),
        (["closest", "--count", "0"], "--count must be"),
        (["closest", "missing.onnx"], "--input"),
    ],
)
def test_usage_errors_exit_2(argv, message, capsys, tmp_path):
    assert main([*argv, "--out", str(tmp_path)]) == 2
    assert message in capsys.readouterr().err

"""Streamed inversion of a .npy of outputs (nninv.distributed.invert_file) and its CLI path."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import nninv
import nninv.distributed.stream as stream
from nninv import NNInvError
from nninv.distributed import invert_file
from tolerances import EPS


def _outputs(tmp_path, model, n=23, dtype=torch.float64):
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        y = model(torch.rand(n, 12, generator=g, dtype=dtype)).numpy()
    path = tmp_path / "y.npy"
    np.save(path, y)
    return path, y


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_stream_matches_one_call(seed_model, tmp_path, dtype):
    f = seed_model(dtype, 12, 4)
    path, y = _outputs(tmp_path, f, dtype=dtype)
    res = invert_file(f, path, tmp_path / "x.npy", "pinv", batch_size=5, progress=False)
    whole = nninv.invert(f, torch.from_numpy(y), "pinv")
    x = np.load(res.x_path)
    assert x.shape == (23, 12) and x.dtype == y.dtype
    assert np.abs(x - whole.x.numpy()).max() <= EPS[dtype]["close"]
    assert np.load(res.residual_path).max() <= EPS[dtype]["residual"]
    assert np.load(res.converged_path).all() and res.n_converged == res.n == 23
    assert res.resumed_from == 0 and res.method == "pinv"


def test_resume_after_interrupt_equals_uninterrupted(seed_model, tmp_path, monkeypatch):
    f = seed_model(n=12, m=4)
    path, _ = _outputs(tmp_path, f)
    full = invert_file(f, path, tmp_path / "full.npy", "pinv", batch_size=4, progress=False)
    real, calls = stream.invert_batch, []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) > 3:  # the run is cut after k = 3 batches
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(stream, "invert_batch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        invert_file(f, path, tmp_path / "part.npy", "pinv", batch_size=4, progress=False)
    monkeypatch.setattr(stream, "invert_batch", real)
    # a row half written when the process died is cut off, not read as a result
    with open(tmp_path / "part.npy", "ab") as fh:
        fh.write(b"\x00" * 20)
    with pytest.raises(ValueError):
        np.load(tmp_path / "part.npy")  # incomplete: the header promises 23 rows
    res = invert_file(
        f, path, tmp_path / "part.npy", "pinv", batch_size=4, resume=True, progress=False
    )
    assert res.resumed_from == 12
    for a, b in [("part", "full"), ("part.residual", "full.residual")]:
        assert np.array_equal(np.load(tmp_path / f"{a}.npy"), np.load(tmp_path / f"{b}.npy"))
    assert np.array_equal(np.load(res.converged_path), np.load(full.converged_path))


def test_resume_refuses_a_different_run(seed_model, tmp_path):
    f = seed_model(n=12, m=4)
    path, y = _outputs(tmp_path, f)
    invert_file(f, path, tmp_path / "x.npy", "pinv", batch_size=8, progress=False)
    np.save(tmp_path / "y2.npy", y[:10])
    with pytest.raises(NNInvError, match=r"different run \(outputs.*n: 23 != 10"):
        invert_file(f, tmp_path / "y2.npy", tmp_path / "x.npy", "pinv", resume=True)
    meta = json.loads((tmp_path / "x.json").read_text())
    assert meta["n"] == 23 and meta["method_used"] == "pinv"


def test_resume_of_a_finished_run_does_nothing(seed_model, tmp_path, monkeypatch):
    f = seed_model(n=12, m=4)
    path, _ = _outputs(tmp_path, f)
    first = invert_file(f, path, tmp_path / "x.npy", "pinv", batch_size=8, progress=False)
    monkeypatch.setattr(stream, "invert_batch", None)  # calling it would fail
    again = invert_file(f, path, tmp_path / "x.npy", "pinv", resume=True, progress=False)
    assert again.resumed_from == 23 and again.n_converged == first.n_converged == 23


def test_stream_errors_name_the_problem(seed_model, tmp_path):
    f = seed_model(n=12, m=4)
    path, y = _outputs(tmp_path, f)
    with pytest.raises(NNInvError, match="batch_size must be a positive integer"):
        invert_file(f, path, tmp_path / "x.npy", batch_size=0)
    with pytest.raises(NNInvError, match="does not exist"):
        invert_file(f, tmp_path / "none.npy", tmp_path / "x.npy")
    np.save(tmp_path / "wide.npy", np.full((3, 5), 0.5))
    with pytest.raises(NNInvError, match=r"shape \(3, 5\).*\(N, 4\)"):
        invert_file(f, tmp_path / "wide.npy", tmp_path / "x.npy")
    y[9, 2] = np.nan
    np.save(tmp_path / "nan.npy", y)
    with pytest.raises(NNInvError, match=r"nan\.npy', rows 8\.\.15"):
        invert_file(f, tmp_path / "nan.npy", tmp_path / "x.npy", "pinv", batch_size=8)


def test_cli_streams_and_resumes(run_cli, seed_model, tmp_path):
    f = seed_model(n=12, m=4)
    model = tmp_path / "f.pt"
    torch.jit.save(torch.jit.script(f.eval()), str(model))
    path, y = _outputs(tmp_path, f)
    code, out, err = run_cli(
        ["invert", model, "--outputs", path, "--method", "pinv", "--batch-size", 5,
         "--out", tmp_path / "x.npy"]
    )  # fmt: skip
    assert code == 0, err
    assert "23 samples, 23 converged" in out and "x.residual.npy" in out
    x = np.load(tmp_path / "x.npy")
    assert np.abs(x - nninv.invert(f, torch.from_numpy(y), "pinv").x.numpy()).max() <= 1e-9
    code, out, _ = run_cli(
        ["invert", model, "--outputs", path, "--method", "pinv", "--resume",
         "--out", tmp_path / "x.npy"]
    )  # fmt: skip
    assert code == 0 and "resumed after 23 rows" in out


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--address", "auto"], "--address applies to --ray"),
        (["--batch-size", "0"], "--batch-size must be a positive integer"),
        (["--ray", "--resume"], "--resume applies to streamed runs"),
    ],
)
def test_cli_scale_option_errors(run_cli, seed_model, tmp_path, extra, message):
    f = seed_model(n=12, m=4)
    model = tmp_path / "f.pt"
    torch.jit.save(torch.jit.script(f.eval()), str(model))
    path, _ = _outputs(tmp_path, f)
    if "--ray" in extra:
        pytest.importorskip("ray", reason="the --ray checks need ray installed")
    code, _, err = run_cli(["invert", model, "--outputs", path, *extra, "--out", tmp_path / "x"])
    assert code == 2 and message in err


def test_cli_target_with_batch_size_is_refused(run_cli, seed_model, tmp_path):
    f = seed_model(n=12, m=4)
    model = tmp_path / "f.pt"
    torch.jit.save(torch.jit.script(f.eval()), str(model))
    code, _, err = run_cli(
        ["invert", model, "--target", "class=1", "--batch-size", 4, "--out", tmp_path / "x"]
    )
    assert code == 2 and "invert --outputs, not --target" in err


@pytest.mark.parametrize("streamed", [False, True])
def test_cli_refuses_to_overwrite_a_result(tmp_path, streamed, run_cli, seed_model):
    f = seed_model(n=12, m=4)
    model = tmp_path / "f.pt"
    torch.jit.save(torch.jit.script(f.eval()), str(model))
    path, _ = _outputs(tmp_path, f)
    argv = ["invert", model, "--outputs", path, "--method", "pinv", "--out", tmp_path / "x.npy"]
    if streamed:
        argv += ["--batch-size", 5]
    assert run_cli(argv)[0] == 0
    before = (tmp_path / "x.npy").stat().st_mtime_ns
    code, _, err = run_cli(argv)
    assert code == 2 and "already exists; pass --overwrite to replace it" in err
    assert (tmp_path / "x.npy").stat().st_mtime_ns == before
    code, _, err = run_cli([*argv, "--overwrite"])
    assert code == 0, err

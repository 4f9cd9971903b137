"""Tests of nninv.learned.Decoder and method="decoder": fit, exact projection, files, errors."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from torch import nn

import nninv
from nninv import NNInvError
from nninv.cli import main
from nninv.learned import Decoder
from tolerances import EPS

F64 = torch.float64

# torch 2.13 deprecates torch.jit.save/load, which the CLI tests use to write model files
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")


def _data(n: int = 600, d: int = 24, seed: int = 0) -> torch.Tensor:
    """Structured inputs in [0, 1]: a few smooth factors, so a decoder has something to learn."""
    g = torch.Generator().manual_seed(seed)
    z = torch.rand(n, 3, generator=g, dtype=F64)
    basis = torch.rand(3, d, generator=g, dtype=F64)
    return ((z @ basis) / 3 + 0.05 * torch.rand(n, d, generator=g, dtype=F64)).clamp(0, 1)


@pytest.fixture(scope="module")
def seed_model(seed_model) -> nn.Module:
    """Here one seed model, 24 -> 4, made by conftest's builder of the same name."""
    return seed_model(n=24, m=4, seed=1).eval().requires_grad_(False)


@pytest.fixture(scope="module")
def X() -> torch.Tensor:
    return _data()


@pytest.fixture(scope="module")
def dec(seed_model, X) -> Decoder:
    # plain MSE (the default is log_mse): test_log_mse_loss_weighs_samples_equally compares them
    return Decoder.fit(seed_model, X, hidden=(64, 64), epochs=40, loss="mse", progress=False)


def test_fit_learns_and_keeps_shapes(dec, seed_model, X):
    assert dec.input_shape == (24,) and dec.output_shape == (4,)
    assert dec.config["arch"] == "mlp" and dec.config["box"] == [0.0, 1.0]
    assert dec.history[-1] < 0.5 * dec.history[0]
    x = dec(seed_model(X[:8]))
    assert x.shape == (8, 24) and x.dtype == F64
    assert bool(((x >= 0) & (x <= 1)).all())
    # better than the data's mean as a guess
    err = (x - X[:8]).pow(2).mean()
    assert err < (X[:8] - X.mean(0)).pow(2).mean()


def test_log_mse_loss_weighs_samples_equally(dec, seed_model, X):
    """The PSNR-oriented loss trains too, and gives a higher mean PSNR on held-in data than MSE."""
    from nninv.metrics import psnr

    dec_log = Decoder.fit(seed_model, X, hidden=(64, 64), epochs=40, loss="log_mse", progress=False)
    assert dec_log.history[-1] < dec_log.history[0]
    y = seed_model(X)
    p_mse = float(psnr(dec(y), X).mean())
    p_log = float(psnr(dec_log(y), X).mean())
    # same data and budget: measured 30.7 against 27.2 dB (seeds 0-2: +3.1 to +3.9 dB)
    assert p_log > p_mse + 1.0


def test_projection_is_exact_in_float64(dec, seed_model, X):
    y = seed_model(X[-20:])
    inv = nninv.invert(seed_model, y, method="decoder", decoder=dec)
    assert inv.method == "decoder" and bool(inv.converged.all())
    assert float(inv.residual.max()) <= EPS[F64]["residual"]
    # the projection is what buys the exactness
    assert float(inv.info["raw_residual"].min()) > 1e3 * float(inv.residual.max())


def test_projection_is_the_most_probable_member_for_the_seed_model(dec, seed_model, X):
    """For sigmoid(W x + b) the answer is, in closed form, the point of {W x = logit(y) - b}
    nearest to g(y) in the metric Sigma^-1: g + Sigma W^T (W Sigma W^T)^-1 (t - W g)."""
    y = seed_model(X[:6])
    inv = nninv.invert(seed_model, y, method="decoder", decoder=dec)
    W, b = seed_model[0].weight, seed_model[0].bias
    S = dec.error.covariance
    g = dec(y)
    t = torch.logit(y) - b
    want = g + (S @ W.T @ torch.linalg.solve(W @ S @ W.T, (t - g @ W.T).T)).T
    assert (inv.x - want).abs().max() <= EPS[F64]["close"]


def test_deep_model_float32(X):
    torch.manual_seed(2)
    f = nn.Sequential(nn.Linear(24, 16), nn.Tanh(), nn.Linear(16, 3), nn.Sigmoid()).eval()
    f.requires_grad_(False)
    Xf = X.float()
    dec = Decoder.fit(f, Xf, hidden=(64,), epochs=30, progress=False)
    y = f(Xf[:32])
    inv = nninv.invert(f, y, method="decoder", decoder=dec)
    assert inv.x.dtype == torch.float32
    assert float(inv.residual.max()) <= EPS[torch.float32]["residual"]
    assert bool(inv.converged.all())


def test_bounds_hold(dec, seed_model, X):
    y = seed_model(X[:10])
    inv = nninv.invert(seed_model, y, method="decoder", decoder=dec, bounds=(0.0, 1.0))
    assert bool(((inv.x >= 0) & (inv.x <= 1)).all())
    assert float(inv.residual[inv.converged].max()) <= EPS[F64]["residual"]


def test_unreachable_target_is_reported(dec, seed_model, X):
    """A target outside what [0, 1]^24 can reach: reported, never claimed."""
    y = torch.full((1, 4), 1 - 1e-12, dtype=F64)
    inv = nninv.invert(seed_model, y, method="decoder", decoder=dec, bounds=(0.0, 1.0))
    assert not bool(inv.converged[0])
    assert "residual" in inv.info["reasons"][0]


def test_conv_head_for_images():
    torch.manual_seed(3)
    f = nn.Sequential(nn.Flatten(), nn.Linear(64, 5), nn.Softmax(dim=1)).eval()
    X = torch.rand(200, 1, 8, 8)
    assert Decoder.fit(f, X, hidden=(8,), epochs=1, progress=False).config["arch"] == "mlp"
    dec = Decoder.fit(f, X, arch="auto", hidden=(32,), epochs=2, progress=False)
    assert dec.config["arch"] == "conv"
    assert dec(f(X[:3])).shape == (3, 1, 8, 8)


def test_conv_model_takes_the_decoders_input_shape():
    """A CNN does not tell its input shape; invert takes the decoder's."""
    torch.manual_seed(4)
    f = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Tanh(), nn.Flatten(), nn.Linear(72, 3)).double()
    f = f.eval().requires_grad_(False)
    X = torch.rand(300, 1, 8, 8, dtype=F64)
    dec = Decoder.fit(f, X, hidden=(32,), epochs=3, progress=False)
    inv = nninv.invert(f, f(X[:4]), method="decoder", decoder=dec)
    assert inv.x.shape == (4, 1, 8, 8)
    assert float(inv.residual.max()) <= EPS[F64]["residual"]


def test_save_load_round_trip(dec, seed_model, X, tmp_path):
    path = dec.save(tmp_path / "dec.safetensors")
    back = Decoder.load(path)
    y = seed_model(X[:5])
    assert torch.equal(back(y), dec(y))
    assert torch.equal(back.error.covariance, dec.error.covariance)
    assert back.config == dec.config
    # and it inverts the same
    a = nninv.invert(seed_model, y, method="decoder", decoder=dec)
    b = nninv.invert(seed_model, y, method="decoder", decoder=back)
    assert torch.equal(a.x, b.x)


@pytest.mark.parametrize("damage", ["truncated", "random", "empty", "other-safetensors"])
def test_damaged_files_are_named(dec, tmp_path, damage):
    from safetensors.torch import save_file

    good = dec.save(tmp_path / "good.safetensors").read_bytes()
    path = tmp_path / "bad.safetensors"
    if damage == "truncated":
        path.write_bytes(good[: len(good) // 2])
    elif damage == "random":
        path.write_bytes(np.random.default_rng(0).bytes(2048))
    elif damage == "empty":
        path.write_bytes(b"")
    else:
        save_file({"w": torch.zeros(3)}, str(path))
    with pytest.raises(NNInvError, match="bad.safetensors"):
        Decoder.load(path)


def test_missing_file():
    with pytest.raises(NNInvError, match="does not exist"):
        Decoder.load("/nonexistent/dec.safetensors")


def test_decoder_for_another_model_names_the_shapes(dec, X):
    other = nn.Sequential(nn.Linear(24, 5), nn.Sigmoid()).double().eval()
    y = other(X[:2]).detach()
    with pytest.raises(NNInvError, match=r"outputs \(4,\).*outputs \(5,\)"):
        nninv.invert(other, y, method="decoder", decoder=dec)


def test_decoder_for_another_model_of_the_same_shapes_is_refused(dec, seed_model, X, tmp_path):
    """Issue 27 item 9: the decoder records the model it was trained for and refuses another."""
    torch.manual_seed(7)
    other = nn.Sequential(nn.Linear(24, 4), nn.Sigmoid()).double().eval()
    y = other(X[:2]).detach()
    with pytest.raises(NNInvError, match="trained for another model of the same shapes"):
        nninv.invert(other, y, method="decoder", decoder=dec)
    back = Decoder.load(dec.save(tmp_path / "dec.safetensors"))
    assert torch.equal(back.model_outputs, dec.model_outputs)
    with pytest.raises(NNInvError, match="trained for another model of the same shapes"):
        back.check_model((24,), (4,), other)
    # its own model passes, in float32 and through TorchScript as well
    back.check_model((24,), (4,), seed_model)
    back.check_model((24,), (4,), torch.jit.script(copy.deepcopy(seed_model).float()))


def test_file_without_model_record_still_loads(dec, seed_model, X, tmp_path):
    """Files written before the record: they load, and are checked by shape only."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    path = dec.save(tmp_path / "dec.safetensors")
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    tensors = load_file(str(path))
    del tensors["model.outputs"]
    save_file(tensors, str(tmp_path / "old.safetensors"), metadata=meta)
    old = Decoder.load(tmp_path / "old.safetensors")
    assert old.model_outputs is None
    torch.manual_seed(7)
    other = nn.Sequential(nn.Linear(24, 4), nn.Sigmoid()).double().eval()
    old.check_model((24,), (4,), other)  # no record: accepted, as before
    y = seed_model(X[:3])
    assert torch.equal(old(y), dec(y))


def test_saved_files_follow_the_umask(dec, tmp_path):
    import os

    old = os.umask(0o022)
    try:
        path = dec.save(tmp_path / "sub" / "dec.safetensors")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({}, "needs decoder"),
        ({"decoder": "dec.safetensors"}, "must be a nninv.learned.Decoder"),
        ({"max_iter": 0}, "max_iter"),
        ({"bounds": (1.0, 0.0)}, "lo < hi"),
    ],
)
def test_option_errors(dec, seed_model, X, kwargs, match):
    kw = {"decoder": dec, **kwargs}
    if kwargs == {}:
        kw = {}
    with pytest.raises(NNInvError, match=match):
        nninv.invert(seed_model, seed_model(X[:2]), method="decoder", **kw)


def test_class_target_is_refused(dec, seed_model):
    with pytest.raises(NNInvError, match="exact outputs"):
        nninv.invert(seed_model, nninv.ClassTarget([1]), method="decoder", decoder=dec)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"arch": "gan"}, "arch"),
        ({"arch": "conv"}, "divisible by 4"),
        ({"epochs": 0}, "epochs"),
        ({"holdout": 0.9}, "holdout"),
        ({"hidden": ()}, "hidden"),
        ({"box": (1.0, 0.0)}, "box"),
        ({"loss": "l1"}, "loss must be one of"),
    ],
)
def test_fit_option_errors(seed_model, X, kwargs, match):
    with pytest.raises(NNInvError, match=match):
        Decoder.fit(seed_model, X, progress=False, **kwargs)


def test_fit_data_errors(seed_model, X):
    bad = X.clone()
    bad[3, 2] = math.nan
    with pytest.raises(NNInvError, match="NaN"):
        Decoder.fit(seed_model, bad, progress=False)
    with pytest.raises(NNInvError, match="N >= 10"):
        Decoder.fit(seed_model, X[:5], progress=False)
    with pytest.raises(NNInvError, match="model fails"):
        Decoder.fit(seed_model, torch.rand(50, 7, dtype=F64), progress=False)
    with pytest.raises(NNInvError, match="Module"):
        Decoder.fit("model.onnx", X, progress=False)


def test_cli_train_and_invert(tmp_path, seed_model, X, capsys):
    with torch.no_grad():
        torch.jit.save(torch.jit.script(seed_model.float()), str(tmp_path / "m.pt"))
    seed_model.double()
    np.save(tmp_path / "X.npy", X.float().numpy())
    np.save(tmp_path / "y.npy", seed_model(X[:7]).float().numpy())
    rc = main(
        [
            "train-decoder", str(tmp_path / "m.pt"), "--data", str(tmp_path / "X.npy"),
            "--out", str(tmp_path / "dec.safetensors"), "--hidden", "64", "--epochs", "20",
        ]
    )  # fmt: skip
    assert rc == 0 and (tmp_path / "dec.safetensors").is_file()
    rc = main(
        [
            "invert", str(tmp_path / "m.pt"), "--outputs", str(tmp_path / "y.npy"),
            "--decoder", str(tmp_path / "dec.safetensors"), "--out", str(tmp_path / "x.npy"),
        ]
    )  # fmt: skip
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "method decoder: 7 samples, 7 converged" in out
    x = np.load(tmp_path / "x.npy")
    m32 = torch.jit.load(str(tmp_path / "m.pt"))
    res = (m32(torch.from_numpy(x)) - torch.from_numpy(np.load(tmp_path / "y.npy"))).abs().max()
    assert float(res) <= EPS[torch.float32]["residual"]


@pytest.mark.parametrize(
    "argv, match",
    [
        (["--method", "decoder"], "needs --decoder"),
        (["--decoder", "{tmp}/none.safetensors"], "does not exist"),
        (["--decoder", "{tmp}/X.npy"], "safetensors"),
        (["--method", "pinv", "--decoder", "{tmp}/X.npy"], "applies to --method decoder"),
    ],
)
def test_cli_decoder_errors(tmp_path, seed_model, X, capsys, argv, match):
    torch.jit.save(torch.jit.script(seed_model.float()), str(tmp_path / "m.pt"))
    seed_model.double()
    np.save(tmp_path / "X.npy", X.float().numpy())
    np.save(tmp_path / "y.npy", seed_model(X[:3]).float().numpy())
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    rc = main(
        ["invert", str(tmp_path / "m.pt"), "--outputs", str(tmp_path / "y.npy"), *argv,
         "--out", str(tmp_path / "x.npy")]
    )  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err and err[-1].startswith("nninv invert: error: ")
    assert match in err[-1]

"""Tests of nninv.learned.ConditionalFlow and nninv.posterior: draws, exactness, files, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import nninv
from nninv import NNInvError
from nninv.learned import ConditionalFlow, Decoder
from tolerances import EPS

pytest.importorskip("zuko")

F64 = torch.float64


def _data(n: int = 500, d: int = 16, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    z = torch.rand(n, 3, generator=g, dtype=F64)
    basis = torch.rand(3, d, generator=g, dtype=F64)
    return ((z @ basis) / 3 + 0.05 * torch.rand(n, d, generator=g, dtype=F64)).clamp(0, 1)


@pytest.fixture(scope="module")
def model(seed_model) -> nn.Module:
    return seed_model(n=16, m=3, seed=5).eval().requires_grad_(False)


@pytest.fixture(scope="module")
def X() -> torch.Tensor:
    return _data()


@pytest.fixture(scope="module")
def flow(model, X) -> ConditionalFlow:
    dec = Decoder.fit(model, X, hidden=(32,), epochs=10, progress=False)
    return ConditionalFlow.fit(
        model, X, decoder=dec, transforms=2, hidden=(32,), epochs=10, progress=False
    )


def test_fit_learns(flow):
    assert flow.input_shape == (16,) and flow.output_shape == (3,)
    assert flow.history[-1] < flow.history[0]
    assert flow.scale.shape == (16,) and bool((flow.scale > 0).all())


def test_sample_shapes_and_seeds(flow, model, X):
    y = model(X[:4])
    a = flow.sample(y, 5, seed=1)
    assert a.shape == (4, 5, 16) and a.dtype == F64
    assert torch.equal(a, flow.sample(y, 5, seed=1))
    assert not torch.equal(a, flow.sample(y, 5, seed=2))
    assert float(a.std(1).mean()) > 0  # the draws differ within a target


def test_posterior_is_exact_and_diverse(flow, model, X):
    y = model(X[-6:])
    post = nninv.posterior(model, y, flow, n=8, seed=0)
    assert post.x.shape == (6, 8, 16)
    assert bool(post.converged.all())
    assert float(post.residual.max()) <= EPS[F64]["residual"]
    assert float(post.info["raw_residual"].min()) > 1e3 * float(post.residual.max())
    assert bool((post.info["diversity"] > 0).all())
    with torch.no_grad():
        out = model(post.x.reshape(-1, 16))
    assert (out - y.repeat_interleave(8, 0)).abs().max() <= EPS[F64]["residual"]


def test_posterior_bounds(flow, model, X):
    post = nninv.posterior(model, model(X[:3]), flow, n=4, bounds=(0.0, 1.0))
    assert bool(((post.x >= 0) & (post.x <= 1)).all())
    assert float(post.residual[post.converged].max()) <= EPS[F64]["residual"]


def test_save_load_round_trip(flow, model, X, tmp_path):
    back = ConditionalFlow.load(flow.save(tmp_path / "flow.safetensors"))
    y = model(X[:3])
    assert torch.equal(back.sample(y, 4, seed=3), flow.sample(y, 4, seed=3))
    assert back.config == flow.config


def test_logit_space_is_the_default_in_a_box_and_inverts_itself(flow):
    from nninv.learned.flow import _from_logit, _to_logit

    assert flow.config["space"] == "logit"  # the decoder's box is [0, 1]
    x = torch.tensor([0.0, 1e-3, 0.25, 0.5, 0.999, 1.0], dtype=F64)
    for box in ([0.0, 1.0], [-2.0, 3.0]):
        xb = box[0] + (box[1] - box[0]) * x
        assert (_from_logit(_to_logit(xb, box), box) - xb).abs().max() <= 1e-12
        # dequantised: no value on the box's edge, so every logit is finite
        v = _to_logit(xb, box, torch.full_like(xb, 0.5))
        assert bool(torch.isfinite(v).all()) and float(v.abs().max()) < 7.0


def test_both_spaces_sample_and_round_trip(model, X, tmp_path):
    """Logit-space draws lie in the box by construction; linear ones are ``g + s z``."""
    dec = Decoder.fit(model, X, hidden=(32,), epochs=10, progress=False)
    kw = dict(decoder=dec, transforms=2, hidden=(32,), epochs=10, progress=False)
    y = model(X[:20])
    for space in ("logit", "linear"):
        f = ConditionalFlow.fit(model, X, space=space, **kw)
        assert f.config["space"] == space
        d = f.sample(y, 16, seed=0)
        assert float(d.std(1).mean()) > 0
        if space == "logit":
            assert bool(((d >= 0) & (d <= 1)).all())
        back = ConditionalFlow.load(f.save(tmp_path / f"{space}.safetensors"))
        assert back.config["space"] == space
        assert torch.equal(back.sample(y, 16, seed=0), d)
        post = nninv.posterior(model, y[:4], f, n=4, seed=0)
        assert bool(post.converged.all())
        assert float(post.residual.max()) <= EPS[F64]["residual"]


def test_space_errors(flow, model, X):
    with pytest.raises(NNInvError, match="space must be"):
        ConditionalFlow.fit(model, X, decoder=flow.decoder, space="log", progress=False)
    dec = Decoder.fit(model, X, hidden=(8,), epochs=1, box=None, progress=False)
    with pytest.raises(NNInvError, match="needs a decoder with a box"):
        ConditionalFlow.fit(model, X, decoder=dec, space="logit", epochs=1, progress=False)


@pytest.mark.parametrize("damage", ["truncated", "random", "decoder-file"])
def test_damaged_files_are_named(flow, tmp_path, damage):
    good = flow.save(tmp_path / "good.safetensors").read_bytes()
    path = tmp_path / "bad.safetensors"
    if damage == "truncated":
        path.write_bytes(good[: len(good) // 2])
    elif damage == "random":
        path.write_bytes(np.random.default_rng(0).bytes(1024))
    else:
        flow.decoder.save(path)
    with pytest.raises(NNInvError, match="bad.safetensors"):
        ConditionalFlow.load(path)


def test_errors(flow, model, X):
    y = model(X[:2])
    with pytest.raises(NNInvError, match="n must be a positive"):
        nninv.posterior(model, y, flow, n=0)
    with pytest.raises(NNInvError, match="shape"):
        nninv.posterior(model, torch.zeros(2, 5, dtype=F64), flow)
    with pytest.raises(NNInvError, match="ConditionalFlow"):
        nninv.posterior(model, y, flow.decoder)
    with pytest.raises(NNInvError, match="positive integer"):
        ConditionalFlow.fit(model, X, decoder=flow.decoder, epochs=0, progress=False)
    other = nn.Sequential(nn.Linear(16, 5), nn.Sigmoid()).double().eval()
    with pytest.raises(NNInvError, match="another model"):
        ConditionalFlow.fit(other, X, decoder=flow.decoder, epochs=1, progress=False)
    with pytest.raises(NNInvError, match="does not exist"):
        ConditionalFlow.load("/nonexistent/flow.safetensors")


@pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")
def test_cli_train_flow_and_posterior(tmp_path, model, X, capsys):
    from nninv.cli import main

    torch.jit.save(torch.jit.script(model.float()), str(tmp_path / "m.pt"))
    model.double()
    np.save(tmp_path / "X.npy", X.float().numpy())
    np.save(tmp_path / "y.npy", model(X[:3]).float().numpy())
    rc = main(
        [
            "train-flow", str(tmp_path / "m.pt"), "--data", str(tmp_path / "X.npy"),
            "--out", str(tmp_path / "flow.safetensors"), "--epochs", "3", "--transforms", "1",
        ]
    )  # fmt: skip
    assert rc == 0 and (tmp_path / "flow.safetensors").is_file()
    rc = main(
        [
            "posterior", str(tmp_path / "m.pt"), "--outputs", str(tmp_path / "y.npy"),
            "--flow", str(tmp_path / "flow.safetensors"), "--n", "5",
            "--out", str(tmp_path / "post"),
        ]
    )  # fmt: skip
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "3 targets x 5 samples: 15 of 15 converged" in out
    x = np.load(tmp_path / "post" / "samples.npy")
    assert x.shape == (3, 5, 16)
    assert (tmp_path / "post" / "posterior.png").is_file()
    m32 = torch.jit.load(str(tmp_path / "m.pt"))
    res = m32(torch.from_numpy(x.reshape(15, 16))) - torch.from_numpy(
        np.repeat(np.load(tmp_path / "y.npy"), 5, axis=0)
    )
    assert float(res.abs().max()) <= EPS[torch.float32]["residual"]


def test_cli_posterior_errors(tmp_path, capsys):
    from nninv.cli import main

    rc = main(
        ["posterior", str(tmp_path / "m.pt"), "--outputs", "y.npy", "--flow", "f", "--n", "0"]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err[-1] == "nninv posterior: error: --n must be a positive integer, got 0"

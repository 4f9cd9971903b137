"""Tests of nninv.diagnose."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from nninv import NNInvError, diagnose


def test_seed_model_diagnosis():
    torch.manual_seed(0)
    f = nn.Sequential(nn.Linear(784, 10), nn.Sigmoid())
    X = torch.rand(200, 784, generator=torch.Generator().manual_seed(0))
    d = diagnose(f, X)
    assert d.layers[0].rank == 10 and d.layers[0].nullity == 774
    assert d.layers[0].injective is False and d.layers[1].injective is True
    assert d.preimage_dim == 774 and d.injective is False
    W = f[0].weight.detach().double()
    P = torch.linalg.pinv(W) @ W
    Xd = X.double()
    ref = float((Xd @ P).pow(2).sum() / Xd.pow(2).sum())
    assert d.layers[0].row_space_energy == pytest.approx(ref, rel=1e-9)
    text = str(d)
    assert "774-dimensional" in text and "pinv loses" in text
    assert text.splitlines()[0].split()[:3] == ["#", "name", "type"]


def test_reverse_net_is_injective():
    f = nn.Sequential(nn.Linear(10, 784), nn.Sigmoid())
    d = diagnose(f)
    assert d.injective is True and d.preimage_dim == 0
    assert "injective" in d.verdict


def test_relu_and_softmax_marked():
    f = nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3), nn.Softmax(dim=1))
    d = diagnose(f)
    assert d.layers[1].injective is False and "not injective" in d.layers[1].note
    assert d.layers[3].injective is False and "additive constant" in d.layers[3].note
    assert d.injective is False
    # softmax loses one direction: the Jacobian has rank at most 2
    assert d.preimage_dim >= 3


def test_conv_needs_shape_from_data_or_option():
    f = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(2 * 6 * 6, 3))
    with pytest.raises(NNInvError, match="input_shape"):
        diagnose(f)
    d = diagnose(f, torch.rand(4, 1, 8, 8))
    assert d.input_shape == (1, 8, 8)
    assert d.layers[0].rank is not None


def test_data_of_wrong_shape():
    f = nn.Sequential(nn.Linear(6, 2))
    with pytest.raises(NNInvError, match="does not match"):
        diagnose(f, torch.zeros(3, 5))


def test_unknown_layer_noted():
    f = nn.Sequential(nn.Linear(6, 4), nn.GELU(), nn.Linear(4, 2))
    d = diagnose(f)
    assert d.layers[1].injective is None
    assert "optimize" in d.layers[1].note


def _saturated_seed(scale: float, dtype: torch.dtype) -> nn.Sequential:
    """The seed's model (784 -> 10 sigmoid) with weights large enough that most units saturate
    on U(0, 1) inputs, as a trained seed model's do on MNIST: the derivative of a saturated
    sigmoid is ~1e-20 or underflows, yet W still has rank 10."""
    from nninv.experiments.seed import seed_model

    torch.manual_seed(0)
    f = seed_model().to(dtype)
    with torch.no_grad():
        f[0].weight.mul_(scale)
    return f


# float32 as the seed's saved model; float64 with weights large enough to underflow
@pytest.mark.parametrize(("scale", "dtype"), [(30.0, torch.float32), (300.0, torch.float64)])
@pytest.mark.parametrize("with_data", [False, True])
def test_seed_model_saturated_is_774(scale, dtype, with_data):
    f = _saturated_seed(scale, dtype)
    X = torch.rand(50, 784, generator=torch.Generator().manual_seed(1), dtype=dtype)
    x0 = X[:1] if with_data else torch.rand(1, 784, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        s = torch.sigmoid(f[0](x0.to(dtype)))[0]
    # the premise: some units are saturated below the Jacobian's relative rank tolerance
    d_sig = s * (1 - s)
    tol = 784 * torch.finfo(dtype).eps * float(d_sig.max())
    assert int((d_sig < tol).sum()) >= 1
    d = diagnose(f, X if with_data else None)
    assert d.layers[0].rank == 10
    assert d.preimage_dim == 774 and d.preimage_dim_exact
    assert "774-dimensional" in d.verdict and "estimated" not in d.verdict


def test_saturated_hidden_layer_exact():
    # wide-to-narrow hidden layer: W1 (32 x 784) is onto, so rank J = rank W2 = 10 whatever
    # the (positive) sigmoid derivatives in between
    torch.manual_seed(0)
    f = nn.Sequential(
        nn.Linear(784, 32), nn.Sigmoid(), nn.Linear(32, 10), nn.Tanh(), nn.Linear(10, 10)
    ).double()
    with torch.no_grad():
        f[0].weight.mul_(200.0)
        f[2].weight.mul_(100.0)
    d = diagnose(f)
    assert d.preimage_dim == 774 and d.preimage_dim_exact


def test_relu_rank_follows_active_units():
    # ReLU's Jacobian is 0/1 at the point: with 3 of 6 hidden units active the rank is 3
    lin1 = nn.Linear(4, 6).double()
    with torch.no_grad():
        lin1.weight.copy_(torch.cat([torch.eye(4)[:3], -torch.eye(4)[:3]]).double())
        lin1.bias.zero_()
    f = nn.Sequential(lin1, nn.ReLU(), nn.Linear(6, 5).double())
    x = torch.tensor([[1.0, 2.0, 3.0, 4.0]], dtype=torch.float64)
    d = diagnose(f, x)
    assert d.preimage_dim == 1 and d.preimage_dim_exact
    assert "at least 1-dimensional" in d.verdict


def test_softmax_drops_one_direction_exactly():
    torch.manual_seed(0)
    f = nn.Sequential(nn.Linear(20, 5), nn.Softmax(dim=1)).double()
    with torch.no_grad():
        f[0].weight.mul_(100.0)
    d = diagnose(f)
    assert d.preimage_dim == 20 - 4 and d.preimage_dim_exact


def test_unknown_layer_rank_is_an_estimate():
    torch.manual_seed(0)
    f = nn.Sequential(nn.Linear(6, 4), nn.GELU(), nn.Linear(4, 2)).double()
    d = diagnose(f)
    assert d.preimage_dim == 4 and not d.preimage_dim_exact
    assert "estimated" in d.verdict


def test_seed_model_trained_on_mnist5k():
    from nninv.datasets import load_embedded
    from nninv.experiments.seed import train_seed_model

    ds = load_embedded("mnist5k")
    f = train_seed_model(ds.images, ds.labels, epochs=2)
    assert diagnose(f).preimage_dim == 774
    assert diagnose(f, ds.images[:100].reshape(100, -1)).preimage_dim == 774


@pytest.mark.parametrize("with_data", [False, True])
def test_cli_diagnose_saturated_seed_file(tmp_path, with_data):
    import contextlib
    import io

    import numpy as np

    from nninv.cli import main

    f = _saturated_seed(30.0, torch.float32)
    path = tmp_path / "seed.pt"
    torch.jit.script(f).save(str(path))
    argv = ["diagnose", str(path)]
    if with_data:
        np.save(tmp_path / "X.npy", np.random.default_rng(0).random((20, 784), np.float32))
        argv += ["--data", str(tmp_path / "X.npy")]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(argv) == 0
    assert "774-dimensional" in out.getvalue() and "rank 10)" in out.getvalue()


def test_output_range_message_says_layer_once():
    from nninv import invert

    f = nn.Sequential(nn.Linear(4, 2), nn.Sigmoid())
    with pytest.raises(NNInvError) as e:
        invert(f, torch.tensor([[0.5, 1.5]]), method="pinv")
    assert "layer layer" not in str(e.value)
    assert "layer 1 '1' (Sigmoid), the output layer" in str(e.value)


def test_relu_on_the_whole_space_keeps_its_active_axes():
    # Linear(6, 4) is onto R^4; ReLU keeps the 2 active units' axes; the head sees both
    lin = nn.Linear(6, 4).double()
    with torch.no_grad():
        lin.weight.copy_(torch.eye(6)[:4].double())
        lin.bias.copy_(torch.tensor([0.0, 0.0, -10.0, -10.0], dtype=torch.float64))
    f = nn.Sequential(lin, nn.ReLU(), nn.Linear(4, 3).double())
    d = diagnose(f, torch.full((1, 6), 0.5, dtype=torch.float64))
    assert d.preimage_dim == 6 - 2 and d.preimage_dim_exact

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

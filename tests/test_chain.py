"""Tests of the model front: analysis of modules into chains."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from nninv import NNInvError
from nninv.model.chain import Affine, Elementwise, Shift, Unsupported, analyse
from nninv.model.layers import Permute, Reshape


def test_consecutive_linear_modules_merge():
    f = nn.Sequential(
        nn.Flatten(),
        nn.Linear(12, 8),
        nn.BatchNorm1d(8),
        nn.Dropout(),
        nn.Tanh(),
        nn.Linear(8, 3),
        nn.Softmax(dim=1),
    )
    c = analyse(f, (3, 4))
    kinds = [type(s) for s in c.steps]
    assert kinds == [Affine, Elementwise, Affine, Shift]
    assert len(c.steps[0].layers) == 4
    assert c.input_shape == (3, 4) and c.output_shape == (3,)


def test_affine_matrix_matches_module():
    torch.manual_seed(0)
    f = nn.Sequential(
        nn.Conv2d(2, 3, 3), nn.AvgPool2d(2), Permute((1, 2, 0)), nn.Flatten()
    ).double()
    c = analyse(f, (2, 8, 8))
    A, b = c.steps[0].matrix()
    x = torch.randn(5, 2, 8, 8, dtype=torch.float64)
    assert torch.allclose(x.reshape(5, -1) @ A.T + b, f(x), atol=1e-12)


def test_nested_sequential_and_names():
    f = nn.Sequential(nn.Sequential(nn.Linear(4, 3), nn.Sigmoid()), nn.Linear(3, 2))
    c = analyse(f)
    assert [layer.name for layer in c.layers] == ["0.0", "0.1", "1"]


def test_unsupported_layers_listed():
    f = nn.Sequential(nn.Linear(4, 4), nn.GELU(), nn.Linear(4, 4), nn.MaxPool1d(2))
    c = analyse(f, (4,))
    assert [type(s) for s in c.steps][1] is Unsupported
    with pytest.raises(NNInvError, match=r"layer 1 '1' \(GELU\)"):
        c.require_closed_form("pinv")


def test_branching_module_is_opaque():
    class Res(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            return x + self.fc(x)

    c = analyse(Res(), (4,))
    assert len(c.steps) == 1 and isinstance(c.steps[0], Unsupported)
    assert "not a chain" in c.steps[0].reason


def test_layer_failing_on_shape():
    f = nn.Sequential(nn.Linear(4, 3), nn.Linear(5, 2))
    with pytest.raises(NNInvError, match=r"layer 1 '1' \(Linear\) fails on input"):
        analyse(f)


def test_reshape_layer_and_input_shape_attribute():
    f = nn.Sequential(Reshape((1, 4, 4)), nn.Conv2d(1, 1, 3), nn.Flatten())
    f.input_shape = (16,)
    c = analyse(f)
    assert c.input_shape == (16,) and c.output_shape == (4,)


def test_negative_slope_leaky_is_unsupported():
    c = analyse(nn.Sequential(nn.Linear(3, 3), nn.LeakyReLU(-0.5)))
    assert isinstance(c.steps[1], Unsupported)


def test_eval_mode_restores_each_submodules_own_mode():
    from nninv.model.chain import eval_mode

    frozen = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3), nn.Dropout(0.5)).eval()
    outer = nn.Sequential(frozen, nn.Linear(3, 2))  # a train-mode container around it
    assert outer.training and not frozen.training
    with eval_mode(outer):
        assert not any(m.training for m in outer.modules())
    assert outer.training and outer[1].training
    assert not any(m.training for m in frozen.modules())  # not switched to train mode


def test_a_module_used_twice_in_a_sequential_is_two_steps():
    """One ReLU instance after two layers: named_children() would list it once."""
    act = nn.LeakyReLU(0.1)
    net = nn.Sequential(nn.Linear(3, 5), act, nn.Linear(5, 4), act, nn.Linear(4, 2))
    chain = analyse(net)
    assert [type(s).__name__ for s in chain.steps].count("Elementwise") == 2
    torch.manual_seed(0)
    x = torch.randn(64, 3)
    h = x
    for step in chain.steps:
        h = step.layer.module(h) if isinstance(step, Elementwise) else step.forward(h)
    assert torch.allclose(h, net(x), atol=1e-6)

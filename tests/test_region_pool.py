"""Max pooling in decision regions: the ReLU rewrite is exact, and regions through it are right."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

import nninv
from nninv import NNInvError, OutputSet
from nninv.region._net import as_plnet
from tolerances import EPS

#: Monte Carlo agreement of the exact volume, in standard errors.
SE = 3.0
ATOL = EPS[torch.float64]["residual"]


def _ready(model: nn.Module, shape: tuple[int, ...], seed: int) -> nn.Module:
    torch.manual_seed(seed)
    model(torch.zeros(1, *shape))  # sizes the lazy layers
    for p in model.parameters():
        nn.init.normal_(p)
    model = model.double().eval()
    model.input_shape = shape
    return model


# name, model, input shape, box low end (a box in [0, 1] makes a leading pool's inputs >= 0)
NETS = {
    "conv-relu-maxpool2d": (
        lambda: nn.Sequential(
            nn.Conv2d(1, 2, 2), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.LazyLinear(3)
        ),
        (1, 5, 5),
        -1.0,
    ),
    "conv-maxpool2d-stride-padding": (
        lambda: nn.Sequential(
            nn.Conv2d(1, 2, 2), nn.MaxPool2d(3, 2, padding=1), nn.Flatten(), nn.LazyLinear(3)
        ),
        (1, 5, 6),
        -1.0,
    ),
    "conv-maxpool2d-dilation-ceil": (
        lambda: nn.Sequential(
            nn.Conv2d(1, 2, 2),
            nn.MaxPool2d((2, 3), (1, 2), padding=(1, 1), dilation=(2, 1), ceil_mode=True),
            nn.Flatten(),
            nn.LazyLinear(3),
        ),
        (1, 5, 6),
        -1.0,
    ),
    "conv1d-leaky-maxpool1d": (
        lambda: nn.Sequential(
            nn.Conv1d(1, 2, 2),
            nn.LeakyReLU(0.1),
            nn.MaxPool1d(3, 2, padding=1, dilation=2),
            nn.Flatten(),
            nn.LazyLinear(3),
        ),
        (1, 9),
        -1.0,
    ),
    "conv1d-relu-maxpool1d-ceil": (
        lambda: nn.Sequential(
            nn.Conv1d(2, 3, 2),
            nn.ReLU(),
            nn.MaxPool1d(2, ceil_mode=True),
            nn.Flatten(),
            nn.LazyLinear(3),
        ),
        (2, 8),
        -1.0,
    ),
    "linear-maxpool1d-twice": (
        lambda: nn.Sequential(
            nn.Linear(6, 8), nn.ReLU(), nn.MaxPool1d(2), nn.MaxPool1d(2), nn.Linear(2, 3)
        ),
        (6,),
        -1.0,
    ),
    "adaptive-maxpool2d": (
        lambda: nn.Sequential(
            nn.Conv2d(1, 2, 2),
            nn.ReLU(),
            nn.AdaptiveMaxPool2d((2, 3)),
            nn.Flatten(),
            nn.Linear(12, 3),
        ),
        (1, 5, 6),
        -1.0,
    ),
    "leading-maxpool2d-nonneg-box": (
        lambda: nn.Sequential(
            nn.MaxPool2d(2, 1, padding=1),
            nn.Flatten(),
            nn.LazyLinear(4),
            nn.ReLU(),
            nn.Linear(4, 3),
        ),
        (2, 3, 3),
        0.0,
    ),
    "conv3d-maxpool3d": (
        lambda: nn.Sequential(
            nn.Conv3d(1, 2, 2), nn.MaxPool3d(2, 1, padding=1), nn.Flatten(), nn.LazyLinear(3)
        ),
        (1, 3, 3, 3),
        -1.0,
    ),
    "conv-relu-avgpool2d-bn": (
        lambda: nn.Sequential(
            nn.Conv2d(1, 2, 2),
            nn.BatchNorm2d(2),
            nn.ReLU(),
            nn.AvgPool2d(2, 1, padding=1),
            nn.Flatten(),
            nn.LazyLinear(3),
        ),
        (1, 4, 4),
        -1.0,
    ),
}


@pytest.mark.parametrize("name", list(NETS))
def test_plnet_forward_equals_the_model(name):
    make, shape, low = NETS[name]
    model = _ready(make(), shape, seed=0)
    d = math.prod(shape)
    box = [[low, 1.0]] * d
    net = as_plnet(model, box)
    x = low + (1.0 - low) * np.random.default_rng(0).random((2000, d))
    with torch.no_grad():
        y = model(torch.from_numpy(x).reshape(-1, *shape)).reshape(len(x), -1).numpy()
    np.testing.assert_allclose(net.forward_u(net.to_u(x)), y, rtol=0, atol=ATOL)
    if "maxpool" in name:
        assert len(net.slopes) > sum(isinstance(m, nn.ReLU | nn.LeakyReLU) for m in model)


def test_single_input_windows_add_no_layer():
    model = _ready(
        nn.Sequential(
            nn.Conv1d(1, 2, 1), nn.ReLU(), nn.MaxPool1d(1), nn.Flatten(), nn.Linear(6, 2)
        ),
        (1, 3),
        seed=0,
    )
    assert len(as_plnet(model, [[-1.0, 1.0]] * 3).slopes) == 1


# name, model, input shape: a conv over a tiny input gives a 2-4-dimensional box
SMALL = {
    "conv-relu-maxpool": (
        lambda: nn.Sequential(
            nn.Conv2d(1, 4, (1, 2)),
            nn.ReLU(),
            nn.MaxPool2d((1, 2), 1),
            nn.Flatten(),
            nn.Linear(4, 3),
        ),
        (1, 1, 3),
    ),  # fmt: skip
    "conv-maxpool-padding": (
        lambda: nn.Sequential(
            nn.Conv2d(1, 3, 1), nn.MaxPool2d(2, 1, padding=1), nn.Flatten(), nn.Linear(27, 3)
        ),
        (1, 2, 2),
    ),
    "conv1d-leaky-maxpool": (
        lambda: nn.Sequential(
            nn.Conv1d(1, 4, 2),
            nn.LeakyReLU(0.1),
            nn.MaxPool1d(2, 1, padding=1),
            nn.Flatten(),
            nn.Linear(12, 3),
        ),
        (1, 3),
    ),  # fmt: skip
    "conv-relu-avgpool": (
        lambda: nn.Sequential(
            nn.Conv2d(1, 4, 1), nn.ReLU(), nn.AvgPool2d(2, 1), nn.Flatten(), nn.Linear(4, 3)
        ),
        (1, 2, 2),
    ),
}


@pytest.mark.parametrize(("name", "seed"), [(k, i) for i, k in enumerate(SMALL)])
def test_exact_region_through_pooling_matches_monte_carlo(name, seed):
    make, shape = SMALL[name]
    model = _ready(make(), shape, seed)
    d = math.prod(shape)
    box = [[-1.0, 1.0]] * d
    x = -1.0 + 2.0 * np.random.default_rng(seed).random((10**6, d))
    with torch.no_grad():
        y = model(torch.from_numpy(x).reshape(-1, *shape)).reshape(len(x), -1)
    shares = np.bincount(y.argmax(1).numpy(), minlength=3) / len(x)
    label = int(np.argmin(np.abs(shares - 0.5)))
    out = OutputSet.from_class(label, 3)
    p = float(out.contains(y).numpy().mean())
    exact = nninv.region(model, label, box, "exact")
    assert exact.status == "complete" and exact.coverage == 1.0
    assert 0.0 < p < 1.0
    assert abs(exact.share - p) <= SE * math.sqrt(p * (1 - p) / len(x))
    under = nninv.region(model, label, box, "under")
    over = nninv.region(model, label, box, "over")
    inner = under.sample(4000, seed=0)
    assert bool(exact.contains(inner).all())
    with torch.no_grad():
        assert bool(out.contains(model(inner.reshape(-1, *shape))).all())
    assert bool(over.contains(exact.sample(4000, seed=1)).all())
    assert under.volume <= exact.volume * (1 + 1e-9) <= over.volume * (1 + 1e-9)


def test_maxpool_with_indices_is_refused_by_name():
    model = nn.Sequential(nn.Conv2d(1, 2, 1), nn.MaxPool2d(2, return_indices=True))
    model.input_shape = (1, 2, 2)
    with pytest.raises(NNInvError, match=r"MaxPool2d.*not one tensor \(return_indices=True\?\)"):
        nninv.region(model, 0, [[0.0, 1.0]] * 4)


def test_other_pooling_is_refused_by_name():
    model = nn.Sequential(
        nn.Conv2d(1, 2, 1), nn.FractionalMaxPool2d(2, output_size=1), nn.Flatten(), nn.Linear(2, 2)
    )
    model.input_shape = (1, 2, 2)
    with pytest.raises(NNInvError, match=r"piecewise-linear.*FractionalMaxPool2d"):
        nninv.region(model, 0, [[0.0, 1.0]] * 4)


def test_onnx_max_pooling_region_against_onnxruntime(tmp_path):
    """An ONNX file's MaxPool (ceil_mode, as 'same' pooling is written) through the
    whole route: load, exact region, samples checked by onnxruntime on the file."""
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    import warnings

    shape = (1, 2, 2)
    model = nn.Sequential(
        nn.Conv2d(1, 3, 2, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2, 2, ceil_mode=True),
        nn.Flatten(),
        nn.Linear(12, 3),
    )
    model = _ready(model, shape, seed=2).float()
    path = tmp_path / "pool.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (torch.zeros(1, *shape),),
            path,
            input_names=["x"],
            dynamic_axes={"x": {0: "n"}},
            dynamo=False,
        )
    box = [[-1.0, 1.0]] * 4
    exact = nninv.region(str(path), 1, box, "exact")
    assert exact.status == "complete" and 0.0 < exact.share < 1.0
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = exact.sample(2000, seed=0).numpy().reshape(-1, *shape).astype(np.float32)
    y = session.run(None, {"x": x})[0]
    assert np.all(y[:, 1:2] >= y - 1e-4 * np.abs(y).max())  # float32 ties only

"""The shared checks (nninv.checks): one rule each, and the callers that follow it."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from nninv import NNInvError, invert, preimage
from nninv.checks import as_batch, as_bounds, model_dtype_device, positive_int

D = torch.float64


@pytest.mark.parametrize("v", [1, 7, np.int64(3)])
def test_positive_int_accepts_integers(v):
    out = positive_int(v, "n")
    assert out == int(v) and type(out) is int


@pytest.mark.parametrize(
    "v, kw, match",
    [
        (0, {}, "n must be a positive integer, got 0"),
        (-1, {"minimum": 0}, "n must be a non-negative integer, got -1"),
        (True, {}, "positive integer, got True"),
        (2.0, {}, "positive integer, got 2.0"),
        ("3", {}, "positive integer, got '3'"),
        (None, {}, "positive integer, got None"),
        (0, {"allow_none": True}, "positive integer or None, got 0"),
        (1, {"minimum": 2}, "an integer >= 2"),
    ],
)
def test_positive_int_refuses(v, kw, match):
    with pytest.raises(NNInvError, match=match):
        positive_int(v, "n", **kw)


def test_positive_int_none_when_allowed():
    assert positive_int(None, "n", allow_none=True) is None
    assert positive_int(0, "burn", minimum=0) == 0


def test_bounds_rule():
    lo, hi = as_bounds(None, (2, 3))
    assert lo.shape == (6,) and bool(torch.isinf(lo).all()) and bool((lo < 0).all())
    assert bool(torch.isinf(hi).all()) and bool((hi > 0).all())
    lo, hi = as_bounds((0.0, None), (3,))
    assert lo.tolist() == [0.0, 0.0, 0.0] and hi.tolist() == [math.inf] * 3
    lo, hi = as_bounds((np.zeros(3), torch.tensor([0.0, 1.0, 2.0])), (3,), dtype=torch.float32)
    assert lo.dtype == torch.float32 and hi.tolist() == [0.0, 1.0, 2.0]  # lo == hi pins input 0


@pytest.mark.parametrize(
    "bounds, match",
    [
        ((1.0, 0.0), r"lo < hi, or lo == hi to pin an input\); got lo > hi at input 0"),
        ((torch.tensor([0.0, 2.0]), 1.0), r"lo > hi at input 1 \(2.0 > 1.0\)"),
        (1.0, "pair"),
        ((torch.zeros(5), 1.0), "broadcast"),
        ((math.nan, 1.0), "lo contains NaN"),
        (("a", 1.0), "lo must be a number"),
    ],
)
def test_bounds_refused(bounds, match):
    with pytest.raises(NNInvError, match=match):
        as_bounds(bounds, (2,))


def test_as_batch():
    assert as_batch(torch.zeros(3), (3,), "y").shape == (1, 3)
    assert as_batch(torch.zeros(4, 3), (3,), "y").shape == (4, 3)
    with pytest.raises(
        NNInvError, match=r"y has shape \(4, 2\) but the outputs are shaped \(N, 3\)"
    ):
        as_batch(torch.zeros(4, 2), (3,), "y", "the outputs")


def test_model_dtype_device_one_default():
    assert model_dtype_device(nn.Linear(2, 2).double()) == (D, torch.device("cpu"))
    bn = nn.BatchNorm1d(3, affine=False).double()  # buffers only (and an integer one)
    assert model_dtype_device(bn) == (D, torch.device("cpu"))
    assert model_dtype_device(nn.ReLU()) == (torch.get_default_dtype(), torch.device("cpu"))
    assert model_dtype_device(nn.ReLU(), torch.float16)[0] == torch.float16


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 4), nn.Tanh(), nn.Linear(4, 2)).double()


def test_optimize_pins_a_coordinate_with_lo_equal_hi():
    """The rule is the same in optimize as in geometry: lo == hi pins, None is unbounded."""
    f = _net()
    g = torch.Generator().manual_seed(1)
    x = torch.rand(3, 6, generator=g, dtype=D)
    y = f(x).detach()
    lo = torch.zeros(6, dtype=D)
    hi = torch.ones(6, dtype=D)
    lo[0] = hi[0] = 0.5
    inv = invert(f, y, method="optimize", bounds=(lo, hi), seed=0, progress=False)
    assert bool(inv.converged.all())
    assert bool((inv.x[:, 0] == 0.5).all())
    assert bool((inv.x >= lo).all()) and bool((inv.x <= hi).all())
    half = invert(f, y, method="optimize", bounds=(0.0, None), seed=0, progress=False)
    assert bool(half.converged.all()) and bool((half.x >= 0).all())


def test_optimize_and_geometry_refuse_lo_above_hi_alike():
    f = _net()
    y = f(torch.full((1, 6), 0.5, dtype=D)).detach()
    msgs = []
    for call in (
        lambda: invert(f, y, method="optimize", bounds=(1.0, 0.0), progress=False),
        lambda: preimage(nn.Sequential(nn.Linear(6, 2)).double(), y[0], bounds=(1.0, 0.0)),
    ):
        with pytest.raises(NNInvError, match="lo > hi") as err:
            call()
        msgs.append(str(err.value))
    assert msgs[0].endswith(msgs[1][-40:])

"""nninv.model.pooling: max pooling as ReLU layers is the window max; verify proves through it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import nninv
from nninv.model.pooling import maxpool_layers
from nninv.vnnlib import read
from tolerances import EPS

ATOL = EPS[torch.float64]["residual"]


@pytest.mark.parametrize("nonneg", [False, True])
def test_maxpool_layers_is_the_window_max(nonneg):
    rng = np.random.default_rng(1)
    n = 10
    windows = [rng.choice(n, size=rng.integers(1, 8), replace=False) for _ in range(25)]
    Es, P = maxpool_layers(windows, n, nonneg)
    assert len(Es) == 3  # ceil(log2 7) levels for windows of up to 7 inputs
    h = rng.normal(size=(500, n))
    if nonneg:
        h = np.abs(h)
    want = np.stack([h[:, w].max(axis=1) for w in windows], axis=1)
    v = h
    for E in Es:
        v = np.maximum(v @ E.T, 0.0)
    np.testing.assert_allclose(v @ P.T, want, rtol=0, atol=ATOL)


def test_maxpool_layers_share_subtrees_and_skip_the_negative_half():
    windows = [np.array([0, 1, 2, 3]), np.array([2, 3, 4, 5])]
    signed, _ = maxpool_layers(windows, 6, nonneg=False)
    plain, _ = maxpool_layers(windows, 6, nonneg=True)
    # level 1: three differences (pairs 0-1, 2-3 shared, 4-5) and the three carried inputs
    assert plain[0].shape == (6, 6) and signed[0].shape == (9, 6)
    assert all(a.shape[0] < b.shape[0] for a, b in zip(plain, signed))


def _pool_net() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 2, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2, 1),
        nn.Conv2d(4, 2, 1),
        nn.MaxPool2d(2, padding=1),  # on signed values
        nn.Flatten(),
        nn.LazyLinear(2),
    )
    model(torch.zeros(1, 1, 2, 2))
    model = model.double().eval()
    model.input_shape = (1, 2, 2)
    return model


@pytest.mark.slow
def test_verify_decides_a_max_pooling_net(tmp_path):
    """Below the sampled maximum of y1 - y0 a counterexample exists; above it by a
    margin the exact region is empty and verify proves it (it used to answer unknown:
    only its attack ran on max pooling)."""
    model = _pool_net()
    x = -1 + 2 * torch.rand(
        100_000, 1, 2, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1)
    )
    with torch.no_grad():
        y = model(x)
    top = float((y[:, 1] - y[:, 0]).max())
    head = "".join(f"(declare-const X_{i} Real)\n" for i in range(4))
    head += "(declare-const Y_0 Real)\n(declare-const Y_1 Real)\n"
    head += "".join(f"(assert (>= X_{i} -1))\n(assert (<= X_{i} 1))\n" for i in range(4))
    for t, want in ((top - 0.01, "sat"), (top + 0.01, "unsat")):
        path = tmp_path / f"{want}.vnnlib"
        path.write_text(head + f"(assert (>= Y_1 (+ Y_0 {t!r})))\n")
        case = read(path).cases[0]
        exact = nninv.region(model, case.output, torch.stack([case.lo, case.hi], 1))
        assert exact.status == "complete" and (exact.volume > 0) == (want == "sat")
        res = nninv.verify(model, path, time_limit=60)
        assert res.status == want
        if want == "sat":
            assert float(res.y[0, 1] - res.y[0, 0]) >= t
        else:
            assert res.method in ("bounds", "milp", "bounds+milp")

"""Tests of the coarse-to-fine option of ``method="optimize"`` (``nninv.methods._coarse``).

The coarse stage solves over smaller images seen through a bilinear upsampling;
its answers, upsampled, are the full search's starts. Checked: the shapes and
the error messages, the upsampling and area-averaging against torch, the
resampled prior, and that the final answers are judged at full resolution
(exact outputs in float64, class targets in float32) with the stage's report
in ``info``.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nninv import ClassTarget, NNInvError, invert
from nninv.methods import Problem
from nninv.methods._coarse import _Upsample, _Upsampled, coarse_problem, coarse_shape, downsample
from nninv.methods.optimize import OptimizeOptions
from nninv.priors import BatchNormPrior, GaussianPrior, TotalVariation
from tolerances import EPS

F64 = torch.float64


def bn_cnn(seed: int = 0, dtype: torch.dtype = F64) -> nn.Module:
    """A small conv net with BatchNorm on (1, 12, 12) images, running stats set from data."""
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(4, 6, 3, padding=1),
        nn.BatchNorm2d(6),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(6 * 6 * 6, 4),
    ).to(dtype)
    g = torch.Generator().manual_seed(seed + 1)
    # running statistics of smooth random blobs: the kind of image the prior should favour
    blobs = F.interpolate(torch.rand(64, 1, 3, 3, generator=g), size=(12, 12), mode="bilinear")
    net.train()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.momentum = None  # cumulative average
        net(blobs.to(dtype))
    return net.eval()


@pytest.mark.parametrize(
    "size, shape, want",
    [(14, (1, 28, 28), (1, 14, 14)), ((7, 5), (3, 28, 20), (3, 7, 5)), (4, (8, 8), (4, 4))],
)
def test_coarse_shape(size, shape, want):
    assert coarse_shape(size, shape) == want


@pytest.mark.parametrize(
    "size, shape, match",
    [
        (14, (784,), r"image inputs \(C, H, W\) or \(H, W\); the input shape is \(784,\)"),
        (28, (1, 28, 28), r"below the input's \(H, W\) = \(28, 28\)"),
        (1, (1, 28, 28), "at least 2"),
        ((30, 10), (1, 28, 28), "below the input's"),
        (2.5, (1, 28, 28), "an int or a pair of ints"),
        (True, (1, 28, 28), "an int or a pair of ints"),
        ((3, 4, 5), (1, 28, 28), "an int or a pair of ints"),
    ],
)
def test_coarse_shape_errors(size, shape, match):
    with pytest.raises(NNInvError, match=match):
        coarse_shape(size, shape)


def test_upsample_and_downsample_match_torch():
    g = torch.Generator().manual_seed(0)
    u = torch.rand(2, 3, 5, 4, generator=g, dtype=F64)
    up = _Upsample((3, 10, 8))
    want = F.interpolate(u, size=(10, 8), mode="bilinear", align_corners=False)
    assert torch.equal(up(u), want)
    # (H, W) inputs without a channel axis
    assert torch.equal(_Upsample((10, 8))(u[:, 0]), want[:, 0])
    x = torch.rand(2, 3, 10, 8, generator=g, dtype=F64)
    assert torch.allclose(downsample(x, (3, 5, 4)), F.avg_pool2d(x, 2), atol=1e-15)
    assert torch.allclose(downsample(x[0], (3, 5, 4)), F.avg_pool2d(x, 2)[0], atol=1e-15)
    # upsampling a constant image keeps it constant (so scalar bounds hold)
    c = torch.full((1, 3, 5, 4), 0.25, dtype=F64)
    assert torch.allclose(up(c), torch.full((1, 3, 10, 8), 0.25, dtype=F64), atol=1e-15)


def test_upsampled_prior_scores_the_upsampled_image():
    net = bn_cnn(1)
    prior = BatchNormPrior(net, input_shape=(1, 12, 12)) + 0.1 * TotalVariation(beta=2)
    up = _Upsample((1, 12, 12))
    coarse = _Upsampled(prior, up, (1, 6, 6))
    u = torch.rand(3, 1, 6, 6, generator=torch.Generator().manual_seed(2), dtype=F64)
    assert torch.allclose(coarse.log_prob(u), prior.log_prob(up(u)), atol=1e-12)
    assert torch.allclose(coarse.log_prob(u.reshape(3, -1)), coarse.log_prob(u), atol=1e-15)
    with pytest.raises(NNInvError, match="cannot be sampled"):
        coarse.sample(1)


def test_coarse_problem_resamples_x0_and_tensor_bounds():
    net = bn_cnn(2)
    y = torch.zeros(2, 4, dtype=F64)
    x0 = torch.rand(2, 1, 12, 12, generator=torch.Generator().manual_seed(3), dtype=F64)
    lo = torch.zeros(1, 12, 12, dtype=F64)
    hi = torch.ones(1, 12, 12, dtype=F64)
    hi[:, :6] = 0.5
    problem = Problem(net, y, None, (1, 12, 12), (4,), F64, torch.device("cpu"), 1e-8)
    sub, up = coarse_problem(problem, 6, OptimizeOptions(x0=x0, bounds=(lo, hi)))
    assert sub.input_shape == (1, 6, 6) and sub.prior is None
    assert isinstance(sub.options, OptimizeOptions)
    assert torch.allclose(sub.options.x0, F.avg_pool2d(x0, 2), atol=1e-15)
    lo_c, hi_c = sub.options.bounds
    assert torch.equal(lo_c, torch.zeros(1, 6, 6, dtype=F64))
    assert torch.allclose(hi_c[:, :3], torch.full((1, 3, 6), 0.5, dtype=F64))
    assert torch.allclose(hi_c[:, 3:], torch.ones(1, 3, 6, dtype=F64))
    # the coarse model is the model on upsampled images
    u = torch.rand(2, 1, 6, 6, generator=torch.Generator().manual_seed(4), dtype=F64)
    with torch.no_grad():
        assert torch.equal(sub.model(u), net(up(u)))
    sub, _ = coarse_problem(problem, 6, OptimizeOptions(bounds=(0.0, 1.0)))
    assert sub.options.bounds == (0.0, 1.0)  # scalar bounds kept as they are


def test_exact_outputs_float64_with_coarse_stage():
    net = bn_cnn(3)
    prior = BatchNormPrior(net, input_shape=(1, 12, 12)) + 0.1 * TotalVariation(beta=2)
    g = torch.Generator().manual_seed(5)
    xs = F.interpolate(torch.rand(4, 1, 4, 4, generator=g, dtype=F64), size=(12, 12))
    with torch.no_grad():
        y = net(xs)
    x0 = 0.1 * torch.rand(4, 1, 12, 12, generator=g, dtype=F64)
    inv = invert(
        net, y, method="optimize", prior=prior, bounds=(0, 1), x0=x0, coarse=6, progress=False
    )
    assert bool(inv.converged.all()), inv.info["reasons"]
    assert inv.x.shape == (4, 1, 12, 12) and inv.x.dtype == F64
    assert float(inv.x.min()) >= 0.0 and float(inv.x.max()) <= 1.0
    with torch.no_grad():
        assert float((net(inv.x) - y).abs().max()) <= EPS[F64]["residual"] * 1e3
    info = inv.info["coarse"]
    assert info["shape"] == (1, 6, 6) and 0 <= info["converged"] <= 4 and info["seconds"] > 0


@pytest.mark.slow
def test_class_targets_float32_with_coarse_stage():
    net = bn_cnn(4, torch.float32)
    prior = BatchNormPrior(net, first_multiplier=10.0, input_shape=(1, 12, 12))
    prior = prior + 0.1 * TotalVariation(beta=2)
    labels = torch.tensor([0, 1, 2, 3, 0, 1])
    x0 = 0.1 * torch.rand(6, 1, 12, 12, generator=torch.Generator().manual_seed(6))
    target = ClassTarget(labels, confidence=0.99)
    inv = invert(
        net, target, method="optimize", prior=prior, bounds=(0, 1), x0=x0, coarse=(6, 6),
        progress=False,
    )  # fmt: skip
    assert bool(inv.converged.all()), inv.info["reasons"]
    with torch.no_grad():
        p = net(inv.x).softmax(1)
    assert torch.equal(p.argmax(1), labels) and bool((p.max(1).values >= 0.99).all())
    # the coarse stage's answers are only starts: without it the answers differ
    plain = invert(
        net, target, method="optimize", prior=prior, bounds=(0, 1), x0=x0, progress=False
    )
    assert "coarse" not in plain.info
    assert float((plain.x - inv.x).abs().max()) > 1e-3


def test_coarse_with_gaussian_prior_and_flat_input_error():
    net = bn_cnn(5)
    g = torch.Generator().manual_seed(7)
    X = F.interpolate(torch.rand(200, 1, 4, 4, generator=g, dtype=F64), size=(12, 12))
    prior = GaussianPrior.fit(X, shrinkage=0.1)
    with torch.no_grad():
        y = net(X[:3])
    inv = invert(net, y, method="optimize", prior=prior, coarse=6, progress=False)
    assert bool(inv.converged.all()), inv.info["reasons"]
    flat = nn.Sequential(nn.Linear(6, 2)).double()
    with pytest.raises(NNInvError, match="option coarse needs image inputs"):
        invert(flat, torch.zeros(1, 2, dtype=F64), method="optimize", coarse=3, progress=False)


def test_model_modes_and_running_stats_untouched():
    net = bn_cnn(6)
    before = [b.clone() for b in net.buffers()]
    prior = BatchNormPrior(net, input_shape=(1, 12, 12))
    x0 = 0.1 * torch.rand(2, 1, 12, 12, generator=torch.Generator().manual_seed(8), dtype=F64)
    invert(
        net, ClassTarget(torch.tensor([0, 1])), method="optimize", prior=prior, x0=x0, coarse=6,
        progress=False,
    )  # fmt: skip
    assert not any(m.training for m in net.modules())
    assert all(torch.equal(a, b) for a, b in zip(before, net.buffers(), strict=True))


def test_x0_gives_the_input_shape_of_a_conv_net():
    """README's data-free recipe as written: no input_shape, the model starts with Conv2d.

    Before ``x0``'s shape was used, this raised "cannot tell the input shape of a
    model that starts with Conv2d".
    """
    net = bn_cnn(7, torch.float32)
    prior = BatchNormPrior(net, first_multiplier=10) + 0.1 * TotalVariation(beta=2)
    labels = torch.tensor([0, 1, 2, 3])
    x0 = 0.1 * torch.rand(4, 1, 12, 12, generator=torch.Generator().manual_seed(9))
    inv = invert(
        net, ClassTarget(labels, confidence=0.99), prior=prior, bounds=(0, 1), x0=x0, coarse=6,
        progress=False,
    )  # fmt: skip
    assert inv.method == "optimize"  # auto: a class target, and x0
    assert inv.x.shape == (4, 1, 12, 12)
    assert bool(inv.converged.all()), inv.reasons
    with torch.no_grad():
        assert torch.equal(net(inv.x).argmax(1), labels)
    with pytest.raises(NNInvError, match="cannot tell the input shape"):
        invert(net, ClassTarget(labels), prior=prior, bounds=(0, 1), progress=False)

"""Tests of ``nninv.priors.BatchNormPrior``, the data-free prior from BatchNorm statistics.

The energy is checked at zero where the candidates' feature statistics equal
the running ones (set from the candidates themselves), against autograd in
float64 (gradcheck), for the batch-of-one rules, for leaving the model alone
(mode and running statistics), in combinations, inside ``invert`` (class and
exact targets), on models loaded from ONNX and Keras files, and from the CLI.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn

from nninv import ClassTarget, NNInvError, invert
from nninv.model.io import load_model
from nninv.priors import BatchNormPrior, TotalVariation
from tolerances import EPS

F64 = torch.float64


def conv_net(seed: int = 0) -> nn.Module:
    """A conv net with BatchNorm2d and a flat BatchNorm1d, random running statistics."""
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(1, 3, 3),
        nn.BatchNorm2d(3),
        nn.ReLU(),
        nn.Conv2d(3, 4, 3, stride=2),
        nn.BatchNorm2d(4),
        nn.Tanh(),
        nn.Flatten(),
        nn.Linear(4 * 3 * 3, 6),
        nn.BatchNorm1d(6),
        nn.Tanh(),
        nn.Linear(6, 3),
    ).double()
    g = torch.Generator().manual_seed(seed)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d):
            c = m.num_features
            m.running_mean.copy_(torch.randn(c, generator=g, dtype=F64))
            m.running_var.copy_(torch.rand(c, generator=g, dtype=F64) + 0.5)
    return net.eval()


def bn_layers(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d)]


def set_running_stats_from(model: nn.Module, x: torch.Tensor) -> None:
    """Make each BatchNorm layer's running statistics those of its input for ``x``.

    Over samples and positions (for one sample: its spatial statistics); layer by layer,
    since a layer's input depends on the statistics of the layers before.
    """
    for bn in bn_layers(model):
        seen: list[torch.Tensor] = []
        h = bn.register_forward_pre_hook(lambda m, a, seen=seen: seen.append(a[0]))
        with torch.no_grad():
            model(x)
        h.remove()
        (inp,) = seen
        C = inp.shape[1]
        flat = inp.transpose(0, 1).reshape(C, -1)
        bn.running_mean.copy_(flat.mean(1))
        bn.running_var.copy_(flat.var(1, unbiased=False))


def stats_snapshot(model: nn.Module) -> list[torch.Tensor]:
    return [b.clone() for b in model.buffers()]


# =========================================================================== energy


def test_energy_zero_at_running_stats_per_sample():
    net = nn.Sequential(
        nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.Conv2d(3, 2, 3), nn.BatchNorm2d(2)
    ).double()
    x = torch.randn(1, 2, 9, 9, generator=torch.Generator().manual_seed(1), dtype=F64)
    set_running_stats_from(net.eval(), x)
    prior = BatchNormPrior(net, input_shape=(2, 9, 9))
    assert prior.n_layers == 2
    assert float(prior.energy(x).abs().max()) <= EPS[F64]["close"]
    # and away from the running statistics it is positive
    assert float(prior.energy(x + 0.5)[0]) > 0.1


def test_energy_zero_at_running_stats_batch():
    net = conv_net()
    x = torch.randn(5, 1, 9, 9, generator=torch.Generator().manual_seed(2), dtype=F64)
    set_running_stats_from(net, x)
    prior = BatchNormPrior(net, statistics="batch", input_shape=(1, 9, 9))
    e = prior.energy(x)
    assert e.shape == (5,)
    assert float(e.abs().max()) <= EPS[F64]["close"]
    assert float(prior.energy(2 * x).sum()) > 0.1


def test_energy_zero_flat_batchnorm1d_rule():
    """A flat BatchNorm1d, one sample: zero when z = (h - mu) / sigma has mean 0, mean z^2 1."""
    net = nn.Sequential(nn.BatchNorm1d(4), nn.Linear(4, 2)).double().eval()
    bn = net[0]
    bn.running_mean.copy_(torch.tensor([0.5, -1.0, 2.0, 0.0], dtype=F64))
    bn.running_var.copy_(torch.tensor([1.0, 4.0, 0.25, 2.0], dtype=F64))
    z = torch.tensor([[1.0, -1.0, -1.0, 1.0]], dtype=F64)
    x = bn.running_mean + (bn.running_var + bn.eps).sqrt() * z
    prior = BatchNormPrior(net, input_shape=(4,))
    assert prior.event_shape == (4,)
    assert float(prior.energy(x).abs().max()) <= EPS[F64]["close"]
    # the running mean itself is not typical: z = 0 has mean z^2 = 0, not 1
    e_mean = float(prior.energy(bn.running_mean[None])[0])
    assert abs(e_mean - 2.0) <= 1e-5  # sqrt(C) * |0 - 1| with C = 4, smoothed by eps


@pytest.mark.parametrize("statistics", ["sample", "batch"])
def test_gradcheck(statistics):
    net = conv_net(3)
    prior = BatchNormPrior(net, statistics=statistics, tv=0.1, input_shape=(1, 9, 9))
    x = torch.randn(2, 1, 9, 9, generator=torch.Generator().manual_seed(4), dtype=F64)
    x.requires_grad_(True)
    assert torch.autograd.gradcheck(prior.log_prob, (x,), eps=1e-6, atol=1e-5, fast_mode=True)


def test_dtype_follows_inputs():
    net = conv_net()
    prior = BatchNormPrior(net, input_shape=(1, 9, 9))
    x = torch.randn(2, 1, 9, 9, generator=torch.Generator().manual_seed(5), dtype=F64)
    e64, e32 = prior.log_prob(x), prior.log_prob(x.float())
    assert e64.dtype == F64 and e32.dtype == torch.float32
    assert torch.allclose(e32.double(), e64, atol=EPS[torch.float32]["close"], rtol=1e-4)


# =========================================================================== batch of one


def test_batch_of_one_per_sample_rows_independent():
    net = conv_net()
    prior = BatchNormPrior(net, input_shape=(1, 9, 9))
    x = torch.randn(4, 1, 9, 9, generator=torch.Generator().manual_seed(6), dtype=F64)
    whole = prior.log_prob(x)
    one = torch.cat([prior.log_prob(x[i : i + 1]) for i in range(4)])
    assert one.shape == (4,) and bool(torch.isfinite(one).all())
    assert torch.allclose(whole, one, atol=EPS[F64]["close"], rtol=0)


def test_batch_statistics_rules_for_one_sample():
    x = torch.randn(1, 1, 9, 9, generator=torch.Generator().manual_seed(7), dtype=F64)
    # flat BatchNorm1d: no batch variance from one sample
    with pytest.raises(NNInvError, match="at least 2 samples.*flat BatchNorm1d"):
        BatchNormPrior(conv_net(), statistics="batch", input_shape=(1, 9, 9)).log_prob(x)
    # BatchNorm2d only: the batch of one's statistics are its own spatial ones
    net = nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3)).double().eval()
    a = BatchNormPrior(net, statistics="batch", input_shape=(1, 9, 9)).log_prob(x)
    b = BatchNormPrior(net, input_shape=(1, 9, 9)).log_prob(x)
    assert torch.allclose(a, b, atol=EPS[F64]["close"], rtol=0)


# =========================================================================== the model


def test_model_mode_and_running_stats_untouched():
    net = conv_net()
    net.train()  # the caller's mode must survive, and train mode would update statistics
    before = stats_snapshot(net)
    prior = BatchNormPrior(net, input_shape=(1, 9, 9))
    x = torch.randn(3, 1, 9, 9, generator=torch.Generator().manual_seed(8), dtype=F64)
    prior.log_prob(x.requires_grad_(True)).sum().backward()
    prior.log_prob(x.detach().float())  # a float32 copy too
    assert net.training and all(m.training for m in net.modules())
    for a, b in zip(before, stats_snapshot(net), strict=True):
        assert torch.equal(a, b)
    # inverting with the prior leaves them alone as well
    net.eval()
    invert(net, ClassTarget([0]), method="optimize", prior=prior, progress=False, max_iter=50)
    for a, b in zip(before, stats_snapshot(net), strict=True):
        assert torch.equal(a, b)
    assert not any(m.training for m in net.modules())


def test_hooks_removed_and_forward_stops_early():
    net = conv_net()
    prior = BatchNormPrior(net, input_shape=(1, 9, 9))
    x = torch.randn(2, 1, 9, 9, generator=torch.Generator().manual_seed(9), dtype=F64)
    feats = prior.features(x)
    assert [type(b).__name__ for b, _ in feats] == ["BatchNorm2d", "BatchNorm2d", "BatchNorm1d"]
    assert [tuple(h.shape) for _, h in feats] == [(2, 3, 7, 7), (2, 4, 3, 3), (2, 6)]
    copy = prior._model_for(F64, x.device)[0]
    assert all(not m._forward_pre_hooks for m in copy.modules())
    assert all(not m._forward_pre_hooks for m in net.modules())
    # nothing after the last BatchNorm layer runs: a layer there that would fail is harmless
    tail = nn.Sequential(conv_net(), nn.Linear(99, 1)).double()
    assert BatchNormPrior(tail, input_shape=(1, 9, 9)).log_prob(x).shape == (2,)


def test_no_batchnorm_raises():
    with pytest.raises(NNInvError, match="BatchNorm layers.*Sequential has none"):
        BatchNormPrior(nn.Sequential(nn.Linear(3, 2), nn.ReLU()))
    untracked = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2, track_running_stats=False))
    with pytest.raises(NNInvError, match="running statistics"):
        BatchNormPrior(untracked)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(weight=0), "weight must be positive"),
        (dict(tv=-1.0), "tv must be a non-negative"),
        (dict(statistics="pooled"), "statistics must be one of"),
        (dict(eps=float("nan")), "eps must be positive"),
        (dict(first_multiplier=0), "first_multiplier must be positive"),
    ],
)
def test_bad_options(kwargs, match):
    with pytest.raises(NNInvError, match=match):
        BatchNormPrior(conv_net(), input_shape=(1, 9, 9), **kwargs)


def test_bad_inputs():
    prior = BatchNormPrior(conv_net(), input_shape=(1, 9, 9))
    with pytest.raises(NNInvError, match="expects inputs shaped"):
        prior.log_prob(torch.zeros(2, 1, 8, 8, dtype=F64))
    with pytest.raises(NNInvError, match="non-empty batch"):
        prior.log_prob(torch.zeros(0, 1, 9, 9, dtype=F64))
    with pytest.raises(NNInvError, match="floating inputs"):
        prior.log_prob(torch.zeros(2, 1, 9, 9, dtype=torch.int64))
    with pytest.raises(NNInvError, match="cannot be sampled"):
        prior.sample(3)


# =========================================================================== combinations


def test_combination_with_total_variation():
    net = conv_net()
    prior = BatchNormPrior(net, 2.0, input_shape=(1, 9, 9))
    tv = TotalVariation()
    x = torch.randn(3, 1, 9, 9, generator=torch.Generator().manual_seed(10), dtype=F64)
    both = prior + 0.1 * tv
    assert torch.allclose(
        both.log_prob(x), prior.log_prob(x) + 0.1 * tv.log_prob(x), atol=EPS[F64]["close"]
    )
    assert both.event_shape == (1, 9, 9)
    # the built-in tv term is the same thing inside the weight
    inner = BatchNormPrior(net, 2.0, tv=0.05, input_shape=(1, 9, 9))
    assert torch.allclose(inner.log_prob(x), both.log_prob(x), atol=EPS[F64]["close"])


# =========================================================================== inversion


def test_invert_class_targets_and_exact_outputs():
    net = conv_net(11)
    prior = BatchNormPrior(net, input_shape=(1, 9, 9)) + 0.01 * TotalVariation()
    labels = torch.tensor([0, 1, 2, 0])
    x0 = 0.1 * torch.rand(4, 1, 9, 9, generator=torch.Generator().manual_seed(12), dtype=F64)
    inv = invert(net, ClassTarget(labels), method="optimize", prior=prior, x0=x0, progress=False)
    assert bool(inv.converged.all())
    with torch.no_grad():
        assert torch.equal(net(inv.x).argmax(1), labels)
    # exact outputs of random inputs
    xs = torch.randn(3, 1, 9, 9, generator=torch.Generator().manual_seed(13), dtype=F64)
    with torch.no_grad():
        y = net(xs)
    inv = invert(net, y, method="optimize", prior=prior, progress=False)
    assert bool(inv.converged.all())
    with torch.no_grad():
        assert float((net(inv.x) - y).abs().max()) <= EPS[F64]["residual"] * 1e3


# =========================================================================== loaded models


@pytest.fixture(scope="module")
def onnx():
    pytest.importorskip("onnxruntime")
    return pytest.importorskip("onnx")


@pytest.mark.parametrize("fold", [False, True], ids=["unfolded", "folded"])
def test_onnx_cnn_with_batchnorm(onnx, tmp_path, fold):
    net = conv_net(14).float()
    path = tmp_path / "cnn.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            net, (torch.zeros(2, 1, 9, 9),), path, dynamo=False, do_constant_folding=fold,
            input_names=["x"], dynamic_axes={"x": {0: "batch"}},
        )  # fmt: skip
    model = load_model(path)
    if fold:  # the exporter folded the convolutions' BatchNorm into them; one is left
        assert BatchNormPrior(model).layer_names == ["8_BatchNormalization"]
        return
    prior = BatchNormPrior(model)  # the input shape comes from the file
    assert prior.event_shape == (1, 9, 9) and prior.n_layers == 3
    for a, b in zip(bn_layers(model), bn_layers(net), strict=True):
        assert torch.allclose(a.running_mean, b.running_mean)
        assert torch.allclose(a.running_var, b.running_var)
    x = torch.rand(3, 1, 9, 9, generator=torch.Generator().manual_seed(15))
    ref = BatchNormPrior(net, input_shape=(1, 9, 9)).log_prob(x)
    assert torch.allclose(prior.log_prob(x), ref, atol=EPS[torch.float32]["close"], rtol=1e-4)


def test_onnx_all_batchnorm_folded_raises(onnx, tmp_path):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.ReLU(), nn.Flatten()).eval()
    path = tmp_path / "folded.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.zeros(1, 1, 5, 5),), path, dynamo=False)
    with pytest.raises(NNInvError, match="has none.*folded them into the convolutions"):
        BatchNormPrior(load_model(path))


def test_keras_cnn_with_batchnorm(keras, tmp_path):
    keras.utils.set_random_seed(0)
    L = keras.layers
    km = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            L.Conv2D(3, 3, activation="relu"),
            L.BatchNormalization(),
            L.Flatten(),
            L.Dense(4),
            L.BatchNormalization(),
            L.Dense(3),
        ]
    )
    x = np.random.default_rng(0).uniform(size=(32, 8, 8, 1)).astype(np.float32)
    km.compile(optimizer="adam", loss="mse")
    km.fit(x, np.zeros((32, 3), np.float32), epochs=1, batch_size=8, verbose=0)
    km.save(tmp_path / "cnn.keras")
    model = load_model(tmp_path / "cnn.keras")
    prior = BatchNormPrior(model)
    assert prior.n_layers == 2 and prior.event_shape == (8, 8, 1)
    moving = [
        np.asarray(w) for layer in km.layers if "batch" in layer.name for w in layer.weights[2:]
    ]
    ours = [t.detach().numpy() for b in bn_layers(model) for t in (b.running_mean, b.running_var)]
    for a, b in zip(moving, ours, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6)
    e = prior.log_prob(torch.from_numpy(x[:2]))
    assert e.shape == (2,) and bool(torch.isfinite(e).all())


# =========================================================================== CLI


def export_onnx(net: nn.Module, path) -> None:
    """Export the 9x9 conv net to ONNX with its BatchNorm layers kept (not folded)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            net, (torch.zeros(2, 1, 9, 9),), path, dynamo=False, do_constant_folding=False,
            input_names=["x"], dynamic_axes={"x": {0: "batch"}},
        )  # fmt: skip


def test_cli_invert_prior_batchnorm(onnx, tmp_path):
    import contextlib
    import io

    from nninv.cli import main

    torch.manual_seed(0)
    net = conv_net(11).float()
    path = tmp_path / "bn.onnx"
    export_onnx(net, path)
    out = tmp_path / "x.npy"
    argv = ["invert", path, "--target", "class=0,1,2", "--samples", "2", "--prior", "batchnorm"]
    argv += ["--out", out]
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = main([str(a) for a in argv])
    assert code == 0, buf.getvalue()
    assert "method optimize: 6 samples, 6 converged" in buf.getvalue()
    x = np.load(out)
    assert x.shape == (6, 1, 9, 9)
    assert not np.allclose(x[0], x[1])  # two different samples of class 0
    with torch.no_grad():
        pred = net(torch.from_numpy(x)).argmax(1)
    assert pred.tolist() == [0, 0, 1, 1, 2, 2]
    assert out.with_suffix(".png").is_file()
    # usage errors
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        bad = main([str(a) for a in [*argv, "--prior-data", out]])
    assert bad == 2 and "needs no --prior-data" in err.getvalue()


def test_cli_invert_coarse_option(onnx, tmp_path):
    import contextlib
    import io

    from nninv.cli import main
    from nninv.cli.invert import _coarse

    assert _coarse(None, (1, 28, 28), True) == (14, 14)  # the batchnorm default
    assert _coarse(None, (1, 28, 28), False) is None
    assert _coarse(None, (1, 9, 9), True) is None  # too small to go coarser
    assert _coarse("0", (1, 28, 28), True) is None and _coarse("7,5", (1, 28, 28), True) == (7, 5)
    net = conv_net(11).float()
    path = tmp_path / "bn.onnx"
    export_onnx(net, path)
    out = tmp_path / "x.npy"
    argv = ["invert", path, "--target", "class=0,1,2", "--prior", "batchnorm", "--coarse", "5"]
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = main([str(a) for a in [*argv, "--out", out]])
    assert code == 0, buf.getvalue()
    assert "method optimize: 3 samples, 3 converged" in buf.getvalue()
    with torch.no_grad():
        assert net(torch.from_numpy(np.load(out))).argmax(1).tolist() == [0, 1, 2]
    for extra, msg in [
        (["--coarse", "a"], "--coarse must be H or H,W"),
        (["--coarse", "9"], "below the input's (H, W) = (9, 9)"),
    ]:
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            # --overwrite: the first run's x.npy is there, and the --coarse error is the point
            bad = main([str(a) for a in [*argv[:-2], *extra, "--out", out, "--overwrite"]])
        assert bad == 2 and msg in err.getvalue(), err.getvalue()

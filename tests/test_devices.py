"""Device and dtype follow the inputs: every public entry point, on each available device.

The ``device`` fixture is ``cpu`` always and ``cuda`` where a GPU is present
(skipped with the reason otherwise). With no GPU, device-following is still
checked in the one way a CPU allows: the default dtype is set to the *other*
float dtype while a run computes, so a tensor made without ``dtype=`` (or a
silent ``.float()``) shows up as a wrong result dtype.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import nninv
from nninv.priors import GaussianMixturePrior, GaussianPrior
from tolerances import EPS

DTYPES = [torch.float64, torch.float32]


@pytest.fixture(params=["cpu", "cuda"])
def device(request) -> torch.device:
    if request.param == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA device on this machine")
    return torch.device(request.param)


@pytest.fixture(params=DTYPES, ids=["float64", "float32"])
def dtype(request):
    other = torch.float32 if request.param == torch.float64 else torch.float64
    old = torch.get_default_dtype()
    torch.set_default_dtype(other)  # anything made without dtype= comes out wrong
    yield request.param
    torch.set_default_dtype(old)


def _relu(device, dtype) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))
        return net.to(device, dtype)


def _data(n, d, device, dtype, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, d, generator=g, dtype=torch.float64).to(device, dtype)


def _on(t, device, dtype):
    assert t.device.type == device.type, (t.device, device)
    assert t.dtype == dtype, (t.dtype, dtype)


@pytest.mark.parametrize("method", ["pinv", "analytic", "optimize"])
def test_invert_follows(seed_model, device, dtype, method):
    f = seed_model(dtype, 12, 4, device=device)
    X = _data(200, 12, device, dtype)
    prior = GaussianPrior.fit(X) if method != "pinv" else None
    with torch.no_grad():
        y = f(_data(5, 12, device, dtype, seed=2))
    inv = nninv.invert(f, y, method, prior)
    _on(inv.x, device, dtype)
    _on(inv.residual, device, dtype)
    assert inv.converged.device.type == device.type and inv.converged.dtype == torch.bool
    assert float(inv.residual.max()) <= EPS[dtype]["residual"] * 10


@pytest.mark.parametrize("kind", ["gaussian", "mixture"])
def test_prior_fit_follows(device, dtype, kind):
    X = _data(300, 6, device, dtype)
    if kind == "gaussian":
        p = GaussianPrior.fit(X)
    else:
        p = GaussianMixturePrior.fit(X, n_components=2, seed=0)
    # a prior is fitted and kept in float64 on the CPU (its Cholesky factors need it) and
    # serves queries in their own dtype and device; its samples are float64 CPU draws
    _on(p.sample(4, seed=0), torch.device("cpu"), torch.float64)
    _on(p.log_prob(X[:3]), device, dtype)
    B = _data(2, 6, device, dtype, seed=3)
    _on(p.posterior(B).mean(_data(3, 2, device, dtype, seed=4)), device, dtype)


def test_preimage_follows(device, dtype):
    f = _relu(device, dtype)
    x = _data(1, 4, device, dtype)
    with torch.no_grad():
        y = f(x)
    pre = nninv.preimage(f, y[0], bounds=(0.0, 1.0), around=x[0])
    assert (pre.dtype, pre.device.type) == (dtype, device.type)
    # the geometry (polytope, basis, membership, walks) is computed in float64 on the CPU,
    # whatever the model's dtype: documented, and what this checks
    for name in ("basis", "member"):
        t = getattr(pre, name)
        assert isinstance(t, torch.Tensor), name
        _on(t, torch.device("cpu"), torch.float64)
    # what it hands out comes back in the caller's dtype, on the caller's device
    xs = pre.sample(3, seed=0)
    _on(xs, device, dtype)
    _on(pre.draw(3, seed=0, method="hit-and-run").x, device, dtype)
    P = pre.project(_data(2, 4, device, dtype, seed=5))
    _on(P, device, dtype)
    # a NumPy reference is a CPU array: its projection is a CPU tensor of its dtype
    other = torch.float32 if dtype == torch.float64 else torch.float64
    _on(pre.project(_data(2, 4, device, other, seed=5).cpu().numpy()), torch.device("cpu"), other)
    assert bool(pre.contains(x).all()) and bool(pre.contains(xs).all())
    assert bool(pre.contains(P).all())


def test_preimage_class_and_target_dtype(seed_model, device, dtype):
    f = seed_model(dtype, 12, 4, device=device)
    other = torch.float32 if dtype == torch.float64 else torch.float64
    x = _data(1, 12, device, dtype)
    with torch.no_grad():
        y = f(x)[0]
    # a class target has no dtype: the model's; an exact target's own floating dtype wins
    _on(nninv.preimage(f, nninv.ClassTarget([1]), bounds=(0, 1)).sample(2, seed=0), device, dtype)
    pre = nninv.preimage(f, y.to(other), bounds=(0, 1))
    _on(pre.sample(2, seed=0), device, other)
    _on(pre.project(x), device, dtype)


def test_closest_follows(device, dtype):
    # the LP/MILP parts run on the CPU in float64 (HiGHS); the answer comes back in x's
    # dtype and on its device, and that very value is the one the model confirmed
    f = _relu(device, dtype)
    x = _data(1, 4, device, dtype)
    with torch.no_grad():
        k = int(f(x)[0].argsort()[-2])  # the runner-up class: reachable in [0, 1]^4
    res = nninv.closest(f, x[0], nninv.ClassTarget([k]), time_limit=20)
    assert res.x is not None and res.status == "optimal"
    _on(res.x, device, dtype)
    with torch.no_grad():
        assert int(f(res.x).argmax()) == k
    assert float((res.x.double() - x.double()).abs().max()) == pytest.approx(
        res.distance, rel=1e-12
    )
    assert res.bound <= res.distance


def test_stream_writes_the_computation_dtype(seed_model, tmp_path, device, dtype):
    from nninv.distributed import invert_file

    f = seed_model(dtype, 12, 4, device=device)
    with torch.no_grad():
        y = f(_data(9, 12, device, dtype)).cpu().numpy()
    np.save(tmp_path / "y.npy", y)
    res = invert_file(f, tmp_path / "y.npy", tmp_path / "x.npy", "pinv", progress=False)
    x = np.load(res.x_path)
    assert x.dtype == y.dtype and np.load(res.residual_path).dtype == y.dtype


def test_decoder_follows(seed_model, tmp_path, device, dtype):
    pytest.importorskip("safetensors")
    from nninv.learned import Decoder

    f = seed_model(dtype, 12, 4, device=device)
    X = _data(64, 12, device, dtype)
    dec = Decoder.fit(f, X, epochs=1, hidden=(16,), progress=False)
    assert dec.device.type == device.type  # trained where the model and data are
    with torch.no_grad():
        y = f(X[:3])
    g = dec(y)
    _on(g, device, dtype)
    inv = nninv.invert(f, y, "decoder", decoder=dec)
    _on(inv.x, device, dtype)
    # a saved decoder loads onto the CPU, moves with .to, and answers the same
    back = Decoder.load(dec.save(tmp_path / "d.safetensors"))
    assert back.device.type == "cpu"
    assert back.to(device) is back and back.device.type == device.type
    _on(back(y), device, dtype)
    assert torch.equal(back(y), g)


def test_flow_and_posterior_follow(seed_model, tmp_path, device, dtype):
    pytest.importorskip("zuko")
    from nninv.learned import ConditionalFlow, Decoder

    f = seed_model(dtype, 12, 4, device=device)
    X = _data(64, 12, device, dtype)
    dec = Decoder.fit(f, X, epochs=1, hidden=(16,), progress=False)
    flow = ConditionalFlow.fit(f, X, decoder=dec, epochs=1, hidden=(16,), progress=False)
    assert flow.device.type == device.type and flow.decoder.device.type == device.type
    with torch.no_grad():
        y = f(X[:2])
    s = flow.sample(y, 3, seed=0)
    _on(s, device, dtype)
    assert torch.equal(flow.sample(y, 3, seed=0), s)  # seeded on its device
    post = nninv.posterior(f, y, flow, n=3)
    _on(post.x, device, dtype)
    back = ConditionalFlow.load(flow.save(tmp_path / "f.safetensors"))
    assert back.device.type == "cpu" and back.decoder.device.type == "cpu"
    assert back.to(device) is back and back.device.type == device.type
    assert torch.equal(back.sample(y, 3, seed=0), s)


def test_diagnose_runs_on_the_device(device, dtype):
    f = _relu(device, dtype)
    d = nninv.diagnose(f, _data(50, 4, device, dtype))
    assert d.input_shape == (4,) and d.output_shape == (3,)
    assert next(f.parameters()).device.type == device.type  # the caller's model stays put


def test_loaded_model_moves_and_inverts(seed_model, tmp_path, device, dtype):
    path = tmp_path / "f.pt"
    torch.jit.save(torch.jit.script(seed_model(torch.float32, 12, 4).eval()), str(path))
    # loaded under torch's usual default dtype: with float64 as the default, the TorchScript
    # check draws float64 inputs for the float32 model and the archive comes back opaque
    # (a bug in model/io/_torchscript.py, reported in issue 17's note)
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float32)
    try:
        g = nninv.load_model(path)
    finally:
        torch.set_default_dtype(old)
    p = next(g.parameters())
    assert (p.device.type, p.dtype) == ("cpu", torch.float32)  # files load so, documented
    g = g.to(device, dtype)
    with torch.no_grad():
        y = g(_data(3, 12, device, dtype))
    inv = nninv.invert(g, y, "pinv")
    _on(inv.x, device, dtype)


def test_other_priors_follow(device, dtype):
    from torch import nn as tnn

    from nninv.priors import L2, BatchNormPrior, CombinedPrior, TotalVariation

    x = _data(3, 16, device, dtype).reshape(3, 1, 4, 4)
    for prior in (
        L2(0.5),
        TotalVariation(0.1),
        CombinedPrior([(1.0, L2()), (2.0, TotalVariation())]),
    ):
        _on(prior.log_prob(x), device, dtype)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = tnn.Sequential(tnn.Linear(4, 3), tnn.BatchNorm1d(3), tnn.ReLU(), tnn.Linear(3, 2))
    bn = BatchNormPrior(net.to(device, dtype).eval())
    _on(bn.log_prob(_data(5, 4, device, dtype)), device, dtype)


def test_metrics_follow(device, dtype):
    from nninv.metrics import psnr, ssim

    a = _data(2, 64, device, dtype).reshape(2, 1, 8, 8)
    b = (a + 0.05).clamp(0, 1)
    _on(psnr(a, b), device, dtype)
    _on(ssim(a, b), device, dtype)


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray", reason="Ray not installed: pip install 'nninv[ray]'")
    pytest.importorskip("pyarrow", reason="pyarrow not installed: pip install 'nninv[ray]'")
    gpus = torch.cuda.device_count()
    ray.init(num_cpus=1, num_gpus=gpus, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.mark.ray
@pytest.mark.slow
def test_invert_dataset_follows(seed_model, ray_cluster, tmp_path, device, dtype):
    import pyarrow.parquet as pq

    from nninv.distributed import invert_dataset

    f = seed_model(dtype, 12, 4, device=device)
    with torch.no_grad():
        y = f(_data(40, 12, device, dtype))
    np.save(tmp_path / "y.npy", y.cpu().numpy())
    run = invert_dataset(
        f,
        tmp_path / "y.npy",
        "pinv",
        out=tmp_path / "out",
        batch_size=20,
        gpus_per_worker=1 if device.type == "cuda" else 0,
    )
    table = pq.ParquetDataset([str(p) for p in run.files]).read()
    x = table.column("x").combine_chunks().values.to_numpy()
    assert run.n == 40 and run.n_converged == 40
    assert x.dtype == y.cpu().numpy().dtype  # the computation dtype, written as is
    assert table.column("residual").to_numpy().dtype == x.dtype

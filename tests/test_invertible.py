"""The invertibility battery for nninv.invertible, the bijective method and diagnose's report."""

from __future__ import annotations

import warnings

import pytest
import torch

import nninv
from nninv import NNInvError, NNInvWarning
from nninv.invertible import (
    ActNorm,
    AdditiveCoupling,
    AffineCoupling,
    BijectiveClassifier,
    InvConv1x1,
    InvertibleSequential,
    IResBlock,
    Squeeze,
)
from tolerances import EPS

#: Round-trip tolerance per dtype (the issue's targets).
ROUND_TRIP = {torch.float64: 1e-10, torch.float32: 1e-5}


def _perturbed(block, seed=0):
    """The block with every parameter moved off its (often identity) initial value."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in block.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    for m in block.modules():
        if isinstance(m, IResBlock):
            m.tighten()
    return block.eval()


BLOCKS = {
    "actnorm": (lambda: ActNorm(6), (6,)),
    "actnorm-image": (lambda: ActNorm(2), (2, 2, 2)),
    "additive": (lambda: AdditiveCoupling(6, hidden=8), (6,)),
    "affine": (lambda: AffineCoupling(6, hidden=8), (6,)),
    "affine-image": (lambda: AffineCoupling(8, hidden=8), (2, 2, 2)),
    "invconv": (lambda: InvConv1x1(6, seed=1), (6,)),
    "invconv-image": (lambda: InvConv1x1(3, seed=2), (3, 2, 2)),
    "squeeze": (lambda: Squeeze(), (1, 2, 4)),
    "iresnet": (lambda: IResBlock(6, hidden=5, lipschitz=0.9), (6,)),
    "iresnet-newton": (lambda: IResBlock(6, hidden=5, lipschitz=0.9, solver="newton"), (6,)),
    "sequential": (
        lambda: InvertibleSequential(
            ActNorm(6), AffineCoupling(6, hidden=8), InvConv1x1(6), IResBlock(6, hidden=4)
        ),
        (6,),
    ),
}


def _block(name, dtype):
    make, shape = BLOCKS[name]
    with torch.random.fork_rng():
        torch.manual_seed(0)
        b = make()
    return _perturbed(b.to(dtype)), shape


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("name", sorted(BLOCKS))
def test_round_trip(name, dtype):
    b, shape = _block(name, dtype)
    x = torch.randn(16, *shape, dtype=dtype, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y, logdet = b(x)
        x2, report = b.inverse(y)
    assert logdet.shape == (16,) and logdet.dtype == dtype
    assert x2.shape == x.shape and x2.dtype == dtype
    assert bool(report.converged.all())
    assert float((x2 - x).abs().max()) <= ROUND_TRIP[dtype]


@pytest.mark.parametrize("name", sorted(BLOCKS))
def test_logdet_matches_autograd_jacobian(name):
    b, shape = _block(name, torch.float64)
    x = torch.randn(3, *shape, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    _, logdet = b(x)
    for i in range(3):
        J = torch.autograd.functional.jacobian(lambda v: b(v.unsqueeze(0))[0].reshape(-1), x[i])
        J = J.reshape(x[i].numel(), x[i].numel())
        ref = torch.linalg.slogdet(J).logabsdet
        assert abs(float(logdet[i].detach() - ref)) <= EPS[torch.float64]["close"]


@pytest.mark.parametrize("name", sorted(BLOCKS))
def test_forward_and_inverse_logdets_cancel(name):
    b, shape = _block(name, torch.float64)
    x = torch.randn(8, *shape, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    y, logdet = b(x)
    _, report = b.inverse(y)
    assert float((logdet + report.logdet).abs().max()) <= EPS[torch.float64]["close"]


@pytest.mark.parametrize("name", sorted(BLOCKS))
def test_gradcheck_float64(name):
    b, shape = _block(name, torch.float64)
    x = torch.randn(2, *shape, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    x.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda v: b(v), (x,), eps=1e-6, atol=1e-6)


def test_invconv_starts_as_the_seeded_rotation():
    g = torch.Generator().manual_seed(7)
    q, _ = torch.linalg.qr(torch.randn(5, 5, generator=g, dtype=torch.float64))
    w = InvConv1x1(5, seed=7).double().weight()
    assert float((w - q).abs().max()) <= 1e-6  # the parameters are stored in float32


def test_invconv_float32_inference_at_784_channels_is_accurate():
    # the LU factors of a 784-channel rotation are badly conditioned: products with them in
    # float32 lost ~4 digits (round trip 2e-4); inference goes through W and W^-1 formed in
    # float64 and rounded once
    b = InvConv1x1(784, seed=0)
    x = torch.randn(64, 784, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y, _ = b(x)
        x2, report = b.inverse(y)
        y64 = x.double() @ b.double().weight().T
    assert bool(report.converged.all())
    assert float((y.double() - y64).abs().max()) <= 1e-5
    assert float((x2 - x).abs().max()) <= 1e-5


def test_invconv_inference_matrices_follow_the_weights():
    b = InvConv1x1(6, seed=0).double()
    x = torch.randn(3, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        y0, _ = b(x)
        b.lower.add_(0.1)  # an in-place update, as an optimiser step makes
        y1, _ = b(x)
    assert float((y1 - x @ b.weight().T).abs().max()) <= EPS[torch.float64]["close"]
    assert float((y1 - y0).abs().max()) > 1e-3


def test_squeeze_moves_2x2_blocks_to_channels():
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    y, _ = Squeeze()(x)
    assert y.shape == (1, 4, 2, 2)
    assert y[0, :, 0, 0].tolist() == [0.0, 1.0, 4.0, 5.0]


@pytest.mark.parametrize("solver, iterations", [("fixed_point", (30, 60)), ("newton", (1, 1))])
def test_iresnet_inverse_against_closed_form(solver, iterations):
    """A 1-D block with a linear g: x + a x = y has the closed form x = y / (1 + a).

    The fixed point contracts by 0.5 per iteration; Newton solves a linear equation in one step.
    """
    b = IResBlock(1, hidden=1, lipschitz=0.5, tol=1e-14, solver=solver).double().eval()
    b.normalize = False  # the weights below already have Lip(g) = 0.5
    with torch.no_grad():
        b.w1.fill_(1.0)
        b.w2.fill_(0.5)
        b.b1.fill_(10.0)  # elu is the identity on the positive side
        b.b2.fill_(-5.0)
    y = torch.tensor([[3.0], [-1.0]], dtype=torch.float64)
    x, report = b.inverse(y)
    # g(x) = 0.5 (x + 10) - 5 = 0.5 x, so x = y / 1.5 while x + 10 > 0
    assert torch.allclose(x, y / 1.5, atol=1e-13, rtol=0)
    lo, hi = iterations
    assert bool(report.converged.all()) and lo <= report.iterations_max <= hi


def test_iresnet_newton_needs_fewer_iterations_than_the_fixed_point():
    fp = _perturbed(IResBlock(6, hidden=8, lipschitz=0.9).double())
    nt = _perturbed(IResBlock(6, hidden=8, lipschitz=0.9, solver="newton").double())
    x = torch.randn(32, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(12))
    y, _ = fp(x)
    x_fp, r_fp = fp.inverse(y)
    x_nt, r_nt = nt.inverse(y)
    assert bool(r_fp.converged.all()) and bool(r_nt.converged.all())
    assert float((x_nt - x).abs().max()) <= ROUND_TRIP[torch.float64]
    assert r_nt.iterations_max < r_fp.iterations_median


@pytest.mark.parametrize("solver", ["fixed_point", "newton"])
def test_iresnet_past_lipschitz_one_reports_instead_of_returning_garbage(solver):
    b = _perturbed(IResBlock(6, hidden=16, lipschitz=0.9, solver=solver).double())
    b.normalize = False
    with torch.no_grad():
        b.w1.mul_(6.0)
        b.w2.mul_(6.0)
    assert b.lipschitz()["g"] > 1
    y = 5 * torch.randn(64, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    with pytest.warns(NNInvWarning, match="Lipschitz constant of g is"):
        x, report = b.inverse(y)
    assert int((~report.converged).sum()) > 0
    # whatever is reported converged really is an inverse; the rest is flagged
    ok = report.converged
    assert solver != "newton" or bool(ok.any())  # so the check below runs on one of the two
    if bool(ok.any()):
        yx, _ = b(x[ok])
        assert float((yx - y[ok]).abs().max()) <= EPS[torch.float64]["close"]
    # each flagged sample hit the iteration cap or diverged (non-finite residual)
    capped = report.iterations[~ok] == b.max_iter
    diverged = ~torch.isfinite(report.residual[~ok])
    assert bool((capped | diverged).all())


def test_iresnet_tighten_makes_the_bound_hold_with_close_singular_values():
    # power iteration converges at the ratio of the top two singular values; here 1.0003
    b = IResBlock(20, 8, lipschitz=0.9, seed=0).double()
    g = torch.Generator().manual_seed(0)
    for w in (b.w1, b.w2):
        q1, _ = torch.linalg.qr(
            torch.randn(w.shape[0], w.shape[0], generator=g, dtype=torch.float64)
        )
        q2, _ = torch.linalg.qr(
            torch.randn(w.shape[1], w.shape[1], generator=g, dtype=torch.float64)
        )
        k = min(w.shape)
        sv = torch.cat([torch.tensor([3.0, 2.999], dtype=torch.float64), torch.ones(k - 2)])
        with torch.no_grad():
            w.copy_(q1[:, :k] @ torch.diag(sv) @ q2[:, :k].T)
    b.tighten()
    assert b.lipschitz()["g"] <= 0.9 * (1 + 1e-12)


def test_iresnet_iteration_cap_is_reported():
    b = _perturbed(IResBlock(6, hidden=8, lipschitz=0.9, max_iter=2).double())
    y = torch.randn(10, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    x, report = b.inverse(y)
    assert report.iterations_max == 2 and not bool(report.converged.all())
    assert report.n_failed == int((report.residual > 1e-12).sum())


@pytest.mark.parametrize(
    "make, shape",
    [
        (lambda: ActNorm(3), (2, 4)),
        (lambda: AffineCoupling(6), (2, 5)),
        (lambda: InvConv1x1(3), (2, 4, 2, 2)),
        (lambda: IResBlock(3), (2, 4)),
        (lambda: Squeeze(), (2, 1, 3, 4)),
    ],
)
def test_wrong_shapes_raise(make, shape):
    with pytest.raises(NNInvError, match=r"\(2,"):
        make()(torch.zeros(shape))


def test_bad_constructor_arguments_raise():
    with pytest.raises(NNInvError, match="lipschitz"):
        IResBlock(4, lipschitz=1.0)
    with pytest.raises(NNInvError, match="unknown solver 'bisect'; valid: fixed_point, newton"):
        IResBlock(4, solver="bisect")
    with pytest.raises(NNInvError, match="mask"):
        AffineCoupling(4, mask=torch.ones(4, dtype=torch.bool))
    with pytest.raises(NNInvError, match="slope"):
        AffineCoupling(4, slope=2.0)
    with pytest.raises(NNInvError, match="not an nninv InvertibleBlock"):
        InvertibleSequential(torch.nn.Linear(2, 2))  # type: ignore[arg-type]


def test_sequential_aggregates_reports():
    f = InvertibleSequential(IResBlock(4, hidden=4, lipschitz=0.9), IResBlock(4, hidden=4))
    f = _perturbed(f.double())
    y = torch.randn(5, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(8))
    _, report = f.inverse(y, check=True)
    assert len(report.blocks) == 2
    assert torch.equal(report.iterations, report.blocks[0].iterations + report.blocks[1].iterations)
    assert report.forward_residual is not None
    assert float(report.forward_residual.max()) <= EPS[torch.float64]["residual"]


# -- the classifier -----------------------------------------------------------------------


def _tiny(dtype=torch.float64):
    return BijectiveClassifier(
        12, classes=3, couplings=2, hidden=16, head_hidden=16, iresnet=1, iresnet_hidden=6, seed=0
    ).to(dtype)


def _blobs(n=300, d=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 3
    centers = 2 * torch.randn(3, d, generator=g)
    return centers[labels] + 0.5 * torch.randn(n, d, generator=g), labels


def test_classifier_trains_and_round_trips(tmp_path):
    X, labels = _blobs()
    # fixed mixing (the default) needs more steps than learned on this tiny problem
    f = _tiny(torch.float32).fit(X, labels, epochs=10, batch_size=50, lr=3e-3, progress=False)
    assert f.accuracy(X, labels) >= 0.95
    assert all(v < 1 for v in f.lipschitz().values())
    x2, report = f.inverse(f(X).detach())
    assert bool(report.converged.all()) and float((x2 - X).abs().max()) <= 1e-4
    path = f.save(tmp_path / "bij.safetensors")
    g = BijectiveClassifier.load(path)
    assert torch.equal(g(X), f(X))


@pytest.mark.parametrize("mixing", ["fixed", "learned"])
def test_classifier_mixing_is_fixed_or_learned(mixing):
    X, labels = _blobs()
    f = BijectiveClassifier(
        12, classes=3, couplings=2, hidden=16, head_hidden=16, iresnet_hidden=6, mixing=mixing
    )
    mixes = [b for b in f.flow if isinstance(b, InvConv1x1)]
    before = [b.weight().detach().clone() for b in mixes]
    f.fit(X, labels, epochs=5, batch_size=50, lr=3e-3, progress=False)
    moved = [float((b.weight() - w).abs().max()) for b, w in zip(mixes, before)]
    if mixing == "fixed":
        assert moved == [0.0, 0.0]
    else:
        assert min(moved) > 1e-4 and f.accuracy(X, labels) >= 0.95
    with pytest.raises(NNInvError, match="mixing"):
        BijectiveClassifier(12, classes=3, mixing="rotated")


def test_classifier_load_rejects_other_files(tmp_path):
    from safetensors.torch import save_file

    p = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(2)}, str(p), metadata={"format": "something"})
    with pytest.raises(NNInvError, match="not an nninv BijectiveClassifier"):
        BijectiveClassifier.load(p)
    with pytest.raises(NNInvError, match="does not exist"):
        BijectiveClassifier.load(tmp_path / "missing.safetensors")


def test_auto_picks_the_exact_inverse():
    f = _perturbed(_tiny())
    x = torch.randn(7, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(9))
    inv = nninv.invert(f, f(x).detach())
    assert inv.method == "bijective"
    assert bool(inv.converged.all())
    assert float(inv.residual.max()) <= EPS[torch.float64]["residual"]
    assert float((inv.x - x).abs().max()) <= ROUND_TRIP[torch.float64]
    assert inv.info["inverse_report"].iterations_max > 0


def test_bijective_method_reports_a_failed_inverse():
    f = _perturbed(_tiny())
    f.flow.blocks[-1].max_iter = 1
    x = torch.randn(4, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(10))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NNInvWarning)
        inv = nninv.invert(f, f(x).detach(), method="bijective")
    assert not bool(inv.converged.any())
    assert all("did not converge" in r for r in inv.info["reasons"])


def test_bijective_method_rejects_other_models():
    lin = torch.nn.Linear(4, 4).double()
    with pytest.raises(NNInvError, match="bijective = True"):
        nninv.invert(lin, torch.zeros(1, 4, dtype=torch.float64), method="bijective")


def test_metamers_keep_the_logits_and_change_the_image():
    f = _perturbed(_tiny())
    X, _ = _blobs(6)
    X = X.double()
    m, report = f.metamers(X[:3], X[3:])
    assert bool(report.converged.all())
    la, lm = f.logits(X[:3]), f.logits(m)
    assert float((la - lm).abs().max()) <= EPS[torch.float64]["close"]
    assert float((m - X[:3]).abs().max()) > 0.1
    zb, zm = f(X[3:])[:, 3:], f(m)[:, 3:]
    assert float((zb - zm).abs().max()) <= EPS[torch.float64]["close"]


def test_preimage_samples_share_one_output():
    f = _perturbed(_tiny())
    X, labels = _blobs()
    f.fit_z(X.double(), labels)
    logits = torch.tensor([3.0, -1.0, 0.5], dtype=torch.float64)
    xs, report = f.preimage_samples(logits, 5, generator=torch.Generator().manual_seed(11))
    assert bool(report.converged.all()) and xs.shape == (5, 12)
    assert float((f.logits(xs) - logits).abs().max()) <= EPS[torch.float64]["close"]
    assert float(torch.pdist(xs).min()) > 0.1
    with pytest.raises(NNInvError, match="fit_z"):
        _tiny().sample_z(2)


def test_diagnose_reports_injective_with_lipschitz_bounds():
    f = _perturbed(_tiny())
    d = nninv.diagnose(f)
    assert d.injective is True and d.preimage_dim == 0
    assert d.lipschitz is not None and set(d.lipschitz) == {"6.g"}
    assert all(0 < v < 1 for v in d.lipschitz.values())
    assert "invertible by construction" in d.verdict and "6.g" in d.verdict


# -- files: load_model, nninv diagnose, nninv invert ----------------------------------------


def _run_cli(argv):
    import contextlib
    import io

    from nninv.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


@pytest.fixture
def saved(tmp_path):
    f = _perturbed(_tiny(torch.float32))
    return f, f.save(tmp_path / "bij.safetensors")


def test_load_model_reads_a_saved_classifier(saved):
    f, path = saved
    g = nninv.load_model(path)
    assert isinstance(g, BijectiveClassifier) and not g.training
    x = torch.randn(4, 12, generator=torch.Generator().manual_seed(13))
    assert torch.equal(g(x), f(x))
    assert nninv.diagnose(g).injective is True


def test_a_saved_classifier_loads_in_a_fresh_process(saved):
    """load_model finds the format through its table: no import of nninv.invertible needed."""
    import subprocess
    import sys

    _, path = saved
    code = (
        "import sys\n"
        "from nninv.model.io import load_model\n"
        f"g = load_model({str(path)!r})\n"
        "print(type(g).__name__, 'nninv.invertible' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert out.stdout.split() == ["BijectiveClassifier", "True"]


def test_classifier_files_of_the_first_format_still_load(saved, tmp_path):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    f, path = saved
    with safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata()
    assert meta["format"] == "nninv.BijectiveClassifier" and meta["version"] == "1"
    old = {"format": "nninv.BijectiveClassifier/1", "config": meta["config"]}
    save_file(load_file(str(path)), str(tmp_path / "old.safetensors"), metadata=old)
    x = torch.randn(4, 12, generator=torch.Generator().manual_seed(13))
    for g in (BijectiveClassifier.load(tmp_path / "old.safetensors"), nninv.load_model(path)):
        assert torch.equal(g(x), f(x))
    bad = {"format": "nninv.BijectiveClassifier", "version": "9", "config": meta["config"]}
    save_file(load_file(str(path)), str(tmp_path / "v9.safetensors"), metadata=bad)
    with pytest.raises(NNInvError, match="has version '9'; this nninv reads version"):
        BijectiveClassifier.load(tmp_path / "v9.safetensors")


def test_load_model_still_refuses_plain_safetensors(tmp_path):
    from safetensors.torch import save_file

    p = tmp_path / "w.safetensors"
    save_file({"w": torch.zeros(2)}, str(p))
    with pytest.raises(NNInvError, match="holds weights but no architecture"):
        nninv.load_model(p)


def test_cli_diagnose_reports_the_saved_classifier_injective(saved):
    _, path = saved
    code, out, _ = _run_cli(["diagnose", path])
    assert code == 0
    assert "invertible by construction" in out and "6.g" in out


def test_cli_invert_uses_the_exact_inverse(saved, tmp_path):
    import numpy as np

    f, path = saved
    x = torch.randn(5, 12, generator=torch.Generator().manual_seed(14))
    y = f(x).detach()
    np.save(tmp_path / "y.npy", y.numpy())
    code, out, _ = _run_cli(
        ["invert", path, "--outputs", tmp_path / "y.npy", "--out", tmp_path / "x.npy"]
    )
    assert code == 0, out
    assert "method bijective: 5 samples, 5 converged" in out
    got = np.load(tmp_path / "x.npy")
    assert got.dtype == np.float32
    # the file holds the model's own exact inverse, which reproduces y
    assert np.array_equal(got, f.inverse(y)[0].detach().numpy())
    assert float((f(torch.from_numpy(got)) - y).abs().max()) <= EPS[torch.float32]["residual"]

"""``nninv.verify`` against the truth: brute force on small ReLU nets, the competition's answers.

The truth for a small network comes from enumerating every activation pattern
and solving one LP per pattern (the region where the pattern holds, inside the
box, with the output constraints): the property is ``sat`` iff one is
feasible. The mutation tests show that this check notices an unsound bound.
"""

from __future__ import annotations

import itertools
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.optimize import linprog
from torch import nn

import nninv
from nninv import NNInvError, OutputSet, Polyhedron, verify
from nninv import bounds as bounds_mod
from nninv.cli import main
from nninv.geometry import verify as verify_mod
from nninv.vnnlib import Case, Property

DATA = Path("/work/shared/data/vnncomp/mnist_fc")
ONNX = DATA / "onnx" / "mnist-net_256x2.onnx"
needs_data = pytest.mark.skipif(not ONNX.exists(), reason=f"VNN-COMP mnist_fc not found at {DATA}")


def _net(seed: int, sizes=(3, 4, 4, 3), slope: float = 0.0) -> nn.Sequential:
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.LeakyReLU(slope) if slope else nn.ReLU())
    return nn.Sequential(*layers).double().eval()


def _truth(f: nn.Sequential, lo: np.ndarray, hi: np.ndarray, out: OutputSet) -> bool:
    """Brute force: some activation pattern's region meets the box and the output set."""
    lins = [m for m in f if isinstance(m, nn.Linear)]
    acts = [m for m in f if not isinstance(m, nn.Linear)]
    slopes = [float(getattr(m, "negative_slope", 0.0)) for m in acts]
    widths = [m.out_features for m in lins[:-1]]
    n = lo.size
    for pattern in itertools.product([0, 1], repeat=sum(widths)):
        # affine map x -> z of each layer under this pattern: z = M x + c
        M, c = np.eye(n), np.zeros(n)
        rows, rhs = [], []
        k = 0
        for lin, a, w in zip(lins[:-1], slopes, widths):
            W, b = lin.weight.detach().numpy(), lin.bias.detach().numpy()
            Mz, cz = W @ M, W @ c + b
            on = np.array(pattern[k : k + w], bool)
            k += w
            # on: z >= 0  ->  -z <= 0 ; off: z <= 0
            sign = np.where(on, -1.0, 1.0)
            rows.append(sign[:, None] * Mz)
            rhs.append(-sign * cz)
            s = np.where(on, 1.0, a)
            M, c = s[:, None] * Mz, s * cz
        W, b = lins[-1].weight.detach().numpy(), lins[-1].bias.detach().numpy()
        My, cy = W @ M, W @ c + b
        for part in out.parts:
            A, bb = part.A.numpy(), part.b.numpy()
            A_ub = np.vstack([*rows, A @ My])
            b_ub = np.concatenate([*rhs, bb - A @ cy])
            res = linprog(
                np.zeros(n), A_ub=A_ub, b_ub=b_ub, bounds=list(zip(lo, hi)), method="highs"
            )
            if res.status == 0:
                return True
    return False


def _random_property(seed: int, n_in: int, n_out: int) -> Property:
    g = np.random.default_rng(seed)
    centre = g.uniform(-1, 1, n_in)
    r = g.uniform(0.05, 0.6)
    lo, hi = centre - r, centre + r
    parts = []
    for _ in range(g.integers(1, 3)):
        m = int(g.integers(1, 3))
        A = g.normal(size=(m, n_out))
        b = g.normal(scale=0.3, size=m)
        parts.append(Polyhedron(A, b))
    case = Case(torch.from_numpy(lo), torch.from_numpy(hi), OutputSet(parts))
    return Property((case,), n_in, n_out)


def _check_against_truth(seeds, slope=0.0):  # type: ignore[no-untyped-def]
    """(verify's status, the truth) per seed; definite answers must match."""
    out = []
    for s in seeds:
        f = _net(s, slope=slope)
        prop = _random_property(s, 3, 3)
        res = verify(f, prop, time_limit=30.0, seed=s)
        case = prop.cases[0]
        truth = _truth(f, case.lo.numpy(), case.hi.numpy(), case.output)
        out.append((res, truth))
    return out


@pytest.mark.slow
@pytest.mark.parametrize("slope", [0.0, 0.1])
def test_sound_and_complete_against_brute_force(slope):
    results = _check_against_truth(range(16), slope)
    statuses = [r.status for r, _ in results]
    assert set(statuses) <= {"sat", "unsat"}, statuses
    for s, (res, truth) in enumerate(results):
        assert res.status == ("sat" if truth else "unsat"), f"seed {s}: {res.status}, truth {truth}"
    truths = [t for _, t in results]
    assert any(truths) and not all(truths), "the draw should hold both answers"


def _useless(net, k, C, bounds, lo, hi, *args, **kwargs):  # type: ignore[no-untyped-def]
    low = torch.full((C.shape[0],), -1e9, dtype=torch.float64)  # proves nothing
    return (low, lo.expand(C.shape[0], -1)) if kwargs.get("corner") else low


@pytest.mark.slow
def test_the_exact_path_alone_against_brute_force(monkeypatch):
    """No attack and no output bounds: LP tightening, LP relaxation and MILP decide alone."""
    monkeypatch.setattr(verify_mod, "crown", _useless)
    monkeypatch.setattr(verify_mod, "alpha_crown", _useless)
    monkeypatch.setattr(verify_mod, "_attack", lambda *a, **k: [])
    results = _check_against_truth(range(16, 28))
    for s, (res, truth) in enumerate(results):
        assert res.status == ("sat" if truth else "unsat"), f"seed {16 + s}: {res.status}"
        if truth:
            assert res.method == "milp"
        else:
            assert {c.method for c in res.certificates} <= {"lp", "milp"}
    assert any(t for _, t in results) and not all(t for _, t in results)


def test_mutation_an_unsound_bound_is_caught(monkeypatch):
    """A bound raised by 10 (unsound) turns true ``sat`` answers into ``unsat``: the
    brute-force comparison above must see it (else it would prove nothing)."""
    real = bounds_mod.crown

    def unsound(*args, **kwargs):  # type: ignore[no-untyped-def]
        got = real(*args, **kwargs)
        if isinstance(got, tuple):
            return got[0] + 10.0, got[1]
        return got + 10.0

    monkeypatch.setattr(verify_mod, "crown", unsound)
    monkeypatch.setattr(verify_mod, "_attack", lambda *a, **k: [])  # let the bounds speak first
    results = _check_against_truth(range(8))
    wrong = [s for s, (r, t) in enumerate(results) if t and r.status == "unsat"]
    assert wrong, "an unsound bound went unnoticed by the brute-force check"


def test_mutation_a_flipped_big_m_row_is_caught(monkeypatch):
    """The MILP with the sign of its output rows flipped answers wrongly somewhere."""
    from nninv.geometry import _feasibility

    real = _feasibility.search

    def flipped(net, bounds, lo, hi, A, b, *args, **kwargs):  # type: ignore[no-untyped-def]
        return real(net, bounds, lo, hi, -A, -b, *args, **kwargs)

    monkeypatch.setattr(verify_mod, "search", flipped)
    monkeypatch.setattr(verify_mod, "_attack", lambda *a, **k: [])

    monkeypatch.setattr(verify_mod, "crown", _useless)
    monkeypatch.setattr(verify_mod, "alpha_crown", _useless)
    results = _check_against_truth(range(8))
    wrong = [s for s, (r, t) in enumerate(results) if r.status == ("unsat" if t else "sat")]
    assert wrong, "a flipped constraint went unnoticed by the brute-force check"


def test_a_property_with_no_counterexample_and_one_with_many():
    f = _net(3)
    lo, hi = -torch.ones(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)
    with torch.no_grad():
        ys = f(lo + (hi - lo) * torch.rand(4000, 3, dtype=torch.float64))
    top = float(ys[:, 0].max())
    # y_0 >= top + 5: far above anything sampled (and provably so)
    none = Property((Case(lo, hi, OutputSet.linear([[-1.0, 0, 0]], [-(top + 5.0)])),), 3, 3)
    res = verify(f, none, time_limit=30)
    assert res.status == "unsat" and res.x is None and res.certificates
    assert {c.part for c in res.certificates} == {0}
    # y_0 <= top: most inputs do it
    many = Property((Case(lo, hi, OutputSet.linear([[1.0, 0, 0]], [top])),), 3, 3)
    res = verify(f, many, time_limit=30)
    assert res.status == "sat" and res.method == "attack"
    assert torch.all(res.x.reshape(-1) >= lo) and torch.all(res.x.reshape(-1) <= hi)
    with torch.no_grad():
        assert torch.equal(f(res.x), res.y)
    assert bool(many.output.contains(res.y)[0])


def test_the_counterexample_is_checked_in_the_models_own_dtype():
    f = _net(4).float()
    lo, hi = -torch.ones(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)
    prop = Property((Case(lo, hi, OutputSet.linear([[1.0, 0, 0]], [1e6])),), 3, 3)
    res = verify(f, prop, time_limit=30)
    assert res.status == "sat" and res.x.dtype == torch.float32 and res.y.dtype == torch.float32
    assert torch.equal(f(res.x), res.y)


def test_an_unconfirmed_counterexample_is_never_sat(monkeypatch):
    monkeypatch.setattr(verify_mod._Confirm, "check", lambda self, *a: None)
    f = _net(5)
    lo, hi = -torch.ones(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)
    prop = Property((Case(lo, hi, OutputSet.linear([[1.0, 0, 0]], [1e6])),), 3, 3)
    res = verify(f, prop, time_limit=30)
    assert res.status == "unknown" and res.x is None and "not confirmed" in res.info["note"]


def test_a_smooth_model_gets_the_attack_only():
    f = nn.Sequential(nn.Linear(2, 4), nn.Tanh(), nn.Linear(4, 1)).double()
    lo, hi = torch.zeros(2, dtype=torch.float64), torch.ones(2, dtype=torch.float64)
    easy = Property((Case(lo, hi, OutputSet.linear([[1.0]], [1e3])),), 2, 1)
    assert verify(f, easy, time_limit=10).status == "sat"
    hard = Property((Case(lo, hi, OutputSet.linear([[1.0]], [-1e3])),), 2, 1)
    assert verify(f, hard, time_limit=10).status == "unknown"


def test_a_mismatched_property_is_refused():
    f = _net(6)
    lo, hi = torch.zeros(4, dtype=torch.float64), torch.ones(4, dtype=torch.float64)
    prop = Property((Case(lo, hi, OutputSet.linear([[1.0, 0, 0]], [0.0])),), 4, 3)
    with pytest.raises(NNInvError, match=r"4 inputs and 3 outputs.*\(3,\)"):
        verify(f, prop)
    with pytest.raises(NNInvError, match="time_limit"):
        verify(f, prop, time_limit=0)


def test_the_result_is_frozen():
    f = _net(7)
    lo, hi = -torch.ones(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)
    res = verify(f, Property((Case(lo, hi, OutputSet.linear([[1.0, 0, 0]], [1e6])),), 3, 3))
    with pytest.raises(AttributeError):
        res.status = "unsat"  # type: ignore[misc]


# --- the competition's network ----------------------------------------------------------


@needs_data
@pytest.mark.slow
@pytest.mark.parametrize(
    "name, answer", [("prop_1_0.03.vnnlib", "sat"), ("prop_3_0.03.vnnlib", "unsat")]
)
def test_competition_instances(name, answer):
    import onnxruntime as ort

    prop = nninv.vnnlib.read(DATA / "vnnlib" / name)
    res = verify(ONNX, prop, time_limit=120)
    assert res.status == answer
    if answer == "sat":
        assert res.info["onnxruntime"] is True
        x = res.x.reshape(-1).double()
        assert torch.all(x >= prop.lo) and torch.all(x <= prop.hi)
        sess = ort.InferenceSession(str(ONNX), providers=["CPUExecutionProvider"])
        inp = sess.get_inputs()[0]
        y = sess.run(None, {inp.name: res.x.numpy().reshape(1, 784, 1)})[0]
        assert bool(prop.output.contains(torch.from_numpy(y).double().reshape(1, -1))[0])
    else:
        assert len(res.certificates) == 9


# --- the command line --------------------------------------------------------------------


@needs_data
@pytest.mark.slow
def test_cli_sat_writes_the_result_file(tmp_path, capsys):
    out = tmp_path / "result.txt"
    code = main(
        ["verify", str(ONNX), str(DATA / "vnnlib" / "prop_1_0.03.vnnlib"), "--out", str(out)]
    )
    assert code == 0
    assert capsys.readouterr().out.startswith("sat (")
    lines = out.read_text().splitlines()
    assert lines[0] == "sat" and lines[1].startswith("((X_0 ") and lines[-1].endswith(")")
    assert len(lines) == 1 + 784 + 10 and lines[-1].startswith(" (Y_9 ")
    x = np.array([float(ln.split()[-1].rstrip(")")) for ln in lines[1:785]])
    prop = nninv.vnnlib.read(DATA / "vnnlib" / "prop_1_0.03.vnnlib")
    assert np.all(x >= prop.lo.numpy()) and np.all(x <= prop.hi.numpy())


def test_cli_unsat_and_bad_files(tmp_path, capsys):
    torch.manual_seed(0)
    f = _net(8)
    x = torch.zeros(1, 3, dtype=torch.float64)
    onnx_path = tmp_path / "net.onnx"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.onnx.export(f, (x,), str(onnx_path), dynamo=False)
    except Exception as e:  # pragma: no cover - exporter missing pieces
        pytest.skip(f"torch.onnx.export unavailable: {e}")
    head = "".join(f"(declare-const X_{i} Real)\n" for i in range(3))
    head += "".join(f"(declare-const Y_{j} Real)\n" for j in range(3))
    box = "".join(f"(assert (>= X_{i} -1))\n(assert (<= X_{i} 1))\n" for i in range(3))
    good = tmp_path / "p.vnnlib"
    good.write_text(head + box + "(assert (>= Y_0 1000000))\n")
    out = tmp_path / "r.txt"
    assert main(["verify", str(onnx_path), str(good), "--out", str(out)]) == 0
    assert capsys.readouterr().out.startswith("unsat (")
    assert out.read_text() == "unsat\n"
    bad = tmp_path / "bad.vnnlib"
    bad.write_text(head + box + "(assert (<= (* Y_0 Y_1) 1))\n")
    assert main(["verify", str(onnx_path), str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{bad}:13:" in err[0] and "product of variables" in err[0]
    wrong = tmp_path / "wrong.vnnlib"
    wrong.write_text(
        "(declare-const X_0 Real)\n(declare-const Y_0 Real)\n"
        "(assert (<= X_0 1))\n(assert (>= X_0 0))\n"
    )
    assert main(["verify", str(onnx_path), str(wrong)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "1 inputs and 1 outputs" in err[0]
    assert main(["verify", str(tmp_path / "none.onnx"), str(good)]) == 2
    assert "no such file" in capsys.readouterr().err
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not an onnx file")
    assert main(["verify", str(junk), str(good)]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1

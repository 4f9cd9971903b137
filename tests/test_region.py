"""Decision regions: exact volumes against Monte Carlo, inner ⊆ exact ⊆ outer, sampling, errors."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import nninv
from nninv import NNInvError, OutputSet

#: Monte Carlo agreement, in standard errors.
SE = 4.0
REGION_DIR = Path(os.environ.get("NNINV_REGION_DIR", "/work/shared/data/region"))
VCAS_BOX = [[-0.5, 0.5], [-0.5, 0.5], [0.149, 0.151], [-0.5, 0.5]]


def _net(d: int, seed: int, leaky: bool = False, n_out: int = 3) -> nn.Module:
    torch.manual_seed(seed)
    act = nn.LeakyReLU(0.1) if leaky else nn.ReLU()
    net = nn.Sequential(nn.Linear(d, 8), act, nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, n_out))
    for p in net.parameters():
        nn.init.normal_(p)  # unit weights: many linear regions, every class present
    return net.double()


def _label(model: nn.Module, d: int) -> int:
    """The class whose share of the box is nearest one half."""
    x, _ = _monte_carlo(model, OutputSet.from_class(0, 3), _box(d), 4000)
    with torch.no_grad():
        k = model(torch.from_numpy(x)).argmax(1).numpy()
    return int(np.argmin(np.abs(np.bincount(k, minlength=3) / len(k) - 0.5)))


def _box(d: int) -> list[list[float]]:
    return [[-1.0, 1.0 + 0.5 * i] for i in range(d)]


def _monte_carlo(model, out_set, box, n, seed=1):
    box = np.asarray(box, dtype=np.float64)
    rng = np.random.default_rng(seed)
    x = box[:, 0] + rng.random((n, len(box))) * (box[:, 1] - box[:, 0])
    with torch.no_grad():
        y = model(torch.from_numpy(x).to(next(model.parameters()).dtype)).double()
    inside = out_set.contains(y).numpy()
    return x, inside


@pytest.mark.parametrize(
    ("d", "seed", "leaky"),
    [
        (2, 3, False),
        (3, 0, True),
        pytest.param(4, 0, False, marks=pytest.mark.slow),
        pytest.param(4, 3, True, marks=pytest.mark.slow),
    ],
)
def test_exact_volume_matches_monte_carlo(d, seed, leaky, record_property):
    model = _net(d, seed, leaky)
    out_set = OutputSet.from_class(_label(model, d), 3)
    box = _box(d)
    r = nninv.region(model, out_set, box, "exact")
    assert r.status == "complete" and r.certified and r.coverage == 1.0
    assert r.region_volume == pytest.approx(r.volume)
    box_vol = float(np.prod(np.diff(np.asarray(box), axis=1)))
    assert r.share == pytest.approx(r.volume / box_vol)
    x, inside = _monte_carlo(model, out_set, box, 200_000)
    p = inside.mean()
    se = math.sqrt(max(p * (1 - p), 1e-12) / len(x))
    record_property("share_minus_mc_in_se", (r.share - p) / se)
    assert abs(r.share - p) <= SE * se
    # Pointwise: membership agrees with the model except within a hair of a boundary.
    got = r.contains(x[:20_000]).numpy()
    assert (got != inside[:20_000]).mean() <= 1e-3
    assert sum(q.volume for q in r.polytopes) == pytest.approx(r.volume)


def test_union_of_overlapping_parts_counts_once():
    model = _net(2, 5)
    x, _ = _monte_carlo(model, OutputSet.from_class(0, 3), _box(2), 1000)
    with torch.no_grad():
        y0, y1 = np.median(model(torch.from_numpy(x)).numpy()[:, :2], axis=0)
    out_set = OutputSet.linear([[1.0, 0.0, 0.0]], [y0]) | OutputSet.linear([[0.0, 1.0, 0.0]], [y1])
    r = nninv.region(model, out_set, _box(2), "exact")
    x, inside = _monte_carlo(model, out_set, _box(2), 200_000)
    _, first = _monte_carlo(model, OutputSet(out_set.parts[:1]), _box(2), 200_000)
    _, second = _monte_carlo(model, OutputSet(out_set.parts[1:]), _box(2), 200_000)
    assert (first & second).mean() > 0.01  # the parts overlap
    p = inside.mean()
    assert abs(r.share - p) <= SE * math.sqrt(p * (1 - p) / len(x))
    assert {q.part for q in r.polytopes} == {0, 1}


@pytest.mark.parametrize(
    ("d", "seed"), [(2, 3), (3, 0), pytest.param(4, 6, marks=pytest.mark.slow)]
)
def test_inner_inside_exact_inside_outer(d, seed):
    model = _net(d, seed)
    out_set = OutputSet.from_class(_label(model, d), 3)
    box = _box(d)
    exact = nninv.region(model, out_set, box, "exact")
    under = nninv.region(model, out_set, box, "under", target=0.8)
    over = nninv.region(model, out_set, box, "over", target=0.8)
    assert under.certified and over.certified
    assert under.info["rechecked"] in ("exact", "sampled")
    assert under.volume <= exact.volume * (1 + 1e-9) <= over.volume * (1 + 1e-9)
    assert under.coverage == pytest.approx(under.volume / exact.volume)
    assert under.coverage >= 0.8 or under.status in ("budget", "stalled")
    xs = under.sample(5000, seed=1)
    with torch.no_grad():
        assert out_set.contains(model(xs)).all()  # no inner point leaves the region
    assert exact.contains(xs, tol=1e-7).all()
    xe = exact.sample(5000, seed=2)
    assert over.contains(xe, tol=1e-7).all()
    ob, eb = over.outer_box.numpy(), exact.outer_box.numpy()
    assert np.all(ob[:, 0] <= eb[:, 0] + 1e-9) and np.all(ob[:, 1] >= eb[:, 1] - 1e-9)


def test_sample_is_uniform_over_the_union():
    model = _net(2, 7)
    out_set = OutputSet.from_class(_label(model, 2), 3)
    r = nninv.region(model, out_set, _box(2), "exact")
    x = r.sample(40_000, seed=3)
    assert x.dtype == torch.float64 and x.shape == (40_000, 2)
    assert r.contains(x, tol=1e-9).all()
    # Each polytope gets its share of the draws (chi-square, 99.9% quantile bound).
    vols = np.array([p.volume for p in r.polytopes])
    owner = np.stack([p.contains(x, tol=-1e-12).numpy() for p in r.polytopes], 1)
    counts = owner.sum(0)
    expected = len(x) * vols / vols.sum()
    chi2 = ((counts - expected) ** 2 / np.maximum(expected, 1e-9)).sum()
    dof = len(vols) - 1
    assert chi2 <= dof + 4.0 * math.sqrt(2 * dof) + 10
    # Its mean matches the mean of rejection draws from the box.
    xm, inside = _monte_carlo(model, out_set, _box(2), 200_000, seed=5)
    ref = xm[inside]
    se = ref.std(0) * math.sqrt(1 / len(ref) + 1 / len(x))
    assert np.all(np.abs(x.numpy().mean(0) - ref.mean(0)) <= SE * se)
    assert torch.equal(r.sample(10, seed=4), r.sample(10, seed=4))


def test_empty_region_and_whole_box():
    model = _net(2, 0)
    empty = nninv.region(model, OutputSet.linear([[1.0, 0.0, 0.0]], [-1e6]), _box(2), "exact")
    assert empty.polytopes == () and empty.volume == 0.0 and empty.status == "complete"
    with pytest.raises(NNInvError, match="no volume"):
        empty.sample(3)
    whole = nninv.region(model, OutputSet.linear([[1.0, 0.0, 0.0]], [1e6]), _box(2), "exact")
    assert whole.share == pytest.approx(1.0)


def test_limits_stop_with_a_status():
    model = _net(3, 1)
    r = nninv.region(model, _label(model, 3), _box(3), "exact", max_regions=2)
    assert r.status == "region_limit" and not r.certified
    assert r.coverage_interval[0] <= r.coverage <= r.coverage_interval[1]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"box": [[0, 1]]}, r"box has 1 rows but the model's input has 2 values"),
        ({"box": [[0, 1, 2], [0, 1, 2]]}, r"shape \(d, 2\)"),
        ({"box": [[0, 1], [1, 1]]}, r"box row 1 is \[1.0, 1.0\]"),
        ({"box": [[0, 1], [0, float("nan")]]}, r"box row 1"),
        ({"mode": "fast"}, r"mode='fast' is not one of 'exact', 'under', 'over'"),
        ({"target": 1.5}, r"target must be in \(0, 1\]"),
        ({"output_set": OutputSet.from_class(0, 4)}, r"over 4 outputs, but the model has 3"),
        ({"output_set": 5}, r"class|5"),
    ],
)
def test_errors_name_the_problem(kwargs, match):
    args = {"output_set": 0, "box": _box(2), "mode": "exact"} | kwargs
    with pytest.raises(NNInvError, match=match):
        nninv.region(_net(2, 0), **args)


def test_non_piecewise_linear_layer_is_named():
    model = nn.Sequential(nn.Linear(2, 4), nn.Sigmoid(), nn.Linear(4, 2))
    with pytest.raises(NNInvError, match=r"piecewise-linear.*Sigmoid"):
        nninv.region(model, 0, _box(2))


def test_rowwise_model_is_the_map_of_one_row():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 6), nn.ReLU(), nn.Linear(6, 4))
    model.input_shape = (2, 2)  # the auto_park layout: layers act on the last axis
    row = nn.Sequential(*model)
    r = nninv.region(model, 0, [[-0.5, 0.5], [-0.5, 0.5]])
    ref = nninv.region(row, 0, [[-0.5, 0.5], [-0.5, 0.5]])
    assert r.volume == pytest.approx(ref.volume)


# ---------------------------------------------------------------- the literature's networks

VCAS = sorted(REGION_DIR.glob("vcas/VertCAS_*.onnx"))


@pytest.mark.slow
@pytest.mark.skipif(not VCAS, reason=f"no VCAS networks under {REGION_DIR}")
@pytest.mark.parametrize("path", VCAS[:2], ids=[p.stem for p in VCAS[:2]])
def test_vcas_exact_and_inner_against_onnxruntime(path):
    ort = pytest.importorskip("onnxruntime")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name

    def run(x: np.ndarray) -> np.ndarray:
        return np.stack([session.run(None, {name: xi})[0] for xi in x.astype(np.float32)])

    exact = nninv.region(str(path), 0, VCAS_BOX, "exact")
    assert exact.status == "complete" and 40 <= exact.counts["linear_regions"] <= 400
    model = nninv.load_model(path).double()
    x, inside = _monte_carlo(model, OutputSet.from_class(0, 9), VCAS_BOX, 100_000)
    p = inside.mean()
    assert abs(exact.share - p) <= 3 * math.sqrt(p * (1 - p) / len(x))
    under = nninv.region(str(path), 0, VCAS_BOX, "under")
    assert under.certified and under.coverage >= 0.9
    xs = under.sample(2000, seed=0).numpy()
    y = run(xs)
    assert np.all(y[:, :1] >= y[:, 1:] - 1e-4 * np.abs(y).max())  # float32 ties only


# ---------------------------------------------------------------- command line


def _onnx_net(tmp_path: Path) -> Path:
    pytest.importorskip("onnx")
    import warnings

    model = _net(2, 3).float().eval()
    path = tmp_path / "net.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.zeros(1, 2),), path, dynamo=False)
    return path


@pytest.mark.parametrize("mode", ["exact", "under"])
def test_cli_prints_the_table_and_draws(tmp_path, capsys, mode):
    import json

    from nninv.cli import main

    path = _onnx_net(tmp_path)
    out = tmp_path / "out"
    box = "[-1,1]x[-1,1.5]"
    rc = main(["region", str(path), "--box", box, "--output-set", "class=1", "--mode", mode,
               "--out", str(out)])  # fmt: skip
    assert rc == 0
    text = capsys.readouterr().out
    assert f"mode            {mode}" in text and "coverage" in text
    assert (out / "region.png").stat().st_size > 1000
    summary = json.loads((out / "region.json").read_text())
    r = nninv.region(nninv.load_model(path), 1, [[-1, 1], [-1, 1.5]], mode)
    assert summary["volume"] == pytest.approx(r.volume)
    assert len(summary["polytopes"]) == len(r.polytopes)


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["--box", "-1,1 -1,1", "--output-set", "class=0"], "--box must look like"),
        (["--box", "[-1,1]", "--output-set", "class=0"], "box has 1 rows"),
        (["--box", "[-1,1]x[2,1]", "--output-set", "class=0"], "LO < HI"),
        (["--box", "[-1,1]x[-1,1]", "--output-set", "label=0"], "class=K"),
    ],
)
def test_cli_usage_errors_exit_2(tmp_path, capsys, args, match):
    from nninv.cli import main

    path = _onnx_net(tmp_path)
    assert main(["region", str(path), *args, "--out", str(tmp_path / "o")]) == 2
    assert match in capsys.readouterr().err


def test_region_lps_run_after_another_highs_solver_ran():
    """A HiGHS run elsewhere in the process first (closest's MILPs, say) fixes its
    thread pool; region's LPs used to set ``threads`` afterwards and then ended
    every run with the status "Not Set"."""
    import highspy
    import numpy as np

    from nninv.highs import quiet_highs
    from nninv.region._lp import minimize

    h = quiet_highs()
    lp = highspy.HighsLp()
    lp.num_col_, lp.num_row_ = 1, 0
    lp.col_cost_, lp.col_lower_, lp.col_upper_ = np.ones(1), np.zeros(1), np.ones(1)
    h.passModel(lp)
    h.run()
    assert h.getModelStatus() == highspy.HighsModelStatus.kOptimal
    value, u = minimize(np.array([1.0, -1.0]), np.array([[1.0, 1.0]]), np.array([1.5]))
    assert value == pytest.approx(-1.0) and u == pytest.approx([0.0, 1.0])
    assert minimize(np.array([1.0, 0.0]), np.array([[-1.0, 0.0]]), np.array([-2.0])) is None


def test_volume_estimates_of_thin_polytopes_draw_until_enough_hits():
    """Above 6 inputs volumes are estimated; a polytope filling 1/120 of its bounding
    box (the simplex u0 + ... + u4 <= 1 in the 8-cube, volume 1/120) is estimated to
    within 15% for every seed (400 hits: a relative standard error of 5%)."""
    from nninv.region._geom import estimate_volume

    d = 8
    A = np.zeros((1, d))
    A[0, :5] = 1.0
    b = np.array([1.0])
    V = np.vstack([np.zeros(d), np.eye(d)[:5], np.eye(d)[:5] + np.eye(d)[5:].sum(0)])
    V = np.vstack([V, np.eye(d)[5:].sum(0)])  # the bounding box is the whole cube
    box = np.vstack([A, np.eye(d), -np.eye(d)]), np.concatenate([b, np.ones(d), np.zeros(d)])
    for seed in range(5):
        est = estimate_volume(*box, V, np.random.default_rng(seed))
        assert abs(est * 120 - 1) <= 0.15, (seed, est * 120)


def test_long_runs_show_progress_on_stderr(capsys):
    model = _net(2, 3)
    out_set = OutputSet.from_class(_label(model, 2), 3)
    nninv.region(model, out_set, _box(2), "under", exact_budget=0, progress=True)
    assert "region boxes" in capsys.readouterr().err
    nninv.region(model, out_set, _box(2), "exact", progress=True)
    assert "region cells" in capsys.readouterr().err


def test_coverage_above_six_inputs_is_measured_on_fresh_points():
    """Estimated volumes (7 inputs): the reported coverage is the share of fresh
    region points inside the polytopes, and an independent Monte Carlo agrees."""
    model = _net(7, 2)
    out_set = OutputSet.from_class(_label(model, 7), 3)
    box = _box(7)
    r = nninv.region(
        model, out_set, box, "under", target=0.5, max_polytopes=8, time_limit=5, exact_budget=0
    )
    assert not r.certified and "fresh_samples" in r.info
    hits, n = r.info["fresh_samples"]
    assert r.coverage == pytest.approx(hits / n)
    lo, hi = r.coverage_interval
    assert lo < r.coverage < hi
    x, inside = _monte_carlo(model, out_set, box, 400_000, seed=9)
    held = r.contains(torch.from_numpy(x)).numpy()
    assert not (held & ~inside).any()  # no inner point outside the region
    p = held[inside].mean()
    se = math.sqrt(p * (1 - p) / inside.sum() + r.coverage * (1 - r.coverage) / n)
    assert abs(r.coverage - p) <= 4 * se

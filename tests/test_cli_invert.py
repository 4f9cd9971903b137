"""Tests of ``nninv invert`` and ``nninv diagnose`` on real model files built here.

The seed's model (Keras 3, torch backend) is trained for one epoch on the
embedded MNIST digits and saved as ``.keras``; a small torch MLP is exported to
ONNX. Every run goes through :func:`nninv.cli.main` end to end, and the inputs
written are checked with the framework that wrote the model (Keras ``predict``,
onnxruntime). Error paths: each bad input exits 2 with one line on stderr.
"""

from __future__ import annotations

import pickle
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import nninv
from nninv.cli import main
from nninv.cli._common import fit_to_shape, load_array
from nninv.cli.invert import _image_view
from tolerances import EPS

#: Inputs found must reproduce the outputs through the original framework (float32).
AGREE = EPS[torch.float32]["residual"]

SUMMARY = re.compile(
    r"^method (?P<method>\w+): (?P<n>\d+) samples, (?P<ok>\d+) converged, "
    r"max residual (?P<res>\S+) \(tol (?P<tol>\S+)\)$",
    re.M,
)


def has_optimize() -> bool:
    from nninv.methods import METHODS

    return "optimize" in METHODS


# =========================================================================== files


@pytest.fixture(scope="module")
def seed(keras, tmp_path_factory) -> dict:
    """The seed's model trained for one epoch on mnist5k, its outputs on 20 digits, the data."""
    from nninv.datasets import load_embedded

    d = tmp_path_factory.mktemp("seed")
    ds = load_embedded()
    X = ds.flat().numpy()
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((784,)), keras.layers.Dense(10, activation="sigmoid")])
    model.compile(optimizer="adam", loss="binary_crossentropy")
    onehot = np.eye(10, dtype=np.float32)[ds.labels.numpy()]
    model.fit(X, onehot, epochs=1, batch_size=256, verbose=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.save(d / "seed.keras")
    idx = np.arange(20) * 250  # mnist5k is sorted by label: two of each digit
    Y = model.predict(X[idx], verbose=0)
    np.save(d / "Y.npy", Y)
    np.save(d / "X.npy", X)
    np.save(d / "X1000.npy", X[::5])  # for the slower mixture fit
    return {"dir": d, "model": d / "seed.keras", "Y": Y, "X": X, "keras": model}


@pytest.fixture(scope="module")
def prior_run(run_cli, seed) -> tuple[int, str, str, Path]:
    out = seed["dir"] / "run" / "x.npy"
    code, stdout, stderr = run_cli(
        ["invert", seed["model"], "--outputs", seed["dir"] / "Y.npy",
         "--prior-data", seed["dir"] / "X.npy", "--out", out]
    )  # fmt: skip
    return code, stdout, stderr, out


@pytest.fixture(scope="module")
def onnx_mlp(tmp_path_factory) -> dict:
    """A 12 -> 8 -> 3 torch MLP exported to ONNX, with its onnxruntime outputs on 5 inputs."""
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    d = tmp_path_factory.mktemp("onnx")
    torch.manual_seed(0)
    module = nn.Sequential(nn.Linear(12, 8), nn.Tanh(), nn.Linear(8, 3), nn.Sigmoid()).eval()
    path = d / "mlp.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module, (torch.zeros(2, 12),), path, dynamo=False,
            input_names=["x"], dynamic_axes={"x": {0: "batch"}},
        )  # fmt: skip
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    def predict(x: np.ndarray) -> np.ndarray:
        return session.run(None, {"x": np.asarray(x, dtype=np.float32)})[0]

    X = np.random.default_rng(0).uniform(size=(5, 12)).astype(np.float32)
    Y = predict(X)
    np.save(d / "Y.npy", Y)
    return {"dir": d, "model": path, "Y": Y, "predict": predict}


# =========================================================================== invert


def test_invert_with_prior_data(seed, prior_run):
    code, out, err, path = prior_run
    assert code == 0, out + err
    m = SUMMARY.search(out)
    assert m, out
    assert (m["method"], m["n"], m["ok"]) == ("analytic", "20", "20")
    assert float(m["res"]) <= AGREE
    assert f"wrote {path} (20, 784) float32" in out
    assert "did not converge" not in out + err


def test_inverted_inputs_reproduce_keras_outputs(seed, prior_run):
    path = prior_run[3]
    x = np.load(path)
    assert x.shape == (20, 784) and x.dtype == np.float32
    again = seed["keras"].predict(x, verbose=0)
    assert np.abs(again - seed["Y"]).max() <= AGREE
    # the prior keeps them near the data: closer to the digits than pinv's
    assert 0.0 < float(x.mean()) < 0.5


def test_invert_writes_image_grid(prior_run):
    from matplotlib.image import imread

    _, out, _, path = prior_run
    png = path.with_suffix(".png")
    assert png.is_file() and f"wrote {png}" in out
    img = imread(png)
    assert img.ndim == 3 and img.shape[0] >= 150 and img.shape[1] >= 500
    assert img[..., :3].std() > 0.05  # not blank


def test_invert_pinv_mixture_and_out_suffix(run_cli, seed, tmp_path):
    code, out, err = run_cli(
        ["invert", seed["model"], "--outputs", seed["dir"] / "Y.npy", "--method", "pinv",
         "--out", tmp_path / "p"]
    )  # fmt: skip
    assert code == 0, err
    assert SUMMARY.search(out)["method"] == "pinv"
    assert (tmp_path / "p.npy").is_file() and (tmp_path / "p.png").is_file()
    code, out, err = run_cli(
        ["invert", seed["model"], "--outputs", seed["dir"] / "Y.npy", "--prior-data",
         seed["dir"] / "X1000.npy", "--prior", "mixture", "--components", "2", "--out",
         tmp_path / "m.npy"]
    )  # fmt: skip
    assert code == 0, err
    m = SUMMARY.search(out)
    assert (m["method"], m["ok"]) == ("analytic", "20")
    x = np.load(tmp_path / "m.npy")
    assert np.abs(seed["keras"].predict(x, verbose=0) - seed["Y"]).max() <= AGREE


def test_invert_exits_1_when_some_do_not_converge(run_cli, seed, tmp_path):
    code, out, err = run_cli(
        ["invert", seed["model"], "--outputs", seed["dir"] / "Y.npy", "--method", "pinv",
         "--tol", "1e-30", "--out", tmp_path / "x.npy"]
    )  # fmt: skip
    assert code == 1, out + err
    m = SUMMARY.search(out)
    assert int(m["ok"]) < int(m["n"]) == 20
    assert re.search(r"did not converge; first, sample \d+: residual \S+ above tol 1e-30", out)
    assert (tmp_path / "x.npy").is_file()  # written all the same


def test_invert_channels_last_keras(run_cli, keras, tmp_path):
    """A Keras model on (28, 28, 1) images: prior data (N, 1, 28, 28) and a grey grid."""
    from nninv.datasets import load_embedded

    keras.utils.set_random_seed(1)
    model = keras.Sequential(
        [keras.Input((28, 28, 1)), keras.layers.Flatten(), keras.layers.Dense(6, "sigmoid")]
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.save(tmp_path / "cl.keras")
    images = load_embedded().images.numpy()[::10]  # (500, 1, 28, 28)
    np.save(tmp_path / "X.npy", images)
    np.save(tmp_path / "Y.npy", model.predict(images[:4].reshape(4, 28, 28, 1), verbose=0))
    code, out, err = run_cli(
        ["invert", tmp_path / "cl.keras", "--outputs", tmp_path / "Y.npy", "--prior-data",
         tmp_path / "X.npy", "--out", tmp_path / "x.npy"]
    )  # fmt: skip
    assert code == 0, err
    x = np.load(tmp_path / "x.npy")
    assert x.shape == (4, 28, 28, 1)
    assert np.abs(model.predict(x, verbose=0) - np.load(tmp_path / "Y.npy")).max() <= AGREE
    assert (tmp_path / "x.png").is_file()


def test_invert_onnx(run_cli, onnx_mlp, tmp_path):
    code, out, err = run_cli(
        ["invert", onnx_mlp["model"], "--outputs", onnx_mlp["dir"] / "Y.npy",
         "--out", tmp_path / "x.npy"]
    )  # fmt: skip
    assert code == 0, out + err
    assert SUMMARY.search(out)["ok"] == "5"
    x = np.load(tmp_path / "x.npy")
    assert x.shape == (5, 12) and x.dtype == np.float32
    assert np.abs(onnx_mlp["predict"](x) - onnx_mlp["Y"]).max() <= AGREE
    # 12 values are no image: heat strips of the features, sized to them
    from PIL import Image

    with Image.open(tmp_path / "x.png") as im:
        w, h = im.size
    assert 400 <= w <= 700 and 150 <= h <= 400, (w, h)


def test_invert_class_target_with_bounds(run_cli, onnx_mlp, tmp_path):
    """The options reach the optimize method (the solver itself is tested in test_optimize)."""
    if not has_optimize():
        pytest.skip("optimize not available")
    reached = onnx_mlp["predict"](np.full((1, 12), 0.5)).argmax(1).tolist() * 3
    labels = ",".join(map(str, reached[:2]))
    code, out, err = run_cli(
        ["invert", onnx_mlp["model"], "--target", f"class={labels}", "--target",
         f"class={reached[2]}", "--bounds", "0,1", "--out", tmp_path / "x.npy"]
    )  # fmt: skip
    assert code == 0, out + err
    m = SUMMARY.search(out)
    assert (m["method"], m["n"], m["ok"]) == ("optimize", "3", "3")
    x = np.load(tmp_path / "x.npy")
    assert x.shape == (3, 12) and x.min() >= 0.0 and x.max() <= 1.0
    assert onnx_mlp["predict"](x).argmax(1).tolist() == reached


def test_auto_follows_the_library_rule_with_bounds(run_cli, onnx_mlp, tmp_path):
    """``auto`` is :func:`nninv.methods.choose_method`: pinv, or optimize within --bounds."""
    from nninv.cli.invert import _pick_method
    from nninv.methods import choose_method

    runs = {}
    for extra in ([], ["--bounds", "0,1"]):
        code, out, err = run_cli(
            ["invert", onnx_mlp["model"], "--outputs", onnx_mlp["dir"] / "Y.npy",
             "--out", tmp_path / f"x{len(extra)}.npy", *extra]
        )  # fmt: skip
        assert code == 0, out + err
        m = SUMMARY.search(out)
        runs[bool(extra)] = m["method"]
        assert (m["n"], m["ok"]) == ("5", "5")
    assert runs == {False: "pinv", True: "optimize"}
    x = np.load(tmp_path / "x2.npy")
    assert x.min() >= 0.0 and x.max() <= 1.0
    model = nninv.load_model(onnx_mlp["model"])
    y = torch.from_numpy(onnx_mlp["Y"])
    for bounds in (None, (0.0, 1.0)):
        want = choose_method(model, y, bounds=bounds)
        assert _pick_method("auto", bounds, model, None, y) == want
        assert _pick_method("auto", None, model, None, y, x0=torch.zeros(5, 12)) == "optimize"


def test_target_needs_a_method_for_classes(run_cli, onnx_mlp, tmp_path):
    code, out, err = run_cli(
        ["invert", onnx_mlp["model"], "--target", "class=1", "--method", "pinv",
         "--out", tmp_path / "x.npy"]
    )  # fmt: skip
    assert code == 2 and "needs an exact output target" in err


# =========================================================================== diagnose


def test_diagnose_seed_model(run_cli, seed):
    code, out, err = run_cli(["diagnose", seed["model"], "--data", seed["dir"] / "X.npy"])
    assert code == 0, err
    rows = [line.split() for line in out.splitlines()]
    dense = next(r for r in rows if r[:1] == ["0"])
    assert dense[2:8] == ["Linear", "784", "->", "10", "10", "774"]
    assert re.search(r"\d+\.\d%", " ".join(dense))  # row-space energy from --data
    assert "774-dimensional" in out


def test_diagnose_onnx_with_input_shape(run_cli, onnx_mlp):
    code, out, err = run_cli(["diagnose", onnx_mlp["model"], "--input-shape", "12"])
    assert code == 0, err
    assert "12 -> 8" in out and "preimage" in out


@pytest.fixture(scope="module")
def torchscript_cnn(tmp_path_factory) -> Path:
    """A TorchScript conv net on (1, 8, 8): the file does not tell its input shape."""
    torch.manual_seed(0)
    module = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(72, 3), nn.Sigmoid())
    path = tmp_path_factory.mktemp("ts") / "cnn.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(torch.jit.script(module.eval()), str(path))
    np.save(path.with_name("Y.npy"), np.full((2, 3), 0.5, np.float32))
    return path


def test_diagnose_torchscript(run_cli, torchscript_cnn):
    code, out, err = run_cli(["diagnose", torchscript_cnn, "--input-shape", "1,8,8"])
    assert code == 0, err
    assert "maps 64 inputs to 3 outputs" in out
    code, out, err = run_cli(["diagnose", torchscript_cnn])
    assert code == 2 and "--input-shape C,H,W or --data X.npy" in err


def test_invert_torchscript_needs_input_shape(run_cli, torchscript_cnn, tmp_path):
    argv = ["invert", torchscript_cnn, "--outputs", torchscript_cnn.with_name("Y.npy")]
    code, out, err = run_cli([*argv, "--out", tmp_path / "x.npy"])
    assert code == 2 and out == ""
    assert "--input-shape C,H,W or --prior-data X.npy" in err and err.count("\n") == 1


# =========================================================================== errors


@pytest.fixture(scope="module")
def bad(seed) -> dict[str, Path]:
    """Damaged copies of the seed's files."""
    d = seed["dir"] / "bad"
    d.mkdir()
    data = seed["model"].read_bytes()
    (d / "cut.keras").write_bytes(data[: len(data) // 2])
    Y = seed["Y"]
    np.save(d / "Y9.npy", Y[:, :9])
    Ynan = Y.copy()
    Ynan[3, 7] = np.nan
    np.save(d / "Ynan.npy", Ynan)
    np.save(d / "Yobj.npy", np.array([{"y": 1.0}], dtype=object), allow_pickle=True)
    with open(d / "Ypkl.npy", "wb") as f:
        pickle.dump(Y, f)
    np.save(d / "Ystr.npy", np.array(["a", "b"]))
    np.save(d / "X100.npy", np.zeros((5, 100), np.float32))
    return d


ERRORS = {
    "missing model": (["{dir}/nowhere.keras", "--outputs", "{Y}"], r"nowhere\.keras"),
    "truncated model": (["{bad}/cut.keras", "--outputs", "{Y}"], r"cut\.keras.*corrupt"),
    "wrong width": (["{model}", "--outputs", "{bad}/Y9.npy"], r"Y9\.npy.*\(20, 9\).*\(N, 10\)"),
    "nan": (
        ["{model}", "--outputs", "{bad}/Ynan.npy"],
        r"error: --outputs \S*Ynan\.npy: row 3 contains NaN \(at index \(3, 7\)",
    ),
    "pickle": (["{model}", "--outputs", "{bad}/Ypkl.npy"], r"Ypkl\.npy.*is a Python pickle"),
    "object array": (["{model}", "--outputs", "{bad}/Yobj.npy"], r"Yobj\.npy.*pickled"),
    "strings": (["{model}", "--outputs", "{bad}/Ystr.npy"], r"Ystr\.npy.*dtype <U1"),
    "missing outputs": (["{model}", "--outputs", "{dir}/none.npy"], r"none\.npy.*does not exist"),
    "pickled prior data": (
        ["{model}", "--outputs", "{Y}", "--prior-data", "{bad}/Ypkl.npy"],
        r"prior data file .*Ypkl\.npy.*pickle",
    ),
    "prior data shape": (
        ["{model}", "--outputs", "{Y}", "--prior-data", "{bad}/X100.npy"],
        r"X100\.npy.*\(5, 100\).*\(N, 784\)",
    ),
    "prior without data": (["{model}", "--outputs", "{Y}", "--prior", "mixture"], "--prior-data"),
    "components": (["{model}", "--outputs", "{Y}", "--components", "3"], "--prior mixture"),
    "bounds with pinv": (
        ["{model}", "--outputs", "{Y}", "--method", "pinv", "--bounds", "0,1"],
        "--bounds needs --method optimize",
    ),
    "bad bounds": (["{model}", "--outputs", "{Y}", "--bounds", "1,0"], "LO < HI"),
    "unknown method": (["{model}", "--outputs", "{Y}", "--method", "newton"], "valid: auto"),
    "bad target": (["{model}", "--target", "class=three"], "class labels must be integers"),
    "class out of range": (["{model}", "--target", "class=12"], "class 12.*10 outputs"),
    "tol": (["{model}", "--outputs", "{Y}", "--tol", "-1"], "--tol must be positive"),
}


def _fill(argv: list[str], seed: dict, bad: Path) -> list[str]:
    keys = {"dir": seed["dir"], "bad": bad, "model": seed["model"], "Y": seed["dir"] / "Y.npy"}
    return [a.format(**keys) for a in argv]


@pytest.mark.parametrize("case", list(ERRORS))
def test_invert_errors_are_one_line(run_cli, seed, bad, tmp_path, case):
    argv, match = ERRORS[case]
    code, out, err = run_cli(["invert", *_fill(argv, seed, bad), "--out", tmp_path / "x.npy"])
    assert code == 2, out + err
    assert out == ""
    assert "Traceback" not in err
    assert err.startswith("nninv invert: error: ") and err.count("\n") == 1, err
    assert re.search(match, err), err
    assert not (tmp_path / "x.npy").exists()


@pytest.mark.parametrize(
    "argv, match",
    [
        (["{dir}/nowhere.onnx"], r"nowhere\.onnx"),
        (["{bad}/cut.keras"], "corrupt or truncated"),
        (["{model}", "--data", "{bad}/X100.npy"], r"X100\.npy.*\(N, 784\)"),
        (["{model}", "--data", "{bad}/Yobj.npy"], "pickled"),
        (["{model}", "--input-shape", "a,b"], "--input-shape"),
    ],
)
def test_diagnose_errors_are_one_line(run_cli, seed, bad, argv, match):
    code, out, err = run_cli(["diagnose", *_fill(argv, seed, bad)])
    assert code == 2 and out == ""
    assert err.startswith("nninv diagnose: error: ") and err.count("\n") == 1, err
    assert re.search(match, err) and "Traceback" not in err


def test_debug_shows_the_traceback(seed, bad, tmp_path):
    argv = ["invert", seed["model"], "--outputs", bad / "Y9.npy", "--out", tmp_path / "x.npy"]
    with pytest.raises(nninv.NNInvError, match=r"\(20, 9\)"):
        main(["--debug", *map(str, argv)])


@pytest.mark.parametrize(
    "extra, match",
    [
        (["--outputs", "Y.npy", "--target", "class=1"], "not allowed with"),
        ([], "one of the arguments --outputs --target is required"),
    ],
)
def test_outputs_and_target_are_exclusive(seed, tmp_path, capsys, extra, match):
    with pytest.raises(SystemExit) as info:
        main(["invert", str(seed["model"]), *extra, "--out", str(tmp_path / "x.npy")])
    assert info.value.code == 2
    assert match in capsys.readouterr().err


def test_console_script_help():
    exe = shutil.which("nninv", path=str(Path(sys.executable).parent)) or shutil.which("nninv")
    if exe is None:
        pytest.skip("the nninv console script is not installed")
    proc = subprocess.run(
        [exe, "invert", "--help"], capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stderr
    text = " ".join(proc.stdout.split())
    assert text.startswith("usage: nninv invert")
    for option in ("--outputs", "--target", "--prior-data", "--bounds", "--seed", "--out"):
        assert option in text
    assert "0 when every sample converged" in text and "1 when some did not" in text


# =========================================================================== helpers


@pytest.mark.parametrize(
    "shape, view",
    [
        ((784,), (28, 28)),
        ((1, 8, 8), (1, 8, 8)),
        ((8, 8, 1), (8, 8)),
        ((8, 6, 3), (3, 8, 6)),
        ((10,), None),
        ((4, 4, 5), None),
    ],
)
def test_image_view(shape, view):
    x = np.random.default_rng(0).normal(size=(2, *shape))
    got = _image_view(x, shape)
    if view is None:
        assert got is None
        return
    images, image_shape = got
    assert tuple(image_shape) == view
    assert images.reshape(2, *view).shape == (2, *view)
    if shape == (8, 6, 3):  # channels-last: channel c of pixel (i, j) stays there
        assert images[1, 2, 5, 4] == x[1, 5, 4, 2]


def test_load_array_npz_and_shapes(tmp_path):
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    np.savez(tmp_path / "one.npz", a=a)
    np.savez(tmp_path / "two.npz", a=a, b=a)
    assert np.array_equal(load_array(tmp_path / "one.npz", "outputs"), a)
    with pytest.raises(nninv.NNInvError, match=r"two\.npz.*2 arrays"):
        load_array(tmp_path / "two.npz", "outputs")
    (tmp_path / "junk.npy").write_bytes(b"not numpy at all")
    with pytest.raises(nninv.NNInvError, match=r"junk\.npy.*not a readable \.npy"):
        load_array(tmp_path / "junk.npy", "outputs")
    X = np.zeros((4, 1, 8, 8))
    assert fit_to_shape(X, (8, 8, 1), "data", "X.npy").shape == (4, 8, 8, 1)
    assert fit_to_shape(X.reshape(4, 64), (8, 8, 1), "data", "X.npy").shape == (4, 8, 8, 1)
    with pytest.raises(nninv.NNInvError, match=r"\(4, 2, 4, 8\)"):
        fit_to_shape(np.zeros((4, 2, 4, 8)), (8, 8, 1), "data", "X.npy")

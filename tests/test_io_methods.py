"""Loaded models work with every method: files from Keras, ONNX and TorchScript, inverted.

``test_io`` checks that :func:`nninv.load_model` computes what the original
framework computes; these tests check that what it returns is a model the rest
of nninv understands: the chain analysis reads the seed's model as an affine
step and a sigmoid, ``pinv`` and ``analytic`` invert it to within the dtype's
tolerance (checked again with the framework that wrote the file),
:func:`nninv.diagnose` reads a channels-last Keras CNN and an ONNX MLP, and
``optimize`` and :func:`nninv.preimage` take loaded models too.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import nninv
from nninv.model.chain import Affine, Elementwise, analyse
from nninv.model.io import load_model
from nninv.priors import GaussianPrior

#: Largest residual max |f(x) - y| a closed-form method may leave, per dtype.
RESIDUAL = {torch.float64: 1e-5, torch.float32: 1e-4}

#: Largest |original(x) - y| for inputs found, run through the framework that wrote
#: the file (which computes in float32).
AGREE = 1e-4

Predict = Callable[[np.ndarray], np.ndarray]


@pytest.fixture(scope="module")
def digits() -> np.ndarray:
    """1,000 flat MNIST digits for the prior and 5 others as inputs to invert to."""
    from nninv.datasets import load_embedded

    return load_embedded().flat().numpy()


def _export_onnx(module: nn.Module, n_in: int, path: Path) -> Predict:
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module, (torch.zeros(2, n_in),), path, dynamo=False,
            input_names=["x"], dynamic_axes={"x": {0: "batch"}},
        )  # fmt: skip
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return lambda x: session.run(None, {"x": np.asarray(x, dtype=np.float32)})[0]


def _torch_predict(module: nn.Module) -> Predict:
    def predict(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return module(torch.from_numpy(np.asarray(x, dtype=np.float32))).numpy()

    return predict


@pytest.fixture(scope="module")
def seed_files(request, tmp_path_factory) -> dict[str, tuple[Path, Predict]]:
    """The seed's model f(x) = sigmoid(W x + b), 784 -> 10, in every format, with its reference."""
    d = tmp_path_factory.mktemp("seed")
    files: dict[str, tuple[Path, Predict]] = {}
    torch.manual_seed(0)
    module = nn.Sequential(nn.Linear(784, 10), nn.Sigmoid()).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(torch.jit.script(module), str(d / "seed.pt"))
    files["torchscript"] = (d / "seed.pt", _torch_predict(module))
    try:
        files["onnx"] = (d / "seed.onnx", _export_onnx(module, 784, d / "seed.onnx"))
    except pytest.skip.Exception:
        pass
    try:
        keras = request.getfixturevalue("keras")
    except pytest.skip.Exception:
        return files
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((784,)), keras.layers.Dense(10, activation="sigmoid")])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.save(d / "seed.keras")
        model.save(d / "seed.h5")

    def predict(x: np.ndarray) -> np.ndarray:
        return model.predict(np.asarray(x, dtype=np.float32), verbose=0)

    files["keras"] = (d / "seed.keras", predict)
    files["h5"] = (d / "seed.h5", predict)
    return files


def seed_file(seed_files, kind: str) -> tuple[Path, Predict]:
    if kind not in seed_files:
        pytest.skip(f"cannot write {kind} files here")
    return seed_files[kind]


KINDS = ["keras", "h5", "onnx", "torchscript"]


@pytest.fixture(scope="module")
def prior(digits) -> GaussianPrior:
    return GaussianPrior.fit(digits[::5])


# =========================================================================== seed model


@pytest.mark.parametrize("kind", KINDS)
def test_seed_model_is_linear_then_sigmoid(seed_files, kind):
    path, _ = seed_file(seed_files, kind)
    steps = analyse(load_model(path), (784,)).steps  # TorchScript does not tell it
    assert [type(s) for s in steps] == [Affine, Elementwise]
    assert [layer.kind for layer in steps[0].layers] == ["linear"]
    assert isinstance(steps[0].layers[0].module, nn.Linear)
    assert steps[1].act.name == "sigmoid"
    assert (steps[0].n, steps[0].m) == (784, 10)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("method", ["pinv", "analytic"])
@pytest.mark.parametrize("kind", KINDS)
def test_closed_form_methods_on_loaded_seed(seed_files, digits, prior, kind, method, dtype):
    path, predict = seed_file(seed_files, kind)
    model = load_model(path).to(dtype)
    x_true = digits[2::1000][:5]  # not in the prior's data
    y = torch.from_numpy(predict(x_true)).to(dtype)
    inv = nninv.invert(
        model, y, method, prior if method == "analytic" else None, input_shape=(784,)
    )
    assert inv.method == method and inv.x.dtype == dtype and inv.x.shape == (5, 784)
    assert bool(inv.converged.all()), inv.info["reasons"]
    assert float(inv.residual.max()) <= RESIDUAL[dtype]
    again = predict(inv.x.to(torch.float32).numpy())
    assert np.abs(again - y.to(torch.float32).numpy()).max() <= AGREE


# =========================================================================== diagnose


@pytest.fixture(scope="module")
def keras_cnn(keras, tmp_path_factory) -> tuple[nn.Module, Predict]:
    """A channels-last Keras CNN on (8, 8, 1): conv, tanh, average pooling, dense, sigmoid."""
    L = keras.layers
    keras.utils.set_random_seed(0)
    cnn = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            L.Conv2D(3, 3, padding="same", activation="tanh"),
            L.AveragePooling2D(2),
            L.Flatten(),
            L.Dense(4, activation="sigmoid"),
        ]
    )
    path = tmp_path_factory.mktemp("cnn") / "cnn.keras"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cnn.save(path)
    return load_model(path), lambda x: cnn.predict(np.asarray(x, np.float32), verbose=0)


def test_diagnose_keras_cnn(keras_cnn):
    model, _ = keras_cnn
    data = np.random.default_rng(0).uniform(size=(50, 8, 8, 1)).astype(np.float32)
    d = nninv.diagnose(model, data)
    assert d.input_shape == (8, 8, 1) and d.output_shape == (4,)
    assert d.preimage_dim == 64 - 4
    conv = next(ld for ld in d.layers if ld.type == "Conv2d")
    assert conv.in_shape == (1, 8, 8) and (conv.rank, conv.nullity) == (64, 0)
    dense = next(ld for ld in d.layers if ld.type == "Linear")
    assert (dense.rank, dense.nullity) == (4, 44)
    assert 0.0 < dense.row_space_energy < 1.0
    assert "60-dimensional" in str(d)


def test_diagnose_onnx_mlp(tmp_path):
    torch.manual_seed(0)
    module = nn.Sequential(nn.Linear(20, 12), nn.Tanh(), nn.Linear(12, 5)).eval()
    _export_onnx(module, 20, tmp_path / "mlp.onnx")
    d = nninv.diagnose(load_model(tmp_path / "mlp.onnx"))
    assert d.input_shape == (20,) and d.output_shape == (5,)
    linear = [ld for ld in d.layers if ld.type == "Linear"]
    assert [(ld.rank, ld.nullity) for ld in linear] == [(12, 8), (5, 7)]
    assert d.preimage_dim == 20 - 5
    assert d.injective is False


# =========================================================================== optimize, preimage


def test_optimize_on_loaded_keras_cnn(keras_cnn):
    if "optimize" not in nninv.methods.METHODS:
        pytest.skip("optimize not available")
    model, predict = keras_cnn
    x_true = np.random.default_rng(1).uniform(size=(3, 8, 8, 1)).astype(np.float32)
    y = torch.from_numpy(predict(x_true)).double()
    inv = nninv.invert(copy.deepcopy(model).double(), y, method="optimize", progress=False)
    assert bool(inv.converged.all()), inv.info["reasons"]
    assert float(inv.residual.max()) <= RESIDUAL[torch.float64]
    assert inv.x.shape == (3, 8, 8, 1)
    assert np.abs(predict(inv.x.float().numpy()) - y.float().numpy()).max() <= AGREE


def test_preimage_of_loaded_seed_model(seed_files, digits):
    # (the module nninv.preimage shadows the function until __init__ exports it)
    if not callable(getattr(nninv, "preimage", None)):
        pytest.skip("nninv.preimage not available")
    path, predict = seed_file(seed_files, "keras")
    y = predict(digits[:1])
    pre = nninv.preimage(load_model(path), y, bounds=(0, 1))
    assert pre.kind == "affine" and pre.dim == 784 - 10
    xs = pre.sample(3, seed=0)
    assert bool(pre.contains(xs).all())
    assert float(xs.min()) >= 0.0 and float(xs.max()) <= 1.0
    assert np.abs(predict(xs.reshape(3, 784).float().numpy()) - y).max() <= AGREE

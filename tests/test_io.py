"""Tests of ``nninv.model.io.load_model``: Keras, ONNX and TorchScript files built here.

Every model is saved to a real file, loaded, and compared with the framework
that wrote it (Keras with the torch backend, onnxruntime, TorchScript) on the
same inputs. Error paths: unsupported layers and operators, graphs that are not
chains, truncated and random files, and pickles, which must be refused.
"""

from __future__ import annotations

import json
import pickle
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from nninv import NNInvError
from nninv.model.io import load_model
from nninv.model.layers import Permute, Reshape

#: Largest |loaded(x) - original(x)|; the original runs in float32 in both cases.
AGREE = {torch.float32: 1e-5, torch.float64: 1e-5}

#: The layer types a loaded Keras or ONNX model may contain.
STANDARD = (
    nn.Linear, nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d, nn.Flatten, nn.Dropout,
    nn.BatchNorm1d, nn.BatchNorm2d, nn.Identity, nn.Sigmoid, nn.Tanh, nn.ReLU,
    nn.LeakyReLU, nn.ELU, nn.Softplus, nn.Softmax, nn.LogSoftmax, nn.GELU, nn.SiLU,
    nn.ZeroPad2d, Permute, Reshape,
)  # fmt: skip

Reference = Callable[[np.ndarray], np.ndarray]


def check_agrees(
    model: nn.Module, reference: Reference, x: np.ndarray, record: Callable | None = None
) -> None:
    """``model`` matches ``reference`` on ``x`` in float32 and after ``.double()``."""
    want = np.asarray(reference(x), dtype=np.float64)
    assert getattr(model, "training", False) is False
    with torch.no_grad():
        got32 = model(torch.from_numpy(x)).numpy()
        got64 = model.double()(torch.from_numpy(x).double()).numpy()
    model.float()
    assert got32.dtype == np.float32 and got64.dtype == np.float64
    assert got32.shape == want.shape
    err32, err64 = np.abs(got32 - want).max(), np.abs(got64 - want).max()
    if record is not None:
        record("max_abs_diff_float32", float(err32))
        record("max_abs_diff_float64", float(err64))
    assert err32 <= AGREE[torch.float32], err32
    assert err64 <= AGREE[torch.float64], err64


def assert_standard(model: nn.Module) -> None:
    assert isinstance(model, nn.Sequential)
    for name, m in model.named_children():
        assert isinstance(m, STANDARD), f"{name}: {type(m).__name__}"
        assert type(m) in STANDARD, f"{name}: {type(m).__name__} is a subclass"
    assert all(p.dtype == torch.float32 for p in model.parameters())


def inputs(shape: tuple[int, ...], n: int = 7, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, *shape)).astype(np.float32)


# =========================================================================== Keras


def _seed(keras):
    return keras.Sequential([keras.Input((784,)), keras.layers.Dense(10, activation="sigmoid")])


def _cnn(keras):
    L = keras.layers
    return keras.Sequential(
        [
            keras.Input((16, 16, 1)),
            L.Conv2D(4, 3, padding="same", activation="relu"),
            L.MaxPooling2D(2),
            L.Conv2D(6, 3, strides=2, padding="same"),  # pads (0, 1): uneven
            L.BatchNormalization(),
            L.AveragePooling2D(2),
            L.Dropout(0.25),
            L.Flatten(),
            L.Dense(8, activation="relu"),
            L.Dense(3, activation="softmax"),
        ]
    )


def _cnn_same(keras):
    L = keras.layers
    return keras.Sequential(
        [
            keras.Input((9, 9, 2)),
            L.ZeroPadding2D(((1, 0), (0, 1))),
            L.Conv2D(3, 3, dilation_rate=2, padding="same", activation="tanh"),
            L.MaxPooling2D(2, padding="same"),  # 10 -> 5
            L.MaxPooling2D(2, padding="same"),  # 5 -> 3: uneven
            L.AveragePooling2D(3, strides=1, padding="same"),  # pads (1, 1)
            L.BatchNormalization(center=False),
            L.Permute((2, 1, 3)),
            L.Reshape((3, 9)),
            L.Dense(4, activation="elu"),
            L.Flatten(),
            L.Dense(2),
        ]
    )


def _cnn_channels_first(keras):
    L = keras.layers
    return keras.Sequential(
        [
            keras.Input((48,)),
            L.Reshape((3, 4, 4)),
            L.Conv2D(2, 2, data_format="channels_first", activation="softplus"),
            L.BatchNormalization(axis=1),
            L.Flatten(data_format="channels_first"),
            L.Dense(5, activation="silu"),
            L.Reshape((5, 1)),
            L.Flatten(),
            L.Dense(2, activation="log_softmax"),
        ]
    )


def _mlp(keras):
    L = keras.layers
    return keras.Sequential(
        [
            keras.Input((5,)),
            L.Dense(8, activation="leaky_relu"),
            L.Dense(8, activation="tanh"),
            L.Dense(8, activation="elu"),
            L.Dense(8, activation="softplus"),
            L.LeakyReLU(negative_slope=0.1),
            L.Dense(8),
            L.Activation("sigmoid"),
            L.BatchNormalization(scale=False),
            L.Dense(8, activation="gelu"),
            L.ReLU(),
            L.Dense(8),
            L.ELU(alpha=0.5),
            L.Dense(8),
            L.ReLU(negative_slope=0.05),
            L.Dense(3),
            L.Softmax(),
        ]
    )


def _functional(keras):
    L = keras.layers
    x = keras.Input((6,), name="pixels")
    h = L.Dense(5, activation="relu", name="hidden")(x)
    h = L.Dropout(0.5, name="drop")(h)
    return keras.Model(x, L.Dense(2, activation="sigmoid", name="out")(h))


KERAS_MODELS = {
    "seed": _seed,
    "cnn": _cnn,
    "cnn_same": _cnn_same,
    "cnn_channels_first": _cnn_channels_first,
    "mlp": _mlp,
    "functional": _functional,
}


@pytest.fixture(scope="module")
def keras_files(keras, tmp_path_factory) -> dict[str, tuple[Path, Path, object]]:
    """Each model trained for one epoch on seeded random data, saved as .keras and .h5."""
    out = tmp_path_factory.mktemp("keras")
    files = {}
    for name, build in KERAS_MODELS.items():
        keras.utils.set_random_seed(0)
        model = build(keras)
        shape = tuple(model.input_shape[1:])
        n_out = model.output_shape[-1]
        x = inputs(shape, n=64, seed=0)
        y = np.random.default_rng(0).uniform(size=(64, n_out)).astype(np.float32)
        model.compile(optimizer="adam", loss="mse")
        model.fit(x, y, epochs=1, batch_size=16, verbose=0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model.save(out / f"{name}.keras")
            model.save(out / f"{name}.h5")  # Keras 3 still writes legacy HDF5
        files[name] = (out / f"{name}.keras", out / f"{name}.h5", model)
    return files


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
@pytest.mark.parametrize("name", list(KERAS_MODELS))
def test_keras_matches_predict(keras_files, name, suffix, record_property):
    path_v3, path_h5, original = keras_files[name]
    model = load_model(path_v3 if suffix == ".keras" else path_h5)
    assert_standard(model)
    assert model.input_shape == tuple(original.input_shape[1:])
    x = inputs(model.input_shape)
    check_agrees(model, lambda v: original.predict(v, verbose=0), x, record_property)


@pytest.mark.parametrize("name", ["cnn", "functional"])
def test_keras_archive_without_layer_names(keras_files, tmp_path, name):
    """Archives from Keras versions that did not record layer names in the weights file."""
    h5py = pytest.importorskip("h5py")
    path_v3, _, original = keras_files[name]
    weights = tmp_path / "model.weights.h5"
    with zipfile.ZipFile(path_v3) as z:
        members = {n: z.read(n) for n in z.namelist()}
    weights.write_bytes(members["model.weights.h5"])
    with h5py.File(weights, "r+") as f:
        for key in f["layers"]:
            if "vars" in f["layers"][key]:
                f["layers"][key]["vars"].attrs.pop("name", None)
    members["model.weights.h5"] = weights.read_bytes()
    path = tmp_path / "unnamed.keras"
    with zipfile.ZipFile(path, "w") as z:
        for n, data in members.items():
            z.writestr(n, data)
    model = load_model(path)
    x = inputs(model.input_shape)
    check_agrees(model, lambda v: original.predict(v, verbose=0), x)


def test_keras_seed_model_is_linear_then_sigmoid(keras_files):
    for path in keras_files["seed"][:2]:
        model = load_model(path)
        assert [type(m) for m in model] == [nn.Linear, nn.Sigmoid]
        assert model.input_shape == (784,)
        assert (model[0].in_features, model[0].out_features) == (784, 10)


def test_keras_cnn_layout(keras_files):
    model = load_model(keras_files["cnn"][0])
    assert model.input_shape == (16, 16, 1)
    assert isinstance(model[0], Permute) and model[0].dims == (2, 0, 1)
    flat = next(i for i, m in enumerate(model) if isinstance(m, nn.Flatten))
    assert isinstance(model[flat - 1], Permute) and model[flat - 1].dims == (1, 2, 0)
    assert sum(isinstance(m, Permute) for m in model) == 2
    last_name, last = list(model.named_children())[-1]
    assert last_name.endswith("_softmax") and isinstance(last, nn.Softmax) and last.dim == 1


def test_keras_mlp_activation_types(keras_files):
    model = load_model(keras_files["mlp"][0])
    kinds = [type(m) for m in model]
    assert kinds.count(nn.LeakyReLU) == 3  # leaky_relu activation, LeakyReLU, ReLU(slope)
    slopes = sorted(m.negative_slope for m in model if isinstance(m, nn.LeakyReLU))
    assert slopes == pytest.approx([0.05, 0.1, 0.2])
    for t in (nn.Tanh, nn.ELU, nn.Softplus, nn.Sigmoid, nn.BatchNorm1d, nn.GELU, nn.Softmax):
        assert t in kinds


def _unsupported_keras(keras, kind):
    L = keras.layers
    if kind == "LSTM":
        return keras.Sequential([keras.Input((4, 3)), L.Dense(3), L.LSTM(2, name="memory")])
    if kind == "Lambda":
        return keras.Sequential([keras.Input((3,)), L.Dense(3), L.Lambda(lambda t: 2 * t)])
    if kind == "hard_sigmoid":
        return keras.Sequential([keras.Input((3,)), L.Dense(3, activation="hard_sigmoid")])
    if kind == "uneven_avg":
        return keras.Sequential([keras.Input((5, 5, 1)), L.AveragePooling2D(2, padding="same")])
    x = keras.Input((4,))
    h = L.Dense(4, name="branch")(x)
    return keras.Model(x, L.Add(name="residual")([x, h]))


@pytest.mark.parametrize(
    ("kind", "match"),
    [
        ("LSTM", r"layer 1 'memory' \(LSTM\).*not supported"),
        ("Lambda", r"layer 1 'lambda\w*' \(Lambda\).*not supported"),
        ("Add", r"'residual' \(Add\) takes 2 inputs.*chain"),
        ("hard_sigmoid", r"layer 0 'dense\w*' \(Dense\): activation 'hard_sigmoid'"),
        ("uneven_avg", r"layer 0 'average_pooling2d\w*' \(AveragePooling2D\).*unevenly"),
    ],
)
@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_keras_unsupported_layer_is_named(keras, tmp_path, kind, match, suffix):
    model = _unsupported_keras(keras, kind)
    path = tmp_path / f"m{suffix}"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.save(path)
    with pytest.raises(NNInvError, match=match):
        load_model(path)


def test_keras_weights_only_file_is_refused(keras, keras_files, tmp_path):
    path = tmp_path / "w.weights.h5"
    keras_files["seed"][2].save_weights(path)
    with pytest.raises(NNInvError, match="no architecture"):
        load_model(path)


def _write_keras2_h5(path: Path, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """A legacy HDF5 file laid out as tf.keras 2 writes it (``dense/kernel:0``)."""
    h5py = pytest.importorskip("h5py")

    def node(src):
        return [[[src, 0, 0, {}]]]

    layers = [
        {"class_name": "InputLayer", "name": "input_1", "inbound_nodes": [],
         "config": {"batch_input_shape": [None, 4], "dtype": "float32", "name": "input_1"}},
        {"class_name": "Dense", "name": "dense", "inbound_nodes": node("input_1"),
         "config": {"name": "dense", "units": 3, "activation": "relu", "use_bias": True}},
        {"class_name": "LeakyReLU", "name": "leaky_re_lu", "inbound_nodes": node("dense"),
         "config": {"name": "leaky_re_lu", "alpha": 0.3}},
        {"class_name": "BatchNormalization", "name": "bn", "inbound_nodes": node("leaky_re_lu"),
         "config": {"name": "bn", "axis": [1], "epsilon": 0.001, "center": True, "scale": True}},
        {"class_name": "Dense", "name": "dense_1", "inbound_nodes": node("bn"),
         "config": {"name": "dense_1", "units": 2, "activation": "softmax", "use_bias": True}},
    ]  # fmt: skip
    config = {
        "class_name": "Functional",
        "config": {"name": "model", "layers": layers, "input_layers": [["input_1", 0, 0]],
                   "output_layers": [["dense_1", 0, 0]]},
    }  # fmt: skip
    w = {
        "dense/kernel:0": rng.normal(size=(4, 3)),
        "dense/bias:0": rng.normal(size=3),
        "bn/gamma:0": rng.uniform(0.5, 2, size=3),
        "bn/beta:0": rng.normal(size=3),
        "bn/moving_mean:0": rng.normal(size=3),
        "bn/moving_variance:0": rng.uniform(0.5, 2, size=3),
        "dense_1/kernel:0": rng.normal(size=(3, 2)),
        "dense_1/bias:0": rng.normal(size=2),
    }
    w = {k: v.astype(np.float32) for k, v in w.items()}
    with h5py.File(path, "w") as f:
        f.attrs["keras_version"] = b"2.13.1"
        f.attrs["backend"] = b"tensorflow"
        f.attrs["model_config"] = json.dumps(config).encode()
        mw = f.create_group("model_weights")
        mw.attrs["layer_names"] = [b"input_1", b"dense", b"leaky_re_lu", b"bn", b"dense_1"]
        for layer in ("input_1", "dense", "leaky_re_lu", "bn", "dense_1"):
            g = mw.create_group(layer)
            names = [k for k in w if k.split("/")[0] == layer]
            g.attrs["weight_names"] = [n.encode() for n in names]
            for n in names:
                g.create_dataset(n, data=w[n])
    return w


def test_keras2_hdf5_layout(tmp_path):
    w = _write_keras2_h5(tmp_path / "k2.h5", np.random.default_rng(3))

    def reference(x):
        h = np.maximum(x @ w["dense/kernel:0"] + w["dense/bias:0"], 0)
        h = np.where(h > 0, h, 0.3 * h)
        h = (h - w["bn/moving_mean:0"]) / np.sqrt(w["bn/moving_variance:0"] + 1e-3)
        h = h * w["bn/gamma:0"] + w["bn/beta:0"]
        z = h @ w["dense_1/kernel:0"] + w["dense_1/bias:0"]
        e = np.exp(z - z.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    model = load_model(tmp_path / "k2.h5")
    assert_standard(model)
    assert model.input_shape == (4,)
    check_agrees(model, reference, inputs((4,)))


# =========================================================================== ONNX


@pytest.fixture(scope="module")
def onnx():
    pytest.importorskip("onnxruntime")
    return pytest.importorskip("onnx")


def run_ort(path: Path) -> Reference:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x})[0]


class _Net(nn.Module):
    """Conv, BatchNorm, pools, ``x.view(x.size(0), -1)`` (a Shape/Gather chain), Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.pool = nn.MaxPool2d(2)
        self.avg = nn.AvgPool2d(2)
        self.fc = nn.Linear(4 * 3 * 3, 6)
        self.bn1 = nn.BatchNorm1d(6)
        self.out = nn.Linear(6, 3)

    def forward(self, x):
        x = self.avg(self.pool(torch.relu(self.bn(self.conv(x)))))
        x = x.view(x.size(0), -1)
        return torch.log_softmax(self.out(torch.tanh(self.bn1(self.fc(x)))), dim=1)


def _torch_models() -> dict[str, tuple[nn.Module, tuple[int, ...]]]:
    torch.manual_seed(0)
    mlp = nn.Sequential(
        nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 8), nn.LeakyReLU(0.1), nn.Linear(8, 8),
        nn.ELU(), nn.Linear(8, 8), nn.Softplus(), nn.Dropout(0.3), nn.Linear(8, 4), nn.Sigmoid(),
    )  # fmt: skip
    cnn = _Net()
    for m in cnn.modules():
        if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d):
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.normal_()
            m.bias.data.normal_()
    return {"mlp": (mlp.eval(), (6,)), "cnn": (cnn.eval(), (2, 12, 12))}


@pytest.mark.parametrize("fold", [True, False], ids=["folded", "unfolded"])
@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_onnx_torch_export(onnx, tmp_path, name, fold, record_property):
    module, shape = _torch_models()[name]
    path = tmp_path / f"{name}.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module, (torch.zeros(2, *shape),), path, dynamo=False, do_constant_folding=fold,
            input_names=["x"], dynamic_axes={"x": {0: "batch"}},
        )  # fmt: skip
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    if name == "cnn":
        assert {"Shape", "Gather", "Concat", "Reshape"} <= ops
        assert ("BatchNormalization" in ops) or fold
    model = load_model(path)
    assert_standard(model)
    assert model.input_shape == shape
    check_agrees(model, run_ort(path), inputs(shape), record_property)
    with torch.no_grad():
        x = torch.from_numpy(inputs(shape))
        assert torch.allclose(model(x), module(x), atol=AGREE[torch.float32], rtol=0)


def test_onnx_fixed_batch_accepts_any_batch(onnx, tmp_path):
    module, shape = _torch_models()["cnn"]
    path = tmp_path / "fixed.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (torch.zeros(1, *shape),), path, dynamo=False)
    model = load_model(path)
    check_agrees(model, run_ort(path), inputs(shape, n=1))
    with torch.no_grad():
        x = torch.from_numpy(inputs(shape, n=5))
        assert torch.allclose(model(x), module(x), atol=AGREE[torch.float32], rtol=0)


def test_onnx_dynamo_export(onnx, tmp_path, record_property):
    pytest.importorskip("onnxscript")  # the dynamo exporter needs it
    module, shape = _torch_models()["cnn"]
    path = tmp_path / "cnn_dynamo.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (torch.zeros(2, *shape),), path, dynamo=True)
    model = load_model(path)
    check_agrees(model, run_ort(path), inputs(shape, n=2), record_property)


def _graph(onnx, nodes, shape, inits, out_shape, opset=13):
    from onnx import TensorProto, helper, numpy_helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", *shape])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", *out_shape])
    arrays = {k: np.asarray(v) for k, v in inits.items()}
    arrays = {k: v.astype(np.float32) if v.dtype.kind == "f" else v for k, v in arrays.items()}
    init = [numpy_helper.from_array(v, k) for k, v in arrays.items()]
    g = helper.make_graph(nodes, "g", [x], [y], init)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _handmade_dense(onnx):
    from onnx import TensorProto, helper

    rng = np.random.default_rng(0)
    mk = helper.make_node
    i64 = helper.make_tensor
    nodes = [
        mk("Sub", ["x", "mean"], ["a"], name="center"),
        mk("Div", ["a", "std"], ["b"], name="scale"),
        mk("MatMul", ["b", "W1"], ["c"], name="mm1"),
        mk("Add", ["c", "b1"], ["d"], name="bias1"),
        mk("LeakyRelu", ["d"], ["e"], alpha=0.1, name="lrelu"),
        mk("Gemm", ["e", "W2"], ["f"], transB=1, alpha=0.5, name="gemm"),
        mk("Constant", [], ["two"], value=i64("two", TensorProto.FLOAT, [], [2.0])),
        mk("Mul", ["f", "two"], ["g"], name="double"),
        mk("Elu", ["g"], ["h"], alpha=0.7, name="elu"),
        mk("Constant", [], ["ax"], value=i64("ax", TensorProto.INT64, [1], [1])),
        mk("Unsqueeze", ["h", "ax"], ["i"], name="unsq"),
        mk("Transpose", ["i"], ["j"], perm=[0, 2, 1], name="tr"),
        mk("Flatten", ["j"], ["k"], name="flat"),
        mk("Softplus", ["k"], ["l"], name="sp"),
        mk("Identity", ["l"], ["m"], name="id"),
        mk("Dropout", ["m"], ["n"], name="drop"),
        mk("Cast", ["n"], ["o"], to=TensorProto.FLOAT, name="cast"),
        mk("Tanh", ["o"], ["p"], name="tanh"),
        mk("Sub", ["one", "p"], ["q"], name="flip"),
        mk("MatMul", ["q", "W3"], ["r"], name="mm3"),
        mk("Softmax", ["r"], ["y"], axis=-1, name="softmax"),
    ]
    inits = {
        "mean": rng.normal(size=6),
        "std": rng.uniform(0.5, 2, size=6),
        "W1": rng.normal(size=(6, 5)),
        "b1": rng.normal(size=(1, 5)),
        "W2": rng.normal(size=(4, 5)),
        "one": np.ones(4),
        "W3": rng.normal(size=(4, 3)),
    }
    return _graph(onnx, nodes, (6,), inits, (3,)), (6,)


def _handmade_conv(onnx):
    from onnx import helper

    rng = np.random.default_rng(1)
    mk = helper.make_node
    nodes = [
        mk("Conv", ["x", "W"], ["a"], auto_pad="SAME_UPPER", strides=[2, 2], name="conv"),
        mk("Add", ["a", "cb"], ["b"], name="conv_bias"),
        mk("Relu", ["b"], ["c"], name="relu"),
        mk("MaxPool", ["c"], ["d"], kernel_shape=[2, 2], strides=[2, 2], pads=[0, 0, 1, 1]),
        mk("Mul", ["d", "gain"], ["e"], name="gain"),
        mk("Softmax", ["e"], ["f"], axis=1, name="softmax11"),
        mk("AveragePool", ["f"], ["g"], kernel_shape=[2, 2], pads=[1, 1, 1, 1], name="avg"),
        mk("Transpose", ["g"], ["h"], perm=[0, 2, 3, 1], name="nhwc"),
        mk("Reshape", ["h", "shape"], ["i"], name="flat"),
        mk("Sigmoid", ["i"], ["y"], name="sig"),
    ]
    inits = {
        "W": rng.normal(size=(3, 2, 3, 3)),
        "cb": rng.normal(size=(3, 1, 1)),
        "gain": rng.uniform(0.5, 2, size=(3, 1, 1)),
        "shape": np.array([0, -1], dtype=np.int64),
    }
    return _graph(onnx, nodes, (2, 10, 10), inits, (48,), opset=11), (2, 10, 10)


@pytest.mark.parametrize("make", [_handmade_dense, _handmade_conv], ids=["dense", "conv"])
def test_onnx_handmade(onnx, tmp_path, make, record_property):
    proto, shape = make(onnx)
    path = tmp_path / "m.onnx"
    onnx.save(proto, str(path))
    model = load_model(path)
    assert_standard(model)
    assert model.input_shape == shape
    check_agrees(model, run_ort(path), inputs(shape), record_property)


def test_onnx_matmul_add_is_one_linear(onnx):
    proto, _ = _handmade_dense(onnx)
    from nninv.model.io._onnx import convert_onnx

    model = convert_onnx(proto)
    assert isinstance(model.mm1, nn.Linear) and "bias1" not in dict(model.named_children())
    assert isinstance(model.tr, Permute) and model.tr.dims == (1, 0)
    assert isinstance(model.softmax, nn.Softmax) and model.softmax.dim == 1


def _bad_onnx(onnx, kind):
    from onnx import helper

    mk = helper.make_node
    w = {"W": np.ones((4, 4))}
    if kind == "Erf":
        nodes = [
            mk("MatMul", ["x", "W"], ["a"], name="mm"),
            mk("Erf", ["a"], ["y"], name="gelu_erf"),
        ]
    elif kind == "branch":
        nodes = [mk("Relu", ["x"], ["a"], name="r"), mk("Add", ["x", "a"], ["y"], name="skip")]
    else:
        nodes = [mk("Gemm", ["x", "W"], ["y"], transA=1, name="gemmT")]
    return _graph(onnx, nodes, (4,), w, (4,))


@pytest.mark.parametrize(
    ("kind", "match"),
    [
        ("Erf", r"node 1 'gelu_erf' \(Erf\): operator Erf is not supported"),
        ("branch", r"node 1 'skip' \(Add\).*branches"),
        ("transA", r"node 0 'gemmT' \(Gemm\): transA"),
    ],
)
def test_onnx_unsupported_is_named(onnx, tmp_path, kind, match):
    path = tmp_path / "bad.onnx"
    onnx.save(_bad_onnx(onnx, kind), str(path))
    with pytest.raises(NNInvError, match=match):
        load_model(path)


def test_onnx_lstm_is_named(onnx, tmp_path):
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 5, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1, 5, 2])
    w = helper.make_tensor("W", TensorProto.FLOAT, [1, 8, 3], np.zeros(24))
    r = helper.make_tensor("R", TensorProto.FLOAT, [1, 8, 2], np.zeros(16))
    node = helper.make_node("LSTM", ["x", "W", "R"], ["y"], hidden_size=2, name="rnn")
    proto = helper.make_model(
        helper.make_graph([node], "lstm", [x], [y], [w, r]),
        opset_imports=[helper.make_opsetid("", 13)],
    )
    onnx.save(proto, str(tmp_path / "lstm.onnx"))
    with pytest.raises(NNInvError, match=r"node 0 'rnn' \(LSTM\): operator LSTM"):
        load_model(tmp_path / "lstm.onnx")


# =========================================================================== TorchScript


@pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")
@pytest.mark.parametrize("how", ["script", "trace"])
def test_torchscript_round_trip(tmp_path, how):
    torch.manual_seed(0)
    module = nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 2)).eval()
    x = torch.randn(3, 5)
    saved = torch.jit.script(module) if how == "script" else torch.jit.trace(module, x)
    path = tmp_path / "m.pt"
    torch.jit.save(saved, str(path))
    model = load_model(path)
    assert isinstance(model, nn.Sequential)  # rebuilt from the script module
    assert not model.training
    with torch.no_grad():
        assert torch.equal(model(x), module(x))
        assert model.double()(x.double()).dtype == torch.float64


# =========================================================================== refusals


def test_pickles_are_refused(tmp_path):
    module = nn.Sequential(nn.Linear(3, 2))
    torch.save(module, tmp_path / "whole.pt")
    torch.save(module.state_dict(), tmp_path / "state.pth")
    torch.save(module.state_dict(), tmp_path / "old.pt", _use_new_zipfile_serialization=False)
    with open(tmp_path / "obj.pkl", "wb") as f:
        pickle.dump({"w": np.zeros(3)}, f)
    for name in ("whole.pt", "state.pth", "old.pt", "obj.pkl"):
        with pytest.raises(NNInvError, match=r"(?is)unpickl.*weights_only=True.*TorchScript.*ONNX"):
            load_model(tmp_path / name)


def test_torch_load_is_never_called(tmp_path, monkeypatch):
    def boom(*args, **kwargs):
        raise AssertionError("torch.load called")

    monkeypatch.setattr(torch, "load", boom)
    torch.save(nn.Linear(2, 2), tmp_path / "m.pt")
    with pytest.raises(NNInvError, match="refusing"):
        load_model(tmp_path / "m.pt")


# =========================================================================== bad files


def test_safetensors_is_refused(tmp_path):
    header = json.dumps({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}).encode()
    data = len(header).to_bytes(8, "little") + header + np.zeros(2, np.float32).tobytes()
    for name in ("w.safetensors", "w.bin"):
        (tmp_path / name).write_bytes(data)
        with pytest.raises(NNInvError, match="safetensors.*no architecture"):
            load_model(tmp_path / name)


@pytest.fixture(scope="module")
def valid_files(tmp_path_factory) -> dict[str, Path]:
    """One small valid file of every kind, to be damaged by the tests."""
    out = tmp_path_factory.mktemp("valid")
    files = {}
    module = nn.Sequential(nn.Linear(30, 20), nn.Sigmoid()).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(torch.jit.script(module), str(out / "m.pt"))
    files["torchscript"] = out / "m.pt"
    try:
        import onnx  # noqa: F401

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(module, (torch.zeros(1, 30),), out / "m.onnx", dynamo=False)
        files["onnx"] = out / "m.onnx"
    except ImportError:
        pass
    try:
        import keras

        if keras.backend.backend() == "torch":
            model = _seed(keras)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model.save(out / "m.keras")
                model.save(out / "m.h5")
            files["keras"], files["h5"] = out / "m.keras", out / "m.h5"
    except ImportError:
        pass
    return files


@pytest.mark.parametrize("kind", ["keras", "h5", "onnx", "torchscript"])
@pytest.mark.parametrize("cut", [0.5, 0.9])
def test_truncated_file(valid_files, tmp_path, kind, cut):
    if kind not in valid_files:
        pytest.skip(f"cannot write {kind} files here")
    src = valid_files[kind]
    load_model(src)  # the intact file loads
    data = src.read_bytes()
    path = tmp_path / f"cut{src.suffix}"
    path.write_bytes(data[: int(len(data) * cut)])
    with pytest.raises(NNInvError, match=r"corrupt or truncated") as info:
        load_model(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("field", ["name", "version"])
def test_damaged_zip_directory(valid_files, tmp_path, field):
    # the last central-directory entry: a member name that is not UTF-8 (zipfile raises
    # UnicodeDecodeError) or a nonsense "version needed" (NotImplementedError)
    data = bytearray(valid_files["torchscript"].read_bytes())
    at = data.rfind(b"PK\x01\x02")
    assert at > 0 and data[at + 9] & 0x08  # flag bit 11 (byte 9, bit 3): UTF-8 names
    if field == "name":
        data[at + 46] = 0x80
    else:
        data[at + 6 : at + 8] = (255).to_bytes(2, "little")
    path = tmp_path / "damaged.pt"
    path.write_bytes(bytes(data))
    with pytest.raises(NNInvError, match=r"damaged zip archive") as info:
        load_model(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("suffix", [".keras", ".h5", ".onnx", ".pt", ".bin", ""])
def test_random_bytes(tmp_path, suffix):
    path = tmp_path / f"noise{suffix}"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(NNInvError, match=r"corrupt or truncated|supported kinds") as info:
        load_model(path)
    assert str(path) in str(info.value)


def test_empty_file(tmp_path):
    (tmp_path / "m.keras").write_bytes(b"")
    with pytest.raises(NNInvError, match=r"empty.*corrupt or truncated"):
        load_model(tmp_path / "m.keras")


def test_missing_file(tmp_path):
    path = tmp_path / "nowhere.onnx"
    with pytest.raises(FileNotFoundError, match="nowhere.onnx"):
        load_model(path)
    with pytest.raises(NNInvError, match="no such model file"):
        load_model(str(path))


def test_unknown_format_lists_kinds(tmp_path):
    (tmp_path / "notes.txt").write_text("hello, not a network\n")
    with pytest.raises(NNInvError, match=r"supported kinds: Keras 3.*HDF5.*ONNX.*TorchScript"):
        load_model(tmp_path / "notes.txt")
    with pytest.raises(NNInvError, match="directory"):
        load_model(tmp_path)


# =========================================================================== TorchScript chains

#: Tolerances for TorchScript chains: rebuilt vs script module outputs (float32), and
#: the residual max |f(x) - y| a pinv round trip may leave (float64).
TS_TOL = {"outputs": 1e-6, "pinv_residual": 1e-5}


def _ts_seed() -> nn.Module:
    return nn.Sequential(nn.Linear(784, 10), nn.Sigmoid())


def _ts_leaky() -> nn.Module:
    return nn.Sequential(
        nn.Linear(12, 8), nn.LeakyReLU(0.2), nn.Sequential(nn.Linear(8, 5), nn.LeakyReLU(0.05))
    )


def _ts_cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 3, 3, padding=1), nn.Tanh(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(48, 4)
    )


#: name: (builder, input shape, whether the shape must be saved, expected step types).
TS_CHAINS = {
    "seed": (_ts_seed, (784,), False, ["Affine", "Elementwise"]),
    "leaky": (_ts_leaky, (12,), False, ["Affine", "Elementwise", "Affine", "Elementwise"]),
    "cnn": (_ts_cnn, (1, 8, 8), True, ["Affine", "Elementwise", "Unsupported", "Affine"]),
}


def _save_ts(module: nn.Module, how: str, path: Path, shape: tuple[int, ...] | None) -> nn.Module:
    """Script or trace ``module`` (with ``input_shape`` saved if ``shape``) to ``path``."""
    module = module.eval()
    if shape is not None:
        if how == "script":
            module.input_shape = shape  # a scripted attribute
        else:  # tracing keeps buffers but no plain attributes
            module.register_buffer("input_shape", torch.tensor(shape))
    x = torch.randn(2, *(shape or (module[0].in_features,)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        saved = torch.jit.script(module) if how == "script" else torch.jit.trace(module, x)
        torch.jit.save(saved, str(path))
    return saved


def _ts_max_diff(a: nn.Module, b: nn.Module, shape: tuple[int, ...]) -> float:
    x = torch.from_numpy(inputs(shape, n=5, seed=3))
    with torch.no_grad():
        return float((a(x) - b(x)).abs().max())


@pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")
@pytest.mark.parametrize("how", ["script", "trace"])
@pytest.mark.parametrize("name", list(TS_CHAINS))
def test_torchscript_chain_is_rebuilt(tmp_path, name, how):
    from nninv.model.chain import analyse

    make, shape, save_shape, steps = TS_CHAINS[name]
    torch.manual_seed(0)
    saved = _save_ts(make(), how, tmp_path / "m.pt", shape if save_shape else None)
    model = load_model(tmp_path / "m.pt")
    assert_standard_nested(model)
    assert not model.training
    assert getattr(model, "input_shape", None) == (shape if save_shape else None)
    assert _ts_max_diff(model, saved, shape) <= TS_TOL["outputs"]
    chain = analyse(model, shape)
    assert [type(s).__name__ for s in chain.steps] == steps
    assert all(type(layer.module) in STANDARD for layer in chain.layers)


def assert_standard_nested(model: nn.Module) -> None:
    """``model`` is an ``nn.Sequential`` whose leaves (through nested ones) are standard."""
    assert isinstance(model, nn.Sequential)
    for name, m in model.named_modules():
        if not isinstance(m, nn.Sequential):
            assert type(m) in STANDARD, f"{name}: {type(m).__name__}"
    assert all(p.dtype == torch.float32 for p in model.parameters())


@pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")
@pytest.mark.parametrize("how", ["script", "trace"])
def test_torchscript_float32_chain_is_rebuilt_under_float64_default(tmp_path, how):
    # the check inputs take the archive's dtype, not torch's default dtype
    torch.manual_seed(0)
    saved = _save_ts(_ts_leaky(), how, tmp_path / "m.pt", None)
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        model = load_model(tmp_path / "m.pt")
    finally:
        torch.set_default_dtype(old)
    assert_standard_nested(model)
    assert _ts_max_diff(model, saved, (12,)) <= TS_TOL["outputs"]


@pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")
@pytest.mark.parametrize("how", ["script", "trace"])
@pytest.mark.parametrize("name", ["seed", "leaky"])
def test_torchscript_chain_pinv_round_trip(tmp_path, name, how):
    import nninv

    make, shape, _, _ = TS_CHAINS[name]
    torch.manual_seed(0)
    saved = _save_ts(make(), how, tmp_path / "m.pt", None)
    model = load_model(tmp_path / "m.pt").double()
    x_true = torch.rand(4, *shape, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        y = saved.double()(x_true.double())
    inv = nninv.invert(model, y, "pinv")
    assert bool(inv.converged.all()), inv.info.get("reasons")
    assert float(inv.residual.max()) <= TS_TOL["pinv_residual"]
    with torch.no_grad():
        assert float((model(inv.x) - y).abs().max()) <= TS_TOL["pinv_residual"]


@pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")
def test_torchscript_traced_cnn_without_shape_stays_opaque(tmp_path):
    torch.manual_seed(0)
    module = _ts_cnn().eval()
    x = torch.randn(2, 1, 8, 8)
    torch.jit.save(torch.jit.trace(module, x), str(tmp_path / "m.pt"))
    model = load_model(tmp_path / "m.pt")  # no saved shape, no leading Linear
    assert isinstance(model, torch.jit.ScriptModule)
    assert _ts_max_diff(model, module, (1, 8, 8)) <= TS_TOL["outputs"]


class _Doubler(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(x) * 2.0 + x


class Linear(nn.Module):
    """A user class that shares a torch.nn name (and attributes) but not the maths."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(torch.randn(out_features, in_features))
        self.bias = nn.Parameter(torch.randn(out_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight.T * 2.0 + self.bias


class _SkipSequential(nn.Sequential):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x
        for m in self:
            h = m(h)
        return h + x[:, :4]


@pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")
@pytest.mark.parametrize(
    "make",
    [
        lambda: nn.Sequential(nn.Linear(6, 6), _Doubler(), nn.Linear(6, 4)),
        lambda: nn.Sequential(Linear(6, 4), nn.Sigmoid()),
        lambda: nn.Sequential(nn.Linear(6, 4), nn.Hardtanh()),
        lambda: _SkipSequential(nn.Linear(6, 4), nn.Tanh()),
        lambda: nn.Sequential(
            nn.Linear(6, 6), nn.Sequential(nn.Tanh(), _Doubler()), nn.Linear(6, 4)
        ),
    ],
    ids=[
        "custom-child",
        "lookalike-Linear",
        "layer-not-in-table",
        "Sequential-subclass",
        "nested-custom",
    ],
)
@pytest.mark.parametrize("how", ["script", "trace"])
def test_torchscript_non_chain_stays_opaque(tmp_path, make, how):
    torch.manual_seed(0)
    module = make().eval()
    saved = _save_ts(module, how, tmp_path / "m.pt", None)
    model = load_model(tmp_path / "m.pt")
    assert isinstance(model, torch.jit.ScriptModule)
    assert not model.training
    assert _ts_max_diff(model, module, (6,)) <= TS_TOL["outputs"]
    assert _ts_max_diff(model, saved, (6,)) == 0.0


@pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")
def test_torchscript_custom_module_stays_opaque(tmp_path):
    from nninv.model.chain import analyse

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(5, 5), nn.Linear(5, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.b(torch.tanh(self.a(x)) + x)

    torch.manual_seed(0)
    module = Net().eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(torch.jit.script(module), str(tmp_path / "m.pt"))
    model = load_model(tmp_path / "m.pt")
    assert isinstance(model, torch.jit.ScriptModule)
    assert _ts_max_diff(model, module, (5,)) <= TS_TOL["outputs"]
    with pytest.raises(NNInvError, match="not a chain of known layers"):
        analyse(model, (5,)).require_closed_form("pinv")


@pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")
@pytest.mark.parametrize("how", ["script", "trace"])
def test_torchscript_rebuild_that_differs_is_refused(tmp_path, monkeypatch, how):
    from nninv.model.io import _torchscript

    torch.manual_seed(0)
    module = _ts_leaky().eval()
    _save_ts(module, how, tmp_path / "m.pt", None)
    assert isinstance(load_model(tmp_path / "m.pt"), nn.Sequential)
    # a builder that reads the slope wrong: the output check must catch it
    monkeypatch.setitem(_torchscript._BUILDERS, "LeakyReLU", lambda a, state: nn.LeakyReLU())
    model = load_model(tmp_path / "m.pt")
    assert isinstance(model, torch.jit.ScriptModule)
    assert _ts_max_diff(model, module, (12,)) <= TS_TOL["outputs"]


@pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")
def test_torchscript_saved_shape_is_kept(tmp_path):
    torch.manual_seed(0)
    _save_ts(_ts_seed(), "script", tmp_path / "m.pt", (784,))
    model = load_model(tmp_path / "m.pt")
    assert isinstance(model, nn.Sequential) and model.input_shape == (784,)
    assert isinstance(model.input_shape, tuple)


def _ts_bn_cnn(side: int = 28) -> nn.Sequential:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.AvgPool2d(2),
        nn.Flatten(),
        nn.Linear(4 * (side // 2) ** 2, 3),
    )
    with torch.no_grad():  # running statistics that are not the defaults
        net[1].running_mean.uniform_(-0.5, 0.5)
        net[1].running_var.uniform_(0.5, 2.0)
    return net.eval()


@pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")
@pytest.mark.parametrize("how", ["script", "trace"])
def test_torchscript_bn_cnn_rebuilt_with_given_input_shape(tmp_path, how):
    module = _ts_bn_cnn()
    if how == "script":
        torch.jit.save(torch.jit.script(module), str(tmp_path / "m.pt"))
    else:
        torch.jit.save(torch.jit.trace(module, torch.randn(2, 1, 28, 28)), str(tmp_path / "m.pt"))
    assert isinstance(load_model(tmp_path / "m.pt"), torch.jit.ScriptModule)
    model = load_model(tmp_path / "m.pt", input_shape=(1, 28, 28))
    assert isinstance(model, nn.Sequential) and model.input_shape == (1, 28, 28)
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert _ts_max_diff(model, module, (1, 28, 28)) <= TS_TOL["outputs"]


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")
def test_cli_invert_torchscript_bn_cnn_batchnorm_prior(tmp_path):
    import contextlib
    import io

    from nninv.cli import main

    torch.jit.save(torch.jit.script(_ts_bn_cnn(8)), str(tmp_path / "bncnn.pt"))
    argv = ["invert", str(tmp_path / "bncnn.pt"), "--target", "class=0,1", "--prior", "batchnorm"]
    argv += ["--out", str(tmp_path / "x.npy")]
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert main(argv) == 2  # no shape: the script stays opaque, and the error says why
    assert "--input-shape" in err.getvalue()
    with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
        assert main([*argv, "--input-shape", "1,8,8"]) == 0
    assert np.load(tmp_path / "x.npy").shape == (2, 1, 8, 8)

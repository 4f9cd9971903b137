"""ONNX files as the verification and preimage literature writes them.

Inputs declared without a batch axis (VCAS: ``X`` of shape ``[4]``), symbolic,
unnamed or fixed batch axes, ``(batch, 2, 2)`` inputs whose layers act on the
last axis (auto_park), ``W @ X`` and ``X @ w``: each loads and matches
onnxruntime. Small synthetic files written with ``onnx.helper`` cover every case
in CI; the networks under ``/work/shared/data/region`` are checked when present.
"""

from __future__ import annotations

import glob
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from nninv import NNInvError, load_model

#: Agreement with onnxruntime, relative to the outputs' scale (ORT computes in float32;
#: VCAS outputs reach ~10^3, where one float32 ulp is ~6e-5).
REL = 1e-5

REGION_DIR = Path(os.environ.get("NNINV_REGION_DIR", "/work/shared/data/region"))


@pytest.fixture(scope="module")
def onnx():
    pytest.importorskip("onnxruntime")
    return pytest.importorskip("onnx")


def _ort(path: Path):
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    inp = session.get_inputs()[0]
    batched = len(inp.shape) >= 2
    fixed = batched and isinstance(inp.shape[0], int) and inp.shape[0] > 0

    def run(x: np.ndarray) -> np.ndarray:
        if not batched:  # one sample per call
            return np.stack([session.run(None, {inp.name: xi})[0] for xi in x])
        if fixed:
            k = inp.shape[0]
            return np.concatenate(
                [session.run(None, {inp.name: x[i : i + k]})[0] for i in range(0, len(x), k)]
            )
        return session.run(None, {inp.name: x})[0]

    return run


def _agree(model: nn.Module, path: Path, shape: tuple[int, ...], n: int = 6) -> float:
    x = np.random.default_rng(3).uniform(-1, 1, size=(n, *shape)).astype(np.float32)
    want = np.asarray(_ort(path)(x), dtype=np.float64)
    with torch.no_grad():
        got32 = model(torch.from_numpy(x)).numpy()
        got64 = model.double()(torch.from_numpy(x).double()).numpy()
    model.float()
    assert got32.shape == want.shape
    scale = max(1.0, float(np.abs(want).max()))
    err = max(np.abs(got32 - want).max(), np.abs(got64 - want).max()) / scale
    assert err <= REL, err
    return float(err)


def _model(onnx, nodes, x_shape, y_shape, inits, opset=13):
    from onnx import TensorProto, helper, numpy_helper

    x = helper.make_tensor_value_info("X", TensorProto.FLOAT, x_shape)
    y = helper.make_tensor_value_info("Y", TensorProto.FLOAT, y_shape)
    rng = np.random.default_rng(0)
    arrays = {
        k: (rng.normal(size=v) if isinstance(v, tuple) else np.asarray(v)) for k, v in inits.items()
    }
    init = [
        numpy_helper.from_array(a.astype(np.float32) if a.dtype.kind == "f" else a, k)
        for k, a in arrays.items()
    ]
    g = helper.make_graph(nodes, "g", [x], [y], init)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _mk(*args, **kw):
    from onnx import helper

    return helper.make_node(*args, **kw)


def _vcas_like(onnx):
    """``[4]`` input, ``W @ X + b`` twice: the VCAS layout."""
    nodes = [
        _mk("MatMul", ["W0", "X"], ["m0"], name="mm0"),
        _mk("Add", ["m0", "B0"], ["h0"], name="add0"),
        _mk("Relu", ["h0"], ["r0"], name="relu0"),
        _mk("MatMul", ["W1", "r0"], ["m1"], name="mm1"),
        _mk("Add", ["m1", "B1"], ["Y"], name="add1"),
    ]
    inits = {"W0": (7, 4), "B0": (7,), "W1": (3, 7), "B1": (3,)}
    return _model(onnx, nodes, [4], [3], inits, opset=16), (4,)


def _autopark_like(onnx, batch):
    """``(batch, 2, 2)`` input, ``X @ W + b`` acting on the last axis."""
    nodes = [
        _mk("MatMul", ["X", "W0"], ["m0"], name="mm0"),
        _mk("Add", ["b0", "m0"], ["h0"], name="add0"),
        _mk("Relu", ["h0"], ["r0"], name="relu0"),
        _mk("MatMul", ["r0", "W1"], ["m1"], name="mm1"),
        _mk("Add", ["b1", "m1"], ["Y"], name="add1"),
    ]
    inits = {"W0": (2, 5), "b0": (5,), "W1": (5, 4), "b1": (4,)}
    return _model(onnx, nodes, [batch, 2, 2], [batch, 2, 4], inits, opset=10), (2, 2)


def _left_matmul_rank3(onnx):
    """``W @ X`` on a ``(batch, 3, 2)`` input acts on the axis before the last."""
    nodes = [
        _mk("MatMul", ["W", "X"], ["m"], name="left"),
        _mk("Relu", ["m"], ["r"], name="relu"),
        _mk("MatMul", ["r", "V"], ["Y"], name="right_vector"),
    ]
    inits = {"W": (5, 3), "V": (2,)}
    return _model(onnx, nodes, ["N", 3, 2], ["N", 5], inits), (3, 2)


def _unbatched_reshapes(onnx):
    """A ``[12]`` sample through Reshape, MatMul, Transpose, Softmax and Flatten per sample."""
    nodes = [
        _mk("Reshape", ["X", "s34"], ["a"], name="to_3x4"),
        _mk("MatMul", ["a", "W"], ["b"], name="mm"),
        _mk("Transpose", ["b"], ["c"], perm=[1, 0], name="tr"),
        _mk("Reshape", ["c", "s29"], ["d"], name="to_2x9"),
        _mk("Softmax", ["d"], ["e"], axis=0, name="softmax0"),
        _mk("Flatten", ["e"], ["Y"], axis=1, name="flat"),
    ]
    inits = {
        "s34": np.array([3, 4], dtype=np.int64),
        "W": (4, 6),
        "s29": np.array([2, 9], dtype=np.int64),
    }
    return _model(onnx, nodes, [12], [2, 9], inits), (12,)


CASES = {
    "no_batch_axis": _vcas_like,
    "symbolic_batch": lambda o: _autopark_like(o, "batch_size"),
    "unnamed_batch": lambda o: _autopark_like(o, None),
    "fixed_batch_1": lambda o: _autopark_like(o, 1),
    "left_matmul_rank3": _left_matmul_rank3,
    "no_batch_axis_reshapes": _unbatched_reshapes,
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_field_layouts_load_and_match_onnxruntime(onnx, tmp_path, case, record_property):
    proto, shape = CASES[case](onnx)
    path = tmp_path / f"{case}.onnx"
    onnx.save(proto, str(path))
    model = load_model(path)
    assert model.input_shape == shape
    record_property("rel_err", _agree(model, path, shape))


def test_vcas_like_is_two_linears(onnx):
    from nninv.model.io._onnx import convert_onnx

    proto, _ = _vcas_like(onnx)
    model = convert_onnx(proto)
    kinds = [type(m) for m in model]
    assert kinds == [nn.Linear, nn.ReLU, nn.Linear]  # W @ X + b folded into one Linear each


def _refused(onnx, op):
    if op == "Gemm":
        nodes = [_mk("Gemm", ["X", "W"], ["Y"], transB=1, name="dense")]
        inits = {"W": (3, 4)}
    else:
        nodes = [_mk("MatMul", ["W", "X"], ["Y"], name="outer")]
        inits = {"W": (3, 1, 4)}
    return _model(onnx, nodes, [4] if op == "Gemm" else ["N", 4, 2], ["N", 3], inits)


@pytest.mark.parametrize(
    ("op", "match"),
    [
        ("Gemm", r"node 0 'dense' \(Gemm\): Gemm needs a leading batch axis.*'X'.*\[4\]"),
        ("MatMul", r"node 0 'outer' \(MatMul\): constant @ input needs a 2-D constant"),
    ],
)
def test_what_cannot_load_is_refused_naming_the_node(onnx, tmp_path, op, match):
    path = tmp_path / "bad.onnx"
    onnx.save(_refused(onnx, op), str(path))
    with pytest.raises(NNInvError, match=match):
        load_model(path)


REGION_FILES = sorted(glob.glob(str(REGION_DIR / "*" / "*.onnx")))


@pytest.mark.skipif(not REGION_FILES, reason=f"no ONNX networks under {REGION_DIR}")
@pytest.mark.parametrize("path", REGION_FILES, ids=[Path(p).stem for p in REGION_FILES])
def test_region_networks_load_and_match_onnxruntime(onnx, path, record_property):
    model = load_model(path)
    record_property("rel_err", _agree(model, Path(path), model.input_shape))

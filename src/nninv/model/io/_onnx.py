"""Translate ONNX graphs that are chains of layers into ``torch.nn.Sequential``.

Every value of the graph is either *constant* (an initializer, a ``Constant``
node, or computed from constants and static shapes, which is how exporters write
``x.view(x.size(0), -1)``) or *on the data path* from the single graph input.
Constant nodes are evaluated with the ONNX reference implementation; nodes on
the data path must take exactly one data-path value (the one computed last) and
become standard PyTorch layers. A bias ``Add`` (and a ``Mul``/``Sub``/``Div`` by
a constant) is folded into the ``nn.Linear`` or ``nn.Conv2d`` just before it,
so ``MatMul`` + ``Add`` reads as one ``nn.Linear``.

The graph input is read as ``(batch, *input_shape)`` when it has two or more axes
(the batch axis fixed, symbolic such as ``"batch_size"``, or unnamed). An input
declared with one axis (VCAS: ``X`` of shape ``[4]``) has no batch axis: the
declared shape is one sample, and every axis, reshape and ``W @ X`` of the graph
is read per sample, so the module takes ``(N, 4)`` and maps each row as the file
maps its one vector. Operators that need a leading batch axis (Gemm, Conv,
pooling, BatchNormalization) are refused by name in such a graph.
"""

from __future__ import annotations

__all__ = ["convert_onnx", "load_onnx", "looks_like_onnx"]

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ...errors import NNInvError
from ..layers import Permute, Reshape
from . import _batch_norm, _Builder, _corrupt, _pair

#: Stand-in for a symbolic batch size while constant shape arithmetic is evaluated.
_BATCH = 7919


def _onnx() -> Any:
    try:
        import onnx
    except ImportError:  # pragma: no cover - onnx is a test dependency
        raise NNInvError("reading ONNX files needs onnx: pip install 'nninv[onnx]'") from None
    return onnx


def looks_like_onnx(path: Path) -> bool:
    """Whether ``path`` parses as an ONNX model with a graph (used when the suffix is unknown)."""
    try:
        onnx = _onnx()
        model = onnx.ModelProto.FromString(path.read_bytes())
    except Exception:  # any parse failure means "not ONNX"
        return False
    return model.ir_version > 0 and len(model.graph.node) > 0


def load_onnx(path: Path) -> nn.Sequential:
    """Load and check an ONNX file, then translate it with :func:`convert_onnx`."""
    onnx = _onnx()
    try:
        model = onnx.load(str(path))
    except Exception as e:  # protobuf raises DecodeError, onnx OSError, ...
        raise _corrupt(path, "ONNX", f"{type(e).__name__}: {e}") from None
    if model.ir_version <= 0 or not model.HasField("graph"):
        raise _corrupt(path, "ONNX", "no graph in the model")
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else "invalid model"
        raise NNInvError(
            f"'{path}' is not a valid ONNX model (the ONNX checker says: {first}): the file "
            f"is corrupt or truncated, or its exporter wrote an invalid graph"
        ) from None
    return convert_onnx(model, str(path))


class _Graph:
    """Walk of an ONNX graph: constants, the data path, and the module builder."""

    def __init__(self, model: Any, source: str) -> None:
        onnx = _onnx()
        from onnx import numpy_helper

        self.onnx = onnx
        self.source = source
        self.model = model
        g = model.graph
        self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)
        self.consts: dict[str, np.ndarray] = {
            t.name: numpy_helper.to_array(t) for t in g.initializer
        }
        inputs = [v for v in g.input if v.name not in self.consts]
        if len(inputs) != 1:
            raise NNInvError(
                f"'{source}': the ONNX graph has {len(inputs)} inputs "
                f"({', '.join(v.name for v in inputs)}); nninv reads models with one input"
            )
        if len(g.output) != 1:
            raise NNInvError(
                f"'{source}': the ONNX graph has {len(g.output)} outputs; nninv reads "
                f"models with one output"
            )
        x = inputs[0]
        dims = x.type.tensor_type.shape.dim
        if not x.type.tensor_type.HasField("shape") or len(dims) < 1:
            raise NNInvError(
                f"'{source}': the ONNX input '{x.name}' declares no shape (or a scalar); "
                f"nninv needs a fixed input shape"
            )
        shape = [d.dim_value if d.HasField("dim_value") else None for d in dims]
        #: Whether the declared input has a leading batch axis (see the module docstring).
        self.batched = len(dims) >= 2
        sample = shape[1:] if self.batched else shape
        if any(s is None or s <= 0 for s in sample):
            raise NNInvError(
                f"'{source}': the ONNX input '{x.name}' has shape "
                f"{[d.dim_param or d.dim_value for d in dims]}; nninv needs every "
                f"dimension but the batch fixed"
            )
        self.input_name = x.name
        self.declared = [d.dim_param or d.dim_value or "?" for d in dims]
        self.batch = (shape[0] or _BATCH) if self.batched else 0
        self.b = _Builder(tuple(int(s or 0) for s in sample))
        self.head = x.name
        self.shapes: dict[str, tuple[int, ...]] = {x.name: self.b.shape}
        self.fusable: str | None = None  # value computed by the last Linear/Conv2d
        self.output = g.output[0].name
        self.uses: dict[str, int] = {}
        for n in g.node:
            for name in n.input:
                self.uses[name] = self.uses.get(name, 0) + 1
        for v in g.output:
            self.uses[v.name] = self.uses.get(v.name, 0) + 1

    # ------------------------------------------------------------------ helpers

    def full_shape(self) -> tuple[int, ...]:
        """The shape the graph sees: with the batch axis, or one sample if it has none."""
        return (self.batch, *self.b.shape) if self.batched else self.b.shape

    def fold(self, node: Any) -> None:
        """Evaluate a node whose inputs are all constant."""
        from onnx import helper, numpy_helper
        from onnx.reference import ReferenceEvaluator

        names = [n for n in node.input if n]
        graph = helper.make_graph(
            [node],
            "fold",
            [],
            [helper.make_empty_tensor_value_info(o) for o in node.output if o],
            initializer=[numpy_helper.from_array(np.asarray(self.consts[n]), n) for n in names],
        )
        model = helper.make_model(graph, opset_imports=list(self.model.opset_import))
        model.ir_version = self.model.ir_version
        outs = ReferenceEvaluator(model).run(None, {})
        for name, value in zip([o for o in node.output if o], outs):
            self.consts[name] = np.asarray(value)


class _Node:
    """One data-path node being translated, with its error context."""

    def __init__(self, g: _Graph, index: int, node: Any) -> None:
        from onnx import helper

        self.g = g
        self.index = index
        self.node = node
        self.op = node.op_type
        self.name = node.name or f"{node.op_type}_{index}"
        self.attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        for a in node.attribute:
            if a.type == a.FLOAT:
                # The shortest decimal that is the same float32 (0.1, not 0.10000000149).
                self.attrs[a.name] = float(str(np.float32(a.f)))

    @property
    def label(self) -> str:
        return f"ONNX node {self.index} '{self.name}' ({self.op})"

    def error(self, msg: str) -> NNInvError:
        return NNInvError(f"'{self.g.source}': {self.label}: {msg}")

    def const(self, i: int, what: str) -> np.ndarray | None:
        """Input ``i`` as a constant array, None if absent; an error if on the data path."""
        if i >= len(self.node.input) or not self.node.input[i]:
            return None
        name = self.node.input[i]
        if name not in self.g.consts:
            raise self.error(f"the {what} (input {i}, '{name}') must be a constant")
        return self.g.consts[name]

    def ints(self, key: str, default: Any) -> tuple[int, ...]:
        return tuple(int(v) for v in self.attrs.get(key, default))

    def add(self, module: nn.Module, suffix: str = "") -> None:
        self.g.b.add(self.name + suffix, module, self.label)
        self.g.fusable = None


def _t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(a, dtype=np.float32, copy=True))


def _gemm(n: _Node) -> None:
    if n.attrs.get("transA", 0):
        raise n.error("transA=1 transposes the batch dimension away")
    if len(n.g.b.shape) != 1:
        raise n.error(f"expects a (batch, features) input, got (batch, {n.g.b.shape})")
    B = n.const(1, "weight")
    C = n.const(2, "bias")
    assert B is not None
    W = B.T if n.attrs.get("transB", 0) else B
    k = n.g.b.shape[0]
    if W.ndim != 2 or W.shape[0] != k:
        raise n.error(f"weight of shape {B.shape} does not fit an input of {k} features")
    m = W.shape[1]
    alpha, beta = float(n.attrs.get("alpha", 1.0)), float(n.attrs.get("beta", 1.0))
    lin = nn.Linear(k, m)
    with torch.no_grad():
        lin.weight.copy_(_t(alpha * W.T if alpha != 1.0 else W.T))
        lin.bias.zero_()
        if C is not None:
            lin.bias.copy_(_t(beta * _per_last(n, C, m, "bias")))
    n.add(lin)
    n.g.fusable = n.node.output[0]


def _per_last(n: _Node, c: np.ndarray, m: int, what: str) -> np.ndarray:
    try:
        return np.broadcast_to(c, (1, m)).reshape(m) if c.ndim <= 2 else _fail(n, c, what)
    except ValueError:
        return _fail(n, c, what)


def _fail(n: _Node, c: np.ndarray, what: str) -> np.ndarray:
    raise n.error(f"{what} of shape {c.shape} does not broadcast over the features")


def _matmul(n: _Node) -> None:
    """``X @ W`` on the last axis, ``W @ X`` on the one before (or on a 1-D sample)."""
    g = n.g
    shape = g.b.shape
    if n.node.input[0] == g.head:
        W = n.const(1, "weight")
        assert W is not None
        k = shape[-1] if shape else 0
        if W.ndim not in (1, 2) or W.shape[0] != k:
            raise n.error(f"weight of shape {W.shape} does not fit an input of shape {shape}")
        lin = nn.Linear(k, W.shape[1] if W.ndim == 2 else 1)
        with torch.no_grad():
            lin.weight.copy_(_t(W.T if W.ndim == 2 else W[None, :]))
            lin.bias.zero_()
        n.add(lin)
        if W.ndim == 1:  # a vector contracts the last axis away
            n.add(Reshape(shape[:-1]), "_squeeze")
            return
        g.fusable = n.node.output[0]
        return
    W = n.const(0, "weight")
    assert W is not None
    if W.ndim != 2:
        raise n.error(f"constant @ input needs a 2-D constant, got shape {W.shape}")
    if len(shape) == 1 and not g.batched:
        # One declared vector x: W @ x is x @ W.T for every row of the batch.
        if W.shape[1] != shape[0]:
            raise n.error(f"weight of shape {W.shape} does not fit an input of shape {shape}")
        lin = nn.Linear(shape[0], W.shape[0])
        with torch.no_grad():
            lin.weight.copy_(_t(W))
            lin.bias.zero_()
        n.add(lin)
        g.fusable = n.node.output[0]
        return
    if len(shape) < 2 or W.shape[1] != shape[-2]:
        raise n.error(
            f"constant of shape {W.shape} @ input of shape {g.full_shape()} does not act "
            f"on one axis of every sample"
        )
    swap = (*range(len(shape) - 2), len(shape) - 1, len(shape) - 2)
    lin = nn.Linear(W.shape[1], W.shape[0])
    with torch.no_grad():
        lin.weight.copy_(_t(W))
        lin.bias.zero_()
    n.add(Permute(swap), "_swap")
    n.add(lin)
    n.add(Permute(swap), "_unswap")


def _elementwise(n: _Node) -> None:
    """``x + c``, ``x - c``, ``c - x``, ``x * c``, ``x / c`` as an affine map."""
    g = n.g
    first = n.node.input[0] == g.head
    c = n.const(1 if first else 0, "other operand")
    assert c is not None
    c = np.asarray(c, dtype=np.float64)
    full = g.full_shape()
    lead = (1,) if g.batched else ()
    try:
        ok = np.broadcast_shapes((*lead, *g.b.shape), c.shape) == (*lead, *g.b.shape)
    except ValueError:
        ok = False
    if not ok:
        raise n.error(f"constant of shape {c.shape} changes the shape {full} of the input")
    cb = np.broadcast_to(c, (1, *g.b.shape))[0]  # c fits (*lead, *shape), so also this
    one, zero = np.ones_like(cb), np.zeros_like(cb)
    if n.op == "Add":
        scale, shift = one, cb
    elif n.op == "Sub":
        scale, shift = (one, -cb) if first else (-one, cb)
    elif n.op == "Mul":
        scale, shift = cb, zero
    elif first:
        scale, shift = 1.0 / cb, zero
    else:
        raise n.error("constant / input is not affine")
    rank = len(g.b.shape)
    last = g.b.last

    def varies_only(axis: int) -> np.ndarray | None:
        """The per-index vector along ``axis`` if scale and shift vary along no other axis."""
        if rank == 0:
            return None
        out = []
        for a in (scale, shift):
            v = np.moveaxis(a, axis, -1).reshape(-1, a.shape[axis])
            if not np.all(v == v[:1]):
                return None
            out.append(v[0])
        return np.stack(out)

    per_feature = varies_only(rank - 1)
    per_channel = varies_only(0) if rank == 3 else None
    if g.fusable == g.head and isinstance(last, nn.Linear) and per_feature is not None:
        s, t = per_feature
        with torch.no_grad():
            last.weight.mul_(_t(s)[:, None])
            last.bias.mul_(_t(s)).add_(_t(t))
        g.fusable = n.node.output[0]
        return
    if g.fusable == g.head and isinstance(last, nn.Conv2d) and per_channel is not None:
        s, t = per_channel
        with torch.no_grad():
            last.weight.mul_(_t(s)[:, None, None, None])
            if last.bias is None:
                last.bias = nn.Parameter(torch.zeros(last.out_channels))
            last.bias.mul_(_t(s)).add_(_t(t))
        g.fusable = n.node.output[0]
        return
    module: nn.Linear | nn.Conv2d
    if per_feature is not None:
        s, t = per_feature
        module = nn.Linear(len(s), len(s))
        weight = torch.diag(_t(s))
    elif per_channel is not None:
        s, t = per_channel
        module = nn.Conv2d(len(s), len(s), 1)
        weight = torch.diag(_t(s))[:, :, None, None]
    else:
        raise n.error(
            f"a constant of shape {c.shape} that varies over several axes of the input "
            f"{full} has no standard PyTorch layer"
        )
    assert module.bias is not None
    with torch.no_grad():
        module.weight.copy_(weight)
        module.bias.copy_(_t(t))
    n.add(module)
    g.fusable = n.node.output[0]


def _pads(
    n: _Node, spatial: tuple[int, ...], k: tuple[int, ...], s: tuple[int, ...], d: tuple[int, ...]
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(begin, end) padding per spatial axis, resolving ``auto_pad``."""
    auto = n.attrs.get("auto_pad", b"NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else str(auto)
    r = len(spatial)
    if auto in ("NOTSET", ""):
        p = n.ints("pads", [0] * (2 * r))
        return p[:r], p[r:]
    if auto == "VALID":
        return (0,) * r, (0,) * r
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        begin, end = [], []
        for size, ki, si, di in zip(spatial, k, s, d):
            total = max((math.ceil(size / si) - 1) * si + (ki - 1) * di + 1 - size, 0)
            small, big = total // 2, total - total // 2
            begin.append(small if auto == "SAME_UPPER" else big)
            end.append(big if auto == "SAME_UPPER" else small)
        return tuple(begin), tuple(end)
    raise n.error(f"auto_pad={auto!r} is not supported")


def _spatial(n: _Node) -> tuple[int, int, int]:
    if len(n.g.b.shape) != 3:
        raise n.error(f"only 2D (N, C, H, W) inputs are supported, got (N, {n.g.b.shape})")
    c, h, w = n.g.b.shape
    return c, h, w


def _conv(n: _Node) -> None:
    W = n.const(1, "weight")
    bias = n.const(2, "bias")
    assert W is not None
    if W.ndim != 4:
        raise n.error(f"only 2D convolutions are supported (weight shape {W.shape})")
    c, h, w = _spatial(n)
    groups = int(n.attrs.get("group", 1))
    k = tuple(W.shape[2:])
    s, d = n.ints("strides", (1, 1)), n.ints("dilations", (1, 1))
    begin, end = _pads(n, (h, w), k, s, d)
    if begin != end:
        n.add(nn.ZeroPad2d((begin[1], end[1], begin[0], end[0])), "_pad")
        begin = (0, 0)
    conv = nn.Conv2d(
        c, W.shape[0], _pair(k), _pair(s), _pair(begin), _pair(d), groups, bias=bias is not None
    )
    if tuple(conv.weight.shape) != W.shape:
        raise n.error(f"weight shape {W.shape} does not fit {c} input channels")
    with torch.no_grad():
        conv.weight.copy_(_t(W))
        if bias is not None:
            assert conv.bias is not None
            conv.bias.copy_(_t(bias))
    n.add(conv)
    n.g.fusable = n.node.output[0]


def _pool(n: _Node) -> None:
    _, h, w = _spatial(n)
    k = n.ints("kernel_shape", ())
    s = n.ints("strides", (1,) * len(k))
    d = n.ints("dilations", (1,) * len(k))
    is_max = n.op == "MaxPool"
    if len(k) != 2:
        raise n.error(f"only 2D pooling is supported (kernel {k})")
    if not is_max and d != (1, 1):
        raise n.error(f"dilated average pooling (dilations {d}) is not supported")
    begin, end = _pads(n, (h, w), k, s, d)
    ceil = bool(n.attrs.get("ceil_mode", 0))
    include = bool(n.attrs.get("count_include_pad", 0))
    # The ONNX output size; PyTorch must give the same windows.
    want = []
    for size, ki, si, di, b, e in zip((h, w), k, s, d, begin, end):
        span = (size + b + e - ((ki - 1) * di + 1)) / si
        want.append((math.ceil(span) if ceil else math.floor(span)) + 1)
    uneven = begin != end
    if uneven and any(e < b for b, e in zip(begin, end)):
        raise n.error(f"pads {begin + end} pad more before than after")
    torch_ceil = ceil or uneven
    if is_max:
        module: nn.Module = nn.MaxPool2d(k, s, begin, d, ceil_mode=torch_ceil)
    else:
        if include and (uneven or ceil):
            raise n.error(
                "count_include_pad=1 with uneven padding or ceil_mode counts padding "
                "PyTorch does not add; no exact PyTorch layer"
            )
        module = nn.AvgPool2d(
            _pair(k), _pair(s), _pair(begin), ceil_mode=torch_ceil, count_include_pad=include
        )
    try:
        with torch.no_grad():
            got = tuple(module(torch.zeros(1, 1, h, w)).shape[2:])
    except RuntimeError as e:
        raise n.error(f"no PyTorch pooling matches it ({e})") from None
    if got != tuple(want) or any(2 * b > ki for b, ki in zip(begin, k)):
        raise n.error(
            f"pooling {h}x{w} with kernel {k}, strides {s}, pads {begin + end} gives "
            f"{tuple(want)} in ONNX but {got} in PyTorch"
        )
    n.add(module)


def _global_pool(n: _Node) -> None:
    _, h, w = _spatial(n)
    n.add(nn.MaxPool2d((h, w)) if n.op == "GlobalMaxPool" else nn.AvgPool2d((h, w)))


def _batchnorm_node(n: _Node) -> None:
    if n.attrs.get("training_mode", 0):
        raise n.error("training_mode=1 normalises with batch statistics")
    if any(o and n.g.uses.get(o, 0) for o in n.node.output[1:]):
        raise n.error("the running-statistics outputs are used")
    shape = n.g.b.shape
    if not 1 <= len(shape) <= 3:
        raise n.error(f"input of shape (N, {shape}) is not supported")
    arrays = [n.const(i, what) for i, what in ((1, "scale"), (2, "B"), (3, "mean"), (4, "var"))]
    c = shape[0]
    found = [a for a in arrays if a is not None and a.shape == (c,)]
    if len(found) != len(arrays):
        raise n.error(f"scale, B, mean and var must have shape ({c},)")
    scale, b, mean, var = (_t(a) for a in found)
    eps = float(n.attrs.get("epsilon", 1e-5))
    bn = _batch_norm(scale, b, mean, var, eps, len(shape) == 3)
    n.add(bn)


def _flatten(n: _Node) -> None:
    if not n.g.batched:
        shape = n.g.b.shape
        axis = int(n.attrs.get("axis", 1)) % max(len(shape), 1)
        _reshape_to(n, (math.prod(shape[:axis]), math.prod(shape[axis:])))
        return
    rank = len(n.g.b.shape) + 1
    axis = int(n.attrs.get("axis", 1))
    if axis % rank != 1 and not (rank == 1 and axis in (0, 1)):
        raise n.error(f"axis={axis} merges the batch dimension with others")
    n.add(nn.Flatten())


def _reshape_to(n: _Node, out: tuple[int, ...]) -> None:
    if not n.g.batched:
        n.add(Reshape(out))
        return
    if not out or out[0] != n.g.batch:
        raise n.error(
            f"reshapes {n.g.full_shape()} to {out}, which does not keep the batch dimension first"
        )
    n.add(Reshape(out[1:]))


def _reshape(n: _Node) -> None:
    const = n.const(1, "shape")
    assert const is not None
    full = n.g.full_shape()
    target = [int(t) for t in const]
    if not n.attrs.get("allowzero", 0):
        target = [full[i] if t == 0 and i < len(full) else t for i, t in enumerate(target)]
    try:
        out = np.empty(full, dtype=np.uint8).reshape(target).shape
    except ValueError as e:
        raise n.error(f"cannot reshape {full} to {target} ({e})") from None
    _reshape_to(n, tuple(out))


def _squeeze(n: _Node) -> None:
    const = n.const(1, "axes") if len(n.node.input) > 1 else None
    axes = tuple(int(a) for a in (const if const is not None else n.attrs.get("axes", ())))
    dummy = np.empty(n.g.full_shape(), dtype=np.uint8)
    try:
        if n.op == "Squeeze":
            out = np.squeeze(dummy, axis=axes or None).shape
        else:
            out = np.expand_dims(dummy, axes).shape
    except (ValueError, np.exceptions.AxisError) as e:
        raise n.error(f"axes {axes} do not fit the input {dummy.shape} ({e})") from None
    if n.g.batched and 0 in [a % (len(out) if n.op == "Unsqueeze" else dummy.ndim) for a in axes]:
        raise n.error(f"axes {axes} touch the batch dimension")
    _reshape_to(n, tuple(out))


def _transpose(n: _Node) -> None:
    rank = len(n.g.full_shape())
    perm = n.ints("perm", range(rank - 1, -1, -1))
    if not n.g.batched:
        n.add(Permute(perm))
        return
    if perm[0] != 0:
        raise n.error(f"perm {perm} moves the batch dimension")
    n.add(Permute(tuple(p - 1 for p in perm[1:])))


def _softmax(n: _Node) -> None:
    rank = len(n.g.full_shape())
    axis = int(n.attrs.get("axis", -1 if n.g.opset >= 13 else 1)) % rank
    cls = nn.Softmax if n.op == "Softmax" else nn.LogSoftmax
    if not n.g.batched:
        if n.g.opset < 13 and axis != rank - 1:
            raise n.error(f"axis={axis} before opset 13 mixes axes of a {rank}-d sample")
        n.add(cls(dim=axis + 1))
        return
    if axis == 0:
        raise n.error("softmax over the batch dimension")
    if n.g.opset >= 13 or axis == rank - 1:
        n.add(cls(dim=axis))
    elif axis == 1:
        # Before opset 13 the input is flattened to 2D from ``axis`` on.
        shape = n.g.b.shape
        n.add(nn.Flatten(), "_flatten")
        n.add(cls(dim=1))
        n.add(Reshape(shape), "_reshape")
    else:
        raise n.error(f"axis={axis} before opset 13 mixes axes of a {rank}-d input")


def _clip(n: _Node) -> None:
    if n.g.opset >= 11:
        bounds = [n.const(1, "min"), n.const(2, "max")]
    else:
        bounds = [n.attrs.get("min"), n.attrs.get("max")]
    lo, hi = (None if v is None else float(np.asarray(v)) for v in bounds)
    if lo == 0.0 and hi is None:
        n.add(nn.ReLU())
    elif lo == 0.0 and hi == 6.0:
        n.add(nn.ReLU6())
    elif lo is not None and hi is not None:
        n.add(nn.Hardtanh(lo, hi))
    else:
        raise n.error(f"Clip(min={lo}, max={hi}) is not supported")


def _cast(n: _Node) -> None:
    from onnx import helper

    to = np.dtype(helper.tensor_dtype_to_np_dtype(int(n.attrs["to"])))
    if to.kind != "f":
        raise n.error(f"casting the data to {to} is not supported")


def _selu(n: _Node) -> None:
    alpha, gamma = (
        float(n.attrs.get("alpha", 1.67326319217681884765625)),
        float(n.attrs.get("gamma", 1.05070102214813232421875)),
    )
    if not (
        math.isclose(alpha, 1.6732632423543772, rel_tol=1e-6)
        and math.isclose(gamma, 1.0507009873554805, rel_tol=1e-6)
    ):
        raise n.error(f"Selu with alpha={alpha}, gamma={gamma} is not nn.SELU")
    n.add(nn.SELU())


def _simple(factory: Callable[[_Node], nn.Module]) -> Callable[[_Node], None]:
    def handler(n: _Node) -> None:
        n.add(factory(n))

    return handler


def _passthrough(n: _Node) -> None:
    if any(o and n.g.uses.get(o, 0) for o in n.node.output[1:]):
        raise n.error("its mask output is used")


def _gelu(n: _Node) -> nn.Module:
    approx = n.attrs.get("approximate", b"none")
    return nn.GELU(approx.decode() if isinstance(approx, bytes) else str(approx))


_OPS: dict[str, Callable[[_Node], None]] = {
    "Gemm": _gemm,
    "MatMul": _matmul,
    "Add": _elementwise,
    "Sub": _elementwise,
    "Mul": _elementwise,
    "Div": _elementwise,
    "Conv": _conv,
    "MaxPool": _pool,
    "AveragePool": _pool,
    "GlobalAveragePool": _global_pool,
    "GlobalMaxPool": _global_pool,
    "BatchNormalization": _batchnorm_node,
    "Flatten": _flatten,
    "Reshape": _reshape,
    "Squeeze": _squeeze,
    "Unsqueeze": _squeeze,
    "Transpose": _transpose,
    "Softmax": _softmax,
    "LogSoftmax": _softmax,
    "Relu": _simple(lambda n: nn.ReLU()),
    "Sigmoid": _simple(lambda n: nn.Sigmoid()),
    "Tanh": _simple(lambda n: nn.Tanh()),
    "LeakyRelu": _simple(lambda n: nn.LeakyReLU(float(n.attrs.get("alpha", 0.01)))),
    "Elu": _simple(lambda n: nn.ELU(float(n.attrs.get("alpha", 1.0)))),
    "Selu": _selu,
    "Softplus": _simple(lambda n: nn.Softplus()),
    "Softsign": _simple(lambda n: nn.Softsign()),
    "Gelu": _simple(_gelu),
    "HardSwish": _simple(lambda n: nn.Hardswish()),
    "Mish": _simple(lambda n: nn.Mish()),
    "Clip": _clip,
    "Identity": _passthrough,
    "Dropout": _passthrough,
    "Cast": _cast,
}


#: Operators whose ONNX meaning needs the (N, C, ...) or (N, K) layout.
_NEED_BATCH = frozenset(
    {
        "Gemm",
        "Conv",
        "MaxPool",
        "AveragePool",
        "GlobalAveragePool",
        "GlobalMaxPool",
        "BatchNormalization",
    }
)


def convert_onnx(model: Any, source: str = "<onnx>") -> nn.Sequential:
    """Translate an ``onnx.ModelProto`` whose graph is a chain into a ``nn.Sequential``.

    Parameters
    ----------
    model : onnx.ModelProto
        The model; its single graph input must have a static shape except for
        the batch dimension (fixed, symbolic or unnamed). An input declared with
        one axis is one sample without a batch axis (see the module docstring).
    source : str
        Where the model came from, for error messages.

    Returns
    -------
    torch.nn.Sequential
        Eval mode, float32, with ``input_shape`` (the graph input's shape
        without the batch dimension). A model without a batch axis takes
        ``(N, *declared_shape)``.

    Raises
    ------
    NNInvError
        For an operator without a translation (naming its type, node name and
        index), a graph that is not a chain, or shapes that do not fit.
    """
    g = _Graph(model, source)
    for index, node in enumerate(model.graph.node):
        inputs = [i for i in node.input if i]
        data_in = [i for i in inputs if i in g.shapes]
        if not data_in:
            try:
                g.fold(node)
            except Exception as e:  # the reference evaluator raises many types
                n = _Node(g, index, node)
                raise n.error(f"cannot evaluate this constant node ({e})") from None
            continue
        n = _Node(g, index, node)
        if node.op_type == "Shape":
            lead = (g.batch,) if g.batched else ()
            shape = np.asarray((*lead, *g.shapes[data_in[0]]), dtype=np.int64)
            start, end = n.attrs.get("start", 0), n.attrs.get("end", None)
            g.consts[node.output[0]] = shape[start:end]
            continue
        if node.op_type not in _OPS:
            raise n.error(
                f"operator {node.op_type} is not supported; supported operators: "
                f"{', '.join(sorted(_OPS))}, Shape and constant subgraphs"
            )
        if len(data_in) > 1 or data_in[0] != g.head:
            raise n.error(
                f"takes {', '.join(repr(i) for i in data_in)}, but the chain is at "
                f"{g.head!r}: the graph branches, and nninv reads only chains of layers"
            )
        if not g.batched and node.op_type in _NEED_BATCH:
            raise n.error(
                f"{node.op_type} needs a leading batch axis, but the graph input "
                f"'{g.input_name}' is declared as {g.declared}, one sample without one"
            )
        _OPS[node.op_type](n)
        g.head = node.output[0]
        g.shapes[g.head] = g.b.shape
    if g.head != g.output:
        raise NNInvError(
            f"'{source}': the graph output {g.output!r} is not the end of the chain "
            f"from the input (which ends at {g.head!r})"
        )
    return g.b.finish()

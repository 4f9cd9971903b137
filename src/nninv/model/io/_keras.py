"""Read Keras models (Keras 3 ``.keras`` archives and legacy HDF5) without Keras.

The architecture comes from the JSON config (``config.json`` in the archive, the
``model_config`` attribute of an HDF5 file) and the weights from HDF5 with
``h5py``. Keras 3 archives keep each layer's variables in
``layers/<snake_case class name>[_<n>]/vars/<i>`` in creation order (the group's
``vars`` attribute ``name`` gives the layer name); legacy HDF5 files keep them in
``model_weights/<layer name>/`` listed by the ``weight_names`` attribute (Keras 2
as ``dense/kernel:0``, Keras 3 as ``sequential/dense/kernel``). Keras tensors are
channels-last by default, so the translation tracks where each Keras axis sits
in the PyTorch tensor and inserts :class:`~nninv.model.layers.Permute` only where a
layer needs another layout (channels-first for ``nn.Conv2d``, Keras order again
before ``Flatten``, ``Reshape`` or ``Dense``).
"""

from __future__ import annotations

__all__ = ["convert_keras", "load_keras_h5", "load_keras_v3"]

import io
import json
import math
import re
import zipfile
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ...errors import NNInvError
from ..layers import Permute, Reshape
from . import _batch_norm, _Builder, _corrupt, _pair

#: Weights of one layer: (name or None, array) in the order Keras created them.
Weights = list[tuple[str | None, np.ndarray]]
WeightsFn = Callable[[int, str, str], Weights]


def _h5py() -> Any:
    try:
        import h5py
    except ImportError:  # pragma: no cover - h5py is a test dependency
        raise NNInvError("reading Keras files needs h5py: pip install 'nninv[keras]'") from None
    return h5py


def load_keras_v3(path: Path) -> nn.Sequential:
    """Load a Keras 3 ``.keras`` archive (zip of ``config.json`` and ``model.weights.h5``)."""
    h5py = _h5py()
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
            if "model.weights.h5" not in names:
                extra = (
                    " (sharded weights are not supported)"
                    if any(n.endswith(".json") and "weights" in n for n in names)
                    else ""
                )
                raise NNInvError(f"'{path}': the Keras archive has no model.weights.h5{extra}")
            config = json.loads(z.read("config.json"))
            blob = z.read("model.weights.h5")
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError) as e:
        if isinstance(e, NNInvError):
            raise
        raise _corrupt(path, "Keras archive", e) from None
    try:
        f = h5py.File(io.BytesIO(blob), "r")
    except OSError as e:
        raise _corrupt(path, "Keras archive (model.weights.h5)", e) from None
    with f:
        store = _V3Store(f, config, path)
        return _read(lambda: convert_keras(config, store.get, str(path)), path)


def load_keras_h5(path: Path) -> nn.Sequential:
    """Load a legacy Keras HDF5 model file (``model.save("m.h5")``)."""
    h5py = _h5py()
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise _corrupt(path, "HDF5", e) from None
    with f:
        if "model_config" not in f.attrs:
            if "layer_names" in f.attrs or "model_weights" not in f:
                raise NNInvError(
                    f"'{path}' holds Keras weights but no architecture (save_weights); "
                    f"save the whole model with model.save('model.keras') instead"
                )
            raise NNInvError(f"'{path}' is an HDF5 file without a Keras model_config")
        raw = f.attrs["model_config"]
        try:
            config = json.loads(raw.decode() if isinstance(raw, bytes) else str(raw))
        except ValueError as e:
            raise _corrupt(path, "Keras HDF5 (model_config)", e) from None
        if "model_weights" not in f:
            raise NNInvError(f"'{path}': the Keras HDF5 file has no model_weights group")
        store = _H5Store(f["model_weights"], path)
        return _read(lambda: convert_keras(config, store.get, str(path)), path)


def _read(fn: Callable[[], nn.Sequential], path: Path) -> nn.Sequential:
    # h5py reports a truncated file only when a dataset is read.
    try:
        return fn()
    except (OSError, KeyError) as e:
        raise _corrupt(path, "Keras", e) from None


class _V3Store:
    """Layer variables of a Keras 3 ``model.weights.h5``."""

    def __init__(self, f: Any, config: dict, path: Path) -> None:
        self.path = path
        group = f.get("layers")
        self.by_name: dict[str, Any] = {}
        self.by_key: dict[str, Any] = {}
        if group is None:
            return
        for key in group:
            g = group[key]
            self.by_key[key] = g
            name = g["vars"].attrs.get("name") if "vars" in g else None
            if isinstance(name, bytes):
                name = name.decode()
            if name is not None:
                self.by_name[str(name)] = g
        # Files from Keras versions that did not store names: Keras addresses each
        # layer by its snake_case class name, numbered in the order of model.layers.
        self.fallback: dict[str, str] = {}
        used: dict[str, int] = {}
        cfg = config.get("config", {})
        entries = cfg.get("layers", []) if isinstance(cfg, dict) else cfg
        sequential = config.get("class_name") == "Sequential"
        for entry in entries:
            cls = entry.get("class_name", "")
            if sequential and cls == "InputLayer":
                continue
            base = _snake_case(cls)
            key = base if base not in used else f"{base}_{used[base] + 1}"
            used[base] = used.get(base, -1) + 1
            self.fallback[_layer_name(entry)] = key

    def get(self, index: int, name: str, cls: str) -> Weights:
        g = self.by_name.get(name)
        if g is None:
            g = self.by_key.get(self.fallback.get(name, ""))
        if g is None or "vars" not in g:
            return []
        v = g["vars"]
        return [(None, np.asarray(v[k][()])) for k in sorted(v, key=int)]


class _H5Store:
    """Layer weights of a legacy Keras HDF5 file, by ``weight_names``."""

    def __init__(self, group: Any, path: Path) -> None:
        self.group = group
        self.path = path

    def get(self, index: int, name: str, cls: str) -> Weights:
        if name not in self.group:
            return []
        g = self.group[name]
        out: Weights = []
        for wn in g.attrs.get("weight_names", []):
            wn = wn.decode() if isinstance(wn, bytes) else str(wn)
            short = wn.rsplit("/", 1)[-1].split(":", 1)[0]
            out.append((short, np.asarray(g[wn][()])))
        return out


def _snake_case(name: str) -> str:
    name = re.sub(r"\W+", "", name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


def _layer_name(entry: dict) -> str:
    return str(entry.get("name") or entry.get("config", {}).get("name") or "")


def _model_layers(config: dict, path: Path | str) -> tuple[list[dict], tuple[int, ...] | None]:
    """The layer entries of a Sequential or a chain-shaped Functional model, in order."""
    cls = config.get("class_name")
    cfg = config.get("config", {})
    if cls == "Sequential":
        entries = cfg.get("layers", []) if isinstance(cfg, dict) else cfg
        return list(entries), _input_shape(config, list(entries))
    if cls in ("Functional", "Model"):
        return _functional_chain(cfg, path), _input_shape(config, cfg.get("layers", []))
    raise NNInvError(
        f"'{path}': the Keras model is a {cls}; only Sequential and Functional models "
        f"have a config nninv can read (subclassed models do not)"
    )


def _input_shape(config: dict, entries: list[dict]) -> tuple[int, ...] | None:
    candidates = []
    for entry in entries[:1]:
        c = entry.get("config", {})
        candidates += [c.get("batch_shape"), c.get("batch_input_shape")]
    cfg = config.get("config", {})
    if isinstance(cfg, dict):
        candidates.append(cfg.get("build_input_shape"))
    candidates.append((config.get("build_config") or {}).get("input_shape"))
    if entries:
        candidates.append((entries[0].get("build_config") or {}).get("input_shape"))
    for shape in candidates:
        if isinstance(shape, dict):  # Keras 2 TensorShape serialisation
            shape = shape.get("items")
        if isinstance(shape, list | tuple) and len(shape) >= 2:
            return tuple(shape[1:])
    return None


def _sources(obj: Any) -> list[str]:
    """Names of the layers whose outputs ``obj`` (an inbound node) consumes."""
    found: list[str] = []
    if isinstance(obj, dict):
        if obj.get("class_name") == "__keras_tensor__":
            found.append(str(obj["config"]["keras_history"][0]))
        else:
            for v in obj.values():
                found += _sources(v)
    elif isinstance(obj, list | tuple):
        # Keras 2 writes each inbound tensor as [layer_name, node_index, tensor_index, kwargs].
        if len(obj) >= 3 and isinstance(obj[0], str) and isinstance(obj[1], int):
            found.append(obj[0])
            if len(obj) > 3:
                found += _sources(obj[3])
        else:
            for v in obj:
                found += _sources(v)
    return found


def _endpoints(spec: Any) -> list[str]:
    if isinstance(spec, list) and spec and isinstance(spec[0], str):
        return [spec[0]]
    if isinstance(spec, dict):
        return [n for v in spec.values() for n in _endpoints(v)]
    return [n for s in spec or [] for n in _endpoints(s)]


def _functional_chain(cfg: dict, path: Path | str) -> list[dict]:
    entries = cfg.get("layers", [])
    by_name = {_layer_name(e): e for e in entries}
    inputs, outputs = _endpoints(cfg.get("input_layers")), _endpoints(cfg.get("output_layers"))
    if len(inputs) != 1 or len(outputs) != 1:
        raise NNInvError(
            f"'{path}': the Keras model has inputs {inputs} and outputs {outputs}; "
            f"nninv reads models with one input and one output"
        )
    parent: dict[str, str] = {}
    consumers: dict[str, list[str]] = {}
    for i, e in enumerate(entries):
        name, cls = _layer_name(e), e.get("class_name")
        nodes = e.get("inbound_nodes") or []
        if cls == "InputLayer":
            continue
        srcs = [_sources(n) for n in nodes]
        if len(nodes) != 1 or len(srcs[0]) != 1:
            how = (
                f"is called {len(nodes)} times"
                if len(nodes) != 1
                else (f"takes {len(srcs[0])} inputs ({', '.join(srcs[0])})")
            )
            raise NNInvError(
                f"'{path}': layer {i} '{name}' ({cls}) {how}; nninv reads only chains "
                f"of layers (each layer fed by the one before it)"
            )
        parent[name] = srcs[0][0]
        consumers.setdefault(srcs[0][0], []).append(name)
    for src, users in consumers.items():
        if len(users) > 1:
            raise NNInvError(
                f"'{path}': the output of layer '{src}' feeds {len(users)} layers "
                f"({', '.join(users)}); nninv reads only chains of layers"
            )
    chain = [outputs[0]]
    while chain[-1] in parent:
        chain.append(parent[chain[-1]])
        if len(chain) > len(entries):
            raise NNInvError(f"'{path}': the Keras model config has a cycle")
    if chain[-1] != inputs[0]:
        raise NNInvError(
            f"'{path}': the output '{outputs[0]}' does not depend on the input '{inputs[0]}'"
        )
    for e in entries:
        if _layer_name(e) not in chain:
            raise NNInvError(
                f"'{path}': layer '{_layer_name(e)}' ({e.get('class_name')}) is off the "
                f"path from input to output; nninv reads only chains of layers"
            )
    return [by_name[n] for n in reversed(chain)]


# --------------------------------------------------------------------------- state


class _State:
    """The PyTorch tensor so far and where each Keras axis (without batch) lives in it.

    ``perm[i]`` is the Keras axis held by PyTorch axis ``i``; the identity means
    the Keras layout.
    """

    def __init__(self, builder: _Builder) -> None:
        self.b = builder
        self.perm: tuple[int, ...] = tuple(range(len(builder.shape)))

    @property
    def rank(self) -> int:
        return len(self.b.shape)

    @property
    def keras_shape(self) -> tuple[int, ...]:
        shape = [0] * self.rank
        for i, k in enumerate(self.perm):
            shape[k] = self.b.shape[i]
        return tuple(shape)

    def add(self, name: str, module: nn.Module, label: str, *, perm: bool = False) -> None:
        """Append ``module``; it keeps the layout if ``perm``, else leaves Keras layout."""
        self.b.add(name, module, label)
        if not perm or len(self.perm) != self.rank:
            self.perm = tuple(range(self.rank))

    def to_keras(self, name: str, label: str) -> None:
        if self.perm != tuple(range(self.rank)):
            inv = tuple(self.perm.index(k) for k in range(self.rank))
            self.b.add(f"{name}_to_channels_last", Permute(inv), label)
            self.perm = tuple(range(self.rank))

    def to_channels_first(self, name: str, label: str) -> None:
        r = self.rank
        target = (r - 1, *range(r - 1))
        if self.perm == target:
            return
        self.to_keras(name, label)
        if r > 1:
            self.b.add(f"{name}_to_channels_first", Permute(target), label)
            self.perm = target


# --------------------------------------------------------------------------- layers


class _Layer:
    """One Keras layer being translated: its config, weights and error context."""

    def __init__(self, index: int, entry: dict, weights: Weights, state: _State) -> None:
        self.index = index
        self.cls = str(entry.get("class_name"))
        self.name = _layer_name(entry) or f"layer_{index}"
        self.cfg: dict = entry.get("config") or {}
        self.weights = weights
        self.s = state

    @property
    def label(self) -> str:
        return f"Keras layer {self.index} '{self.name}' ({self.cls})"

    def error(self, msg: str) -> NNInvError:
        return NNInvError(f"{self.label}: {msg}")

    def take(self, names: Sequence[str], present: Sequence[bool]) -> dict[str, torch.Tensor]:
        """The layer's weights by name; ``present`` flags which names Keras created."""
        wanted = [n for n, p in zip(names, present) if p]
        named = {n: w for n, w in self.weights if n is not None}
        if named and all(n in named for n in wanted):
            arrays = [named[n] for n in wanted]
        elif len(self.weights) == len(wanted):
            arrays = [w for _, w in self.weights]
        else:
            raise self.error(
                f"expected weights {wanted}, found {len(self.weights)} arrays "
                f"{[n for n, _ in self.weights]}"
            )
        return {n: torch.as_tensor(np.asarray(a, dtype=np.float32)) for n, a in zip(wanted, arrays)}

    def check(self, what: str, got: torch.Tensor, want: tuple[int, ...]) -> None:
        if tuple(got.shape) != want:
            raise self.error(f"{what} has shape {tuple(got.shape)}, expected {want}")

    def pair(self, key: str, default: Any = None) -> tuple[int, int]:
        v = self.cfg.get(key, default)
        if v is None:
            v = default
        if isinstance(v, int):
            return (v, v)
        return (int(v[0]), int(v[1]))

    def data_format(self) -> str:
        fmt = self.cfg.get("data_format") or "channels_last"
        if fmt not in ("channels_last", "channels_first"):
            raise self.error(f"data_format {fmt!r} is not supported")
        return fmt

    def to_spatial(self) -> None:
        """Bring the input to (C, H, W) for a 2D layer, from either data format."""
        if self.s.rank != 3:
            raise self.error(f"expects an image input (H, W, C), got shape {self.s.keras_shape}")
        if self.data_format() == "channels_last":
            self.s.to_channels_first(self.name, self.label)
        else:
            self.s.to_keras(self.name, self.label)

    def add(self, module: nn.Module, *, perm: bool = False, suffix: str = "") -> None:
        self.s.add(self.name + suffix, module, self.label, perm=perm)

    def activation(self, spec: Any = None) -> None:
        spec = self.cfg.get("activation", "linear") if spec is None else spec
        module = _activation_module(spec, self)
        if module is not None:
            tag = spec if isinstance(spec, str) else type(module).__name__.lower()
            self.add(module, perm=True, suffix=f"_{tag}")


def _same_padding(n: int, k: int, s: int, d: int = 1) -> tuple[int, int]:
    """TensorFlow/Keras 'same' padding (before, after) of one axis."""
    k_eff = (k - 1) * d + 1
    total = max((math.ceil(n / s) - 1) * s + k_eff - n, 0)
    return total // 2, total - total // 2


def _dense(L: _Layer) -> None:
    L.s.to_keras(L.name, L.label)
    n_in, units = L.s.b.shape[-1], int(L.cfg["units"])
    bias = L.cfg.get("use_bias", True)
    w = L.take(("kernel", "bias"), (True, bias))
    L.check("kernel", w["kernel"], (n_in, units))
    lin = nn.Linear(n_in, units, bias=bias)
    with torch.no_grad():
        lin.weight.copy_(w["kernel"].T)
        if bias:
            L.check("bias", w["bias"], (units,))
            lin.bias.copy_(w["bias"])
    L.add(lin)
    L.activation()


def _conv2d(L: _Layer) -> None:
    L.to_spatial()
    c, h, wd = L.s.b.shape
    filters, (kh, kw) = int(L.cfg["filters"]), L.pair("kernel_size")
    stride, dil = L.pair("strides", 1), L.pair("dilation_rate", 1)
    groups = int(L.cfg.get("groups") or 1)
    bias = L.cfg.get("use_bias", True)
    w = L.take(("kernel", "bias"), (True, bias))
    L.check("kernel", w["kernel"], (kh, kw, c // groups, filters))
    padding = L.cfg.get("padding", "valid")
    if padding == "valid":
        pad = (0, 0)
    elif padding == "same":
        (t, b), (le, r) = (
            _same_padding(h, kh, stride[0], dil[0]),
            _same_padding(wd, kw, stride[1], dil[1]),
        )
        if (t, le) == (b, r):
            pad = (t, le)
        else:
            L.add(nn.ZeroPad2d((le, r, t, b)), perm=True, suffix="_pad")
            pad = (0, 0)
    else:
        raise L.error(f"padding {padding!r} is not supported")
    conv = nn.Conv2d(c, filters, (kh, kw), stride, pad, dil, groups, bias=bias)
    with torch.no_grad():
        conv.weight.copy_(w["kernel"].permute(3, 2, 0, 1))
        if bias:
            L.check("bias", w["bias"], (filters,))
            assert conv.bias is not None
            conv.bias.copy_(w["bias"])
    L.add(conv, perm=True)
    L.activation()


def _pool2d(L: _Layer) -> None:
    L.to_spatial()
    _, h, wd = L.s.b.shape
    k = L.pair("pool_size", 2)
    s = L.pair("strides", k)
    is_max = "Max" in L.cls
    padding = L.cfg.get("padding", "valid")
    if padding == "valid":
        module: nn.Module = nn.MaxPool2d(k, s) if is_max else nn.AvgPool2d(k, s)
    elif padding == "same":
        pads = [_same_padding(n, ki, si) for n, ki, si in zip((h, wd), k, s)]
        before = tuple(p[0] for p in pads)
        ceil = any(p[0] != p[1] for p in pads)
        if not is_max and ceil:
            # Keras backends disagree on asymmetric average pooling (TensorFlow
            # averages the inside cells, the torch backend repeats the edge).
            raise L.error(
                f"'same' average pooling of a {h}x{wd} input with pool {k} and "
                f"strides {s} pads unevenly; no PyTorch layer computes it exactly"
            )
        if is_max:
            module = nn.MaxPool2d(k, s, before, ceil_mode=ceil)
        else:
            module = nn.AvgPool2d(k, s, _pair(before), count_include_pad=False)
        want = tuple(math.ceil(n / si) for n, si in zip((h, wd), s))
        if any(2 * b > ki for b, ki in zip(before, k)) or _pool_out(module, (h, wd)) != want:
            raise L.error(
                f"'same' pooling of a {h}x{wd} input with pool {k} and strides {s} "
                f"has no exact PyTorch equivalent"
            )
    else:
        raise L.error(f"padding {padding!r} is not supported")
    L.add(module, perm=True)


def _pool_out(module: nn.Module, hw: tuple[int, int]) -> tuple[int, ...]:
    with torch.no_grad():
        return tuple(module(torch.zeros(1, 1, *hw)).shape[2:])


def _global_pool2d(L: _Layer) -> None:
    L.to_spatial()
    _, h, wd = L.s.b.shape
    L.add(nn.MaxPool2d((h, wd)) if "Max" in L.cls else nn.AvgPool2d((h, wd)), perm=True)
    if not L.cfg.get("keepdims", False):
        L.add(nn.Flatten(), suffix="_flatten")


def _zero_padding2d(L: _Layer) -> None:
    L.to_spatial()
    p = L.cfg.get("padding", 1)
    if isinstance(p, int):
        (t, b), (le, r) = (p, p), (p, p)
    elif isinstance(p[0], int):
        (t, b), (le, r) = (p[0], p[0]), (p[1], p[1])
    else:
        (t, b), (le, r) = p
    L.add(nn.ZeroPad2d((le, r, t, b)), perm=True)


def _flatten(L: _Layer) -> None:
    L.s.to_keras(L.name, L.label)
    if L.data_format() == "channels_first" and L.s.rank > 1:
        # Keras moves the channels last before flattening a channels-first tensor.
        L.add(Permute((*range(1, L.s.rank), 0)), suffix="_to_channels_last")
    L.add(nn.Flatten())


def _reshape(L: _Layer) -> None:
    L.s.to_keras(L.name, L.label)
    L.add(Reshape(tuple(L.cfg["target_shape"])))


def _permute(L: _Layer) -> None:
    L.s.to_keras(L.name, L.label)
    L.add(Permute(tuple(int(d) - 1 for d in L.cfg["dims"])))


def _batchnorm_layer(L: _Layer) -> None:
    axis = L.cfg.get("axis", -1)
    if isinstance(axis, list):
        if len(axis) != 1:
            raise L.error(f"normalising over several axes {axis} is not supported")
        axis = axis[0]
    r = L.s.rank
    k = (axis % (r + 1)) - 1
    if not 0 <= k < r or r > 3:
        raise L.error(f"axis {axis} of a {r + 1}-d input is not supported")
    if L.s.perm.index(k) != 0:
        if k == r - 1:
            L.s.to_channels_first(L.name, L.label)
        elif k == 0:
            L.s.to_keras(L.name, L.label)
        else:
            raise L.error(f"axis {axis} of a {r + 1}-d input is not supported")
    c = L.s.b.shape[0]
    center, scale = L.cfg.get("center", True), L.cfg.get("scale", True)
    names = ("gamma", "beta", "moving_mean", "moving_variance")
    w = L.take(names, (scale, center, True, True))
    for n, t in w.items():
        L.check(n, t, (c,))
    eps = float(L.cfg.get("epsilon", 1e-3))
    gamma, beta = w.get("gamma", torch.ones(c)), w.get("beta", torch.zeros(c))
    bn = _batch_norm(gamma, beta, w["moving_mean"], w["moving_variance"], eps, r == 3)
    L.add(bn, perm=True)


def _dropout(L: _Layer) -> None:
    L.add(nn.Dropout(float(L.cfg.get("rate", 0.0))), perm=True)


def _identity(L: _Layer) -> None:
    L.add(nn.Identity(), perm=True)


def _activation_layer(L: _Layer) -> None:
    module = _activation_module({"class_name": L.cls, "config": L.cfg}, L)
    L.add(module if module is not None else nn.Identity(), perm=True)


_SIMPLE_ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "sigmoid": nn.Sigmoid,
    "tanh": nn.Tanh,
    "leaky_relu": lambda: nn.LeakyReLU(0.2),
    "elu": nn.ELU,
    "selu": nn.SELU,
    "softplus": nn.Softplus,
    "softsign": nn.Softsign,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "swish": nn.SiLU,
    "mish": nn.Mish,
    "relu6": nn.ReLU6,
    "hard_silu": nn.Hardswish,
    "hard_swish": nn.Hardswish,
}


def _softmax_dim(L: _Layer, axis: Any) -> int:
    if not isinstance(axis, int):
        raise L.error(f"softmax over axes {axis} is not supported")
    r = L.s.rank
    k = (axis % (r + 1)) - 1
    if not 0 <= k < r:
        raise L.error(f"softmax axis {axis} of a {r + 1}-d input is not supported")
    return 1 + L.s.perm.index(k)


def _activation_module(spec: Any, L: _Layer) -> nn.Module | None:
    """The module for a Keras activation given by name or as a serialised layer."""
    if spec is None:
        return None
    if isinstance(spec, dict):
        cls, cfg = spec.get("class_name"), spec.get("config") or {}
        if isinstance(cfg, str):
            return _activation_module(cfg, L)
        if cls == "Activation":
            return _activation_module(cfg.get("activation"), L)
        if cls == "ReLU":
            slope, top = float(cfg.get("negative_slope") or 0.0), cfg.get("max_value")
            if float(cfg.get("threshold") or 0.0) != 0.0 or (top is not None and slope != 0.0):
                raise L.error(f"ReLU with threshold/max_value {cfg} is not supported")
            if top is None:
                return nn.ReLU() if slope == 0.0 else nn.LeakyReLU(slope)
            if float(top) == 6.0:
                return nn.ReLU6()
            raise L.error(f"ReLU with max_value={top} is not supported")
        if cls == "LeakyReLU":
            slope = cfg.get("negative_slope", cfg.get("alpha", 0.3))
            return nn.LeakyReLU(float(slope))
        if cls == "ELU":
            return nn.ELU(float(cfg.get("alpha", 1.0)))
        if cls == "Softmax":
            return nn.Softmax(dim=_softmax_dim(L, cfg.get("axis", -1)))
        raise L.error(f"activation {cls} is not supported")
    name = str(spec)
    if name == "linear":
        return None
    if name == "softmax":
        return nn.Softmax(dim=_softmax_dim(L, -1))
    if name == "log_softmax":
        return nn.LogSoftmax(dim=_softmax_dim(L, -1))
    if name in _SIMPLE_ACTIVATIONS:
        return _SIMPLE_ACTIVATIONS[name]()
    raise L.error(
        f"activation {name!r} is not supported (supported: linear, softmax, log_softmax, "
        f"{', '.join(_SIMPLE_ACTIVATIONS)})"
    )


_LAYERS: dict[str, Callable[[_Layer], None]] = {
    "Dense": _dense,
    "Conv2D": _conv2d,
    "Convolution2D": _conv2d,
    "MaxPooling2D": _pool2d,
    "MaxPool2D": _pool2d,
    "AveragePooling2D": _pool2d,
    "AvgPool2D": _pool2d,
    "GlobalAveragePooling2D": _global_pool2d,
    "GlobalAvgPool2D": _global_pool2d,
    "GlobalMaxPooling2D": _global_pool2d,
    "GlobalMaxPool2D": _global_pool2d,
    "ZeroPadding2D": _zero_padding2d,
    "Flatten": _flatten,
    "Reshape": _reshape,
    "Permute": _permute,
    "BatchNormalization": _batchnorm_layer,
    "Dropout": _dropout,
    "SpatialDropout1D": _dropout,
    "SpatialDropout2D": _dropout,
    "AlphaDropout": _identity,
    "GaussianDropout": _identity,
    "GaussianNoise": _identity,
    "ActivityRegularization": _identity,
    "Identity": _identity,
    "Activation": _activation_layer,
    "ReLU": _activation_layer,
    "LeakyReLU": _activation_layer,
    "ELU": _activation_layer,
    "Softmax": _activation_layer,
}


def convert_keras(config: dict, weights: WeightsFn, source: str = "<config>") -> nn.Sequential:
    """Translate a Keras model config and its weights into a ``nn.Sequential``.

    Parameters
    ----------
    config : dict
        The model config as Keras serialises it (``{"class_name": "Sequential",
        "config": {...}}``), from Keras 2 or 3.
    weights : callable
        ``weights(index, name, class_name)`` returns the layer's weight arrays as
        ``(name or None, array)`` pairs in the order Keras created them.
    source : str
        Where the config came from, for error messages.

    Returns
    -------
    torch.nn.Sequential
        Eval mode, float32, with an ``input_shape`` attribute in Keras layout.

    Raises
    ------
    NNInvError
        For a layer or activation without a translation (naming the layer's
        name, class and index among the model's layers, ``InputLayer`` not
        counted), a model that is not a chain, or weights of the wrong shape.
    """
    entries, input_shape = _model_layers(config, source)
    if input_shape is None or not all(isinstance(s, int) and s > 0 for s in input_shape):
        raise NNInvError(
            f"'{source}': the Keras model's input shape {input_shape} is not fully known; "
            f"nninv needs a fixed input shape (keras.Input(shape=...))"
        )
    state = _State(_Builder(input_shape))
    index = 0
    for entry in entries:
        cls = str(entry.get("class_name"))
        if cls == "InputLayer":
            continue
        L = _Layer(index, entry, [], state)
        handler = _LAYERS.get(cls)
        if handler is None:
            hint = (
                " (nested models are not supported)"
                if cls in ("Sequential", "Functional", "Model")
                else ""
            )
            raise L.error(
                f"layer class {cls} is not supported{hint}; supported layers: "
                f"{', '.join(sorted(set(_LAYERS)))}"
            )
        L.weights = weights(index, L.name, cls)
        try:
            handler(L)
        except (KeyError, TypeError, IndexError) as e:
            raise L.error(f"unexpected config ({type(e).__name__}: {e})") from None
        index += 1
    return state.b.finish()

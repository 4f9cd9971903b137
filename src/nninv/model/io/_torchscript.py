"""Load TorchScript archives written by ``torch.jit.save``, rebuilding plain chains.

A TorchScript archive holds the model's code as TorchScript (not Python
bytecode) and its tensors, read by PyTorch's own loader without unpickling
Python objects. A scripted or traced ``nn.Sequential`` (possibly nested) of
standard layers is rebuilt as an eager ``nn.Sequential`` of the same
``torch.nn`` layers, so that the chain analysis sees every step: each child is
recognised by its ``original_name`` and TorchScript type, its constructor
arguments are read from the attributes a scripted module keeps (``stride``,
``negative_slope``, ``dim``, ...) or, where tracing dropped them, from the
constants of its traced graph, and its ``state_dict`` is loaded. The rebuild
is accepted only if it computes what the script module computes: both run on
seeded random inputs of the model's input shape (the ``input_shape`` passed to
``load_model``, else one saved with the module: a scripted attribute or a buffer
of a traced one, else ``(in_features,)`` of a leading ``nn.Linear``) and must
agree within
``1e-6`` in float32. Otherwise (input shape unknown, a layer not in the table,
an argument that cannot be read, outputs that differ) and for any scripted
module other than a ``Sequential``, the ``ScriptModule`` comes back as it is:
opaque to the closed-form methods, usable with ``method="optimize"``.
"""

from __future__ import annotations

__all__ = ["load_torchscript"]

import re
import warnings
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ...checks import model_dtype_device
from ..layers import set_input_shape
from . import _corrupt

#: Largest ``|rebuilt(x) - scripted(x)|`` (absolute, and relative to ``|scripted(x)|``)
#: for which a rebuilt eager model is accepted, in float32.
VERIFY_TOL = 1e-6

#: Seeds of the random inputs (standard normal, batch of 4) used for the check.
_VERIFY_SEEDS = (0, 1, 2)
_VERIFY_BATCH = 4

_MISSING = object()
_MANGLE = re.compile(r"\.___torch_mangle_\d+")


class _NoRebuild(Exception):
    """The script module cannot be rebuilt as an eager chain (it stays opaque)."""


def load_torchscript(path: Path, input_shape: Sequence[int] | None = None) -> nn.Module:
    """Load ``path`` with ``torch.jit.load`` on the CPU, in eval mode and float32.

    A scripted or traced ``nn.Sequential`` of standard layers comes back as an
    equivalent eager ``nn.Sequential`` (checked on random inputs, see the module
    docstring); anything else as the loaded ``ScriptModule``. ``input_shape``
    (without the batch dimension), else one saved with the module (a scripted
    attribute, or a buffer of a traced one), is what the check runs on and is
    kept as a tuple attribute; none is invented otherwise.
    """
    try:
        with warnings.catch_warnings():
            # PyTorch deprecates TorchScript in favour of torch.export; the archive is
            # what the user has, so the advice is not theirs to act on here.
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            model = torch.jit.load(str(path), map_location="cpu")
    except (RuntimeError, ValueError, OSError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise _corrupt(path, "TorchScript", first) from None
    model = model.float().eval()
    shape = getattr(model, "input_shape", None) if input_shape is None else input_shape
    if shape is not None:
        try:
            shape = tuple(int(s) for s in shape)
        except (TypeError, ValueError):
            shape = None
    eager = _rebuild(model, shape)
    if eager is not None:
        if shape is not None:
            set_input_shape(eager, shape)
        return eager
    if shape is not None:
        try:
            model.input_shape = shape
        except (AttributeError, RuntimeError, TypeError):
            # A scripted attribute keeps its TorchScript type (a list stays a list).
            pass
    return model


def _rebuild(script: nn.Module, shape: tuple[int, ...] | None) -> nn.Sequential | None:
    """The eager equivalent of ``script``, or None if there is none or it cannot be verified."""
    try:
        eager = _sequential(script)
    except _NoRebuild:
        return None
    eager = eager.float().eval()
    if shape is None:
        shape = _leading_linear_shape(eager)
        if shape is None:
            return None
    return eager if _agrees(eager, script, shape) else None


def _type_name(module: nn.Module) -> str | None:
    """The ``torch.nn`` class name a script module was made from, or None if not one."""
    name = getattr(module, "original_name", None)
    if not isinstance(name, str):
        return None
    try:
        script: Any = module  # a TorchScript module: its attributes are C++ bindings
        qualified = script._c._type().qualified_name()
    except (AttributeError, RuntimeError):
        return name  # no type to cross-check; the output check still guards
    qualified = _MANGLE.sub("", str(qualified))
    if not re.fullmatch(rf"__torch__\.torch\.nn\.modules\.\w+\.{re.escape(name)}", qualified):
        return None  # a user class that happens to share a torch.nn name
    return name


def _sequential(module: nn.Module) -> nn.Sequential:
    if _type_name(module) != "Sequential":
        raise _NoRebuild
    children: OrderedDict[str, nn.Module] = OrderedDict()
    for name, child in module.named_children():
        kind = _type_name(child)
        if kind == "Sequential":
            children[name] = _sequential(child)
        elif kind in _BUILDERS:
            children[name] = _layer(child, kind)
        else:
            raise _NoRebuild
    return nn.Sequential(children)


def _layer(child: nn.Module, kind: str) -> nn.Module:
    state = child.state_dict()
    try:
        layer = _BUILDERS[kind](_Args(child), state)
        layer.load_state_dict(state, strict=True)
    except (_NoRebuild, TypeError, ValueError, RuntimeError, KeyError, IndexError):
        raise _NoRebuild from None
    return layer


def _leading_linear_shape(model: nn.Sequential) -> tuple[int, ...] | None:
    """``(in_features,)`` if the first layer that changes values is an ``nn.Linear``."""
    for m in model.modules():
        if isinstance(m, nn.Sequential | nn.Identity | nn.Dropout | nn.Flatten):
            continue
        return (m.in_features,) if isinstance(m, nn.Linear) else None
    return None


def _agrees(eager: nn.Module, script: nn.Module, shape: Sequence[int]) -> bool:
    try:
        # the archive's own dtype, not torch's default (which a caller may have set to float64)
        dtype = model_dtype_device(script, torch.float32)[0]
        with torch.no_grad():
            for seed in _VERIFY_SEEDS:
                gen = torch.Generator().manual_seed(seed)
                x = torch.randn((_VERIFY_BATCH, *shape), generator=gen, dtype=dtype)
                want, got = script(x), eager(x)
                if not (isinstance(want, Tensor) and isinstance(got, Tensor)):
                    return False
                if want.shape != got.shape or want.dtype != got.dtype:
                    return False
                if not torch.allclose(got, want, rtol=VERIFY_TOL, atol=VERIFY_TOL, equal_nan=True):
                    return False
    except Exception:  # any failure of either model means no rebuild
        return False
    return True


class _Args:
    """Constructor arguments of one scripted or traced ``torch.nn`` layer.

    A scripted layer keeps its hyperparameters as attributes. A traced one keeps
    only its parameters and a graph with the one ``aten`` call its ``forward``
    made, whose constant arguments hold the values (``aten::leaky_relu(x, 0.2)``).
    """

    def __init__(self, module: nn.Module) -> None:
        self.module = module

    def __call__(
        self, name: str, op: str | None = None, index: int | None = None, default: Any = _MISSING
    ) -> Any:
        """Attribute ``name``, else argument ``index`` of the traced call ``aten::op``.

        ``default`` is used where the traced graph holds only ``aten::op``, which is
        the call a layer makes with that default (a zero-padded convolution, say).
        """
        if hasattr(self.module, name):
            return _plain(getattr(self.module, name))
        if op is None:
            if default is _MISSING:
                raise _NoRebuild
            return default
        node = self._call(op)
        if index is None:
            if default is _MISSING:
                raise _NoRebuild
            return default
        inputs = list(node.inputs())
        if index >= len(inputs):
            raise _NoRebuild
        return _plain(_constant(inputs[index]))

    def _call(self, op: str) -> Any:
        """The graph's only ``aten`` node, which must be ``op`` (or ``op_``) on the input."""
        try:
            script: Any = self.module  # its graph is a C++ binding
            graph = script.graph
        except (AttributeError, RuntimeError):
            raise _NoRebuild from None
        calls = [n for n in graph.nodes() if n.kind().startswith("aten::")]
        if len(calls) != 1 or calls[0].kind() not in (f"aten::{op}", f"aten::{op}_"):
            raise _NoRebuild
        graph_inputs = list(graph.inputs())
        if len(graph_inputs) != 2 or next(calls[0].inputs()) is not graph_inputs[1]:
            raise _NoRebuild
        return calls[0]


def _constant(value: Any) -> Any:
    node = value.node()
    if node.kind() == "prim::Constant":
        return value.toIValue()
    if node.kind() == "prim::ListConstruct":
        return [_constant(v) for v in node.inputs()]
    raise _NoRebuild


def _plain(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


_Builder = Callable[[_Args, dict[str, Tensor]], nn.Module]


def _linear(a: _Args, state: dict[str, Tensor]) -> nn.Module:
    out_features, in_features = state["weight"].shape
    return nn.Linear(in_features, out_features, bias="bias" in state)


def _conv(cls: type[nn.Module], transposed: bool) -> _Builder:
    def build(a: _Args, state: dict[str, Tensor]) -> nn.Module:
        w = state["weight"]
        groups = int(a("groups", "_convolution", 8))
        if bool(a("transposed", "_convolution", 6, default=transposed)) != transposed:
            raise _NoRebuild
        kwargs = {
            "kernel_size": tuple(w.shape[2:]),
            "stride": a("stride", "_convolution", 3),
            "padding": a("padding", "_convolution", 4),
            "dilation": a("dilation", "_convolution", 5),
            "groups": groups,
            "bias": "bias" in state,
            "padding_mode": a("padding_mode", "_convolution", default="zeros"),
        }
        if transposed:
            kwargs["output_padding"] = a("output_padding", "_convolution", 7)
            return cls(w.shape[0], w.shape[1] * groups, **kwargs)
        return cls(w.shape[1] * groups, w.shape[0], **kwargs)

    return build


def _max_pool2d(a: _Args, state: dict[str, Tensor]) -> nn.Module:
    op = "max_pool2d"
    return nn.MaxPool2d(
        a("kernel_size", op, 1),
        a("stride", op, 2),
        a("padding", op, 3),
        a("dilation", op, 4),
        return_indices=a("return_indices", op, default=False),
        ceil_mode=a("ceil_mode", op, 5),
    )


def _avg_pool2d(a: _Args, state: dict[str, Tensor]) -> nn.Module:
    op = "avg_pool2d"
    return nn.AvgPool2d(
        a("kernel_size", op, 1),
        a("stride", op, 2),
        a("padding", op, 3),
        a("ceil_mode", op, 4),
        a("count_include_pad", op, 5),
        a("divisor_override", op, 6),
    )


def _batch_norm(cls: type[nn.Module]) -> _Builder:
    def build(a: _Args, state: dict[str, Tensor]) -> nn.Module:
        sized = state.get("weight", state.get("running_mean"))
        default = int(sized.shape[0]) if sized is not None else _MISSING
        return cls(
            a("num_features", default=default),
            eps=a("eps", "batch_norm", 7),
            momentum=a("momentum", "batch_norm", 6),
            affine="weight" in state,
            track_running_stats="running_mean" in state,
        )

    return build


def _plain_layer(cls: type[nn.Module]) -> _Builder:
    return lambda a, state: cls()


def _with(cls: type[nn.Module], op: str, **params: int) -> _Builder:
    """A layer whose keyword arguments are attributes or traced arguments of ``aten::op``."""
    return lambda a, state: cls(**{k: a(k, op, i) for k, i in params.items()})


#: How to rebuild each layer, by its ``torch.nn`` class name. In-place flags are
#: dropped: in a chain they change no output.
_BUILDERS: dict[str, _Builder] = {
    "Linear": _linear,
    "Conv1d": _conv(nn.Conv1d, transposed=False),
    "Conv2d": _conv(nn.Conv2d, transposed=False),
    "ConvTranspose2d": _conv(nn.ConvTranspose2d, transposed=True),
    "MaxPool2d": _max_pool2d,
    "AvgPool2d": _avg_pool2d,
    "BatchNorm1d": _batch_norm(nn.BatchNorm1d),
    "BatchNorm2d": _batch_norm(nn.BatchNorm2d),
    "Flatten": _with(nn.Flatten, "flatten", start_dim=1, end_dim=2),
    "Unflatten": _with(nn.Unflatten, "unflatten", dim=1, unflattened_size=2),
    "Dropout": _with(nn.Dropout, "dropout", p=1),
    "Identity": _plain_layer(nn.Identity),
    "Sigmoid": _plain_layer(nn.Sigmoid),
    "Tanh": _plain_layer(nn.Tanh),
    "ReLU": _plain_layer(nn.ReLU),
    "SELU": _plain_layer(nn.SELU),
    "SiLU": _plain_layer(nn.SiLU),
    "LeakyReLU": _with(nn.LeakyReLU, "leaky_relu", negative_slope=1),
    "ELU": _with(nn.ELU, "elu", alpha=1),
    "Softplus": _with(nn.Softplus, "softplus", beta=1, threshold=2),
    "Softmax": _with(nn.Softmax, "softmax", dim=1),
    "LogSoftmax": _with(nn.LogSoftmax, "log_softmax", dim=1),
    "GELU": _with(nn.GELU, "gelu", approximate=1),
}

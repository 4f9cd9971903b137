"""The model front: analyse a PyTorch module into a chain of known layers.

A model is read as a straight chain of modules (nested ``nn.Sequential`` or a
``torch.fx``-traceable ``forward`` without branches). Each module becomes one
:class:`LayerInfo`; consecutive linear modules (Linear, Conv, average pooling,
BatchNorm in eval, Flatten/Reshape/Permute, Dropout in eval, Identity) are
merged into one :class:`Affine` step acting on flattened vectors, elementwise
activations become :class:`Elementwise` steps, Softmax/LogSoftmax become
:class:`Shift` steps (invertible up to an additive constant), and anything else
an :class:`Unsupported` step that closed-form methods refuse by name.

Dense matrices are built only on demand and only below ``max_dense`` entries;
a larger operator raises :class:`~nninv.NNInvError` instead of silently using
gigabytes.
"""

from __future__ import annotations

__all__ = ["Affine", "Chain", "Elementwise", "LayerInfo", "Shift", "Unsupported", "analyse"]

import contextlib
import copy
import math
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ..checks import model_dtype_device
from ..errors import NNInvError
from ..linalg import Factor, factor
from ._activations import Activation, activation_of
from .layers import Permute, Reshape

#: Largest dense operator (entries) built without being asked: 2**25 (256 MiB in float64).
MAX_DENSE = 2**25

_LINEAR_TYPES: tuple[type, ...] = (
    nn.Linear,
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.ConvTranspose1d,
    nn.ConvTranspose2d,
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.Flatten,
    nn.Unflatten,
    Reshape,
    Permute,
    nn.Identity,
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.AlphaDropout,
    nn.ZeroPad2d,
)
_RESHAPE_TYPES: tuple[type, ...] = (
    nn.Flatten,
    nn.Unflatten,
    Reshape,
    Permute,
    nn.Identity,
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.AlphaDropout,
)
_PIECEWISE_TYPES: tuple[type, ...] = (nn.MaxPool1d, nn.MaxPool2d, nn.AdaptiveMaxPool2d)


@dataclass
class LayerInfo:
    """One module of the model, as the analysis sees it."""

    index: int
    name: str
    module: nn.Module
    kind: str  # "linear", "reshape", "activation", "shift", "piecewise", "unsupported"
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    activation: Activation | None = None

    @property
    def type_name(self) -> str:
        return type(self.module).__name__

    def label(self) -> str:
        return f"layer {self.index} {self.name!r} ({self.type_name})"


@dataclass
class Affine:
    """Consecutive linear modules, acting on flattened vectors: ``v -> A v + b``."""

    layers: list[LayerInfo]
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    max_dense: int = MAX_DENSE
    _cache: dict[Any, Any] = field(default_factory=dict, repr=False)

    @property
    def n(self) -> int:
        return math.prod(self.in_shape)

    @property
    def m(self) -> int:
        return math.prod(self.out_shape)

    @property
    def is_reshape(self) -> bool:
        """Whether the block only moves values around (reshapes, permutations)."""
        return all(layer.kind == "reshape" for layer in self.layers)

    def label(self) -> str:
        names = ", ".join(layer.label() for layer in self.layers)
        return f"affine block [{names}]"

    def forward(self, v: Tensor) -> Tensor:
        """Apply the block to flat vectors ``v`` (N, n) -> (N, m)."""
        h = v.reshape(v.shape[0], *self.in_shape)
        mods = self._modules_for(v.dtype, v.device)
        for mod in mods:
            h = mod(h)
        return h.reshape(v.shape[0], -1)

    def _modules_for(self, dtype: torch.dtype, device: torch.device) -> list[nn.Module]:
        key = ("mods", dtype, device)
        if key not in self._cache:
            mods = []
            for layer in self.layers:
                p = next(iter(layer.module.parameters()), None)
                b = next(iter(layer.module.buffers()), None)
                ref = p if p is not None else b
                if ref is None or (ref.dtype == dtype and ref.device == device):
                    mods.append(layer.module)
                else:
                    mods.append(copy.deepcopy(layer.module).to(dtype=dtype, device=device))
            self._cache[key] = mods
        return self._cache[key]

    def matrix(
        self, dtype: torch.dtype = torch.float64, device: torch.device | str = "cpu"
    ) -> tuple[Tensor, Tensor]:
        """Dense ``(A, b)`` with ``A`` (m, n), built once per dtype and device."""
        device = torch.device(device)
        key = ("matrix", dtype, device)
        if key not in self._cache:
            if self.n * self.m > self.max_dense:
                raise NNInvError(
                    f"{self.label()} is a {self.m} x {self.n} linear operator "
                    f"({self.n * self.m:,} entries), above the dense limit of "
                    f"{self.max_dense:,}; use method='optimize', or raise max_dense= "
                    "if you have the memory"
                )
            with torch.no_grad():
                b = self.forward(torch.zeros(1, self.n, dtype=dtype, device=device))[0]
                cols = []
                eye = torch.eye(self.n, dtype=dtype, device=device)
                # chunk so that the widest intermediate stays near 2**24 entries
                widest = max(math.prod(layer.out_shape) for layer in self.layers)
                chunk = max(1, min(4096, 2**24 // max(widest, 1)))
                for i in range(0, self.n, chunk):
                    cols.append(self.forward(eye[i : i + chunk]) - b)
                A = torch.cat(cols, 0).T.contiguous()
            self._cache[key] = (A, b)
        return self._cache[key]

    def factor(
        self, dtype: torch.dtype = torch.float64, device: torch.device | str = "cpu"
    ) -> Factor:
        """Rank-revealing SVD factor of ``A`` (cached), computed in float64 and cast."""
        device = torch.device(device)
        key = ("factor", dtype, device)
        if key not in self._cache:
            if dtype == torch.float64:
                A, _ = self.matrix(torch.float64, device)
                self._cache[key] = factor(A)
            else:
                self._cache[key] = self.factor(torch.float64, device).to(dtype)
        return self._cache[key]

    def reduce_after(self, B: Tensor) -> Factor:
        """Factor of ``B A`` for a constraint ``B`` on this block's output (cached)."""
        for Bc, f in self._cache.setdefault("after", []):
            if Bc is B:
                return f
        A, _ = self.matrix(torch.float64, B.device)
        f = factor(B.to(torch.float64) @ A).to(B.dtype)
        self._cache["after"].append((B, f))
        return f


@dataclass
class Elementwise:
    """An elementwise activation ``h = sigma(z)``."""

    layer: LayerInfo
    act: Activation

    def label(self) -> str:
        return self.layer.label()

    def forward(self, v: Tensor) -> Tensor:
        return self.act.forward(v)


@dataclass
class Shift:
    """Softmax (``log=False``) or LogSoftmax (``log=True``) over the feature axis.

    Both are invertible only up to adding the same constant to every logit:
    ``softmax(z) = softmax(z + c)``.
    """

    layer: LayerInfo
    log: bool

    def label(self) -> str:
        return self.layer.label()

    def forward(self, v: Tensor) -> Tensor:
        return torch.log_softmax(v, 1) if self.log else torch.softmax(v, 1)


@dataclass
class Unsupported:
    """A layer the closed-form methods cannot invert (max pooling, GELU, custom code)."""

    layer: LayerInfo
    reason: str

    def label(self) -> str:
        return self.layer.label()

    def forward(self, v: Tensor) -> Tensor:
        h = v.reshape(v.shape[0], *self.layer.in_shape)
        return self.layer.module(h).reshape(v.shape[0], -1)


Step = Affine | Elementwise | Shift | Unsupported


@dataclass
class Chain:
    """A model read as a chain of steps on flattened vectors."""

    model: nn.Module
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    layers: list[LayerInfo]
    steps: list[Step]

    @property
    def n_in(self) -> int:
        return math.prod(self.input_shape)

    @property
    def n_out(self) -> int:
        return math.prod(self.output_shape)

    @property
    def unsupported(self) -> list[Unsupported]:
        return [s for s in self.steps if isinstance(s, Unsupported)]

    def require_closed_form(self, method: str) -> None:
        """Raise NNInvError naming the first layer a closed-form method cannot handle."""
        for step in self.steps:
            if isinstance(step, Unsupported):
                raise NNInvError(
                    f"method={method!r} cannot invert {step.label()}: {step.reason}; "
                    "use method='optimize'"
                )

    def forward_flat(self, v: Tensor, upto: int | None = None) -> Tensor:
        """Run the steps ``[0, upto)`` on flat vectors."""
        for step in self.steps[:upto]:
            v = step.forward(v)
        return v


def _signature(model: nn.Module) -> tuple:
    tensors = list(model.parameters()) + list(model.buffers())
    return tuple((t.data_ptr(), t._version, t.dtype, tuple(t.shape)) for t in tensors)


_CACHE: weakref.WeakKeyDictionary[nn.Module, dict] = weakref.WeakKeyDictionary()


def analyse(
    model: nn.Module, input_shape: Sequence[int] | None = None, *, max_dense: int = MAX_DENSE
) -> Chain:
    """Analyse ``model`` into a :class:`Chain` (cached while its weights are unchanged).

    Parameters
    ----------
    model : torch.nn.Module
        Any module; closed-form methods need a chain of known layers.
    input_shape : sequence of int, optional
        Input shape without the batch dimension. Defaults to ``model.input_shape``
        if the model has that attribute, else to ``(in_features,)`` of a leading
        ``nn.Linear``.
    max_dense : int
        Largest linear operator (in entries) that may be made dense.

    Raises
    ------
    NNInvError
        If the input shape cannot be told, or the model fails on it.
    """
    if not isinstance(model, nn.Module):
        raise NNInvError(f"expected a torch.nn.Module, got {type(model).__name__}")
    shape = resolve_input_shape(model, input_shape)
    sig = _signature(model)
    entry = _CACHE.get(model)
    key = (shape, max_dense, model.training)
    if entry is not None and entry["sig"] == sig and key in entry["chains"]:
        return entry["chains"][key]
    chain = _build(model, shape, max_dense)
    if entry is None or entry["sig"] != sig:
        entry = {"sig": sig, "chains": {}}
        with contextlib.suppress(TypeError):
            _CACHE[model] = entry
    entry["chains"][key] = chain
    return chain


def resolve_input_shape(model: nn.Module, input_shape: Sequence[int] | None) -> tuple[int, ...]:
    declared = getattr(model, "input_shape", None)
    if input_shape is not None:
        shape = tuple(int(s) for s in input_shape)
    elif declared is not None:
        shape = tuple(int(s) for s in declared)
    else:
        first = next((m for _, m in _leaves(model) if not isinstance(m, _RESHAPE_TYPES)), None)
        if isinstance(first, nn.Linear):
            shape = (first.in_features,)
        else:
            kind = type(first).__name__ if first is not None else type(model).__name__
            raise NNInvError(
                f"cannot tell the input shape of a model that starts with {kind}; "
                "pass input_shape=(C, H, W) (without the batch dimension) or fit the "
                "prior on data shaped like the input"
            )
    if any(s <= 0 for s in shape):
        raise NNInvError(f"input_shape must be positive, got {shape}")
    return shape


class _Fn(nn.Module):
    """A traced functional call, wrapped so it can stand in the chain."""

    def __init__(self, fn: Any, args: tuple, kwargs: dict, label: str) -> None:
        super().__init__()
        self.fn, self.args, self.kwargs, self.label = fn, args, kwargs, label

    def forward(self, x: Tensor) -> Tensor:
        if isinstance(self.fn, str):
            return getattr(x, self.fn)(*self.args, **self.kwargs)
        return self.fn(x, *self.args, **self.kwargs)

    def extra_repr(self) -> str:
        return self.label


def _functional_to_module(fn: Any, args: tuple, kwargs: dict) -> nn.Module:
    import torch.nn.functional as F

    simple = {
        torch.sigmoid: nn.Sigmoid,
        F.sigmoid: nn.Sigmoid,
        torch.tanh: nn.Tanh,
        F.tanh: nn.Tanh,
        torch.relu: nn.ReLU,
        F.relu: nn.ReLU,
    }
    if fn in simple and not args:
        return simple[fn]()
    if fn is F.leaky_relu:
        slope = args[0] if args else kwargs.get("negative_slope", 0.01)
        return nn.LeakyReLU(slope)
    if fn in ("flatten", torch.flatten):
        start = args[0] if args else kwargs.get("start_dim", 0)
        if start == 1 and len(args) <= 1:
            return nn.Flatten()
    label = fn if isinstance(fn, str) else getattr(fn, "__name__", repr(fn))
    return _Fn(fn, args, kwargs, str(label))


def _leaves(model: nn.Module, prefix: str = "") -> Iterator[tuple[str, nn.Module]]:
    """Yield ``(name, module)`` in execution order for a straight-chain model."""
    if isinstance(model, nn.Sequential):
        # Not named_children(): it yields a module used twice (one ReLU instance
        # after two layers) only once, and the chain would lose a layer.
        for name, child in model._modules.items():
            if child is not None:
                yield from _leaves(child, f"{prefix}{name}.")
        return
    if _known(model) or not list(model.children()):
        yield prefix.rstrip(".") or type(model).__name__, model
        return
    traced = _trace(model)
    if traced is None:
        yield prefix.rstrip(".") or type(model).__name__, model
        return
    for name, mod in traced:
        if isinstance(mod, nn.Sequential) or (not _known(mod) and list(mod.children())):
            yield from _leaves(mod, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}", mod


def _known(m: nn.Module) -> bool:
    return isinstance(m, _LINEAR_TYPES + _PIECEWISE_TYPES + (nn.Softmax, nn.LogSoftmax)) or (
        activation_of(m) is not None
    )


def _trace(model: nn.Module) -> list[tuple[str, nn.Module]] | None:
    try:
        import torch.fx

        gm = torch.fx.symbolic_trace(model)
    except Exception:
        return None
    out: list[tuple[str, nn.Module]] = []
    prev = None
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            if prev is not None:
                return None
            prev = node
            continue
        if node.op == "output":
            return out if node.args[0] is prev else None
        if not node.args or node.args[0] is not prev:
            return None
        if any(
            isinstance(a, torch.fx.Node) for a in list(node.args[1:]) + list(node.kwargs.values())
        ):
            return None
        if node.op == "call_module":
            out.append((str(node.target), gm.get_submodule(node.target)))
        elif node.op in ("call_function", "call_method"):
            mod = _functional_to_module(node.target, tuple(node.args[1:]), dict(node.kwargs))
            out.append((node.name, mod))
        else:
            return None
        prev = node
    return None


def _classify(module: nn.Module) -> tuple[str, Activation | None, str]:
    act = activation_of(module)
    if act is not None:
        return "activation", act, ""
    if isinstance(module, _RESHAPE_TYPES):
        return "reshape", None, ""
    if isinstance(module, _LINEAR_TYPES):
        return "linear", None, ""
    if isinstance(module, nn.Softmax | nn.LogSoftmax):
        return "shift", None, ""
    if isinstance(module, _PIECEWISE_TYPES):
        return "piecewise", None, "max pooling is piecewise linear and not injective"
    if isinstance(module, nn.LeakyReLU):
        return "unsupported", None, "a negative slope makes it non-monotone"
    return "unsupported", None, "no closed-form inverse is known for this layer type"


def _build(model: nn.Module, shape: tuple[int, ...], max_dense: int) -> Chain:
    leaves = list(_leaves(model))
    layers: list[LayerInfo] = []
    steps: list[Step] = []
    cur = shape
    probe_dtype, probe_device = model_dtype_device(model)
    with torch.no_grad(), eval_mode(model):
        h = torch.zeros(2, *cur, dtype=probe_dtype, device=probe_device)
        for i, (name, mod) in enumerate(leaves):
            try:
                h = mod(h)
            except Exception as e:
                raise NNInvError(
                    f"layer {i} {name!r} ({type(mod).__name__}) fails on input of shape "
                    f"{(2, *cur)}: {e}"
                ) from None
            if not isinstance(h, Tensor):
                raise NNInvError(
                    f"layer {i} {name!r} ({type(mod).__name__}) returns a "
                    f"{type(h).__name__}, not one tensor (return_indices=True?)"
                )
            out = tuple(h.shape[1:])
            kind, act, reason = _classify(mod)
            if kind == "shift":
                assert isinstance(mod, nn.Softmax | nn.LogSoftmax)  # as _classify found
                dim = mod.dim
                if len(cur) != 1 or dim not in (1, -1):
                    kind, reason = (
                        "unsupported",
                        (
                            f"softmax over dim={dim} of a {len(cur) + 1}-D tensor; only the "
                            "feature axis of (N, m) outputs is supported"
                        ),
                    )
            if mod is model and not _known(mod):
                reason = "the model is not a chain of known layers (branches or custom code)"
            info = LayerInfo(i, name, mod, kind, cur, out, act)
            layers.append(info)
            if kind in ("linear", "reshape"):
                if steps and isinstance(steps[-1], Affine):
                    steps[-1].layers.append(info)
                    steps[-1].out_shape = out
                else:
                    steps.append(Affine([info], cur, out, max_dense))
            elif kind == "activation":
                assert act is not None
                steps.append(Elementwise(info, act))
            elif kind == "shift":
                steps.append(Shift(info, isinstance(mod, nn.LogSoftmax)))
            else:
                steps.append(Unsupported(info, reason))
            cur = out
    return Chain(model, shape, cur, layers, steps)


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Temporarily put ``model`` in eval mode (Dropout off, BatchNorm running stats).

    Each submodule's own mode is restored after, so a model whose parts were in
    different modes (a container in train mode around a frozen, eval-mode
    network) comes back exactly as it was.
    """
    was = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, mode in was:
            m.training = mode

"""Load trained networks saved by Keras, ONNX, TorchScript or skops as PyTorch modules.

:func:`load_model` reads a model file without the framework that wrote it (or
takes a fitted scikit-learn MLP) and
rebuilds the network as a ``torch.nn.Sequential`` of standard PyTorch layers
(``nn.Linear``, ``nn.Conv2d``, ``nn.Sigmoid``, ...) plus the shape layers of
:mod:`nninv.model.layers`, so that the chain analysis recognises every step. The
format is told from the file's content (zip members, HDF5 signature, pickle
opcodes), the suffix only breaking ties. Pickled PyTorch modules and pickled or
joblib-dumped scikit-learn models are refused: unpickling runs arbitrary code.
:func:`as_module` is the one place where the public functions turn what they
are given (a module, or a scikit-learn MLP) into a module.
"""

from __future__ import annotations

__all__ = ["SAFETENSORS_FORMATS", "SUPPORTED_KINDS", "as_module", "load_model"]

import importlib
import os
import zipfile
import zlib
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ...errors import NNInvError
from ..layers import set_input_shape

#: The kinds of file :func:`load_model` reads, as named in its error messages.
SUPPORTED_KINDS: tuple[str, ...] = (
    "Keras 3 archive (.keras)",
    "legacy Keras HDF5 (.h5, .hdf5)",
    "ONNX (.onnx)",
    "TorchScript archive (torch.jit.save; .pt, .pth)",
    "scikit-learn MLPClassifier/MLPRegressor saved by skops (.skops)",
    "nninv.invertible.BijectiveClassifier saved by its save() (.safetensors)",
)

#: nninv's own safetensors files that carry their architecture, by their ``format``
#: metadata (:mod:`nninv.serialization`), with the loader as ``"module:Class.method"``.
#: The loaders live in upper layers; the module is imported only when such a file is read,
#: so ``load_model`` reads them in a fresh process and this layer imports nothing above it.
SAFETENSORS_FORMATS: dict[str, str] = {
    "nninv.BijectiveClassifier": "nninv.invertible.classifier:BijectiveClassifier.load",
}


_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")
_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
_PICKLE_SUFFIXES = {".pt", ".pth", ".pkl", ".pickle", ".bin", ".ckpt", ".tar", ".joblib"}
_SAFE_ALTERNATIVES = (
    "Unpickling executes arbitrary code, so nninv does not load pickles. Safe "
    "alternatives: (1) save model.state_dict(), rebuild your own model class and "
    "fill it with model.load_state_dict(torch.load(path, weights_only=True)), "
    "then pass the module itself; (2) save a TorchScript archive with "
    "torch.jit.save(torch.jit.script(model), path); (3) export ONNX with "
    "torch.onnx.export; (4) keep the weights in safetensors and build the module "
    "in code. A scikit-learn model: save it with skops.io.dump(model, 'model.skops'), "
    "or pass the fitted estimator itself."
)


class _ModelFileNotFoundError(NNInvError, FileNotFoundError):
    """The model file does not exist (catchable as either parent class)."""


def as_module(model: Any) -> nn.Module:
    """``model`` as a ``torch.nn.Module``: itself, or a fitted scikit-learn MLP converted.

    Every public entry point (``invert``, ``preimage``, ``closest``, ``diagnose``, ...)
    passes its ``model`` through here, so each accepts the same things.

    Raises
    ------
    NNInvError
        If ``model`` is neither a module nor a fitted ``MLPClassifier``/``MLPRegressor``.
    """
    if isinstance(model, nn.Module):
        return model
    from .sklearn import from_sklearn, is_sklearn_mlp

    if is_sklearn_mlp(model):
        return from_sklearn(model)
    raise NNInvError(
        f"expected a torch.nn.Module or a fitted scikit-learn MLPClassifier/MLPRegressor, "
        f"got {type(model).__name__}"
    )


def load_model(
    path: str | os.PathLike[str] | Any, *, input_shape: Sequence[int] | None = None
) -> nn.Module:
    """Load a saved network as a PyTorch module made of standard layers.

    Parameters
    ----------
    path : str or path-like, or a fitted scikit-learn MLP
        A Keras 3 archive (``.keras``), a legacy Keras HDF5 file (``.h5``), an
        ONNX model (``.onnx``), a TorchScript archive (``torch.jit.save``) or a
        skops file (``.skops``) of a scikit-learn ``MLPClassifier`` or
        ``MLPRegressor``. The format is recognised from the file's content. A
        fitted ``MLPClassifier``/``MLPRegressor`` object is converted directly.
    input_shape : sequence of int, optional
        The input shape without the batch dimension, for a TorchScript archive
        that does not tell it (a scripted ``Sequential`` starting with a
        ``Conv2d`` and saved without an ``input_shape`` attribute): its
        rebuild as eager layers is checked on inputs of this shape. Other
        formats carry their shape and ignore it.

    Returns
    -------
    torch.nn.Module
        In eval mode with float32 parameters. Keras and ONNX models come back
        as a ``torch.nn.Sequential`` of standard layers (``nn.Linear``,
        ``nn.Conv2d``, pooling, ``nn.BatchNorm1d``/``2d``, activations such as
        ``nn.Sigmoid``) and :class:`~nninv.model.layers.Permute` /
        :class:`~nninv.model.layers.Reshape`, with an ``input_shape`` attribute
        (without the batch dimension) in the file's own layout: a
        channels-last Keras CNN takes ``(N, H, W, C)`` as Keras does. Module
        names are the original layer (or node) names. A TorchScript archive of a
        scripted or traced ``nn.Sequential`` (possibly nested) of standard layers
        comes back as the same ``nn.Sequential`` of eager layers, accepted only if
        it matches the script module within ``1e-6`` on random inputs of its saved
        ``input_shape`` (kept as an attribute) or of a leading ``nn.Linear``; any
        other TorchScript archive comes back as the loaded ``ScriptModule``, opaque
        to the closed-form methods (``method="optimize"`` takes it). A
        scikit-learn MLP comes back as ``nn.Linear`` layers, its activations and its
        output head (see :func:`nninv.model.io.sklearn.from_sklearn`) in the
        estimator's own dtype (float64 as a rule), with ``input_shape =
        (n_features_in_,)``: ``model(x)`` is ``predict_proba(x)`` (classifiers)
        or ``predict(x)`` as ``(N, n_outputs)`` (regressors). A safetensors file
        written by ``nninv.invertible.BijectiveClassifier.save`` comes back as that
        model, in eval mode and the file's dtype (``method="auto"`` inverts it
        exactly).

    Raises
    ------
    NNInvError
        If the file is missing (also a ``FileNotFoundError``), empty, corrupt
        or truncated, of an unknown kind, a pickle (``torch.save``; refused
        because unpickling runs code), or if the network uses a layer or
        operator without a standard PyTorch equivalent, or is not a chain
        (the message names the layer or node, its type and its position).

    Examples
    --------
    >>> from nninv.model.io import load_model
    >>> model = load_model("mnist.keras")  # doctest: +SKIP
    >>> model  # doctest: +SKIP
    Sequential(
      (dense): Linear(in_features=784, out_features=10, bias=True)
      (dense_sigmoid): Sigmoid()
    )
    >>> model.input_shape  # doctest: +SKIP
    (784,)
    """
    if not isinstance(path, str | os.PathLike):
        from .sklearn import from_sklearn, is_sklearn_mlp

        if is_sklearn_mlp(path):
            return from_sklearn(path)
        raise NNInvError(
            f"load_model takes a file path or a fitted scikit-learn MLP, got {type(path).__name__}"
        )
    path = Path(path)
    if not path.exists():
        raise _ModelFileNotFoundError(f"no such model file: '{path}'")
    if path.is_dir():
        raise NNInvError(
            f"'{path}' is a directory (a TensorFlow SavedModel?); nninv reads single "
            f"files: {_kinds()}. Export the model to ONNX or save it with Keras 3 as .keras"
        )
    with open(path, "rb") as f:
        head = f.read(16)
    if not head:
        raise NNInvError(f"'{path}' is empty (0 bytes): the file is corrupt or truncated")

    if head.startswith(_ZIP_MAGIC):
        return _load_zip(path, input_shape)
    if head.startswith(_HDF5_MAGIC):
        from ._keras import load_keras_h5

        return _guarded(load_keras_h5, path, "Keras HDF5")
    if _is_pickle(head) or path.suffix.lower() in {".pkl", ".pickle", ".joblib"}:
        raise NNInvError(
            f"'{path}' is a Python pickle (torch.save of a whole module or of a "
            f"state_dict in the legacy format, or a pickled or joblib-dumped scikit-learn "
            f"model); refusing to load it. {_SAFE_ALTERNATIVES}"
        )
    if path.suffix.lower() == ".safetensors" or _is_safetensors(path, head):
        return _load_safetensors(path)
    if path.suffix.lower() in {".keras", ".h5", ".hdf5"}:
        raise NNInvError(
            f"'{path}' has a Keras suffix but is neither a zip archive nor an HDF5 "
            f"file: the file is corrupt or truncated"
        )
    if path.suffix.lower() == ".onnx":
        from ._onnx import load_onnx

        return _guarded(load_onnx, path, "ONNX")
    if path.suffix.lower() in _PICKLE_SUFFIXES:
        raise NNInvError(
            f"'{path}' is neither a TorchScript archive nor a torch.save file: the file "
            f"is corrupt or truncated, or not a model. nninv reads: {_kinds()}"
        )
    from ._onnx import looks_like_onnx

    if looks_like_onnx(path):
        from ._onnx import load_onnx

        return _guarded(load_onnx, path, "ONNX")
    raise NNInvError(f"'{path}' is not a model file nninv knows; supported kinds: {_kinds()}")


#: What the parsers (h5py, protobuf, onnx's checker, torch.jit, zipfile) raise on
#: damaged bytes that the format loaders do not already name.
_PARSE_ERRORS = (
    OSError,
    EOFError,
    RuntimeError,
    ValueError,
    TypeError,
    KeyError,
    IndexError,
    AttributeError,
    OverflowError,
    zipfile.BadZipFile,
    zlib.error,
)


def _guarded(loader: Callable[[Path], nn.Module], path: Path, what: str) -> nn.Module:
    """``loader(path)``, with any parser failure on damaged bytes as one NNInvError.

    The file is untrusted input: whatever its bytes make the parsers raise, the
    caller gets an :class:`NNInvError` naming the file and the format (the parser's
    own exception stays attached as the cause, for debugging).
    """
    try:
        return loader(path)
    except NNInvError:
        raise
    except _PARSE_ERRORS as e:
        raise _corrupt(path, what, f"{type(e).__name__}: {e}") from e


def _kinds() -> str:
    return "; ".join(SUPPORTED_KINDS)


def _is_pickle(head: bytes) -> bool:
    # Protocol 2+ pickles open with PROTO; legacy torch.save files are such pickles.
    return len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5


def _is_safetensors(path: Path, head: bytes) -> bool:
    if len(head) < 9:
        return False
    n = int.from_bytes(head[:8], "little")
    return head[8:9] == b"{" and 8 + n <= path.stat().st_size


def _load_safetensors(path: Path) -> nn.Module:
    """A safetensors file with a registered ``format``; else an error (weights, no architecture)."""
    from safetensors import safe_open

    from ...serialization import file_format

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as e:  # safetensors raises its own error types on damaged bytes
        raise _corrupt(path, "safetensors", f"{type(e).__name__}: {e}") from None
    name = file_format(meta)[0]
    if name in SAFETENSORS_FORMATS:
        module, _, attr = SAFETENSORS_FORMATS[name].partition(":")
        try:
            loader: Any = importlib.import_module(module)
        except ImportError as e:
            raise NNInvError(
                f"'{path}' is an {name} file, whose loader ({module}) cannot be imported: "
                f"{e} (nninv.invertible needs zuko: pip install 'nninv[learned]')"
            ) from None
        for part in attr.split("."):
            loader = getattr(loader, part)
        model = loader(path)
        assert isinstance(model, nn.Module), SAFETENSORS_FORMATS[name]
        return model
    raise NNInvError(
        f"'{path}' is a safetensors file: it holds weights but no architecture. "
        f"Build the module in code, fill it with safetensors.torch.load_model, and "
        f"pass the module itself; or save it as one of: {_kinds()}"
    )


def _load_zip(path: Path, input_shape: Sequence[int] | None = None) -> nn.Module:
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    # a damaged central directory can also raise ValueError (UnicodeDecodeError on a
    # member name) or NotImplementedError (a nonsense zip version)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError) as e:
        raise NNInvError(
            f"'{path}' is a damaged zip archive ({e}): the file is corrupt or truncated"
        ) from None
    base = {n.rsplit("/", 1)[-1] for n in names}
    if "schema.json" in names:
        from .sklearn import load_skops

        return load_skops(path)
    if "config.json" in names and ("model.weights.h5" in names or "metadata.json" in names):
        from ._keras import load_keras_v3

        return _guarded(load_keras_v3, path, "Keras archive")
    if "constants.pkl" in base and any("/code/" in n for n in names):
        from ._torchscript import load_torchscript

        return _guarded(lambda p: load_torchscript(p, input_shape), path, "TorchScript")
    if "data.pkl" in base:
        raise NNInvError(
            f"'{path}' was written by torch.save (a pickled module or state_dict, not "
            f"TorchScript); refusing to unpickle it. A state_dict also lacks the "
            f"architecture. {_SAFE_ALTERNATIVES}"
        )
    raise NNInvError(
        f"'{path}' is a zip archive of no kind nninv knows (members: "
        f"{', '.join(names[:5])}{', ...' if len(names) > 5 else ''}); supported kinds: "
        f"{_kinds()}"
    )


def _corrupt(path: Path, what: str, err: BaseException | str) -> NNInvError:
    """An error saying that ``path`` (a ``what`` file) is corrupt or truncated."""
    return NNInvError(
        f"'{path}' is not a readable {what} file ({err}): the file is corrupt or truncated"
    )


class _Builder:
    """Collect named modules into a ``nn.Sequential`` while tracking the tensor shape.

    ``shape`` is the shape (without batch) of the tensor the next module receives;
    it is found by running each new module on zeros, so it is always what the
    built module really computes.
    """

    def __init__(self, input_shape: Sequence[int]) -> None:
        self.input_shape = tuple(int(s) for s in input_shape)
        self.shape = self.input_shape
        self.modules: dict[str, nn.Module] = {}

    def add(self, name: str, module: nn.Module, context: str = "") -> None:
        """Append ``module`` under a unique version of ``name`` and update ``shape``."""
        key = _module_key(name, self.modules)
        module.eval()
        try:
            with torch.no_grad():
                out = module(torch.zeros((1, *self.shape)))
        except RuntimeError as e:
            raise NNInvError(
                f"{context or name}: the translated {type(module).__name__} does not "
                f"accept an input of shape {self.shape} ({e})"
            ) from None
        self.modules[key] = module
        self.shape = tuple(out.shape[1:])

    @property
    def last(self) -> nn.Module | None:
        """The module added last, or None."""
        return next(reversed(self.modules.values()), None)

    def finish(self) -> nn.Sequential:
        """The eval-mode float32 ``nn.Sequential`` with its ``input_shape`` attribute."""
        model = nn.Sequential(OrderedDict(self.modules)).float().eval()
        set_input_shape(model, self.input_shape)
        return model


_PROBE = nn.Sequential()


def _module_key(name: str, taken: dict[str, nn.Module]) -> str:
    key = "".join(c if c.isalnum() or c == "_" else "_" for c in name).strip("_") or "layer"
    if hasattr(_PROBE, key):
        key = f"l_{key}"
    base, i = key, 1
    while key in taken:
        key = f"{base}_{i}"
        i += 1
    return key


def _batch_norm(
    weight: torch.Tensor,
    bias: torch.Tensor,
    mean: torch.Tensor,
    var: torch.Tensor,
    eps: float,
    spatial: bool,
) -> nn.Module:
    """An eval-mode ``nn.BatchNorm2d`` (``spatial``) or ``nn.BatchNorm1d`` with these statistics."""
    c = weight.shape[0]
    bn: nn.Module = nn.BatchNorm2d(c, eps=eps) if spatial else nn.BatchNorm1d(c, eps=eps)
    state = {"weight": weight, "bias": bias, "running_mean": mean, "running_var": var}
    bn.load_state_dict({**state, "num_batches_tracked": torch.tensor(0)})
    return bn.eval()


def _pair(values: Sequence[int]) -> tuple[int, int]:
    """Two ints from a length-2 sequence (the spatial sizes of a 2D layer)."""
    a, b = values
    return int(a), int(b)

"""Load TorchScript archives written by ``torch.jit.save``.

A TorchScript archive holds the model's code as TorchScript (not Python
bytecode) and its tensors, read by PyTorch's own loader without unpickling
Python objects. The module comes back as it is (a ``ScriptModule``), in eval
mode with float32 parameters; the chain analysis walks it like any module.
"""

from __future__ import annotations

__all__ = ["load_torchscript"]

import warnings
from pathlib import Path

import torch
from torch import nn

from . import _corrupt


def load_torchscript(path: Path) -> nn.Module:
    """Load ``path`` with ``torch.jit.load`` on the CPU, in eval mode and float32.

    An ``input_shape`` attribute saved with the module (a scripted attribute)
    is kept as a tuple; none is invented otherwise.
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
    shape = getattr(model, "input_shape", None)
    if shape is not None:
        try:
            shape = tuple(int(s) for s in shape)
        except (TypeError, ValueError):
            shape = None
    if shape is not None:
        try:
            model.input_shape = shape
        except (AttributeError, RuntimeError, TypeError):
            # A scripted attribute keeps its TorchScript type (a list stays a list).
            pass
    return model

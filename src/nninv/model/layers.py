"""Small shape layers that PyTorch lacks, used by the model loaders.

Keras and ONNX models reshape and transpose tensors between layers (Keras keeps
images channels-last). These modules express those steps as ordinary
``torch.nn.Module`` objects so that the chain analysis in :mod:`nninv.model.chain`
can recognise them as permutations or reshapes of the flattened input, which
are linear, exactly invertible, and need no densifying.
"""

from __future__ import annotations

__all__ = ["Exp", "Permute", "Reshape", "set_input_shape"]

from collections.abc import Sequence

import torch
from torch import Tensor, nn


def set_input_shape(model: nn.Module, shape: tuple[int, ...]) -> None:
    """Record ``shape`` as the plain attribute ``model.input_shape`` the loaders leave.

    ``setattr`` because the stubs of ``nn.Module.__setattr__`` admit only tensors
    and modules as values; at run time it stores any value.

    Parameters
    ----------
    model : torch.nn.Module
        A model built by a loader.
    shape : tuple of int
        Its input shape without the batch dimension.
    """
    setattr(model, "input_shape", shape)  # noqa: B010


class Permute(nn.Module):
    """Permute the non-batch dimensions of a tensor.

    Parameters
    ----------
    dims : sequence of int
        A permutation of ``range(ndim)`` over the dimensions *after* the batch
        dimension, as in ``tensor.permute(0, *(d + 1 for d in dims))``.

    Examples
    --------
    >>> Permute((2, 0, 1))(torch.zeros(5, 28, 28, 3)).shape
    torch.Size([5, 3, 28, 28])
    """

    def __init__(self, dims: Sequence[int]) -> None:
        super().__init__()
        dims = tuple(int(d) for d in dims)
        if sorted(dims) != list(range(len(dims))):
            raise ValueError(f"Permute: {dims} is not a permutation of range({len(dims)})")
        self.dims = dims

    def forward(self, x: Tensor) -> Tensor:
        return x.permute(0, *(d + 1 for d in self.dims))

    def extra_repr(self) -> str:
        return f"dims={self.dims}"


class Reshape(nn.Module):
    """Reshape the non-batch dimensions (row-major order, like ``torch.reshape``).

    Parameters
    ----------
    shape : sequence of int
        The new shape after the batch dimension; one entry may be -1.

    Examples
    --------
    >>> Reshape((1, 28, 28))(torch.zeros(4, 784)).shape
    torch.Size([4, 1, 28, 28])
    """

    def __init__(self, shape: Sequence[int]) -> None:
        super().__init__()
        self.shape = tuple(int(s) for s in shape)

    def forward(self, x: Tensor) -> Tensor:
        return x.reshape(x.shape[0], *self.shape)

    def extra_repr(self) -> str:
        return f"shape={self.shape}"


class Exp(nn.Module):
    """Elementwise ``exp`` (the output of a Poisson-loss regressor); inverse ``log``.

    Examples
    --------
    >>> Exp()(torch.zeros(2, 3)).tolist()
    [[1.0, 1.0, 1.0], [1.0, 1.0, 1.0]]
    """

    def forward(self, x: Tensor) -> Tensor:
        return torch.exp(x)

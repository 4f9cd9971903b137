"""Shared fixtures and the tolerance table for nninv's tests."""

from __future__ import annotations

import pytest
import torch

#: Tolerances per dtype for exactness checks (one table, not magic numbers in asserts).
EPS = {
    torch.float64: {"residual": 1e-10, "close": 1e-9},
    torch.float32: {"residual": 1e-4, "close": 1e-4},
}


@pytest.fixture
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(0)


def mnist_dir_or_skip():
    from nninv.datasets import default_mnist_dir

    d = default_mnist_dir()
    if d is None:
        pytest.skip("full MNIST not found: set NNINV_MNIST_DIR or place it at ../shared/data/mnist")
    return d

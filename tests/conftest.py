"""Shared fixtures of nninv's tests: the CLI runner, Keras and the seed's model.

The tolerance table is not here but in ``tolerances.py`` (``from tolerances
import EPS``); fixtures are requested by name as usual.
"""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Callable, Sequence

import pytest
import torch
from hypothesis import settings
from torch import nn

# Keras picks its backend on first import; every Keras test here runs on torch
os.environ["KERAS_BACKEND"] = "torch"

# The tests' nets are small: torch's intra-op threads cost more in spin-waiting than they
# save, and tens of times more on a busy machine (test_coarse's float64 test, 2 threads
# against 1 under load: 144 s against 7.6 s); nninv does the same in its own hot loops.
torch.set_num_threads(1)

# property tests draw the same examples on every run (seeded), so CI cannot flake on a
# new draw; explicit @example cases keep the ones that once failed
settings.register_profile("nninv", derandomize=True, database=None)
settings.load_profile("nninv")

RunCli = Callable[[Sequence[object]], tuple[int, str, str]]
SeedModel = Callable[..., nn.Module]


@pytest.fixture
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(0)


@pytest.fixture(scope="session")
def run_cli() -> RunCli:
    """``run_cli(argv) -> (exit code, stdout, stderr)``: ``nninv`` in this process.

    Arguments may be paths or numbers (each is passed as ``str``).
    """
    from nninv.cli import main

    def run(argv: Sequence[object]) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main([str(a) for a in argv])
        return code, out.getvalue(), err.getvalue()

    return run


@pytest.fixture(scope="session")
def keras():
    """Keras 3 on the torch backend; skips where Keras is absent or on another backend."""
    keras = pytest.importorskip("keras")
    if keras.backend.backend() != "torch":
        pytest.skip("keras was imported with another backend before the tests")
    return keras


@pytest.fixture(scope="session")
def seed_model() -> SeedModel:
    """``seed_model(dtype=float64, n=784, m=10, *, seed=0, device="cpu")``.

    The seed's model f(x) = sigmoid(W x + b), n -> m, its weights drawn from
    ``seed`` without touching the global random state.
    """

    def build(
        dtype: torch.dtype = torch.float64,
        n: int = 784,
        m: int = 10,
        *,
        seed: int = 0,
        device: torch.device | str = "cpu",
    ) -> nn.Module:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return nn.Sequential(nn.Linear(n, m), nn.Sigmoid()).to(device, dtype)

    return build

"""The tolerance table of nninv's tests, one entry per dtype.

Test modules import it by name (``from tolerances import EPS``): pytest puts
``tests/`` on ``sys.path`` (``pythonpath`` in pyproject.toml), so this is an
ordinary module. It is kept out of ``conftest.py``, which pytest imports itself
and which a test module should not import a second time.
"""

from __future__ import annotations

import torch

__all__ = ["EPS"]

#: Tolerances per dtype for exactness checks (one table, not magic numbers in asserts).
EPS = {
    torch.float64: {"residual": 1e-10, "close": 1e-9},
    torch.float32: {"residual": 1e-4, "close": 1e-4},
}

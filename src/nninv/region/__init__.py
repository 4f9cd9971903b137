"""Decision regions: the inputs in a box that a network maps into an output set.

:func:`region` answers exactly (every linear region of a piecewise-linear
network, cut by the output set), or with a few polytopes inside (``"under"``) or
around (``"over"``) the region, each with its exact volume; the result
(:class:`Region`) tests membership and samples uniformly.
"""

from __future__ import annotations

__all__ = ["MODES", "Polytope", "Region", "region"]

from .api import MODES, region
from .result import Polytope, Region

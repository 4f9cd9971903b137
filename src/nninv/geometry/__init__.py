"""Preimage geometry: the set of inputs with a given output, described, sampled
and searched.

``preimage`` builds the set (exact polyhedra for piecewise-linear nets, a
manifold for smooth ones) and samples it; ``closest`` finds the nearest input
with another output or class, exactly by LP/MILP (HiGHS) for ReLU nets. The
polytope walks and the MILP encoding are private machinery beside them.
"""

from .closest import Closest, closest
from .preimage import Extent, Preimage, Samples, preimage

__all__ = ["Closest", "Extent", "Preimage", "Samples", "closest", "preimage"]

"""Networks invertible by construction, with inverses that report their convergence.

Blocks map ``x`` to ``(y, logdet)`` and ``y`` back to ``(x, report)``:
:class:`AdditiveCoupling` and :class:`AffineCoupling` (on zuko's coupling
transform), :class:`ActNorm`, the LU-parametrised :class:`InvConv1x1`,
:class:`Squeeze`, and the i-ResNet :class:`IResBlock`, whose fixed-point or
Newton inverse stops on a tolerance and an iteration cap and reports iterations
and residual per sample.
:class:`InvertibleSequential` composes them; :class:`BijectiveClassifier` is an
MNIST classifier whose 784 outputs are 10 logits and a 774-D nuisance ``z``, so
that ``nninv.invert`` inverts it exactly (``method="bijective"``, picked by
``"auto"``).
"""

from ._base import CHECK_TOL, InverseReport, InvertibleBlock, InvertibleSequential
from .classifier import BijectiveClassifier
from .coupling import AdditiveCoupling, AffineCoupling
from .iresnet import FIXED_POINT_TOL, SOLVERS, IResBlock
from .linear import ActNorm, InvConv1x1, Squeeze

__all__ = [
    "CHECK_TOL",
    "FIXED_POINT_TOL",
    "SOLVERS",
    "ActNorm",
    "AdditiveCoupling",
    "AffineCoupling",
    "BijectiveClassifier",
    "IResBlock",
    "InvConv1x1",
    "InverseReport",
    "InvertibleBlock",
    "InvertibleSequential",
    "Squeeze",
]

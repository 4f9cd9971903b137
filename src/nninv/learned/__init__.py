"""Learned inverses: networks trained to map a model's outputs back to its inputs.

:class:`Decoder` is the seed's "reverse net" (10 -> 784), trained on pairs
``(f(X), X)``; ``nninv.invert(model, y, method="decoder", decoder=dec)``
projects its guess onto the exact preimage. :class:`ConditionalFlow` models the
whole posterior ``p(x | y)`` around a decoder (zuko, an optional dependency);
:func:`nninv.posterior` projects its draws onto the exact preimage.
"""

from .decoder import Decoder
from .flow import ConditionalFlow

__all__ = ["ConditionalFlow", "Decoder"]

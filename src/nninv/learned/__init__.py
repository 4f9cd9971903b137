"""Learned inverses: networks trained to map a model's outputs back to its inputs.

:class:`Decoder` is the seed's "reverse net" (10 -> 784), trained on pairs
``(f(X), X)``; ``nninv.invert(model, y, method="decoder", decoder=dec)``
projects its guess onto the exact preimage. Learned models of the whole
posterior ``p(x | f(x) = y)`` go here too.
"""

from .decoder import Decoder

__all__ = ["Decoder"]

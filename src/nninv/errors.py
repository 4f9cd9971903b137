"""The one exception family of nninv and small helpers that raise it with context."""

from __future__ import annotations

__all__ = ["NNInvError", "NNInvWarning"]


class NNInvError(ValueError):
    """Raised for anything nninv cannot do with the given model or data.

    The message names the offending object: the layer (index, name and type),
    the shapes involved, the sample and output index of a bad target value.
    """


class NNInvWarning(UserWarning):
    """Warned when nninv changes what it was given to make it usable.

    For example, a sigmoid output of exactly 1.0 is moved to the largest value
    below 1.0 in its dtype, which stands for the same interval of pre-activations.
    """

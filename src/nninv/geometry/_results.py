"""What a preimage answers with: :class:`Samples` from its Markov chains and :class:`Extent`.

Plain frozen records, kept apart from :class:`~nninv.geometry.Preimage` so that
the object's module holds only the object and :func:`~nninv.geometry.preimage`;
both are re-exported from :mod:`nninv.geometry.preimage` and
:mod:`nninv.geometry`.
"""

from __future__ import annotations

__all__ = ["Extent", "Samples"]

from dataclasses import dataclass, field
from typing import Any

from torch import Tensor


@dataclass(frozen=True)
class Samples:
    """Members of a preimage drawn by a Markov chain, with its mixing diagnostics.

    Attributes
    ----------
    x : Tensor
        ``(n, *input_shape)`` members, in the preimage's ``dtype`` on its
        ``device`` (the chains run in float64 on the CPU).
    method : str
        ``"billiard"`` or ``"hit-and-run"`` (uniform on the bounded set),
        ``"prior"`` (the prior restricted to the set, exact HMC),
        ``"manifold-walk"`` (uniform on a curved set, constrained random
        walk), ``"manifold-prior"`` or ``"exact"`` (independent draws, no
        chain).
    ess : float
        Smallest effective sample size over the monitored functionals (four
        random directions inside the set's affine hull and four random input
        entries), over the whole trace after burn-in (``nan`` for exact
        draws: they are independent, so ``ess = n``).
    rhat : float
        Largest split R-hat over the monitored functionals; near 1 (below
        about 1.01-1.05) when the chains have mixed.
    acceptance : float
        Fraction of accepted moves (1 for hit-and-run and exact HMC, which
        never reject; a billiard trajectory is rejected only after
        ``20 (n + p) + 1000`` reflections).
    chains, steps, burn, thin : int
        Chains run in parallel, steps per chain (burn-in included), burn-in
        steps, and the spacing of the kept states.
    seconds : float
    info : dict
        Method details: ``"step_size"`` of the manifold walk; for the
        reflective samplers ``"bounces"`` (reflections per trajectory),
        ``"time"`` (mean travel time), ``"rounded"`` (billiard),
        ``"components"`` and ``"jumps"`` (the acceptance rate of jumps between
        mixture components).
    """

    x: Tensor
    method: str
    ess: float
    rhat: float
    acceptance: float
    chains: int
    steps: int
    burn: int
    thin: int
    seconds: float
    info: dict[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:
        return (
            f"Samples(method={self.method!r}, n={self.x.shape[0]}, chains={self.chains}, "
            f"steps={self.steps}, ess={self.ess:.1f}, rhat={self.rhat:.3f}, "
            f"acceptance={self.acceptance:.2f}, seconds={self.seconds:.2f})"
        )


@dataclass(frozen=True)
class Extent:
    """The range of a linear functional ``dot(w, x)`` over a preimage.

    Attributes
    ----------
    low, high : float
        Its smallest and largest value (``-inf``/``inf`` when unbounded).
    x_low, x_high : Tensor or None
        Members ``(1, *input_shape)`` attaining them (None when unbounded).
    """

    low: float
    high: float
    x_low: Tensor | None
    x_high: Tensor | None

    def __iter__(self):  # so that ``lo, hi = pre.extent(w)`` works
        return iter((self.low, self.high))

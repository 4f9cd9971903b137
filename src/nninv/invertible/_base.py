"""The invertible-block contract, the report an inverse returns, and the sequential container.

Every block maps ``x`` to ``(y, logdet)`` and ``y`` back to ``(x, report)``;
closed-form blocks report zero iterations and a residual of zero, iterative
ones (:class:`~nninv.invertible.IResBlock`) the iterations and the residual of
their own equation per sample. :class:`InvertibleSequential` composes blocks
and aggregates their reports, and can check the whole inverse by running the
forward map on what it found.
"""

from __future__ import annotations

__all__ = ["CHECK_TOL", "InverseReport", "InvertibleBlock", "InvertibleSequential"]

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import cast

import torch
from torch import Tensor, nn

from ..errors import NNInvError

#: Default tolerance of :meth:`InvertibleSequential.inverse`'s forward check, per dtype,
#: relative to ``max(1, max |y|)`` of each sample.
CHECK_TOL = {torch.float64: 1e-9, torch.float32: 1e-5}


@dataclass(frozen=True)
class InverseReport:
    """How an inverse went, per sample.

    Attributes
    ----------
    converged : Tensor
        ``(N,)`` bool: the sample met every block's tolerance (and the forward
        check, when one was run). False for a non-finite result.
    iterations : Tensor
        ``(N,)`` long: iterations spent on the sample (summed over blocks; 0 for
        closed forms).
    residual : Tensor
        ``(N,)``: the largest residual of any block's own equation, in that
        block's output units (0 for closed forms).
    logdet : Tensor
        ``(N,)``: ``log |det dx/dy|`` of the inverse, i.e. minus the forward
        log-determinant at the returned ``x``.
    forward_residual : Tensor or None
        ``(N,)``: ``max |f(x) - y|`` measured by running the forward map on the
        returned ``x``, when checked.
    blocks : tuple of InverseReport
        The reports of the composed blocks, in forward order (empty for a block).
    """

    converged: Tensor
    iterations: Tensor
    residual: Tensor
    logdet: Tensor
    forward_residual: Tensor | None = None
    blocks: tuple[InverseReport, ...] = field(default=())

    @property
    def iterations_median(self) -> float:
        return float(self.iterations.double().median()) if len(self.iterations) else 0.0

    @property
    def iterations_max(self) -> int:
        return int(self.iterations.max()) if len(self.iterations) else 0

    @property
    def n_failed(self) -> int:
        return int((~self.converged).sum())

    def __repr__(self) -> str:
        n = len(self.converged)
        fr = "" if self.forward_residual is None else ", max_forward_residual="
        if self.forward_residual is not None:
            fr += f"{float(self.forward_residual.detach().max()) if n else float('nan'):.3g}"
        return (
            f"InverseReport(converged={n - self.n_failed}/{n}, iterations median="
            f"{self.iterations_median:g} max={self.iterations_max}{fr})"
        )

    @staticmethod
    def exact(x: Tensor, logdet: Tensor) -> InverseReport:
        """The report of a closed-form inverse: converged where ``x`` is finite."""
        n = x.shape[0]
        ok = torch.isfinite(x.reshape(n, -1)).all(dim=1)
        zeros = torch.zeros(n, dtype=x.dtype, device=x.device)
        its = torch.zeros(n, dtype=torch.long, device=x.device)
        return InverseReport(ok, its, zeros, logdet)


class InvertibleBlock(nn.Module):
    """Base class of nninv's invertible blocks.

    Notes
    -----
    - ``forward(x)`` MUST return ``(y, logdet)`` with ``y`` shaped like the
      block's output (``(N, *out_shape)``, the same as ``x`` except for
      :class:`Squeeze`) and ``logdet`` shaped ``(N,)`` holding
      ``log |det dy/dx|`` per sample, in ``x``'s dtype and device.
    - ``inverse(y)`` MUST return ``(x, report)`` with ``x`` shaped like the
      block's input and an :class:`InverseReport` whose ``logdet`` is
      ``log |det dx/dy|`` (minus the forward one: forward and inverse
      log-determinants cancel).
    - ``inverse`` MUST NOT raise or warn-and-continue silently when it fails to
      converge: a sample whose inverse is not within the block's tolerance
      MUST have ``report.converged`` False; it MAY still return its last iterate.
    - Closed-form blocks MUST be exact up to rounding (``f(inverse(y)) == y``
      to a few ulps); iterative blocks MUST stop on a tolerance and an
      iteration cap and report both the iterations and the residual per sample.
    - A block whose invertibility rests on a bound (``lipschitz() < 1`` for a
      residual block) MUST warn with :class:`~nninv.NNInvWarning` when the
      measured bound does not hold.
    - Blocks MUST NOT draw random numbers in ``forward`` or ``inverse``, so
      that the two are the same map.
    """

    #: Duck-typed by ``nninv.invert`` and ``nninv.diagnose``: the module is a bijection.
    bijective = True

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    def inverse(self, y: Tensor) -> tuple[Tensor, InverseReport]:  # pragma: no cover
        raise NotImplementedError

    def lipschitz(self) -> dict[str, float]:
        """Measured Lipschitz bounds that the block's invertibility rests on (none here)."""
        return {}


class InvertibleSequential(InvertibleBlock):
    """Blocks composed in order; the inverse runs them backwards and aggregates the reports.

    Parameters
    ----------
    *blocks : InvertibleBlock

    Examples
    --------
    >>> from nninv.invertible import ActNorm, AffineCoupling
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> f = InvertibleSequential(ActNorm(6), AffineCoupling(6, hidden=16)).double()
    >>> x = torch.randn(4, 6, dtype=torch.float64)
    >>> y, logdet = f(x)
    >>> x2, report = f.inverse(y)
    >>> bool(report.converged.all()), float((x2 - x).abs().max()) < 1e-12
    (True, True)
    """

    def __init__(self, *blocks: InvertibleBlock) -> None:
        super().__init__()
        for i, b in enumerate(blocks):
            if not isinstance(b, InvertibleBlock):
                raise NNInvError(f"block {i} ({type(b).__name__}) is not an nninv InvertibleBlock")
        self.blocks = nn.ModuleList(blocks)

    def __iter__(self) -> Iterator[InvertibleBlock]:
        # the constructor admits only InvertibleBlock modules
        return cast(Iterator[InvertibleBlock], iter(self.blocks))

    def __len__(self) -> int:
        return len(self.blocks)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        logdet = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
        for b in self.blocks:
            x, ld = b(x)
            logdet = logdet + ld
        return x, logdet

    def inverse(
        self, y: Tensor, *, check: bool = False, check_tol: float | None = None
    ) -> tuple[Tensor, InverseReport]:
        """Invert block by block, last first.

        Parameters
        ----------
        y : Tensor
        check : bool
            Also run the forward map on the result and require
            ``max |f(x) - y| <= check_tol * max(1, max |y|)`` per sample.
        check_tol : float, optional
            Defaults to :data:`CHECK_TOL` for ``y``'s dtype.
        """
        reports: list[InverseReport] = []
        x = y
        for b in reversed(list(self)):
            x, r = b.inverse(x)
            reports.append(r)
        reports.reverse()
        n = y.shape[0]
        conv = torch.ones(n, dtype=torch.bool, device=y.device)
        its = torch.zeros(n, dtype=torch.long, device=y.device)
        res = torch.zeros(n, dtype=y.dtype, device=y.device)
        logdet = torch.zeros(n, dtype=y.dtype, device=y.device)
        for r in reports:
            conv &= r.converged
            its += r.iterations
            res = torch.maximum(res, r.residual.to(res.dtype))
            logdet = logdet + r.logdet
        fres = None
        if check:
            tol = check_tol if check_tol is not None else CHECK_TOL.get(y.dtype, 1e-5)
            with torch.no_grad():
                y2, _ = self(x)
            yf = y.reshape(n, -1)
            fres = (y2.reshape(n, -1) - yf).abs().amax(dim=1)
            scale = yf.abs().amax(dim=1).clamp_min(1.0)
            conv &= fres <= tol * scale  # False for NaN
        conv &= torch.isfinite(x.reshape(n, -1)).all(dim=1)
        return x, InverseReport(conv, its, res, logdet, fres, tuple(reports))

    def lipschitz(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for i, b in enumerate(self):
            for k, v in b.lipschitz().items():
                out[f"{i}.{k}" if k else str(i)] = v
        return out

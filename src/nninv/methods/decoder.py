"""``method="decoder"``: a learned inverse's guess, projected onto the exact preimage.

A :class:`~nninv.learned.Decoder` ``g`` maps outputs to inputs, but ``f(g(y))``
is only near ``y``. This method starts at ``g(y)`` and takes the Gauss-Newton
projection of :mod:`.projection` (the one ``method="optimize"`` ends with)
onto ``{x : f(x) = y}`` within ``bounds``, in the metric of the decoder's
error covariance ``Sigma`` (fitted on held-out data): each step is
``x <- x - Sigma J^T (J Sigma J^T)^+ r``, so the correction goes where the
decoder is unsure. For a model whose output is an invertible activation of an
affine map (the seed's ``sigmoid(W x + b)``), the constraint is linear before
that activation and the first step lands on the most probable member of the
preimage under ``N(g(y), Sigma)``: the decoder's guess as the prior mean.
Samples whose projection does not reach the tolerance are reported as not
converged, with the violation reached.
"""

from __future__ import annotations

__all__ = ["DecoderOptions", "invert_decoder"]

import math
import time
from dataclasses import dataclass
from typing import Any

import torch

from ..checks import positive_int
from ..errors import NNInvError
from ..learned import Decoder
from ..targets import ClassTarget
from . import Problem, Solution, register
from .optimize import _bounds
from .projection import project


@dataclass(frozen=True)
class DecoderOptions:
    """Options of ``method="decoder"``, checked when built.

    Attributes
    ----------
    decoder : Decoder
        Required: a decoder trained for this model (``Decoder.fit(model, X)``
        or ``Decoder.load(path)``); its shapes must match the model's.
    bounds : (float, float) or (Tensor, Tensor), optional
        ``lo <= x <= hi`` elementwise, held exactly during the projection.
    x0 : Tensor, optional
        ``(N, *input_shape)`` starting points instead of ``g(y)`` (e.g. draws of a
        :class:`~nninv.learned.ConditionalFlow`); the metric stays the decoder's.
    start : Tensor, optional
        The older name of ``x0``; give one of them.
    max_iter : int
        Gauss-Newton iterations at most (30).
    """

    decoder: Any = None
    bounds: Any = None
    x0: Any = None
    start: Any = None
    max_iter: int = 30

    def __post_init__(self) -> None:
        dec = self.decoder
        if dec is None:
            raise NNInvError(
                "method='decoder' needs decoder=Decoder (train one with "
                "nninv.learned.Decoder.fit(model, X), or Decoder.load(path))"
            )
        if not isinstance(dec, Decoder):
            raise NNInvError(
                f"option decoder must be a nninv.learned.Decoder, got {type(dec).__name__}"
            )
        positive_int(self.max_iter, "option max_iter")
        if self.x0 is not None and self.start is not None:
            raise NNInvError("give x0 or its older name start, not both")


@register("decoder", options=DecoderOptions)
def invert_decoder(problem: Problem) -> Solution:
    """Project the decoder's ``g(y)`` onto the preimage of ``y``.

    Options: :class:`DecoderOptions` (``bounds`` and ``x0`` are
    :func:`nninv.invert`'s own arguments).

    Info
    ----
    ``raw_residual`` (N,): ``max |f(x0) - y|`` at the start (``g(y)`` or ``start``), by
    running the model; ``projection_iterations``; ``seconds``.

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> from nninv import invert
    >>> from nninv.learned import Decoder
    >>> g = torch.Generator().manual_seed(0)
    >>> f = nn.Sequential(nn.Linear(20, 3), nn.Sigmoid()).double()
    >>> X = torch.rand(500, 20, generator=g, dtype=torch.float64)
    >>> dec = Decoder.fit(f, X, hidden=(64,), epochs=5, progress=False)
    >>> inv = invert(f, f(X[:4]).detach(), method="decoder", decoder=dec)
    >>> bool(inv.converged.all()), float(inv.residual.max()) < 1e-10
    (True, True)
    """
    opts = problem.options_as(DecoderOptions)
    t0 = time.perf_counter()
    dec = opts.decoder
    if isinstance(problem.target, ClassTarget):
        raise NNInvError(
            "method='decoder' inverts exact outputs; for a ClassTarget use method='optimize'"
        )
    dec.check_model(problem.input_shape, problem.output_shape, problem.model)
    max_iter = opts.max_iter
    dtype, device = problem.dtype, problem.device
    lo, hi = _bounds(opts.bounds, problem.input_shape, dtype, device)
    N, n = problem.n, math.prod(problem.input_shape)
    y = problem.target
    assert not isinstance(y, ClassTarget)

    start, name = (opts.x0, "x0") if opts.x0 is not None else (opts.start, "option start")
    if start is None:
        x0 = dec(y).to(device, dtype).reshape(N, n)
    else:
        x0 = torch.as_tensor(start).to(device, dtype)
        if x0.shape[0] != N or x0[0].numel() != n:
            raise NNInvError(
                f"{name} has shape {tuple(x0.shape)}; expected ({N}, "
                f"{', '.join(map(str, problem.input_shape))})"
            )
        x0 = x0.reshape(N, n)
        if not bool(torch.isfinite(x0).all()):
            raise NNInvError(f"{name} contains NaN or inf")
    p = project(
        problem.chain,
        y,
        x0,
        tol=problem.tol,
        bounds=None if lo is None or hi is None else (lo, hi),
        metric=dec.error,
        max_iter=max_iter,
    )
    reasons = list(p.reasons)
    info = {
        "raw_residual": p.start_residual,
        "projection_iterations": p.iterations,
        "seconds": time.perf_counter() - t0,
    }
    return Solution(p.x.reshape(N, *problem.input_shape), p.iterations, p.converged, reasons, info)

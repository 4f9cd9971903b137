"""``nninv.posterior``: many inputs with one exact output, drawn from a learned posterior.

A :class:`~nninv.learned.ConditionalFlow` draws inputs ``x ~ p(x | y)``; each
draw is then moved onto the exact preimage ``{x : f(x) = y}`` by the
package's projection (:func:`nninv.methods.projection.project`, through the
decoder method: started at the draw, in the metric of the decoder's errors),
so every returned sample has the requested output to the tolerance, or is
flagged as not converged.
"""

from __future__ import annotations

__all__ = ["Posterior", "posterior"]

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ..checks import as_batch, positive_int
from ..errors import NNInvError
from ..learned import ConditionalFlow
from .invert import invert


@dataclass(frozen=True)
class Posterior:
    """Samples of ``p(x | f(x) = y)``, each projected onto the exact preimage.

    Attributes
    ----------
    x : Tensor
        ``(N, n, *input_shape)``: ``n`` samples for each of the ``N`` targets.
    residual : Tensor
        ``(N, n)`` ``max |f(x) - y|`` of each sample, measured by running the model.
    converged : Tensor
        ``(N, n)`` bool: ``residual <= tol``.
    info : dict
        ``diversity`` (N,): mean pairwise Euclidean distance between a target's
        converged samples; ``raw_residual`` (N, n): of the flow's draws before
        projection (clipped into the decoder's box, when it has one);
        ``tol``; ``reasons`` for the samples that did not converge.
    """

    x: Tensor
    residual: Tensor
    converged: Tensor
    info: dict[str, Any] = field(default_factory=dict)


def posterior(
    model: nn.Module,
    y: Any,
    flow: ConditionalFlow,
    n: int = 16,
    *,
    bounds: Any = None,
    seed: int = 0,
    tol: float | None = None,
    progress: bool = False,
) -> Posterior:
    """Draw ``n`` inputs for each output in ``y`` and project them onto its preimage.

    Parameters
    ----------
    model : torch.nn.Module
    y : Tensor or ndarray
        Outputs ``(N, *output_shape)`` (one unbatched output is accepted).
    flow : ConditionalFlow
        Trained for ``model`` (``ConditionalFlow.fit(model, X)``).
    n : int
        Samples per target.
    bounds : (lo, hi), optional
        Keep every input value in ``[lo, hi]`` during the projection.
    seed : int
        Seeds the flow's draws.
    tol : float, optional
        Residual tolerance (default: :func:`nninv.invert`'s for the dtype).
    progress : bool
        Show a tqdm bar on stderr (targets projected). The projection runs a few
        targets at a time either way; each sample's projection is its own.

    Returns
    -------
    Posterior
    """
    if not isinstance(flow, ConditionalFlow):
        raise NNInvError(f"flow must be a nninv.learned.ConditionalFlow, got {type(flow).__name__}")
    n = positive_int(n, "n")
    y = torch.as_tensor(y) if not isinstance(y, Tensor) else y
    y = as_batch(y, flow.output_shape, "y", "the flow's outputs")
    N = y.shape[0]
    draws = flow.sample(y, n, seed=seed)  # (N, n, *input_shape)
    box = flow.decoder.config.get("box")
    if box is not None:
        # a draw from the flow's far tail can leave the data's box by orders of magnitude;
        # the projection starts from its nearest point in the box instead
        draws = draws.clamp(box[0], box[1])
    from tqdm.auto import tqdm

    per = max(1, 256 // n)  # targets per call: a bar that moves, batches that still pay
    xs, residuals, convs, raws = [], [], [], []
    reasons: list[str | None] = []
    tol_used = None
    with tqdm(total=N, unit="target", desc="nninv posterior", disable=not progress) as bar:
        for i in range(0, N, per):
            k = min(per, N - i)
            inv = invert(
                model,
                y[i : i + k].repeat_interleave(n, dim=0),
                method="decoder",
                decoder=flow.decoder,
                start=draws[i : i + k].reshape(k * n, *flow.input_shape),
                bounds=bounds,
                tol=tol,
                input_shape=flow.input_shape,
            )
            xs.append(inv.x)
            residuals.append(inv.residual)
            convs.append(inv.converged)
            raws.append(inv.info["raw_residual"])
            tol_used = inv.info["tol"]
            r = inv.info.get("reasons")
            reasons.extend(r if r is not None else [None] * (k * n))
            bar.update(k)
    x = torch.cat(xs).reshape(N, n, *flow.input_shape)
    converged = torch.cat(convs).reshape(N, n)
    flat = x.reshape(N, n, -1).to(torch.float64)
    d = torch.cdist(flat, flat)
    ok = (converged[:, :, None] & converged[:, None, :]).to(d.dtype)
    ok = ok * (1 - torch.eye(n, dtype=d.dtype))
    diversity = (d * ok).sum((1, 2)) / ok.sum((1, 2)).clamp(min=1)
    info = {
        "diversity": diversity,
        "raw_residual": torch.cat(raws).reshape(N, n),
        "tol": tol_used,
        "reasons": reasons,
    }
    return Posterior(x, torch.cat(residuals).reshape(N, n), converged, info)

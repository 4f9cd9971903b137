"""Lower relaxation slopes chosen for the coverage of an inner polytope (alpha-CROWN).

On a box ``S``, the inner polytope ``{u in S : upper_r(u) <= 0 for every r}`` is
inside the region for *every* choice of the lower slopes ``beta`` in ``[a, 1]``
of the unstable neurons (each gives a valid upper bound ``upper_r`` of
``G_r y - g_r``, :func:`nninv.bounds.linear_bound`). Which choice is best depends
on where the region lies in ``S``: the slopes are optimised, per box and per row,
for the number of the box's sampled region points the polytope holds, through a
smooth surrogate ``sum_i sigmoid(-max_r upper_r(u_i) / T)`` maximised by Adam,
keeping per box the slopes that held the most points. This is the volume loss
of PREMAP (Zhang, Wang, Kwiatkowska & Zhang, "Provable preimage
under-approximation for neural networks", TACAS 2024), batched over boxes.
"""

from __future__ import annotations

__all__ = ["covering_bounds"]

import numpy as np
import torch
from torch import Tensor

from ..bounds import Layers, linear_bound, lower_slopes

#: Adam steps and step size of the slope search
STEPS = 12
LR = 0.25
#: the surrogate's temperature, relative to the mean size of the bound over the points
TEMP = 0.1


def _hits(A: Tensor, a0: Tensor, pts: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Per box: the soft count's argument ``max_r upper_r(u_i)`` and the hard count."""
    m = (torch.einsum("bmd,brd->bmr", pts, A) + a0.unsqueeze(-2)).amax(-1)
    return m, ((m <= 0) & mask).sum(-1)


def covering_bounds(
    layers: Layers,
    bounds: list[tuple[Tensor, Tensor]],
    G: Tensor,
    g: Tensor,
    pts: Tensor,
    mask: Tensor,
    steps: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """``(A, a0)`` per box with ``A u + a0 >= G y(u) - g`` on the box, covering ``pts``.

    ``bounds``: the layer bounds on a batch of ``B`` boxes; ``pts`` (``(B, M, d)``)
    the region samples of each box, ``mask`` (``(B, M)``) which of them are real.
    Returns numpy arrays ``(B, rows, d)`` and ``(B, rows)``; every iterate is
    sound, the one holding most of ``pts`` is kept per box.
    """
    steps = STEPS if steps is None else steps
    k = len(layers.slopes)
    B = pts.shape[0]
    C = G.expand(B, *G.shape)
    with torch.no_grad():
        A, a0 = linear_bound(layers, k, C, bounds, upper=True)
        a0 = a0 - g
        m, best = _hits(A, a0, pts, mask)
    best_A, best_a0 = A.clone(), a0.clone()
    unstable = [((l < 0) & (u > 0)).any() for l, u in bounds]
    if steps <= 0 or not any(bool(x) for x in unstable) or not bool(mask.any()):
        return best_A.numpy(), best_a0.numpy()
    # the temperature: the spread of the bound over the points, per box
    spread = torch.where(mask, m.abs(), torch.zeros_like(m)).sum(-1) / mask.sum(-1).clamp(min=1)
    temp = (TEMP * spread).clamp(min=1e-9).unsqueeze(-1)
    params = [
        s.unsqueeze(-2).expand(B, G.shape[0], -1).clone().requires_grad_(True)
        for s in lower_slopes(layers, bounds, k)
    ]
    m1 = [torch.zeros_like(p) for p in params]
    m2 = [torch.zeros_like(p) for p in params]
    n_pts = mask.sum(-1)
    for it in range(1, steps + 1):
        betas = [p.clamp(a, 1.0) for p, a in zip(params, layers.slopes)]
        A, a0 = linear_bound(layers, k, C, bounds, betas, upper=True)
        a0 = a0 - g
        m, hits = _hits(A, a0, pts, mask)
        with torch.no_grad():
            better = hits > best
            if bool(better.any()):
                best = torch.where(better, hits, best)
                best_A[better] = A[better].detach()
                best_a0[better] = a0[better].detach()
            if bool((best >= n_pts).all()):
                break
        soft = torch.where(mask, torch.sigmoid(-m / temp), torch.zeros_like(m)).sum()
        grads = torch.autograd.grad(soft, params)
        with torch.no_grad():
            for p, gr, u, v in zip(params, grads, m1, m2):
                u.mul_(0.9).add_(gr, alpha=0.1)
                v.mul_(0.999).addcmul_(gr, gr, value=0.001)
                p.add_(LR * (u / (1 - 0.9**it)) / ((v / (1 - 0.999**it)).sqrt() + 1e-12))
    return best_A.numpy(), best_a0.numpy()

"""Linear bound propagation (CROWN, alpha-CROWN) for piecewise-linear networks over a box.

The network is a list of dense float64 layers ``z_k = W_k h_{k-1} + b_k``
(``h_{-1} = x``) with ``h_k = max(z_k, a_k z_k)`` after every layer but the
last (:class:`Layers`; ``a_k = 0`` is ReLU, ``0 < a_k < 1`` leaky ReLU). Given
bounds ``l <= z_j <= u`` on the earlier layers, :func:`linear_bound` finds an
affine function of the input below (or above) each row of ``C z_k`` on the box
the bounds hold on, backwards: each activation is replaced by a linear lower or
upper bound according to the sign of its coefficient (for an unstable neuron,
``l < 0 < u``, the upper chord through ``(l, a l)`` and ``(u, u)`` and a lower
line ``beta z`` with ``beta`` in ``[a, 1]``, both valid on all of ``[l, u]``).
:func:`crown` minimises that function over the box in closed form. Every
``beta`` gives a sound bound; :func:`alpha_crown` chooses them per row by
projected gradient ascent. Bounds of every layer (:func:`layer_bounds`) come
from the same backward pass with ``C = [I; -I]``, intersected with interval
arithmetic.

Every function accepts leading batch axes: bounds and boxes of shape
``(..., n)`` (one box per batch entry), coefficients ``(..., rows, n)``.

References
----------
Zhang, Weng, Chen, Hsieh & Daniel (2018), "Efficient neural network robustness
certification with general activation functions", NeurIPS (CROWN).
Xu, Zhang, Wang, Wang, Jana, Lin & Hsieh (2021), "Fast and complete: enabling
complete neural network verification with rapid and massively parallel
incomplete verifiers", ICLR (alpha-CROWN).

Examples
--------
>>> import torch
>>> one, zero = torch.ones(1, 1, dtype=torch.float64), torch.zeros(1, dtype=torch.float64)
>>> net = Layers([one, one], [zero, zero], [0.0])
>>> lo, hi = -one[0], one[0]
>>> C = one
>>> A, a0 = linear_bound(net, 1, C, layer_bounds(net, lo, hi), upper=True)
>>> A.tolist(), a0.tolist()  # relu(x) <= (x + 1) / 2 on [-1, 1]
([[0.5]], [0.5])
"""

from __future__ import annotations

__all__ = [
    "Layers",
    "alpha_crown",
    "concretize",
    "crown",
    "layer_bounds",
    "linear_bound",
    "lower_slopes",
]

from dataclasses import dataclass

import torch
from torch import Tensor

_F64 = torch.float64

Pairs = list[tuple[Tensor, Tensor]]


@dataclass
class Layers:
    """Dense float64 layers ``(W_k, b_k)``; ``slopes[k]`` is the activation after layer ``k``.

    ``W_k`` has shape ``(n_k, n_{k-1})``; there is one slope per layer but the last.
    """

    Ws: list[Tensor]
    bs: list[Tensor]
    slopes: list[float]

    def forward(self, x: Tensor) -> Tensor:
        """The network on rows ``x`` (shape ``(N, n_in)``)."""
        h = x
        for W, b, a in zip(self.Ws[:-1], self.bs[:-1], self.slopes):
            z = h @ W.T + b
            h = torch.where(z >= 0, z, a * z)
        return h @ self.Ws[-1].T + self.bs[-1]


def _relax(l: Tensor, u: Tensor, a: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per neuron: upper slope and intercept, default lower slope, and the unstable mask."""
    active, dead = l >= 0, u <= 0
    unstable = ~(active | dead)
    span = torch.where(unstable, u - l, torch.ones_like(u))
    one, a_t = torch.ones_like(l), torch.full_like(l, a)
    s_up = torch.where(unstable, (u - a * l) / span, torch.where(active, one, a_t))
    t_up = torch.where(unstable, a * l - s_up * l, torch.zeros_like(l))
    # the lower line with the smaller area over [l, u] (CROWN's adaptive choice)
    s_lo = torch.where(active | (unstable & (u >= -l)), one, a_t)
    return s_up, t_up, s_lo, unstable


def lower_slopes(net: Layers, bounds: Pairs, k: int) -> list[Tensor]:
    """CROWN's lower slopes of the layers before ``k`` (the start of alpha-CROWN)."""
    return [_relax(l, u, a)[2] for (l, u), a in zip(bounds[:k], net.slopes)]


def linear_bound(
    net: Layers,
    k: int,
    C: Tensor,
    bounds: Pairs,
    betas: list[Tensor] | None = None,
    upper: bool = False,
) -> tuple[Tensor, Tensor]:
    """``(A, a0)`` with ``A x + a0 <= C z_k(x)`` (``>=`` with ``upper``) row by row.

    Valid for every ``x`` at which ``bounds[j]`` bound ``z_j`` for ``j < k`` (the
    box those bounds were computed on). ``C`` has shape ``(..., rows, n_k)``;
    ``A`` is ``(..., rows, n_in)`` and ``a0`` ``(..., rows)``. ``betas[j]``
    (shape ``(..., rows, n_j)``, values in ``[a_j, 1]``) overrides the lower
    slopes of the unstable neurons of layer ``j``: every such choice is sound.
    """
    if upper:
        A, a0 = linear_bound(net, k, -C, bounds, betas)
        return -A, -a0
    lam = C @ net.Ws[k]
    const = C @ net.bs[k]
    for j in range(k - 1, -1, -1):
        l, u = bounds[j]
        s_up, t_up, s_lo, unstable = _relax(l, u, net.slopes[j])
        s_up, t_up = s_up.unsqueeze(-2), t_up.unsqueeze(-2)
        s_lo = s_lo.unsqueeze(-2)
        if betas is not None:
            s_lo = torch.where(unstable.unsqueeze(-2), betas[j], s_lo)
        pos, neg = lam.clamp(min=0), lam.clamp(max=0)
        lam_z = pos * s_lo + neg * s_up
        const = const + (neg * t_up).sum(-1) + lam_z @ net.bs[j]
        lam = lam_z @ net.Ws[j]
    return lam, const


def concretize(A: Tensor, a0: Tensor, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
    """The minimum of each row of ``A x + a0`` over ``lo <= x <= hi``, and where it is."""
    lo_, hi_ = lo.unsqueeze(-2), hi.unsqueeze(-2)
    bound = a0 + (A.clamp(min=0) * lo_).sum(-1) + (A.clamp(max=0) * hi_).sum(-1)
    return bound, torch.where(A > 0, lo_, hi_)


def crown(
    net: Layers,
    k: int,
    C: Tensor,
    bounds: Pairs,
    lo: Tensor,
    hi: Tensor,
    betas: list[Tensor] | None = None,
    corner: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """A lower bound on each row of ``C @ z_k`` over the box ``lo <= x <= hi``.

    With ``corner``, also the box corners (one row per row of ``C``) where
    the linear bound is smallest: good starting points for an attack.

    ``bounds[j]`` bounds ``z_j`` for ``j < k``; ``betas`` as in
    :func:`linear_bound`.
    """
    bound, where = concretize(*linear_bound(net, k, C, bounds, betas), lo, hi)
    return (bound, where) if corner else bound


def _interval(net: Layers, k: int, bounds: Pairs, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
    if k == 0:
        hl, hu = lo, hi
    else:
        l, u = bounds[k - 1]
        a = net.slopes[k - 1]
        hl, hu = torch.where(l >= 0, l, a * l), torch.where(u >= 0, u, a * u)
    W, b = net.Ws[k], net.bs[k]
    Wp, Wn = W.clamp(min=0).T, W.clamp(max=0).T
    return hl @ Wp + hu @ Wn + b, hu @ Wp + hl @ Wn + b


def layer_bounds(
    net: Layers,
    lo: Tensor,
    hi: Tensor,
    alpha_steps: int = 0,
    start: Pairs | None = None,
) -> Pairs:
    """Bounds on every hidden pre-activation: interval arithmetic intersected with CROWN.

    With ``alpha_steps > 0``, the bounds of the neurons still unstable (in some
    batch entry) are optimised (alpha-CROWN) for that many steps; ``start``
    (earlier sound bounds) is intersected with the new ones.
    """
    bounds: Pairs = []
    for k in range(len(net.slopes)):
        l, u = _interval(net, k, bounds, lo, hi)
        if start is not None:
            l, u = torch.maximum(l, start[k][0]), torch.minimum(u, start[k][1])
        if k > 0:
            n_k = net.Ws[k].shape[0]
            rows = None
            if alpha_steps > 0:
                rows = ((l < 0) & (u > 0)).reshape(-1, n_k).any(0).nonzero().flatten()
            n = n_k if rows is None else rows.numel()
            if n:
                eye = torch.eye(n_k, dtype=_F64)
                if rows is not None:
                    eye = eye[rows]
                C = torch.cat([eye, -eye])
                if alpha_steps > 0:
                    C = C.expand(*lo.shape[:-1], *C.shape)
                    lb = alpha_crown(net, k, C, bounds, lo, hi, alpha_steps)
                else:
                    got = crown(net, k, C, bounds, lo, hi)
                    assert isinstance(got, Tensor)
                    lb = got
                if rows is None:
                    l, u = torch.maximum(l, lb[..., :n]), torch.minimum(u, -lb[..., n:])
                else:
                    l, u = l.clone(), u.clone()
                    l[..., rows] = torch.maximum(l[..., rows], lb[..., :n])
                    u[..., rows] = torch.minimum(u[..., rows], -lb[..., n:])
        bounds.append((l, u))
    return bounds


def alpha_crown(
    net: Layers,
    k: int,
    C: Tensor,
    bounds: Pairs,
    lo: Tensor,
    hi: Tensor,
    steps: int = 20,
    lr: float = 0.1,
    stop_at: Tensor | None = None,
) -> Tensor:
    """Like :func:`crown`, with the lower slopes optimised per row (alpha-CROWN).

    Every iterate is a sound bound; the best seen per row is returned. With
    ``stop_at``, the search stops once every row's bound exceeds it.
    """
    with torch.no_grad():
        best = crown(net, k, C, bounds, lo, hi)
    assert isinstance(best, Tensor)
    if steps <= 0 or (stop_at is not None and bool((best > stop_at).all())):
        return best
    rows = C.shape[:-1]
    params = [
        s.unsqueeze(-2).expand(*rows, -1).clone().requires_grad_(True)
        for s in lower_slopes(net, bounds, k)
    ]
    # Adam by hand: importing torch.optim costs seconds of start-up (it pulls in dynamo)
    m1 = [torch.zeros_like(p) for p in params]
    m2 = [torch.zeros_like(p) for p in params]
    for it in range(1, steps + 1):
        betas = [p.clamp(a, 1.0) for p, a in zip(params, net.slopes)]
        val = crown(net, k, C, bounds, lo, hi, betas)
        assert isinstance(val, Tensor)
        with torch.no_grad():
            best = torch.maximum(best, val)
        if stop_at is not None and bool((best > stop_at).all()):
            break
        grads = torch.autograd.grad(val.sum(), params)
        with torch.no_grad():
            for p, g, a, b in zip(params, grads, m1, m2):
                a.mul_(0.9).add_(g, alpha=0.1)
                b.mul_(0.999).addcmul_(g, g, value=0.001)
                step = lr * (a / (1 - 0.9**it)) / ((b / (1 - 0.999**it)).sqrt() + 1e-8)
                p.add_(step)  # ascent: the bound is maximised
    return best.detach()

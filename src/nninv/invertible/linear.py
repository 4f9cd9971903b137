"""Glow's linear blocks: ActNorm, the LU-parametrised invertible 1x1 convolution, and squeeze.

All three have closed-form inverses. Inputs are ``(N, C)`` vectors or
``(N, C, H, W)`` images; ActNorm and the 1x1 convolution act on the channel
axis (a vector is one pixel with ``C`` channels), squeeze trades a 2x2 block
of pixels for four channels. The 1x1 convolution is parametrised as
zuko's ``LULinearTransform`` is, after a fixed permutation (``W = P L U``, ``U``
unit upper triangular), with the diagonal of ``L`` kept away from zero as
``sign * exp(log_s)``; the factors are formed with fixed triangular masks,
which is several times cheaper per training step at 784 channels than
building zuko's transform (two ``tril``/``triu`` calls on the full matrix).

References
----------
Kingma and Dhariwal, "Glow: Generative flow with invertible 1x1 convolutions", NeurIPS 2018.
"""

from __future__ import annotations

__all__ = ["ActNorm", "InvConv1x1", "Squeeze"]

import torch
from torch import Tensor, nn

from ..errors import NNInvError
from ._base import InverseReport, InvertibleBlock


def _channels_last(x: Tensor, channels: int, name: str) -> tuple[Tensor, int]:
    """``x`` as ``(..., C)`` rows and the number of pixels per sample."""
    if x.ndim == 2 and x.shape[1] == channels:
        return x, 1
    if x.ndim == 4 and x.shape[1] == channels:
        return x.permute(0, 2, 3, 1), x.shape[2] * x.shape[3]
    raise NNInvError(
        f"{name}({channels}) expects (N, {channels}) or (N, {channels}, H, W), got {tuple(x.shape)}"
    )


def _channels_first(h: Tensor, like: Tensor) -> Tensor:
    return h if like.ndim == 2 else h.permute(0, 3, 1, 2)


class ActNorm(InvertibleBlock):
    """Per-channel affine map ``y = (x + b) exp(s)``, initialised from the first batch.

    In training mode the first forward pass sets ``b`` and ``s`` so that the
    batch has zero mean and unit variance per channel (a channel's standard
    deviation is floored at ``min_std``: constant MNIST pixels would otherwise
    get a huge scale).

    Parameters
    ----------
    channels : int
    min_std : float
    """

    # buffers registered in __init__
    initialized: Tensor

    def __init__(self, channels: int, *, min_std: float = 0.1) -> None:
        super().__init__()
        self.channels = channels
        self.min_std = float(min_std)
        self.bias = nn.Parameter(torch.zeros(channels))
        self.log_scale = nn.Parameter(torch.zeros(channels))
        self.register_buffer("initialized", torch.tensor(False))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h, pixels = _channels_last(x, self.channels, "ActNorm")
        if self.training and not bool(self.initialized):
            with torch.no_grad():
                rows = h.reshape(-1, self.channels)
                self.bias.copy_(-rows.mean(0))
                std = rows.std(0) if rows.shape[0] > 1 else torch.ones_like(self.bias)
                self.log_scale.copy_(-std.clamp_min(self.min_std).log())
                self.initialized.fill_(True)
        y = (h + self.bias) * self.log_scale.exp()
        logdet = (pixels * self.log_scale.sum()).expand(x.shape[0])
        return _channels_first(y, x), logdet

    def inverse(self, y: Tensor) -> tuple[Tensor, InverseReport]:
        h, pixels = _channels_last(y, self.channels, "ActNorm")
        x = _channels_first(h * (-self.log_scale).exp() - self.bias, y)
        logdet = (-pixels * self.log_scale.sum()).expand(y.shape[0])
        return x, InverseReport.exact(x, logdet.to(y.dtype))


class InvConv1x1(InvertibleBlock):
    """Invertible 1x1 convolution ``y = P L U x`` per pixel (an invertible linear map on vectors).

    ``L`` is lower triangular with diagonal ``sign * exp(log_s)``, ``U`` unit
    upper triangular and ``P`` a fixed permutation; it starts as a random
    rotation (seeded by ``seed``). ``log |det|`` is ``H W sum(log_s)``.

    Parameters
    ----------
    channels : int
    seed : int
        Seed of the initial rotation.
    """

    # buffers registered in __init__
    order: Tensor
    sign: Tensor
    mask: Tensor
    eye: Tensor

    def __init__(self, channels: int, *, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        q, _ = torch.linalg.qr(torch.randn(channels, channels, generator=g, dtype=torch.float64))
        P, L, U = torch.linalg.lu(q)
        d = torch.diagonal(U)
        # zuko's LU has the diagonal in L and a unit U: move U's diagonal into L
        lower = L * d
        upper = U / d[:, None]
        self.channels = channels
        self.register_buffer("order", P.argmax(dim=0).argsort())
        self.register_buffer("sign", torch.sign(d).float())
        self.log_s = nn.Parameter(d.abs().log().float())
        self.lower = nn.Parameter(torch.tril(lower, -1).float())
        self.upper = nn.Parameter(torch.triu(upper, 1).float())
        self.register_buffer("mask", torch.ones(channels, channels).tril(-1), persistent=False)
        self.register_buffer("eye", torch.eye(channels), persistent=False)

    def factors(self) -> tuple[Tensor, Tensor]:
        """``(L, U)``: ``L`` lower triangular, diagonal ``sign exp(log_s)``; ``U`` unit upper."""
        L = self.lower * self.mask + torch.diag_embed(self.sign * self.log_s.exp())
        U = self.upper * self.mask.T + self.eye
        return L, U

    def weight(self) -> Tensor:
        """The ``(C, C)`` matrix ``W`` with ``y = W x``."""
        L, U = self.factors()
        return (L @ U)[self.order]

    def _needs_weight_grad(self) -> bool:
        return torch.is_grad_enabled() and any(p.requires_grad for p in self.parameters())

    def matrices(self, dtype: torch.dtype, device: torch.device) -> tuple[Tensor, Tensor]:
        """``(W, W^-1)`` formed in float64 and rounded once to ``dtype`` (constants, cached).

        Used when no gradient with respect to the weights is needed (inference,
        frozen weights): products with the factors ``L``, ``U`` in float32
        lose several digits at 784 channels (the LU factors of a rotation are
        far worse conditioned than the rotation), one product with ``W`` does
        not. The cache is keyed on the parameters' storage and version, so an
        optimiser step or ``load_state_dict`` refreshes it.
        """
        params = (self.lower, self.upper, self.log_s)
        key = (dtype, device, *((p.data_ptr(), p._version) for p in params))
        cache = self.__dict__.get("_matrices")
        if cache is not None and cache[0] == key:
            return cache[1], cache[2]
        with torch.no_grad():
            L, U = (m.to(torch.float64) for m in self.factors())
            w = (L @ U)[self.order]
            w_inv = torch.linalg.inv(w)
        out = (w.to(device, dtype), w_inv.to(device, dtype))
        self.__dict__["_matrices"] = (key, *out)
        return out

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h, pixels = _channels_last(x, self.channels, "InvConv1x1")
        if self._needs_weight_grad():
            L, U = self.factors()
            # L (U h) as two products with the batch: cheaper than forming L U (C^3) per step
            y = ((h @ U.mT) @ L.mT)[..., self.order]
        else:
            w, _ = self.matrices(h.dtype, h.device)
            y = h @ w.mT
        logdet = (pixels * self.log_s.sum()).expand(x.shape[0])
        return _channels_first(y, x), logdet.to(x.dtype)

    def inverse(self, y: Tensor) -> tuple[Tensor, InverseReport]:
        h, pixels = _channels_last(y, self.channels, "InvConv1x1")
        if self._needs_weight_grad():
            L, U = self.factors()
            rows = h[..., self.order.argsort()].reshape(-1, self.channels).T
            # two triangular solves with all pixels as right-hand sides (zuko solves one at a time)
            v = torch.linalg.solve_triangular(L, rows, upper=False)
            v = torch.linalg.solve_triangular(U, v, upper=True, unitriangular=True)
            x = v.T.reshape(h.shape)
        else:
            _, w_inv = self.matrices(h.dtype, h.device)
            x = h @ w_inv.mT
        logdet = (-pixels * self.log_s.sum()).expand(y.shape[0])
        x = _channels_first(x, y)
        return x, InverseReport.exact(x, logdet.to(y.dtype))


class Squeeze(InvertibleBlock):
    """Invertible downsampling ``(N, C, H, W) -> (N, 4C, H/2, W/2)`` (a permutation; logdet 0)."""

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if x.ndim != 4 or x.shape[2] % 2 or x.shape[3] % 2:
            raise NNInvError(
                f"Squeeze expects (N, C, H, W) with even H and W, got {tuple(x.shape)}"
            )
        n, c, h, w = x.shape
        y = x.reshape(n, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4)
        y = y.reshape(n, 4 * c, h // 2, w // 2)
        return y, torch.zeros(n, dtype=x.dtype, device=x.device)

    def inverse(self, y: Tensor) -> tuple[Tensor, InverseReport]:
        if y.ndim != 4 or y.shape[1] % 4:
            raise NNInvError(f"Squeeze.inverse expects (N, 4C, H, W), got {tuple(y.shape)}")
        n, c4, h, w = y.shape
        x = y.reshape(n, c4 // 4, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3)
        x = x.reshape(n, c4 // 4, 2 * h, 2 * w)
        return x, InverseReport.exact(x, torch.zeros(n, dtype=y.dtype, device=y.device))

"""A data-free prior from a network's own BatchNorm running statistics.

Every BatchNorm layer of a trained network keeps the running mean and variance
of its input features over the training set. :class:`BatchNormPrior` scores
candidate inputs by how far the statistics of those features, when the
candidates go through the network, lie from the running ones (the
feature-distribution loss of DeepInversion), so a model file alone says which
inputs look like its training data.
"""

from __future__ import annotations

__all__ = ["BatchNormPrior"]

import copy
import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from ..errors import NNInvError
from ..model.chain import Chain, resolve_input_shape
from ._base import Prior, _check_weight
from .regularizers import TotalVariation

_STATISTICS = ("sample", "batch")


class _Stop(Exception):
    """Raised by the last BatchNorm hook: the rest of the forward pass is not needed."""


class BatchNormPrior(Prior):
    """An unnormalised prior from BatchNorm running statistics, ``log p(x) = -weight * E(x)``.

    ``E(x) = sum_l m_l (|mu_l(x) - mu_l| + |var_l(x) - var_l|) + tv * TV(x)``, where for each
    BatchNorm layer ``l`` of the model, ``mu_l`` and ``var_l`` are its running mean and
    variance (per channel), ``mu_l(x)`` and ``var_l(x)`` the mean and (biased) variance of
    its input features when ``x`` goes through the model in eval mode, ``|.|`` the
    Euclidean norm over channels (smoothed, ``sqrt(|v|^2 + eps^2) - eps``, so that it is
    differentiable at zero and still zero there), ``m_l`` is ``first_multiplier`` for the
    first layer and 1 for the others, and ``TV`` the total variation of the inputs
    (:class:`~nninv.priors.TotalVariation`, only when ``tv > 0``).

    What the statistics are taken over (``statistics``):

    - ``"sample"`` (default): each sample on its own, so ``log_prob`` of a batch of one is
      defined and each row depends on its own sample only, which is what
      ``method="optimize"`` (a per-sample search) needs. For ``BatchNorm2d`` (and
      ``BatchNorm1d`` on ``(N, C, L)``) the mean and variance of each channel are taken over
      the sample's spatial positions. ``BatchNorm1d`` on flat features ``(N, C)`` has only
      one value per channel in a sample, so there the rule pools over channels: with
      ``z_c = (h_c - mu_c) / sqrt(var_c + bn.eps)`` the standardised features, the term is
      ``sqrt(C) (|mean_c z_c| + |mean_c z_c^2 - 1|)``, zero when the sample's features
      have the running mean and variance on average over channels.
    - ``"batch"``: the statistics of the whole batch per channel, as DeepInversion
      computes them (over samples and positions); every row gets ``E / N``, so
      ``log_prob(x).sum()`` is the batch's energy and rows are coupled. A flat
      ``BatchNorm1d`` then needs at least 2 samples.

    The model is copied at construction (one copy per dtype and device met) and run in
    eval mode through forward hooks that are removed after each call, so the caller's
    model, its mode and its running statistics are never changed; the forward pass
    stops after the last BatchNorm layer.

    Parameters
    ----------
    model : torch.nn.Module or Chain
        A network with at least one BatchNorm layer that tracks running statistics
        (a plain PyTorch module, or a Keras/ONNX/TorchScript model from
        :func:`nninv.load_model`, whose BatchNorm layers are ``nn.BatchNorm1d``/``2d``).
    weight : float
        Positive weight of the whole energy.
    tv : float
        Weight of the total-variation term on the inputs (0: none).
    statistics : {"sample", "batch"}
        What the feature statistics are taken over; see above.
    first_multiplier : float
        Weight of the first BatchNorm layer's term relative to the others (DeepInversion
        uses 10 on ImageNet; 1 here).
    eps : float
        Smoothing of the norms, positive.
    input_shape : sequence of int, optional
        The model's input shape without the batch dimension (``event_shape``), when the
        model does not tell it (``model.input_shape`` or a leading ``nn.Linear``); without
        it ``event_shape`` is unset and inputs go into the model as they are given.

    Raises
    ------
    NNInvError
        For a model without BatchNorm layers with running statistics (say so, and that
        an exporter may have folded them into the convolutions), a bad weight, ``tv``,
        or ``statistics``, ``eps`` or ``first_multiplier`` that is not positive.

    References
    ----------
    Yin, Molchanov, Alvarez, Li, Mallya, Hoiem, Jha & Kautz (2020), "Dreaming to
    distill: data-free knowledge transfer via DeepInversion", CVPR. Ioffe & Szegedy
    (2015), "Batch normalization", ICML.

    Examples
    --------
    >>> from torch import nn
    >>> f = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.ReLU(), nn.Linear(3, 2))
    >>> prior = BatchNormPrior(f.double().eval())
    >>> prior.event_shape, prior.n_layers
    ((4,), 1)
    >>> prior.log_prob(torch.zeros(2, 4, dtype=torch.float64)).shape
    torch.Size([2])
    """

    def __init__(
        self,
        model: nn.Module | Chain,
        weight: float = 1.0,
        *,
        tv: float = 0.0,
        statistics: str = "sample",
        first_multiplier: float = 1.0,
        eps: float = 1e-6,
        input_shape: Sequence[int] | None = None,
    ) -> None:
        if isinstance(model, Chain):
            if input_shape is None:
                input_shape = model.input_shape
            model = model.model
        if not isinstance(model, nn.Module):
            raise NNInvError(
                f"BatchNormPrior expects a torch.nn.Module or a Chain, got {type(model).__name__}"
            )
        self.weight = _check_weight(weight, "BatchNormPrior weight")
        self.first_multiplier = _check_weight(first_multiplier, "BatchNormPrior first_multiplier")
        self.eps = _check_weight(eps, "BatchNormPrior eps")
        if isinstance(tv, bool) or not isinstance(tv, (int, float)) or not (0 <= tv < math.inf):
            raise NNInvError(f"BatchNormPrior tv must be a non-negative finite number, got {tv!r}")
        self.tv = float(tv)
        if statistics not in _STATISTICS:
            raise NNInvError(
                f"BatchNormPrior statistics must be one of {_STATISTICS}, got {statistics!r}"
            )
        self.statistics = statistics
        names = [
            (name, m)
            for name, m in model.named_modules()
            if isinstance(m, _BatchNorm) and m.running_mean is not None
        ]
        if not names:
            opaque = isinstance(model, torch.jit.ScriptModule)
            raise NNInvError(
                f"BatchNormPrior needs a model with BatchNorm layers that keep running "
                f"statistics; {type(model).__name__} has none "
                + (
                    "it can see: a TorchScript model is rebuilt as layers only when its input "
                    "shape is known (give --input-shape, or load_model(path, input_shape=...))"
                    if opaque
                    else "(an exporter may have folded them into the convolutions before it)"
                )
            )
        self.layer_names = [n or type(m).__name__ for n, m in names]
        try:
            self.event_shape = resolve_input_shape(model, input_shape)
        except NNInvError:
            pass  # a conv net that does not tell its input shape: inputs go in as given
        self._model = copy.deepcopy(model).eval().requires_grad_(False)
        self._copies: dict[Any, tuple[nn.Module, list[_BatchNorm]]] = {}
        self._tv = TotalVariation(self.tv, image_shape=self._image_shape()) if self.tv else None

    @property
    def n_layers(self) -> int:
        """Number of BatchNorm layers whose statistics the prior matches."""
        return len(self.layer_names)

    def _image_shape(self) -> tuple[int, ...] | None:
        if not hasattr(self, "event_shape"):
            return None
        s = self.event_shape
        if len(s) >= 2:
            return s[-3:] if len(s) >= 3 else s
        side = math.isqrt(s[0])
        return (side, side) if side * side == s[0] and side >= 2 else None

    def _model_for(self, dtype: torch.dtype, device: torch.device) -> tuple[nn.Module, list[Any]]:
        key = (dtype, device)
        if key not in self._copies:
            m = copy.deepcopy(self._model).to(dtype=dtype, device=device).eval()
            bns = [mod for mod in m.modules() if isinstance(mod, _BatchNorm)]
            bns = [b for b in bns if b.running_mean is not None]
            self._copies[key] = (m, bns)
        return self._copies[key]

    def features(self, x: Tensor) -> list[tuple[_BatchNorm, Tensor]]:
        """The input of every BatchNorm layer for inputs ``x`` ``(N, *event_shape)``, in call order.

        Differentiable with respect to ``x``; the forward pass stops after the last layer.
        """
        if not x.is_floating_point():
            raise NNInvError(f"BatchNormPrior expects floating inputs, got dtype {x.dtype}")
        if hasattr(self, "event_shape"):
            x = self._flat(x).reshape(x.shape[0], *self.event_shape)
        model, bns = self._model_for(x.dtype, x.device)
        seen: list[tuple[_BatchNorm, Tensor]] = []
        todo = set(map(id, bns))

        def hook(mod: nn.Module, args: tuple[Any, ...]) -> None:
            assert isinstance(mod, _BatchNorm)  # hooked on BatchNorm layers only
            seen.append((mod, args[0]))
            todo.discard(id(mod))
            if not todo:
                raise _Stop

        handles = [b.register_forward_pre_hook(hook) for b in bns]
        try:
            model(x)
        except _Stop:
            pass
        finally:
            for h in handles:
                h.remove()
        return seen

    def energy(self, x: Tensor) -> Tensor:
        """``E(x)`` of each sample (N,) without the weight; see the class docstring."""
        N = x.shape[0]
        total = x.new_zeros(N)
        for i, (bn, h) in enumerate(self.features(x)):
            m = self.first_multiplier if i == 0 else 1.0
            total = total + m * self._term(bn, h)
        if self._tv is not None:
            total = total + self._tv.weight * self._tv.penalty(x)
        return total

    def _norm(self, v: Tensor) -> Tensor:
        e = self.eps
        return (v.pow(2).sum(-1) + e * e).sqrt() - e

    def _term(self, bn: _BatchNorm, h: Tensor) -> Tensor:
        N, C = h.shape[0], h.shape[1]
        # only layers with running statistics are kept (see _model_for)
        assert bn.running_mean is not None and bn.running_var is not None
        mu0 = bn.running_mean.to(h.dtype)
        var0 = bn.running_var.to(h.dtype)
        batch = self.statistics == "batch"
        if h.ndim == 2 and not batch:
            z = (h - mu0) / (var0 + bn.eps).sqrt()
            d1, d2 = z.mean(1), z.pow(2).mean(1) - 1
            return math.sqrt(C) * (self._norm(d1[:, None]) + self._norm(d2[:, None]))
        if batch:
            if h.ndim == 2 and N < 2:
                raise NNInvError(
                    "BatchNormPrior(statistics='batch') needs at least 2 samples for the "
                    f"flat BatchNorm1d layer ({C} features); got a batch of 1"
                )
            hc = h.transpose(0, 1).reshape(C, -1)  # channels first, samples and positions
            mean, var = hc.mean(1), hc.var(1, unbiased=False)
            e = self._norm(mean - mu0) + self._norm(var - var0)
            return e.expand(N) / N
        hs = h.reshape(N, C, -1)
        mean, var = hs.mean(2), hs.var(2, unbiased=False)
        return self._norm(mean - mu0) + self._norm(var - var0)

    def log_prob(self, x: Tensor) -> Tensor:
        """``-weight * E(x)`` (N,), differentiable with respect to ``x``."""
        if x.ndim < 2 or x.shape[0] == 0:
            raise NNInvError(
                f"BatchNormPrior expects a non-empty batch (N, *{self.event_shape}), "
                f"got shape {tuple(x.shape)}"
            )
        return -self.weight * self.energy(x)

    def sample(self, n: int, seed: int | None = None) -> Tensor:
        raise NNInvError(
            "BatchNormPrior is an unnormalised energy on the model's features and cannot be "
            "sampled; use it with method='optimize' (start from noise with x0=...)"
        )

    def __repr__(self) -> str:
        return (
            f"BatchNormPrior({self.n_layers} layers, weight={self.weight:g}, tv={self.tv:g}, "
            f"statistics={self.statistics!r})"
        )

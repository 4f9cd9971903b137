"""A learned posterior: a conditional normalising flow for ``p(x | y)`` around a decoder.

:class:`ConditionalFlow` models what a :class:`~nninv.learned.Decoder` cannot
say, the spread of the inputs that share an output: ``x = g(y) + s * z`` with
``z`` drawn from a conditional masked autoregressive flow (zuko's ``MAF``,
conditioned on the decoder's standardised features of ``y``) and ``s`` the
per-input standard deviation of the decoder's errors; when the decoder has a box
(``[0, 1]`` for images), the same in the box's logits, ``x = sigmoid(logit(g(y))
+ s * z)`` scaled into the box, so draws never leave it. Samples are only
approximately consistent with the model; :func:`nninv.posterior` projects each
onto the exact preimage. zuko is an optional dependency
(``pip install 'nninv[learned]'``); its API stays inside this module. Like the
decoder, a flow trains on the model's device (or ``X``'s, on an accelerator),
samples on the device of its ``y``, moves with :meth:`ConditionalFlow.to`, and
loads onto the CPU.
"""

from __future__ import annotations

__all__ = ["ConditionalFlow"]

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..checks import as_batch, positive_int
from ..errors import NNInvError
from ..serialization import read, write
from .decoder import Decoder, _as_tensor, _outputs, train_device

FORMAT = "nninv.ConditionalFlow"
GRAD_CLIP = 1.0  # max gradient norm per step
SCALE_FLOOR = 0.1  # the least per-input scale, as a share of the errors' RMS
ALPHA = 1e-3  # logits are taken of alpha + (1 - 2 alpha) a, a in [0, 1]
DEQUANT = 256  # dequantisation: a -> (a (DEQUANT - 1) + u) / DEQUANT, u ~ U(0, 1)
VERSION = 1


def _zuko() -> Any:
    try:
        import zuko
    except ImportError:
        raise NNInvError(
            "ConditionalFlow needs zuko: pip install 'nninv[learned]' (or pip install zuko)"
        ) from None
    return zuko


def _build(config: dict[str, Any]) -> nn.Module:
    zuko = _zuko()
    return zuko.flows.MAF(
        features=config["features"],
        context=config["context"],
        transforms=config["transforms"],
        hidden_features=tuple(config["hidden"]),
    )


class ConditionalFlow:
    """``p(x | y)`` as a decoder's guess plus a conditional flow over its errors.

    Build one with :meth:`fit` or :meth:`load`; draw with :meth:`sample`, and
    project the draws onto the exact preimage with :func:`nninv.posterior`.

    Attributes
    ----------
    decoder : Decoder
        ``g``, the mean of the draws before the flow's correction.
    flow : torch.nn.Module
        The conditional flow over standardised errors ``z = (x - g(y)) / s``
        (with ``config["space"] == "logit"``, of the errors in the box's logits).
    scale : Tensor
        ``(n,)`` float32 ``s``, the errors' standard deviation per input value
        (floored at a tenth of their RMS).
    config : dict
    history : list of float
        Mean negative log-likelihood per epoch (empty for a loaded flow).
    """

    def __init__(
        self,
        decoder: Decoder,
        flow: nn.Module,
        scale: Tensor,
        config: dict[str, Any],
        history: Sequence[float] = (),
    ) -> None:
        self.decoder = decoder
        self.flow = flow.eval()
        self.scale = scale
        self.config = dict(config)
        self.history = list(history)
        self.input_shape = decoder.input_shape
        self.output_shape = decoder.output_shape

    @property
    def device(self) -> torch.device:
        """Where the flow's weights are."""
        return self.scale.device

    def to(self, device: str | torch.device) -> ConditionalFlow:
        """Move the decoder, the flow and ``scale`` to ``device`` (in place); return self."""
        self.decoder.to(device)
        self.flow.to(device)
        self.scale = self.scale.to(device)
        return self

    def __repr__(self) -> str:
        return (
            f"ConditionalFlow(MAF x{self.config['transforms']}, hidden {self.config['hidden']}, "
            f"y {self.output_shape} -> x {self.input_shape})"
        )

    @classmethod
    def fit(
        cls,
        model: nn.Module,
        X: Any,
        *,
        decoder: Decoder | None = None,
        transforms: int = 3,
        hidden: Sequence[int] = (256, 256),
        epochs: int = 12,
        batch_size: int = 256,
        lr: float = 1e-3,
        space: str = "auto",
        seed: int = 0,
        progress: bool | None = None,
    ) -> ConditionalFlow:
        """Train the flow on the errors ``x - g(f(x))`` of ``decoder`` over ``X``.

        Parameters
        ----------
        model : torch.nn.Module
        X : Tensor or ndarray
            Inputs ``(N, *input_shape)``, e.g. training images (at least 10).
        decoder : Decoder, optional
            Trained for ``model``; default: ``Decoder.fit(model, X, seed=seed)``.
        transforms, hidden : int, sequence of int
            Autoregressive transforms and the hidden widths of each one's network.
        epochs, batch_size, lr : int, int, float
            Adam on the negative log-likelihood. 12 epochs on the 60,000 MNIST
            training images take about 140 s on 2 CPU threads (bench_learned (c)).
        space : {"auto", "logit", "linear"}
            Where the errors are modelled. ``"logit"`` (the default when the
            decoder has a box): ``x`` is mapped into the box's logits after a
            dequantisation of ``1 / 256`` of the box, so every draw lies inside the
            box and keeps its spread (clipping Gaussian-like draws into ``[0, 1]``
            cost MNIST samples a third of their pairwise distance).
            ``"linear"`` models ``x - g(y)`` itself (the default without a box).
        seed : int
        progress : bool, optional
            Show a progress bar (default: when the training has over 2,000 steps).

        Notes
        -----
        Trains on the model's device, or on ``X``'s when ``X`` is a tensor on an
        accelerator; a given ``decoder`` is moved there.
        """
        _zuko()
        device = train_device(model, X)
        X = _as_tensor(X, "X").detach().to("cpu", torch.float32)
        if X.ndim < 2 or X.shape[0] < 10 or not bool(torch.isfinite(X).all()):
            raise NNInvError(
                f"X must be finite and shaped (N, *input_shape) with N >= 10, got {tuple(X.shape)}"
            )
        for name, v in (("epochs", epochs), ("batch_size", batch_size), ("transforms", transforms)):
            positive_int(v, name)
        if space not in ("auto", "logit", "linear"):
            raise NNInvError(f"space must be 'auto', 'logit' or 'linear', got {space!r}")
        if decoder is None:
            decoder = Decoder.fit(model, X, seed=seed, progress=progress)
        Y = _outputs(model, X)
        decoder.check_model(tuple(X.shape[1:]), tuple(Y.shape[1:]), model)
        decoder.to(device)
        X, Y = X.to(device), Y.to(device)
        box = decoder.config.get("box")
        if space == "auto":
            space = "logit" if box is not None else "linear"
        if space == "logit" and box is None:
            raise NNInvError("space='logit' needs a decoder with a box (Decoder.fit(box=...))")
        with torch.no_grad():
            G = decoder(Y)
            if space == "logit":
                assert box is not None  # checked above
                g = torch.Generator().manual_seed(seed + 2)
                U = torch.rand(X.shape, generator=g).to(device)
                R = _to_logit(X, box, U) - _to_logit(G, box)
            else:
                R = X - G
            R = R.reshape(len(X), -1)
            C = decoder.net.get_submodule("features")(Y)
        # a floor on the scale: inputs that barely vary (MNIST's border pixels, std 4e-4)
        # would otherwise give the flow standardised errors of 200 and more, and its
        # training spikes to NLL 1e7 on them
        scale = R.std(0).clamp(min=SCALE_FLOOR * float(R.pow(2).mean().sqrt()) + 1e-12)
        Z = R / scale
        config = {
            "features": int(Z.shape[1]),
            "context": int(C.shape[1]),
            "transforms": transforms,
            "hidden": [int(h) for h in hidden],
            "space": space,
        }
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            flow = _build(config).to(device)
        history = _train(flow, C, Z, epochs, batch_size, lr, seed, progress)
        return cls(decoder, flow, scale, config, history)

    def sample(self, y: Any, n: int, seed: int | None = None) -> Tensor:
        """``n`` draws for each output in ``y``: ``(N, n, *input_shape)`` in ``y``'s dtype.

        The draws are not yet exact: :func:`nninv.posterior` projects them. They
        are drawn on ``y``'s device (the flow moves there first, as :meth:`to`
        would); a seed gives the same draws on the same device.
        """
        n = positive_int(n, "n")
        y = as_batch(_as_tensor(y, "y"), self.output_shape, "y", "the flow's outputs")
        dtype = y.dtype if y.dtype.is_floating_point else torch.float32
        self.to(y.device)
        y32 = y.detach().to(torch.float32)
        cuda = [y.device] if y.device.type == "cuda" else []
        with torch.no_grad(), torch.random.fork_rng(devices=cuda):
            if seed is not None:
                torch.manual_seed(seed)
            g = self.decoder(y32).reshape(len(y32), -1)
            c = self.decoder.net.get_submodule("features")(y32)
            z = self.flow(c).sample((n,))  # (n, N, features)
            if self.config.get("space", "linear") == "logit":
                box = self.decoder.config["box"]
                x = _from_logit(_to_logit(g, box)[None] + self.scale * z, box)
            else:
                x = g[None] + self.scale * z
        x = x.transpose(0, 1).reshape(len(y32), n, *self.input_shape)
        return x.to(y.device, dtype)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """One safetensors file: the decoder, the flow, the scale and both configs."""
        tensors = self.decoder.tensors("decoder.")
        tensors.update({f"flow.{k}": v for k, v in self.flow.state_dict().items()})
        tensors["scale"] = self.scale
        meta = {"config": json.dumps(self.config)}
        meta["decoder_config"] = json.dumps(self.decoder.config)
        return write(path, tensors, FORMAT, VERSION, meta)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> ConditionalFlow:
        """Read a flow written by :meth:`save` (safetensors; nothing is unpickled).

        A file written before decoders recorded their model loads too; its
        decoder is then checked against a model by shape only.
        """
        meta, tensors = read(path, FORMAT, (VERSION,), "conditional flow")
        try:
            config = json.loads(meta["config"])
            decoder = Decoder.from_tensors(json.loads(meta["decoder_config"]), tensors, "decoder.")
            flow = _build(config)
            flow.load_state_dict(
                {k[5:]: v for k, v in tensors.items() if k.startswith("flow.")}, strict=True
            )
            scale = tensors["scale"]
        except (KeyError, TypeError, ValueError, RuntimeError) as e:
            raise NNInvError(
                f"flow file '{path}' is inconsistent ({type(e).__name__}: {e}): the file is corrupt"
            ) from None
        return cls(decoder, flow, scale, config)


def _to_logit(x: Tensor, box: Sequence[float], u: Tensor | None = None) -> Tensor:
    """Box -> logits; with ``u``, data dequantised first (so no value sits on the edge)."""
    lo, hi = box
    a = ((x - lo) / (hi - lo)).clamp(0.0, 1.0)
    if u is not None:
        a = (a * (DEQUANT - 1) + u) / DEQUANT
    return torch.logit(ALPHA + (1 - 2 * ALPHA) * a)


def _from_logit(v: Tensor, box: Sequence[float]) -> Tensor:
    lo, hi = box
    a = ((torch.sigmoid(v) - ALPHA) / (1 - 2 * ALPHA)).clamp(0.0, 1.0)
    return lo + (hi - lo) * a


def _train(
    flow: nn.Module,
    C: Tensor,
    Z: Tensor,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
    progress: bool | None,
) -> list[float]:
    from tqdm.auto import tqdm

    g = torch.Generator().manual_seed(seed + 1)
    opt = torch.optim.Adam(flow.parameters(), lr=lr)
    total = epochs * math.ceil(len(Z) / batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=total)
    show = total > 2000 if progress is None else progress
    history: list[float] = []
    flow.train()
    with tqdm(total=total, desc="training flow", unit="step", disable=not show) as bar:
        for _ in range(epochs):
            perm = torch.randperm(len(Z), generator=g)
            acc = 0.0
            for i in range(0, len(Z), batch_size):
                idx = perm[i : i + batch_size]
                loss = -flow(C[idx]).log_prob(Z[idx]).mean() / Z.shape[1]
                opt.zero_grad(set_to_none=True)
                loss.backward()
                # the one-cycle peak can throw a MAF far off (NLL 1e7 on MNIST without this)
                torch.nn.utils.clip_grad_norm_(flow.parameters(), GRAD_CLIP)
                opt.step()
                sched.step()
                acc += float(loss.detach()) * len(idx)
                bar.update(1)
            history.append(acc / len(Z))
            bar.set_postfix(nll=f"{history[-1]:.4g}")
    flow.eval()
    return history

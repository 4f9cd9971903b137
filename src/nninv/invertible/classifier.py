"""``BijectiveClassifier``: an invertible net whose 784 outputs are 10 logits and a nuisance z.

Because the map is a bijection, the preimage of a class output is exactly the
set of ``z``: fixing the logits and drawing ``z`` from the data's distribution
of ``z`` (a Gaussian fitted to training ``z``'s, per class) gives many inputs
with one output, and swapping ``z`` between two digits makes metamers (the same
logits, a different image).

References
----------
Jacobsen, Behrmann, Zemel and Bethge, "Excessive invariance causes adversarial
vulnerability", ICLR 2019.
"""

from __future__ import annotations

__all__ = ["BijectiveClassifier"]

import json
import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..checks import model_dtype_device
from ..errors import NNInvError
from ..serialization import read, write
from ._base import InverseReport, InvertibleSequential
from .coupling import AffineCoupling
from .iresnet import IResBlock
from .linear import ActNorm, InvConv1x1

#: What ``save`` writes in the file's metadata, and what ``load`` accepts (files of the
#: first release say ``"nninv.BijectiveClassifier/1"``: the same format and version).
FORMAT = "nninv.BijectiveClassifier"
VERSION = 1


class BijectiveClassifier(nn.Module):
    """ActNorm, affine couplings each followed by an invertible linear mix, a head, i-ResNet blocks.

    ``model(x)`` is the full output ``(N, features)``: the first ``classes``
    values are the logits, the rest the nuisance ``z``. The head is an affine
    coupling that transforms the ``classes`` logit coordinates conditioned on
    the other ``features - classes`` (a classifier network reading nearly the
    whole input, as in an ordinary MLP), which is what makes the net train to
    an MLP's accuracy in a few epochs; the couplings before it and the i-ResNet
    blocks after it mix logits and ``z``.

    Parameters
    ----------
    features : int
        Input size (784 for MNIST; images are flattened).
    classes : int
    couplings : int
        Half-and-half affine coupling blocks (each followed by an :class:`InvConv1x1`).
    hidden : int
        Width of those couplings' conditioner networks.
    head_hidden : int
        Width of the head coupling's conditioner (the classifier proper).
    iresnet : int
        i-ResNet blocks at the end.
    iresnet_hidden : int
    lipschitz : float
        The i-ResNet blocks' bound ``c < 1``.
    slope : float
        The couplings' smallest scale factor (their log-scales stay within
        ``+-log(1/slope)``), which keeps the stack well conditioned. On MNIST
        0.5 gives a Jacobian condition number near 50 at the same accuracy as
        0.1 (near 190).
    mixing : {"fixed", "learned"}
        Whether the :class:`InvConv1x1` after each coupling keeps its seeded
        random rotation (condition number 1) or is trained. Trained mixing
        reached condition numbers of 1e4 per matrix on MNIST (1e7 for the whole
        net), which makes a float32 inverse meaningless; fixed mixing trains
        to the same accuracy.
    seed : int
        Seed of every initial weight.

    Examples
    --------
    >>> f = BijectiveClassifier(16, classes=3, couplings=2, hidden=8, head_hidden=8,
    ...                         iresnet_hidden=4).double()
    >>> x = torch.rand(5, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    >>> x2, report = f.inverse(f(x))
    >>> bool(report.converged.all()), float((x2 - x).abs().max()) < 1e-9
    (True, True)
    """

    #: Duck-typed by ``nninv.invert`` (the exact inverse) and ``nninv.diagnose``.
    bijective = True

    def __init__(
        self,
        features: int = 784,
        classes: int = 10,
        *,
        couplings: int = 2,
        hidden: int = 256,
        head_hidden: int = 512,
        iresnet: int = 1,
        iresnet_hidden: int = 64,
        lipschitz: float = 0.9,
        slope: float = 0.5,
        mixing: str = "fixed",
        seed: int = 0,
    ) -> None:
        super().__init__()
        if not 1 <= classes < features:
            raise NNInvError(f"need 1 <= classes < features, got {classes} and {features}")
        if mixing not in ("fixed", "learned"):
            raise NNInvError(f"mixing must be 'fixed' or 'learned', got {mixing!r}")
        self.config: dict[str, Any] = dict(
            features=features,
            classes=classes,
            couplings=couplings,
            hidden=hidden,
            head_hidden=head_hidden,
            iresnet=iresnet,
            iresnet_hidden=iresnet_hidden,
            lipschitz=lipschitz,
            slope=slope,
            mixing=mixing,
            seed=seed,
        )
        self.features, self.classes = features, classes
        self.input_shape = (features,)
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            blocks: list[Any] = [ActNorm(features)]
            first = torch.arange(features) < features // 2
            for k in range(couplings):
                mask = first if k % 2 else ~first
                blocks.append(AffineCoupling(features, hidden, mask=mask, slope=slope))
                mix = InvConv1x1(features, seed=seed + k)
                if mixing == "fixed":  # a random rotation, condition number 1
                    mix.requires_grad_(False)
                blocks.append(mix)
            rest = torch.arange(features) >= classes
            blocks.append(AffineCoupling(features, head_hidden, mask=rest, slope=slope))
            for k in range(iresnet):
                blocks.append(
                    IResBlock(features, iresnet_hidden, lipschitz=lipschitz, seed=seed + 100 + k)
                )
        self.flow = InvertibleSequential(*blocks)
        self.register_buffer("z_mean", torch.zeros(0))
        self.register_buffer("z_chol", torch.zeros(0))

    # -- the map ---------------------------------------------------------------------------
    def _flat(self, x: Tensor) -> Tensor:
        if x.ndim < 2 or math.prod(x.shape[1:]) != self.features:
            raise NNInvError(
                f"BijectiveClassifier({self.features}) got input of shape {tuple(x.shape)}"
            )
        return x.reshape(x.shape[0], self.features)

    def forward(self, x: Tensor) -> Tensor:
        return self.flow(self._flat(x))[0]

    def logits(self, x: Tensor) -> Tensor:
        """The ``(N, classes)`` logits."""
        return self(x)[:, : self.classes]

    def split(self, y: Tensor) -> tuple[Tensor, Tensor]:
        """``(logits, z)`` of outputs ``y``."""
        return y[:, : self.classes], y[:, self.classes :]

    def inverse(self, y: Tensor, *, check: bool = True) -> tuple[Tensor, InverseReport]:
        """The exact inverse, with a per-sample report (and the forward check by default)."""
        return self.flow.inverse(self._flat(y), check=check)

    def lipschitz(self) -> dict[str, float]:
        """Measured ``Lip(g)`` of each i-ResNet block (each must be < 1), by block index."""
        return self.flow.lipschitz()

    def tighten(self) -> None:
        """Make every i-ResNet block's spectral-norm estimate tight (done after fitting)."""
        for b in self.flow:
            if isinstance(b, IResBlock):
                b.tighten()

    # -- training --------------------------------------------------------------------------
    def fit(
        self,
        X: Tensor,
        labels: Tensor,
        *,
        epochs: int = 5,
        batch_size: int = 128,
        lr: float = 1e-3,
        clip: float = 1.0,
        z_weight: float = 0.0,
        seed: int = 0,
        progress: bool = True,
    ) -> BijectiveClassifier:
        """Train on ``(X, labels)`` by cross-entropy on the logits (Adam, one-cycle schedule).

        Parameters
        ----------
        X : Tensor
            ``(N, features)`` or images that flatten to it.
        labels : Tensor
            ``(N,)`` class indices.
        epochs, batch_size, lr : int, int, float
            ``lr`` is the peak of the one-cycle schedule.
        clip : float
            Largest gradient norm of a step (``inf``: no clipping).
        z_weight : float
            Weight of an optional flow likelihood term on ``z``,
            ``0.5 |z|^2 - logdet`` per value (on dequantised inputs), which
            keeps the map volume-aware and ``z`` Gaussian-like.
        seed : int
            Seeds the batch order and the dequantisation noise (the caller's RNG is untouched).
        progress : bool
            A tqdm bar over the batches.

        Returns
        -------
        BijectiveClassifier
            ``self``, trained, in eval mode, with tight spectral-norm estimates;
            ``self.history`` holds the mean loss of each epoch.

        Raises
        ------
        NNInvError
            On bad data, or if the loss becomes non-finite (training diverged:
            lower ``lr`` or ``clip``); the weights are then those of the failed step.
        """
        from tqdm.auto import tqdm

        X = self._flat(torch.as_tensor(X))
        labels = torch.as_tensor(labels).long()
        if len(X) != len(labels) or len(X) == 0:
            raise NNInvError(f"X has {len(X)} samples but labels {len(labels)}")
        if not bool(torch.isfinite(X).all()):
            raise NNInvError("X contains NaN or inf")
        if int(labels.min()) < 0 or int(labels.max()) >= self.classes:
            raise NNInvError(f"labels must be in [0, {self.classes}), got {labels.unique()}")
        if not clip > 0:
            raise NNInvError(f"clip must be positive, got {clip}")
        dtype, device = model_dtype_device(self)
        X, labels = X.to(device, dtype), labels.to(device)
        g = torch.Generator().manual_seed(seed)
        params = [q for q in self.parameters() if q.requires_grad]
        opt = torch.optim.Adam(params, lr=lr)
        n_batches = math.ceil(len(X) / batch_size)
        sched = torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=lr, total_steps=epochs * n_batches, pct_start=0.2
        )
        self.train()
        self.history: list[float] = []
        with tqdm(
            total=epochs * n_batches, desc="BijectiveClassifier", disable=not progress
        ) as bar:
            for epoch in range(epochs):
                order = torch.randperm(len(X), generator=g).to(X.device)
                total = 0.0
                for i in range(n_batches):
                    idx = order[i * batch_size : (i + 1) * batch_size]
                    xb = X[idx]
                    if z_weight:
                        noise = torch.rand(xb.shape, generator=g).to(xb) / 256
                        xb = xb + noise
                    y, logdet = self.flow(xb)
                    loss = F.cross_entropy(y[:, : self.classes], labels[idx])
                    if z_weight:
                        z = y[:, self.classes :]
                        nll = 0.5 * z.pow(2).sum(1) - logdet
                        loss = loss + z_weight * nll.mean() / self.features
                    value = float(loss.detach())
                    if not math.isfinite(value):
                        self.eval()
                        raise NNInvError(
                            f"BijectiveClassifier.fit diverged: loss {value} at epoch {epoch}, "
                            f"batch {i} (lr {lr}, clip {clip}); lower lr or clip"
                        )
                    opt.zero_grad()
                    loss.backward()
                    torch.nn.utils.clip_grad_norm_(params, clip)
                    opt.step()
                    sched.step()
                    total += value
                    bar.update(1)
                    bar.set_postfix(loss=f"{value:.3f}")
                self.history.append(total / n_batches)
        self.eval()
        self.tighten()
        return self

    @torch.no_grad()
    def accuracy(self, X: Tensor, labels: Tensor, batch_size: int = 2000) -> float:
        """Fraction of ``X`` classified as ``labels``."""
        X = self._flat(torch.as_tensor(X))
        dtype, device = model_dtype_device(self)
        right = 0
        for i in range(0, len(X), batch_size):
            pred = self.logits(X[i : i + batch_size].to(device, dtype)).argmax(1).cpu()
            right += int((pred == torch.as_tensor(labels[i : i + batch_size])).sum())
        return right / len(X)

    # -- the preimage of a class output: the z's ----------------------------------------------
    @torch.no_grad()
    def fit_z(self, X: Tensor, labels: Tensor | None = None, *, ridge: float = 1e-3) -> None:
        """Fit a Gaussian to the ``z`` of ``X`` (one per class when ``labels`` are given)."""
        X = self._flat(torch.as_tensor(X))
        dtype, device = model_dtype_device(self)
        zs = torch.cat(
            [
                self(X[i : i + 2000].to(device, dtype))[:, self.classes :]
                for i in range(0, len(X), 2000)
            ]
        ).double()
        groups = [zs]
        if labels is not None:
            lab = torch.as_tensor(labels)
            groups = [zs[lab == c] for c in range(self.classes)]
        means, chols = [], []
        eye = torch.eye(zs.shape[1], dtype=torch.float64)
        for zc in groups:
            if len(zc) < 2:
                raise NNInvError(f"fit_z: a class has {len(zc)} samples; need at least 2")
            mu = zc.mean(0)
            cov = torch.cov(zc.T) + ridge * eye * torch.cov(zc.T).diagonal().mean()
            means.append(mu)
            chols.append(torch.linalg.cholesky(cov))
        self.z_mean = torch.stack(means).to(device, dtype)
        self.z_chol = torch.stack(chols).to(device, dtype)

    def sample_z(self, n: int, cls: int = 0, *, generator: torch.Generator | None = None) -> Tensor:
        """``n`` draws of ``z`` from the fitted Gaussian of class ``cls`` (or of all data)."""
        if self.z_mean.numel() == 0:
            raise NNInvError("sample_z: call fit_z(X, labels) first")
        k = cls if self.z_mean.shape[0] > 1 else 0
        eps = torch.randn(n, self.z_mean.shape[1], generator=generator).to(self.z_mean)
        return self.z_mean[k] + eps @ self.z_chol[k].T

    def preimage_samples(
        self,
        logits: Tensor,
        n: int,
        *,
        cls: int | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, InverseReport]:
        """``n`` inputs whose logits are all ``logits``: ``f^-1(logits, z)`` with ``z`` drawn.

        ``cls`` picks the class Gaussian of ``z`` (default the logits' argmax).
        """
        logits = torch.as_tensor(logits).reshape(1, self.classes).to(self.z_mean)
        k = int(logits.argmax()) if cls is None else cls
        z = self.sample_z(n, k, generator=generator)
        return self.inverse(torch.cat([logits.expand(n, -1), z], dim=1))

    @torch.no_grad()
    def metamers(self, x_logits: Tensor, x_z: Tensor) -> tuple[Tensor, InverseReport]:
        """Inputs with the logits of ``x_logits`` and the ``z`` of ``x_z`` (pairwise)."""
        a, b = self(x_logits), self(x_z)
        return self.inverse(torch.cat([a[:, : self.classes], b[:, self.classes :]], dim=1))

    # -- files -----------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """One safetensors file: the weights, the fitted z-Gaussians and the JSON config."""
        meta = {"config": json.dumps(self.config)}
        return write(path, self.state_dict(), FORMAT, VERSION, meta)

    @classmethod
    def load(cls, path: str | Path) -> BijectiveClassifier:
        """Read a model written by :meth:`save` (nothing is unpickled)."""
        meta, tensors = read(path, FORMAT, (VERSION,), "BijectiveClassifier")
        model = cls(**json.loads(meta["config"]))
        model.z_mean = tensors.get("z_mean", model.z_mean)
        model.z_chol = tensors.get("z_chol", model.z_chol)
        dtype = tensors["flow.blocks.0.bias"].dtype
        model.to(dtype)
        try:
            model.load_state_dict(tensors)
        except RuntimeError as e:
            raise NNInvError(f"'{path}': weights do not match the config: {e}") from None
        return model.eval()

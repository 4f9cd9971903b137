"""The experiments behind ``nninv demo``, reusable by the benchmark scripts.

The seed's model is one dense layer with a sigmoid, ``f(x) = sigmoid(x W^T + b)``
(784 -> 10), trained for a few epochs of Adam with binary cross-entropy against
one-hot labels. Its held-out outputs are inverted four ways: ``pinv`` (the
minimum-norm member of each preimage), ``analytic`` with a
:class:`~nninv.priors.GaussianPrior` and ``analytic`` with a
:class:`~nninv.priors.GaussianMixturePrior`, both fitted on the training images,
and ``decoder``: a :class:`~nninv.learned.Decoder` (the seed's "reverse net",
10 -> 784) trained on the same images, its guesses projected onto the exact
preimage.
Every reconstruction reproduces the output to rounding; they differ in how
much they look like digits, which PSNR, SSIM and the accuracy of an
independently trained classifier measure. The reverse experiment trains a
generator ``g(c) = sigmoid(c W^T + b)`` (10 -> 784) from one-hot codes to
images; ``W`` has full column rank, so ``pinv`` recovers each code exactly.

Inversions run on a float64 copy of each trained model, so residuals show the
method's exactness rather than float32 rounding.
"""

from __future__ import annotations

__all__ = [
    "DemoConfig",
    "DemoReport",
    "MethodResult",
    "ReverseResult",
    "accuracy",
    "evaluate_method",
    "fit_priors",
    "format_table",
    "invert_batched",
    "load_split",
    "reverse_experiment",
    "run_demo",
    "seed_model",
    "train_classifier",
    "train_seed_model",
]

import contextlib
import copy
import math
import os
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..checks import model_dtype_device
from ..datasets import DATASETS, Dataset, default_mnist_dir, load_dataset, load_mnist
from ..errors import NNInvError, NNInvWarning
from ..figures import save_grid
from ..learned import Decoder
from ..methods.invert import invert
from ..metrics import psnr, ssim
from ..priors import GaussianMixturePrior, GaussianPrior, Prior

_M = TypeVar("_M", bound=nn.Module)

#: Row labels of the table and figure, with the ``invert`` method and prior each uses.
METHODS: dict[str, str] = {"pinv": "pinv", "gaussian": "analytic", "mixture": "analytic"}


@dataclass(frozen=True)
class DemoConfig:
    """Settings of one demo run.

    Attributes
    ----------
    dataset : str
        One of :data:`nninv.datasets.DATASETS`.
    data_dir : str, path-like or None
        For ``"mnist"``: the folder of IDX files (None: :func:`default_mnist_dir`).
    n_test : int or None
        Held-out images for the embedded sets (None: 1,000, at most a fifth of
        the set); full MNIST uses its own 10,000-image test set.
    n_inverted : int or None
        Invert only the first this many test outputs (None: all).
    n_prior : int or None
        Fit the priors on only the first this many training images (None: all).
    epochs : int
        Epochs of Adam for the seed's model, the classifier and the generator.
    components : int
        Mixture components.
    seed : int
        Seeds the split, the training runs and k-means.
    n_shown : int
        Test images in the figure.
    batch_size : int
        Targets per call to :func:`nninv.invert`.
    decoder_epochs : int
        Epochs of the decoder's training (on the prior's images); 0 skips the
        decoder row, which is most of a run's time.
    """

    dataset: str = "mnist5k"
    data_dir: str | os.PathLike[str] | None = None
    n_test: int | None = None
    n_inverted: int | None = None
    n_prior: int | None = None
    epochs: int = 5
    components: int = 20
    seed: int = 0
    n_shown: int = 12
    batch_size: int = 2500
    decoder_epochs: int = 30

    @classmethod
    def quick(cls, **overrides: object) -> DemoConfig:
        """Settings for a run of a few seconds.

        Training is cheap and keeps its 5 epochs; the priors are fitted on 1,500
        images with 5 mixture components, and 200 outputs are inverted.
        """
        kwargs: dict = {
            "components": 5,
            "n_inverted": 200,
            "n_prior": 1500,
            "decoder_epochs": 10,
        }
        kwargs.update(overrides)
        return cls(**kwargs)


@dataclass(frozen=True)
class MethodResult:
    """Reconstructions of the test images by one method, and how good they are.

    Attributes
    ----------
    name : str
        Row label: ``"originals"``, ``"pinv"``, ``"gaussian"``, ``"mixture"`` or
        ``"decoder"``.
    x : Tensor
        Reconstructions ``(N, *image_shape)`` (the originals for ``"originals"``).
    residual : float
        Largest ``max |f(x) - y|`` over the batch (0 for the originals).
    psnr, ssim : float
        Means over the batch against the originals (values not clipped to [0, 1]).
    accuracy : float
        Accuracy of the independent classifier on ``x``, in [0, 1].
    converged : int
        Samples that met ``invert``'s tolerance.
    seconds : float
        Wall time of the inversion.
    """

    name: str
    x: Tensor
    residual: float
    psnr: float
    ssim: float
    accuracy: float
    converged: int
    seconds: float


@dataclass(frozen=True)
class ReverseResult:
    """Outcome of the reverse experiment (10 -> 784, inverted back to 10).

    Attributes
    ----------
    images : Tensor
        ``g(e_k)`` for the ten one-hot codes, ``(10, *image_shape)``.
    codes : Tensor
        The codes ``pinv`` recovered from those images, ``(10, 10)``.
    max_error : float
        ``max |codes - I|``.
    accuracy : float
        Fraction of codes whose largest entry is the right class.
    residual : float
        Largest output residual ``max |g(codes) - g(I)|``.
    """

    images: Tensor
    codes: Tensor
    max_error: float
    accuracy: float
    residual: float


@dataclass(frozen=True)
class DemoReport:
    """Everything one demo run measured, and where its figures went."""

    config: DemoConfig
    dataset: str
    n_train: int
    n_test: int
    model_accuracy: float
    classifier_accuracy: float
    rows: list[MethodResult]
    reverse: ReverseResult
    timings: dict[str, float]
    figures: list[Path] = field(default_factory=list)


def seed_model(n_in: int = 784, n_out: int = 10) -> nn.Sequential:
    """The seed's model, ``sigmoid(x W^T + b)``, untrained."""
    return nn.Sequential(nn.Linear(n_in, n_out), nn.Sigmoid())


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    # Batches of 128 x 784 are too small for intra-op threads to pay, and on a
    # busy machine their spin-waiting slows training down tens of times.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def _batches(n: int, batch_size: int, gen: torch.Generator) -> list[Tensor]:
    return list(torch.randperm(n, generator=gen).split(batch_size))


def _fit(
    model: _M,
    inputs: Tensor,
    targets: Tensor,
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    *,
    epochs: int,
    lr: float,
    batch_size: int,
    seed: int,
    desc: str,
    progress: bool,
) -> _M:
    from tqdm.auto import tqdm

    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    n_steps = epochs * math.ceil(len(inputs) / batch_size)
    model.train()
    with (
        _one_thread(),
        tqdm(total=n_steps, desc=desc, unit="step", disable=not progress, leave=False) as bar,
    ):
        for epoch in range(epochs):
            for idx in _batches(len(inputs), batch_size, gen):
                opt.zero_grad(set_to_none=True)
                loss = loss_fn(model(inputs[idx]), targets[idx])
                loss.backward()
                opt.step()
                bar.update()
            bar.set_postfix(epoch=epoch + 1, loss=f"{loss.item():.4f}")
    model.eval()
    return model


def train_seed_model(
    images: Tensor,
    labels: Tensor,
    *,
    epochs: int = 5,
    lr: float = 1e-3,
    batch_size: int = 128,
    seed: int = 0,
    progress: bool = False,
) -> nn.Sequential:
    """Train the seed's model as the seed did: Adam, BCE against one-hot labels.

    Parameters
    ----------
    images : Tensor
        ``(N, ...)`` training images; flattened.
    labels : Tensor
        ``(N,)`` class indices 0..9.
    epochs, lr, batch_size : optional
        Adam's schedule (the seed's: 5 epochs, 1e-3, 128).
    seed : int
        Seeds the initial weights and the batch order.
    progress : bool
        Show a tqdm bar on stderr.

    Returns
    -------
    nn.Sequential
        ``Linear(n, 10), Sigmoid()`` in float32, in eval mode.
    """
    X = images.reshape(len(images), -1).float()
    Y = F.one_hot(labels, 10).float()
    torch.manual_seed(seed)
    model = seed_model(X.shape[1], 10)
    return _fit(
        model,
        X,
        Y,
        F.binary_cross_entropy,
        epochs=epochs,
        lr=lr,
        batch_size=batch_size,
        seed=seed,
        desc=f"training f ({X.shape[1]}->10)",
        progress=progress,
    )


def train_classifier(
    images: Tensor,
    labels: Tensor,
    *,
    epochs: int = 5,
    hidden: int = 128,
    seed: int = 1,
    progress: bool = False,
) -> nn.Sequential:
    """Train the independent judge: a two-layer ReLU MLP, cross-entropy, Adam 1e-3.

    It shares nothing with the seed's model but the training images, so its
    accuracy on reconstructions says whether they look like the right digit
    rather than whether they reproduce ``f``'s output (all of them do).
    """
    X = images.reshape(len(images), -1).float()
    torch.manual_seed(seed)
    clf = nn.Sequential(nn.Linear(X.shape[1], hidden), nn.ReLU(), nn.Linear(hidden, 10))
    return _fit(
        clf,
        X,
        labels,
        F.cross_entropy,
        epochs=epochs,
        lr=1e-3,
        batch_size=128,
        seed=seed,
        desc="training classifier",
        progress=progress,
    )


def accuracy(model: nn.Module, images: Tensor, labels: Tensor) -> float:
    """Fraction of ``images`` whose largest output is the label."""
    with torch.no_grad():
        X = images.reshape(len(images), -1)
        pred = model(X.to(model_dtype_device(model)[0])).argmax(1)
    return float((pred == labels).double().mean())


def fit_priors(
    images: Tensor, components: int, *, seed: int = 0
) -> tuple[dict[str, Prior | None], dict[str, float]]:
    """Fit the Gaussian and mixture priors on flat training images.

    Returns
    -------
    priors : dict
        ``{"pinv": None, "gaussian": GaussianPrior, "mixture": GaussianMixturePrior}``.
    seconds : dict
        Fit times, keyed ``"fit gaussian"`` and ``"fit mixture"``.
    """
    X = images.reshape(len(images), -1)
    t0 = time.perf_counter()
    gauss = GaussianPrior.fit(X)
    t1 = time.perf_counter()
    mix = GaussianMixturePrior.fit(X, n_components=components, seed=seed)
    t2 = time.perf_counter()
    return (
        {"pinv": None, "gaussian": gauss, "mixture": mix},
        {"fit gaussian": t1 - t0, "fit mixture": t2 - t1},
    )


def invert_batched(
    model: nn.Module,
    y: Tensor,
    method: str,
    prior: Prior | None = None,
    *,
    batch_size: int = 2500,
    **options: Any,
) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`nninv.invert` over ``y`` in batches; returns ``x``, residuals, converged.

    Warnings about individual samples are left to the returned ``converged``
    flags, which the caller reports.
    """
    xs, rs, cs = [], [], []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NNInvWarning)
        for yb in y.split(batch_size):
            inv = invert(model, yb, method=method, prior=prior, **options)
            xs.append(inv.x)
            rs.append(inv.residual)
            cs.append(inv.converged)
    return torch.cat(xs), torch.cat(rs), torch.cat(cs)


def evaluate_method(
    name: str,
    x: Tensor,
    residual: Tensor,
    converged: Tensor,
    seconds: float,
    originals: Tensor,
    labels: Tensor,
    classifier: nn.Module,
) -> MethodResult:
    """Score reconstructions ``x`` against the originals (shapes are matched).

    PSNR is computed in ``x``'s dtype, SSIM in float32.
    """
    x = x.reshape(originals.shape)
    ref = originals.to(x.dtype)
    # SSIM to float32 precision is plenty for a table, and torch's float64
    # conv2d is ten times slower (15 s for 10,000 MNIST images).
    return MethodResult(
        name,
        x,
        float(residual.max()) if residual.numel() else 0.0,
        float(psnr(x, ref).mean()),
        float(ssim(x.float(), ref.float()).mean()),
        accuracy(classifier, x, labels),
        int(converged.sum()),
        seconds,
    )


def reverse_experiment(
    images: Tensor,
    labels: Tensor,
    *,
    epochs: int = 5,
    lr: float = 5e-2,
    seed: int = 2,
    progress: bool = False,
) -> ReverseResult:
    """Train ``g: 10 -> n`` from one-hot codes to images, then invert ``g(I)`` with pinv.

    ``g = Sequential(Linear(10, n), Sigmoid())`` is fitted by Adam to the mean
    squared error between ``g(onehot(label))`` and each training image. Its
    weight ``W`` (n x 10) has full column rank, so the preimage of ``g(e_k)`` is
    the single point ``e_k``, and pinv finds it. The learning rate is 5e-2,
    not the seed's 1e-3: 160 steps at 1e-3 leave the background grey.
    """
    X = images.reshape(len(images), -1).float()
    C = F.one_hot(labels, 10).float()
    torch.manual_seed(seed)
    g = nn.Sequential(nn.Linear(10, X.shape[1]), nn.Sigmoid())
    _fit(
        g,
        C,
        X,
        F.mse_loss,
        epochs=epochs,
        lr=lr,
        batch_size=128,
        seed=seed,
        desc=f"training g (10->{X.shape[1]})",
        progress=progress,
    )
    g64 = copy.deepcopy(g).double()
    eye = torch.eye(10, dtype=torch.float64)
    with torch.no_grad():
        gen = g64(eye)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NNInvWarning)
        inv = invert(g64, gen, method="pinv")
    codes = inv.x
    return ReverseResult(
        gen.reshape(10, *images.shape[1:]),
        codes,
        float((codes - eye).abs().max()),
        float((codes.argmax(1) == torch.arange(10)).double().mean()),
        float(inv.residual.max()),
    )


def load_split(
    dataset: str,
    data_dir: str | os.PathLike[str] | None = None,
    n_test: int | None = None,
    seed: int = 0,
) -> tuple[Dataset, Dataset]:
    """Training and test images of a named data set.

    Full MNIST uses its own training (60,000) and test (10,000) files, from
    ``data_dir`` or :func:`~nninv.datasets.default_mnist_dir`; the embedded sets
    are split at random (seeded), holding out ``n_test`` images (default 1,000,
    at most a fifth).

    Raises
    ------
    NNInvError
        For an unknown name (listing the valid ones), ``data_dir`` given for an
        embedded set, or a missing MNIST folder or file (naming it).
    """
    if dataset == "mnist":
        if data_dir is None:
            data_dir = default_mnist_dir()
            if data_dir is None:
                raise NNInvError(
                    "full MNIST not found: no --data-dir given, $NNINV_MNIST_DIR is unset "
                    "and ../shared/data/mnist does not exist; pass --data-dir DIR (the "
                    "folder of train-images-idx3-ubyte.gz etc.)"
                )
        folder = Path(data_dir).expanduser()
        if not folder.is_dir():
            raise NNInvError(f"MNIST data folder does not exist: {folder}")
        train, test = load_mnist(folder, "train"), load_mnist(folder, "test")
        if n_test is not None:
            test = Dataset(test.images[:n_test], test.labels[:n_test], test.name)
        return train, test
    if dataset not in DATASETS:
        raise NNInvError(f"unknown data set {dataset!r}; valid names: {', '.join(DATASETS)}")
    if data_dir is not None:
        raise NNInvError(
            f"--data-dir is only for --dataset mnist; {dataset!r} ships with its package"
        )
    full = load_dataset(dataset)
    if n_test is None:
        n_test = min(1000, len(full) // 5)
    return full.split(n_test, seed)


def run_demo(
    config: DemoConfig,
    out_dir: str | os.PathLike[str] | None = None,
    *,
    progress: bool = False,
    log: Callable[[str], None] | None = None,
) -> DemoReport:
    """Train, invert, score and (with ``out_dir``) draw; see the module docstring.

    Parameters
    ----------
    config : DemoConfig
    out_dir : path-like, optional
        Folder for ``inversions.png`` and ``reverse.png`` (created); None draws nothing.
    progress : bool
        Show tqdm bars while training.
    log : callable, optional
        Called with one line per stage (e.g. ``print``).

    Returns
    -------
    DemoReport
    """
    say = log or (lambda _msg: None)
    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    train, test = load_split(config.dataset, config.data_dir, config.n_test, config.seed)
    timings["load"] = time.perf_counter() - t_start
    test = _first(test, config.n_inverted)
    say(
        f"data: {train.name} ({len(train)} images, {train.image_shape}) -> "
        f"{test.name} ({len(test)} held out)"
    )

    t = time.perf_counter()
    f, clf = _train_pair(train, config, progress)
    timings["train"] = time.perf_counter() - t
    f_acc, c_acc = accuracy(f, test.images, test.labels), accuracy(clf, test.images, test.labels)
    say(
        f"trained f = sigmoid(x W^T + b) ({train.n_pixels}->10, {config.epochs} epochs of "
        f"Adam): test accuracy {f_acc:.1%}; independent classifier (MLP): {c_acc:.1%}"
    )

    prior_images = train.images[: config.n_prior]
    priors, fit_times = fit_priors(prior_images, config.components, seed=config.seed)
    timings.update(fit_times)
    say(
        f"fitted priors on {len(prior_images)} training images: Gaussian "
        f"{fit_times['fit gaussian']:.1f} s, {config.components}-component mixture "
        f"{fit_times['fit mixture']:.1f} s"
    )

    f64 = copy.deepcopy(f).double()
    originals = test.images.double()
    with torch.no_grad():
        y = f64(originals.reshape(len(test), -1))
    rows = _method_rows(f64, y, originals, test.labels, clf, priors, config.batch_size, timings)

    if config.decoder_epochs > 0:
        t = time.perf_counter()
        flat = prior_images.reshape(len(prior_images), -1).float()
        decoder = Decoder.fit(
            f, flat, epochs=config.decoder_epochs, seed=config.seed + 3, progress=progress
        )
        timings["train decoder"] = time.perf_counter() - t
        say(
            f"trained a decoder (10->{train.n_pixels}) on {len(flat)} images in "
            f"{timings['train decoder']:.1f} s"
        )
        t = time.perf_counter()
        x, res, conv = invert_batched(
            f64, y, "decoder", None, batch_size=config.batch_size, decoder=decoder
        )
        secs = time.perf_counter() - t
        timings["invert decoder"] = secs
        rows.append(evaluate_method("decoder", x, res, conv, secs, originals, test.labels, clf))

    t = time.perf_counter()
    reverse = reverse_experiment(
        train.images, train.labels, epochs=config.epochs, seed=config.seed + 2, progress=progress
    )
    timings["reverse"] = time.perf_counter() - t

    figures: list[Path] = []
    if out_dir is not None:
        figures = _save_figures(Path(out_dir), config, rows, reverse, test, train.n_pixels)
    timings["total"] = time.perf_counter() - t_start
    return DemoReport(
        config,
        train.name.split("/")[0],
        len(train),
        len(test),
        f_acc,
        c_acc,
        rows,
        reverse,
        timings,
        figures,
    )


def _first(data: Dataset, n: int | None) -> Dataset:
    """The first ``n`` images of ``data`` (all of them when ``n`` is None)."""
    if n is None:
        return data
    return Dataset(data.images[:n], data.labels[:n], data.name)


def _train_pair(
    train: Dataset, config: DemoConfig, progress: bool
) -> tuple[nn.Sequential, nn.Sequential]:
    """Train the seed's model ``f`` and the independent classifier on ``train``."""
    f = train_seed_model(
        train.images, train.labels, epochs=config.epochs, seed=config.seed, progress=progress
    )
    clf = train_classifier(
        train.images, train.labels, epochs=config.epochs, seed=config.seed + 1, progress=progress
    )
    return f, clf


def _method_rows(
    f64: nn.Module,
    y: Tensor,
    originals: Tensor,
    labels: Tensor,
    clf: nn.Module,
    priors: dict[str, Prior | None],
    batch_size: int,
    timings: dict[str, float],
) -> list[MethodResult]:
    """The originals' row and one row per :data:`METHODS` entry (times go to ``timings``)."""
    n = len(originals)
    rows = [
        evaluate_method(
            "originals",
            originals,
            torch.zeros(n, dtype=torch.float64),
            torch.ones(n, dtype=torch.bool),
            0.0,
            originals,
            labels,
            clf,
        )
    ]
    for name, method in METHODS.items():
        t = time.perf_counter()
        x, res, conv = invert_batched(f64, y, method, priors[name], batch_size=batch_size)
        secs = time.perf_counter() - t
        timings[f"invert {name}"] = secs
        rows.append(evaluate_method(name, x, res, conv, secs, originals, labels, clf))
    return rows


def _save_figures(
    out: Path,
    config: DemoConfig,
    rows: list[MethodResult],
    reverse: ReverseResult,
    test: Dataset,
    n_pixels: int,
) -> list[Path]:
    """Draw ``inversions.png`` (each method's first inputs) and ``reverse.png`` into ``out``."""
    k = min(config.n_shown, len(test))
    return [
        save_grid(
            {_row_label(r): r.x[:k] for r in rows},
            out / "inversions.png",
            image_shape=test.image_shape,
            title=(
                f"Inputs that f = sigmoid(Wx+b) ({n_pixels}->10) maps to the "
                "originals' outputs (shown clipped to [0, 1])"
            ),
        ),
        save_grid(
            {"g(e_k)": reverse.images},
            out / "reverse.png",
            image_shape=test.image_shape,
            title="g(e_k), k = 0..9; pinv recovers e_k exactly",
        ),
    ]


def _row_label(r: MethodResult) -> str:
    """A figure row's label: the method, its PSNR and its largest residual."""
    if r.name == "originals":
        return r.name
    return f"{r.name}\nPSNR {r.psnr:.1f} dB\nres. {r.residual:.0e}"


def format_table(rows: list[MethodResult]) -> str:
    """The results as a plain-text table, one line per method."""
    head = (
        f"{'method':<10} {'max residual':>12} {'PSNR (dB)':>9} {'SSIM':>6} "
        f"{'clf acc':>7} {'seconds':>7}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        res = "-" if r.name == "originals" else f"{r.residual:.1e}"
        db = "inf" if math.isinf(r.psnr) else f"{r.psnr:.2f}"
        secs = "-" if r.name == "originals" else f"{r.seconds:.2f}"
        lines.append(f"{r.name:<10} {res:>12} {db:>9} {r.ssim:>6.3f} {r.accuracy:>7.1%} {secs:>7}")
    return "\n".join(lines)

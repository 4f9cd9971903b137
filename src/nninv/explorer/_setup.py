"""Building an :class:`~nninv.explorer.Explorer` from the command line's choices.

:func:`default_explorer` needs no files: it trains the seed's model (one dense
layer and a sigmoid) on the embedded 5,000 MNIST digits as ``nninv demo
--quick`` does, fits the Gaussian and mixture priors on 1,500 training images
and, unless told not to, a decoder: trained before it returns, or (as ``nninv
explore`` does, so that the page is up in seconds) in a background thread that
attaches it when done. :func:`explorer_for` takes a model the user named and
the data to pick images from and fit the priors on.
"""

from __future__ import annotations

__all__ = ["default_explorer", "explorer_for"]

import math
import sys
import threading

import torch
from torch import nn

from ..errors import NNInvError
from ..experiments.seed import fit_priors, load_split, train_seed_model
from ..learned import Decoder
from ._state import Explorer


def default_explorer(
    *,
    seed: int = 0,
    epochs: int = 5,
    n_prior: int = 1500,
    components: int = 5,
    decoder_epochs: int = 10,
    n_images: int = 200,
    progress: bool = False,
    background_decoder: bool = False,
) -> Explorer:
    """The seed's model trained on the embedded digits, with priors (and a decoder).

    Parameters
    ----------
    seed : int
        Seeds the split, the training runs and k-means.
    epochs : int
        Epochs of Adam for the model (the seed's 5).
    n_prior : int
        Training images the priors (and the decoder) are fitted on.
    components : int
        Mixture components.
    decoder_epochs : int
        Epochs of the decoder; 0 trains none (the page then shows no decoder row).
    n_images : int
        Held-out images offered on the page.
    progress : bool
        tqdm bars while training.
    background_decoder : bool
        Return at once and train the decoder in a daemon thread, which attaches
        it to the explorer (:meth:`Explorer.attach_decoder`) and says so on
        stderr; until then the page has no decoder row.
    """
    train, test = load_split("mnist5k", None, None, seed)
    f = train_seed_model(train.images, train.labels, epochs=epochs, seed=seed, progress=progress)
    priors, _ = fit_priors(train.images[:n_prior], components, seed=seed)
    flat = train.images[:n_prior].reshape(min(n_prior, len(train)), -1).float()

    def fit() -> Decoder:
        return Decoder.fit(
            f, flat, epochs=decoder_epochs, seed=seed + 3, progress=progress and not background
        )

    background = background_decoder and decoder_epochs > 0
    explorer = Explorer(
        f,
        test.images[:n_images],
        test.labels[:n_images],
        {k: v for k, v in priors.items() if v is not None},
        fit() if decoder_epochs > 0 and not background else None,
    )
    if background:

        def train_and_attach() -> None:
            try:
                explorer.attach_decoder(fit())
            except Exception as e:  # the page keeps working without the decoder row
                print(f"nninv explore: the decoder failed to train: {e}", file=sys.stderr)
                return
            print(
                "nninv explore: decoder trained; reload the page for its row",
                file=sys.stderr,
                flush=True,
            )

        print(
            f"nninv explore: training the decoder ({decoder_epochs} epochs) in the background; "
            "its row appears when it is done",
            file=sys.stderr,
            flush=True,
        )
        threading.Thread(target=train_and_attach, name="nninv-decoder", daemon=True).start()
    return explorer


def explorer_for(
    model: nn.Module,
    train_images: torch.Tensor,
    images: torch.Tensor,
    labels: torch.Tensor | None = None,
    *,
    decoder: Decoder | None = None,
    components: int = 5,
    n_prior: int = 1500,
    seed: int = 0,
    input_shape: tuple[int, ...] | None = None,
) -> Explorer:
    """An explorer of a given ``model``, priors fitted on ``train_images``.

    Raises
    ------
    NNInvError
        If the images do not fit the model or leave ``[0, 1]``.
    """
    if len(train_images) < 2:
        raise NNInvError(f"need at least 2 images to fit the priors, got {len(train_images)}")
    X = torch.as_tensor(train_images[:n_prior]).double()
    if input_shape is not None and X[0].numel() == math.prod(input_shape):
        X = X.reshape(len(X), *input_shape)
    priors, _ = fit_priors(X, components, seed=seed)
    return Explorer(
        model,
        images,
        labels,
        {k: v for k, v in priors.items() if v is not None},
        decoder,
        input_shape=input_shape,
    )

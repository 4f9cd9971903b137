"""scikit-learn multilayer perceptrons as PyTorch chains, and skops files that hold them.

A fitted :class:`sklearn.neural_network.MLPClassifier` or
:class:`~sklearn.neural_network.MLPRegressor` is a stack of dense layers with one
hidden activation (``identity``, ``logistic``, ``tanh`` or ``relu``) and an output
head chosen by the task: softmax for multiclass, a logistic unit per label for
multilabel, ``identity`` (or ``exp`` for the Poisson loss) for regression, and a
single logistic unit for a binary classifier. :func:`from_sklearn` rebuilds it as a
``torch.nn.Sequential`` of ``nn.Linear`` and standard activations whose output is
``predict_proba`` (classifiers) or ``predict`` (regressors, as ``(N, n_outputs)``).
The binary head ``sigmoid(z)`` becomes ``softmax([0, z])``, the same two columns
``[1 - p, p]`` that ``predict_proba`` returns, so that class labels index the
output as for any other classifier. :func:`load_skops` reads a ``.skops`` file with
``skops.io``, trusting no type beyond scikit-learn's MLP machinery; pickles
(``.pkl``, ``.joblib``) are refused by :func:`~nninv.model.io.load_model`.
"""

from __future__ import annotations

__all__ = ["TRUSTED_SKOPS_TYPES", "from_sklearn", "is_sklearn_mlp", "load_skops"]

from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ...errors import NNInvError
from ..layers import Exp, set_input_shape

#: Types a ``.skops`` file may hold beyond skops' default trust list (which covers
#: numpy and scikit-learn estimators): the MLP's optimiser state.
TRUSTED_SKOPS_TYPES: tuple[str, ...] = (
    "sklearn.neural_network._stochastic_optimizers.AdamOptimizer",
    "sklearn.neural_network._stochastic_optimizers.SGDOptimizer",
)

_HIDDEN: dict[str, type[nn.Module]] = {
    "identity": nn.Identity,
    "logistic": nn.Sigmoid,
    "tanh": nn.Tanh,
    "relu": nn.ReLU,
}


def is_sklearn_mlp(obj: Any) -> bool:
    """Whether ``obj`` is a scikit-learn ``MLPClassifier`` or ``MLPRegressor`` (fitted or not)."""
    if not type(obj).__module__.startswith("sklearn."):
        return False
    from sklearn.neural_network import MLPClassifier, MLPRegressor

    return isinstance(obj, MLPClassifier | MLPRegressor)


def from_sklearn(estimator: Any, dtype: torch.dtype | None = None) -> nn.Sequential:
    """Convert a fitted scikit-learn MLP into a ``torch.nn.Sequential`` of standard layers.

    Parameters
    ----------
    estimator : sklearn.neural_network.MLPClassifier or MLPRegressor
        A fitted estimator, any hidden activation and output head it offers.
    dtype : torch.dtype, optional
        Parameter dtype; defaults to the estimator's own (float64 unless it was
        fitted on float32 data), so that the module reproduces it to rounding.

    Returns
    -------
    torch.nn.Sequential
        In eval mode, with ``input_shape = (n_features_in_,)``. ``model(x)`` is
        ``predict_proba(x)`` for a classifier and ``predict(x)`` reshaped to
        ``(N, n_outputs_)`` for a regressor. Modules are named ``dense_0``,
        ``relu_0``, ..., then the head (``softmax``, ``logistic``, ``exp``).

    Raises
    ------
    NNInvError
        If ``estimator`` is not an MLP, is not fitted, or has an activation or
        weights that cannot be converted (the message names them).

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn.neural_network import MLPClassifier
    >>> rng = np.random.default_rng(0)
    >>> X, y = rng.random((60, 4)), np.arange(60) % 3
    >>> clf = MLPClassifier((8,), solver="lbfgs", random_state=0).fit(X, y)
    >>> f = from_sklearn(clf)
    >>> bool(np.allclose(f(torch.from_numpy(X)).detach().numpy(), clf.predict_proba(X)))
    True
    """
    if not is_sklearn_mlp(estimator):
        raise NNInvError(
            f"expected a fitted sklearn.neural_network.MLPClassifier or MLPRegressor, got "
            f"{type(estimator).__module__}.{type(estimator).__name__}"
        )
    name = type(estimator).__name__
    coefs = getattr(estimator, "coefs_", None)
    intercepts = getattr(estimator, "intercepts_", None)
    if coefs is None or intercepts is None:
        raise NNInvError(f"the {name} is not fitted (no coefs_); call fit() first")
    if len(coefs) != len(intercepts) or not coefs:
        raise NNInvError(
            f"the {name} has {len(coefs)} weight matrices and {len(intercepts)} bias vectors"
        )
    hidden = getattr(estimator, "activation", None)
    if hidden not in _HIDDEN:
        raise NNInvError(
            f"the {name}'s hidden activation {hidden!r} is not one scikit-learn defines "
            f"({', '.join(_HIDDEN)})"
        )
    head = getattr(estimator, "out_activation_", None)
    if dtype is None:
        dtype = torch.float32 if np.asarray(coefs[0]).dtype == np.float32 else torch.float64

    mods: OrderedDict[str, nn.Module] = OrderedDict()
    n_in = int(np.asarray(coefs[0]).shape[0])
    prev = n_in
    for i, (W, b) in enumerate(zip(coefs, intercepts)):
        W, b = np.asarray(W), np.asarray(b)
        if W.ndim != 2 or W.shape[0] != prev or b.shape != (W.shape[1],):
            raise NNInvError(
                f"the {name}'s layer {i} has weights {W.shape} and bias {b.shape} after "
                f"{prev} features"
            )
        if not (np.isfinite(W).all() and np.isfinite(b).all()):
            raise NNInvError(f"the {name}'s layer {i} has NaN or inf weights")
        lin = nn.Linear(W.shape[0], W.shape[1], dtype=dtype)
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(W.T.copy()))
            lin.bias.copy_(torch.from_numpy(b.copy()))
        mods[f"dense_{i}"] = lin
        if i < len(coefs) - 1 and hidden != "identity":
            mods[f"{hidden}_{i}"] = _HIDDEN[hidden]()
        prev = W.shape[1]

    if head == "softmax":
        mods["softmax"] = nn.Softmax(dim=1)
    elif head == "logistic" and prev == 1 and name == "MLPClassifier":
        # predict_proba's two columns [1 - sigmoid(z), sigmoid(z)] = softmax([0, z])
        pad = nn.Linear(1, 2, dtype=dtype)
        with torch.no_grad():
            pad.weight.copy_(torch.tensor([[0.0], [1.0]], dtype=dtype))
            pad.bias.zero_()
        mods["binary_logits"] = pad
        mods["softmax"] = nn.Softmax(dim=1)
    elif head == "logistic":
        mods["logistic"] = nn.Sigmoid()
    elif head == "exp":
        mods["exp"] = Exp()
    elif head != "identity":
        raise NNInvError(f"the {name}'s output activation {head!r} has no conversion")
    model = nn.Sequential(mods).eval()
    set_input_shape(model, (n_in,))
    return model


def load_skops(path: str | Path) -> nn.Sequential:
    """Read a ``.skops`` file holding a fitted scikit-learn MLP, as :func:`from_sklearn` does.

    Only skops' default trusted types (numpy, scikit-learn estimators) and
    :data:`TRUSTED_SKOPS_TYPES` are accepted; skops never unpickles.

    Raises
    ------
    NNInvError
        If skops is not installed, the file is damaged, holds a type outside the
        trusted set (named), or holds something other than an MLP.
    """
    path = Path(path)
    try:
        import skops.io as sio
    except ImportError:
        raise NNInvError(
            f"'{path}' is a skops file; reading it needs skops (pip install 'nninv[sklearn]')"
        ) from None
    try:
        untrusted = sio.get_untrusted_types(file=path)
    except Exception as e:  # skops raises many types on damaged archives
        raise NNInvError(
            f"'{path}' is not a readable skops file ({type(e).__name__}: {e}): the file is "
            f"corrupt or truncated"
        ) from e
    refused = sorted(set(untrusted) - set(TRUSTED_SKOPS_TYPES))
    if refused:
        raise NNInvError(
            f"'{path}' holds types outside what nninv trusts in a skops file (a "
            f"scikit-learn MLPClassifier/MLPRegressor): {', '.join(refused)}"
        )
    try:
        est = sio.load(path, trusted=sorted(untrusted))
    except Exception as e:
        raise NNInvError(
            f"'{path}' is not a readable skops file ({type(e).__name__}: {e}): the file is "
            f"corrupt or truncated"
        ) from e
    if not is_sklearn_mlp(est):
        raise NNInvError(
            f"'{path}' holds a {type(est).__module__}.{type(est).__name__}; nninv converts "
            f"only a fitted sklearn.neural_network.MLPClassifier or MLPRegressor"
        )
    try:
        return from_sklearn(est)
    except NNInvError as e:
        raise NNInvError(f"'{path}': {e}") from None

"""scikit-learn MLPs: conversion to the torch chain, skops files, and every entry point."""

from __future__ import annotations

import math
import pickle

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from sklearn.neural_network import MLPClassifier, MLPRegressor

import nninv
from nninv import ClassTarget, NNInvError
from nninv.model.io import as_module
from nninv.model.io.sklearn import from_sklearn
from tolerances import EPS

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")

ACTIVATIONS = ["identity", "logistic", "tanh", "relu"]
CLOSE = EPS[torch.float64]["close"]


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    X, y = load_digits(return_X_y=True)
    return X / 16.0, y


def _fit(kind: str, act: str, X: np.ndarray, y: np.ndarray):
    X, y = X[:300], y[:300]
    if kind == "regressor":
        est = MLPRegressor(hidden_layer_sizes=(12, 6), activation=act, max_iter=40)
        return est.set_params(random_state=0).fit(X, X[:, :3])
    if kind == "poisson":
        est = MLPRegressor(hidden_layer_sizes=(12,), activation=act, loss="poisson", max_iter=40)
        return est.set_params(random_state=0).fit(X, 3 * X[:, 20])
    labels = {
        "multiclass": y,
        "binary": y % 2,
        "multilabel": np.stack([y % 2, y > 4], 1),
    }[kind]
    est = MLPClassifier(hidden_layer_sizes=(12, 6), activation=act, max_iter=40, random_state=0)
    return est.fit(X, labels)


@pytest.mark.parametrize("act", ACTIVATIONS)
@pytest.mark.parametrize("kind", ["multiclass", "binary", "multilabel", "regressor", "poisson"])
def test_conversion_matches_predict(digits, kind, act):
    X, y = digits
    est = _fit(kind, act, X, y)
    f = from_sklearn(est)
    assert f.input_shape == (64,)
    assert next(f.parameters()).dtype == torch.float64
    xt = X[300:400]
    with torch.no_grad():
        out = f(torch.from_numpy(xt)).numpy()
    if kind in ("regressor", "poisson"):
        ref = est.predict(xt).reshape(len(xt), -1)
    else:
        ref = est.predict_proba(xt)
    assert out.shape == ref.shape
    np.testing.assert_allclose(out, ref, rtol=0, atol=CLOSE)
    if kind in ("multiclass", "binary"):
        assert (est.classes_[out.argmax(1)] == est.predict(xt)).all()
    # the chain analysis reads every layer (no opaque step)
    assert not nninv.model.chain.analyse(f).unsupported


def test_load_model_takes_the_estimator(digits):
    X, y = digits
    est = _fit("multiclass", "relu", X, y)
    f = nninv.load_model(est)
    with torch.no_grad():
        np.testing.assert_allclose(
            f(torch.from_numpy(X[:20])).numpy(), est.predict_proba(X[:20]), atol=CLOSE, rtol=0
        )
    assert as_module(f) is f


def test_bad_estimators_are_named():
    with pytest.raises(NNInvError, match="not fitted"):
        from_sklearn(MLPClassifier())
    from sklearn.linear_model import LogisticRegression

    with pytest.raises(NNInvError, match="LogisticRegression"):
        nninv.load_model(LogisticRegression())
    with pytest.raises(NNInvError, match="MLPClassifier/MLPRegressor, got list"):
        nninv.invert([1, 2], torch.zeros(1, 2))
    with pytest.raises(NNInvError, match="fitted scikit-learn MLP, got int"):
        nninv.load_model(3)


@pytest.fixture(scope="module")
def classifier(digits):
    X, y = digits
    return MLPClassifier((24,), max_iter=300, random_state=0).fit(X, y)


def test_skops_round_trip(tmp_path, digits, classifier):
    sio = pytest.importorskip("skops.io")
    X, _ = digits
    path = tmp_path / "digits.skops"
    sio.dump(classifier, path)
    f = nninv.load_model(path)
    with torch.no_grad():
        out = f(torch.from_numpy(X[:50])).numpy()
    np.testing.assert_allclose(out, classifier.predict_proba(X[:50]), atol=CLOSE, rtol=0)
    # a suffix does not matter, the content does
    other = tmp_path / "digits.model"
    other.write_bytes(path.read_bytes())
    assert isinstance(nninv.load_model(other), torch.nn.Sequential)


def test_skops_refuses_untrusted_and_non_mlp(tmp_path):
    sio = pytest.importorskip("skops.io")
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import FunctionTransformer

    bad = tmp_path / "ft.skops"
    sio.dump(FunctionTransformer(func=math.sqrt), bad)
    with pytest.raises(NNInvError, match=r"ft\.skops.*math\.sqrt"):
        nninv.load_model(bad)
    lr = tmp_path / "lr.skops"
    X = np.random.default_rng(0).random((20, 3))
    sio.dump(LogisticRegression().fit(X, np.arange(20) % 2), lr)
    with pytest.raises(NNInvError, match=r"lr\.skops.*LogisticRegression"):
        nninv.load_model(lr)
    damaged = tmp_path / "damaged.skops"
    damaged.write_bytes(bad.read_bytes()[:-40])
    with pytest.raises(NNInvError, match=r"damaged\.skops"):
        nninv.load_model(damaged)


@pytest.mark.parametrize("suffix", [".pkl", ".joblib"])
def test_pickled_estimators_are_refused(tmp_path, classifier, suffix):
    path = tmp_path / f"model{suffix}"
    path.write_bytes(pickle.dumps(classifier))
    with pytest.raises(NNInvError, match="refusing to load it.*skops"):
        nninv.load_model(path)
    # joblib's compressed files are not pickles at the first byte: the suffix decides
    path.write_bytes(b"x\x9c" + bytes(30))
    with pytest.raises(NNInvError, match="pickle"):
        nninv.load_model(path)


def test_every_entry_point_takes_the_estimator(digits, classifier):
    X, y = digits
    x = torch.from_numpy(X[:3])
    target = torch.from_numpy(classifier.predict_proba(X[:3]))
    for method, kw in [
        ("pinv", {}),
        ("analytic", {"prior": nninv.priors.GaussianPrior.fit(torch.from_numpy(X))}),
    ]:
        inv = nninv.invert(classifier, target, method=method, **kw)
        assert inv.converged.all(), method
        assert float(inv.residual.max()) < EPS[torch.float64]["residual"]
    inv = nninv.invert(classifier, ClassTarget([3, 4]), method="optimize", progress=False)
    assert inv.converged.all()
    assert (classifier.predict(inv.x.detach().numpy()) == [3, 4]).all()

    pre = nninv.preimage(classifier, target[:1], bounds=(0, 1), around=x[:1])
    xs = pre.sample(4, seed=0)
    assert bool(pre.contains(xs).all())
    with torch.no_grad():
        np.testing.assert_allclose(
            classifier.predict_proba(xs.numpy()), target[:1].expand(4, -1).numpy(), atol=CLOSE
        )

    d = nninv.diagnose(classifier, data=X[:100])
    assert d.input_shape == (64,) and d.output_shape == (10,)

    label = int(classifier.predict(X[:1])[0] + 1) % 10
    res = nninv.closest(classifier, x[:1], ClassTarget(label), norm="linf")
    assert res.status == "optimal"
    assert classifier.predict(res.x.reshape(1, -1).numpy())[0] == label


def test_binary_classifier_inverts_to_its_probabilities(digits):
    X, y = digits
    est = MLPClassifier((8,), activation="tanh", max_iter=200, random_state=0).fit(X, y % 2)
    target = torch.from_numpy(est.predict_proba(X[:4]))
    inv = nninv.invert(est, target, method="pinv")
    assert inv.converged.all()
    np.testing.assert_allclose(
        est.predict_proba(inv.x.numpy()), target.numpy(), atol=EPS[torch.float64]["close"]
    )


def test_regressor_inverts(digits):
    X, _ = digits
    est = MLPRegressor(hidden_layer_sizes=(16,), activation="logistic", max_iter=200)
    est.set_params(random_state=0).fit(X[:400], X[:400, :3])
    target = torch.from_numpy(est.predict(X[400:402]))
    inv = nninv.invert(est, target, method="pinv")
    assert inv.converged.all()
    np.testing.assert_allclose(est.predict(inv.x.numpy()), target.numpy(), atol=CLOSE)

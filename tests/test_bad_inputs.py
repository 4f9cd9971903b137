"""The bad-input battery: every public entry point and every CLI command, fed bad input.

One table per front. Each row is a call that must fail with :class:`nninv.NNInvError`
whose message matches the row's pattern (the library), or exit with status 2 and
one line ``nninv COMMAND: error: ...`` naming the problem (the command line): never
a traceback, a hang, or inf/NaN in a result. A hypothesis fuzz test feeds random
bytes, with and without each format's signature, to :func:`nninv.load_model`.
"""

from __future__ import annotations

import io
import math
import pickle
import re
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from torch import nn

import nninv
from nninv import ClassTarget, NNInvError
from nninv.cli import main
from nninv.datasets import read_idx, write_idx
from nninv.figures import save_grid
from nninv.learned import ConditionalFlow, Decoder
from nninv.metrics import psnr, ssim
from nninv.priors import L2, GaussianMixturePrior, GaussianPrior, TotalVariation

#: Fuzz examples per model format (bounded: the whole fuzz test stays in seconds).
FUZZ_EXAMPLES = 40

N_IN, N_OUT = 12, 4


class _Custom(nn.Module):
    """A layer the closed-form methods do not know."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * x.sum(dim=1, keepdim=True)


@dataclass
class Ctx:
    """Models, arrays and files the battery's rows use."""

    seed: nn.Module  # Linear(12, 4) + Sigmoid, float32
    relu: nn.Module  # 12 -> 8 -> 3 ReLU classifier, float64
    custom: nn.Module  # Linear then an unknown layer
    x: torch.Tensor  # (3, 12) inputs in [0, 1]
    y: torch.Tensor  # seed(x)
    X: torch.Tensor  # (200, 12) prior data
    files: dict[str, Path]
    tmp: Path


@pytest.fixture(scope="module")
def ctx(tmp_path_factory) -> Ctx:
    tmp = tmp_path_factory.mktemp("bad")
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)  # the models' initial weights, whatever ran before
    seed = nn.Sequential(nn.Linear(N_IN, N_OUT), nn.Sigmoid()).eval()
    relu = nn.Sequential(nn.Linear(N_IN, 8), nn.ReLU(), nn.Linear(8, 3)).double().eval()
    custom = nn.Sequential(nn.Linear(N_IN, N_IN), _Custom()).eval()
    for p in [*seed.parameters(), *relu.parameters(), *custom.parameters()]:
        p.requires_grad_(False)
    x = torch.rand(3, N_IN, generator=g)
    with torch.no_grad():
        y = seed(x)
    X = torch.rand(200, N_IN, generator=g)
    files = _write_files(tmp, seed, x, y)
    return Ctx(seed, relu, custom, x, y, X, files, tmp)


def _write_files(tmp: Path, seed: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, Path]:
    files: dict[str, Path] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.script(seed), str(tmp / "seed.pt"))
        files["pt"] = tmp / "seed.pt"
        torch.onnx.export(seed, (torch.zeros(1, N_IN),), tmp / "seed.onnx", dynamo=False)
        files["onnx"] = tmp / "seed.onnx"
        import keras

        km = keras.Sequential([keras.Input((N_IN,)), keras.layers.Dense(N_OUT, "sigmoid")])
        km.save(tmp / "seed.keras")
        km.save(tmp / "seed.h5")
        files["keras"], files["h5"] = tmp / "seed.keras", tmp / "seed.h5"
        custom = nn.Sequential(nn.Linear(N_IN, N_OUT), _Custom()).eval()
        torch.jit.save(torch.jit.script(custom), str(tmp / "custom.pt"))
        files["custom.pt"] = tmp / "custom.pt"
        relu = nn.Sequential(nn.Linear(N_IN, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
        torch.jit.save(torch.jit.script(relu), str(tmp / "relu.pt"))
        files["relu"] = tmp / "relu.pt"
    # pickles disguised under every model extension (torch.save of a whole module)
    for ext in ("keras", "h5", "onnx", "pt"):
        p = tmp / f"pickled.{ext}"
        torch.save(seed, p)
        files[f"pickle.{ext}"] = p
        p = tmp / f"plainpickle.{ext}"
        p.write_bytes(pickle.dumps({"weights": [1.0, 2.0]}))
        files[f"plainpickle.{ext}"] = p
    # truncated, corrupt (bytes flipped in the middle), and one format under another's name
    for ext in ("keras", "h5", "onnx", "pt"):
        data = files[ext].read_bytes()
        (tmp / f"cut.{ext}").write_bytes(data[: len(data) // 2])
        files[f"cut.{ext}"] = tmp / f"cut.{ext}"
        rng = np.random.default_rng(1)
        bad = bytearray(data)
        lo, hi = len(bad) // 4, 3 * len(bad) // 4
        for i in rng.integers(lo, hi, size=max(64, len(bad) // 20)):
            bad[int(i)] ^= 0xFF
        (tmp / f"corrupt.{ext}").write_bytes(bytes(bad))
        files[f"corrupt.{ext}"] = tmp / f"corrupt.{ext}"
    dec = Decoder.fit(seed, torch.rand(40, N_IN), hidden=(8,), epochs=1, progress=False)
    data = dec.save(tmp / "dec.safetensors").read_bytes()
    files["decoder"] = tmp / "dec.safetensors"
    (tmp / "cut.safetensors").write_bytes(data[: len(data) // 2])
    files["cut.decoder"] = tmp / "cut.safetensors"
    flow = ConditionalFlow.fit(
        seed, torch.rand(40, N_IN), decoder=dec, transforms=1, hidden=(8,), epochs=1, progress=False
    )
    flow.save(tmp / "flow.safetensors")
    files["flow"] = tmp / "flow.safetensors"
    (tmp / "onnx_as.keras").write_bytes(files["onnx"].read_bytes())
    files["onnx_as.keras"] = tmp / "onnx_as.keras"
    (tmp / "keras_as.onnx").write_bytes(files["keras"].read_bytes())
    files["keras_as.onnx"] = tmp / "keras_as.onnx"
    (tmp / "h5_as.pt").write_bytes(files["h5"].read_bytes())
    files["h5_as.pt"] = tmp / "h5_as.pt"
    (tmp / "text.onnx").write_text("not a model\n")
    files["text.onnx"] = tmp / "text.onnx"
    (tmp / "empty.h5").write_bytes(b"")
    files["empty.h5"] = tmp / "empty.h5"
    zbuf = io.BytesIO()
    with zipfile.ZipFile(zbuf, "w") as z:
        z.writestr("hello.txt", "hi")
    (tmp / "zip.keras").write_bytes(zbuf.getvalue())
    files["zip.keras"] = tmp / "zip.keras"
    (tmp / "weights.safetensors").write_bytes(
        (12).to_bytes(8, "little") + b'{"__meta":1}' + b"\0" * 16
    )
    files["safetensors"] = tmp / "weights.safetensors"
    # arrays
    arrays = {
        "y": y.numpy(),
        "y_nan": _with(y.numpy(), math.nan),
        "y_inf": _with(y.numpy(), math.inf),
        "y_ninf": _with(y.numpy(), -math.inf),
        "y_above": _with(y.numpy(), 1.5),
        "y_below": _with(y.numpy(), -0.25),
        "y_shape": np.full((3, N_OUT + 1), 0.5, np.float32),
        "y_1d": np.full((N_OUT,), 0.5, np.float32)[None][0],
        "y_empty": np.zeros((0, N_OUT), np.float32),
        "x": x.numpy(),
        "x_nan": _with(x.numpy(), math.nan),
        "x_inf": _with(x.numpy(), math.inf),
        "x_shape": np.full((3, N_IN + 2), 0.5, np.float32),
        "x_empty": np.zeros((0, N_IN), np.float32),
        "data_shape": np.random.default_rng(0).random((50, 7)),
        "data_nan": _with(np.random.default_rng(0).random((50, N_IN)), math.nan),
        "strings": np.array(["a", "b"]),
        "complex": np.ones((3, N_OUT), np.complex64) * 0.5,
    }
    for name, a in arrays.items():
        np.save(tmp / f"{name}.npy", a)
        files[name] = tmp / f"{name}.npy"
    np.save(tmp / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    files["objects"] = tmp / "objects.npy"
    (tmp / "pickle.npy").write_bytes(pickle.dumps(np.ones(3)))
    files["pickle.npy"] = tmp / "pickle.npy"
    (tmp / "garbage.npy").write_bytes(b"\x93NUMPY garbage")
    files["garbage.npy"] = tmp / "garbage.npy"
    (tmp / "not_idx.gz").write_bytes(b"\x00\x00\x08\x03" + b"\x00" * 7)
    files["not_idx"] = tmp / "not_idx.gz"
    return files


def _with(a: np.ndarray, value: float) -> np.ndarray:
    a = np.array(a, copy=True)
    a.flat[1] = value
    return a


# ============================================================================ the library


def _prior(c: Ctx) -> GaussianPrior:
    return GaussianPrior.fit(c.X)


_DECODERS: dict[int, Decoder] = {}


def _decoder(c: Ctx) -> Decoder:
    """A small decoder of the seed model, trained once."""
    if id(c) not in _DECODERS:
        _DECODERS[id(c)] = Decoder.fit(c.seed, c.X, hidden=(16,), epochs=2, progress=False)
    return _DECODERS[id(c)]


def _pre(c: Ctx):
    return nninv.preimage(c.seed, c.y[0], bounds=(0.0, 1.0))


#: (call, pattern of the message) for every public entry point.
LIBRARY: dict[str, tuple[Callable[[Ctx], Any], str]] = {
    # --- invert: outputs
    "invert/nan": (lambda c: nninv.invert(c.seed, _with(c.y.numpy(), math.nan)), r"nan"),
    "invert/inf": (lambda c: nninv.invert(c.seed, _with(c.y.numpy(), math.inf)), r"inf"),
    "invert/-inf": (lambda c: nninv.invert(c.seed, _with(c.y.numpy(), -math.inf)), r"-inf"),
    "invert/above-range": (lambda c: nninv.invert(c.seed, _with(c.y.numpy(), 1.5)), r"range|1\.5"),
    "invert/below-range": (
        lambda c: nninv.invert(c.seed, _with(c.y.numpy(), -0.25)),
        r"range|-0\.25",
    ),
    "invert/shape": (lambda c: nninv.invert(c.seed, torch.full((3, 5), 0.5)), r"shape"),
    "invert/empty": (lambda c: nninv.invert(c.seed, torch.zeros(0, N_OUT)), r"no samples|empty"),
    "invert/complex": (
        lambda c: nninv.invert(c.seed, torch.full((2, N_OUT), 0.5, dtype=torch.complex64)),
        r"real|complex",
    ),
    "invert/strings": (lambda c: nninv.invert(c.seed, np.array([["a"] * N_OUT])), r"str|U1|array"),
    "invert/bool": (
        lambda c: nninv.invert(c.seed, torch.ones(2, N_OUT, dtype=torch.bool)),
        r"bool|real",
    ),
    "invert/unknown-method": (lambda c: nninv.invert(c.seed, c.y, method="magic"), r"magic.*pinv"),
    "invert/unknown-option": (lambda c: nninv.invert(c.seed, c.y, method="pinv", foo=1), r"foo"),
    "invert/unsupported-layer": (
        lambda c: nninv.invert(c.custom, torch.zeros(2, N_IN), method="pinv"),
        r"_Custom",
    ),
    "invert/tol-negative": (lambda c: nninv.invert(c.seed, c.y, tol=-1.0), r"tol"),
    "invert/tol-nan": (lambda c: nninv.invert(c.seed, c.y, tol=math.nan), r"tol"),
    "invert/prior-shape": (
        lambda c: nninv.invert(c.seed, c.y, prior=GaussianPrior.fit(torch.rand(50, 5))),
        r"shape|5",
    ),
    "invert/bounds-lo>hi": (
        lambda c: nninv.invert(c.seed, c.y, method="optimize", bounds=(1.0, 0.0)),
        r"lo.*hi|bounds",
    ),
    "invert/bounds-nan": (
        lambda c: nninv.invert(c.seed, c.y, method="optimize", bounds=(math.nan, 1.0)),
        r"bounds|nan|NaN",
    ),
    "invert/class-out-of-range": (
        lambda c: nninv.invert(c.seed, ClassTarget([4]), method="optimize"),
        r"label|class",
    ),
    "invert/class-negative": (lambda c: nninv.invert(c.seed, ClassTarget([-1])), r"negative"),
    "invert/class-confidence": (
        lambda c: nninv.invert(c.seed, ClassTarget([1], confidence=1.5)),
        r"confidence",
    ),
    "invert/class-float-labels": (lambda c: ClassTarget(torch.tensor([0.5])), r"integer"),
    "invert/class-empty": (lambda c: ClassTarget([]), r"no labels"),
    "invert/not-a-module": (lambda c: nninv.invert("model.onnx", c.y), r"Module|model"),
    "invert/input-shape-bad": (
        lambda c: nninv.invert(c.seed, c.y, input_shape=(5,)),
        r"shape",
    ),
    # --- preimage
    "preimage/nan": (lambda c: nninv.preimage(c.seed, _with(c.y[0].numpy(), math.nan)), r"nan"),
    "preimage/inf": (lambda c: nninv.preimage(c.seed, _with(c.y[0].numpy(), math.inf)), r"inf"),
    "preimage/above-range": (
        lambda c: nninv.preimage(c.seed, _with(c.y[0].numpy(), 1.5)),
        r"range|1\.5",
    ),
    "preimage/shape": (lambda c: nninv.preimage(c.seed, torch.full((5,), 0.5)), r"shape"),
    "preimage/empty": (
        lambda c: nninv.preimage(c.seed, torch.zeros(0, N_OUT)),
        r"no samples|empty",
    ),
    "preimage/batch": (lambda c: nninv.preimage(c.seed, c.y), r"one output|one target|sample"),
    "preimage/bounds-lo>hi": (
        lambda c: nninv.preimage(c.seed, c.y[0], bounds=(1.0, 0.0)),
        r"lo > hi",
    ),
    "preimage/bounds-shape": (
        lambda c: nninv.preimage(c.seed, c.y[0], bounds=(torch.zeros(3), 1.0)),
        r"broadcast",
    ),
    "preimage/around-nan": (
        lambda c: nninv.preimage(c.relu, ClassTarget(1), around=_with(c.x[0].numpy(), math.nan)),
        r"NaN|nan",
    ),
    "preimage/unsupported-layer": (
        lambda c: nninv.preimage(c.custom, torch.zeros(N_IN)),
        r"_Custom",
    ),
    "preimage/contains-nan": (
        lambda c: _pre(c).contains(_with(c.x[0].numpy(), math.nan)),
        r"NaN|nan",
    ),
    "preimage/contains-shape": (lambda c: _pre(c).contains(torch.zeros(5)), r"shape"),
    "preimage/project-shape": (lambda c: _pre(c).project(torch.zeros(2, 5)), r"shape"),
    "preimage/project-inf": (
        lambda c: _pre(c).project(_with(c.x.numpy(), math.inf)),
        r"inf",
    ),
    "preimage/extent-nan": (
        lambda c: _pre(c).extent(_with(np.ones(N_IN), math.nan)),
        r"direction|NaN|nan|finite",
    ),
    "preimage/sample-zero": (lambda c: _pre(c).sample(0, seed=0), r"\bn\b|positive"),
    "preimage/sample-method": (lambda c: _pre(c).sample(5, seed=0, method="magic"), r"magic"),
    # --- closest
    "closest/nan": (
        lambda c: nninv.closest(c.relu, _with(c.x[0].numpy(), math.nan), ClassTarget(1)),
        r"NaN|nan",
    ),
    "closest/shape": (lambda c: nninv.closest(c.relu, torch.zeros(5), ClassTarget(1)), r"shape"),
    "closest/empty": (
        lambda c: nninv.closest(c.relu, torch.zeros(0, N_IN), ClassTarget(1)),
        r"no samples|empty|one input|shape",
    ),
    "closest/class-out-of-range": (
        lambda c: nninv.closest(c.relu, c.x[0], ClassTarget(3)),
        r"label|class",
    ),
    "closest/not-a-class-target": (
        lambda c: nninv.closest(c.relu, c.x[0], torch.zeros(3)),
        r"ClassTarget",
    ),
    "closest/norm": (lambda c: nninv.closest(c.relu, c.x[0], ClassTarget(1), norm="l7"), r"l7"),
    "closest/max-distance-negative": (
        lambda c: nninv.closest(c.relu, c.x[0], ClassTarget(1), max_distance=-0.1),
        r"max_distance",
    ),
    "closest/max-distance-nan": (
        lambda c: nninv.closest(c.relu, c.x[0], ClassTarget(1), max_distance=math.nan),
        r"max_distance",
    ),
    "closest/time-limit": (
        lambda c: nninv.closest(c.relu, c.x[0], ClassTarget(1), time_limit=0.0),
        r"time_limit",
    ),
    "closest/bounds-lo>hi": (
        lambda c: nninv.closest(c.relu, c.x[0], ClassTarget(1), bounds=(1.0, 0.0)),
        r"lo > hi",
    ),
    "closest/x-outside-bounds": (
        lambda c: nninv.closest(c.relu, c.x[0] + 2.0, ClassTarget(1)),
        r"bounds|outside",
    ),
    # --- diagnose
    "diagnose/data-nan": (
        lambda c: nninv.diagnose(c.seed, _with(c.X.numpy(), math.nan)),
        r"NaN|nan|finite",
    ),
    "diagnose/data-shape": (lambda c: nninv.diagnose(c.seed, torch.rand(20, 7)), r"shape"),
    "diagnose/data-empty": (
        lambda c: nninv.diagnose(c.seed, torch.zeros(0, N_IN)),
        r"no samples|empty",
    ),
    "diagnose/not-a-module": (lambda c: nninv.diagnose(np.eye(3)), r"Module|model"),
    "diagnose/max-samples": (lambda c: nninv.diagnose(c.seed, c.X, max_samples=0), r"max_samples"),
    # --- priors
    "prior/gaussian-nan": (lambda c: GaussianPrior.fit(_with(c.X.numpy(), math.nan)), r"NaN|nan"),
    "prior/gaussian-inf": (lambda c: GaussianPrior.fit(_with(c.X.numpy(), math.inf)), r"inf"),
    "prior/gaussian-empty": (
        lambda c: GaussianPrior.fit(torch.zeros(0, N_IN)),
        r"no samples|empty|at least",
    ),
    "prior/gaussian-one-sample": (lambda c: GaussianPrior.fit(torch.zeros(1, N_IN)), r"at least"),
    "prior/gaussian-strings": (lambda c: GaussianPrior.fit(np.array([["a"]])), r"real|dtype"),
    "prior/gaussian-shrinkage": (
        lambda c: GaussianPrior.fit(c.X, shrinkage=2.0),
        r"shrinkage",
    ),
    "prior/mixture-components": (
        lambda c: GaussianMixturePrior.fit(c.X, n_components=0),
        r"n_components",
    ),
    "prior/mixture-too-many": (
        lambda c: GaussianMixturePrior.fit(c.X[:5], n_components=10),
        r"n_components|samples",
    ),
    "prior/tv-weight": (lambda c: TotalVariation(weight=-1.0), r"weight"),
    "prior/l2-weight-nan": (lambda c: L2(weight=math.nan), r"weight"),
    "prior/sample-negative": (lambda c: _prior(c).sample(-1), r"\bn\b|negative|positive"),
    # --- load_model
    **{
        f"load/{name}": (lambda c, name=name: nninv.load_model(c.files[name]), pattern)
        for name, pattern in {
            "pickle.keras": r"pickle",
            "pickle.h5": r"pickle",
            "pickle.onnx": r"pickle",
            "pickle.pt": r"pickle",
            "plainpickle.keras": r"pickle",
            "plainpickle.h5": r"pickle",
            "plainpickle.onnx": r"pickle",
            "plainpickle.pt": r"pickle",
            "cut.keras": r"corrupt or truncated",
            "cut.h5": r"corrupt or truncated",
            "cut.onnx": r"corrupt or truncated",
            "cut.pt": r"corrupt or truncated",
            "corrupt.keras": r"corrupt|truncated",
            "corrupt.h5": r"corrupt|truncated",
            "corrupt.onnx": r"corrupt|truncated",
            "corrupt.pt": r"corrupt|truncated",
            "onnx_as.keras": r"Keras suffix|corrupt",
            "text.onnx": r"corrupt|ONNX",
            "empty.h5": r"empty",
            "zip.keras": r"zip archive of no kind",
            "safetensors": r"safetensors",
        }.items()
    },
    "load/missing": (lambda c: nninv.load_model(c.tmp / "nowhere.onnx"), r"no such model file"),
    "load/directory": (lambda c: nninv.load_model(c.tmp), r"directory"),
    # --- learned inverses
    "decoder/another-model": (
        lambda c: nninv.invert(
            c.relu, torch.zeros(2, 3, dtype=torch.float64), method="decoder", decoder=_decoder(c)
        ),
        r"outputs \(4,\).*outputs \(3,\)",
    ),
    "decoder/missing": (lambda c: nninv.invert(c.seed, c.y, method="decoder"), r"needs decoder"),
    "decoder/nan": (
        lambda c: nninv.invert(
            c.seed, _with(c.y.numpy(), math.nan), method="decoder", decoder=_decoder(c)
        ),
        r"nan",
    ),
    "decoder/fit-nan": (lambda c: Decoder.fit(c.seed, _with(c.X.numpy(), math.nan)), r"NaN"),
    "decoder/fit-shape": (lambda c: Decoder.fit(c.seed, torch.rand(50, 7)), r"model fails"),
    "decoder/load-pickle": (lambda c: Decoder.load(c.files["pickle.pt"]), r"safetensors"),
    "decoder/load-cut": (lambda c: Decoder.load(c.files["cut.decoder"]), r"corrupt or truncated"),
    "decoder/load-model-file": (lambda c: Decoder.load(c.files["onnx"]), r"safetensors"),
    "posterior/not-a-flow": (
        lambda c: nninv.posterior(c.seed, c.y, _decoder(c)),
        r"ConditionalFlow",
    ),
    "posterior/n-zero": (
        lambda c: nninv.posterior(c.seed, c.y, ConditionalFlow.load(c.files["flow"]), n=0),
        r"\bn\b",
    ),
    "posterior/shape": (
        lambda c: nninv.posterior(
            c.seed, torch.full((2, 7), 0.5), ConditionalFlow.load(c.files["flow"])
        ),
        r"shape",
    ),
    "posterior/nan": (
        lambda c: nninv.posterior(
            c.seed, _with(c.y.numpy(), math.nan), ConditionalFlow.load(c.files["flow"])
        ),
        r"nan",
    ),
    "flow/load-decoder-file": (
        lambda c: ConditionalFlow.load(c.files["decoder"]),
        r"not an nninv conditional flow",
    ),
    "flow/load-cut": (lambda c: ConditionalFlow.load(c.files["cut.decoder"]), r"corrupt"),
    "flow/fit-nan": (
        lambda c: ConditionalFlow.fit(c.seed, _with(c.X.numpy(), math.nan)),
        r"finite",
    ),
    # --- datasets, metrics, figures
    "read_idx/not-idx": (lambda c: read_idx(c.files["not_idx"]), r"not_idx|IDX|corrupt"),
    "read_idx/missing": (lambda c: read_idx(c.tmp / "none.idx"), r"none\.idx"),
    "write_idx/objects": (
        lambda c: write_idx(c.tmp / "o.idx", np.array([object()])),
        r"dtype|object",
    ),
    "psnr/shape": (lambda c: psnr(torch.zeros(2, 4), torch.zeros(2, 5)), r"shape"),
    "psnr/range": (lambda c: psnr(torch.zeros(2, 4), torch.zeros(2, 4), data_range=0), r"range"),
    "ssim/nan": (lambda c: ssim(torch.full((1, 8, 8), math.nan), torch.zeros(1, 8, 8)), r"NaN|nan"),
    "save_grid/empty": (lambda c: save_grid({}, c.tmp / "g.png"), r"row|empty"),
    "save_grid/shape": (
        lambda c: save_grid({"a": torch.zeros(2, 13)}, c.tmp / "g.png", image_shape=(3, 3)),
        r"shape|13",
    ),
}


@pytest.mark.parametrize("case", sorted(LIBRARY))
def test_library_bad_input(ctx, case):
    call, pattern = LIBRARY[case]
    with pytest.raises(NNInvError, match=pattern):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            call(ctx)


def test_train_mode_model_is_inverted_as_in_eval_mode(ctx):
    """A model left in train mode is evaluated in eval mode (documented) and restored:
    a Dropout/BatchNorm model's answer is the eval-mode function's, exactly."""
    g = torch.Generator().manual_seed(3)
    model = nn.Sequential(nn.Linear(N_IN, 8), nn.BatchNorm1d(8), nn.Dropout(0.5), nn.Sigmoid())
    model = model.double()
    with torch.no_grad():
        model(torch.rand(64, N_IN, generator=g, dtype=torch.float64))  # running stats
    model.train()
    y = torch.full((2, 8), 0.4, dtype=torch.float64)
    inv = nninv.invert(model, y, method="pinv")
    assert model.training, "the caller's mode must be restored"
    with torch.no_grad():
        out = model.eval()(inv.x)
    assert torch.isfinite(inv.x).all()
    assert (out - y).abs().max() <= 1e-10
    assert bool(inv.converged.all())


def test_output_on_the_edge_of_the_range_is_moved_inside_and_inverted(ctx):
    """sigmoid(t) rounds to exactly 1.0 in float32 for t > 17: such an output is a real
    output of the model, so it is inverted (with a warning), not refused."""
    y = ctx.y.clone()
    y[0, 1] = 1.0
    with pytest.warns(nninv.NNInvWarning, match="edge of the range"):
        inv = nninv.invert(ctx.seed, y)
    assert torch.isfinite(inv.x).all() and bool(inv.converged.all())
    assert float(inv.residual.max()) <= 1e-4  # float32 tolerance of invert


def test_closest_on_an_unknown_layer_is_a_reported_heuristic(ctx):
    """No exact encoding exists for an unknown layer: the gradient search's answer comes
    back with status "heuristic" and the trivial bound 0, never as "optimal"."""
    with torch.no_grad():
        label = int(ctx.custom(ctx.x[:1]).argmax())
    other = (label + 1) % N_IN
    r = nninv.closest(ctx.custom, ctx.x[0], ClassTarget(other))
    assert r.status == "heuristic" and r.bound == 0.0
    assert math.isfinite(r.distance) and torch.isfinite(r.x).all()
    with torch.no_grad():
        assert int(ctx.custom(r.x.reshape(1, N_IN).float()).argmax()) == other


@pytest.mark.parametrize("name", ["keras_as.onnx", "h5_as.pt"])
def test_content_decides_the_format_not_the_suffix(ctx, name):
    """A Keras file under another format's suffix is read as what its bytes are."""
    original = {"keras_as.onnx": "keras", "h5_as.pt": "h5"}[name]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = nninv.load_model(ctx.files[name])
        reference = nninv.load_model(ctx.files[original])
    with torch.no_grad():
        assert torch.equal(model(ctx.x), reference(ctx.x))


def test_extent_along_no_direction_is_zero(ctx):
    lo, hi = _pre(ctx).extent(torch.zeros(N_IN))
    assert lo == 0.0 and hi == 0.0


# ============================================================================ the command line


def _cli(c: Ctx, command: str) -> list[str]:
    """The words of ``command``, each ``{name}`` replaced by the battery's file of that name."""
    names = {**{k: str(v) for k, v in c.files.items()}, "tmp": str(c.tmp)}
    return [re.sub(r"\{([^}]+)\}", lambda m: names[m.group(1)], a) for a in command.split()]


#: (command line, pattern of the one error line) for every command.
CLI: dict[str, tuple[str, str]] = {
    # demo (fails before any training)
    "demo/dataset": ("demo --dataset nope", r"nope"),
    "demo/data-dir": ("demo --dataset mnist --data-dir {tmp}/nowhere", r"nowhere|MNIST"),
    "demo/components": ("demo --components 0", r"components"),
    # diagnose
    "diagnose/missing": ("diagnose {tmp}/none.onnx", r"none\.onnx"),
    "diagnose/pickle": ("diagnose {pickle.pt}", r"pickle"),
    "diagnose/pickle-as-onnx": ("diagnose {pickle.onnx}", r"pickle"),
    "diagnose/cut": ("diagnose {cut.keras}", r"corrupt or truncated"),
    "diagnose/corrupt-h5": ("diagnose {corrupt.h5}", r"corrupt|truncated"),
    "diagnose/data-shape": ("diagnose {onnx} --data {data_shape}", r"shape"),
    "diagnose/data-nan": ("diagnose {onnx} --data {data_nan}", r"NaN|nan"),
    "diagnose/data-pickle": ("diagnose {onnx} --data {pickle.npy}", r"pickle"),
    "diagnose/data-objects": ("diagnose {onnx} --data {objects}", r"pickle|object"),
    "diagnose/input-shape": ("diagnose {pt} --input-shape a,b", r"input-shape"),
    # invert
    "invert/outputs-nan": ("invert {pt} --outputs {y_nan} --out {tmp}/o.npy", r"nan"),
    "invert/outputs-inf": ("invert {pt} --outputs {y_inf} --out {tmp}/o.npy", r"inf"),
    "invert/outputs--inf": ("invert {pt} --outputs {y_ninf} --out {tmp}/o.npy", r"-inf"),
    "invert/outputs-range": ("invert {onnx} --outputs {y_above} --out {tmp}/o.npy", r"range|1\.5"),
    "invert/outputs-below": (
        "invert {keras} --outputs {y_below} --out {tmp}/o.npy",
        r"range|-0\.25",
    ),
    "invert/outputs-shape": (
        "invert {h5} --outputs {y_shape} --out {tmp}/o.npy",
        r"y_shape\.npy.*shape|shape.*y_shape",
    ),
    "invert/outputs-empty": (
        "invert {pt} --outputs {y_empty} --out {tmp}/o.npy",
        r"y_empty\.npy.*(no samples|empty)",
    ),
    "invert/outputs-strings": (
        "invert {pt} --outputs {strings} --out {tmp}/o.npy",
        r"strings\.npy.*dtype",
    ),
    "invert/outputs-complex": (
        "invert {pt} --outputs {complex} --out {tmp}/o.npy",
        r"complex\.npy.*dtype",
    ),
    "invert/outputs-pickle": ("invert {pt} --outputs {pickle.npy} --out {tmp}/o.npy", r"pickle"),
    "invert/outputs-garbage": (
        "invert {pt} --outputs {garbage.npy} --out {tmp}/o.npy",
        r"garbage\.npy",
    ),
    "invert/outputs-missing": (
        "invert {pt} --outputs {tmp}/none.npy --out {tmp}/o.npy",
        r"none\.npy",
    ),
    "invert/model-pickle": ("invert {pickle.keras} --outputs {y} --out {tmp}/o.npy", r"pickle"),
    "invert/model-cut": (
        "invert {cut.onnx} --outputs {y} --out {tmp}/o.npy",
        r"corrupt or truncated",
    ),
    "invert/model-corrupt-pt": (
        "invert {corrupt.pt} --outputs {y} --out {tmp}/o.npy",
        r"corrupt|truncated",
    ),
    "invert/unsupported-layer": (
        "invert {custom.pt} --outputs {y} --method pinv --input-shape 12 --out {tmp}/o.npy",
        r"cannot invert layer 0.*not a chain",
    ),
    "invert/decoder-cut": (
        "invert {pt} --outputs {y} --decoder {cut.decoder} --out {tmp}/o.npy",
        r"cut\.safetensors.*corrupt or truncated",
    ),
    "invert/decoder-for-another-model": (
        "invert {relu} --outputs {y} --decoder {decoder} --out {tmp}/o.npy",
        r"shape|decoder",
    ),
    "invert/method": ("invert {pt} --outputs {y} --method magic --out {tmp}/o.npy", r"magic"),
    "invert/bounds-lo>hi": (
        "invert {pt} --outputs {y} --bounds 1,0 --out {tmp}/o.npy",
        r"--bounds",
    ),
    "invert/bounds-text": ("invert {pt} --outputs {y} --bounds a,b --out {tmp}/o.npy", r"--bounds"),
    "invert/tol": ("invert {pt} --outputs {y} --tol -1 --out {tmp}/o.npy", r"tol"),
    "invert/target-text": ("invert {pt} --target seven --out {tmp}/o.npy", r"seven"),
    "invert/target-range": ("invert {pt} --target class=9 --out {tmp}/o.npy", r"class|label|9"),
    "invert/confidence": (
        "invert {pt} --target class=1 --confidence 2 --out {tmp}/o.npy",
        r"confidence",
    ),
    "invert/prior-data-shape": (
        "invert {pt} --outputs {y} --prior-data {data_shape} --out {tmp}/o.npy",
        r"data_shape\.npy.*shape",
    ),
    "invert/prior-data-nan": (
        "invert {pt} --outputs {y} --prior-data {data_nan} --out {tmp}/o.npy",
        r"data_nan\.npy.*(NaN|nan)|(NaN|nan).*data_nan",
    ),
    "invert/components": (
        "invert {pt} --outputs {y} --prior-data {x} --prior mixture --components 0 "
        "--out {tmp}/o.npy",
        r"components",
    ),
    "invert/out-is-directory": ("invert {pt} --outputs {y} --out {tmp}", r"directory"),
    "invert/input-shape": (
        "invert {pt} --outputs {y} --input-shape 0,3 --out {tmp}/o.npy",
        r"input-shape",
    ),
    # preimage
    "preimage/model-pickle": ("preimage {pickle.h5} --input {x}", r"pickle"),
    "preimage/input-nan": (
        "preimage {onnx} --input {x_nan} --out {tmp}/p",
        r"x_nan\.npy.*(NaN|nan)",
    ),
    "preimage/input-inf": ("preimage {onnx} --input {x_inf} --out {tmp}/p", r"x_inf\.npy.*inf"),
    "preimage/input-shape": (
        "preimage {onnx} --input {x_shape} --out {tmp}/p",
        r"x_shape\.npy.*shape",
    ),
    "preimage/input-empty": (
        "preimage {onnx} --input {x_empty} --out {tmp}/p",
        r"x_empty\.npy.*(no samples|empty)",
    ),
    "preimage/input-missing": ("preimage {onnx} --out {tmp}/p", r"--input"),
    "preimage/others-shape": (
        "preimage {onnx} --input {x} --others {x_shape} --out {tmp}/p",
        r"x_shape\.npy.*shape",
    ),
    "preimage/bounds": ("preimage {onnx} --input {x} --bounds 1,0 --out {tmp}/p", r"--bounds"),
    "preimage/n": ("preimage {onnx} --input {x} --n 0 --out {tmp}/p", r"--n"),
    "preimage/thin": ("preimage {onnx} --input {x} --thin 0 --out {tmp}/p", r"--thin"),
    "preimage/components": (
        "preimage {onnx} --input {x} --prior-data {x} --prior mixture --components 0 --out {tmp}/p",
        r"components",
    ),
    "preimage/dataset": ("preimage --dataset nope --out {tmp}/p", r"nope"),
    "preimage/index": ("preimage --index 100000 --out {tmp}/p", r"--index"),
    # train-decoder
    "train-decoder/data-nan": (
        "train-decoder {pt} --data {data_nan} --out {tmp}/d.safetensors",
        r"data_nan\.npy.*row \d+ contains NaN",
    ),
    "train-decoder/data-shape": (
        "train-decoder {pt} --data {data_shape} --out {tmp}/d.safetensors",
        r"data_shape\.npy.*shape",
    ),
    "train-decoder/too-few": (
        "train-decoder {pt} --data {x} --out {tmp}/d.safetensors",
        r"x\.npy.*at least 10",
    ),
    "train-decoder/model-pickle": (
        "train-decoder {pickle.onnx} --data {x} --out {tmp}/d.safetensors",
        r"pickle",
    ),
    "train-decoder/hidden": (
        "train-decoder {pt} --data {x} --hidden a,b --out {tmp}/d.safetensors",
        r"--hidden",
    ),
    "train-decoder/epochs": (
        "train-decoder {pt} --data {x} --epochs 0 --out {tmp}/d.safetensors",
        r"--epochs",
    ),
    # train-flow and posterior
    "train-flow/data-nan": (
        "train-flow {pt} --data {data_nan} --out {tmp}/f.safetensors",
        r"data_nan\.npy.*row \d+ contains NaN",
    ),
    "train-flow/epochs": (
        "train-flow {pt} --data {x} --epochs 0 --out {tmp}/f.safetensors",
        r"--epochs",
    ),
    "train-flow/decoder-cut": (
        "train-flow {pt} --data {data_nan} --decoder {cut.decoder} --out {tmp}/f.safetensors",
        r"data_nan\.npy|corrupt",
    ),
    "posterior/n": ("posterior {pt} --outputs {y} --flow {flow} --n 0", r"--n"),
    "posterior/flow-missing": (
        "posterior {pt} --outputs {y} --flow {tmp}/none.safetensors --out {tmp}/p",
        r"none\.safetensors",
    ),
    "posterior/flow-is-decoder": (
        "posterior {pt} --outputs {y} --flow {decoder} --out {tmp}/p",
        r"not an nninv conditional flow",
    ),
    "posterior/outputs-nan": (
        "posterior {pt} --outputs {y_nan} --flow {flow} --out {tmp}/p",
        r"y_nan\.npy.*row \d+ contains NaN",
    ),
    "posterior/outputs-shape": (
        "posterior {pt} --outputs {y_shape} --flow {flow} --out {tmp}/p",
        r"y_shape\.npy.*shape",
    ),
    "posterior/model-pickle": (
        "posterior {pickle.pt} --outputs {y} --flow {flow} --out {tmp}/p",
        r"pickle",
    ),
    "posterior/bounds": (
        "posterior {pt} --outputs {y} --flow {flow} --bounds 1,0 --out {tmp}/p",
        r"--bounds",
    ),
    # closest
    "closest/model-pickle": ("closest {plainpickle.onnx} --input {x}", r"pickle"),
    "closest/model-cut": ("closest {cut.pt} --input {x}", r"corrupt or truncated"),
    "closest/input-nan": ("closest {relu} --input {x_nan} --out {tmp}/c", r"x_nan\.npy.*(NaN|nan)"),
    "closest/input-shape": (
        "closest {relu} --input {x_shape} --out {tmp}/c",
        r"x_shape\.npy.*shape",
    ),
    "closest/input-empty": (
        "closest {relu} --input {x_empty} --out {tmp}/c",
        r"x_empty\.npy.*(no samples|empty)",
    ),
    "closest/input-missing": ("closest {relu} --out {tmp}/c", r"--input"),
    "closest/target": ("closest {relu} --input {x} --target seven --out {tmp}/c", r"--target"),
    "closest/target-range": (
        "closest {relu} --input {x} --target class=5 --out {tmp}/c",
        r"class|label|5",
    ),
    "closest/eps": ("closest {relu} --input {x} --eps -1 --out {tmp}/c", r"--eps|max_distance"),
    "closest/time-limit": ("closest {relu} --input {x} --time-limit 0 --out {tmp}/c", r"time"),
    "closest/count": ("closest {relu} --input {x} --count 0 --out {tmp}/c", r"--count"),
    "closest/bounds": ("closest {relu} --input {x} --bounds 2,1 --out {tmp}/c", r"--bounds"),
    "closest/dataset": ("closest --dataset nope --out {tmp}/c", r"nope"),
}


@pytest.mark.parametrize("case", sorted(CLI))
def test_cli_bad_input(ctx, case, capsys):
    argv, pattern = CLI[case]
    command = argv.split()[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            rc = main(_cli(ctx, argv))
        except SystemExit as e:  # argparse's own usage errors
            rc = e.code
    err = capsys.readouterr().err
    assert rc == 2, f"exit status {rc}; stderr:\n{err}"
    assert "Traceback" not in err, err
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert lines, "no message on stderr"
    last = lines[-1]
    assert last.startswith(f"nninv {command}: error: "), err
    assert re.search(pattern, last), f"{pattern!r} not in {last!r}"


# ============================================================================ fuzz


_SIGNATURES = {
    ".keras": b"PK\x03\x04",
    ".h5": b"\x89HDF\r\n\x1a\n",
    ".onnx": b"\x08\x07\x12",  # an ONNX ModelProto opens with ir_version (field 1)
    ".pt": b"PK\x03\x04",
}


@pytest.mark.parametrize("suffix", sorted(_SIGNATURES))
def test_fuzz_load_model_raises_only_nninv_error(tmp_path, suffix):
    """Random bytes, bare or behind the format's signature, under the format's
    suffix: ``load_model`` raises NNInvError and nothing else."""
    path = tmp_path / f"fuzz{suffix}"

    @settings(
        max_examples=FUZZ_EXAMPLES,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture],
    )
    @given(body=st.binary(min_size=0, max_size=4096), signed=st.booleans())
    def run(body: bytes, signed: bool) -> None:
        path.write_bytes((_SIGNATURES[suffix] if signed else b"") + body)
        with pytest.raises(NNInvError), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            nninv.load_model(path)

    run()


@pytest.mark.parametrize("kind", ["keras", "h5", "onnx", "pt"])
def test_fuzz_damaged_model_files(ctx, tmp_path, kind):
    """A valid file with a run of random bytes written over it: either it still loads
    as a model (the damage missed what matters) or NNInvError; nothing else. Two
    explicit examples make sure both outcomes are checked: an empty patch (the file
    whole) loads, the file cut in half is refused."""
    data = ctx.files[kind].read_bytes()
    path = tmp_path / f"damaged.{kind}"
    seen: set[str] = set()

    @settings(
        max_examples=FUZZ_EXAMPLES,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture],
    )
    @given(
        at=st.floats(0.0, 1.0),
        patch=st.binary(min_size=1, max_size=64),
        cut=st.booleans(),
    )
    @example(at=0.0, patch=b"", cut=False)
    @example(at=0.5, patch=b"", cut=True)
    def run(at: float, patch: bytes, cut: bool) -> None:
        i = int(at * (len(data) - 1))
        damaged = data[:i] if cut else data[:i] + patch + data[i + len(patch) :]
        path.write_bytes(damaged)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model = nninv.load_model(path)
        except NNInvError:
            seen.add("refused")
            return
        assert isinstance(model, nn.Module)
        seen.add("loaded")

    run()
    assert seen == {"loaded", "refused"}

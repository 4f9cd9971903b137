"""The explorer's web API (FastAPI's TestClient): good requests, and 422 on bad ones."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from tolerances import EPS

pytest.importorskip("fastapi", reason="the explorer extra (fastapi) is not installed")
pytest.importorskip("httpx", reason="FastAPI's TestClient needs httpx")

from fastapi.testclient import TestClient  # noqa: E402

from nninv.explorer import Explorer, create_app, default_explorer  # noqa: E402

TOL = EPS[torch.float64]["residual"]


def small_explorer() -> Explorer:
    """The seed's model, briefly trained, with small priors and a small decoder (seconds)."""
    with torch.random.fork_rng():
        return default_explorer(epochs=2, n_prior=600, components=3, decoder_epochs=2, n_images=20)


@pytest.fixture(scope="module")
def explorer() -> Explorer:
    return small_explorer()


@pytest.fixture(scope="module")
def client(explorer) -> TestClient:
    return TestClient(create_app(explorer))


@pytest.fixture(scope="module")
def view(client) -> dict:
    r = client.post("/api/select", json={"image": 3})
    assert r.status_code == 200, r.text
    return r.json()


def test_page_and_static_files_are_served(client):
    r = client.get("/")
    assert r.status_code == 200 and '<canvas id="draw"' in r.text
    assert "http://" not in r.text and "https://" not in r.text  # nothing from a network
    for name, kind in [("app.js", "javascript"), ("style.css", "css")]:
        s = client.get(f"/static/{name}")
        assert s.status_code == 200 and kind in s.headers["content-type"]
        assert "https://" not in s.text
    assert client.get("/static/../_state.py").status_code == 404
    assert client.get("/static/secret.txt").status_code == 404


def test_info(client, explorer):
    info = client.get("/api/info").json()
    assert info["n_inputs"] == 784 and info["n_outputs"] == 10
    assert info["display_shape"] == [28, 28] and info["bounds"] == [0.0, 1.0]
    assert info["inversions"] == ["pinv", "gaussian", "mixture", "decoder"]
    assert info["n_images"] == len(explorer.images)


def test_select_an_image_inverts_it_under_every_prior(view, explorer):
    assert view["kind"] == "affine" and view["dim"] == 774 and view["bounded"]
    assert [inv["name"] for inv in view["inversions"]] == ["pinv", "gaussian", "mixture", "decoder"]
    y = torch.tensor(view["y"], dtype=torch.float64)
    for inv in view["inversions"]:
        assert inv["error"] is None and inv["converged"]
        assert inv["residual"] <= TOL
        out = torch.tensor(inv["output"], dtype=torch.float64)
        assert float((out - y).abs().max()) <= TOL
    assert view["sliders"] == explorer.n_directions
    assert view["spread"] == sorted(view["spread"], reverse=True)


def test_slider_directions_are_principal_directions_in_the_null_space(explorer, view):
    v = explorer.get(view["view"])
    D = v.directions
    W = explorer.model[0].weight
    assert float((W @ D).abs().max()) <= EPS[torch.float64]["close"]  # f fixed along each
    S = explorer.priors["gaussian"].covariance
    U = D / D.norm(dim=0)
    G = U.T @ U
    assert float((G - torch.eye(G.shape[0], dtype=G.dtype)).abs().max()) <= 1e-9
    # principal: U^T Sigma U is diagonal with the top variances within the null space,
    # and a slider unit is one prior std along its direction
    lam = torch.tensor(v.spread, dtype=torch.float64) ** 2
    Q = U.T @ S @ U
    assert float((Q - torch.diag(lam)).abs().max()) <= 1e-9 * float(lam[0])
    assert float((D.norm(dim=0) ** 2 - lam).abs().max()) <= 1e-9 * float(lam[0])
    N = explorer.get(view["view"]).pre.basis
    top = torch.linalg.eigvalsh(N.T @ S @ N).flip(0)[: len(lam)]
    assert float((top - lam).abs().max()) <= 1e-9 * float(lam[0])


def test_slide_keeps_the_output_and_changes_the_image(client, view):
    y = torch.tensor(view["y"], dtype=torch.float64)
    k = view["sliders"]
    a = client.post("/api/slide", json={"view": view["view"], "coefs": [0.0] * k}).json()
    b = client.post(
        "/api/slide", json={"view": view["view"], "coefs": [2.0] + [-1.0] * (k - 1)}
    ).json()
    for r in (a, b):
        x = torch.tensor(r["x"], dtype=torch.float64)
        assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
        assert r["residual"] <= TOL
        assert float((torch.tensor(r["output"], dtype=torch.float64) - y).abs().max()) <= TOL
    change = torch.tensor(a["x"]) - torch.tensor(b["x"])
    assert float(change.norm()) > 0.5
    img = client.post(
        "/api/slide", json={"view": view["view"], "base": "image", "coefs": [0.0] * k}
    ).json()
    assert img["x"] == view["image"]  # the image itself is a member: no move


def test_project_a_drawing(client, view):
    x = torch.tensor(view["image"], dtype=torch.float64).reshape(28, 28)
    x[10:18, 5:9] = 1.0  # a stroke
    r = client.post("/api/project", json={"view": view["view"], "x": x.flatten().tolist()})
    assert r.status_code == 200, r.text
    d = r.json()
    assert d["residual"] <= TOL and d["residual_drawn"] > 1e-3
    p = torch.tensor(d["x"], dtype=torch.float64)
    assert float(p.min()) >= 0.0 and float(p.max()) <= 1.0
    assert math.isclose(d["distance"], float((p - x.flatten()).norm()), rel_tol=1e-9)
    # the projection is the closest member: the image, a member, is no closer
    assert d["distance"] <= float((torch.tensor(view["image"]) - x.flatten()).norm()) + 1e-9


def test_closest_other_class(client, view):
    r = client.post("/api/closest", json={"view": view["view"], "norm": "linf"})
    assert r.status_code == 200, r.text
    d = r.json()
    assert d["status"] == "optimal" and d["distance"] >= d["bound"] - 1e-9
    out = torch.tensor(d["output"], dtype=torch.float64)
    # the answer lies on the boundary of the class (ties count as the class)
    assert float(out.max() - out[d["label"]]) <= EPS[torch.float64]["close"]
    assert d["label"] != int(torch.tensor(view["y"]).argmax())


def test_typed_output(client):
    y = [0.02] * 10
    y[7] = 0.9
    r = client.post("/api/select", json={"output": y})
    assert r.status_code == 200, r.text
    v = r.json()
    assert v["image"] is None and v["y"] == pytest.approx(y, abs=1e-15)
    s = client.post("/api/slide", json={"view": v["view"], "coefs": [1.0] * v["sliders"]}).json()
    assert s["residual"] <= TOL * 10 or not v["bounded"]


@pytest.mark.parametrize(
    "path,body,words",
    [
        ("/api/select", {"image": -1}, "greater than or equal"),
        ("/api/select", {"image": 10_000}, "outside"),
        ("/api/select", {}, "exactly one"),
        ("/api/select", {"image": 1, "output": [0.5] * 10}, "exactly one"),
        ("/api/select", {"output": [0.5] * 9}, "9 values"),
        ("/api/select", {"output": [1.5] + [0.5] * 9}, "range"),
        ("/api/select", {"output": ["a"] * 10}, "number"),
        ("/api/select", {"image": 1, "extra": 2}, "extra"),
        ("/api/slide", {"view": "image:3", "coefs": [0.0] * 5}, "6 sliders"),
        ("/api/slide", {"view": "image:3", "coefs": [11.0] * 6}, "less than or equal"),
        ("/api/slide", {"view": "image:3", "base": "nope", "coefs": [0.0] * 6}, "unknown"),
        ("/api/slide", {"view": "nothing", "coefs": [0.0] * 6}, "unknown view"),
        ("/api/project", {"view": "image:3", "x": [0.5] * 783}, "783 values"),
        ("/api/project", {"view": "image:3", "x": [2.0] * 784}, "outside the bounds"),
        ("/api/closest", {"view": "image:3", "norm": "l7"}, "l2"),
        ("/api/closest", {"view": "image:3", "label": 99}, "outside"),
    ],
)
def test_bad_requests_get_422_with_a_message(client, view, path, body, words):
    r = client.post(path, json=body)
    assert r.status_code == 422, r.text
    assert words in r.text


@pytest.mark.parametrize("bad", ["NaN", "Infinity", "-Infinity"])
@pytest.mark.parametrize("path", ["/api/project", "/api/slide", "/api/select"])
def test_nan_and_inf_get_422(client, view, path, bad):
    if path == "/api/project":
        body = '{"view": "image:3", "x": [' + ",".join(["0.5"] * 783 + [bad]) + "]}"
    elif path == "/api/slide":
        body = '{"view": "image:3", "coefs": [' + ",".join(["0"] * 5 + [bad]) + "]}"
    else:
        body = '{"output": [' + ",".join(["0.5"] * 9 + [bad]) + "]}"
    r = client.post(path, content=body, headers={"content-type": "application/json"})
    assert r.status_code == 422, r.text
    assert "finite" in r.text or "nan" in r.text.lower()


def test_curved_model_uses_the_gauss_newton_projection():
    """A two-layer sigmoid net: no polytope, so the true set via Gauss-Newton."""
    g = torch.Generator().manual_seed(0)
    X = torch.rand(60, 1, 8, 8, generator=g, dtype=torch.float64)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        f = nn.Sequential(
            nn.Flatten(), nn.Linear(64, 16), nn.Tanh(), nn.Linear(16, 4), nn.Sigmoid()
        )
    from nninv.explorer import explorer_for

    ex = explorer_for(f.double(), X, X[:5], components=2, input_shape=(1, 8, 8))
    assert not ex.exact
    client = TestClient(create_app(ex))
    v = client.post("/api/select", json={"image": 0}).json()
    assert v["kind"] is None and v["sliders"] == 6
    s = client.post("/api/slide", json={"view": v["view"], "base": "image", "coefs": [1.0] * 6})
    assert s.status_code == 200, s.text
    assert s.json()["residual"] <= 1e-8
    x = torch.tensor(v["image"]).clamp(0, 1)
    x[:8] = 1.0
    p = client.post("/api/project", json={"view": v["view"], "x": x.tolist()}).json()
    assert p["residual"] <= 1e-8 and p["residual_drawn"] > p["residual"]
    # the closed-form inversions follow in the background: the select did not wait for them
    import threading

    assert all(inv["x"] is None and "background" in inv["error"] for inv in v["inversions"])
    for t in [t for t in threading.enumerate() if t.name == "nninv-inversions"]:
        t.join(60)
    again = client.post("/api/select", json={"image": 0}).json()
    assert {inv["name"] for inv in again["inversions"] if inv["x"] is not None} >= {"pinv"}


def test_explore_without_the_extra_says_how_to_install(monkeypatch, capsys):
    from nninv.cli import explore, main

    monkeypatch.setattr(explore, "_have_web", lambda: False)
    assert main(["explore"]) == 2
    assert "pip install 'nninv[explorer]'" in capsys.readouterr().err


def test_explore_rejects_options_without_a_model(capsys):
    from nninv.cli import main

    assert main(["explore", "--decoder", "d.safetensors"]) == 2
    assert "need a MODEL" in capsys.readouterr().err
    assert main(["explore", "--port", "0"]) == 2


def test_explorer_rejects_images_outside_the_bounds():
    from nninv import NNInvError

    f = nn.Sequential(nn.Linear(4, 2), nn.Sigmoid())
    with pytest.raises(NNInvError, match="outside the bounds"):
        Explorer(f, torch.full((3, 4), 2.0))
    with pytest.raises(NNInvError, match="NaN"):
        Explorer(f, torch.full((3, 4), math.nan))


def test_explore_builds_from_the_files_named_on_the_command_line(tmp_path):
    import numpy as np

    from nninv.cli import build_parser, explore

    g = torch.Generator().manual_seed(0)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        f = nn.Sequential(nn.Linear(64, 10), nn.Sigmoid())
    X = torch.rand(40, 64, generator=g)
    model_path = tmp_path / "model.pt"
    torch.jit.trace(f, X[:1]).save(str(model_path))
    data_path = tmp_path / "X.npy"
    np.save(data_path, X.numpy())
    args = build_parser().parse_args(["explore", str(model_path), "--data", str(data_path)])
    ex = explore.build(args)
    assert ex.exact and ex.n == 64 and len(ex.images) == 40
    v = TestClient(create_app(ex)).post("/api/select", json={"image": 2}).json()
    assert v["kind"] == "affine" and v["dim"] == 54
    args = build_parser().parse_args(["explore", str(model_path), "--dataset", "digits8x8"])
    assert explore.build(args).display_shape == (8, 8)
    args = build_parser().parse_args(["explore", str(tmp_path / "missing.pt")])
    with pytest.raises((FileNotFoundError, ValueError)):
        explore.build(args)


def test_output_bars_follow_the_signed_value():
    # the page's bar lengths (static/app.js barGeometry), run in node: the winning logit's
    # bar is the longest, a negative one shorter than any larger value's
    import json
    import re
    import shutil
    import subprocess
    from pathlib import Path

    import nninv.explorer

    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed; the bar geometry is JavaScript")
    js = (Path(nninv.explorer.__file__).parent / "static" / "app.js").read_text()
    fn = re.search(r"function barGeometry\(y\) \{.*?\n\}\n", js, re.S)
    assert fn is not None, "app.js lost barGeometry"
    cases = [[-7.97, 6.78, 0.5, -1.0], [0.1, 0.7, 0.2]]
    script = fn.group(0) + f"console.log(JSON.stringify({json.dumps(cases)}.map(barGeometry)));"
    out = json.loads(
        subprocess.run([node, "-e", script], capture_output=True, check=True, text=True).stdout
    )
    logits, probs = out
    assert logits["widths"] == pytest.approx([0.0, 100.0, 100 * 8.47 / 14.75, 100 * 6.97 / 14.75])
    assert logits["zero"] == pytest.approx(100 * 7.97 / 14.75)
    # probabilities: proportional to the value, zero at the left edge
    assert probs["widths"] == pytest.approx([100 / 7, 100.0, 200 / 7]) and probs["zero"] == 0


def test_default_explorer_trains_its_decoder_in_the_background():
    import threading

    from nninv.explorer import default_explorer

    ex = default_explorer(
        epochs=1, n_prior=300, components=2, decoder_epochs=1, n_images=5, background_decoder=True
    )
    view = ex.view_image(0)  # the page works before the decoder is there
    worker = next((t for t in threading.enumerate() if t.name == "nninv-decoder"), None)
    if worker is not None:
        worker.join(120)
    assert ex.decoder is not None
    assert view.inversions["decoder"].x is not None  # attached to the views already built
    assert "decoder" in ex.view_image(1).inversions


_STOP_WHILE_BUSY = """
import sys, threading, time, types
import torch
import nninv.cli.explore as ce
import nninv.explorer as ex

def work():  # autograd in a background thread, as an inversion runs after a select
    a = torch.randn(400, 400, dtype=torch.float64, requires_grad=True)
    while True:
        (a @ a).sum().backward()

def serve(app, host, port):  # the server is stopped (Ctrl-C) while the thread works
    threading.Thread(target=work, name="nninv-inversions", daemon=True).start()
    time.sleep(0.5)

ex.serve, ex.create_app = serve, lambda explorer: None
ce.build, ce._have_web = (lambda args: None), (lambda: True)
print("busy before:", ex.busy())
sys.exit(ce.run(types.SimpleNamespace(host="127.0.0.1", port=0)))
"""


def test_stopping_the_server_during_background_work_exits_cleanly():
    """Interpreter teardown under a running autograd thread aborted the process (rc 134)."""
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", _STOP_WHILE_BUSY], capture_output=True, text=True, timeout=120
    )
    assert "busy before: False" in done.stdout
    assert done.returncode == 0, done.stderr[-500:]
    assert "terminate called" not in done.stderr

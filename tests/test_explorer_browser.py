"""The explorer end to end in a real browser: Playwright driving Debian's chromium.

A uvicorn server runs the app on a free local port in a thread; the page is
loaded, a slider moved (the image must change while the displayed output stays
equal to 1e-6), a stroke drawn and projected, and the closest input of another
class asked for. Screenshots go to the test's tmp dir (and, when the folder
``NNINV_EXPLORER_SHOTS`` names exists, copies there too). Skips with the reason
only when no browser or no Playwright can be had.
"""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the explorer extra (fastapi) is not installed")
uvicorn = pytest.importorskip("uvicorn", reason="the explorer extra (uvicorn) is not installed")
sync_api = pytest.importorskip(
    "playwright.sync_api", reason="Playwright is not installed (pip install playwright)"
)

from nninv.explorer import create_app  # noqa: E402
from test_explorer import small_explorer  # noqa: E402

CHROMIUM = os.environ.get("NNINV_CHROMIUM", "/usr/bin/chromium")
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
#: How far the displayed outputs may move while a slider moves (the issue's 1e-6).
OUTPUT_TOL = 1e-6


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def server():
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"no browser: {CHROMIUM} is missing (apt-get install chromium)")
    app = create_app(small_explorer())
    port = _free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    t0 = time.monotonic()
    while not srv.started:
        if time.monotonic() - t0 > 30 or not thread.is_alive():
            pytest.fail("the uvicorn server did not start")
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}/"
    srv.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def page(server):
    with sync_api.sync_playwright() as pw:
        try:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        except Exception as e:  # a browser that cannot start is no browser
            pytest.skip(f"chromium at {CHROMIUM} did not start: {e}")
        pg = browser.new_page(viewport={"width": 1280, "height": 1400})
        errors: list[str] = []
        pg.on("pageerror", lambda e: errors.append(str(e)))
        pg.goto(server)
        pg.wait_for_selector("body[data-ready='1']", timeout=30_000)
        pg.wait_for_function("Number(document.getElementById('member').dataset.seq || 0) >= 1")
        pg.errors = errors  # type: ignore[attr-defined]
        yield pg
        browser.close()


def _outputs(page, panel: str) -> list[float]:
    return [float(v) for v in page.locator(f"#{panel} .out-value").all_inner_texts()]


def _pixels(page, canvas: str) -> str:
    return page.evaluate(f"document.getElementById('{canvas}').toDataURL()")


def _shot(page, tmp_path: Path, name: str) -> Path:
    path = tmp_path / f"explorer_{name}.png"
    page.screenshot(path=str(path), full_page=True)
    extra = os.environ.get("NNINV_EXPLORER_SHOTS")
    if extra and Path(extra).is_dir():
        shutil.copy(path, Path(extra) / path.name)
    return path


def test_page_loads_with_every_inversion(page, tmp_path):
    assert page.locator("#inversions canvas").count() == 4
    captions = page.locator("#inversions figcaption").all_inner_texts()
    assert [c.split(":")[0] for c in captions] == ["pinv", "gaussian", "mixture", "decoder"]
    assert len(_outputs(page, "target-bars")) == 10
    assert page.locator("#sliders .slider").count() == 6
    assert not page.errors
    assert _shot(page, tmp_path, "loaded").stat().st_size > 10_000


def test_slider_changes_the_image_not_the_output(page, tmp_path):
    before_img, before_out = _pixels(page, "member"), _outputs(page, "member-bars")
    seq = int(page.locator("#member").get_attribute("data-seq"))
    slider = page.locator("#sliders .slider").first
    slider.fill("2.5")  # sets the value and fires 'input', as a drag does
    page.wait_for_function(f"Number(document.getElementById('member').dataset.seq) > {seq}")
    page.wait_for_function("!document.getElementById('member-caption').textContent.includes('…')")
    after_img, after_out = _pixels(page, "member"), _outputs(page, "member-bars")
    assert after_img != before_img
    assert len(after_out) == len(before_out) == 10
    assert max(abs(a - b) for a, b in zip(after_out, before_out)) <= OUTPUT_TOL
    target = _outputs(page, "target-bars")
    assert max(abs(a - b) for a, b in zip(after_out, target)) <= OUTPUT_TOL
    _shot(page, tmp_path, "slider")


def test_a_stroke_is_projected_onto_the_preimage(page, tmp_path):
    seq = int(page.locator("#projected").get_attribute("data-seq") or 0)
    box = page.locator("#draw").bounding_box()
    assert box is not None
    x0, y0 = box["x"] + box["width"] * 0.2, box["y"] + box["height"] * 0.3
    page.mouse.move(x0, y0)
    page.mouse.down()
    for i in range(1, 15):
        page.mouse.move(x0 + i * box["width"] * 0.04, y0 + i * box["height"] * 0.03)
    page.mouse.up()
    page.wait_for_function(f"Number(document.getElementById('projected').dataset.seq || 0) > {seq}")
    drawn, projected = _outputs(page, "drawn-bars"), _outputs(page, "projected-bars")
    target = _outputs(page, "target-bars")
    assert max(abs(a - b) for a, b in zip(projected, target)) <= OUTPUT_TOL
    assert max(abs(a - b) for a, b in zip(drawn, target)) > 1e-4  # the stroke alone moves f
    _shot(page, tmp_path, "drawn")


def test_closest_other_class(page, tmp_path):
    page.select_option("#closest-norm", "linf")
    page.click("#closest-btn")
    page.wait_for_function(
        "document.getElementById('closest-info').textContent.includes('distance')", timeout=60_000
    )
    info = page.locator("#closest-info").inner_text()
    assert "status optimal" in info and "lower bound" in info
    assert not page.errors
    _shot(page, tmp_path, "closest")

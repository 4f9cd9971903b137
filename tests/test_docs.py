"""The documentation site builds from the package with no warning, runs every
example, renders a reference entry for every public name, and has no broken
internal link."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"

pytestmark = pytest.mark.skipif(
    any(
        importlib.util.find_spec(m) is None
        for m in ("sphinx", "numpydoc", "sphinx_gallery", "myst_parser", "furo")
    ),
    reason="the docs extra is not installed (pip install -e '.[docs]')",
)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    out = tmp_path_factory.mktemp("site")
    cmd = [
        sys.executable,
        "-m",
        "sphinx",
        "-W",
        "--keep-going",
        "-b",
        "html",
        "-q",
        str(DOCS),
        str(out),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-8000:]
    return out


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []
        self.ids: set[str] = set()

    def handle_starttag(self, tag, attrs):
        d = dict(attrs)
        if "id" in d and d["id"]:
            self.ids.add(d["id"])
        for key in ("href", "src"):
            if d.get(key):
                self.links.append(d[key])


@pytest.mark.slow
def test_site_builds_without_warnings_and_runs_examples(site):
    gallery = site / "auto_examples"
    pages = sorted(p.name for p in gallery.glob("plot_*.html"))
    sources = sorted(p.stem + ".html" for p in (DOCS / "examples").glob("plot_*.py"))
    assert pages == sources and pages
    figures = list((site / "_images").glob("sphx_glr_plot_*"))
    assert len(figures) >= len(sources)  # every example drew at least one figure


@pytest.mark.slow
def test_every_public_name_has_a_reference_entry(site):
    sys.path.insert(0, str(DOCS))
    try:
        from _api import modules, public_names
    finally:
        sys.path.remove(str(DOCS))
    missing = []
    total = 0
    for module in modules():
        for name in public_names(module):
            total += 1
            own = site / "api" / "generated" / f"{module}.{name}.html"
            facade = site / "api" / "generated" / f"nninv.{name}.html"
            if not (own.exists() or facade.exists()):
                missing.append(f"{module}.{name}")
    assert total > 50
    assert not missing, missing


@pytest.mark.slow
def test_internal_links_resolve(site):
    broken = []
    pages = list(site.rglob("*.html"))
    ids = {}
    for page in pages:
        parser = _Links()
        parser.feed(page.read_text(encoding="utf-8"))
        ids[page.resolve()] = (parser.ids, parser.links)
    for page, (_, links) in ids.items():
        for link in links:
            url = urlparse(link)
            if url.scheme or link.startswith(("mailto:", "//", "data:")):
                continue
            target = (page.parent / unquote(url.path)).resolve() if url.path else page
            if not target.exists():
                broken.append(f"{page.relative_to(site.resolve())}: {link}")
                continue
            if url.fragment and target.suffix == ".html" and target in ids:
                if url.fragment not in ids[target][0]:
                    broken.append(f"{page.relative_to(site.resolve())}: {link} (no anchor)")
    assert not broken, "\n".join(broken[:40])


def test_guides_cover_every_capability():
    """One guide per task the README promises; each guide is in the site's toctree."""
    index = (DOCS / "index.md").read_text()
    guides = sorted(p.stem for p in (DOCS / "guides").glob("*.md"))
    for g in guides:
        assert f"guides/{g}" in index, g
    assert len(guides) >= 9


def test_run_blocks_fails_on_a_raising_example():
    sys.path.insert(0, str(DOCS))
    try:
        from _run_blocks import ExampleError, run_blocks
    finally:
        sys.path.remove(str(DOCS))
    assert run_blocks("ok", "text\n```python\nx = 1 + 1\n```\n```python\nassert x == 2\n```\n") == 2
    with pytest.raises(ExampleError, match=r"bad: Python block 2 raised ZeroDivisionError"):
        run_blocks("bad", "```python\nx = 1\n```\n```python\n1 / 0\n```\n")


def test_run_doctests_fails_on_a_wrong_docstring_example(tmp_path, monkeypatch):
    (tmp_path / "fake_doc_mod.py").write_text('def f():\n    """\n    >>> 1 + 1\n    3\n    """\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.syspath_prepend(str(DOCS))
    from _run_blocks import ExampleError, run_doctests

    with pytest.raises(ExampleError, match="fake_doc_mod: 1 of 1 docstring examples failed"):
        run_doctests(["fake_doc_mod"])
    (tmp_path / "fine_doc_mod.py").write_text('def f():\n    """\n    >>> 1 + 1\n    2\n    """\n')
    assert run_doctests(["fine_doc_mod"]) == (1, 1)

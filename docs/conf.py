"""Sphinx configuration for nninv's documentation site.

Built offline from the package's own docstrings: the API reference is generated
from ``__all__`` of the public modules (``_api.py``), the CLI reference from the
argument parsers (``_cli.py``), and the gallery (``examples/``) is executed at
build time by sphinx-gallery, so an example that raises fails the build.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _api import write_api_pages  # noqa: E402
from _cli import write_cli_page  # noqa: E402

import nninv  # noqa: E402

project = "nninv"
author = "the nninv developers"
copyright = "2026, the nninv developers"
release = version = nninv.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.mathjax",
    "sphinx.ext.intersphinx",
    "numpydoc",
    "myst_parser",
    "sphinx_gallery.gen_gallery",
    "_run_blocks",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "examples", "Thumbs.db"]
templates_path = ["_templates"]

# Offline: no intersphinx inventories are fetched.
intersphinx_mapping: dict[str, tuple[str, str | None]] = {}

autosummary_generate = True
autodoc_default_options = {"members": True, "inherited-members": False}
autodoc_typehints = "none"
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
numpydoc_xref_param_type = False

myst_enable_extensions = ["colon_fence", "dollarmath"]
myst_heading_anchors = 3

sphinx_gallery_conf = {
    "examples_dirs": "examples",
    "gallery_dirs": "auto_examples",
    "filename_pattern": r"/plot_",
    "abort_on_example_error": True,
    "only_warn_on_example_error": False,
    "remove_config_comments": True,
    "download_all_examples": False,
    "show_signature": False,
    "reference_url": {"nninv": None},
    "matplotlib_animations": False,
    "plot_gallery": os.environ.get("NNINV_DOCS_PLOT", "True"),
}

html_theme = "furo"
html_title = f"nninv {release}"
html_static_path: list[str] = []

nitpicky = False
suppress_warnings = ["config.cache"]


# Written when the configuration is read, before Sphinx looks for source files.
write_api_pages(HERE / "api")
write_cli_page(HERE / "cli.md")

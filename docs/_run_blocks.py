"""Run every ```python block of the Markdown pages while the site builds.

Sphinx reads each page once; this extension executes the page's Python blocks
in order, in one namespace per page, in a temporary working directory, with
torch seeded. A block that raises stops the build with the page and block
number, so an example on the site cannot rot. Blocks fenced as ```text,
```bash or ```console are shown, not run. The docstring examples of every
module that defines a public name (the API reference shows them) run too,
when the build starts.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import tempfile
import time
from pathlib import Path

FENCE = re.compile(r"^```python[ \t]*\n(.*?)^```", re.S | re.M)

#: Pages whose blocks ran, with the number of blocks and seconds (for the build log).
RAN: dict[str, tuple[int, float]] = {}


class ExampleError(RuntimeError):
    pass


def run_blocks(name: str, text: str) -> int:
    """Execute the Python blocks of one page; return how many ran."""
    blocks = FENCE.findall(text)
    if not blocks:
        return 0
    import matplotlib

    matplotlib.use("Agg")
    import torch

    torch.manual_seed(0)
    namespace: dict[str, object] = {"__name__": f"docs_{name.replace('/', '_')}"}
    start = time.perf_counter()
    here = os.getcwd()
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)
        try:
            for i, block in enumerate(blocks, start=1):
                out = io.StringIO()
                try:
                    with contextlib.redirect_stdout(out):
                        exec(compile(block, f"<{name} block {i}>", "exec"), namespace)  # noqa: S102
                except Exception as e:  # the build must stop, naming the block
                    raise ExampleError(
                        f"{name}: Python block {i} raised {type(e).__name__}: {e}"
                    ) from e
        finally:
            os.chdir(here)
    RAN[name] = (len(blocks), time.perf_counter() - start)
    return len(blocks)


def _source_read(app, docname: str, source: list[str]) -> None:  # noqa: ANN001
    path = Path(app.env.doc2path(docname))
    if path.suffix == ".md":
        run_blocks(docname, source[0])


def _doctests(app) -> None:  # noqa: ANN001
    from _api import modules

    ran, n = run_doctests(modules())
    app.config.nninv_doctests = (ran, n)


def setup(app) -> dict[str, bool]:  # noqa: ANN001
    app.connect("source-read", _source_read)
    app.connect("builder-inited", _doctests)
    return {"parallel_read_safe": True}


def run_doctests(module_names: list[str]) -> tuple[int, int]:
    """Run the docstring examples of the modules that define the public names.

    Returns (examples run, modules); raises :class:`ExampleError` naming the
    module and the failure count when an example fails.
    """
    import doctest
    import importlib
    import inspect

    import matplotlib

    matplotlib.use("Agg")
    defining: set[str] = set()
    for name in module_names:
        mod = importlib.import_module(name)
        defining.add(mod.__name__)
        for attr in getattr(mod, "__all__", []):
            obj = getattr(mod, attr, None)
            owner = inspect.getmodule(obj) if obj is not None else None
            if owner is not None and owner.__name__.startswith("nninv"):
                defining.add(owner.__name__)
    flags = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
    ran = 0
    here = os.getcwd()
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)
        try:
            for name in sorted(defining):
                out = io.StringIO()
                with contextlib.redirect_stdout(out):
                    result = doctest.testmod(importlib.import_module(name), optionflags=flags)
                if result.failed:
                    raise ExampleError(
                        f"{name}: {result.failed} of {result.attempted} docstring examples "
                        f"failed:\n{out.getvalue()[-3000:]}"
                    )
                ran += result.attempted
        finally:
            os.chdir(here)
    return ran, len(defining)

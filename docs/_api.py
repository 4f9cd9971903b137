"""Write the API reference pages from the package itself (never by hand).

One page per public module, listing every name in its ``__all__`` (the package
facade: ``nninv.__all__``) with an autosummary entry; ``count_entries`` says how
many names there are, so a test can compare it with what the build rendered.
"""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path

#: The public modules, in reading order. The facade comes first.
PUBLIC_MODULES = [
    "nninv",
    "nninv.priors",
    "nninv.learned",
    "nninv.invertible",
    "nninv.geometry",
    "nninv.model",
    "nninv.datasets",
    "nninv.metrics",
    "nninv.figures",
    "nninv.distributed",
    "nninv.targets",
]

OPTIONAL = {"nninv.region", "nninv.vnnlib"}


def public_names(module: str) -> list[str]:
    """The names a public module documents: its ``__all__`` without dunders and
    without submodules (a submodule gets its own page)."""
    mod = importlib.import_module(module)
    names = []
    for name in getattr(mod, "__all__", []):
        if name.startswith("__"):
            continue
        if inspect.ismodule(getattr(mod, name, None)):
            continue
        names.append(name)
    return sorted(names)


def modules() -> list[str]:
    found = list(PUBLIC_MODULES)
    for extra in sorted(OPTIONAL):
        try:
            importlib.import_module(extra)
        except ImportError:
            continue
        found.append(extra)
    return found


def _shadowed(module: str) -> bool:
    import nninv

    parent, _, name = module.rpartition(".")
    return parent == "nninv" and not inspect.ismodule(getattr(nninv, name, None))


def count_entries() -> dict[str, int]:
    return {m: len(public_names(m)) for m in modules()}


def write_api_pages(folder: Path) -> None:
    import shutil

    folder.mkdir(exist_ok=True)
    shutil.rmtree(folder / "generated", ignore_errors=True)  # stale pages of renamed names
    index = [
        "# API reference",
        "",
        "Generated from the package: one page per public module, one entry per name",
        "in its `__all__`. The package facade (`import nninv`) re-exports the main",
        "entry points.",
        "",
        "```{toctree}",
        ":maxdepth: 1",
        "",
    ]
    for module in modules():
        index.append(module)
        title = f"`{module}`"
        mod = importlib.import_module(module)
        doc = inspect.getdoc(mod) or ""
        summary = doc.split("\n\n")[0].replace("\n", " ")
        lines = [
            title,
            "=" * len(title),
            "",
            f".. automodule:: {module}",
            "   :no-members:",
            # a module named like a function of the facade (nninv.region) is
            # described once, by the function's entry
            *(["   :no-index:"] if _shadowed(module) else []),
            "",
            f".. currentmodule:: {module}",
            "",
            ".. autosummary::",
            "   :toctree: generated",
            "   :nosignatures:",
            "",
        ]
        import nninv

        own, facade = [], []
        for name in public_names(module):
            same = module != "nninv" and getattr(nninv, name, None) is getattr(mod, name)
            (facade if same else own).append(name)
        lines += [f"   {name}" for name in own]
        if facade:
            lines += ["", ".. rubric:: Also exported by the package facade", ""]
            lines += [f"- :obj:`{module}.{name} <nninv.{name}>`" for name in facade]
        del summary
        text = "\n".join(lines) + "\n"
        path = folder / f"{module}.rst"
        if not path.exists() or path.read_text() != text:
            path.write_text(text)
    index.append("```")
    text = "\n".join(index) + "\n"
    path = folder / "index.md"
    if not path.exists() or path.read_text() != text:
        path.write_text(text)

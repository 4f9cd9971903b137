"""The package's shape: the public API it promises, and layers that import only downward.

The layers, bottom up (README's "Layout"): foundation (errors, results, linear
algebra, targets, data sets, metrics), ``model/``, ``priors/``, ``methods/``,
``geometry/``, and presentation (``figures``, ``cli/``, the package facade). A
module may import from its own layer or a lower one, never from a higher one;
function-local imports count too.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

import nninv

SRC = Path(nninv.__file__).resolve().parent

#: The names ``nninv`` exports; changing them is an API change and must be deliberate.
PUBLIC_API = [
    "ClassTarget",
    "Closest",
    "Diagnosis",
    "Inversion",
    "NNInvError",
    "NNInvWarning",
    "OutputSet",
    "Polyhedron",
    "Posterior",
    "Preimage",
    "Verification",
    "Region",
    "__version__",
    "closest",
    "diagnose",
    "invert",
    "load_model",
    "posterior",
    "preimage",
    "priors",
    "verify",
    "vnnlib",
    "region",
]

#: Public submodules and the names README documents in them.
PUBLIC_MODULES = {
    "nninv.priors": [
        "L2",
        "BatchNormPrior",
        "CombinedPrior",
        "GaussianMixturePrior",
        "GaussianPrior",
        "LinearPosterior",
        "Prior",
        "TotalVariation",
    ],
    "nninv.datasets": ["load_embedded", "load_mnist", "read_idx", "write_idx", "load_dataset"],
    "nninv.metrics": ["psnr", "ssim"],
    "nninv.figures": ["save_grid"],
    "nninv.model": ["Diagnosis", "Permute", "Reshape", "diagnose", "load_model"],
    "nninv.geometry": ["Closest", "Extent", "Preimage", "Samples", "closest", "preimage"],
    "nninv.distributed": ["DatasetRun", "StreamResult", "invert_dataset", "invert_file"],
    "nninv.cli": ["main"],
    "nninv.vnnlib": ["Case", "Property", "read"],
    "nninv.region": ["MODES", "Polytope", "Region", "region"],
    "nninv.invertible": [
        "ActNorm",
        "AdditiveCoupling",
        "AffineCoupling",
        "BijectiveClassifier",
        "IResBlock",
        "InvConv1x1",
        "InverseReport",
        "InvertibleBlock",
        "InvertibleSequential",
        "Squeeze",
    ],
}

#: Layer of each top-level module or subpackage of nninv (higher may import lower).
LAYERS = {
    "checks": 0,
    "serialization": 0,
    "errors": 0,
    "result": 0,
    "linalg": 0,
    "highs": 0,
    "targets": 0,
    "vnnlib": 0,
    "datasets": 0,
    "metrics": 0,
    "model": 1,
    "bounds": 1,
    "priors": 2,
    "learned": 2,
    "invertible": 2,
    "methods": 3,
    "geometry": 4,
    "region": 4,
    "distributed": 4,
    "figures": 5,
    "cli": 5,
    "explorer": 5,
    "experiments": 5,
    "__main__": 5,
    "": 5,  # the package facade, nninv/__init__.py
}

#: No module grows past this many lines without being split along its ideas.
MAX_LINES = 800


def _modules() -> list[tuple[str, Path]]:
    out = []
    for path in sorted(SRC.rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out.append((".".join(["nninv", *parts]), path))
    return out


def _layer(module: str) -> int:
    parts = module.split(".")
    key = parts[1] if len(parts) > 1 else ""
    assert key in LAYERS, f"{module}: add its folder or file to LAYERS"
    return LAYERS[key]


def _imports(module: str, path: Path) -> list[tuple[str, int]]:
    """The nninv modules that ``module`` imports, with line numbers."""
    tree = ast.parse(path.read_text(), str(path))
    is_pkg = path.name == "__init__.py"
    package = module if is_pkg else module.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target == "nninv" or target.startswith("nninv."):
                if node.module is None or target == "nninv":
                    # ``from . import x``: x may itself be a module of the package
                    for alias in node.names:
                        sub = f"{target}.{alias.name}"
                        found.append((sub if _is_module(sub) else target, node.lineno))
                else:
                    found.append((target, node.lineno))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "nninv" or alias.name.startswith("nninv."):
                    found.append((alias.name, node.lineno))
    return found


def _is_module(name: str) -> bool:
    rel = Path(*name.split(".")[1:])
    return (SRC / rel).with_suffix(".py").exists() or (SRC / rel / "__init__.py").exists()


def test_public_api_is_pinned():
    assert sorted(nninv.__all__) == sorted(PUBLIC_API)
    for name in PUBLIC_API:
        assert hasattr(nninv, name), name
    assert callable(nninv.invert) and callable(nninv.preimage) and callable(nninv.closest)
    assert callable(nninv.diagnose) and callable(nninv.load_model)
    assert issubclass(nninv.NNInvError, ValueError)


@pytest.mark.parametrize("module", sorted(PUBLIC_MODULES))
def test_public_modules_export_their_names(module):
    mod = importlib.import_module(module)
    for name in PUBLIC_MODULES[module]:
        assert hasattr(mod, name), f"{module}.{name}"
    if hasattr(mod, "__all__"):
        missing = [n for n in mod.__all__ if not hasattr(mod, n)]
        assert not missing, f"{module}.__all__ names missing attributes: {missing}"


def test_nothing_imports_upward():
    upward = []
    for module, path in _modules():
        mine = _layer(module)
        for target, line in _imports(module, path):
            if _layer(target) > mine:
                rel = path.relative_to(SRC.parent)
                upward.append(f"{rel}:{line}: {module} (layer {mine}) imports {target}")
    assert not upward, "imports that go up a layer:\n" + "\n".join(upward)


def test_every_folder_is_a_known_layer():
    for module, _ in _modules():
        _layer(module)


def test_the_layer_check_catches_an_upward_import(tmp_path):
    """The checker itself: a model-layer file importing the methods layer is reported."""
    fake = tmp_path / "fake.py"
    fake.write_text("from ..methods.invert import invert\nfrom ..errors import NNInvError\n")
    got = _imports("nninv.model.fake", fake)
    assert ("nninv.methods.invert", 1) in got and ("nninv.errors", 2) in got
    assert _layer("nninv.methods.invert") > _layer("nninv.model.fake")


@pytest.mark.parametrize("module", [m for m, _ in _modules()])
def test_module_has_a_docstring_and_stays_small(module):
    path = dict(_modules())[module]
    tree = ast.parse(path.read_text())
    assert ast.get_docstring(tree), f"{module} has no module docstring"
    n = len(path.read_text().splitlines())
    assert n <= MAX_LINES, f"{module} has {n} lines (> {MAX_LINES}): split it along its ideas"


def _private_part(module: str) -> str | None:
    """The package a private module is private to (``nninv.geometry`` for
    ``nninv.geometry._walks``), or None for a module that is named as internal API."""
    parts = module.split(".")
    for i, part in enumerate(parts[1:], start=1):
        if part.startswith("_") and not part.startswith("__"):
            return ".".join(parts[:i])
    return None


def _private_imports(module: str, path: Path) -> list[str]:
    """Imports in ``module`` of another package's private module or private name."""
    own = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    bad = []
    tree = ast.parse(path.read_text(), str(path))
    names_at = {
        node.lineno: [a.name for a in node.names]
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom)
    }
    for target, line in _imports(module, path):
        home = _private_part(target)
        if home is not None and own != home:
            bad.append(f"{path.name}:{line}: {module} imports the private module {target}")
            continue
        target_pkg = target if _is_package(target) else target.rsplit(".", 1)[0]
        for name in names_at.get(line, []):
            private = name.startswith("_") and not name.startswith("__")
            if private and target_pkg != own:
                bad.append(f"{path.name}:{line}: {module} imports the private name {target}.{name}")
    return bad


def _is_package(name: str) -> bool:
    return (SRC / Path(*name.split(".")[1:]) / "__init__.py").exists()


def test_no_private_imports_across_packages():
    """Private modules and names stay inside their own folder (not even
    its subpackages reach in); what other modules use is named as internal API (a module or
    name without the underscore)."""
    bad = [b for module, path in _modules() for b in _private_imports(module, path)]
    assert not bad, "private imports across packages:\n" + "\n".join(bad)


def test_the_private_import_check_catches_one(tmp_path):
    fake = tmp_path / "fake.py"
    fake.write_text(
        "from ..geometry._walks import hit_and_run\n"
        "from ..model.chain import _private\n"
        "from .._private_top import x\n"
        "from ..model.chain import analyse\n"
    )
    got = _private_imports("nninv.methods.fake", fake)
    assert len(got) == 3, got
    assert "private module nninv.geometry._walks" in got[0]
    assert "private name nninv.model.chain._private" in got[1]
    assert "private module nninv._private_top" in got[2]


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def _module_graph() -> dict[str, set[str]]:
    """Module -> the modules it imports (function-local imports count), where a
    package's ``__init__`` importing its own submodules is not an edge back."""
    graph: dict[str, set[str]] = {}
    for module, path in _modules():
        edges = set()
        for target, _ in _imports(module, path):
            if target == module:
                continue
            # A submodule importing a name its package re-exports depends on that
            # package's __init__, which imports the submodule: not a design cycle.
            if module.startswith(target + "."):
                continue
            edges.add(target)
        graph[module] = edges
    return graph


def test_no_import_cycles():
    cycles = _cycles(_module_graph())
    assert not cycles, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_the_cycle_check_catches_one():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


@pytest.mark.parametrize("module", [m for m, _ in _modules() if m != "nninv.__main__"])
def test_all_lists_no_private_names(module):
    """``__all__`` is what a module offers; a private helper is imported by name
    by its siblings, never advertised."""
    mod = importlib.import_module(module)
    private = [
        n for n in getattr(mod, "__all__", []) if n.startswith("_") and not n.startswith("__")
    ]
    assert not private, f"{module}.__all__ lists private names {private}"


#: No function grows past this many lines of code (blank lines, comments and the
#: docstring not counted) without being split along its ideas.
MAX_FUNCTION_LINES = 80


def _code_lines(node: ast.FunctionDef | ast.AsyncFunctionDef, lines: list[str]) -> int:
    doc: set[int] = set()
    first = node.body[0] if node.body else None
    if (
        isinstance(first, ast.Expr)
        and isinstance(first.value, ast.Constant)
        and isinstance(first.value.value, str)
    ):
        doc = set(range(first.lineno, (first.end_lineno or first.lineno) + 1))
    end = node.end_lineno or node.lineno
    return sum(
        1
        for i in range(node.lineno, end + 1)
        if i not in doc and lines[i - 1].strip() and not lines[i - 1].strip().startswith("#")
    )


def _long_functions(source: str) -> list[tuple[str, int]]:
    lines = source.splitlines()
    return [
        (node.name, n)
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and (n := _code_lines(node, lines)) > MAX_FUNCTION_LINES
    ]


def test_functions_stay_short():
    long = [
        f"{path.relative_to(SRC.parent)}: {name} has {n} lines of code"
        for _, path in _modules()
        for name, n in _long_functions(path.read_text())
    ]
    assert not long, "split these along their ideas:\n" + "\n".join(long)


def test_the_function_length_check_counts_code_only():
    # the def line counts, so 79 statements make 80 lines of code
    body = "\n".join(f"    x{i} = {i}  # one" for i in range(MAX_FUNCTION_LINES - 1))
    ok = f'def f():\n    """Doc.\n\n    More doc.\n    """\n\n    # a comment\n{body}\n'
    assert _long_functions(ok) == []
    assert _long_functions(ok + "    return x0\n") == [("f", MAX_FUNCTION_LINES + 1)]

"""README's Python examples run as written.

Every ```python block of README.md runs, in order, in one namespace (a block may
use what an earlier one defined, as a reader who follows the README would) and
in a temporary directory (the files the examples write land there). A block
skips with the reason when a module it imports is not installed, or when it
reads full MNIST and ``$NNINV_MNIST_DIR`` (or ../shared/data/mnist) is absent;
a later block then runs without it. Blocks that take more than 10 s are marked
slow by id in :data:`SLOW`.
"""

from __future__ import annotations

import ast
import importlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib
import pytest

import nninv

README = Path(__file__).resolve().parents[1] / "README.md"

#: Blocks (by id) that take more than 10 s on a quiet 2-core machine.
SLOW: set[str] = set()


#: What README says a block's results are, checked after it runs (by block id).
CHECKS: dict[str, Any] = {
    "the-shortest-example-1": lambda ns: (
        bool(ns["inv"].converged.all()) and nninv.diagnose(ns["f"]).preimage_dim == 774
    ),
}


@dataclass(frozen=True)
class Block:
    id: str
    line: int
    source: str


def _blocks() -> list[Block]:
    text = README.read_text(encoding="utf-8")
    out: list[Block] = []
    heading, count = "readme", 0
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("#") and not line.startswith("#!"):
            heading = re.sub(r"[^a-z0-9]+", "-", line.lstrip("#").strip().lower()).strip("-")
            count = 0
        if line.strip() == "```python":
            start = i + 1
            j = start
            while lines[j].strip() != "```":
                j += 1
            count += 1
            out.append(Block(f"{heading}-{count}", start + 1, "\n".join(lines[start:j]) + "\n"))
            i = j
        i += 1
    return out


BLOCKS = _blocks()


def _mnist_dir() -> Path | None:
    env = os.environ.get("NNINV_MNIST_DIR")
    for d in (env, README.parent.parent / "shared" / "data" / "mnist"):
        if d and Path(d).is_dir():
            return Path(d)
    return None


def _skip_reason(block: Block) -> str | None:
    """Why ``block`` cannot run here (a module it imports is missing; MNIST absent), or None."""
    tree = ast.parse(block.source, filename=f"README.md:{block.line}")
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names = [node.module]
        for name in names:
            try:
                importlib.import_module(name)
            except ImportError as e:
                return f"README.md:{block.line} imports {name}, not installed here ({e})"
    if "load_mnist" in block.source and _mnist_dir() is None:
        return f"README.md:{block.line} reads full MNIST: set NNINV_MNIST_DIR"
    return None


class _Reader:
    """The namespace a reader builds by running the blocks in order."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.namespace: dict[str, Any] = {"__name__": "__readme__"}
        self.done: dict[str, str] = {}  # id -> "ran" | "skipped" | "failed"

    def run(self, block: Block) -> None:
        code = compile(block.source, f"README.md:{block.line} ({block.id})", "exec")
        cwd = Path.cwd()
        os.chdir(self.workdir)
        try:
            self.done[block.id] = "failed"
            exec(code, self.namespace)
            self.done[block.id] = "ran"
        finally:
            os.chdir(cwd)

    def upto(self, index: int) -> None:
        """Run the blocks before ``index`` that have not run (e.g. under ``-k``)."""
        for block in BLOCKS[:index]:
            if block.id in self.done:
                if self.done[block.id] == "failed":
                    pytest.fail(f"an earlier README block failed: {block.id}")
                continue
            if _skip_reason(block) is not None:
                self.done[block.id] = "skipped"
                continue
            self.run(block)


@pytest.fixture(scope="module")
def reader(tmp_path_factory) -> _Reader:
    matplotlib.use("Agg")
    return _Reader(tmp_path_factory.mktemp("readme"))


def _param(i: int, block: Block) -> Any:
    marks = [pytest.mark.slow] if block.id in SLOW else []
    return pytest.param(i, block, id=block.id, marks=marks)


def test_readme_has_python_blocks():
    assert len(BLOCKS) >= 1  # the front page keeps one example; the guides hold the rest
    ids = [b.id for b in BLOCKS]
    assert len(set(ids)) == len(ids)
    assert SLOW <= set(ids), f"SLOW names blocks README no longer has: {SLOW - set(ids)}"
    assert set(CHECKS) <= set(ids), f"CHECKS names unknown blocks: {set(CHECKS) - set(ids)}"


@pytest.mark.parametrize(("index", "block"), [_param(i, b) for i, b in enumerate(BLOCKS)])
def test_readme_block_runs(reader, index, block):
    reason = _skip_reason(block)
    if reason is not None:
        reader.done[block.id] = "skipped"
        pytest.skip(reason)
    reader.upto(index)
    reader.run(block)
    check = CHECKS.get(block.id)
    if check is not None:
        assert check(reader.namespace), f"README.md:{block.line}: results differ from README's"

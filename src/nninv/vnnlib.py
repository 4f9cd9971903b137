"""VNN-LIB properties: read the field's verification format into input boxes and output sets.

A VNN-LIB file (an SMT-LIB subset, https://www.vnnlib.org) declares real
variables ``X_0 ... X_{n-1}`` (the network's flattened input, in C order) and
``Y_0 ... Y_{m-1}`` (its output), then asserts linear constraints on them. A
network *satisfies* the property's negation when no input meets every assert:
a verifier answers ``sat`` with an input that meets them (a counterexample)
or ``unsat`` when none exists. :func:`read` accepts the subset that the
competitions use: asserts of ``<=``, ``>=``, ``<``, ``>`` (strict and
non-strict read alike: the closure, as every tool does) and ``=`` between
linear terms (numbers, variables, ``+``, ``-``, ``*`` by a constant),
combined with ``and`` and ``or``. Constraints on the input must bound single
variables (boxes); a disjunction of boxes is allowed. The whole conjunction is
brought to disjunctive normal form and grouped by input box into
:class:`Case`\\ s, each an input box and an :class:`~nninv.targets.OutputSet`.
"""

from __future__ import annotations

__all__ = ["Case", "Property", "read"]

import gzip
import math
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from .errors import NNInvError
from .targets import OutputSet, Polyhedron

#: Largest disjunctive normal form accepted (number of conjunctions).
MAX_TERMS = 100_000

_TOKEN = re.compile(r"\(|\)|[^\s()]+")
_VAR = re.compile(r"^([XY])_(\d+)$")
_NUM = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")
#: A parsed s-expression with its line: a token, or a list of nodes.
_Node = tuple["str | list[_Node]", int]


@dataclass(frozen=True)
class Case:
    """One input box ``lo <= x <= hi`` (flat, float64) and the outputs asked for on it."""

    lo: Tensor
    hi: Tensor
    output: OutputSet


@dataclass(frozen=True)
class Property:
    """A VNN-LIB property: ``sat`` iff some case has an ``x`` in its box with ``f(x)`` in its set.

    Attributes
    ----------
    cases : tuple of Case
        The disjunction; most files have one case (one box).
    n_inputs, n_outputs : int
        The numbers of ``X_i`` and ``Y_j`` declared.
    path : str
        Where it was read from ("" when built in memory).
    """

    cases: tuple[Case, ...]
    n_inputs: int
    n_outputs: int
    path: str = ""

    @property
    def lo(self) -> Tensor:
        """The input box's lower corner (the one case's; error when there are several)."""
        return self._one().lo

    @property
    def hi(self) -> Tensor:
        """The input box's upper corner (the one case's)."""
        return self._one().hi

    @property
    def output(self) -> OutputSet:
        """The output set (the one case's)."""
        return self._one().output

    def _one(self) -> Case:
        if len(self.cases) != 1:
            raise NNInvError(
                f"{self.path or 'property'} has {len(self.cases)} input boxes; use .cases"
            )
        return self.cases[0]

    def check_model(self, input_shape: tuple[int, ...], n_outputs: int) -> None:
        """Raise :class:`NNInvError` unless the variables match the model's input and output."""
        n_in = math.prod(input_shape)
        if n_in != self.n_inputs or n_outputs != self.n_outputs:
            raise NNInvError(
                f"{self.path or 'property'} declares {self.n_inputs} inputs and "
                f"{self.n_outputs} outputs, but the model takes input shape "
                f"{tuple(input_shape)} ({n_in} values) and gives {n_outputs} outputs"
            )


# An atom is a linear constraint ``coef . v <= rhs`` over one kind of variable.
@dataclass(frozen=True)
class _Atom:
    kind: str  # "X" or "Y"
    coef: tuple[tuple[int, float], ...]
    rhs: float
    line: int


class _Reader:
    def __init__(self, path: str, text: str):
        self.path = path
        self.tokens: list[tuple[str, int]] = []
        for ln, raw in enumerate(text.splitlines(), 1):
            line = raw.split(";", 1)[0]
            self.tokens.extend((t, ln) for t in _TOKEN.findall(line))
        self.pos = 0
        self.declared: dict[str, int] = {"X": -1, "Y": -1}
        self.names: set[str] = set()

    def fail(self, line: int, what: str) -> NNInvError:
        return NNInvError(f"{self.path}:{line}: {what}")

    def sexpr(self) -> _Node:
        tok, ln = self.tokens[self.pos]
        self.pos += 1
        if tok == "(":
            items: list[_Node] = []
            while True:
                if self.pos >= len(self.tokens):
                    raise self.fail(ln, "unbalanced '(' (the file ends inside it)")
                if self.tokens[self.pos][0] == ")":
                    self.pos += 1
                    return (items, ln)
                items.append(self.sexpr())
        if tok == ")":
            raise self.fail(ln, "unexpected ')'")
        return (tok, ln)

    def read(self) -> list:
        asserts = []
        while self.pos < len(self.tokens):
            items, ln = self.sexpr()
            if not isinstance(items, list) or not items or not isinstance(items[0][0], str):
                raise self.fail(
                    ln, f"expected a command like (declare-const ...), got {_show(items)}"
                )
            head = items[0][0]
            if head == "declare-const":
                self.declare(items, ln)
            elif head == "assert":
                if len(items) != 2:
                    raise self.fail(ln, "(assert ...) takes one formula")
                asserts.append(self.formula(items[1]))
            elif head in ("set-logic", "set-info", "set-option", "check-sat", "get-model", "exit"):
                continue
            else:
                raise self.fail(ln, f"unsupported command {head!r}")
        return asserts

    def declare(self, items: list, ln: int) -> None:
        if len(items) != 3 or not isinstance(items[1][0], str) or items[2][0] != "Real":
            raise self.fail(ln, f"unsupported declaration {_show(items)} (only X_i / Y_j Real)")
        name = items[1][0]
        m = _VAR.match(name)
        if not m:
            raise self.fail(ln, f"unsupported variable name {name!r} (only X_i and Y_j)")
        if name in self.names:
            raise self.fail(ln, f"{name} declared twice")
        self.names.add(name)
        kind, i = m.group(1), int(m.group(2))
        self.declared[kind] = max(self.declared[kind], i)

    # formulas -> list of conjunctions (DNF), each a list of atoms
    def formula(self, node: _Node) -> list[list[_Atom]]:
        items, ln = node
        if not isinstance(items, list) or not items or not isinstance(items[0][0], str):
            raise self.fail(ln, f"expected a formula, got {_show(items)}")
        head, args = items[0][0], items[1:]
        if head == "and":
            out: list[list[_Atom]] = [[]]
            for a in args:
                out = _product(out, self.formula(a), self, ln)
            return out
        if head == "or":
            if not args:
                raise self.fail(ln, "(or) with no operands")
            return [t for a in args for t in self.formula(a)]
        if head in ("<=", ">=", "<", ">", "="):
            if len(args) < 2:
                raise self.fail(ln, f"({head} ...) needs two operands")
            atoms: list[_Atom | None] = []
            for left, right in zip(args[:-1], args[1:]):
                lt, lc = self.term(left)
                rt, rc = self.term(right)
                diff = dict(lt)
                for k, v in rt.items():
                    diff[k] = diff.get(k, 0.0) - v
                diff = {k: v for k, v in diff.items() if v != 0.0}
                const = rc - lc  # diff . v <= const  (for <=)
                if head in ("<=", "<"):
                    atoms.append(self.atom(diff, const, ln))
                elif head in (">=", ">"):
                    atoms.append(self.atom({k: -v for k, v in diff.items()}, 0.0 - const, ln))
                else:
                    atoms.append(self.atom(diff, const, ln))
                    atoms.append(self.atom({k: -v for k, v in diff.items()}, 0.0 - const, ln))
            return [[a for a in atoms if a is not None]]
        raise self.fail(ln, f"unsupported construct {head!r} (supported: and, or, <=, >=, <, >, =)")

    def atom(self, diff: dict, const: float, ln: int) -> _Atom | None:
        kinds = {k[0] for k in diff}
        if len(kinds) > 1:
            raise self.fail(
                ln, "a constraint mixes input (X) and output (Y) variables; unsupported"
            )
        if not kinds:
            if const >= 0:
                return None  # always true
            return _Atom("X", (), const, ln)  # always false: 0 <= const < 0
        kind = kinds.pop()
        coef = tuple(sorted((k[1], v) for k, v in diff.items()))
        if kind == "X" and len(coef) != 1:
            raise self.fail(
                ln,
                "a linear constraint over several inputs is unsupported (inputs must form boxes)",
            )
        return _Atom(kind, coef, const, ln)

    def term(self, node: _Node) -> tuple[dict, float]:
        items, ln = node
        if isinstance(items, str):
            m = _VAR.match(items)
            if m:
                if items not in self.names:
                    raise self.fail(ln, f"{items} is used but not declared")
                return {(m.group(1), int(m.group(2))): 1.0}, 0.0
            if _NUM.match(items):
                return {}, float(items)
            raise self.fail(ln, f"unsupported term {items!r}")
        if not items or not isinstance(items[0][0], str):
            raise self.fail(ln, f"unsupported term {_show(items)}")
        head, args = items[0][0], [self.term(a) for a in items[1:]]
        if head == "+":
            lin: dict = {}
            c = 0.0
            for t, k in args:
                for key, v in t.items():
                    lin[key] = lin.get(key, 0.0) + v
                c += k
            return lin, c
        if head == "-" and len(args) == 1:
            return {k: -v for k, v in args[0][0].items()}, -args[0][1]
        if head == "-" and len(args) >= 2:
            lin, c = dict(args[0][0]), args[0][1]
            for t, k in args[1:]:
                for key, v in t.items():
                    lin[key] = lin.get(key, 0.0) - v
                c -= k
            return lin, c
        if head == "*" and len(args) >= 2:
            nonconst = [a for a in args if a[0]]
            if len(nonconst) > 1:
                raise self.fail(ln, "a product of variables is not linear; unsupported")
            scale = math.prod(k for t, k in args if not t)
            if not nonconst:
                return {}, scale
            t, k = nonconst[0]
            return {key: v * scale for key, v in t.items()}, k * scale
        raise self.fail(ln, f"unsupported term operator {head!r} (supported: +, -, *)")


def _product(a: list, b: list, reader: _Reader, ln: int) -> list:
    if len(a) * len(b) > MAX_TERMS:
        raise reader.fail(ln, f"the property expands to over {MAX_TERMS} cases; unsupported")
    return [x + y for x in a for y in b]


def _show(items: str | list[_Node]) -> str:
    if isinstance(items, str):
        return items
    return "(" + " ".join(_show(i[0]) for i in items) + ")"


def read(path: str | Path) -> Property:
    """Read a VNN-LIB file (plain or ``.gz``) into a :class:`Property`.

    Parameters
    ----------
    path : str or Path

    Returns
    -------
    Property
        Its cases (input box and output set); a case whose box is empty is dropped.

    Raises
    ------
    NNInvError
        Naming the file, line and construct for anything outside the subset;
        for an input without both bounds; for a property with no ``X`` or ``Y``.
    FileNotFoundError
        When the file does not exist.

    Examples
    --------
    >>> import tempfile, os
    >>> text = '''(declare-const X_0 Real)
    ... (declare-const Y_0 Real)
    ... (declare-const Y_1 Real)
    ... (assert (>= X_0 -1))
    ... (assert (<= X_0 1))
    ... (assert (>= Y_1 Y_0))'''
    >>> with tempfile.TemporaryDirectory() as d:
    ...     p = os.path.join(d, "p.vnnlib")
    ...     _ = open(p, "w").write(text)
    ...     prop = read(p)
    >>> prop.n_inputs, prop.n_outputs, prop.lo.tolist(), prop.hi.tolist()
    (1, 2, [-1.0], [1.0])
    >>> prop.output.parts[0].A.tolist(), prop.output.parts[0].b.tolist()
    ([[1.0, -1.0]], [0.0])
    """
    path = Path(path)
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as e:
            raise NNInvError(f"{path}: a broken gzip file ({e})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise NNInvError(f"{path}: not a text file ({e})") from None
    reader = _Reader(str(path), text)
    asserts = reader.read()
    n_in, n_out = reader.declared["X"] + 1, reader.declared["Y"] + 1
    for kind, n in (("X", n_in), ("Y", n_out)):
        if n == 0:
            raise NNInvError(f"{path}: no {kind}_i variables declared")
        missing = [i for i in range(n) if f"{kind}_{i}" not in reader.names]
        if missing:
            raise NNInvError(f"{path}: {kind}_{missing[0]} is not declared but {kind}_{n - 1} is")
    base = [atom for a in asserts if len(a) == 1 for atom in a[0]]
    dnf: list[list[_Atom]] = [base]
    for a in asserts:
        if len(a) != 1:
            dnf = _product(dnf, a, reader, 0)
    groups: dict[tuple, list[Polyhedron]] = {}
    boxes: dict[tuple, tuple[Tensor, Tensor]] = {}
    for term in dnf:
        lo = torch.full((n_in,), -math.inf, dtype=torch.float64)
        hi = torch.full((n_in,), math.inf, dtype=torch.float64)
        rows, rhs = [], []
        false = False
        for atom in term:
            if atom.kind == "X":
                if not atom.coef:
                    false = True
                    continue
                ((i, c),) = atom.coef
                v = atom.rhs / c
                if c > 0:
                    hi[i] = min(float(hi[i]), v)
                else:
                    lo[i] = max(float(lo[i]), v)
            else:
                row = [0.0] * n_out
                for j, c in atom.coef:
                    row[j] = c
                rows.append(row)
                rhs.append(atom.rhs)
        if false or bool((lo > hi).any()):
            continue
        unbounded = (~torch.isfinite(lo)) | (~torch.isfinite(hi))
        if unbounded.any():
            i = int(unbounded.nonzero()[0])
            raise NNInvError(f"{path}: input X_{i} has no finite lower and upper bound")
        key = (tuple(lo.tolist()), tuple(hi.tolist()))
        boxes[key] = (lo, hi)
        A = torch.tensor(rows, dtype=torch.float64).reshape(len(rows), n_out)
        groups.setdefault(key, []).append(Polyhedron(A, torch.tensor(rhs, dtype=torch.float64)))
    cases = tuple(Case(boxes[k][0], boxes[k][1], OutputSet(parts)) for k, parts in groups.items())
    return Property(cases, n_in, n_out, str(path))

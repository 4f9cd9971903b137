"""The VNN-LIB reader: the competition's files, the subset it reads, refusals that say where."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest
import torch

from nninv import NNInvError, OutputSet, vnnlib

DATA = Path("/work/shared/data/vnncomp/mnist_fc")
needs_data = pytest.mark.skipif(
    not (DATA / "vnnlib").is_dir(), reason=f"VNN-COMP mnist_fc data not found at {DATA}"
)

HEAD = "".join(f"(declare-const {v} Real)\n" for v in ("X_0", "X_1", "Y_0", "Y_1"))
BOX = "(assert (>= X_0 -1))\n(assert (<= X_0 1))\n(assert (>= X_1 0))\n(assert (<= X_1 0.5))\n"


def _write(tmp_path: Path, text: str, name: str = "p.vnnlib") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


@needs_data
def test_reads_a_competition_file():
    prop = vnnlib.read(DATA / "vnnlib" / "prop_0_0.03.vnnlib")
    assert (prop.n_inputs, prop.n_outputs, len(prop.cases)) == (784, 10, 1)
    assert torch.all(prop.lo >= 0) and torch.all(prop.hi <= 1)
    assert float((prop.hi - prop.lo).max()) == pytest.approx(0.06, abs=1e-6)
    out = prop.output
    assert isinstance(out, OutputSet) and len(out.parts) == 9
    # the file's comment names the label: "; Mnist property with label: K."
    text = (DATA / "vnnlib" / "prop_0_0.03.vnnlib").read_text()
    label = int(text.split("label:")[1].split(".")[0])
    for part, j in zip(out.parts, [j for j in range(10) if j != label]):
        expect = torch.zeros(1, 10, dtype=torch.float64)
        expect[0, label], expect[0, j] = 1.0, -1.0  # Y_label - Y_j <= 0
        assert torch.equal(part.A, expect) and torch.equal(
            part.b, torch.zeros(1, dtype=torch.float64)
        )


@needs_data
def test_gzip_reads_the_same(tmp_path):
    src = DATA / "vnnlib" / "prop_1_0.05.vnnlib"
    gz = tmp_path / "prop.vnnlib.gz"
    gz.write_bytes(gzip.compress(src.read_bytes()))
    a, b = vnnlib.read(src), vnnlib.read(gz)
    assert torch.equal(a.lo, b.lo) and torch.equal(a.hi, b.hi)
    assert all(torch.equal(p.A, q.A) for p, q in zip(a.output.parts, b.output.parts))


def test_linear_terms_and_operators(tmp_path):
    text = (
        HEAD
        + BOX
        + (
            "(assert (or (and (<= (+ Y_0 (* 2 Y_1)) 3) (>= (- Y_0 Y_1) -1))\n"
            "            (and (= Y_0 0.5)) (and (< (- Y_1) 2.5) (> Y_0 (* -1 Y_1 2)))))\n"
        )
    )
    prop = vnnlib.read(_write(tmp_path, text))
    assert prop.lo.tolist() == [-1.0, 0.0] and prop.hi.tolist() == [1.0, 0.5]
    p0, p1, p2 = prop.output.parts
    assert p0.A.tolist() == [[1.0, 2.0], [-1.0, 1.0]] and p0.b.tolist() == [3.0, 1.0]
    assert p1.A.tolist() == [[1.0, 0.0], [-1.0, 0.0]] and p1.b.tolist() == [0.5, -0.5]
    # strict comparisons read as their closure; -Y_1 < 2.5 and Y_0 > -2 Y_1
    assert p2.A.tolist() == [[0.0, -1.0], [-1.0, -2.0]] and p2.b.tolist() == [2.5, 0.0]


def test_disjunction_of_boxes_gives_cases(tmp_path):
    text = HEAD + (
        "(assert (or (and (>= X_0 0) (<= X_0 1) (>= X_1 0) (<= X_1 1) (>= Y_0 Y_1))\n"
        "            (and (>= X_0 2) (<= X_0 3) (>= X_1 0) (<= X_1 1) (>= Y_1 Y_0))))\n"
    )
    prop = vnnlib.read(_write(tmp_path, text))
    assert len(prop.cases) == 2
    assert prop.cases[1].lo.tolist() == [2.0, 0.0]
    assert prop.cases[1].output.parts[0].A.tolist() == [[1.0, -1.0]]
    with pytest.raises(NNInvError, match="2 input boxes"):
        prop.lo  # noqa: B018


def test_a_box_given_by_equalities_and_scaled_bounds(tmp_path):
    text = HEAD + "(assert (= X_0 0.25))\n(assert (<= (* 2 X_1) 1))\n(assert (>= (- X_1) -3))\n"
    text += "(assert (>= X_1 0))\n(assert (<= Y_0 1))\n"
    prop = vnnlib.read(_write(tmp_path, text))
    assert prop.lo.tolist() == [0.25, 0.0] and prop.hi.tolist() == [0.25, 0.5]


@pytest.mark.parametrize(
    "body, line, match",
    [
        ("(assert (<= (* X_0 X_1) 1))", 5, "product of variables"),
        ("(assert (<= (+ X_0 Y_0) 1))", 5, "mixes input"),
        ("(assert (<= (+ X_0 X_1) 1))", 5, "several inputs"),
        ("(assert (<= X_7 1))", 5, "X_7 is used but not declared"),
        ("(assert (=> (<= Y_0 1) (<= Y_1 1)))", 5, "unsupported construct '=>'"),
        ("(assert (<= (exp Y_0) 1))", 5, "unsupported term operator 'exp'"),
        ("(define-fun f () Real 1)", 5, "unsupported command 'define-fun'"),
        ("(assert (<= Y_0 1)", 5, "unbalanced"),
        ("(assert (<= Y_0 1)))", 5, "unexpected '\\)'"),
        ("(assert (<= Y_0 abc))", 5, "unsupported term 'abc'"),
    ],
)
def test_refusals_name_file_line_and_construct(tmp_path, body, line, match):
    p = _write(tmp_path, HEAD + body + "\n" + BOX)
    with pytest.raises(NNInvError, match=match) as err:
        vnnlib.read(p)
    assert f"{p}:{line}:" in str(err.value)


def test_refusals_of_the_whole_file(tmp_path):
    with pytest.raises(NNInvError, match="no finite lower and upper bound"):
        vnnlib.read(_write(tmp_path, HEAD + "(assert (>= X_0 0))\n(assert (<= Y_0 1))\n"))
    with pytest.raises(NNInvError, match="no Y_i"):
        vnnlib.read(_write(tmp_path, "(declare-const X_0 Real)\n(assert (<= X_0 1))\n"))
    with pytest.raises(NNInvError, match="X_0 is not declared"):
        vnnlib.read(_write(tmp_path, "(declare-const X_1 Real)\n(declare-const Y_0 Real)\n"))
    with pytest.raises(NNInvError, match="declared twice"):
        vnnlib.read(_write(tmp_path, HEAD + "(declare-const X_0 Real)\n"))
    with pytest.raises(NNInvError, match="Real"):
        vnnlib.read(_write(tmp_path, "(declare-const X_0 Int)\n"))
    bad = tmp_path / "bad.vnnlib.gz"
    bad.write_bytes(b"\x1f\x8b" + b"not gzip at all")
    with pytest.raises(NNInvError, match="broken gzip"):
        vnnlib.read(bad)
    with pytest.raises(FileNotFoundError):
        vnnlib.read(tmp_path / "missing.vnnlib")


def test_check_model_names_both_shapes(tmp_path):
    prop = vnnlib.read(_write(tmp_path, HEAD + BOX + "(assert (<= Y_0 1))\n"))
    prop.check_model((2,), 2)
    prop.check_model((1, 2), 2)
    with pytest.raises(NNInvError, match=r"2 inputs and 2 outputs.*\(3,\) \(3 values\).*4 outputs"):
        prop.check_model((3,), 4)


def test_empty_boxes_are_dropped(tmp_path):
    text = HEAD + BOX + "(assert (<= X_0 -2))\n(assert (<= Y_0 1))\n"
    prop = vnnlib.read(_write(tmp_path, text))
    assert prop.cases == ()

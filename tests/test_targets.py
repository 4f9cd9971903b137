"""ClassTarget and OutputSet: construction, membership and the errors that name the problem."""

from __future__ import annotations

import pytest
import torch

from nninv import ClassTarget, NNInvError, OutputSet, Polyhedron
from nninv.targets import as_output_set


def test_from_class_is_class_k_wins_with_ties():
    s = OutputSet.from_class(1, 4)
    g = torch.Generator().manual_seed(0)
    y = torch.randn(500, 4, generator=g, dtype=torch.float64)
    assert torch.equal(s.contains(y), y.argmax(1) == 1)
    tie = torch.tensor([[2.0, 2.0, 0.0, 1.0]], dtype=torch.float64)
    assert s.contains(tie).tolist() == [True]  # (>= Y_1 Y_0) holds with equality
    assert s.contains(tie + torch.tensor([1e-9, 0, 0, 0])).tolist() == [False]


def test_union_is_any_part_and_linear_is_a_conjunction():
    a = OutputSet.linear([[1.0, 0.0], [0.0, 1.0]], [0.0, 0.0])  # y0 <= 0 and y1 <= 0
    b = OutputSet.linear([[-1.0, 0.0]], [-5.0])  # y0 >= 5
    u = a | b
    y = torch.tensor([[-1.0, -1.0], [-1.0, 1.0], [6.0, 9.0], [1.0, -1.0]])
    assert a.contains(y).tolist() == [True, False, False, False]
    assert u.contains(y).tolist() == [True, False, True, False]
    assert len(OutputSet.union(a, b, u).parts) == 4
    assert u.contains(torch.tensor([0.5, -1.0]), tol=0.5).tolist() == [True]


def test_empty_polyhedron_is_everything():
    s = OutputSet([Polyhedron(torch.zeros(0, 3), torch.zeros(0))])
    assert s.contains(torch.randn(5, 3, generator=torch.Generator().manual_seed(1))).all()


def test_as_output_set_accepts_class_targets_and_indices():
    y = torch.tensor([[0.0, 3.0, 1.0]])
    for t in (ClassTarget(1), 1, OutputSet.from_class(1, 3)):
        assert as_output_set(t, 3).contains(y).tolist() == [True]


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: Polyhedron([1.0, 2.0], [0.0]), "A must be 2-D"),
        (lambda: Polyhedron([[1.0, 2.0]], [0.0, 1.0]), "1 rows but b has 2"),
        (lambda: Polyhedron([[float("nan"), 2.0]], [0.0]), "finite"),
        (lambda: OutputSet([]), "at least one"),
        (
            lambda: OutputSet([Polyhedron([[1.0]], [0.0]), Polyhedron([[1.0, 1.0]], [0.0])]),
            "different",
        ),
        (lambda: OutputSet.from_class(3, 3), "class 3 is not one of the 3"),
        (lambda: OutputSet.from_class(0, 1), "at least 2 outputs"),
        (
            lambda: as_output_set(OutputSet.from_class(0, 3), 4),
            "over 3 outputs, but the model has 4",
        ),
        (lambda: as_output_set(ClassTarget([0, 1]), 3), "2 labels"),
        (lambda: as_output_set(ClassTarget(0, confidence=0.9), 3), "confidence"),
        (lambda: as_output_set(ClassTarget(5), 3), "class 5"),
        (lambda: as_output_set("class 1", 3), "got str"),
        (lambda: OutputSet.from_class(0, 3).contains(torch.zeros(2, 4)), r"shape \(N, 3\)"),
    ],
)
def test_errors_name_the_problem(make, message):
    with pytest.raises(NNInvError, match=message):
        make()

"""``nninv region --vnnlib``: box and output set from a VNN-LIB property; bad combinations."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

from nninv.cli import main

BOX = "[-1,1]x[-1,1.5]"
DECLARE = "".join(f"(declare-const X_{i} Real)\n" for i in range(2)) + "".join(
    f"(declare-const Y_{j} Real)\n" for j in range(3)
)
#: "class 1 wins" (ties count) as VNN-LIB output constraints.
CLASS_1 = "(assert (>= Y_1 Y_0))\n(assert (>= Y_1 Y_2))\n"


def _onnx_net(tmp_path: Path) -> Path:
    pytest.importorskip("onnx")
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 3))
    for p in model.parameters():
        nn.init.normal_(p)
    path = tmp_path / "net.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), (torch.zeros(1, 2),), path, dynamo=False)
    return path


def _box_asserts(lo: list[float], hi: list[float]) -> str:
    return "".join(
        f"(assert (>= X_{i} {a}))\n(assert (<= X_{i} {b}))\n"
        for i, (a, b) in enumerate(zip(lo, hi))
    )


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(["region", *argv])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


@pytest.mark.parametrize("mode", ["exact", "under"])
def test_vnnlib_gives_the_region_of_the_same_box_and_set(tmp_path, capsys, mode):
    net = _onnx_net(tmp_path)
    prop = tmp_path / "prop.vnnlib"
    prop.write_text(DECLARE + _box_asserts([-1, -1], [1, 1.5]) + CLASS_1)
    rc, text, _ = _run(capsys, str(net), "--vnnlib", str(prop), "--mode", mode,
                       "--out", str(tmp_path / "v"))  # fmt: skip
    assert rc == 0
    assert f"region of {prop}" in text and "counterexamples" in text
    assert f"mode            {mode}" in text
    rc, ref_text, _ = _run(capsys, str(net), "--box", BOX, "--output-set", "class=1",
                           "--mode", mode, "--out", str(tmp_path / "b"))  # fmt: skip
    assert rc == 0 and "counterexamples" not in ref_text
    got = json.loads((tmp_path / "v" / "region.json").read_text())
    ref = json.loads((tmp_path / "b" / "region.json").read_text())
    assert got["source"] == str(prop)
    assert got["box"] == ref["box"] == [[-1.0, 1.0], [-1.0, 1.5]]
    assert got["status"] == ref["status"]
    assert got["volume"] == pytest.approx(ref["volume"], rel=1e-9)
    assert len(got["polytopes"]) == len(ref["polytopes"])
    assert (tmp_path / "v" / "region.png").stat().st_size > 1000


def test_vnnlib_with_two_boxes_gives_one_region_per_case(tmp_path, capsys):
    net = _onnx_net(tmp_path)
    prop = tmp_path / "two.vnnlib"
    left = "(and (>= X_0 -1) (<= X_0 0) (>= X_1 -1) (<= X_1 1.5))"
    right = "(and (>= X_0 0) (<= X_0 1) (>= X_1 -1) (<= X_1 1.5))"
    prop.write_text(DECLARE + f"(assert (or {left} {right}))\n" + CLASS_1)
    out = tmp_path / "o"
    rc, text, _ = _run(capsys, str(net), "--vnnlib", str(prop), "--out", str(out))
    assert rc == 0
    lines = text.splitlines()
    assert "one row per case" in lines[0] and "counterexamples" in lines[0]
    assert lines[1].split()[:3] == ["case", "status", "polytopes"]
    assert [ln.split()[0] for ln in lines[2:4]] == ["0", "1"]
    doc = json.loads((out / "region.json").read_text())
    assert doc["vnnlib"] == str(prop) and len(doc["cases"]) == 2
    assert [c["box"][0] for c in doc["cases"]] == [[-1.0, 0.0], [0.0, 1.0]]
    assert all(c["status"] == "complete" for c in doc["cases"])
    assert (out / "region_case0.png").is_file() and (out / "region_case1.png").is_file()
    # the two halves of the box hold the region of the whole box
    rc, _, _ = _run(capsys, str(net), "--box", BOX, "--output-set", "class=1",
                    "--out", str(tmp_path / "whole"))  # fmt: skip
    whole = json.loads((tmp_path / "whole" / "region.json").read_text())
    assert sum(c["volume"] for c in doc["cases"]) == pytest.approx(whole["volume"], rel=1e-9)


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["--vnnlib", "P", "--box", BOX], "cannot be combined with --box ("),
        (["--vnnlib", "P", "--output-set", "class=0"], "cannot be combined with --output-set"),
        (
            ["--vnnlib", "P", "--box", BOX, "--output-set", "class=0"],
            "cannot be combined with --box or --output-set",
        ),
        ([], "give --box and --output-set, or --vnnlib FILE"),
        (["--box", BOX], "give --output-set class=K too"),
        (["--output-set", "class=0"], "give --box [LO,HI]x... too"),
        (["--vnnlib", "missing.vnnlib"], "missing.vnnlib"),
        (["--vnnlib", "THREE"], "box has 3 rows but the model's input has 2 values"),
    ],
)
def test_bad_combinations_give_one_line_and_exit_2(tmp_path, capsys, args, match):
    net = _onnx_net(tmp_path)
    prop = tmp_path / "p.vnnlib"
    prop.write_text(DECLARE + _box_asserts([-1, -1], [1, 1]) + CLASS_1)
    three = tmp_path / "three.vnnlib"
    three.write_text(
        DECLARE + "(declare-const X_2 Real)\n" + _box_asserts([-1, -1, -1], [1, 1, 1]) + CLASS_1
    )
    names = {
        "P": str(prop),
        "THREE": str(three),
        "missing.vnnlib": str(tmp_path / "missing.vnnlib"),
    }
    argv = [names.get(a, a) for a in args]
    rc, out, err = _run(capsys, str(net), *argv, "--out", str(tmp_path / "o"))
    assert rc == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and err.startswith("nninv region: error: ")
    assert match in err
    if args and args[-1] == "THREE":
        assert f"of {three})" in err  # the message says where the box came from


def test_help_says_vnnlib_is_the_unsafe_set(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["region", "--help"])
    assert exit_.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "--vnnlib FILE" in text and "describes the UNSAFE set" in text
    assert "the region is the property's counterexamples in the box" in text


def test_exact_mode_refuses_a_box_of_too_many_inputs(tmp_path, capsys):
    """VNN-LIB makes large boxes easy to ask for (an MNIST property has 784 rows):
    the exact mode, which starts from the box's 2^d corners, refuses them by name."""
    pytest.importorskip("onnx")
    model = nn.Sequential(nn.Linear(17, 4), nn.ReLU(), nn.Linear(4, 2)).eval()
    net = tmp_path / "wide.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.zeros(1, 17),), net, dynamo=False)
    prop = tmp_path / "wide.vnnlib"
    head = "".join(f"(declare-const X_{i} Real)\n" for i in range(17))
    head += "(declare-const Y_0 Real)\n(declare-const Y_1 Real)\n"
    prop.write_text(head + _box_asserts([0.0] * 17, [1.0] * 17) + "(assert (>= Y_1 Y_0))\n")
    rc, out, err = _run(capsys, str(net), "--vnnlib", str(prop), "--out", str(tmp_path / "o"))
    assert rc == 2 and out == ""
    assert "2^17 corners; 17 inputs is above its limit of 16: use mode='under'" in err

"""``nninv region``: the inputs in a box that a model maps into an output set, with pictures.

Prints the result of :func:`nninv.region` as a table and draws the region on
2-D slices through the box (the whole picture for a 2-input model): the
model's own answer on a grid in the background, the polytopes outlined on top.
"""

from __future__ import annotations

__all__ = ["add_parser", "run"]

import argparse
import itertools
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import NNInvError
from ._common import parse_pair, plural

_DESCRIPTION = """\
The decision region {x in BOX : MODEL(x) in OUTPUT-SET} of a piecewise-linear
network (Linear, Conv, ReLU, LeakyReLU, max and average pooling, BatchNorm,
reshapes):

  exact  every linear region of the network inside the box, cut by the output
         set; the polytopes are the region (coverage 1; up to 16 inputs)
  under  a few polytopes inside the region, grown to --target coverage
  over   polytopes around the region

Volumes are exact (qhull; estimated above 6 inputs). Coverage is certified when
the exact region volume is known, else over a sampled estimate (marked so).
Writes OUT/region.png (2-D slices through the box centre, or --at) and
OUT/region.json (the polytopes A x <= b with their volumes).

--vnnlib FILE takes the box and the output set from a VNN-LIB property instead
of --box and --output-set. A VNN-LIB file describes the UNSAFE set: its output
constraint is what a counterexample meets. The region is therefore the set of
counterexamples in the file's input box (empty, volume 0, when the property
holds: where `nninv verify` says unsat). A file with several input boxes gives
one region per box (a table row, OUT/region_case<I>.png, and an entry of
OUT/region.json each).

Exit status: 0 on success, 2 on a usage error."""

_EPILOG = """\
examples:
  nninv region VertCAS_1.onnx --box "[-0.5,0.5]x[-0.5,0.5]x[0.149,0.151]x[-0.5,0.5]" \\
      --output-set class=0 --out figs
  nninv region cartpole.onnx --box "[-1,1]x[0,2]x[-0.2,0]x[-2,-1]" --output-set class=0 \\
      --mode under --target 0.75 --out figs
  nninv region net.onnx --vnnlib prop.vnnlib --out figs   # its counterexample region"""


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``region`` with the ``nninv`` parser."""
    parser = subparsers.add_parser(
        "region",
        help="decision region of a ReLU network in a box: exact polytopes, or inside/around",
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "model", metavar="MODEL", help="model file (ONNX, Keras, TorchScript, skops)"
    )
    parser.add_argument(
        "--box",
        metavar="[LO,HI]x[LO,HI]...",
        help="one [LO,HI] per input, joined by x (quote it for the shell)",
    )
    parser.add_argument("--output-set", metavar="class=K", help="class=K: class K wins")
    parser.add_argument(
        "--vnnlib",
        metavar="FILE",
        help=(
            "box and output set from a VNN-LIB property (.vnnlib or .vnnlib.gz) instead "
            "of --box and --output-set; its output constraint is the UNSAFE set, so the "
            "region is the property's counterexamples in the box"
        ),
    )
    parser.add_argument("--mode", choices=("exact", "under", "over"), default="exact")
    parser.add_argument("--target", type=float, default=0.9, help="coverage target (0.9)")
    parser.add_argument(
        "--max-polytopes", type=int, default=1000, metavar="N", help="under/over budget"
    )
    parser.add_argument("--time-limit", type=float, default=60.0, metavar="S")
    parser.add_argument(
        "--at", nargs="+", type=float, metavar="V", help="slice point (default: box centre)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="region_out", metavar="DIR")
    parser.set_defaults(func=run)
    return parser


def parse_box(text: str) -> list[tuple[float, float]]:
    """``"[-1,1]x[0,2]"`` as ``[(-1.0, 1.0), (0.0, 2.0)]``."""
    rows = re.findall(r"\[([^\]]*)\]", text)
    rest = re.sub(r"\[[^\]]*\]", "", text).replace("x", "").replace("X", "").strip()
    if not rows or rest:
        raise NNInvError(f"--box must look like [LO,HI]x[LO,HI]... (one per input), got {text!r}")
    return [parse_pair(r, "--box") for r in rows]


def _output_set(text: str) -> int:
    key, _, value = text.partition("=")
    if key.strip() != "class" or not value.strip().lstrip("-").isdigit():
        raise NNInvError(f"--output-set must be class=K (K an output index), got {text!r}")
    return int(value)


def table(r: Any) -> str:
    """The region's numbers as an aligned two-column table."""
    lo, hi = r.coverage_interval
    cov = f"{r.coverage:.4f}" + (
        " (certified)" if r.certified else f" (sampled, 95% [{lo:.4f}, {hi:.4f}])"
    )
    rows = [
        ("mode", r.mode),
        ("status", r.status),
        ("polytopes", str(len(r.polytopes))),
        ("volume", f"{r.volume:.6g}"),
        ("share of box", f"{r.share:.4f}"),
        ("coverage", cov),
        (
            "region volume",
            f"{r.region_volume:.6g} (exact)"
            if r.region_volume is not None
            else "{:.6g} (sampled, 95% [{:.6g}, {:.6g}])".format(*r.region_estimate),
        ),
        ("seconds", f"{r.seconds:.2f}"),
    ] + [(k, str(v)) for k, v in r.counts.items() if k != "polytopes"]
    rows += [(k, str(v)) for k, v in r.info.items()]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def draw(r: Any, model: torch.nn.Module, out_set: Any, path: Path, at: np.ndarray) -> int:
    """Draw 2-D slices of the region to ``path``; return the number of panels."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from ..region.result import slice_polygon

    box = r.box.numpy()
    d = len(box)
    pairs = list(itertools.combinations(range(d), 2))[:6] if d > 1 else []
    if not pairs:
        raise NNInvError("a region of one input has no 2-D picture")
    cols = min(3, len(pairs))
    rows = -(-len(pairs) // cols)
    fig = Figure(figsize=(4.6 * cols, 4.4 * rows), dpi=100)
    FigureCanvasAgg(fig)
    dtype = next(iter(model.parameters())).dtype
    for n, (i, j) in enumerate(pairs):
        ax = fig.add_subplot(rows, cols, n + 1)
        g = 160
        xs = np.linspace(box[i, 0], box[i, 1], g)
        ys = np.linspace(box[j, 0], box[j, 1], g)
        X = np.tile(at, (g * g, 1))
        X[:, i] = np.repeat(xs, g)
        X[:, j] = np.tile(ys, g)
        with torch.no_grad():
            xin = torch.from_numpy(X).to(dtype)
            shape = getattr(model, "input_shape", None)
            if shape is not None and int(np.prod(shape)) == d:
                xin = xin.reshape(-1, *shape)
            y = model(xin).reshape(len(X), -1).double()
        inside = out_set.contains(y).numpy().reshape(g, g).T
        ax.imshow(
            inside,
            origin="lower",
            extent=(box[i, 0], box[i, 1], box[j, 0], box[j, 1]),
            aspect="auto",
            cmap="Blues",
            vmin=-0.3,
            vmax=1.6,
            interpolation="nearest",
        )
        for p in r.polytopes:
            poly = slice_polygon(p, (i, j), at)
            if poly is not None:
                closed = np.vstack([poly, poly[:1]])
                ax.plot(closed[:, 0], closed[:, 1], color=f"C{1 + p.part % 9}", lw=0.7)
        ax.set_xlabel(f"x{i}")
        ax.set_ylabel(f"x{j}")
        ax.set_xlim(box[i, 0], box[i, 1])
        ax.set_ylim(box[j, 0], box[j, 1])
    fig.suptitle(
        f"{r.mode} region: {plural(len(r.polytopes), 'polytope')}, share {r.share:.3f},\n"
        f"coverage {r.coverage:.3f}{'' if r.certified else ' (sampled)'}; "
        f"blue: the model's answer",
        fontsize=10 if cols == 1 else 12,
    )
    fig.tight_layout()
    fig.savefig(path)
    return len(pairs)


@dataclass(frozen=True)
class _Case:
    """One region to compute: a box, an output set, and where it came from."""

    box: np.ndarray  # (d, 2)
    output: Any  # a class index or an OutputSet
    source: str  # for messages and headings; "" for --box/--output-set


def cases(args: argparse.Namespace) -> list[_Case]:
    """The regions asked for: one from --box/--output-set, or one per case of --vnnlib.

    Raises
    ------
    NNInvError
        For --vnnlib together with --box or --output-set, or a missing half of the pair.
    """
    given = [o for o, v in (("--box", args.box), ("--output-set", args.output_set)) if v]
    if args.vnnlib is not None:
        if given:
            raise NNInvError(
                f"--vnnlib gives both the box and the output set; it cannot be combined "
                f"with {' or '.join(given)} (use --vnnlib alone, or --box and --output-set)"
            )
        from ..vnnlib import read

        prop = read(args.vnnlib)
        many = len(prop.cases) > 1
        return [
            _Case(
                torch.stack([c.lo, c.hi], dim=1).double().numpy(),
                c.output,
                f"{args.vnnlib}" + (f", case {i}" if many else ""),
            )
            for i, c in enumerate(prop.cases)
        ]
    if not given:
        raise NNInvError("give --box and --output-set, or --vnnlib FILE")
    if len(given) < 2:
        missing = "--output-set class=K" if args.box else "--box [LO,HI]x..."
        raise NNInvError(
            f"give {missing} too (a region needs both a box and an output set), "
            "or --vnnlib FILE for both"
        )
    return [_Case(np.asarray(parse_box(args.box)), _output_set(args.output_set), "")]


def heading(source: str) -> str:
    """What a table of a VNN-LIB property's region describes: its counterexamples."""
    return (
        f"region of {source}: the inputs in its box whose outputs meet its output "
        "constraint (VNN-LIB's unsafe set: the counterexamples; empty when the property holds)"
    )


def case_rows(results: list[Any]) -> str:
    """One row per case: the main numbers of each region, aligned."""
    head = ("case", "status", "polytopes", "volume", "share", "coverage", "seconds")
    rows = [head] + [
        (
            str(i),
            r.status,
            str(len(r.polytopes)),
            f"{r.volume:.6g}",
            f"{r.share:.4f}",
            f"{r.coverage:.4f}" + ("" if r.certified else " (sampled)"),
            f"{r.seconds:.2f}",
        )
        for i, r in enumerate(results)
    ]
    widths = [max(len(row[k]) for row in rows) for k in range(len(head))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() for row in rows)


def run(args: argparse.Namespace) -> int:
    """Compute, print and draw the region(s); return the exit status."""
    from .. import region
    from ..model.io import load_model

    todo = cases(args)
    model = load_model(args.model)
    results = []
    for case in todo:
        try:
            r = region(
                model,
                case.output,
                case.box,
                args.mode,
                target=args.target,
                max_polytopes=args.max_polytopes,
                time_limit=args.time_limit,
                seed=args.seed,
                progress=True,
            )
        except NNInvError as e:
            if not case.source:
                raise
            raise NNInvError(f"{e} (the box and output set of {case.source})") from None
        results.append(r)
    if len(results) > 1:
        print(f"{heading(args.vnnlib)}; one row per case (input box):")
        print(case_rows(results))
    else:
        print(
            f"{heading(todo[0].source)}\n{table(results[0])}"
            if todo[0].source
            else table(results[0])
        )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    names = ["region"] if len(results) == 1 else [f"region_case{i}" for i in range(len(results))]
    summaries = []
    for case, r, name in zip(todo, results, names):
        panels = _draw_case(r, model, case, out / f"{name}.png", args.at)
        print(f"wrote {out / name}.png ({plural(panels, 'slice')})")
        summaries.append(_summary(r, case))
    doc = summaries[0] if len(summaries) == 1 else {"vnnlib": args.vnnlib, "cases": summaries}
    (out / "region.json").write_text(json.dumps(doc, indent=1))
    print(f"wrote {out / 'region.json'}")
    return 0


def _draw_case(r: Any, model: torch.nn.Module, case: _Case, path: Path, at_arg: Any) -> int:
    """Draw one region to ``path``; return the number of panels."""
    from ..targets import as_output_set

    b = r.box.numpy()
    at = np.asarray(at_arg, dtype=np.float64) if at_arg else b.mean(axis=1)
    if at.shape != (len(b),):
        raise NNInvError(f"--at needs {len(b)} values (one per input), got {at.size}")
    rowwise = len(b) != int(np.prod(getattr(model, "input_shape", (len(b),))))
    # A model acting on the last axis (auto_park) is drawn as the map of one row.
    row_model = (
        torch.nn.Sequential(*model.children())
        if rowwise and isinstance(model, torch.nn.Sequential)
        else model
    )
    out_set = as_output_set(case.output, r_out(row_model, len(b)))
    return draw(r, row_model, out_set, path, at)


def _summary(r: Any, case: _Case) -> dict[str, Any]:
    summary = {
        "mode": r.mode,
        "status": r.status,
        "volume": r.volume,
        "share": r.share,
        "coverage": r.coverage,
        "coverage_interval": list(r.coverage_interval),
        "certified": r.certified,
        "region_volume": r.region_volume,
        "seconds": r.seconds,
        "counts": r.counts,
        "box": r.box.numpy().tolist(),
        "polytopes": [
            {"A": p.A.tolist(), "b": p.b.tolist(), "volume": p.volume, "part": p.part}
            for p in r.polytopes
        ],
    }
    if case.source:
        summary["source"] = case.source
    return summary


def r_out(model: torch.nn.Module, d: int) -> int:
    """The number of outputs of ``model`` on one flat input of ``d`` values."""
    dtype = next(iter(model.parameters())).dtype
    with torch.no_grad():
        x = torch.zeros(1, d, dtype=dtype)
        shape = getattr(model, "input_shape", None)
        if shape is not None and int(np.prod(shape)) == d:
            x = x.reshape(1, *shape)
        return int(model(x).reshape(1, -1).shape[1])

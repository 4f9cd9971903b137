"""``nninv.verify`` on VNN-COMP 2022 ``mnist_fc`` beside the published tools (issue 29).

Runs every instance of ``instances.csv`` (network, property, time limit) in
one process, each as ``nninv.verify(ONNX path, VNN-LIB path, time_limit)``:
the timed span includes loading the ONNX file, reading the property and the
answer's confirmation by the model and onnxruntime (not the interpreter's
start-up and ``import nninv``, measured once and printed apart). Prints one
row per instance: the published answer, nninv's status, how it was settled,
its time, and each published tool's time; then solved counts and medians.

Targets: every definite answer equal to the published one (a wrong one, above
all a wrong ``unsat``, fails the whole benchmark); all instances answered
within their limit; median time at most 7.2 s (alpha-beta-CROWN's, which
includes its own start-up).

Run ``python benchmarks/bench_verify.py --help`` for the options; the data
directory defaults to ``/work/shared/data/vnncomp/mnist_fc`` or
``$NNINV_VNNCOMP_DIR``.
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import sys
import time
from pathlib import Path

T_IMPORT = time.perf_counter()
import torch  # noqa: E402

import nninv  # noqa: E402

T_IMPORT = time.perf_counter() - T_IMPORT

TOOLS = ["alpha_beta_crown", "verinet", "mn_bab", "debona", "nnenum", "marabou"]
TARGETS = {"median_s": 7.2}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--data",
        default=os.environ.get("NNINV_VNNCOMP_DIR", "/work/shared/data/vnncomp/mnist_fc"),
        help="the mnist_fc folder (instances.csv, results-vnncomp2022.csv, onnx/, vnnlib/)",
    )
    ap.add_argument("--only", nargs="*", help="property file names to run (default: all)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    ap.add_argument("--markdown", action="store_true", help="print the table as markdown")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    data = Path(args.data)
    if not (data / "instances.csv").exists():
        print(f"no instances.csv in {data}; set --data or NNINV_VNNCOMP_DIR", file=sys.stderr)
        return 2
    with open(data / "instances.csv") as fh:
        instances = [r for r in csv.reader(fh) if r]
    with open(data / "results-vnncomp2022.csv") as fh:
        published = {r["property"]: r for r in csv.DictReader(fh)}
    rows = []
    for onnx, vnnlib, limit in instances:
        name = Path(vnnlib).name
        if args.only and name not in args.only:
            continue
        t = time.perf_counter()
        res = nninv.verify(data / onnx, data / vnnlib, time_limit=float(limit))
        sec = time.perf_counter() - t
        pub = published.get(name, {})
        rows.append((name, pub.get("answer", "?"), res, sec, pub))
        print(
            f"{name:22s} published {pub.get('answer', '?'):6s} nninv {res.status:7s} "
            f"{res.method:12s} {sec:7.2f} s  nodes {res.info.get('nodes', 0)}",
            file=sys.stderr,
            flush=True,
        )
    _table(rows, args.markdown)
    wrong = [r[0] for r in rows if r[2].status in ("sat", "unsat") and r[2].status != r[1]]
    answered = sum(r[2].status in ("sat", "unsat") for r in rows)
    times = [r[3] for r in rows]
    med = statistics.median(times) if times else float("nan")
    print()
    print(f"python start-up + import nninv: {T_IMPORT:.2f} s (not in the times above)")
    print(f"answered {answered}/{len(rows)}, wrong {len(wrong)} {wrong or ''}")
    print(f"nninv median {med:.2f} s (target <= {TARGETS['median_s']} s), max {max(times):.2f} s")
    for tool in TOOLS:
        ts = [float(r[4][f"{tool}_s"]) for r in rows if r[4].get(f"{tool}_s")]
        ok = sum(r[4].get(f"{tool}_result") == r[1] for r in rows)
        if ts:
            print(f"{tool:18s} solved {ok}/{len(rows)}, median {statistics.median(ts):.1f} s")
    print(f"load average: {os.getloadavg()[0]:.1f} (1 min) on {os.cpu_count()} CPUs")
    return 1 if wrong else 0


def _table(rows: list, markdown: bool) -> None:
    head = ["property", "answer", "nninv", "how", "nninv s", *[f"{t} s" for t in TOOLS]]
    lines = []
    for name, ans, res, sec, pub in rows:
        tools = [pub.get(f"{t}_s", "") for t in TOOLS]
        lines.append([name, ans, res.status, res.method, f"{sec:.2f}", *tools])
    if markdown:
        print("| " + " | ".join(head) + " |")
        print("|" + "---|" * len(head))
        for ln in lines:
            print("| " + " | ".join(ln) + " |")
        return
    widths = [max(len(str(c)) for c in col) for col in zip(head, *lines)]
    for ln in [head, *lines]:
        print("  ".join(str(c).ljust(w) for c, w in zip(ln, widths)))


if __name__ == "__main__":
    sys.exit(main())

"""Decision regions on the networks of the preimage literature (issue 28), beside PREMAP.

Single-threaded (one torch thread, one BLAS thread) as PREMAP's figures were;
times are the median of three runs of ``nninv.region`` (loading excluded).

- VCAS (nine nets, label 0): the exact region (its volume against a 10^6-sample
  Monte Carlo estimate) and inner approximations (certified coverage): at the
  default target 0.9, and asked for PREMAP's coverage on that net within PREMAP's
  polytope count (the speed-up is over the slower of the two);
- Cartpole (y0 >= y1) on the README's box and with x3 in [-2, 0], Lunar Lander
  (label 1): inner approximations (coverage over the exact region volume where an
  enumeration finishes within 120 s, else over a sampled estimate, marked ~);
- soundness: 10^5 points drawn from every inner approximation (both VCAS runs:
  2 x 10^5) run through onnxruntime on the original file: the number outside.

Usage: python benchmarks/bench_region.py [--data DIR] [--only vcas|control] [--target T]
"""

from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_v] = "1"

import argparse  # noqa: E402
import math  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

import nninv  # noqa: E402
from nninv import OutputSet  # noqa: E402

torch.set_num_threads(1)

VCAS_BOX = [[-0.5, 0.5], [-0.5, 0.5], [0.149, 0.151], [-0.5, 0.5]]
CART_BOX = [[-1, 1], [0, 2], [-0.2, 0], [-2, -1]]
CART_WIDE = [[-1, 1], [0, 2], [-0.2, 0], [-2, 0]]
LUNAR_BOX = [[-1, 0], [0, 1], [0, 2], [-2, 0], [-1, 0], [-0.1, 0.1], [0.9, 1], [0.9, 1]]
#: PREMAP on this machine (data README): polytopes, coverage, seconds.
PREMAP = {
    "VertCAS_1": (16, 0.915, 10.9),
    "VertCAS_2": (11, 0.901, 7.3),
    "VertCAS_3": (19, 0.903, 11.8),
    "VertCAS_4": (14, 0.900, 10.2),
    "VertCAS_5": (14, 0.903, 9.1),
    "VertCAS_6": (12, 0.902, 7.9),
    "VertCAS_7": (6, 0.902, 3.7),
    "VertCAS_8": (14, 0.917, 10.0),
    "VertCAS_9": (12, 0.905, 7.8),
    "cartpole": (27, 0.756, 5.7),
    "cartpole x3 in [-2,0]": (76, 0.752, 16.8),
    "lunarlander": (56, 0.753, 63.5),
}


def median3(fn):
    runs = []
    for _ in range(3):
        t = time.perf_counter()
        out = fn()
        runs.append(time.perf_counter() - t)
    return out, statistics.median(runs)


def ort_outside(path: Path, x: np.ndarray, label: int) -> int:
    """Points of ``x`` whose onnxruntime output puts another class strictly above ``label``."""
    import onnxruntime

    s = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    inp = s.get_inputs()[0]
    x32 = x.astype(np.float32)
    if len(inp.shape) == 1:
        y = np.stack([s.run(None, {inp.name: xi})[0] for xi in x32])
    elif isinstance(inp.shape[0], int):
        y = np.concatenate([s.run(None, {inp.name: xi[None]})[0] for xi in x32])
    else:
        y = s.run(None, {inp.name: x32})[0]
    y = y.reshape(len(x), -1).astype(np.float64)
    return int((y.max(axis=1) > y[:, label]).sum())


def mc_share(model, label, box, n=10**6, seed=11):
    box = np.asarray(box, dtype=np.float64)
    rng = np.random.default_rng(seed)
    m = model.double()
    k = 0
    for _ in range(n // 100_000):
        x = box[:, 0] + rng.random((100_000, len(box))) * (box[:, 1] - box[:, 0])
        with torch.no_grad():
            y = m(torch.from_numpy(x))
        k += int(OutputSet.from_class(label, y.shape[1]).contains(y).sum())
    model.float()
    p = k / n
    return p, math.sqrt(p * (1 - p) / n)


def mc_coverage(model, r, label, box, n=10**6, seed=13):
    """The share of the region's points among ``n`` uniform draws that ``r`` holds, and
    the half-width of its 95% interval; a held point outside the region raises."""
    box = np.asarray(box, dtype=np.float64)
    rng = np.random.default_rng(seed)
    m = model.double()
    held = reg = 0
    for _ in range(n // 100_000):
        x = torch.from_numpy(box[:, 0] + rng.random((100_000, len(box))) * np.diff(box).T)
        with torch.no_grad():
            inside = OutputSet.from_class(label, m(x).shape[1]).contains(m(x)).numpy()
        h = r.contains(x).numpy()
        if (h & ~inside).any():
            raise AssertionError("an inner point outside the region")
        held, reg = held + int(h.sum()), reg + int(inside.sum())
    model.float()
    p = held / reg
    return p, 1.96 * math.sqrt(p * (1 - p) / reg)


def vcas(data: Path, target: float, n_sound: int) -> None:
    print("\nVCAS, label 0, box [-0.5,0.5]^2 x [0.149,0.151] x [-0.5,0.5]; times: median of 3")
    head = (
        f"{'net':10} | {'exact: regions':>14} {'polys':>5} {'share':>7} {'MC diff/SE':>10} "
        f"{'time s':>6} | {'under: polys':>12} {'coverage':>8} {'time s':>6} {'outside':>7} | "
        f"{'at PREMAP cov: polys':>20} {'coverage':>8} {'time s':>6} | "
        f"{'PREMAP polys':>12} {'cov':>5} {'time s':>6} | {'speed-up':>8}"
    )
    print(head)
    print("-" * len(head))
    for i in range(1, 10):
        name = f"VertCAS_{i}"
        path = data / "vcas" / f"{name}.onnx"
        model = nninv.load_model(path)
        ex, t_ex = median3(lambda m=model: nninv.region(m, 0, VCAS_BOX, "exact"))
        p, se = mc_share(model, 0, VCAS_BOX)
        un, t_un = median3(lambda m=model: nninv.region(m, 0, VCAS_BOX, "under", target=target))
        pp, pc, pt = PREMAP[name]
        # The same engine asked for PREMAP's coverage within PREMAP's polytope count.
        mt, t_mt = median3(
            lambda m=model, c=pc, n=pp: nninv.region(
                m, 0, VCAS_BOX, "under", target=c, max_polytopes=n
            )
        )
        xs = np.vstack([un.sample(n_sound, seed=1).numpy(), mt.sample(n_sound, seed=2).numpy()])
        bad = ort_outside(path, xs, 0)
        print(
            f"{name:10} | {ex.counts['linear_regions']:>14} {len(ex.polytopes):>5} "
            f"{ex.share:>7.4f} {(ex.share - p) / se:>10.2f} {t_ex:>6.2f} | "
            f"{len(un.polytopes):>12} {un.coverage:>8.4f} {t_un:>6.2f} {bad:>7} | "
            f"{len(mt.polytopes):>20} {mt.coverage:>8.4f} {t_mt:>6.2f} | "
            f"{pp:>12} {pc:>5.3f} {pt:>6.1f} | {pt / max(t_un, t_mt):>7.1f}x"
        )


def control(data: Path, n_sound: int, exact_limit: float) -> None:
    print("\nControl policies: under mode, exact_budget=0 (coverage over the exact region")
    print("volume where a separate enumeration finished within its limit, else sampled: ~)")
    head = (
        f"{'task':24} | {'target':>6} {'polys':>5} {'coverage':>9} {'time s':>6} {'outside':>7} "
        f"| {'exact: status':>13} {'regions':>8} {'time s':>7} | {'PREMAP polys':>12} "
        f"{'cov':>5} {'time s':>6}"
    )
    print(head)
    print("-" * len(head))
    tasks = [
        ("cartpole", "control/cartpole.onnx", CART_BOX, 0, 0.756, 27),
        ("cartpole x3 in [-2,0]", "control/cartpole.onnx", CART_WIDE, 0, 0.752, 76),
        ("lunarlander", "control/lunarlander.onnx", LUNAR_BOX, 1, 0.753, 56),
    ]
    for name, rel, box, label, target, budget in tasks:
        path = data / rel
        model = nninv.load_model(path)

        def run(model=model, box=box, label=label, target=target, budget=budget):
            return nninv.region(
                model, label, box, "under", target=target, max_polytopes=budget, exact_budget=0
            )

        un, t_un = median3(run)
        xs = un.sample(n_sound, seed=1).numpy()
        bad = ort_outside(path, xs, label)
        if len(box) <= 6 and exact_limit > 0:
            ex = nninv.region(model, label, box, "exact", time_limit=exact_limit)
            est, ex_t, ex_n = ex.status, ex.seconds, ex.counts["linear_regions"]
            cov = (
                f"{un.volume / ex.volume:.4f}" if ex.status == "complete" else f"~{un.coverage:.4f}"
            )
        else:
            est, ex_t, ex_n, cov = "not run", math.nan, 0, f"~{un.coverage:.4f}"
            held, reg = mc_coverage(model, un, label, box)
            print(
                f"  ({name}: coverage on 10^6 independent uniform draws {held:.4f} "
                f"+- {reg:.4f} (95%); reported {un.coverage:.4f} "
                f"[{un.coverage_interval[0]:.4f}, {un.coverage_interval[1]:.4f}])"
            )
        pp, pc, pt = PREMAP[name]
        print(
            f"{name:24} | {target:>6.3f} {len(un.polytopes):>5} {cov:>9} {t_un:>6.2f} {bad:>7} | "
            f"{est:>13} {ex_n:>8} {ex_t:>7.1f} | {pp:>12} {pc:>5.3f} {pt:>6.1f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("/work/shared/data/region"))
    parser.add_argument("--only", choices=("vcas", "control"))
    parser.add_argument("--target", type=float, default=0.9, help="VCAS under target")
    parser.add_argument("--sound", type=int, default=100_000, help="soundness samples")
    parser.add_argument("--exact-limit", type=float, default=120.0)
    args = parser.parse_args()
    if not args.data.is_dir():
        raise SystemExit(f"no data under {args.data}")
    print(f"nninv {nninv.__version__}, torch threads {torch.get_num_threads()}")
    if args.only in (None, "vcas"):
        vcas(args.data, args.target, args.sound)
    if args.only in (None, "control"):
        control(args.data, args.sound, args.exact_limit)


if __name__ == "__main__":
    main()

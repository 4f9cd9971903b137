"""Scale: cost linear in the number of outputs, bounded memory, and Ray on a local cluster.

The seed's model ``f(x) = sigmoid(x W^T + b)`` (784 -> 10) is trained on the
embedded 5,000 digits (5 epochs of Adam), a Gaussian prior fitted on them, and
``N`` outputs made from held-out digits with a little seeded noise.

(a) Linear cost: for N in ``--sizes`` (1e4, 1e5, 1e6) and methods pinv and
analytic, :func:`nninv.distributed.invert_file` streams the ``.npy`` of outputs
(memory-mapped input, ``--batch-size`` rows at a time, the same for every size,
results appended to fresh ``.npy`` files in a temporary folder). The peak RSS
(``VmHWM``) of each size comes from a subprocess making one call. The times
come from one other subprocess: one untimed call per size first (the cached
SVD or posterior, torch's first kernels, the file in the page cache), then
``--repeats`` rounds, each timing every size in turn (the order rotating) over
at least ``--min-rows`` outputs (100 calls of 1e4, 10 of 1e5, one of 1e6), so
that the load of other processes on a shared machine falls on every size
alike; the time per output is the median over the rounds. Target: within
1.3x across the sizes; RSS bounded (not growing with N).

(b) Ray: :func:`nninv.distributed.invert_dataset` on a local cluster
(``num_cpus=2``) with 1 and 2 workers on ``--ray-n`` outputs in float64:
throughput ratio, largest difference from one single-process ``invert`` call
(target 1e-12), and a run in which a forward hook ends one worker's process
mid-batch: Ray restarts it and the rows written are counted (target: none lost).

Timings on a shared machine are noisy; every ratio compares runs made in the
same process or the same invocation.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

HERE = Path(__file__).resolve()


def _model(W: np.ndarray, b: np.ndarray, dtype: torch.dtype) -> nn.Module:
    f = nn.Sequential(nn.Linear(W.shape[1], W.shape[0]), nn.Sigmoid())
    with torch.no_grad():
        f[0].weight.copy_(torch.from_numpy(W))
        f[0].bias.copy_(torch.from_numpy(b))
    return f.to(dtype).eval()


def setup(folder: Path, sizes: list[int], dtype: str, seed: int) -> dict:
    """Train the model, fit the prior, write the weights and the outputs files."""
    from nninv.experiments.seed import load_split, train_seed_model
    from nninv.priors import GaussianPrior

    train, test = load_split("mnist5k", n_test=1000, seed=seed)
    f = train_seed_model(train.images, train.labels, seed=seed)
    prior = GaussianPrior.fit(train.flat())
    np.savez(
        folder / "weights.npz",
        W=f[0].weight.detach().double().numpy(),
        b=f[0].bias.detach().double().numpy(),
        mean=prior.mean.numpy(),
        cov=prior.covariance.numpy(),
    )
    fd = _model(
        f[0].weight.detach().double().numpy(), f[0].bias.detach().double().numpy(), torch.float64
    )
    X = test.flat().double()
    g = torch.Generator().manual_seed(seed)
    files = {}
    for n in sizes:
        path = folder / f"y{n}.npy"
        out = np.lib.format.open_memmap(path, mode="w+", dtype=np.dtype(dtype), shape=(n, 10))
        for s in range(0, n, 50_000):
            k = min(50_000, n - s)
            idx = torch.randint(len(X), (k,), generator=g)
            x = (X[idx] + 0.05 * torch.randn(k, 784, generator=g, dtype=torch.float64)).clamp(0, 1)
            with torch.no_grad():
                out[s : s + k] = fd(x).numpy()
        out.flush()
        del out
        files[n] = str(path)
    return files


def _peak_rss_mib() -> float:
    """This process's peak RSS: ``VmHWM`` (per address space, reset by exec) on Linux.

    ``ru_maxrss`` is not used where ``/proc`` exists: a child started by ``fork`` and
    ``exec`` inherits the parent's peak in it, which here is the setup's.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(args: argparse.Namespace) -> None:
    """Streamed runs in this process; print JSON.

    ``--child-mode rss``: one call on one file, its peak RSS and results.
    ``--child-mode time``: every file of ``--child-y`` warmed up by one untimed call,
    then ``--repeats`` rounds; a round times each file in turn (the order rotating
    from round to round) over at least ``--min-rows`` outputs, so that load from
    other processes falls on every size alike.
    """
    from nninv.distributed import invert_file
    from nninv.priors import GaussianPrior

    torch.set_num_threads(args.threads)
    w = np.load(Path(args.folder) / "weights.npz")
    dtype = getattr(torch, args.dtype)
    f = _model(w["W"], w["b"], dtype).to(args.device)  # invert_file moves batches there
    prior = GaussianPrior(torch.from_numpy(w["mean"]), torch.from_numpy(w["cov"]))
    paths = args.child_y.split(",")
    with tempfile.TemporaryDirectory(dir=args.folder) as tmp:

        def run(path: str):
            # a fresh file each call, as a real run writes: overwriting the previous call's
            # output would time the kernel freeing its pages (a cost that grows with N)
            for p in Path(tmp).glob("x.*"):
                p.unlink()
            t = time.perf_counter()
            r = invert_file(
                f,
                path,
                Path(tmp) / "x.npy",
                args.child_method,
                prior if args.child_method == "analytic" else None,
                batch_size=args.batch_size,
                progress=False,
            )
            return r, time.perf_counter() - t

        if args.child_mode == "rss":
            r, _ = run(paths[0])
            out = {"rss_mib": _peak_rss_mib(), "n": r.n, "converged": r.n_converged}
            print(json.dumps(out | {"max_residual": r.max_residual}))
            return
        sizes = [int(np.load(p, mmap_mode="r").shape[0]) for p in paths]
        calls = [max(1, math.ceil(args.min_rows / n)) for n in sizes]
        for p in paths:
            run(p)  # warm-up: the cached SVD / posterior, torch's first kernels, the page cache
        per: list[list[float]] = [[] for _ in paths]
        for k in range(args.repeats):
            for j in np.roll(np.arange(len(paths)), -k):
                total = sum(run(paths[j])[1] for _ in range(calls[j]))
                per[j].append(1e6 * total / (calls[j] * sizes[j]))
    print(json.dumps({"us": per, "calls": calls}))


def _device_name(device: str) -> str:
    d = torch.device(device)
    return f"{d} ({torch.cuda.get_device_name(d)})" if d.type == "cuda" else str(d)


def linear(args: argparse.Namespace, folder: Path, files: dict) -> bool:
    print(
        f"(a) streamed on {_device_name(args.device)}, {args.dtype}, batch {args.batch_size}, "
        f"{args.threads} torch thread(s); "
        f"one warm-up call per size, then {args.repeats} interleaved rounds, each timing every "
        f"size over >= {args.min_rows:.0e} outputs; median over the rounds"
    )
    head = (
        f"{'method':<10} {'N':>9} {'calls/round':>12} {'us/output':>10} {'min..max':>14} "
        f"{'x smallest N':>13} {'peak RSS MiB':>13} {'converged':>10} {'max residual':>13}"
    )
    print(head)
    print("-" * len(head))
    ok = True
    common = [
        "--folder", str(folder), "--dtype", args.dtype, "--batch-size", str(args.batch_size),
        "--threads", str(args.threads), "--device", args.device,
    ]  # fmt: skip
    for method in ("pinv", "analytic"):
        cmd = [sys.executable, str(HERE), "--child-method", method, *common]
        rss = []
        for path in files.values():
            more = ["--child-y", path, "--child-mode", "rss"]
            out = subprocess.run(cmd + more, capture_output=True, text=True, check=True)
            rss.append(json.loads(out.stdout.strip().splitlines()[-1]))
        more = ["--child-y", ",".join(files.values()), "--child-mode", "time"]
        more += ["--repeats", str(args.repeats), "--min-rows", str(args.min_rows)]
        out = subprocess.run(cmd + more, capture_output=True, text=True, check=True)
        t = json.loads(out.stdout.strip().splitlines()[-1])
        per = [statistics.median(u) for u in t["us"]]
        for n, us, u, c, r in zip(files, per, t["us"], t["calls"], rss):
            print(
                f"{method:<10} {n:>9} {c:>12} {us:>10.3f} {min(u):>6.2f}..{max(u):<6.2f} "
                f"{us / per[0]:>12.2f}x {r['rss_mib']:>13.0f} {r['converged']:>10} "
                f"{r['max_residual']:>13.1e}"
            )
        spread = max(per) / min(per)
        print(f"  {method}: time per output spread {spread:.2f}x across sizes (target <= 1.3x)")
        ok &= spread <= 1.3
    return ok


def _die_once(module, inputs, output, *, marker: str, driver: int):
    if os.getpid() != driver and not os.path.exists(marker):
        open(marker, "w").close()
        os._exit(1)


def ray_part(args: argparse.Namespace, folder: Path) -> bool:
    import pyarrow.parquet as pq
    import ray

    import nninv
    from nninv.distributed import invert_dataset

    w = np.load(folder / "weights.npz")
    f = _model(w["W"], w["b"], torch.float64)
    path = folder / "yray.npy"
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        y = f(torch.rand(args.ray_n, 784, generator=g, dtype=torch.float64)).numpy()
    np.save(path, y)
    t = time.perf_counter()
    ref = nninv.invert(f, torch.from_numpy(y), "pinv").x.numpy()
    t_single = time.perf_counter() - t
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)

    def read(run):
        table = pq.ParquetDataset([str(p) for p in run.files]).read(columns=["row", "x"])
        rows = table.column("row").to_numpy()
        x = table.column("x").combine_chunks()
        return rows, x.values.to_numpy().reshape(len(x), -1)

    print(
        f"\n(b) Ray local cluster (2 CPUs), {args.ray_n} outputs, float64 pinv, batch {args.ray_batch}; one invert call took {t_single:.2f} s"
    )
    head = f"{'run':<26} {'s':>7} {'rows/s':>9} {'x 1 worker':>11} {'rows':>8} {'lost':>5} {'max |x - one call|':>19}"
    print(head)
    print("-" * len(head))
    ok = True
    base = None
    for name, workers, kill in [
        ("1 worker", 1, False),
        ("2 workers", 2, False),
        ("2 workers, one killed", 2, True),
    ]:
        fk = f
        if kill:
            fk = _model(w["W"], w["b"], torch.float64)
            marker = folder / "killed"
            fk[1].register_forward_hook(
                functools.partial(_die_once, marker=str(marker), driver=os.getpid())
            )
        out = folder / f"ray-{workers}-{kill}"
        t = time.perf_counter()
        run = invert_dataset(
            fk, path, "pinv", out=out, batch_size=args.ray_batch, num_workers=workers
        )
        s = time.perf_counter() - t
        rows, x = read(run)
        order = np.argsort(rows)
        lost = args.ray_n - len(np.unique(rows))
        diff = float(np.abs(x[order] - ref).max()) if lost == 0 else float("nan")
        tp = args.ray_n / s
        base = base or tp
        print(
            f"{name:<26} {s:>7.1f} {tp:>9.0f} {tp / base:>10.2f}x {len(rows):>8} {lost:>5} {diff:>19.1e}"
        )
        ok &= lost == 0 and diff <= 1e-12
        if kill:
            print(f"  a worker was killed: {marker.exists()}")
            ok &= marker.exists()
    ray.shutdown()
    return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument(
        "--dtype", default="float32", help="outputs and computation (default float32)"
    )
    parser.add_argument("--batch-size", type=int, default=8192)
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds (default 5)")
    parser.add_argument(
        "--min-rows",
        type=float,
        default=1e6,
        help="outputs timed per size in each round, at least (default 1e6)",
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--ray-n", type=int, default=50_000)
    parser.add_argument("--ray-batch", type=int, default=5_000)
    parser.add_argument(
        "--device", default="cpu", help="the model's device in (a): cpu or cuda (default cpu)"
    )
    parser.add_argument("--no-ray", action="store_true")
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    parser.add_argument("--child-y", help=argparse.SUPPRESS)
    parser.add_argument("--child-method", help=argparse.SUPPRESS)
    parser.add_argument("--child-mode", choices=("rss", "time"), help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.child_y:
        child(args)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        sizes = [int(float(s)) for s in args.sizes.split(",")]
        files = setup(folder, sizes, args.dtype, args.seed)
        ok = linear(args, folder, files)
        if not args.no_ray:
            ok &= ray_part(args, folder)
    print("\ntargets " + ("met" if ok else "missed"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

"""Scale: cost linear in the number of outputs, bounded memory, and Ray on a local cluster.

The seed's model ``f(x) = sigmoid(x W^T + b)`` (784 -> 10) is trained on the
embedded 5,000 digits (5 epochs of Adam), a Gaussian prior fitted on them, and
``N`` outputs made from held-out digits with a little seeded noise.

(a) Linear cost: for N in ``--sizes`` (1e4, 1e5, 1e6) and methods pinv and
analytic, a fresh subprocess streams the ``.npy`` of outputs through
:func:`nninv.distributed.invert_file` (memory-mapped input, ``--batch-size``
rows at a time, results appended to ``.npy`` files in a temporary folder) and
reports its time per output (median of ``--repeats`` runs) and its peak RSS
(``ru_maxrss``). Target: time per output within 1.3x across the sizes; RSS
bounded (not growing with N).

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
    from nninv.cli._demo import load_split, train_seed_model
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
    """One streamed run in this process; print JSON with the time and the peak RSS."""
    from nninv.distributed import invert_file
    from nninv.priors import GaussianPrior

    torch.set_num_threads(args.threads)
    w = np.load(Path(args.folder) / "weights.npz")
    dtype = getattr(torch, args.dtype)
    f = _model(w["W"], w["b"], dtype)
    prior = GaussianPrior(torch.from_numpy(w["mean"]), torch.from_numpy(w["cov"]))
    times = []
    with tempfile.TemporaryDirectory(dir=args.folder) as tmp:
        for _ in range(args.repeats):
            t = time.perf_counter()
            r = invert_file(
                f,
                args.child_y,
                Path(tmp) / "x.npy",
                args.child_method,
                prior if args.child_method == "analytic" else None,
                batch_size=args.batch_size,
                progress=False,
            )
            times.append(time.perf_counter() - t)
    rss = _peak_rss_mib()
    print(
        json.dumps(
            {
                "seconds": statistics.median(times),
                "rss_mib": rss,
                "n": r.n,
                "converged": r.n_converged,
                "max_residual": r.max_residual,
            }
        )
    )


def linear(args: argparse.Namespace, folder: Path, files: dict) -> bool:
    print(
        f"(a) streamed, {args.dtype}, batch {args.batch_size}, {args.threads} torch thread(s), median of {args.repeats}"
    )
    head = f"{'method':<10} {'N':>9} {'s total':>9} {'us/output':>10} {'x smallest N':>13} {'peak RSS MiB':>13} {'converged':>10} {'max residual':>13}"
    print(head)
    print("-" * len(head))
    ok = True
    for method in ("pinv", "analytic"):
        base = None
        per = []
        for n, path in files.items():
            cmd = [
                sys.executable, str(HERE), "--child-y", path, "--child-method", method,
                "--folder", str(folder), "--dtype", args.dtype, "--batch-size", str(args.batch_size),
                "--repeats", str(args.repeats), "--threads", str(args.threads),
            ]  # fmt: skip
            out = subprocess.run(cmd, capture_output=True, text=True, check=True)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            us = 1e6 * r["seconds"] / n
            base = base or us
            per.append(us)
            print(
                f"{method:<10} {n:>9} {r['seconds']:>9.3f} {us:>10.2f} {us / base:>12.2f}x "
                f"{r['rss_mib']:>13.0f} {r['converged']:>10} {r['max_residual']:>13.1e}"
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
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--ray-n", type=int, default=50_000)
    parser.add_argument("--ray-batch", type=int, default=5_000)
    parser.add_argument("--no-ray", action="store_true")
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    parser.add_argument("--child-y", help=argparse.SUPPRESS)
    parser.add_argument("--child-method", help=argparse.SUPPRESS)
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

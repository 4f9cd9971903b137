"""``method="optimize"`` on bench_optimize's small CNN, on a chosen device, for many targets.

Loads the CNN (conv-BatchNorm-ReLU-pool x2) that ``bench_optimize.py`` trained and
cached in ``benchmarks/_cache`` (or trains it the same way, 3 epochs, when the
cache is missing), fits a Gaussian prior on the training images, and inverts the
exact float32 outputs of ``--n`` test images (10,000; repeated when the data has
fewer) with ``invert(f, y, method="optimize", prior=..., bounds=(0, 1))`` with the
model on ``--device``. A CPU run on ``--cpu-n`` (256) of the same targets, made in
the same process, gives the throughput ratio. Prints one row per run: seconds,
targets per second, converged, largest residual, and the devices and dtypes of
the answer (they must be the model's).

Run ``python benchmarks/bench_cnn_device.py --help`` for the options.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_optimize as bo  # noqa: E402

from nninv import NNInvWarning, invert  # noqa: E402
from nninv.datasets import default_mnist_dir  # noqa: E402
from nninv.experiments.seed import load_split  # noqa: E402
from nninv.priors import GaussianPrior  # noqa: E402

NAME = "CNN conv-bn-relu-pool x2"


def load_cnn(train, seed: int) -> tuple[torch.nn.Module, bool]:
    """bench_optimize's CNN: its cached weights, or trained as it trains it."""
    make, shape, epochs = bo.NETS[NAME]
    Xs = train.images.reshape(len(train.images), *shape)
    return bo._load_or_train(
        NAME,
        make,
        (shape, epochs, seed, "adam1e-3"),
        lambda m: bo._fit(m, Xs, train.labels, epochs, seed),
    )


def run(f, y, prior, device: torch.device) -> dict:
    f = f.to(device)
    y = y.to(device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NNInvWarning)
        invert(
            f,
            y[:4],
            method="optimize",
            prior=prior,
            bounds=(0, 1),
            progress=False,
            input_shape=(1, 28, 28),
        )  # warm
        sync()
        t = time.perf_counter()
        inv = invert(
            f,
            y,
            method="optimize",
            prior=prior,
            bounds=(0, 1),
            progress=False,
            input_shape=(1, 28, 28),
        )
        sync()
        s = time.perf_counter() - t
    return {
        "n": len(y),
        "seconds": s,
        "converged": int(inv.converged.sum()),
        "residual": float(inv.residual.max()),
        "where": f"{inv.x.device.type}/{str(inv.x.dtype).replace('torch.', '')}",
        "ok": inv.x.device.type == device.type and inv.x.dtype == y.dtype,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--n", type=int, default=10_000, help="targets on --device (10000)")
    parser.add_argument("--cpu-n", type=int, default=256, help="targets of the CPU run (256)")
    parser.add_argument("--threads", type=int, help="torch intra-op threads")
    parser.add_argument("--data-dir", help="folder of the MNIST IDX files (default: found)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    folder = args.data_dir or default_mnist_dir()
    if folder is not None and Path(folder).is_dir():
        train, test = load_split("mnist", folder)
        data = f"full MNIST ({folder})"
    else:
        train, test = load_split("mnist5k", n_test=1000, seed=args.seed)
        data = "embedded mnist5k (full MNIST not found)"
    t = time.perf_counter()
    f, cached = load_cnn(train, args.seed)
    f = f.float().eval()
    prior = GaussianPrior.fit(train.flat())
    X = test.images.reshape(-1, 1, 28, 28).float()
    X = X.repeat(-(-args.n // len(X)), 1, 1, 1)[: args.n]
    with torch.no_grad():
        y = f(X)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(
        f"data: {data}; CNN {'loaded from the cache' if cached else 'trained'}, setup "
        f"{time.perf_counter() - t:.1f} s; device {device} ({name}); torch threads "
        f"{torch.get_num_threads()}; float32 outputs, Gaussian prior, bounds (0, 1)"
    )
    head = (
        f"{'run':<14} {'N':>7} {'s':>8} {'targets/s':>10} {'x cpu':>7} {'converged':>10} "
        f"{'max residual':>13} {'x on':>14}"
    )
    print(head)
    print("-" * len(head))
    rows = [("cpu", run(f, y[: args.cpu_n], prior, torch.device("cpu")))]
    if device.type != "cpu":
        rows.append((str(device), run(f, y, prior, device)))
    base = rows[0][1]["n"] / rows[0][1]["seconds"]
    for label, r in rows:
        tp = r["n"] / r["seconds"]
        print(
            f"{label:<14} {r['n']:>7} {r['seconds']:>8.2f} {tp:>10.1f} {tp / base:>6.1f}x "
            f"{r['converged']:>10} {r['residual']:>13.1e} {r['where']:>14}"
        )
    return 0 if all(r["ok"] for _, r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())

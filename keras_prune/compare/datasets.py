"""Image datasets for the keras-prune examples and command line.

Three datasets, all 28x28 greyscale in 10 classes:

- ``"mnist10k"`` (default): 10 000 real MNIST digits shipped inside the
  package (``keras_prune/compare/data/mnist10k.npz``; see ``data/PROVENANCE.md``), so
  it works with no network.
- ``"mnist"`` and ``"fashion_mnist"``: the full 60 000/10 000 sets, read from
  IDX files in ``data_dir``, else (Fashion-MNIST) from the Debian package
  ``dataset-fashion-mnist``, else downloaded by ``keras.datasets``.
"""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path

import numpy as np

from keras_prune import _validation

__all__ = [
    "DATASETS",
    "DEBIAN_FASHION_MNIST_DIR",
    "DatasetUnavailableError",
    "load_dataset",
    "read_idx",
]

DATASETS: tuple[str, ...] = ("mnist10k", "mnist", "fashion_mnist")

#: Where ``apt-get install dataset-fashion-mnist`` puts the gzipped IDX files.
DEBIAN_FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"

EMBEDDED_TRAIN = 8000  # mnist10k: x[:8000] train, x[8000:] test

_EMBEDDED = Path(__file__).resolve().parent / "data" / "mnist10k.npz"
_IDX_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}
_IDX_DTYPES = {
    0x08: np.dtype("u1"),
    0x09: np.dtype("i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

Arrays = tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


class DatasetUnavailableError(OSError):
    """A dataset's files are not on this machine and could not be downloaded.

    The message says where the files can come from.
    """


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an IDX file (the MNIST file format), gzipped or not.

    The header is two zero bytes, a type code (0x08 uint8, 0x09 int8,
    0x0B int16, 0x0C int32, 0x0D float32, 0x0E float64), the number of
    dimensions, then one big-endian uint32 per dimension; the data follow,
    big-endian, and must fill the file exactly.  A gzipped file (magic
    ``1f 8b``) is decompressed first, whatever its name.

    Raises ``ValueError`` naming the file when it is truncated, has trailing
    bytes, or is not IDX; ``FileNotFoundError`` when it does not exist.

    Example:
        >>> labels = read_idx("/usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz")
        >>> labels.shape, labels.dtype
        ((10000,), dtype('uint8'))
    """
    _validation.instance(path, "path", (str, os.PathLike), "a str or os.PathLike")
    path = Path(path)
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:
            raise ValueError(f"{path}: corrupt gzip data ({exc})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise ValueError(f"{path}: not an IDX file (bad magic number {raw[:4].hex() or 'empty'})")
    dtype, ndim = _IDX_DTYPES[raw[2]], raw[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(raw) < header:
        raise ValueError(f"{path}: truncated IDX header ({ndim} dimensions, {len(raw)} bytes)")
    shape = tuple(int(d) for d in np.frombuffer(raw, ">u4", count=ndim, offset=4))
    expected = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) != expected:
        what = "truncated" if len(raw) < expected else "has trailing bytes"
        raise ValueError(
            f"{path}: IDX file {what}: shape {shape} needs {expected} bytes, file has {len(raw)}"
        )
    data = np.frombuffer(raw, dtype, offset=header).reshape(shape)
    return data.astype(dtype.newbyteorder("="))  # native byte order, writable copy


def load_dataset(
    name: str = "mnist10k",
    data_dir: str | os.PathLike[str] | None = None,
    *,
    allow_download: bool = True,
) -> Arrays:
    """Load a dataset as ``((x_train, y_train), (x_test, y_test))``.

    Images are float32 in [0, 1] shaped (N, 28, 28, 1); labels are int64 in
    0..9 shaped (N,).

    - ``"mnist10k"``: the embedded 10 000 digits, stored already shuffled;
      the first 8 000 are the training set and the last 2 000 the test set,
      the same on every call.  ``data_dir`` must be None.
    - ``"mnist"``, ``"fashion_mnist"``: tried in turn, (1) the IDX files
      ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
      ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte`` (each possibly
      ``.gz``) in ``data_dir`` when given (nothing else is tried then);
      (2) for Fashion-MNIST, the same files in ``DEBIAN_FASHION_MNIST_DIR``;
      (3) if ``allow_download``, ``keras.datasets.<name>.load_data()``.
      When none works, ``DatasetUnavailableError`` says where to get them.

    Raises ``ValueError`` for an unknown name (or a ``data_dir`` with
    ``"mnist10k"``) or malformed files, ``TypeError`` for wrong argument types.

    Example:
        >>> (x_train, y_train), (x_test, y_test) = load_dataset()
        >>> x_train.shape, x_train.dtype, y_test.shape, y_test.dtype
        ((8000, 28, 28, 1), dtype('float32'), (2000,), dtype('int64'))
    """
    _validation.instance(name, "name", str, "a str")
    if data_dir is not None:
        _validation.instance(data_dir, "data_dir", (str, os.PathLike), "a str, os.PathLike or None")
    _validation.instance(allow_download, "allow_download", bool, "True or False")
    _validation.one_of(name, "name", DATASETS)

    if name == "mnist10k":
        if data_dir is not None:
            raise ValueError(
                f"`data_dir` is only used by 'mnist' and 'fashion_mnist', not 'mnist10k'; got {data_dir!r}."
            )
        with np.load(_EMBEDDED) as archive:
            x, y = archive["x"], archive["y"]
        n = EMBEDDED_TRAIN
        return _prepare(x[:n], y[:n], x[n:], y[n:])

    if data_dir is not None:
        found = _idx_dir(Path(data_dir))
        if isinstance(found, str):
            raise DatasetUnavailableError(f"{name}: {found}.\n{_where_from(name)}")
        return _prepare(*found)

    reasons = []
    if name == "fashion_mnist":
        found = _idx_dir(Path(DEBIAN_FASHION_MNIST_DIR))
        if not isinstance(found, str):
            return _prepare(*found)
        reasons.append(found)
    if allow_download:
        try:
            import keras  # imported here: reading IDX files needs no backend

            (xa, ya), (xb, yb) = getattr(keras.datasets, name).load_data()
            return _prepare(xa, ya, xb, yb)
        except Exception as exc:  # urllib, HTTP, checksum, disk: all mean "not available"
            reasons.append(f"keras.datasets.{name}.load_data() failed: {type(exc).__name__}: {exc}")
    else:
        reasons.append("download not allowed (allow_download=False)")
    raise DatasetUnavailableError(
        f"{name} is not available: {'; '.join(reasons)}.\n{_where_from(name)}"
    )


def _idx_dir(directory: Path) -> tuple[np.ndarray, ...] | str:
    """The four arrays from ``directory``, or a sentence saying what is missing."""
    if not directory.is_dir():
        return f"no directory {directory}"
    paths = []
    for base in _IDX_FILES.values():
        candidates = [directory / base, directory / f"{base}.gz"]
        present = [p for p in candidates if p.is_file()]
        if not present:
            return f"{directory} has no {base}[.gz]"
        paths.append(present[0])
    return tuple(read_idx(p) for p in paths)


def _prepare(
    x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray
) -> Arrays:
    out = []
    for x, y in ((x_train, y_train), (x_test, y_test)):
        x, y = np.asarray(x), np.asarray(y)
        if x.ndim != 3 or x.shape[1:] != (28, 28) or y.shape != (x.shape[0],):
            raise ValueError(
                f"expected images (N, 28, 28) and labels (N,), got {x.shape} and {y.shape}"
            )
        out.append(((x.astype(np.float32) / np.float32(255.0))[..., None], y.astype(np.int64)))
    return out[0], out[1]


def _where_from(name: str) -> str:
    files = ", ".join(f"{b}[.gz]" for b in _IDX_FILES.values())
    lines = [f"To use {name} on this machine, any one of:"]
    if name == "fashion_mnist":
        lines.append(
            f"  - apt-get install dataset-fashion-mnist (Debian/Ubuntu; files go to {DEBIAN_FASHION_MNIST_DIR})"
        )
    lines.append(f"  - pass --data-dir DIR (data_dir=DIR) where DIR holds the IDX files {files}")
    lines.append(
        f"  - allow a download: keras.datasets.{name}.load_data() fetches and caches it in ~/.keras/datasets"
    )
    lines.append("  - or use the embedded default, --dataset mnist10k, which needs no files.")
    return "\n".join(lines)

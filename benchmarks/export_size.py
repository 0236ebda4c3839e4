"""Export sizes, accuracy and load cost of the seed CNN pruned to 87.5 %.

Trains the seed CNN (431 242 parameters) with ConstantSparsity(0.875) from
20 % of the steps on the embedded MNIST (8000 train / 2000 test), strips it,
and measures

* bytes of: zipped `.h5`, zipped `.keras`, `keras_prune.export` float32 and
  `quantize="int8"`, against the information bound (H(sparsity) bits per
  weight for the mask plus 32 or 8 bits per kept value);
* test accuracy of the stripped float model and of the int8 export;
* load time (median of `--repeats` runs) and peak Python/NumPy heap
  (tracemalloc) of `keras_prune.load` against `keras.saving.load_model` of
  the dense `.keras` and `.h5` files.

Writes JSON to `--out` (default benchmarks/export_size.json). Run with
KERAS_BACKEND=tensorflow; `--model` reuses a saved stripped `.keras` model
instead of training.

    KERAS_BACKEND=tensorflow python benchmarks/export_size.py --epochs 4
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import tempfile
import time
import tracemalloc
import zipfile

import keras
import numpy as np

import keras_prune
from keras_prune.compare.datasets import load_dataset

SPARSITY = 0.875


def seed_cnn() -> keras.Model:
    return keras.Sequential(
        [
            keras.Input((28, 28, 1)),
            keras.layers.Conv2D(32, 3, activation="relu"),
            keras.layers.MaxPooling2D(2),
            keras.layers.Conv2D(64, 3, activation="relu"),
            keras.layers.MaxPooling2D(2),
            keras.layers.Flatten(),
            keras.layers.Dense(256, activation="relu"),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )


def train(epochs: int, batch_size: int) -> tuple[keras.Model, float]:
    (x, y), _ = load_dataset()
    steps = epochs * math.ceil(len(x) / batch_size)
    schedule = keras_prune.ConstantSparsity(SPARSITY, begin_step=steps // 5, frequency=25)
    pruned = keras_prune.prune_low_magnitude(seed_cnn(), pruning_schedule=schedule)
    pruned.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    start = time.perf_counter()
    pruned.fit(
        x,
        y,
        batch_size=batch_size,
        epochs=epochs,
        verbose=2,
        callbacks=[keras_prune.UpdatePruningStep()],
    )
    return keras_prune.strip_pruning(pruned), time.perf_counter() - start


def accuracy(model: keras.Model, x: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(np.argmax(model.predict(x, verbose=0), axis=-1) == y))


def zipped(path: str) -> int:
    archive = path + ".zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as out:
        out.write(path, arcname=os.path.basename(path))
    return os.path.getsize(archive)


def information_bound(model: keras.Model, value_bits: int) -> float:
    """Bytes of H(sparsity) bits per weight plus `value_bits` per kept value."""
    bits = 0.0
    for weight in model.get_weights():
        n, kept = weight.size, int(np.count_nonzero(weight))
        p = kept / n
        if 0 < p < 1:
            bits += n * -(p * math.log2(p) + (1 - p) * math.log2(1 - p))
        bits += kept * (value_bits if weight.ndim > 1 else 32)
    return bits / 8


def load_cost(load, path: str, repeats: int) -> dict[str, float]:
    times, peaks = [], []
    for _ in range(repeats):
        keras.utils.clear_session()
        tracemalloc.start()
        start = time.perf_counter()
        load(path)
        times.append(time.perf_counter() - start)
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    return {
        "median_s": statistics.median(times),
        "median_peak_heap_bytes": statistics.median(peaks),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--model", help="a saved stripped .keras model to reuse")
    parser.add_argument("--save-model", help="where to save the trained stripped model")
    parser.add_argument(
        "--out", default=os.path.join(os.path.dirname(__file__), "export_size.json")
    )
    args = parser.parse_args()

    keras.utils.set_random_seed(0)
    train_s = None
    if args.model:
        model = keras.saving.load_model(args.model)
    else:
        model, train_s = train(args.epochs, args.batch_size)
        if args.save_model:
            model.save(args.save_model)
    _, (x_test, y_test) = load_dataset()
    # strip_pruning keeps the compile state, so `.keras` would also store
    # Adam's slots (3x the weights); compare files of the weights alone.
    plain = model.__class__.from_config(model.get_config())
    plain.set_weights(model.get_weights())
    model = plain

    with tempfile.TemporaryDirectory() as tmp:
        files = {
            name: os.path.join(tmp, name)
            for name in ("model.h5", "model.keras", "float32.kps", "int8.kps")
        }
        keras.saving.save_model(model, files["model.h5"], include_optimizer=False)
        model.save(files["model.keras"])
        keras_prune.export(model, files["float32.kps"])
        keras_prune.export(model, files["int8.kps"], quantize="int8")
        int8_model = keras_prune.load(files["int8.kps"])
        float_model = keras_prune.load(files["float32.kps"])
        sample = x_test[:256]
        result = {
            "backend": keras.backend.backend(),
            "keras": keras.__version__,
            "params": model.count_params(),
            "nonzero_params": int(sum(np.count_nonzero(w) for w in model.get_weights())),
            "train_seconds": train_s,
            "bytes": {
                "h5": os.path.getsize(files["model.h5"]),
                "h5_zip": zipped(files["model.h5"]),
                "keras": os.path.getsize(files["model.keras"]),
                "keras_zip": zipped(files["model.keras"]),
                "export_float32": os.path.getsize(files["float32.kps"]),
                "export_int8": os.path.getsize(files["int8.kps"]),
                "bound_float32": information_bound(model, 32),
                "bound_int8": information_bound(model, 8),
            },
            "float32_export_exact": bool(
                np.array_equal(
                    model.predict(sample, verbose=0), float_model.predict(sample, verbose=0)
                )
            ),
            "accuracy": {
                "float32": accuracy(model, x_test, y_test),
                "int8_export": accuracy(int8_model, x_test, y_test),
            },
            "load": {
                "keras_prune.load(float32)": load_cost(
                    keras_prune.load, files["float32.kps"], args.repeats
                ),
                "keras_prune.load(int8)": load_cost(
                    keras_prune.load, files["int8.kps"], args.repeats
                ),
                "keras.saving.load_model(.keras)": load_cost(
                    keras.saving.load_model, files["model.keras"], args.repeats
                ),
                "keras.saving.load_model(.h5)": load_cost(
                    keras.saving.load_model, files["model.h5"], args.repeats
                ),
            },
        }
    with open(args.out, "w") as handle:
        json.dump(result, handle, indent=2)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

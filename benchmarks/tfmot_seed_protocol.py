#!/usr/bin/env python
"""The seed pruning experiment, run with tfmot 0.8.1 (reference side).

Runs inside the tfmot reference venv (see ``tfmot_env.py``):

    benchmarks/.venv-tfmot/bin/python benchmarks/tfmot_seed_protocol.py \
        --data mnist.npz --schedule constant --epochs 10 --out res.json

Model: Conv2D(32,3x3,relu) - MaxPool2 - Conv2D(64,3x3,relu) - MaxPool2 -
Flatten - Dense(256,relu) - Dense(10,softmax); Adam; categorical
crossentropy; batch 250; validation_split 0.2. Whole model wrapped with
``prune_low_magnitude`` using ConstantSparsity(0.875, begin, end, 100) or
PolynomialDecay(0, 0.875, begin, end) (tfmot defaults power=3,
frequency=100), where end = ceil(n_train * 0.8 / 250) * epochs and
begin = int(0.2 * end). Trained with UpdatePruningStep, then
``strip_pruning``; saved as .h5 without optimizer; size reported as the
ZIP_DEFLATED-compressed h5 (as in the seed). ``--schedule none`` trains the
same model unpruned.

``--data`` is an .npz with x_train, y_train, x_test, y_test (uint8 28x28
images, integer labels); images are divided by 255 here. Without network
access nothing is downloaded: the caller provides the data.
"""

import argparse
import json
import math
import os
import platform
import random
import statistics
import sys
import tempfile
import time
import zipfile

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "-1")

from importlib.metadata import version  # noqa: E402

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tensorflow_model_optimization as tfmot  # noqa: E402

keras = tf.keras  # tf_keras (Keras 2) because TF_USE_LEGACY_KERAS=1
sp = tfmot.sparsity.keras

BATCH = 250
VALIDATION_SPLIT = 0.2
TARGET = 0.875


class EpochTimer(keras.callbacks.Callback):
    def on_train_begin(self, logs=None):
        self.times = []

    def on_epoch_begin(self, epoch, logs=None):
        self._t0 = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.times.append(time.perf_counter() - self._t0)


def build_model(num_classes):
    return keras.Sequential(
        [
            keras.layers.Input((28, 28, 1)),
            keras.layers.Conv2D(32, (3, 3), activation="relu"),
            keras.layers.MaxPooling2D((2, 2)),
            keras.layers.Conv2D(64, (3, 3), activation="relu"),
            keras.layers.MaxPooling2D((2, 2)),
            keras.layers.Flatten(),
            keras.layers.Dense(256, activation="relu"),
            keras.layers.Dense(num_classes, activation="softmax"),
        ]
    )


def gzipped_size(model):
    """Size of the .h5 (no optimizer) after ZIP_DEFLATED, as in the seed."""
    with tempfile.TemporaryDirectory() as d:
        h5 = os.path.join(d, "model.h5")
        keras.models.save_model(model, h5, include_optimizer=False)
        zpath = os.path.join(d, "model.zip")
        with zipfile.ZipFile(zpath, "w", compression=zipfile.ZIP_DEFLATED) as z:
            z.write(h5, arcname="model.h5")
        return os.path.getsize(h5), os.path.getsize(zpath)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--schedule", choices=["constant", "polynomial", "none"], default="constant")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--data",
        required=True,
        help=".npz with x_train, y_train, x_test, y_test (uint8 28x28 images, int labels)",
    )
    ap.add_argument("--out", default=None, help="write results JSON here")
    ap.add_argument("--verbose", type=int, default=2)
    args = ap.parse_args()

    random.seed(args.seed)
    np.random.seed(args.seed)
    tf.random.set_seed(args.seed)

    with np.load(args.data) as d:
        x_train, y_train = d["x_train"], d["y_train"]
        x_test, y_test = d["x_test"], d["y_test"]
    num_classes = 10
    x_train = (x_train.astype("float32") / 255.0).reshape(-1, 28, 28, 1)
    x_test = (x_test.astype("float32") / 255.0).reshape(-1, 28, 28, 1)
    y_train = keras.utils.to_categorical(y_train, num_classes)
    y_test = keras.utils.to_categorical(y_test, num_classes)

    n_train = x_train.shape[0]
    steps_per_epoch = math.ceil(n_train * (1 - VALIDATION_SPLIT) / BATCH)
    end_step = steps_per_epoch * args.epochs
    begin_step = int(0.2 * end_step)

    model = build_model(num_classes)
    callbacks = []
    schedule_cfg = None
    if args.schedule != "none":
        if args.schedule == "constant":
            schedule = sp.ConstantSparsity(
                TARGET, begin_step=begin_step, end_step=end_step, frequency=100
            )
        else:
            schedule = sp.PolynomialDecay(
                initial_sparsity=0.0,
                final_sparsity=TARGET,
                begin_step=begin_step,
                end_step=end_step,
            )
        schedule_cfg = schedule.get_config()
        model = sp.prune_low_magnitude(model, pruning_schedule=schedule)
        callbacks.append(sp.UpdatePruningStep())
    timer = EpochTimer()
    callbacks.append(timer)

    model.compile(
        optimizer=keras.optimizers.Adam(), loss="categorical_crossentropy", metrics=["accuracy"]
    )
    t0 = time.perf_counter()
    hist = model.fit(
        x_train,
        y_train,
        batch_size=BATCH,
        epochs=args.epochs,
        validation_split=VALIDATION_SPLIT,
        callbacks=callbacks,
        verbose=args.verbose,
    )
    train_total = time.perf_counter() - t0

    final = sp.strip_pruning(model) if args.schedule != "none" else model
    final.compile(
        optimizer=keras.optimizers.Adam(), loss="categorical_crossentropy", metrics=["accuracy"]
    )
    test_loss, test_acc = final.evaluate(x_test, y_test, batch_size=BATCH, verbose=0)

    layer_sparsity = {}
    for layer in final.layers:
        if hasattr(layer, "kernel"):
            k = layer.kernel.numpy()
            layer_sparsity[layer.name] = {
                "shape": list(k.shape),
                "sparsity": float((k == 0).mean()),
            }
    h5_bytes, zip_bytes = gzipped_size(final)

    later = timer.times[1:]
    res = {
        "framework": "tfmot",
        "schedule": args.schedule,
        "schedule_config": schedule_cfg,
        "epochs": args.epochs,
        "seed": args.seed,
        "data": os.path.abspath(args.data),
        "n_train": int(n_train),
        "n_test": int(x_test.shape[0]),
        "steps_per_epoch": steps_per_epoch,
        "begin_step": begin_step,
        "end_step": end_step,
        "epoch_times_s": timer.times,
        "median_epoch_time_s_excl_first": statistics.median(later) if later else None,
        "train_total_s": train_total,
        "history": {k: [float(x) for x in v] for k, v in hist.history.items()},
        "test_loss": float(test_loss),
        "test_accuracy": float(test_acc),
        "layer_sparsity": layer_sparsity,
        "h5_bytes": h5_bytes,
        "zipped_h5_bytes": zip_bytes,
        "versions": {
            "tensorflow": tf.__version__,
            "tf_keras": version("tf-keras"),
            "tensorflow_model_optimization": version("tensorflow-model-optimization"),
            "numpy": np.__version__,
            "python": platform.python_version(),
        },
        "cpu_count": os.cpu_count(),
    }
    text = json.dumps(res, indent=1)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            f.write(text + "\n")
        print("wrote " + args.out)
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

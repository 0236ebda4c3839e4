#!/usr/bin/env python
"""keras-prune (TensorFlow backend) against tfmot 0.8.1, side by side.

    python benchmarks/tfmot_env.py                     # once: the tfmot venv
    python benchmarks/tfmot_compare.py [--epochs 10] [--seeds 0,1] [--skip-mask-update]

1. Seed protocol, same data, seeds and machine: the embedded data
   (`load_dataset("mnist10k")`, written once as uint8 to
   benchmarks/results/tmp/mnist10k_uint8.npz so that both sides read the same
   file), the seed CNN, Adam, batch 250, validation_split 0.2,
   PolynomialDecay(0 -> 0.875, begin 20 % of the run, end = last step,
   frequency 100), UpdatePruningStep, strip_pruning, test accuracy, final
   kernel sparsity. tfmot runs `tfmot_seed_protocol.py` in
   benchmarks/.venv-tfmot (tf.keras 2, TF_USE_LEGACY_KERAS=1); keras-prune
   runs the same protocol here (Keras 3, KERAS_BACKEND=tensorflow). For each
   seed the two runs follow each other (order alternating by seed); the
   epoch-time ratio is the ratio of the two median epoch times (first epoch,
   with tracing/compilation, excluded).
2. Mask update: runs `tfmot_mask_update.py` (tfmot venv) and
   `mask_update.py --backends tensorflow` one after the other, and reports
   keras-prune/tfmot per weight size, both raw and as the ratio of each
   side's ratio to numpy.partition measured in its own process (less
   sensitive to the load of the shared machine).

Writes benchmarks/results/tfmot_compare.json (and refreshes
tfmot_mask_update.json and mask_update.json for TensorFlow unless
--skip-mask-update).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))  # the checkout, not an installed copy

import _common  # noqa: E402

RESULTS = os.path.join(HERE, "results")
DATA = os.path.join(RESULTS, "tmp", "mnist10k_uint8.npz")  # gitignored, derived
TFMOT_PY = os.path.join(HERE, ".venv-tfmot", "bin", "python")
BATCH = 250
TARGET = 0.875


def write_data():
    import numpy as np

    from keras_prune.datasets import load_dataset

    (x, y), (xt, yt) = load_dataset("mnist10k")
    as_uint8 = lambda a: np.round(a[..., 0] * 255).astype(np.uint8)  # noqa: E731 exact: stored as k/255
    os.makedirs(os.path.dirname(DATA), exist_ok=True)
    np.savez_compressed(DATA, x_train=as_uint8(x), y_train=y, x_test=as_uint8(xt), y_test=yt)


def keras_prune_protocol(epochs, seed):
    """The seed protocol with keras-prune, mirroring tfmot_seed_protocol.py."""
    import keras
    import numpy as np

    import keras_prune
    from train_overhead import build_model

    keras.utils.set_random_seed(seed)
    with np.load(DATA) as d:
        x, y, xt, yt = d["x_train"], d["y_train"], d["x_test"], d["y_test"]
    x = (x.astype("float32") / 255.0).reshape(-1, 28, 28, 1)
    xt = (xt.astype("float32") / 255.0).reshape(-1, 28, 28, 1)
    y, yt = keras.utils.to_categorical(y, 10), keras.utils.to_categorical(yt, 10)
    steps_per_epoch = math.ceil(x.shape[0] * 0.8 / BATCH)
    end_step = steps_per_epoch * epochs
    begin_step = int(0.2 * end_step)
    schedule = keras_prune.PolynomialDecay(0.0, TARGET, begin_step, end_step)
    model = keras_prune.prune_low_magnitude(build_model(keras), pruning_schedule=schedule)
    model.compile(optimizer=keras.optimizers.Adam(), loss="categorical_crossentropy",
                  metrics=["accuracy"])  # fmt: skip
    times = []

    class EpochTimer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self._start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            times.append(time.perf_counter() - self._start)

    model.fit(x, y, batch_size=BATCH, epochs=epochs, validation_split=0.2, verbose=0,
              callbacks=[keras_prune.UpdatePruningStep(), EpochTimer()])  # fmt: skip
    final = keras_prune.strip_pruning(model)
    final.compile(optimizer=keras.optimizers.Adam(), loss="categorical_crossentropy",
                  metrics=["accuracy"])  # fmt: skip
    _, accuracy = final.evaluate(xt, yt, batch_size=BATCH, verbose=0)
    sparsity = {layer.name: float((keras.ops.convert_to_numpy(layer.kernel) == 0).mean())
                for layer in final.layers if hasattr(layer, "kernel")}  # fmt: skip
    return {"framework": "keras-prune", "epoch_times_s": times,
            "median_epoch_time_s_excl_first": statistics.median(times[1:]),
            "test_accuracy": float(accuracy), "layer_sparsity": sparsity,
            "keras": keras.__version__, "jit_compile": str(model.jit_compile)}  # fmt: skip


def run_json(cmd, env_extra):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="-1", **env_extra)
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(f"{cmd} failed:\n{out.stderr[-3000:]}")
    return out.stdout


def seed_runs(epochs, seed):
    tfmot_out = os.path.join(RESULTS, f"tfmot_seed_polynomial_s{seed}.json")
    runs = {}

    def tfmot():
        run_json([TFMOT_PY, os.path.join(HERE, "tfmot_seed_protocol.py"), "--data", DATA,
                  "--schedule", "polynomial", "--epochs", str(epochs), "--seed", str(seed),
                  "--out", tfmot_out, "--verbose", "0"], {"TF_USE_LEGACY_KERAS": "1"})  # fmt: skip
        with open(tfmot_out) as f:
            r = json.load(f)
        runs["tfmot"] = {k: r[k] for k in ("epoch_times_s", "median_epoch_time_s_excl_first",
                                           "test_accuracy", "layer_sparsity", "versions")}  # fmt: skip
        runs["tfmot"]["layer_sparsity"] = {k: v["sparsity"] for k, v in r["layer_sparsity"].items()}

    def ours():
        out = run_json([sys.executable, __file__, "--child", "--epochs", str(epochs),
                        "--seeds", str(seed)], {"KERAS_BACKEND": "tensorflow"})  # fmt: skip
        runs["keras_prune"] = json.loads(out.strip().splitlines()[-1])

    for step in (tfmot, ours) if seed % 2 == 0 else (ours, tfmot):
        step()
    runs["epoch_time_ratio_keras_prune_over_tfmot"] = (
        runs["keras_prune"]["median_epoch_time_s_excl_first"]
        / runs["tfmot"]["median_epoch_time_s_excl_first"]
    )
    return runs


def mask_update_ratios(repeats):
    run_json([TFMOT_PY, os.path.join(HERE, "tfmot_mask_update.py"), "--repeats", str(repeats)],
             {"TF_USE_LEGACY_KERAS": "1"})  # fmt: skip
    run_json([sys.executable, os.path.join(HERE, "mask_update.py"), "--backends", "tensorflow",
              "--repeats", str(repeats), "--out", os.path.join(RESULTS, "mask_update_tensorflow.json")],
             {})  # fmt: skip
    with open(os.path.join(RESULTS, "tfmot_mask_update.json")) as f:
        tfmot = {r["size"]: r for r in json.load(f)["results"]}
    with open(os.path.join(RESULTS, "mask_update_tensorflow.json")) as f:
        ours = {r["size"]: r for r in json.load(f)["backends"]["tensorflow"]}
    rows = []
    for size in sorted(set(tfmot) & set(ours)):
        t, o = tfmot[size], ours[size]
        rows.append({
            "size": size,
            "keras_prune_median_s": o["keras_prune_update"]["median_s"],
            "tfmot_median_s": t["tfmot_conditional_mask_update"]["median_s"],
            "ratio_keras_prune_over_tfmot": o["keras_prune_update"]["median_s"]
            / t["tfmot_conditional_mask_update"]["median_s"],
            "ratio_normalised_by_numpy": o["ratio_over_numpy_median"] / t["ratio_tfmot_over_numpy_median"],
        })  # fmt: skip
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--repeats", type=int, default=5, help="mask-update repeats")
    ap.add_argument("--skip-mask-update", action="store_true")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.epochs < 2:
        ap.error("--epochs must be >= 2 (the first epoch is excluded from timing)")
    seeds = [int(s) for s in args.seeds.split(",")]
    if args.child:
        print(json.dumps(keras_prune_protocol(args.epochs, seeds[0])))
        return 0
    if not os.path.exists(TFMOT_PY):
        sys.exit("no tfmot venv: run `python benchmarks/tfmot_env.py` first")
    if not os.path.exists(DATA):
        write_data()
    doc = {"benchmark": "tfmot_compare", "machine": _common.machine_info(), "epochs": args.epochs,
           "schedule": "PolynomialDecay(0, 0.875, begin=20% of run, end=last step, frequency=100)",
           "seeds": {}}  # fmt: skip
    for seed in seeds:
        runs = seed_runs(args.epochs, seed)
        doc["seeds"][str(seed)] = runs
        print("seed %d: epoch keras-prune %.3fs tfmot %.3fs ratio %.3f | accuracy %.4f vs %.4f"
              % (seed, runs["keras_prune"]["median_epoch_time_s_excl_first"],
                 runs["tfmot"]["median_epoch_time_s_excl_first"],
                 runs["epoch_time_ratio_keras_prune_over_tfmot"],
                 runs["keras_prune"]["test_accuracy"], runs["tfmot"]["test_accuracy"]), flush=True)  # fmt: skip
    ratios = [r["epoch_time_ratio_keras_prune_over_tfmot"] for r in doc["seeds"].values()]
    doc["epoch_time_ratio"] = {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios)}
    if not args.skip_mask_update:
        doc["mask_update"] = mask_update_ratios(args.repeats)
        for r in doc["mask_update"]:
            print("mask update n=%d: keras-prune %.4fs tfmot %.4fs ratio %.3f (numpy-normalised %.3f)"
                  % (r["size"], r["keras_prune_median_s"], r["tfmot_median_s"],
                     r["ratio_keras_prune_over_tfmot"], r["ratio_normalised_by_numpy"]))  # fmt: skip
    doc["machine"]["load_average_at_end"] = os.getloadavg()
    with open(os.path.join(RESULTS, "tfmot_compare.json"), "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
    print("wrote", os.path.join(RESULTS, "tfmot_compare.json"))
    return 0


if __name__ == "__main__":
    sys.exit(main())

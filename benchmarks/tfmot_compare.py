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
   seed the runs follow each other (order alternating by seed); the
   epoch-time ratio is the ratio of the two median epoch times (first epoch,
   with tracing/compilation, excluded). Both sides also train the same model
   unpruned (tf.keras 2 and Keras 3), which tells how much of the ratio is
   the training loop of Keras 3 against tf.keras 2 rather than pruning.
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

    from keras_prune.compare.datasets import load_dataset

    (x, y), (xt, yt) = load_dataset("mnist10k")
    as_uint8 = lambda a: np.round(a[..., 0] * 255).astype(np.uint8)  # noqa: E731 exact: stored as k/255
    os.makedirs(os.path.dirname(DATA), exist_ok=True)
    np.savez_compressed(DATA, x_train=as_uint8(x), y_train=y, x_test=as_uint8(xt), y_test=yt)


def keras_prune_protocol(epochs, seed, dense=False):
    """The seed protocol with keras-prune, mirroring tfmot_seed_protocol.py
    (`dense`: the same training unpruned, as its `--schedule none`)."""
    import keras
    import numpy as np

    import keras_prune
    from keras_prune.compare.experiment import seed_model

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
    model = (
        seed_model()
        if dense
        else keras_prune.prune_low_magnitude(seed_model(), pruning_schedule=schedule)
    )
    model.compile(
        optimizer=keras.optimizers.Adam(), loss="categorical_crossentropy", metrics=["accuracy"]
    )
    times = []

    class EpochTimer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self._start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            times.append(time.perf_counter() - self._start)

    callbacks = [EpochTimer()] if dense else [keras_prune.UpdatePruningStep(), EpochTimer()]
    model.fit(
        x, y, batch_size=BATCH, epochs=epochs, validation_split=0.2, verbose=0, callbacks=callbacks
    )
    final = model if dense else keras_prune.strip_pruning(model)
    final.compile(
        optimizer=keras.optimizers.Adam(), loss="categorical_crossentropy", metrics=["accuracy"]
    )
    _, accuracy = final.evaluate(xt, yt, batch_size=BATCH, verbose=0)
    sparsity = {
        layer.name: float((keras.ops.convert_to_numpy(layer.kernel) == 0).mean())
        for layer in final.layers
        if hasattr(layer, "kernel")
    }
    return {
        "framework": "keras-prune",
        "epoch_times_s": times,
        "median_epoch_time_s_excl_first": statistics.median(times[1:]),
        "test_accuracy": float(accuracy),
        "layer_sparsity": sparsity,
        "keras": keras.__version__,
        "jit_compile": str(model.jit_compile),
    }


def run_json(cmd, env_extra):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="-1", **env_extra)
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(f"{cmd} failed:\n{out.stderr[-3000:]}")
    return out.stdout


def seed_runs(epochs, seed):
    """Pruned and unpruned training with each library, alternating; the
    unpruned pair tells how much of the gap is Keras 3 vs tf.keras 2."""
    runs = {}

    def tfmot(schedule):
        out = os.path.join(RESULTS, "tmp", f"tfmot_seed_{schedule}_s{seed}.json")
        run_json(
            [
                TFMOT_PY,
                os.path.join(HERE, "tfmot_seed_protocol.py"),
                "--data",
                DATA,
                "--schedule",
                schedule,
                "--epochs",
                str(epochs),
                "--seed",
                str(seed),
                "--out",
                out,
                "--verbose",
                "0",
            ],
            {"TF_USE_LEGACY_KERAS": "1"},
        )
        with open(out) as f:
            r = json.load(f)
        name = "tfmot" if schedule == "polynomial" else "tf_keras_2_unpruned"
        runs[name] = {
            k: r[k]
            for k in (
                "epoch_times_s",
                "median_epoch_time_s_excl_first",
                "test_accuracy",
                "layer_sparsity",
                "versions",
            )
        }
        runs[name]["layer_sparsity"] = {k: v["sparsity"] for k, v in r["layer_sparsity"].items()}

    def ours(dense):
        out = run_json(
            [sys.executable, __file__, "--child", "--epochs", str(epochs), "--seeds", str(seed)]
            + (["--dense"] if dense else []),
            {"KERAS_BACKEND": "tensorflow"},
        )
        runs["keras_3_unpruned" if dense else "keras_prune"] = json.loads(
            out.strip().splitlines()[-1]
        )

    steps = [
        lambda: tfmot("polynomial"),
        lambda: ours(False),
        lambda: tfmot("none"),
        lambda: ours(True),
    ]
    for step in steps if seed % 2 == 0 else steps[::-1]:
        step()

    def epoch(name):
        return runs[name]["median_epoch_time_s_excl_first"]

    runs["epoch_time_ratio_keras_prune_over_tfmot"] = epoch("keras_prune") / epoch("tfmot")
    runs["epoch_time_ratio_keras_3_over_tf_keras_2_unpruned"] = epoch("keras_3_unpruned") / epoch(
        "tf_keras_2_unpruned"
    )
    runs["pruned_over_unpruned_keras_prune"] = epoch("keras_prune") / epoch("keras_3_unpruned")
    runs["pruned_over_unpruned_tfmot"] = epoch("tfmot") / epoch("tf_keras_2_unpruned")
    return runs


def mask_update_ratios(repeats):
    run_json(
        [TFMOT_PY, os.path.join(HERE, "tfmot_mask_update.py"), "--repeats", str(repeats)],
        {"TF_USE_LEGACY_KERAS": "1"},
    )
    run_json(
        [
            sys.executable,
            os.path.join(HERE, "mask_update.py"),
            "--backends",
            "tensorflow",
            "--repeats",
            str(repeats),
            "--out",
            os.path.join(RESULTS, "mask_update_tensorflow.json"),
        ],
        {},
    )
    with open(os.path.join(RESULTS, "tfmot_mask_update.json")) as f:
        tfmot = {r["size"]: r for r in json.load(f)["results"]}
    with open(os.path.join(RESULTS, "mask_update_tensorflow.json")) as f:
        ours = {r["size"]: r for r in json.load(f)["backends"]["tensorflow"]}
    rows = []
    for size in sorted(set(tfmot) & set(ours)):
        t, o = tfmot[size], ours[size]
        rows.append(
            {
                "size": size,
                "keras_prune_median_s": o["keras_prune_update"]["median_s"],
                "tfmot_median_s": t["tfmot_conditional_mask_update"]["median_s"],
                "ratio_keras_prune_over_tfmot": o["keras_prune_update"]["median_s"]
                / t["tfmot_conditional_mask_update"]["median_s"],
                "ratio_normalised_by_numpy": o["ratio_over_numpy_median"]
                / t["ratio_tfmot_over_numpy_median"],
            }
        )
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--repeats", type=int, default=5, help="mask-update repeats")
    ap.add_argument("--skip-mask-update", action="store_true")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--dense", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.epochs < 2:
        ap.error("--epochs must be >= 2 (the first epoch is excluded from timing)")
    seeds = [int(s) for s in args.seeds.split(",")]
    if args.child:
        print(json.dumps(keras_prune_protocol(args.epochs, seeds[0], args.dense)))
        return 0
    if not os.path.exists(TFMOT_PY):
        sys.exit("no tfmot venv: run `python benchmarks/tfmot_env.py` first")
    if not os.path.exists(DATA):
        write_data()
    doc = {
        "benchmark": "tfmot_compare",
        "machine": _common.machine_info(),
        "epochs": args.epochs,
        "schedule": "PolynomialDecay(0, 0.875, begin=20% of run, end=last step, frequency=100)",
        "seeds": {},
    }
    for seed in seeds:
        runs = seed_runs(args.epochs, seed)
        doc["seeds"][str(seed)] = runs
        print(
            "seed %d: epoch keras-prune %.3fs tfmot %.3fs ratio %.3f | unpruned Keras 3 / tf.keras 2 %.3f"
            " | pruned/unpruned keras-prune %.3f tfmot %.3f | accuracy %.4f vs %.4f"
            % (
                seed,
                runs["keras_prune"]["median_epoch_time_s_excl_first"],
                runs["tfmot"]["median_epoch_time_s_excl_first"],
                runs["epoch_time_ratio_keras_prune_over_tfmot"],
                runs["epoch_time_ratio_keras_3_over_tf_keras_2_unpruned"],
                runs["pruned_over_unpruned_keras_prune"],
                runs["pruned_over_unpruned_tfmot"],
                runs["keras_prune"]["test_accuracy"],
                runs["tfmot"]["test_accuracy"],
            ),
            flush=True,
        )
    for key in (
        "epoch_time_ratio_keras_prune_over_tfmot",
        "epoch_time_ratio_keras_3_over_tf_keras_2_unpruned",
        "pruned_over_unpruned_keras_prune",
        "pruned_over_unpruned_tfmot",
    ):
        ratios = [r[key] for r in doc["seeds"].values()]
        doc[key] = {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios)}
    if not args.skip_mask_update:
        doc["mask_update"] = mask_update_ratios(args.repeats)
        for r in doc["mask_update"]:
            print(
                "mask update n=%d: keras-prune %.4fs tfmot %.4fs ratio %.3f (numpy-normalised %.3f)"
                % (
                    r["size"],
                    r["keras_prune_median_s"],
                    r["tfmot_median_s"],
                    r["ratio_keras_prune_over_tfmot"],
                    r["ratio_normalised_by_numpy"],
                )
            )
    doc["machine"]["load_average_at_end"] = os.getloadavg()
    with open(os.path.join(RESULTS, "tfmot_compare.json"), "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
    print("wrote", os.path.join(RESULTS, "tfmot_compare.json"))
    return 0


if __name__ == "__main__":
    sys.exit(main())

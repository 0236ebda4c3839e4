#!/usr/bin/env python
"""Training-time overhead of pruning: pruned vs unpruned seed CNN, per backend.

    python benchmarks/train_overhead.py [--epochs 10] [--steps 100] [--backends tensorflow,jax,torch]
                                        [--structure weights|channels]

For each backend (one child process each, KERAS_BACKEND set): the seed CNN
(Conv32-Pool-Conv64-Pool-Dense256-Dense10, Adam, categorical cross-entropy)
on the embedded data (`keras_prune.compare.datasets.load_dataset("mnist10k")`, the
first 80 % of its training images, as validation_split=0.2 leaves them),
batch 250, trained twice from the same initial weights: unpruned, and wrapped
by `prune_low_magnitude` with PolynomialDecay(0 -> 0.875, frequency 100,
begin_step = 20 % of the run, end_step = the run's last step) and
`UpdatePruningStep` (`--structure channels`: `prune_channels` with
PolynomialDecay(0 -> 0.5 of each group's channels), the same steps). Keras's default compilation per backend (on a CPU: a
plain tf.function on TensorFlow, jax.jit, eager torch).

The two models alternate epoch by epoch in the same process (`fit(epochs=1)`
each, one warm-up epoch each first, then `--epochs` timed pairs; the order
within a pair alternates too), so machine load hits both alike. An epoch is
timed from `on_epoch_begin` to `on_epoch_end` (training batches only, no
validation). Reports per-epoch ratios pruned/dense: median, min, max, and the
epochs that contained a mask update.

Epoch pairs scatter by +-25 % on a shared 2-core VM, more than the 3 % to
resolve. So, after the epochs, `--steps` pairs of single `train_on_batch`
calls on one batch follow, alternating the order step by step: a finer
measure of the same training step, still inside the schedule's pruning
range (end_step covers them), so their mask update every 100 steps counts.

Writes benchmarks/results/train_overhead.json
(`--structure channels`: train_overhead_channels.json).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))  # the checkout, not an installed copy

import _common  # noqa: E402

BATCH = 250
TARGETS = {"weights": 0.875, "channels": 0.5}
OUT = os.path.join(HERE, "results", "train_overhead.json")
OUT_CHANNELS = os.path.join(HERE, "results", "train_overhead_channels.json")


def child(epochs, steps, seed, structure):
    import keras
    import numpy as np

    import keras_prune
    from keras_prune.compare.datasets import load_dataset
    from keras_prune.compare.experiment import seed_model
    from keras_prune.structured.channel_mask import channel_masks

    class EpochTimer(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.times = []

        def on_epoch_begin(self, epoch, logs=None):
            self._start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.times.append(time.perf_counter() - self._start)

    keras.utils.set_random_seed(seed)
    (x, y), _ = load_dataset("mnist10k")
    n_train = int(len(x) * 0.8)
    x, y = x[:n_train], keras.utils.to_categorical(y[:n_train], 10)
    steps_per_epoch = -(-n_train // BATCH)
    end_step = steps_per_epoch * (epochs + 1) + steps
    begin_step = int(0.2 * end_step)

    dense = seed_model()
    base = seed_model()
    base.set_weights(dense.get_weights())
    schedule = keras_prune.PolynomialDecay(
        0.0, TARGETS[structure], begin_step, end_step, frequency=100
    )
    if structure == "channels":
        pruned = keras_prune.prune_channels(base, pruning_schedule=schedule)
    else:
        pruned = keras_prune.prune_low_magnitude(base, pruning_schedule=schedule)
    models = {"dense": (dense, []), "pruned": (pruned, [keras_prune.UpdatePruningStep()])}
    timers = {}
    for name, (model, callbacks) in models.items():
        model.compile(
            optimizer=keras.optimizers.Adam(), loss="categorical_crossentropy", metrics=["accuracy"]
        )
        timers[name] = EpochTimer()
        callbacks.append(timers[name])

    def epoch(name, index):
        model, callbacks = models[name]
        model.fit(
            x,
            y,
            batch_size=BATCH,
            epochs=index + 1,
            initial_epoch=index,
            callbacks=callbacks,
            verbose=0,
            shuffle=True,
        )

    for name in models:  # warm-up: compilation and first-epoch effects
        epoch(name, 0)
    for i in range(1, epochs + 1):
        order = ("dense", "pruned") if i % 2 else ("pruned", "dense")
        for name in order:
            epoch(name, i)
    step_t = {"dense": [], "pruned": []}
    for i in range(steps):
        for name in ("dense", "pruned") if i % 2 else ("pruned", "dense"):
            start = time.perf_counter()
            models[name][0].train_on_batch(x[:BATCH], y[:BATCH])
            step_t[name].append(time.perf_counter() - start)
    step_ratios = [p / d for p, d in zip(step_t["pruned"], step_t["dense"])]
    dense_t, pruned_t = timers["dense"].times[1:], timers["pruned"].times[1:]
    ratios = [p / d for p, d in zip(pruned_t, dense_t)]
    # Epoch i (0-based) covers steps i*spe+1 .. (i+1)*spe; updates every 100 steps from begin.
    updates = [
        i
        for i in range(1, epochs + 1)
        if any(
            (s - begin_step) % 100 == 0 and s >= begin_step
            for s in range(i * steps_per_epoch + 1, (i + 1) * steps_per_epoch + 1)
        )
    ]
    sparsity = {
        path: s
        for layer in pruned.layers
        if hasattr(layer, "mask_sparsity")
        for path, s in layer.mask_sparsity()
    }
    for mask in channel_masks(pruned):
        kept = keras.ops.convert_to_numpy(mask.mask.value)
        sparsity[mask.name] = float(1.0 - kept.mean())
    # Where the pruned step's extra time goes: the mask updates (every 100
    # steps) timed alone, compiled as in the wrapper, for the model's kernels.
    from mask_update import make_update

    update_s = {}
    for layer in pruned.layers:
        for weight, mask, _ in getattr(layer, "pruning_vars", []):
            run, *_ = make_update(
                keras.ops.convert_to_numpy(weight.value), keras.ops.convert_to_numpy(mask.value)
            )
            run()
            update_s[weight.path] = _common.stats([_common.timed(run) for _ in range(5)])[
                "median_s"
            ]
    dense_step = _common.stats(dense_t)["median_s"] / steps_per_epoch
    extra_step = (
        _common.stats(pruned_t)["median_s"] - _common.stats(dense_t)["median_s"]
    ) / steps_per_epoch
    return {
        "backend": keras.backend.backend(),
        "structure": structure,
        "dense_step_s": dense_step,
        "pruned_extra_per_step_s": extra_step,
        "mask_update_s_per_weight": update_s,
        "mask_updates_per_step_amortised_s": sum(update_s.values()) / 100,
        "keras": keras.__version__,
        "steps_per_epoch": steps_per_epoch,
        "begin_step": begin_step,
        "end_step": end_step,
        "dense_epoch": _common.stats(dense_t),
        "pruned_epoch": _common.stats(pruned_t),
        "ratio_per_epoch": {
            "median": float(np.median(ratios)),
            "min": min(ratios),
            "max": max(ratios),
            "all": ratios,
        },
        "ratio_of_medians": _common.ratio(_common.stats(pruned_t), _common.stats(dense_t)),
        "dense_step": _common.stats(step_t["dense"]),
        "pruned_step": _common.stats(step_t["pruned"]),
        "ratio_per_step": {
            "median": float(np.median(step_ratios)),
            "min": min(step_ratios),
            "max": max(step_ratios),
        },
        "ratio_of_step_medians": _common.ratio(
            _common.stats(step_t["pruned"]), _common.stats(step_t["dense"])
        ),
        "epochs_with_mask_update": updates,
        "mask_sparsity_at_end": sparsity,
        "jit_compile": str(pruned.jit_compile),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--epochs", type=int, default=10, help="timed epoch pairs (default 10)")
    ap.add_argument(
        "--steps", type=int, default=100, help="single-step pairs after the epochs (default 100)"
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--backends", default="tensorflow,jax,torch")
    ap.add_argument(
        "--structure",
        choices=("weights", "channels"),
        default="weights",
        help="prune_low_magnitude to 87.5 %% (default) or prune_channels to 50 %% of channels",
    )
    ap.add_argument("--out", help="default: results/train_overhead[_channels].json")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.epochs < 3 or args.steps < 1:
        ap.error("--epochs must be >= 3 and --steps >= 1")
    if args.child:
        print(json.dumps(child(args.epochs, args.steps, args.seed, args.structure)))
        return 0
    doc = {"benchmark": "train_overhead", "machine": _common.machine_info(), "backends": {}}
    for backend in args.backends.split(","):
        env = dict(
            os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="-1"
        )
        cmd = [
            sys.executable,
            __file__,
            "--child",
            "--epochs",
            str(args.epochs),
            "--steps",
            str(args.steps),
            "--seed",
            str(args.seed),
            "--structure",
            args.structure,
        ]
        out = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if out.returncode:
            raise RuntimeError(f"{backend} failed:\n{out.stderr[-3000:]}")
        r = json.loads(out.stdout.strip().splitlines()[-1])
        doc["backends"][backend] = r
        print(
            "%-10s dense %.3fs  pruned %.3fs (median epoch)  ratio median %.3f (min %.3f, max %.3f);"
            "  per step: ratio of medians %.3f, paired median %.3f"
            % (
                backend,
                r["dense_epoch"]["median_s"],
                r["pruned_epoch"]["median_s"],
                r["ratio_per_epoch"]["median"],
                r["ratio_per_epoch"]["min"],
                r["ratio_per_epoch"]["max"],
                r["ratio_of_step_medians"],
                r["ratio_per_step"]["median"],
            ),
            flush=True,
        )
    doc["machine"]["load_average_at_end"] = os.getloadavg()
    out = args.out or (OUT_CHANNELS if args.structure == "channels" else OUT)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
    print("wrote", out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

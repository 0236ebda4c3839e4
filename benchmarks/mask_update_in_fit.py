#!/usr/bin/env python
"""What a mask update costs inside `model.fit`, against numpy.partition of the same weight.

    python benchmarks/mask_update_in_fit.py [--backends tensorflow,jax,torch]
        [--sizes 1024,2048,4096] [--groups 12] [--selections callback,radix]
        [--out benchmarks/results/mask_update_in_fit.json]

For each backend (one child process each) and each size n, one pruned
`Dense(n, use_bias=False)` on n inputs (an n x n float32 kernel: 1 M, 4 M,
16.8 M entries) trains with `model.fit` (SGD, batch 8, MSE, Keras's default
compilation for the backend) under a schedule with a period of 4 steps:
step 4i+1 prunes to sparsity 0 (the mask back to all ones), 4i+2 does not
prune, 4i+3 prunes to 0.875 from the dense weight (as the first pruning step
of a real run does), 4i+4 does not prune. A callback times every training
batch (`on_train_batch_begin` to `on_train_batch_end`, with the loss read
back so asynchronous backends have finished the step). The mask update's
cost is the step at 4i+3 minus the mean of its neighbours 4i+2 and 4i+4; in
the same callback, right after step 4i+3, numpy computes the same mask the
way the numpy reference of `mask_update.py` does (abs, `numpy.partition` at
the same k, `>=`) on the same weight. Reported per size: medians and
ranges of both over the groups (after warm-up), and their ratio.

`--selections callback,radix` runs each size once per way a traced
TensorFlow or JAX step can select on a CPU, alternating: numpy through a
host callback (the default) and the radix select in XLA (what an
accelerator or a TensorFlow step with `jit_compile=True` runs). Torch
selects eagerly with numpy either way.

The weight is random normal, fixed by the seed: with SGD's tiny updates the
mask is the same at every group.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))  # the checkout, not an installed copy

import _common  # noqa: E402

SPARSITY = 0.875
BATCH = 8
WARMUP_GROUPS = 2
OUT = os.path.join(HERE, "results", "mask_update_in_fit.json")


def child(size: int, groups: int, selection: str) -> dict:
    import keras
    import numpy as np
    from keras import ops

    import keras_prune
    from keras_prune import _backend

    if selection == "radix":
        _backend.host_callable = lambda x: False

    class EveryOtherStep(keras_prune.PruningSchedule):
        """Step 4i+1: sparsity 0 (mask reset); 4i+3: `SPARSITY`; even steps: no pruning."""

        def __call__(self, step):
            phase = ops.mod(step, 4)
            should_prune = ops.logical_or(ops.equal(phase, 1), ops.equal(phase, 3))
            return should_prune, ops.where(ops.equal(phase, 3), SPARSITY, 0.0)

        def get_config(self):
            return {}

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((size,)), keras.layers.Dense(size, use_bias=False)])
    pruned = keras_prune.prune_low_magnitude(model, EveryOtherStep())
    pruned.compile(optimizer=keras.optimizers.SGD(1e-6), loss="mse")
    kernel = model.layers[0].kernel
    weight = ops.convert_to_numpy(kernel)
    n = weight.size
    k = max(round(n * (1 - SPARSITY)), 1)

    def numpy_mask():
        magnitudes = np.abs(weight)
        threshold = np.partition(magnitudes.ravel(), n - k)[n - k]
        return magnitudes >= threshold

    class Timer(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.steps: list[float] = []
            self.numpy: list[float] = []

        def on_train_batch_begin(self, batch, logs=None):
            self.start = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            float(ops.convert_to_numpy(logs["loss"]))  # the step has finished
            self.steps.append(time.perf_counter() - self.start)
            if len(self.steps) % 4 == 3:  # right after a pruning step to SPARSITY
                self.numpy.append(_common.timed(numpy_mask))

    steps = 4 * (groups + WARMUP_GROUPS)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((steps * BATCH, size), dtype=np.float32)
    y = rng.standard_normal((steps * BATCH, size), dtype=np.float32)
    timer = Timer()
    pruned.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0, callbacks=[timer])

    (wrapper,) = keras_prune.pruned_layers(pruned)
    mask = ops.convert_to_numpy(wrapper.pruning_vars[0][1])
    # The last step (4i+4) kept the 4i+3 mask: it must be numpy's (ties aside, none here).
    agree = float(np.mean((mask > 0) == numpy_mask()))
    t = timer.steps[4 * WARMUP_GROUPS :]
    updates = [t[4 * g + 2] - (t[4 * g + 1] + t[4 * g + 3]) / 2 for g in range(groups)]
    plain = [(t[4 * g + 1] + t[4 * g + 3]) / 2 for g in range(groups)]
    numpy_times = timer.numpy[WARMUP_GROUPS:]
    ratios = [u / r for u, r in zip(updates, numpy_times)]
    return {
        "size": n,
        "selection": selection,
        "shape": [size, size],
        "mask_update_in_fit": _common.stats(updates),
        "numpy_partition": _common.stats(numpy_times),
        "step_without_pruning": _common.stats(plain),
        "ratio_of_medians": _common.ratio(_common.stats(updates), _common.stats(numpy_times)),
        "ratio_per_group": _common.stats(ratios),
        "mask_agrees_with_numpy": agree,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--backends", default="tensorflow,jax,torch")
    parser.add_argument("--sizes", default="1024,2048,4096")
    parser.add_argument("--groups", type=int, default=12)
    parser.add_argument("--selections", default="callback")
    parser.add_argument("--out", default=OUT)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(int(args.child), args.groups, args.selections)))
        return
    results = {"machine": _common.machine_info(), "command": " ".join(sys.argv), "runs": {}}
    for backend in args.backends.split(","):
        for size, selection in itertools.product(args.sizes.split(","), args.selections.split(",")):
            env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3")
            cmd = [sys.executable, __file__, "--child", size, "--groups", str(args.groups)]
            cmd += ["--selections", selection]
            done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
            if done.returncode:
                sys.exit(f"{backend} {size}: {done.stderr[-3000:]}")
            run = json.loads(done.stdout.strip().splitlines()[-1])
            results["runs"].setdefault(backend, []).append(run)
            update, ref = run["mask_update_in_fit"], run["numpy_partition"]
            print(
                f"{backend:<10} {selection:<8} {run['size']:>9,} entries: update in fit {update['median_s'] * 1e3:7.1f} ms "
                f"({update['min_s'] * 1e3:.1f}-{update['max_s'] * 1e3:.1f}), numpy.partition "
                f"{ref['median_s'] * 1e3:6.1f} ms ({ref['min_s'] * 1e3:.1f}-{ref['max_s'] * 1e3:.1f}), "
                f"ratio {run['ratio_of_medians']:.2f}x (per group {run['ratio_per_group']['min_s']:.2f}-"
                f"{run['ratio_per_group']['max_s']:.2f}), step without pruning "
                f"{run['step_without_pruning']['median_s'] * 1e3:.1f} ms, mask == numpy "
                f"{run['mask_agrees_with_numpy']:.6f}",
                flush=True,
            )
    _common.write_results(args.out, results)


if __name__ == "__main__":
    main()

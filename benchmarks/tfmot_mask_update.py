#!/usr/bin/env python
"""Time tfmot 0.8.1's mask update at a pruning step (reference numbers).

Runs inside the tfmot reference venv (see ``tfmot_env.py``):

    benchmarks/.venv-tfmot/bin/python benchmarks/tfmot_mask_update.py \
        [--out benchmarks/results/tfmot_mask_update.json] [--repeats 7]

What is timed is exactly what ``PruneLowMagnitude`` runs on a pruning step:
``pruning_impl.Pruning.conditional_mask_update()`` (schedule -> tf.cond ->
``_update_mask``: abs, full ``top_k`` over all weights, threshold gather,
``>=`` + one_hot mask, assign mask and threshold) inside a ``tf.function``,
on one float32 weight variable, at sparsity 0.875 (ConstantSparsity with
frequency 1, so every call prunes). For comparison the script times
``numpy.partition`` of ``abs(w)`` at the same k, on the same data.

Reports median/min/max seconds over ``--repeats`` timed calls after
``--warmup`` untimed calls (the first also traces the tf.function).
"""

import argparse
import json
import os
import platform
import statistics
import sys
import time

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "-1")

from importlib.metadata import version  # noqa: E402

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tensorflow_model_optimization as tfmot  # noqa: E402
from tensorflow_model_optimization.python.core.sparsity.keras import (  # noqa: E402
    pruning_impl,
)

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_OUT = os.path.join(HERE, "results", "tfmot_mask_update.json")
SIZES = [(1024, 1024), (2048, 2048), (4096, 4096)]
SPARSITY = 0.875


def machine_info():
    cpu = None
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "cpu_model": cpu or platform.processor(),
        "cpu_count": os.cpu_count(),
        "sched_affinity": len(os.sched_getaffinity(0))
        if hasattr(os, "sched_getaffinity")
        else None,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "tf_keras": version("tf-keras"),
        "tensorflow_model_optimization": version("tensorflow-model-optimization"),
        "numpy": np.__version__,
        "tf_intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),
        "tf_inter_op_threads": tf.config.threading.get_inter_op_parallelism_threads(),
    }


def stats(ts):
    return {
        "median_s": statistics.median(ts),
        "min_s": min(ts),
        "max_s": max(ts),
        "repeats": len(ts),
        "all_s": ts,
    }


def time_calls(fn, warmup, repeats):
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return ts


def bench_one(shape, warmup, repeats, seed):
    rng = np.random.default_rng(seed)
    w0 = rng.standard_normal(shape, dtype=np.float32)
    weight = tf.Variable(w0, name="kernel")
    mask = tf.Variable(tf.ones(shape, tf.float32), trainable=False, name="mask")
    threshold = tf.Variable(0.0, trainable=False, name="threshold")
    step = tf.Variable(1, dtype=tf.int64, trainable=False)
    schedule = tfmot.sparsity.keras.ConstantSparsity(SPARSITY, 0, frequency=1)
    pruning = pruning_impl.Pruning(
        training_step_fn=lambda: step,
        pruning_vars=[(weight, mask, threshold)],
        pruning_schedule=schedule,
        block_size=(1, 1),
        block_pooling_type="AVG",
    )

    @tf.function
    def update():
        pruning.conditional_mask_update()

    def run_tf():
        update()
        # Reading a result forces completion before the clock stops.
        threshold.numpy()

    tf_ts = time_calls(run_tf, warmup, repeats)

    n = w0.size
    k = int(max(round(n * (1 - SPARSITY)), 1))
    kept = float(mask.numpy().sum())

    def run_np():
        a = np.abs(w0).ravel()
        part = np.partition(a, n - k)
        thr = part[n - k]
        return np.abs(w0) >= thr

    np_ts = time_calls(run_np, warmup, repeats)
    np_kept = int(run_np().sum())

    r = {
        "shape": list(shape),
        "size": n,
        "k_kept": k,
        "tfmot_mask_kept": kept,
        "numpy_mask_kept": np_kept,
        "tfmot_conditional_mask_update": stats(tf_ts),
        "numpy_partition_mask": stats(np_ts),
    }
    r["ratio_tfmot_over_numpy_median"] = (
        r["tfmot_conditional_mask_update"]["median_s"] / r["numpy_partition_mask"]["median_s"]
    )
    return r


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=DEFAULT_OUT)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--sizes", default=",".join("%dx%d" % s for s in SIZES), help="comma-separated HxW list"
    )
    args = ap.parse_args()
    if args.repeats < 5:
        print("warning: fewer than 5 repeats", file=sys.stderr)
    sizes = [tuple(int(x) for x in s.split("x")) for s in args.sizes.split(",")]

    results = []
    for shape in sizes:
        r = bench_one(shape, args.warmup, args.repeats, args.seed)
        print(
            "%-10s tfmot median %.4fs (min %.4f max %.4f)  numpy.partition "
            "median %.4fs  ratio %.2fx"
            % (
                "%dx%d" % shape,
                r["tfmot_conditional_mask_update"]["median_s"],
                r["tfmot_conditional_mask_update"]["min_s"],
                r["tfmot_conditional_mask_update"]["max_s"],
                r["numpy_partition_mask"]["median_s"],
                r["ratio_tfmot_over_numpy_median"],
            ),
            flush=True,
        )
        results.append(r)

    doc = {
        "benchmark": "tfmot_mask_update",
        "what": "pruning_impl.Pruning.conditional_mask_update() in tf.function "
        "(full top_k over |w|), float32, sparsity %.3f; numpy: "
        "np.partition(|w|) + >= threshold mask" % SPARSITY,
        "warmup": args.warmup,
        "machine": machine_info(),
        "results": results,
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
    print("wrote " + args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

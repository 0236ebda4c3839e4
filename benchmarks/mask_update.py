#!/usr/bin/env python
"""Time keras-prune's mask update against numpy.partition, per backend.

    python benchmarks/mask_update.py [--repeats 7] [--sizes 1024x1024,2048x2048,4096x4096]

For each backend (one child process each, KERAS_BACKEND set) and each float32
weight size, times the mask update exactly as `PruneLowMagnitude` runs it on
a pruning step (weight * mask -> `masks.compute_mask` at sparsity 0.875 ->
assign mask and threshold), compiled as Keras compiles the train step: on
TensorFlow both with XLA (`tf.function(jit_compile=True)`, Keras's choice
with jit_compile=True or on GPU) and as a plain graph ("tensorflow-graph",
`tf.function`, Keras's default on CPU, inside which `compute_mask` runs as
its own XLA program), `jax.jit` on JAX, eager on PyTorch (Keras's default
for torch, where numpy computes the mask of the CPU tensor), and
eager torch again with THP_MEM_ALLOC_ENABLE=1 ("torch-thp": torch's CPU
allocator on transparent huge pages, which numpy uses by itself). In the
same process and interleaved with it, numpy's reference: abs,
`numpy.partition` at the same k, `>=` mask (as in `tfmot_mask_update.py`).
Each measure is a median of `--repeats` calls after warm-up, with min and
max. The mask is checked against numpy's.

Peak memory: a second child per (backend, size) compiles and warms the
update, resets the peak RSS (/proc/self/clear_refs), runs one update and
reports VmHWM - VmRSS before it, over the weight's size. (tracemalloc does not
see the TF/XLA/torch allocators; RSS does, up to allocator caching.)

Writes benchmarks/results/mask_update.json and benchmarks/results/mask_update.png
(time against weight count: keras-prune per backend, tfmot 0.8.1 from
benchmarks/results/tfmot_mask_update.json, numpy.partition).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))  # the checkout, not an installed copy

import _common  # noqa: E402

SPARSITY = 0.875
BACKENDS = ("tensorflow", "tensorflow-graph", "jax", "torch", "torch-thp")
OUT = os.path.join(HERE, "results", "mask_update.json")
LABELS = {
    "tensorflow": "tensorflow, XLA",
    "tensorflow-graph": "tensorflow, graph: Keras CPU default",
    "torch": "torch, eager",
    "torch-thp": "torch, eager, THP_MEM_ALLOC_ENABLE=1",
}


def update(w, m):
    """weight * mask -> new mask and threshold, as `PruneLowMagnitude` computes them."""
    from keras import ops

    from keras_prune import masks

    return masks.compute_mask(ops.stop_gradient(ops.multiply(w, m)), SPARSITY)


def make_update(weight_np, mask_np):
    """The compiled mask update of one weight, as the wrapper runs it.

    Returns (run, read, reset): one update, the mask as numpy, and putting
    `mask_np` back (so that every timed update sees the same data).
    """
    import keras
    from keras import ops

    backend = keras.backend.backend()
    weight = keras.Variable(weight_np)
    mask = keras.Variable(mask_np, trainable=False)
    threshold = keras.Variable(0.0, trainable=False)

    if backend == "jax":
        import jax

        # Keras's JAX train step donates the model state (masks included) to
        # the step, so XLA may write the new mask over the old one.
        jitted = jax.jit(update, donate_argnums=1)

        def run():
            new_mask, new_threshold = jitted(weight.value, mask.value)
            mask.assign(new_mask)
            threshold.assign(new_threshold)
            new_threshold.block_until_ready()

    elif backend == "tensorflow":
        import tensorflow as tf

        # Keras compiles the TF train step with XLA only when asked
        # (jit_compile=True) or on GPU; on CPU "auto" gives a plain graph.
        @tf.function(jit_compile=os.environ.get("KP_TF_XLA", "1") == "1")
        def step():
            new_mask, new_threshold = update(weight.value, mask.value)
            mask.assign(new_mask)
            threshold.assign(new_threshold)

        def run():
            step()
            threshold.numpy()

    else:

        def run():
            new_mask, new_threshold = update(weight.value, mask.value)
            mask.assign(new_mask)
            threshold.assign(new_threshold)

    return run, lambda: ops.convert_to_numpy(mask.value), lambda: mask.assign(mask_np)


def child_time(shape, repeats, warmup):
    import numpy as np

    w = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
    n = w.size
    k = max(round(n * (1 - SPARSITY)), 1)
    # Every update starts from an all-ones mask, as the first pruning step
    # does: keras-prune and numpy select in the same dense data. (A later
    # step sees the pruned weights as exact zeros, one long run of ties.)
    run, read, reset = make_update(w, np.ones(shape, np.float32))

    def run_numpy():
        a = np.abs(w)
        threshold = np.partition(a.ravel(), n - k)[n - k]
        return a >= threshold

    for _ in range(warmup):
        reset()
        run()
        expected = run_numpy()
    got = read()
    kp, ref = [], []
    for _ in range(repeats):
        reset()
        kp.append(_common.timed(run))
        ref.append(_common.timed(run_numpy))
    return {
        "shape": list(shape),
        "size": n,
        "k": k,
        "mask_kept": int(got.sum()),
        "same_mask_as_numpy": bool((got == expected).all()),
        "keras_prune_update": _common.stats(kp),
        "numpy_partition_mask": _common.stats(ref),
        "ratio_over_numpy_median": _common.ratio(_common.stats(kp), _common.stats(ref)),
    }


def child_memory(shape):
    import numpy as np

    w = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
    run, _, reset = make_update(w, np.ones(shape, np.float32))
    run()
    run()
    reset()
    before = _common.vm_kib("VmRSS")
    _common.reset_peak_rss()
    run()
    peak = _common.vm_kib("VmHWM")
    extra = (peak - before) * 1024
    result = {
        "peak_extra_bytes": extra,
        "weight_bytes": w.nbytes,
        "peak_over_weight": extra / w.nbytes,
    }
    if os.environ["KERAS_BACKEND"] == "jax":
        # XLA's own buffer plan for the step, free of allocator caching:
        # temporaries plus the new mask where it cannot reuse the donated one.
        import jax

        plan = (
            jax.jit(update, donate_argnums=1).lower(w, np.ones_like(w)).compile().memory_analysis()
        )
        extra = plan.temp_size_in_bytes + plan.output_size_in_bytes - plan.alias_size_in_bytes
        result["xla_plan_over_weight"] = extra / w.nbytes
    return result


def spawn(backend, mode, shape, args):
    # "tensorflow-graph": TF without XLA, Keras's default train step on CPU.
    # "torch-thp": torch's CPU allocator on transparent huge pages, as numpy's is.
    env = dict(
        os.environ,
        KERAS_BACKEND=backend.split("-")[0],
        TF_CPP_MIN_LOG_LEVEL="3",
        CUDA_VISIBLE_DEVICES="-1",
        KP_TF_XLA="0" if backend.endswith("-graph") else "1",
    )
    if backend == "torch-thp":
        env["THP_MEM_ALLOC_ENABLE"] = "1"
    cmd = [
        sys.executable,
        __file__,
        "--child",
        mode,
        "--shape",
        "%dx%d" % shape,
        "--repeats",
        str(args.repeats),
        "--warmup",
        str(args.warmup),
    ]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(f"{backend} {mode} {shape} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def plot(doc, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for backend, rows in doc["backends"].items():
        xs = [r["size"] for r in rows]
        ax.errorbar(
            xs,
            [r["keras_prune_update"]["median_s"] for r in rows],
            yerr=_spread(rows, "keras_prune_update"),
            marker="o",
            label=f"keras-prune ({LABELS.get(backend, backend)})",
            capsize=3,
        )
    rows = [r for rs in doc["backends"].values() for r in rs]
    sizes = sorted({r["size"] for r in rows})
    numpy = [
        min(r["numpy_partition_mask"]["median_s"] for r in rows if r["size"] == s) for s in sizes
    ]
    ax.plot(sizes, numpy, "k--", marker="s", label="numpy.partition (abs + partition + >=)")
    tfmot_path = os.path.join(HERE, "results", "tfmot_mask_update.json")
    if os.path.exists(tfmot_path):
        with open(tfmot_path) as f:
            tfmot = json.load(f)["results"]
        ax.plot(
            [r["size"] for r in tfmot],
            [r["tfmot_conditional_mask_update"]["median_s"] for r in tfmot],
            marker="^",
            color="tab:brown",
            label="tfmot 0.8.1 (tf.keras 2, top_k)",
        )
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("weights in the tensor (float32)")
    ax.set_ylabel("mask update time, s (median, bars min-max)")
    ax.set_title("Mask update at sparsity 0.875, 2 shared CPU cores")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def _spread(rows, key):
    med = [r[key]["median_s"] for r in rows]
    return [
        [m - r[key]["min_s"] for m, r in zip(med, rows)],
        [r[key]["max_s"] - m for m, r in zip(med, rows)],
    ]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--sizes", default="1024x1024,2048x2048,4096x4096")
    ap.add_argument("--backends", default=",".join(BACKENDS))
    ap.add_argument("--out", default=OUT)
    ap.add_argument(
        "--plot-only",
        action="store_true",
        help="redraw the PNG from --out (e.g. after tfmot_mask_update.py ran again)",
    )
    ap.add_argument("--child", choices=("time", "memory"), help=argparse.SUPPRESS)
    ap.add_argument("--shape", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.repeats < 1 or args.warmup < 1:
        ap.error("--repeats and --warmup must be >= 1")
    if args.child:
        shape = tuple(int(x) for x in args.shape.split("x"))
        result = (
            child_time(shape, args.repeats, args.warmup)
            if args.child == "time"
            else child_memory(shape)
        )
        print(json.dumps(result))
        return 0
    if args.plot_only:
        with open(args.out) as f:
            plot(json.load(f), os.path.splitext(args.out)[0] + ".png")
        return 0
    shapes = [tuple(int(x) for x in s.split("x")) for s in args.sizes.split(",")]
    doc = {
        "benchmark": "mask_update",
        "sparsity": SPARSITY,
        "machine": _common.machine_info(),
        "backends": {},
    }
    for backend in args.backends.split(","):
        rows = []
        for shape in shapes:
            row = spawn(backend, "time", shape, args)
            row["memory"] = spawn(backend, "memory", shape, args)
            print(
                "%-10s %-9s keras-prune %.4fs (%.4f-%.4f)  numpy %.4fs  ratio %.2fx  "
                "same mask %s  peak %.2fx weight"
                % (
                    backend,
                    "%dx%d" % shape,
                    row["keras_prune_update"]["median_s"],
                    row["keras_prune_update"]["min_s"],
                    row["keras_prune_update"]["max_s"],
                    row["numpy_partition_mask"]["median_s"],
                    row["ratio_over_numpy_median"],
                    row["same_mask_as_numpy"],
                    row["memory"]["peak_over_weight"],
                ),
                flush=True,
            )
            rows.append(row)
        doc["backends"][backend] = rows
    doc["machine"]["load_average_at_end"] = os.getloadavg()
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
    plot(doc, os.path.splitext(args.out)[0] + ".png")
    print("wrote", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""Inference latency of dense against sparse .tflite files (LiteRT) and .onnx files (ONNX Runtime).

    KERAS_BACKEND=tensorflow python benchmarks/runtime_latency.py [--repeats 200]
        [--out benchmarks/results/runtime_latency.json]

Models, each written dense and pruned by `keras_prune.export`:

* the seed CNN, every kernel pruned to 87.5 % by magnitude (one-shot: the
  latency of a file depends on where its zeros are, not on training);
* MobileNetV2 (alpha 1.0, `weights=None`) with tf.keras 2's stem
  (`ZeroPadding2D(1)` + VALID stride-2 convolution, which Keras 3's
  MobileNetV2 replaced by SAME padding and which
  `PruneForLatencyOnXNNPack` requires), its 1x1 convolutions, the layers
  the policy allows, pruned to 75 % and to 90 %. Input 225x225, not 224:
  MobileNetV2 pads before each stride-2 depthwise convolution by
  `correct_pad`, which is symmetric, as XNNPack's sparse path needs, only
  on odd sizes (225, 113, 57, 29, 15).

Each file runs at batch 1 on one random input: LiteRT's default
interpreter (XNNPack delegate) with 1 and 2 threads, ONNX Runtime (CPU,
1 and 2 intra-op threads). Per setting, the dense and the pruned file
alternate call by call after a warm-up; reported are the medians, ranges
and the ratio dense/pruned (> 1: the pruned file is faster).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))  # the checkout, not an installed copy

import _common  # noqa: E402

OUT = os.path.join(HERE, "results", "runtime_latency.json")
WARMUP = 20


def mobilenet_v2_with_padded_stem():
    import keras

    base = keras.applications.MobileNetV2(weights=None, input_shape=(225, 225, 3))

    def call_function(layer, *args, **kwargs):
        if layer.name != "Conv1":
            return layer(*args, **kwargs)
        padded = keras.layers.ZeroPadding2D(1, name="Conv1_pad")(args[0])
        conv = keras.layers.Conv2D(
            layer.filters, 3, strides=2, padding="valid", use_bias=False, name="Conv1"
        )
        return conv(padded)

    model = keras.models.clone_model(base, call_function=call_function)
    return model


def pruned_copy(model, sparsity, allow):
    """`model` with the kernels of the layers `allow` picks zeroed by magnitude."""
    import keras

    import keras_prune

    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    for layer in copy.layers:
        if allow(layer):
            mask = keras_prune.magnitude_mask(layer.kernel, sparsity)
            layer.kernel.assign(layer.kernel * mask)
    return copy


def litert_runner(path, threads, x):
    from ai_edge_litert.interpreter import Interpreter

    runner = Interpreter(model_path=path, num_threads=threads).get_signature_runner()
    (name,) = runner.get_input_details()
    return lambda: runner(**{name: x})


def onnx_runner(path, threads, x):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    session = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda: session.run(None, {name: x})


def interleaved(dense, pruned, repeats):
    return _common.interleaved({"dense": dense, "pruned": pruned}, repeats, WARMUP)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--out", default=OUT)
    args = parser.parse_args()

    import keras
    import numpy as np

    import keras_prune
    from keras_prune.compare.experiment import seed_model

    keras.utils.set_random_seed(0)
    seed = seed_model()
    mobilenet = mobilenet_v2_with_padded_stem()
    policy = keras_prune.PruneForLatencyOnXNNPack()
    policy.ensure_model_supports_pruning(mobilenet)  # the structure XNNPack's sparse path needs
    cases = [
        ("seed CNN", seed, 0.875, lambda layer: hasattr(layer, "kernel")),
        ("MobileNetV2", mobilenet, 0.75, policy.allow_pruning),
        ("MobileNetV2", mobilenet, 0.90, policy.allow_pruning),
    ]
    results = {"machine": _common.machine_info(), "command": " ".join(sys.argv), "runs": []}
    with tempfile.TemporaryDirectory() as tmp:
        for name, model, sparsity, allow in cases:
            pruned = pruned_copy(model, sparsity, allow)
            x = np.random.default_rng(0).random((1, *model.input_shape[1:]), dtype=np.float32)
            files = {}
            for side, m in (("dense", model), ("pruned", pruned)):
                for suffix in (".tflite", ".onnx"):
                    path = os.path.join(tmp, f"{side}{suffix}")
                    files[side, suffix] = (path, keras_prune.export(m, path))
            for suffix, runner in ((".tflite", litert_runner), (".onnx", onnx_runner)):
                for threads in (1, 2):
                    timing = interleaved(
                        runner(files["dense", suffix][0], threads, x),
                        runner(files["pruned", suffix][0], threads, x),
                        args.repeats,
                    )
                    run = {
                        "model": name,
                        "sparsity": sparsity,
                        "format": suffix,
                        "threads": threads,
                        "dense_bytes": files["dense", suffix][1],
                        "pruned_bytes": files["pruned", suffix][1],
                        **timing,
                        "speedup_dense_over_pruned": _common.ratio(
                            timing["dense"], timing["pruned"]
                        ),
                    }
                    results["runs"].append(run)
                    d, p = timing["dense"], timing["pruned"]
                    print(
                        f"{name:<12} {sparsity:.3f} {suffix:<7} {threads} thread(s): "
                        f"dense {d['median_s'] * 1e3:7.2f} ms ({d['min_s'] * 1e3:.2f}-"
                        f"{d['max_s'] * 1e3:.2f}), pruned {p['median_s'] * 1e3:7.2f} ms "
                        f"({p['min_s'] * 1e3:.2f}-{p['max_s'] * 1e3:.2f}), dense/pruned "
                        f"{run['speedup_dense_over_pruned']:.2f}x; files "
                        f"{run['dense_bytes']:,} / {run['pruned_bytes']:,} B",
                        flush=True,
                    )
    _common.write_results(args.out, results)


if __name__ == "__main__":
    main()

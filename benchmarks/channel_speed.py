#!/usr/bin/env python
"""Inference speed of models with half their channels removed (`keras_prune.shrink`) against the dense ones.

    KERAS_BACKEND=tensorflow python benchmarks/channel_speed.py [--models resnet50,seed,bert]
        [--sparsity 0.5] [--round-to 8] [--repeats 7] [--data-format channels_first] [--out FILE]

For each model: the dense model (random weights: latency does not depend
on their values) and `keras_prune.shrink(model, sparsity, round_to=...)`,
their parameters and FLOPs (2 x multiply-adds of Conv, Dense and depthwise
layers) and their latency, dense and shrunk alternating call by call after
a warm-up:

* Keras on the backend running the script: `model.predict(x)` on one batch
  and `model.predict_on_batch(x)`, at batch 1 and 32 for ResNet50
  (224x224) and at batch 250 for the seed CNN (the article's test batch),
  and for the seed CNN `model.predict` of a 10 000-image test set at batch
  250 (the time of the whole call); and for "bert" (KerasHub's
  `BertBackbone` at BERT-base's shape: 12 layers, width 768, 12 heads,
  FFN 3072, sequence 128, a 1000-token vocabulary; `shrink` removes half
  of each block's feed-forward units, its only channels that can go) at
  batch 1 and 8. `predict` pays a per-call cost (a data
  adapter and iterator, callbacks; about 70 ms on TensorFlow) that a smaller
  model does not remove, `predict_on_batch` much less;
* on the TensorFlow backend also the files `keras_prune.export` writes:
  `.tflite` run by LiteRT (XNNPack) and `.onnx` run by ONNX Runtime (CPU),
  with 1 and 2 threads, at batch 1. Each repeat times as many calls in a
  row as last about 10 ms and records the time per call: the seed CNN's
  call (20 to 80 us) is too short to time alone.

`--data-format channels_first` builds ResNet50 under
`keras.config.set_image_data_format("channels_first")` (images `(3, 224,
224)`), the layout torch's convolutions take without a transpose.

Each model runs in a process of its own. Reported: medians and ranges,
and dense/shrunk (> 1: the shrunk model is faster).
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

WARMUP = 3


def bert_base():
    import keras_hub

    return keras_hub.models.BertBackbone(
        vocabulary_size=1000, num_layers=12, num_heads=12, hidden_dim=768,
        intermediate_dim=3072, max_sequence_length=128,
    )  # fmt: skip


def inputs(model, batch, rng):
    """A random batch for `model`: images, or BERT's token ids, segments and padding mask."""
    import numpy as np

    if len(model.inputs) == 1:  # (a Sequential model has no `input` before it is called)
        return rng.random((batch, *model.input_shape[1:]), dtype=np.float32)
    return {
        "token_ids": rng.integers(0, 1000, (batch, 128)).astype("int32"),
        "segment_ids": np.zeros((batch, 128), "int32"),
        "padding_mask": np.ones((batch, 128), "int32"),
    }


def predictor(model, x, batch_size):
    return lambda: model.predict(x, batch_size=batch_size, verbose=0)


def on_batch(model, x):
    return lambda: model.predict_on_batch(x)


def interleaved(dense, small, repeats):
    return _common.interleaved({"dense": dense, "shrunk": small}, repeats, WARMUP)


def report(results, name, setting, timing):
    d, s = timing["dense"], timing["shrunk"]
    run = {"model": name, "setting": setting, **timing, "dense_over_shrunk": _common.ratio(d, s)}
    results["runs"].append(run)
    print(
        f"{name:<9} {setting:<34} dense {d['median_s'] * 1e3:8.2f} ms ({d['min_s'] * 1e3:.2f}-"
        f"{d['max_s'] * 1e3:.2f}), shrunk {s['median_s'] * 1e3:8.2f} ms ({s['min_s'] * 1e3:.2f}-"
        f"{s['max_s'] * 1e3:.2f}), dense/shrunk {run['dense_over_shrunk']:.2f}x",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--models", default="resnet50,seed")
    parser.add_argument("--sparsity", type=float, default=0.5)
    parser.add_argument("--round-to", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument(
        "--data-format", choices=("channels_last", "channels_first"), default="channels_last"
    )
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    models = args.models.split(",")
    if args.data_format == "channels_first" and models != ["resnet50"]:
        parser.error("--data-format channels_first builds ResNet50 only: --models resnet50")
    if len(models) > 1:
        _each_in_its_own_process(models, args)
        return

    import keras
    import numpy as np

    import keras_prune
    from keras_prune.compare.task import seed_model

    backend = keras.backend.backend()
    out = args.out or os.path.join(HERE, "results", f"channel_speed_{backend}.json")
    keras.config.set_image_data_format(args.data_format)
    keras.utils.set_random_seed(0)
    builders = {
        "resnet50": (lambda: keras.applications.ResNet50(weights=None), (1, 32)),
        "seed": (seed_model, (250,)),
        "bert": (bert_base, (1, 8)),
    }
    results = {"machine": _common.machine_info(), "command": " ".join(sys.argv), "backend": backend}
    results["data_format"] = args.data_format
    results["runs"], results["models"] = [], []
    rng = np.random.default_rng(0)
    for name in models:
        build, batches = builders[name]
        dense = build()
        small = keras_prune.shrink(dense, args.sparsity, round_to=args.round_to)
        sizes = {
            "model": name,
            "dense_params": dense.count_params(),
            "shrunk_params": small.count_params(),
        }
        line = f"{name}: params {sizes['dense_params']:,} -> {sizes['shrunk_params']:,} "
        line += f"({sizes['dense_params'] / sizes['shrunk_params']:.2f}x)"
        if name != "bert":  # `flops` counts Conv and Dense layers of the graph, not inside blocks
            sizes["dense_flops"] = keras_prune.flops(dense)
            sizes["shrunk_flops"] = keras_prune.flops(small)
            line += f", FLOPs {sizes['dense_flops'] / 1e9:.3f} G -> "
            line += f"{sizes['shrunk_flops'] / 1e9:.3f} G "
            line += f"({sizes['dense_flops'] / sizes['shrunk_flops']:.2f}x)"
        results["models"].append(sizes)
        print(line, flush=True)
        for batch in batches:
            x = inputs(dense, batch, rng)
            repeats = args.repeats if batch > 1 else 4 * args.repeats
            timing = interleaved(predictor(dense, x, batch), predictor(small, x, batch), repeats)
            report(results, name, f"keras predict, batch {batch}", timing)
            timing = interleaved(on_batch(dense, x), on_batch(small, x), repeats)
            report(results, name, f"keras predict_on_batch, batch {batch}", timing)
        if name == "seed":
            x = rng.random((10_000, *dense.input_shape[1:]), dtype=np.float32)
            timing = interleaved(predictor(dense, x, 250), predictor(small, x, 250), args.repeats)
            report(results, name, "keras predict, 10000 at batch 250", timing)
        if backend != "tensorflow" or name == "bert":  # runtimes: the CNNs
            continue
        from runtime_latency import litert_runner, onnx_runner

        x = rng.random((1, *dense.input_shape[1:]), dtype=np.float32)
        with tempfile.TemporaryDirectory() as tmp:
            for suffix, runner in ((".tflite", litert_runner), (".onnx", onnx_runner)):
                paths = {}
                for side, model in (("dense", dense), ("shrunk", small)):
                    paths[side] = os.path.join(tmp, side + suffix)
                    keras_prune.export(model, paths[side])
                runtime = "LiteRT" if suffix == ".tflite" else "ONNX Runtime"
                for threads in (1, 2):
                    sides = {side: runner(paths[side], threads, x) for side in paths}
                    calls = _common.calls_lasting(sides["dense"], 0.01)  # 10 ms a repeat
                    timing = _common.interleaved(sides, 6 * args.repeats, WARMUP, calls)
                    report(results, name, f"{runtime}, batch 1, {threads} thread(s)", timing)
    _common.write_results(out, results)


def _each_in_its_own_process(models: list[str], args: argparse.Namespace) -> None:
    """Runs the script once per model, in a new process each, and merges the results:
    after ResNet50 the seed CNN's microsecond LiteRT calls ran up to 1.9x
    slower with 2 threads in the same process than alone."""
    import json
    import subprocess

    merged: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in models:
            part = os.path.join(tmp, f"{name}.json")
            options = ["--sparsity", str(args.sparsity), "--round-to", str(args.round_to)]
            options += ["--repeats", str(args.repeats), "--out", part]
            subprocess.run([sys.executable, __file__, "--models", name, *options], check=True)
            with open(part) as f:
                result = json.load(f)
            if not merged:
                merged = {**result, "command": " ".join(sys.argv), "runs": [], "models": []}
            merged["runs"] += result["runs"]
            merged["models"] += result["models"]
    backend = merged["backend"]
    _common.write_results(
        args.out or os.path.join(HERE, "results", f"channel_speed_{backend}.json"), merged
    )


if __name__ == "__main__":
    main()

#!/usr/bin/env python
"""Training-step cost of pruning on real-sized models: ResNet50 and a BERT-base-shaped encoder.

    python benchmarks/large_model_overhead.py [--models resnet50,bert] [--steps 8]
        [--backends tensorflow,jax,torch] [--structure weights|channels] [--out FILE]

For each backend and model (one child process each, KERAS_BACKEND set):

* resnet50: `keras.applications.ResNet50(weights=None)`, 224x224x3, batch 4,
  1000 classes, SGD, sparse categorical cross-entropy; 25.6 M weights, the
  convolution and dense kernels pruned (25.5 M).
* bert: KerasHub's `BertBackbone` at BERT-base's shape (12 layers, width
  768, 12 heads, FFN 3072; vocabulary 30 522), sequence 128, batch 4, a
  2-class head on the pooled output; 109 M weights, the attention and FFN
  kernels and the embeddings pruned (prune_low_magnitude's defaults).

The dense model and its pruned copy (same initial weights,
`PolynomialDecay(0 -> 0.5, begin_step=0, end_step=100000, frequency=F)`,
`UpdatePruningStep`) each run one warm-up `train_on_batch` (compilation),
then `--steps` single steps alternate dense/pruned, the order swapping each
pair, on the same batch, in the same process, so machine load hits both
alike. With `frequency=F` every F-th pruned step updates the masks, so the
pruned steps split into mask-update steps and plain steps; the report gives
the median ratio of each to the dense step and the cost per step at
frequency 100 (tfmot's default), `(99 * plain + update) / 100 / dense`.
Keras's default compilation per backend on a CPU (tf.function, jax.jit,
eager torch). For BERT a third model joins the rotation: pruned with
`select=` leaving the `Embedding` layers dense, which shows what masking the
embedding table costs (keras_prune masks a plain `Embedding` row by row, the
looked-up rows only). `--structure channels` prunes the twin with
`prune_channels` and the same schedule, 50 % of each group's channels (in
BERT each block's feed-forward units, the only channels of a KerasHub
block that can go); for ResNet50 a third model joins the rotation, pruned
with a `ChannelMask` after every chain of layers as before
`NormalizationMask` ("channels_masks_after"), which shows what masking
the BatchNormalizations' scale and shift saves. Results: BENCHMARKS.md.

Writes benchmarks/results/large_model_overhead.json
(`--structure channels`: large_model_overhead_channels.json; `--out` names
another file, e.g. for another machine).
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

BATCH = 4
OUT = os.path.join(HERE, "results", "large_model_overhead.json")
OUT_CHANNELS = os.path.join(HERE, "results", "large_model_overhead_channels.json")


def build(name: str):
    """(model, x, y, loss) for `name`."""
    import keras
    import numpy as np

    rng = np.random.default_rng(0)
    if name == "resnet50":
        model = keras.applications.ResNet50(weights=None)
        x = rng.uniform(0, 1, (BATCH, 224, 224, 3)).astype("float32")
        return model, x, rng.integers(0, 1000, BATCH), "sparse_categorical_crossentropy"
    import keras_hub

    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=30522, num_layers=12, num_heads=12, hidden_dim=768,
        intermediate_dim=3072, max_sequence_length=128,
    )  # fmt: skip
    model = keras_hub.models.BertTextClassifier(backbone, num_classes=2, preprocessor=None)
    x = {
        "token_ids": rng.integers(0, 30522, (BATCH, 128)).astype("int32"),
        "segment_ids": np.zeros((BATCH, 128), "int32"),
        "padding_mask": np.ones((BATCH, 128), "int32"),
    }
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    return model, x, rng.integers(0, 2, BATCH), loss


def child(name: str, steps: int, frequency: int, structure: str) -> dict:
    import warnings

    import keras

    import keras_prune

    keras.utils.set_random_seed(0)
    dense, x, y, loss = build(name)
    schedule = keras_prune.PolynomialDecay(0.0, 0.5, 0, 100_000, frequency=frequency)
    arms = {"dense": dense}
    # BERT also without its embeddings pruned: a masked embedding table costs
    # a full `table * mask` product (and a dense gradient) every step.
    if structure == "channels":
        selects = {"channels": None}
        if name == "resnet50":  # the earlier placement, side by side (see _masks_after)
            selects["channels_masks_after"] = None
    elif name == "bert":
        selects = {"pruned": None, "pruned_no_embeddings": _not_embedding}
    else:
        selects = {"pruned": None}
    for arm, select in selects.items():
        twin = build(name)[0]
        twin.set_weights(dense.get_weights())
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # layers left dense: reported in docs/models.md
            if arm == "channels_masks_after":
                arms[arm] = _masks_after(twin, schedule)
            elif structure == "channels":
                arms[arm] = keras_prune.prune_channels(twin, schedule)
            else:
                arms[arm] = keras_prune.prune_low_magnitude(twin, schedule, select=select)
    for model in arms.values():
        model.compile(optimizer=keras.optimizers.SGD(1e-4), loss=loss)
        model.train_on_batch(x, y)  # warm-up (compilation); pruning step 1 prunes nothing
    # train_on_batch runs no callbacks; UpdatePruningStep only links groups
    # and checks the end, the step advances inside the train step.
    times: dict[str, list[float]] = {}
    names = list(arms)
    for i in range(steps):
        step = i + 2  # each pruned model's pruning step in this round
        for arm in names[i % len(names) :] + names[: i % len(names)]:  # rotate the order
            start = time.perf_counter()
            arms[arm].train_on_batch(x, y)
            seconds = time.perf_counter() - start
            kind = (
                arm if arm == "dense" else f"{arm}_{'update' if step % frequency == 0 else 'plain'}"
            )
            times.setdefault(kind, []).append(seconds)
    result = {kind: _common.stats(t) for kind, t in times.items()}
    dense_s = result["dense"]["median_s"]
    for arm in names[1:]:
        plain = result[f"{arm}_plain"]["median_s"]
        result[f"{arm}_plain_over_dense"] = plain / dense_s
        if f"{arm}_update" in result:
            update = result[f"{arm}_update"]["median_s"]
            result[f"{arm}_update_over_dense"] = update / dense_s
            result[f"{arm}_at_frequency_100_over_dense"] = (99 * plain + update) / 100 / dense_s
        report = keras_prune.sparsity_report(arms[arm])
        result[f"{arm}_pruned_weights"] = report.total_size
        result[f"{arm}_left_dense"] = [u.class_name for u in report.unpruned]
    result["parameters"] = dense.count_params()
    return result


def _masks_after(model, schedule):
    """`prune_channels(model, schedule)` with a `ChannelMask` after every chain, as
    before `NormalizationMask`: what wrapping the normalisations saves. Reaches
    into `prune_channels`'s module (a benchmark, not an API): with no
    normalisation kinds to wrap, every mask multiplies the tensor."""
    from keras_prune.structured import prune_channels as module

    kinds, module.NORMALIZATIONS = module.NORMALIZATIONS, ()
    try:
        return module.prune_channels(model, schedule)
    finally:
        module.NORMALIZATIONS = kinds


def _not_embedding(layer) -> bool:
    import keras

    return not isinstance(layer, keras.layers.Embedding)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="resnet50,bert")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--frequency", type=int, default=4)
    parser.add_argument("--backends", default="tensorflow,jax,torch")
    parser.add_argument("--structure", choices=("weights", "channels"), default="weights")
    parser.add_argument("--out", help="the results file to merge into (default: see above)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.steps, args.frequency, args.structure)))
        return
    out = args.out or (OUT_CHANNELS if args.structure == "channels" else OUT)
    results = json.load(open(out)) if os.path.exists(out) else {}
    for backend in args.backends.split(","):
        for name in args.models.split(","):
            env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "2"}
            command = [sys.executable, __file__, "--child", name, "--steps", str(args.steps),
                       "--frequency", str(args.frequency), "--structure", args.structure]  # fmt: skip
            done = subprocess.run(command, env=env, capture_output=True, text=True)
            if done.returncode:
                print(done.stderr[-2000:], file=sys.stderr)
                continue
            result = json.loads(done.stdout.strip().splitlines()[-1])
            result["machine"] = _common.machine_info()
            result["command"] = " ".join(["python", *sys.argv])
            results.setdefault(backend, {})[name] = result
            for arm in ("pruned", "pruned_no_embeddings", "channels", "channels_masks_after"):
                if f"{arm}_plain_over_dense" in result:
                    print(
                        f"{backend:<10} {name:<8} {arm:<21} dense "
                        f"{result['dense']['median_s']:.3f} s/step, plain step "
                        f"x{result[f'{arm}_plain_over_dense']:.3f}, mask update step "
                        f"x{result.get(f'{arm}_update_over_dense', float('nan')):.3f}, "
                        f"at frequency 100 "
                        f"x{result.get(f'{arm}_at_frequency_100_over_dense', float('nan')):.3f}",
                        flush=True,
                    )
            with open(out, "w") as file:
                json.dump(results, file, indent=1)


if __name__ == "__main__":
    main()

"""Runs keras-prune over model definitions nobody here wrote, and writes docs/models.md.

Every `keras.applications` model (built with `weights=None`) and the KerasHub
backbones and task models BERT, GPT-2, Gemma, Llama and ViT, and the causal
LMs of Gemma 3, Mistral, Qwen, Phi-3 and Falcon (built from small configs:
no presets, no downloads) go through what a user does:

    prune_low_magnitude -> fit (a few steps) -> reached sparsity ->
    strip_pruning -> .keras save/load (no keras_prune objects in the file)
    -> same predictions -> keras_prune.export/load (.kps) -> same predictions

and, with `--structure channels`, through channel pruning:

    prune_channels -> fit -> shrink -> same predictions as the masked
    model -> .keras save/load (no keras_prune objects) -> same predictions

Run it once per backend (and structure); each run adds its column to a
JSON file, and the tables in docs/models.md are written from all the
columns there:

    for b in tensorflow jax torch; do
        KERAS_BACKEND=$b .venv/bin/python tools/model_zoo.py
        KERAS_BACKEND=$b .venv/bin/python tools/model_zoo.py --structure channels
    done

`--budget SECONDS` starts no model after that time (the table says "not run
yet" for the rest) and `--missing` runs only those, to fill the table in
several sittings.

`tests/test_model_zoo.py` runs `check` and `check_channels` on small models
of each family, on every backend, in CI. KerasHub needs `pip install --no-deps keras-hub` plus
its light dependencies (its `tensorflow-text` requirement conflicts with
`tensorflow-cpu` and is not needed to build models from a config).
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from typing import Any

import keras
import numpy as np

import keras_prune
from keras_prune import _files

SPARSITY = 0.5
STEPS = 2
BATCH = 4  # 2 makes some random-init EfficientNets predict NaN after one step, unpruned too
RESULTS = {
    "weights": os.path.join(os.path.dirname(__file__), "..", "docs", "models.json"),
    "channels": os.path.join(os.path.dirname(__file__), "..", "docs", "models_channels.json"),
}
TABLE = os.path.join(os.path.dirname(__file__), "..", "docs", "models.md")


def _same(a: Any, b: Any) -> float:
    """The largest absolute difference between two (possibly nested) outputs."""
    a, b = keras.tree.flatten(a), keras.tree.flatten(b)
    return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y)))) for x, y in zip(a, b))


def _predict(model: keras.Model, x: Any) -> Any:
    """`model`'s outputs on the few samples `x`, called directly: `predict` would
    compile a function per model (a minute for a large model on JAX), five
    times per check, to run it once."""
    return keras.tree.map_structure(keras.ops.convert_to_numpy, model(x, training=False))


def _finite(outputs: Any) -> bool:
    return all(np.isfinite(o).all() for o in keras.tree.flatten(outputs))


def _train(model: keras.Model, x: Any, y: Any, loss: Any, callbacks: list[Any]) -> None:
    # A small step: a few steps of a random-init deep net must not diverge to NaN.
    model.compile(optimizer=keras.optimizers.SGD(1e-4), loss=loss)
    model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0, callbacks=callbacks)


def _why_not_finite(model: keras.Model, x: Any, y: Any, loss: Any) -> str:
    """Whether the unpruned `model`, trained alike, predicts NaN or inf too."""
    unpruned = keras.models.clone_model(model)
    unpruned.set_weights(model.get_weights())
    _train(unpruned, x, y, loss, [])
    if _finite(_predict(unpruned, x)):
        return (
            f"the pruned model predicts NaN or inf after {STEPS} steps; the unpruned one does not"
        )
    return f"after {STEPS} training steps it predicts NaN or inf, unpruned too (not keras_prune)"


def _reloaded(
    model: keras.Model, path: str, x: Any, expected: Any, tolerance: float
) -> tuple[keras.Model, float]:
    """`model` saved to `path` and loaded back, with its largest difference from
    `expected` on `x`; asserts that the file names no keras_prune object and
    that the difference is within `tolerance`."""
    model.save(path)
    with open(path, "rb") as file:
        assert b"keras_prune" not in file.read(), f"{os.path.basename(path)} names keras_prune"
    loaded = keras.saving.load_model(path)
    difference = _same(expected, _predict(loaded, x))
    assert difference <= tolerance, f"the reloaded model predicts differently: {difference}"
    return loaded, difference


def check(
    model: keras.Model, x: Any, folder: str, y: Any = None, loss: Any = "mse"
) -> dict[str, Any]:
    """Prunes, trains, strips, saves, reloads and exports `model`; asserts each step.

    `y` defaults to zeros shaped like the model's outputs. Returns what was
    measured: the reached sparsity, the layers left dense and the largest
    prediction differences. Raises AssertionError at the first step that is
    wrong.
    """
    if y is None:
        y = keras.tree.map_structure(np.zeros_like, _predict(model, x))
    schedule = keras_prune.ConstantSparsity(SPARSITY, 0, frequency=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pruned = keras_prune.prune_low_magnitude(model, schedule)
    left_dense = [str(w.message) for w in caught if "left these weights dense" in str(w.message)]
    _train(pruned, x, y, loss, [keras_prune.UpdatePruningStep()])
    report = keras_prune.sparsity_report(pruned)
    assert report, "nothing was pruned"
    for row in report:  # every weight at the schedule's sparsity, to one weight
        assert abs(row.zeros - SPARSITY * row.size) <= 1, f"{row.layer}/{row.weight}: {row}"
    masked = _predict(pruned, x)
    if not _finite(masked):
        raise AssertionError(_why_not_finite(model, x, y, loss))
    stripped = keras_prune.strip_pruning(pruned)
    after_strip = _same(masked, _predict(stripped, x))
    assert after_strip <= 1e-5, f"stripped model predicts differently: {after_strip}"
    loaded, after_load = _reloaded(stripped, os.path.join(folder, "model.keras"), x, masked, 1e-5)
    kps = os.path.join(folder, "model.kps")
    keras_prune.export(stripped, kps)
    after_export = _same(masked, _predict(keras_prune.load(kps), x))
    assert after_export <= 1e-5, f"the .kps model predicts differently: {after_export}"
    return {
        "sparsity": round(report.total_sparsity, 4),
        "pruned_weights": len(report),
        "left_dense": [u.class_name for u in report.unpruned],
        "warned": bool(left_dense),
        "max_difference": max(after_strip, after_load, after_export),
        "stripped_class": type(loaded).__name__,
    }


# Run last, in this order: the largest models (hundreds of MB of weights).
LARGE = ["VGG16", "VGG19", "ResNet101", "ResNet101V2", "ResNet152", "ResNet152V2",
         "InceptionResNetV2", "EfficientNetV2M", "ConvNeXtBase", "EfficientNetB7",
         "NASNetLarge", "EfficientNetV2L", "ConvNeXtLarge", "ConvNeXtXLarge"]  # fmt: skip


def check_channels(
    model: keras.Model, x: Any, folder: str, y: Any = None, loss: Any = "mse"
) -> dict[str, Any]:
    """Prunes channels, trains, shrinks, saves and reloads `model`; asserts each step.

    `prune_channels` at `SPARSITY` of each group's channels, `STEPS` steps
    of `fit`, then `shrink`: the shrunk model predicts as the masked one
    (1e-4 relative), its `.keras` file names no keras_prune object and
    reloads with the same predictions. Returns parameters and FLOPs before
    and after, and how many channel groups could be removed.
    """
    if y is None:
        y = keras.tree.map_structure(np.zeros_like, _predict(model, x))
    groups = keras_prune.channel_groups(model)
    removable = sum(group.removable for group in groups)
    if not removable:
        reasons = sorted({group.reason for group in groups}) or [
            "no channels outside custom layers "
            + ", ".join(sorted({type(layer).__name__ for layer in _custom_layers(model)}))
        ]
        raise AssertionError(f"no channel group can be removed: {'; '.join(reasons)}")
    schedule = keras_prune.ConstantSparsity(SPARSITY, 0, frequency=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the groups left whole: counted above
        masked = keras_prune.prune_channels(model, schedule)
    _train(masked, x, y, loss, [keras_prune.UpdatePruningStep()])
    expected = _predict(masked, x)
    if not _finite(expected):
        raise AssertionError(_why_not_finite(model, x, y, loss))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a task that comes back as a plain graph says so
        small = keras_prune.shrink(masked)
    scale = max(1.0, max(float(np.max(np.abs(o))) for o in keras.tree.flatten(expected)))
    after_shrink = _same(expected, _predict(small, x))
    assert after_shrink <= 1e-4 * scale, f"the shrunk model predicts differently: {after_shrink}"
    path = os.path.join(folder, "small.keras")
    loaded, after_load = _reloaded(small, path, x, expected, 1e-4 * scale)
    with warnings.catch_warnings(record=True) as unseen:  # custom layers it cannot count
        warnings.simplefilter("always")
        operations = (keras_prune.flops(model), keras_prune.flops(small))
    return {
        "parameters": (model.count_params(), small.count_params()),
        "flops": None if unseen else operations,
        "groups": (removable, len(groups)),
        "max_difference": max(after_shrink, after_load),
        "shrunk_class": type(loaded).__name__,
    }


def _custom_layers(model: keras.Model) -> list[keras.layers.Layer]:
    """`model`'s layers with weights that are not Keras's own."""
    return [
        layer
        for layer in model.layers
        if layer.weights and not type(layer).__module__.startswith("keras.")
    ]


def _images(shape: tuple[int, ...]) -> np.ndarray:
    return np.random.default_rng(0).uniform(0, 1, (BATCH * STEPS, *shape)).astype("float32")


def _tokens(vocabulary: int, length: int, segments: bool = False) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    data = {
        "token_ids": rng.integers(0, vocabulary, (BATCH * STEPS, length)).astype("int32"),
        "padding_mask": np.ones((BATCH * STEPS, length), "int32"),
    }
    if segments:
        data["segment_ids"] = np.zeros((BATCH * STEPS, length), "int32")
    return data


def applications() -> dict[str, Callable[[], tuple[Any, ...]]]:
    """Every `keras.applications` model, at the smallest input it accepts."""
    sizes = {"InceptionV3": 75, "InceptionResNetV2": 75, "Xception": 71, "NASNetLarge": 331,
             "NASNetMobile": 224, "MobileNet": 32, "EfficientNetV2B0": 32}  # fmt: skip
    builders: dict[str, Callable[[], tuple[Any, ...]]] = {}
    names = [n for n in dir(keras.applications) if n[0].isupper()]
    for name in sorted(names, key=lambda n: (LARGE.index(n) if n in LARGE else -1, n)):
        build = getattr(keras.applications, name)
        if not (name[0].isupper() and callable(build)):
            continue
        size = sizes.get(name, 32)

        def make(build: Any = build, size: int = size) -> tuple[keras.Model, Any]:
            shape = (size, size, 3)
            return build(weights=None, input_shape=shape, classes=4), _images(shape)

        builders[name] = make
    return builders


def kerashub() -> dict[str, Callable[[], tuple[Any, ...]]]:
    """KerasHub backbones and task models from small configs (no presets, no downloads)."""
    import keras_hub  # noqa: PLC0415 (optional: only this script and its test need it)

    m = keras_hub.models
    text = dict(vocabulary_size=50, num_layers=2, hidden_dim=16, intermediate_dim=32)

    def bert() -> keras.Model:
        return m.BertBackbone(**text, num_heads=2, max_sequence_length=8)

    def gpt2() -> keras.Model:
        return m.GPT2Backbone(**text, num_heads=2, max_sequence_length=8)

    def gemma() -> keras.Model:
        return m.GemmaBackbone(**text, num_query_heads=2, num_key_value_heads=1, head_dim=8)

    gqa = dict(num_query_heads=2, num_key_value_heads=1)

    def llama() -> keras.Model:
        return m.LlamaBackbone(**text, **gqa)

    def vit() -> keras.Model:
        return m.ViTBackbone(
            image_shape=(16, 16, 3),
            patch_size=4,
            num_layers=2,
            num_heads=2,
            hidden_dim=16,
            mlp_dim=32,
        )

    tokens, segmented = _tokens(50, 8), _tokens(50, 8, segments=True)
    # A language model learns the next token: integer targets, logits out.
    next_token = (tokens["token_ids"], keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    labels = (
        np.arange(BATCH * STEPS) % 2,
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return {
        "BertBackbone": lambda: (bert(), segmented),
        "BertTextClassifier": lambda: (
            m.BertTextClassifier(bert(), num_classes=2, preprocessor=None),
            segmented,
            *labels,
        ),
        "GPT2Backbone": lambda: (gpt2(), tokens),
        "GPT2CausalLM": lambda: (m.GPT2CausalLM(gpt2(), preprocessor=None), tokens, *next_token),
        "GemmaBackbone": lambda: (gemma(), tokens),
        "GemmaCausalLM": lambda: (m.GemmaCausalLM(gemma(), preprocessor=None), tokens, *next_token),
        # Causal LMs of further families, built of blocks channel pruning knows.
        "Gemma3CausalLM": lambda: (
            m.Gemma3CausalLM(
                backbone=m.Gemma3Backbone(**text, **gqa, head_dim=8, image_size=16),
                preprocessor=None,
            ),
            tokens,
            *next_token,
        ),
        "MistralCausalLM": lambda: (
            m.MistralCausalLM(m.MistralBackbone(**text, **gqa), preprocessor=None),
            tokens,
            *next_token,
        ),
        "QwenCausalLM": lambda: (
            m.QwenCausalLM(m.QwenBackbone(**text, **gqa), preprocessor=None),
            tokens,
            *next_token,
        ),
        "Phi3CausalLM": lambda: (
            m.Phi3CausalLM(m.Phi3Backbone(**text, **gqa), preprocessor=None),
            tokens,
            *next_token,
        ),
        "FalconCausalLM": lambda: (
            m.FalconCausalLM(m.FalconBackbone(**text, num_attention_heads=2), preprocessor=None),
            tokens,
            *next_token,
        ),
        "LlamaBackbone": lambda: (llama(), tokens),
        "LlamaCausalLM": lambda: (m.LlamaCausalLM(llama(), preprocessor=None), tokens, *next_token),
        "ViTBackbone": lambda: (vit(), _images((16, 16, 3))),
        "ViTImageClassifier": lambda: (
            m.ViTImageClassifier(vit(), num_classes=2, preprocessor=None),
            _images((16, 16, 3)),
            *labels,
        ),
    }


def _run(
    name: str, build: Callable[[], tuple[Any, ...]], checker: Callable[..., Any]
) -> dict[str, Any]:
    start = time.perf_counter()
    try:
        model, x, *target = build()
        with tempfile.TemporaryDirectory() as folder:
            result = {"status": "works", **checker(model, x, folder, *target)}
    except Exception as error:  # the table records why a model fails
        result = {"status": f"{type(error).__name__}: {str(error).splitlines()[0][:160]}"}
    result["seconds"] = round(time.perf_counter() - start, 1)
    print(f"{name:<24} {result['status'][:90]}  ({result['seconds']} s)", flush=True)
    return result


def _backends(results: dict[str, Any]) -> list[str]:
    return [b for b in ("tensorflow", "jax", "torch") if b in results]


def _count(n: float) -> str:
    """25.6 M, 431 k, 96."""
    for size, unit in ((1e9, " G"), (1e6, " M"), (1e3, " k")):
        if n >= size:
            return f"{n / size:.3g}{unit}"
    return f"{n:g}"


def _ratio(pair: Any) -> str:
    """`before -> after (before / after)`, e.g. 25.6 M -> 7 M (3.68x)."""
    if not pair:
        return "-"
    before, after = pair
    return f"{_count(before)} -> {_count(after)} ({before / after:.2f}x)"


def write_table(results: dict[str, dict[str, Any]], names: list[str], path: str) -> None:
    """docs/models.md from `{"weights" or "channels": {backend: {model: result}}}`,
    a row per name in `names` in each table."""
    weights, channels = results["weights"], results["channels"]
    backends = _backends(weights)
    lines = [
        "# Which models keras-prune prunes",
        "",
        "Written by `tools/model_zoo.py` (run once per backend; see its docstring). Each",
        "model is built with `weights=None` or from a small config, pruned with",
        f"`prune_low_magnitude(model, ConstantSparsity({SPARSITY}, 0, frequency=1))`, trained",
        f"{STEPS} steps, checked at {SPARSITY:.0%} in every pruned weight, stripped, saved",
        "as `.keras`, reloaded without keras_prune and exported to `.kps`, with the",
        "same predictions at every step (1e-5). *left dense*: layers with weights",
        "keras_prune does not know how to prune (listed in the warning and in",
        "`sparsity_report`).",
        "",
        "**What is pruned in a transformer, by default**: the kernels of every",
        "`Dense`/`EinsumDense` inside its blocks (attention query, key, value and",
        "output projections, FFN kernels, at any depth inside custom layers) and",
        "`Embedding` matrices (token and segment embeddings; a tied",
        "`ReversibleEmbedding` is one matrix, masked as input and as output).",
        "Biases and normalisation parameters never are. Layers keras_prune does not",
        "know (`PositionEmbedding`, `LayerScale`, a ViT class token) are left dense.",
        "Pass `select=` (layer names, classes or a predicate on the top-level",
        "layers) to prune less, e.g. the blocks only:",
        "`select=lambda layer: 'transformer_layer' in layer.name`.",
        "",
        "A pruned KerasHub backbone or task is a graph of the same layers that",
        "remembers its class (`model_class.PrunedGraph`, which also keeps a causal",
        "LM's tied output embedding one layer through a `.keras` file);",
        "`strip_pruning` gives the class back (a `GPT2CausalLM` that generates).",
        "",
        "Channel pruning (`prune_channels`, `shrink`) has its own table below.",
        "",
        "KerasHub 0.32's `LlamaTransformerDecoder` and `ViTPatchingAndEmbedding`",
        "cannot be re-created from their own config (`keras.models.clone_model`",
        "fails on them). keras_prune copies them from a backbone re-created from its",
        "config instead, as a `.keras` file is loaded (docs/persistence.md).",
        "",
        "| model | " + " | ".join(backends) + " | left dense |",
        "|---|" + "---|" * len(backends) + "---|",
    ]
    for name in names:
        cells = [weights[b].get(name, {}).get("status", "not run yet") for b in backends]
        dense = sorted(
            {c for b in backends for c in weights[b].get(name, {}).get("left_dense", [])}
        )
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {', '.join(dense) or '-'} |")
    backends = _backends(channels)
    lines += [
        "",
        "## Removing channels",
        "",
        "Run with `--structure channels`. Each model is pruned with",
        f"`prune_channels(model, ConstantSparsity({SPARSITY}, 0, frequency=1))`, trained",
        f"{STEPS} steps, shrunk with `shrink`, saved as `.keras` and reloaded without",
        "keras_prune, with the masked model's predictions at every step (1e-4",
        "relative). *groups*: the channel groups that can be removed, of all",
        "(`channel_groups`; the others are left whole, e.g. a model's output or",
        "channels a LayerNormalization mixes). Parameters and FLOPs (`flops`, 2 x",
        "multiply-adds per sample) before and after, at the small input the model",
        "was built for; *-*: FLOPs of custom layers (KerasHub blocks) are not",
        "counted. KerasHub's transformer blocks lose half their feed-forward units",
        "(BERT, GPT-2, Gemma, Gemma 3, Mistral, Qwen, Phi-3, Falcon); a backbone or",
        "task comes back as its class with a smaller `intermediate_dim`",
        "(docs/structured.md). Llama and ViT do not: their blocks are not known",
        "(a smaller Llama block cannot be made from its config; ViT keeps all its",
        "blocks in one `ViTEncoder` layer), and their tasks hold a layer that its",
        "config cannot re-create, which channel pruning refuses by name.",
        "",
        "| model | " + " | ".join(backends) + " | groups | parameters | FLOPs |",
        "|---|" + "---|" * len(backends) + "---|---|---|",
    ]
    for name in names:
        row = [channels[b].get(name, {}) for b in backends]
        done = next((r for r in row if r.get("status") == "works"), {})
        groups = "{} of {}".format(*done["groups"]) if done else "-"
        cells = [r.get("status", "not run yet") for r in row]
        cells += [groups, _ratio(done.get("parameters")), _ratio(done.get("flops"))]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    with open(path, "w") as file:
        file.write("\n".join(lines) + "\n")


def _save_result(path: str, name: str, result: dict[str, Any]) -> dict[str, Any]:
    """Writes model `name`'s `result` on this backend into the JSON file at `path`
    and returns all the results there. The file is read again first, under a
    lock: other runs (another backend, other models) may be writing theirs at
    the same time, and without the lock one run's write lost another's."""
    with open(f"{path}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        results = {}
        if os.path.exists(path):
            with open(path) as file:
                results = json.load(file)
        results.setdefault(keras.backend.backend(), {})[name] = result
        with _files.atomic_path(path, ".json") as temporary, open(temporary, "w") as file:
            json.dump(results, file, indent=1, sort_keys=True)
    return results


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help="comma-separated model names")
    parser.add_argument(
        "--budget",
        type=float,
        default=float("inf"),
        help="seconds after which no further model is started",
    )
    parser.add_argument("--table", action="store_true", help="only rewrite docs/models.md")
    parser.add_argument(
        "--missing", action="store_true", help="only the models this backend has not run yet"
    )
    parser.add_argument(
        "--structure",
        choices=("weights", "channels"),
        default="weights",
        help="prune_low_magnitude (weights) or prune_channels and shrink (channels)",
    )
    args = parser.parse_args(argv)
    builders = {**kerashub(), **applications()}
    everything = sorted(builders)
    results: dict[str, Any] = {}
    for structure, path in RESULTS.items():
        results[structure] = {}
        if os.path.exists(path):
            with open(path) as file:
                results[structure] = json.load(file)
    if args.table:
        write_table(results, everything, TABLE)
        return 0
    if args.only:
        builders = {n: builders[n] for n in args.only.split(",")}
    column = results[args.structure].setdefault(keras.backend.backend(), {})
    if args.missing:
        builders = {n: b for n, b in builders.items() if n not in column}
    checker = check if args.structure == "weights" else check_channels
    start = time.perf_counter()
    for name, build in builders.items():
        if time.perf_counter() - start > args.budget:
            break  # the table says "not run yet" for the rest
        column[name] = _run(name, build, checker)
        keras.backend.clear_session()
        # After each model, so that a stopped run keeps its results.
        results[args.structure] = _save_result(RESULTS[args.structure], name, column[name])
        write_table(results, everything, TABLE)
    return 0 if all(r["status"] == "works" for r in column.values()) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Per-layer pruning sensitivity: which layers tolerate how much sparsity.

`sensitivity(model, data)` prunes one layer at a time, one-shot (magnitude
masks, no training), to each of several sparsities, evaluates the model on
`data` each time and puts the original weights back. The table it returns
shows which layers can give up most of their weights (their metric stays
near the dense model's) and which cannot; that is what a per-layer
`sparsity_distribution` dict or a `select=` list is made from (the method of
Distiller's and NNI's sensitivity scans). With `structure="channels"` it
removes each channel group's least important channels instead
(`shrink(model, sparsity, select=...)`, one group at a time), for
`prune_channels` and `shrink`.

Example:

```python
model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
model.fit(x_train, y_train)
table = keras_prune.sensitivity(model, (x_test, y_test), sparsities=(0.5, 0.9, 0.95))
print(table)              # one row per layer, one column per sparsity
table.plot("sensitivity.png")
```
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
from collections.abc import Sequence
from typing import Any

import keras
from keras import ops

from keras_prune import _files, _keras, _validation, registry
from keras_prune.masks import magnitude_mask
from keras_prune.prune import pruned_layers
from keras_prune.selection import Selection, by_name
from keras_prune.structured.channel_mask import channel_masks
from keras_prune.structured.flatten import flatten
from keras_prune.structured.graph import analyse, check_model, chosen_groups
from keras_prune.structured.shrink import shrink


@dataclasses.dataclass(frozen=True)
class Sensitivity:
    """The result of `sensitivity`: `values[i][j]` is `metric` with layer
    `layers[i]` alone pruned to `sparsities[j]`; `baseline` is the unpruned
    model's. `sizes[i]` is the number of prunable weights of layer i, or
    with `unit` "channels" the channels of the group its producers
    `layers[i]` ("conv1", or "a, b" for a residual group) make."""

    metric: str
    baseline: float
    sparsities: tuple[float, ...]
    layers: tuple[str, ...]
    sizes: tuple[int, ...]
    values: tuple[tuple[float, ...], ...]
    unit: str = "weights"

    def __str__(self) -> str:
        first = max(len("layer"), *(len(name) for name in self.layers))
        head = f"{'layer':<{first}}  {self.unit:>9}  " + "  ".join(
            f"{s:>8.2%}" for s in self.sparsities
        )
        what = "group loses channels" if self.unit == "channels" else "layer is pruned"
        lines = [f"{self.metric} when one {what} alone (dense: {self.baseline:.4f})", head]
        for name, size, row in zip(self.layers, self.sizes, self.values):
            cells = "  ".join(f"{v:>8.4f}" for v in row)
            lines.append(f"{name:<{first}}  {size:>9,}  {cells}")
        return "\n".join(lines)

    def plot(self, path: str | os.PathLike[str]) -> str:
        """Writes a PNG: the metric against sparsity, a line per layer, the dense model dashed.

        Needs matplotlib (`pip install 'keras-prune[compare]'`); returns `path`.
        """
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"`path` must be a str or os.PathLike; got {type(path).__name__}.")
        try:
            import matplotlib
        except ImportError:
            raise ImportError(
                "Sensitivity.plot needs matplotlib: pip install 'keras-prune[compare]'"
            ) from None
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        figure, axes = plt.subplots(figsize=(7, 4.5))
        for name, size, row in zip(self.layers, self.sizes, self.values):
            axes.plot(self.sparsities, row, "o-", markersize=3, label=f"{name} ({size:,})")
        axes.axhline(self.baseline, color="black", linestyle="--", linewidth=1, label="dense")
        axes.set(
            xlabel=f"sparsity of the one pruned {'group' if self.unit == 'channels' else 'layer'}"
            " (one-shot, no training)",
            ylabel=self.metric,
            title="Pruning sensitivity per layer",
        )
        axes.grid(alpha=0.3)
        axes.legend(fontsize=7)
        figure.tight_layout()
        path = os.fspath(path)
        try:
            with _files.atomic_path(path, suffix=".png") as temporary:
                figure.savefig(temporary, format="png", dpi=120)
        finally:
            plt.close(figure)
        return path


def sensitivity(
    model: keras.Model,
    data: Any,
    sparsities: Sequence[float] = (0.5, 0.75, 0.9, 0.95, 0.98),
    *,
    metric: str | None = None,
    select: Any = None,
    batch_size: int | None = None,
    verbose: bool = True,
    structure: str = "weights",
) -> Sensitivity:
    """Prunes each layer alone to each sparsity and evaluates the model.

    Args:
        model: a compiled, built `keras.Model` that is not pruned (no
            `PruneLowMagnitude` layers: scan before `prune_low_magnitude`,
            or scan `strip_pruning(model)`).
        data: what `model.evaluate` takes: a tuple `(x, y)` or `(x, y,
            sample_weight)` of arrays, or a dataset yielding batches.
        sparsities: fractions in [0, 1) each layer is pruned to, one at a
            time, by weight magnitude (as `magnitude_mask` does).
        metric: the name of the value `model.evaluate` returns to tabulate,
            e.g. "accuracy" or "loss"; default the first compiled metric,
            else the loss.
        select: which layers to scan, as `prune_low_magnitude`'s `select`;
            default every layer with prunable weights (with "channels":
            the groups a selected layer produces, default every group
            that can shrink).
        batch_size: passed to `model.evaluate` for array data.
        verbose: print a progress line per layer.
        structure: "weights" (magnitude pruning of each layer's weights)
            or "channels": each channel group of a Functional or
            Sequential model loses that fraction of its channels, the
            least important by L2 norm, in a model `shrink` rebuilds (with
            `select` picking that group) and compiles as `model` is.

    The model's weights are restored after each evaluation, also when one
    fails, so the model is never left pruned. See the module docstring for
    an example.
    """
    _validation.instance(model, "model", keras.Model, "a compiled keras.Model")
    if next(pruned_layers(model), None) is not None:
        raise ValueError(
            "`model` is already pruned (it has PruneLowMagnitude layers); run sensitivity "
            "before prune_low_magnitude, or on keras_prune.strip_pruning(model)."
        )
    if not model.built:
        raise ValueError(f"`model` {model.name!r} must be built (call it on data or build it).")
    if not model.compiled:
        raise ValueError(
            "`model` must be compiled with the loss and metrics to evaluate, e.g. "
            "model.compile(loss=..., metrics=['accuracy'])."
        )
    if isinstance(sparsities, (str, bytes)) or not isinstance(sparsities, Sequence):
        raise TypeError(f"`sparsities` must be a sequence of numbers; got {sparsities!r}.")
    if not sparsities:
        raise ValueError("`sparsities` must hold at least one sparsity in [0, 1); got none.")
    sparsities = tuple(_validation.sparsity(s, "sparsities") for s in sparsities)
    if batch_size is not None:
        _validation.count(batch_size, "batch_size", 1)
    _validation.boolean(verbose, "verbose")
    _validation.one_of(structure, "structure", ("weights", "channels"))
    groups: list[tuple[tuple[str, ...], int]] = []
    layers: list[keras.layers.Layer] = []
    if structure == "channels":
        if channel_masks(model):
            raise ValueError(
                "`model` comes from prune_channels (it has ChannelMask layers): scan the "
                "model before prune_channels, or `shrink(model)` and scan the result."
            )
        groups = _scanned_groups(model, select)
        _compile_config(model)  # before any evaluation: say now if it cannot be copied
    else:
        layers = _scanned_layers(model, Selection(select))
    if structure == "weights" and not layers:
        raise ValueError(
            f"`model` {model.name!r} has no layers with prunable weights"
            + (" among those `select` picks." if select is not None else ".")
        )

    if isinstance(data, tuple) and not 2 <= len(data) <= 3:
        raise ValueError(
            f"`data` as a tuple must be (x, y) or (x, y, sample_weight); got {len(data)} items."
        )

    def evaluate(on: keras.Model) -> dict[str, float]:
        if isinstance(data, tuple):
            x, y, *weights = data
            return on.evaluate(
                x,
                y,
                sample_weight=weights[0] if weights else None,
                batch_size=batch_size,
                verbose=0,
                return_dict=True,
            )
        return on.evaluate(data, verbose=0, return_dict=True)

    dense = evaluate(model)
    if metric is None:
        metric = next((name for name in dense if name != "loss"), "loss")
    if metric not in dense:
        raise ValueError(
            f"`metric` {metric!r} is not among what model.evaluate returns: {sorted(dense)}."
        )
    rows, sizes, names = [], [], []
    total = len(layers) + len(groups)  # one of them is empty
    for index in range(total):
        if structure == "weights":
            layer = layers[index]
            names.append(layer.name)
            weights = registry.get_prunable_weights(layer)
            sizes.append(sum(math.prod(w.shape) for w in weights))
            row = _pruned_weights_row(weights, sparsities, lambda: evaluate(model)[metric])
        else:
            producers, size = groups[index]
            names.append(", ".join(producers))
            sizes.append(size)
            row = []
            for sparsity in sparsities:
                small = shrink(model, sparsity, select=producers[0])  # its whole group
                small.compile(**_compile_config(model))
                row.append(float(evaluate(small)[metric]))
        rows.append(tuple(row))
        if verbose:
            cells = ", ".join(f"{s:g}: {v:.4f}" for s, v in zip(sparsities, row))
            print(
                f"sensitivity [{index + 1}/{total}] {names[-1]}: {metric} {cells} "
                f"(dense {dense[metric]:.4f})",
                flush=True,
            )
    return Sensitivity(
        metric=metric,
        baseline=float(dense[metric]),
        sparsities=sparsities,
        layers=tuple(names),
        sizes=tuple(sizes),
        values=tuple(rows),
        unit="weights" if structure == "weights" else "channels",
    )


def _pruned_weights_row(
    weights: list[keras.Variable], sparsities: tuple[float, ...], score: Any
) -> list[float]:
    """`score()` with `weights` magnitude-pruned to each of `sparsities`; the weights
    are restored after, also when a score fails."""
    originals = [ops.convert_to_numpy(w.value) for w in weights]
    row = []
    try:
        for sparsity in sparsities:
            for weight, value in zip(weights, originals):
                mask = ops.convert_to_numpy(magnitude_mask(value, sparsity))
                weight.assign(value * mask)
            row.append(float(score()))
    finally:
        for weight, value in zip(weights, originals):
            weight.assign(value)
    return row


def _compile_config(model: keras.Model) -> dict[str, Any]:
    """`model.compile`'s arguments, new objects from its compile config (as a `.keras`
    file restores them), for a shrunk copy; ValueError if they cannot be re-created."""
    try:
        return keras.saving.deserialize_keras_object(copy.deepcopy(model.get_compile_config()))
    except Exception as error:  # an unregistered custom loss or metric, whatever it raised
        raise ValueError(
            f"`model`'s compile settings cannot be re-created for the shrunk models "
            f"({type(error).__name__}: {error}); register custom losses and metrics with "
            "@keras.saving.register_keras_serializable, or compile with built-in ones."
        ) from None


def _scanned_groups(model: keras.Model, select: Any) -> list[tuple[tuple[str, ...], int]]:
    """The producers' names and the channels of each removable channel group of `model`
    that `select` picks, in graph order (`graph.chosen_groups` says why where it picks
    none)."""
    flat = flatten(check_model(model))
    if flat is not model:  # its layers are copies, with the same names
        select = by_name(select, _keras.flatten_layers(model))
    graph = analyse(flat)
    chosen = chosen_groups(
        graph, Selection(select), _keras.flatten_layers(flat), "model", "sensitivity"
    )
    return [
        (tuple(layer.name for layer, _ in graph.groups[root].producers), graph.groups[root].size)
        for root in graph.roots()
        if root in chosen
    ]


def _scanned_layers(model: keras.Model, selection: Selection) -> list[keras.layers.Layer]:
    """The model's built layers with prunable weights that `selection` picks, each once;
    the sublayers of a picked layer (a MultiHeadAttention's projections) are not."""
    chosen: list[keras.layers.Layer] = []
    inside: set[int] = set()
    for layer in _keras.flatten_layers(model):
        if id(layer) in inside or isinstance(layer, keras.Model):
            continue
        if layer.built and registry.supports(layer) and selection(layer):
            chosen.append(layer)
            inside.update(id(sub) for sub in _keras.flatten_layers(layer))
    selection.check_all_used("model")
    return chosen

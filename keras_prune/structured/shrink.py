"""Removing whole channels: a smaller plain Keras model that runs faster everywhere.

`shrink(model, sparsity)` scores the channels of every removable group of
`model` (`structured.graph`) by the norm of their weights
(`structured.importance`), removes the lowest `sparsity` fraction of each
group, and rebuilds the model with smaller layers: Conv filters, Dense
units and attention heads, the matching inputs of the layers that read
them, and the BatchNormalization and depthwise weights that carry them. The result holds
only Keras layers, so it saves and loads without keras_prune and exports
like any model; its predictions are those of `model` with the removed
channels' weights set to zero (`structured.graph` says which weights).

`model` is not changed, and nothing is returned half-shrunk: the new model
is complete or `shrink` raises.

Example:

```python
small = keras_prune.shrink(trained_model, sparsity=0.5, round_to=8)
small.compile(...); small.fit(...)   # fine-tune what is left
```
"""

from __future__ import annotations

import warnings
from typing import Any

import keras
import numpy as np

from keras_prune import _keras, _validation
from keras_prune.structured import importance as importance_lib
from keras_prune.structured.graph import (
    CONVOLUTIONS,
    DEPTHWISE,
    PRODUCERS,
    SEPARABLE,
    Graph,
    Layout,
    analyse,
    check_model,
)
from keras_prune.wrapper import PruneLowMagnitude

Keep = dict[int, np.ndarray]  # root group -> indices of its channels that stay


def shrink(
    model: keras.Model,
    sparsity: float,
    *,
    importance: importance_lib.Importance = "l2",
    round_to: int = 1,
) -> keras.Model:
    """Removes the least important `sparsity` fraction of every removable channel group of `model`.

    Args:
        model: a built Functional or Sequential model, trained and not
            pruned by weights (call `strip_pruning` first).
        sparsity: the fraction of each group's channels to remove, in [0, 1).
        importance: "l2" or "l1" (the norm of a channel's kernel weights),
            or a callable (see `structured.importance`).
        round_to: keep a multiple of this many channels in each group (and
            at least this many), e.g. 8 for the kernels of most CPUs and GPUs.

    Returns:
        A new plain Keras model with the same inputs and outputs, fewer
        channels, and `model`'s weights for those left. Uncompiled.

    Raises:
        ValueError: if no channel of `model` can be removed (the message
            says why), or for an argument out of range.

    Groups that must keep their channels (a model output, a layer the graph
    walk does not know) are listed in one warning.
    """
    check_model(model)
    sparsity = _validation.sparsity(sparsity, "sparsity")
    importance = importance_lib.check(importance)
    round_to = _validation.count(round_to, "round_to", minimum=1)
    if any(isinstance(layer, PruneLowMagnitude) for layer in _keras.flatten_layers(model)):
        raise ValueError(
            "`model` is pruned by weights (it has PruneLowMagnitude layers); call "
            "`keras_prune.strip_pruning(model)` first, then shrink the stripped model."
        )
    graph = analyse(model)
    removable = graph.removable()
    if not removable:
        reasons = sorted(
            {graph.groups[i].reason for i in graph.roots() if graph.groups[i].producers}
        )
        raise ValueError(
            f"`model` ({model.name}) has no channel that can be removed: " + "; ".join(reasons)
        )
    _warn_left_whole(graph)
    keep: Keep = {}
    for root in removable:
        group = graph.groups[root]
        scores = importance_lib.scores(importance, group.producers, group.size)
        kept = importance_lib.keep(scores, sparsity, round_to)
        if len(kept) < group.size:
            keep[root] = kept
    return rebuild(model, graph, keep)


def _warn_left_whole(graph: Graph) -> None:
    reasons = sorted(
        {
            f"{', '.join(layer.name for layer, _ in group.producers)}: {group.reason}"
            for group in (graph.groups[i] for i in graph.roots())
            if group.producers and group.reason and "model output" not in group.reason
        }
    )
    if reasons:
        warnings.warn(
            f"{len(reasons)} channel group(s) keep every channel: " + "; ".join(reasons),
            stacklevel=3,
        )


def indices(graph: Graph, layout: Layout, keep: Keep) -> np.ndarray | None:
    """The positions of a tensor's last axis that stay, or None if all do."""
    if not any(graph.find(g) in keep for g in layout.groups):
        return None
    parts, offset = [], 0
    for g in layout.groups:
        root = graph.find(g)
        size = graph.groups[root].size
        parts.append(offset + keep.get(root, np.arange(size)))
        offset += size
    index = np.concatenate(parts)
    if layout.repeat > 1:  # after Flatten: channel c sits at p * offset + c
        index = (np.arange(layout.repeat)[:, None] * offset + index[None, :]).ravel()
    return index


def _config(layer: keras.layers.Layer, inputs: np.ndarray | None, outputs: np.ndarray | None):
    config = layer.get_config()
    if isinstance(layer, PRODUCERS) and outputs is not None:
        config["units" if isinstance(layer, keras.layers.Dense) else "filters"] = len(outputs)
    if isinstance(layer, keras.layers.MultiHeadAttention) and outputs is not None:
        config["num_heads"] = len(outputs)
    if isinstance(layer, keras.layers.Reshape) and inputs is not None:
        config["target_shape"] = (*config["target_shape"][:-1], len(inputs))
    return config


def _attribute(layer: keras.layers.Layer, path: str) -> Any:
    """`layer.a.b` for the path "a.b", or None."""
    for name in path.split("."):
        layer = getattr(layer, name, None)
    return layer


def _sliced(layer: keras.layers.Layer, inputs: np.ndarray | None, outputs: np.ndarray | None):
    """`{attribute: value}` of `layer`'s weights with the removed channels cut out."""

    def value(name: str) -> np.ndarray | None:
        variable = _attribute(layer, name)
        return None if variable is None else keras.ops.convert_to_numpy(variable)

    def cut(array: np.ndarray | None, index: np.ndarray | None, axis: int) -> np.ndarray | None:
        return array if array is None or index is None else np.take(array, index, axis=axis)

    if isinstance(layer, keras.layers.MultiHeadAttention):  # `outputs` are the heads kept
        sliced = {"output_dense.kernel": cut(value("output_dense.kernel"), outputs, 0)}
        sliced["output_dense.bias"] = value("output_dense.bias")
        for projection in ("query_dense", "key_dense", "value_dense"):
            sliced[f"{projection}.kernel"] = cut(value(f"{projection}.kernel"), outputs, 1)
            sliced[f"{projection}.bias"] = cut(value(f"{projection}.bias"), outputs, 0)
        return sliced
    if isinstance(layer, (*CONVOLUTIONS, keras.layers.Dense)):
        kernel = cut(cut(value("kernel"), inputs, -2), outputs, -1)
        return {"kernel": kernel, "bias": cut(value("bias"), outputs, 0)}
    if isinstance(layer, SEPARABLE):
        pointwise_inputs = inputs
        if inputs is not None:  # depthwise output m * c + j comes from input c
            m = layer.depth_multiplier
            pointwise_inputs = (inputs[:, None] * m + np.arange(m)[None, :]).ravel()
        pointwise = cut(cut(value("pointwise_kernel"), pointwise_inputs, -2), outputs, -1)
        return {
            "depthwise_kernel": cut(value("depthwise_kernel"), inputs, -2),
            "pointwise_kernel": pointwise,
            "bias": cut(value("bias"), outputs, 0),
        }
    if isinstance(layer, DEPTHWISE):
        return {"kernel": cut(value("kernel"), inputs, -2), "bias": cut(value("bias"), inputs, 0)}
    names = ("gamma", "beta", "moving_mean", "moving_variance")
    return {name: cut(value(name), inputs, 0) for name in names}


def rebuild(model: keras.Model, graph: Graph, keep: Keep) -> keras.Model:
    """`model` with the channels not in `keep` cut out of every layer (groups absent from `keep` stay whole)."""
    plans: dict[int, tuple[np.ndarray | None, np.ndarray | None]] = {}
    for layer, inputs, outputs in graph.calls.values():
        plans[id(layer)] = (indices(graph, inputs, keep), indices(graph, outputs, keep))
    for layer, group in graph.heads.values():
        plans[id(layer)] = (None, keep.get(graph.find(group)))
    pairs: list[tuple[keras.layers.Layer, keras.layers.Layer]] = []

    def clone_function(layer: keras.layers.Layer) -> keras.layers.Layer:
        inputs, outputs = plans.get(id(layer), (None, None))
        new = layer.__class__.from_config(_config(layer, inputs, outputs))
        pairs.append((layer, new))
        return new

    clone = keras.models.clone_model(model, clone_function=clone_function)
    for old, new in pairs:
        inputs, outputs = plans.get(id(old), (None, None))
        if inputs is None and outputs is None:
            new.set_weights(old.get_weights())
            continue
        sliced = {k: v for k, v in _sliced(old, inputs, outputs).items() if v is not None}
        if len(sliced) != len(old.weights):
            raise RuntimeError(
                f"cannot shrink `{old.name}`: it has weights other than {sorted(sliced)}"
            )
        for name, array in sliced.items():
            _attribute(new, name).assign(array)
    return clone

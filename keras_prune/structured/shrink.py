"""Removing whole channels: a smaller plain Keras model that runs faster everywhere.

`shrink(model, sparsity)` scores the channels of every removable group of
`model` (`structured.graph`) by the norm of their weights
(`structured.importance`), removes the lowest `sparsity` fraction of each
group, and rebuilds the model with smaller layers: Conv filters, Dense
and EinsumDense units, attention heads and the feed-forward units of
KerasHub transformer blocks, the matching inputs of the layers that read
them, and the Batch- and GroupNormalization and depthwise weights that carry
them (a GroupNormalization loses whole groups). The result holds
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
from collections.abc import Callable
from typing import Any

import keras
import numpy as np

from keras_prune import _keras, _validation, model_class, registry
from keras_prune._layer_copy import copy_layer, copy_weights
from keras_prune.selection import Selection, by_name
from keras_prune.structured import blocks, heads
from keras_prune.structured import importance as importance_lib
from keras_prune.structured.channel_mask import INNER, WRAPPING, ChannelMask, channel_masks
from keras_prune.structured.flatten import flatten
from keras_prune.structured.graph import (
    CONVOLUTIONS,
    DEPTHWISE,
    PRODUCERS,
    SEPARABLE,
    TRANSPOSED,
    Graph,
    Layout,
    analyse,
    check_model,
    chosen_groups,
    warn_left_whole,
)
from keras_prune.wrapper import PruneLowMagnitude, rewound

Keep = dict[int, np.ndarray]  # root group -> indices of its channels that stay


def shrink(
    model: keras.Model,
    sparsity: float | None = None,
    *,
    importance: importance_lib.Importance = "l2",
    round_to: int = 1,
    global_pruning: bool = False,
    select: Any = None,
) -> keras.Model:
    """Removes whole channels of `model`: those its masks removed, or the least important at once.

    Args:
        model: a built Functional or Sequential model: one that
            `prune_channels` made and trained (its masked channels go), or
            any trained model not pruned by weights (call `strip_pruning`
            first), whose channels `shrink` scores and removes at once.
        sparsity: None for a model from `prune_channels`; else the fraction
            of each group's channels to remove, in [0, 1).
        importance: "l2" or "l1" (the norm of a channel's kernel weights),
            or a callable (see `structured.importance`).
        round_to: keep a multiple of this many channels in each group (and
            at least this many), e.g. 8 for the kernels of most CPUs and GPUs.
        global_pruning: False removes `sparsity` of each group's channels;
            True removes `sparsity` of all channels together, those with
            the lowest score divided by their group's mean score (so layers
            that matter less lose more; see `structured.importance`).
        select: with `sparsity`, the groups to shrink, as `prune_channels`
            takes it: None (every group that can shrink), or layers by
            instance, name or class, a predicate `f(layer) -> bool`, or a
            list of these: the groups produced by a selected layer.

    Returns:
        A new plain Keras model with the same inputs and outputs, fewer
        channels, and `model`'s weights for those left. Uncompiled. A
        KerasHub backbone or task keeps its class where its config can say
        the new sizes (its blocks' feed-forward units); else a warning says
        it is returned as a plain graph.

    Raises:
        ValueError: if no channel of `model` can be removed (the message
            says why), or for an argument out of range.

    Groups that must keep their channels (a model output, a layer the graph
    walk does not know) are listed in one warning.
    """
    check_model(model)
    Selection(select)  # checks it before anything is copied
    importance = importance_lib.check(importance)
    round_to = _validation.count(round_to, "round_to", minimum=1)
    global_pruning = _validation.boolean(global_pruning, "global_pruning")
    if any(isinstance(layer, PruneLowMagnitude) for layer in _keras.flatten_layers(model)):
        raise ValueError(
            "`model` is pruned by weights (it has PruneLowMagnitude layers); call "
            "`keras_prune.strip_pruning(model)` first, then shrink the stripped model."
        )
    masks = channel_masks(model)
    if masks:
        if (
            sparsity is not None
            or importance != "l2"
            or round_to != 1
            or global_pruning
            or select is not None
        ):
            raise ValueError(
                f"`model` comes from prune_channels: its masks say which channels go, so "
                f"`sparsity`, `importance`, `round_to`, `global_pruning` and `select` must be "
                f"left out; got sparsity={sparsity!r}, importance={importance!r}, "
                f"round_to={round_to!r}, global_pruning={global_pruning!r}, select={select!r}."
            )
        quantized = registry.quantized_layers(model)
        if quantized:
            names = _validation.first_few(
                [f"`{q.name}` ({q.quantization_mode})" for q in quantized]
            )
            raise ValueError(
                f"`model` was quantized after prune_channels ({names}): shrink cuts float "
                "weights, so shrink the masked model first, then `model.quantize` the "
                "shrunk one."
            )
        message = rewound(masks, "shrink")
        if message:
            warnings.warn(message, UserWarning, stacklevel=2)
        return _shrink_masked(model, masks)
    if sparsity is None:
        raise ValueError(
            "`sparsity` is needed: `model` has no channel masks (it is not from "
            "prune_channels), so shrink scores its channels and removes this fraction of "
            "each group at once, e.g. `shrink(model, 0.5)`."
        )
    sparsity = _validation.sparsity(sparsity, "sparsity")
    source, model = model, flatten(model)
    if model is not source:  # its layers are copies, with the same names
        select = by_name(select, _keras.flatten_layers(source))
    graph = analyse(model)
    selection = Selection(select)
    chosen = chosen_groups(graph, selection, _keras.flatten_layers(model), "model", "shrink")
    removable = [root for root in graph.roots() if root in chosen]  # in graph order
    if selection.everything:
        warn_left_whole(graph)
    scores = [
        importance_lib.scores(importance, graph.groups[root].producers, graph.groups[root].size)
        for root in removable
    ]
    blocks = [graph.groups[root].block for root in removable]
    if global_pruning:
        kept = importance_lib.keep_global(scores, sparsity, round_to, blocks)
    else:
        kept = [importance_lib.keep(s, sparsity, round_to, b) for s, b in zip(scores, blocks)]
    keep: Keep = {
        root: k for root, k, s in zip(removable, kept, scores, strict=True) if len(k) < len(s)
    }
    return _with_class(source, rebuild(model, graph, keep), graph, keep)


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


def _config(
    layer: keras.layers.Layer,
    inputs: np.ndarray | None,
    outputs: np.ndarray | None,
    channels_first: bool,
):
    config = layer.get_config()
    if isinstance(layer, keras.layers.EinsumDense) and outputs is not None:  # `...x,xy->...y`
        shape = config["output_shape"]
        config["output_shape"] = (
            len(outputs) if isinstance(shape, int) else (*shape[:-1], len(outputs))
        )
    elif isinstance(layer, keras.layers.Embedding) and outputs is not None:
        config["output_dim"] = len(outputs)
    elif isinstance(layer, PRODUCERS) and outputs is not None:
        config["units" if isinstance(layer, keras.layers.Dense) else "filters"] = len(outputs)
    found_heads = heads.attention_heads(layer)
    if found_heads is not None and outputs is not None:
        config.update(found_heads.config(len(outputs)))
    found = blocks.feed_forward(layer)
    if found is not None and outputs is not None:
        config[found.key] = found.config_value(len(outputs))
    if isinstance(layer, keras.layers.GroupNormalization) and inputs is not None:
        (channels,) = layer.input_spec.axes.values()  # whole groups went (`ChannelGroup.block`)
        config["groups"] = len(inputs) // (channels // layer.groups)
    if isinstance(layer, keras.layers.Reshape) and inputs is not None:
        target = list(config["target_shape"])
        if channels_first:  # `Graph.channel_axis`, less the batch
            target[0] = len(inputs)
        else:  # the channels, or of a flattening Reshape every position that stays
            target[-1] = len(inputs if outputs is None else outputs)
        config["target_shape"] = tuple(target)
    return config


def _attribute(layer: keras.layers.Layer, path: str) -> Any:
    """`layer.a.b` for the path "a.b", or None."""
    for name in path.split("."):
        layer = getattr(layer, name, None)
    return layer


def _sliced(layer: keras.layers.Layer, inputs: np.ndarray | None, outputs: np.ndarray | None):
    """`{attribute: value}` of `layer`'s weights with the removed channels cut out."""

    def value(name: str | keras.Variable) -> np.ndarray | None:
        variable = _attribute(layer, name) if isinstance(name, str) else name
        return None if variable is None else keras.ops.convert_to_numpy(variable)

    def cut(array: np.ndarray | None, index: np.ndarray | None, axis: int) -> np.ndarray | None:
        return array if array is None or index is None else np.take(array, index, axis=axis)

    found = blocks.feed_forward(layer)
    found_heads = heads.attention_heads(layer)
    removed: dict[int, tuple[np.ndarray | None, int]] = {}
    if found is not None:  # `outputs` are the units kept
        removed = {id(found.outer.kernel): (outputs, 0)}
        for inner in found.inner:
            removed[id(inner.kernel)] = (outputs, 1)
            if getattr(inner, "bias", None) is not None:
                removed[id(inner.bias)] = (outputs, 0)
    elif found_heads is not None:  # `outputs` are the heads (key and value heads) kept
        query_heads = None if outputs is None else found_heads.query_heads(outputs)
        for projection, kept in (
            (found_heads.query, query_heads),
            (found_heads.key, outputs),
            (found_heads.value, outputs),
        ):
            removed[id(projection.kernel)] = (kept, 1)
            if projection.bias is not None:  # (heads, head size)
                removed[id(projection.bias)] = (kept, 0)
        removed[id(found_heads.output.kernel)] = (query_heads, 0)
    if found is not None or found_heads is not None:  # rebuilt alike: `set_weights` order
        return {
            variable.path: cut(value(variable), *removed.get(id(variable), (None, 0)))
            for variable in layer.weights
        }
    if isinstance(layer, keras.layers.Embedding):
        return {"embeddings": cut(value("embeddings"), outputs, -1)}
    if isinstance(layer, (*CONVOLUTIONS, keras.layers.Dense, keras.layers.EinsumDense)):
        kernel = cut(cut(value("kernel"), inputs, -2), outputs, -1)
        return {"kernel": kernel, "bias": cut(value("bias"), outputs, 0)}
    if isinstance(layer, TRANSPOSED):  # kernel `(*window, filters, input channels)`
        kernel = cut(cut(value("kernel"), inputs, -1), outputs, -2)
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
    if isinstance(layer, keras.layers.PReLU):  # slopes shared across channels stay
        alpha = value("alpha")
        return {"alpha": alpha if alpha.shape[-1] == 1 else cut(alpha, inputs, -1)}
    if isinstance(layer, DEPTHWISE):
        return {"kernel": cut(value("kernel"), inputs, -2), "bias": cut(value("bias"), inputs, 0)}
    names = ("gamma", "beta", "moving_mean", "moving_variance")
    return {name: cut(value(name), inputs, 0) for name in names}


def clone(
    model: keras.Model,
    configure: Callable[[keras.layers.Layer], dict[str, Any]],
    skip: Callable[[keras.layers.Layer], bool] = lambda layer: False,
    after: Callable[[keras.layers.Layer], keras.layers.Layer | None] = lambda layer: None,
    wrap: Callable[
        [keras.layers.Layer, keras.layers.Layer], keras.layers.Layer
    ] = lambda old, new: new,
) -> tuple[keras.Model, list[tuple[keras.layers.Layer, keras.layers.Layer]]]:
    """`model`'s graph with new layers made from `configure(layer)`, without the layers
    `skip` picks, each new layer called as `wrap(layer, new)`, and with the layer
    `after(layer)` (if any) called on each layer's output. A `HeadMask` or
    `FeedForwardMask` is cloned as the layer it wraps.

    Returns the new model and the `(old, new)` layer pairs, whose weights the
    caller sets.
    """
    pairs: list[tuple[keras.layers.Layer, keras.layers.Layer]] = []
    originals: dict[int, keras.layers.Layer] = {}

    def clone_function(layer: keras.layers.Layer) -> keras.layers.Layer:
        original = layer.layer if isinstance(layer, WRAPPING) else layer
        new = copy_layer(original, configure)
        if not skip(layer) and isinstance(original, keras.layers.Layer):  # not a GetItem
            pairs.append((original, new))
        new = wrap(original, new)
        originals[id(new)] = layer
        return new

    if isinstance(model, keras.Sequential):  # clone_model calls no call_function on these
        layers = []
        for layer in model.layers:
            if not skip(layer):
                layers.append(clone_function(layer))
                extra = after(layer)
                layers += [] if extra is None else [extra]
        source = model.inputs[0]
        inputs = keras.Input(batch_shape=source.shape, dtype=source.dtype)
        return keras.Sequential([inputs, *layers], name=model.name), pairs

    def call_function(layer: keras.layers.Layer, *args: Any, **kwargs: Any) -> Any:
        original = originals[id(layer)]
        if skip(original):
            return args[0]
        outputs = layer(*args, **kwargs)
        extra = after(original)
        return outputs if extra is None else extra(outputs)

    return keras.models.clone_model(
        model, clone_function=clone_function, call_function=call_function
    ), pairs


def rebuild(
    model: keras.Model,
    graph: Graph,
    keep: Keep,
    after: Callable[[keras.layers.Layer], keras.layers.Layer | None] = lambda layer: None,
    wrap: Callable[
        [keras.layers.Layer, keras.layers.Layer], keras.layers.Layer
    ] = lambda old, new: new,
) -> keras.Model:
    """`model` with the channels not in `keep` cut out of every layer (groups absent from
    `keep` stay whole), each new layer called as `wrap(layer, new)`, and
    `after(layer)` called on the output of each layer."""
    plans: dict[int, tuple[np.ndarray | None, np.ndarray | None]] = {}
    for layer, inputs, outputs in graph.calls.values():
        plans[id(layer)] = (indices(graph, inputs, keep), indices(graph, outputs, keep))
    for layer, group in graph.inner.values():
        plans[id(layer)] = (None, keep.get(graph.find(group)))

    def configure(layer: keras.layers.Layer) -> dict[str, Any]:
        return _config(layer, *plans.get(id(layer), (None, None)), graph.channels_first)

    result, pairs = clone(model, configure, after=after, wrap=wrap)
    for old, new in pairs:
        inputs, outputs = plans.get(id(old), (None, None))
        if inputs is None and outputs is None:
            copy_weights(old, new)
            continue
        sliced = {k: v for k, v in _sliced(old, inputs, outputs).items() if v is not None}
        if len(sliced) != len(old.weights):
            raise RuntimeError(
                f"cannot shrink `{old.name}`: it has weights other than {sorted(sliced)}"
            )
        if blocks.feed_forward(old) is not None or heads.attention_heads(old) is not None:
            # the same class, built alike: its weights in the same order
            new.set_weights(list(sliced.values()))
            continue
        for name, array in sliced.items():
            _attribute(new, name).assign(array)
    return result


def _unmasked(model: keras.Model) -> keras.Model:
    """`model` without its `ChannelMask` layers and with the layers its `HeadMask`s
    and `FeedForwardMask`s wrap unwrapped, with its weights."""
    result, pairs = clone(
        model,
        lambda layer: layer.get_config(),
        skip=lambda layer: type(layer) is ChannelMask,
    )
    for old, new in pairs:
        copy_weights(old, new)
    return result


def _shrink_masked(model: keras.Model, masks: list[ChannelMask]) -> keras.Model:
    """Removes the channels that `model`'s `ChannelMask` layers mask to 0."""
    plain = _unmasked(model)
    graph = analyse(plain)
    keep: Keep = {}
    for mask in masks:
        source = plain.get_layer(mask.source)
        if isinstance(mask, INNER):
            groups = (graph.find(graph.inner[id(source)][1]),)
        else:
            groups = graph.calls[id(source)][2].groups
        values = keras.ops.convert_to_numpy(mask.mask)
        start = 0
        for group in groups:
            size = graph.groups[group].size
            kept = np.flatnonzero(values[start : start + size])
            start += size
            if len(kept) == size:
                continue
            if group in keep and not np.array_equal(keep[group], kept):
                raise ValueError(
                    f"the masks of `model` disagree on the channels of one group ({mask.name} "
                    f"keeps {len(kept)}); it cannot be shrunk. Was a mask set by hand?"
                )
            keep[group] = kept
    return _with_class(model, rebuild(plain, graph, keep), graph, keep)


def _with_class(source: keras.Model, result: keras.Model, graph: Graph, keep: Keep) -> keras.Model:
    """`result` as an instance of `source`'s class where cloning lost it (a KerasHub
    backbone or task), re-created from its config with the blocks' smaller
    feed-forward size (`model_class.restore`). A class whose config cannot say
    what was removed (other channels, blocks of different sizes) gives a
    warning and the plain graph; a plain Functional or Sequential model stays one."""
    sizes = set()
    for layer, group in graph.inner.values():
        root = graph.find(group)
        found = blocks.feed_forward(layer)
        if root in keep and found is not None:
            old, new = graph.groups[root].size, len(keep[root])
            sizes.add((found.key, found.config_value(old), found.config_value(new)))

    def edit(config: Any) -> Any:
        if len(sizes) != 1:  # restore finds the variables differ, and says so
            return config
        ((key, old, new),) = sizes
        return _replaced(config, key, old, new)

    return model_class.restore(source, result, edit=edit, caller="shrink")


def _replaced(config: Any, key: str, old: int, new: int) -> Any:
    """`config` (nested dicts and lists) with every `key: old` set to `key: new`."""
    if isinstance(config, dict):
        return {
            k: new if k == key and v == old else _replaced(v, key, old, new)
            for k, v in config.items()
        }
    if isinstance(config, list):
        return [_replaced(v, key, old, new) for v in config]
    return config

"""One graph for a model that holds models: nested Functional and Sequential models inlined.

Transfer learning nests models: `keras.Sequential([keras.applications.
MobileNetV2(include_top=False, ...), GlobalAveragePooling2D(), Dense(10)])`.
The channels of the base's last convolution are read by the head's Dense,
so they can only be found and removed in one graph that holds both.
`flatten(model)` returns that graph: a Functional model whose layers are
copies of the nested models' layers (same names, configs and weights),
called where the nested models were, with the same predictions.

A layer called in several places (a causal LM's tied embedding, called by
the nested backbone and by the outer graph) is copied once and called in
each, so it stays shared. A nested model that is called more than once
stays nested (one copy, called twice), and the channel walk leaves it
whole; if such a model also shares a layer with the rest of the graph,
nothing is inlined, since its copy would no longer share that layer.

Example:

```python
base = keras.applications.MobileNetV2(weights=None, include_top=False, input_shape=(96, 96, 3))
model = keras.Sequential([keras.Input((96, 96, 3)), base, keras.layers.GlobalAveragePooling2D(),
                          keras.layers.Dense(10)])
[layer.name for layer in flatten(model).layers][:3]   # ['input_layer', 'Conv1', 'bn_Conv1']
```
"""

from __future__ import annotations

import collections
from typing import Any

import keras

from keras_prune import _keras
from keras_prune._layer_copy import copy_layer, copy_weights


def _graph_models(model: keras.Model) -> list[keras.Model]:
    """The Functional and Sequential models called directly in `model`'s graph."""
    return [layer for layer in model.layers if _keras.has_graph(layer)]


def inlinable(model: keras.Model) -> list[keras.Model]:
    """The nested models that `flatten` may inline: those called once."""
    calls = collections.Counter(id(op) for op, _, _ in _keras.graph_calls(model))
    return [nested for nested in _graph_models(model) if calls[id(nested)] == 1]


def flatten(model: keras.Model) -> keras.Model:
    """`model` as one Functional graph, or `model` itself if it nests no model to inline.

    Raises ValueError if two inlined layers would have the same name.
    """
    inline = _inlined(model)
    layers = _flat_layers(model, inline)
    if not inline or _would_untie(layers):
        return model
    ids_by_name = collections.defaultdict(set)
    for layer in layers:
        ids_by_name[layer.name].add(id(layer))
    twice = sorted(name for name, ids in ids_by_name.items() if len(ids) > 1)
    if twice:
        raise ValueError(
            f"`{model.name}` nests models whose layers share names ({', '.join(twice)}); "
            "channel pruning inlines nested models into one graph, which needs unique "
            "names. Rename those layers (e.g. build the nested model with `name=` prefixes)."
        )
    # id(layer) -> (layer, its copy): one copy per layer, however often called.
    copies: dict[int, tuple[keras.layers.Layer, keras.layers.Layer]] = {}

    def call(layer: keras.layers.Layer, *args: Any, **kwargs: Any) -> Any:
        if id(layer) in inline:  # its graph, on the tensors it was called on
            return _keras.run_graph(layer, _fed_inputs(layer, args, kwargs), call)
        if id(layer) not in copies:
            copies[id(layer)] = (layer, copy_layer(layer))
        return copies[id(layer)][1](*args, **kwargs)

    inputs = [keras.Input(batch_shape=x.shape, dtype=x.dtype, name=x.name) for x in model.inputs]
    outputs = _keras.run_graph(model, inputs, call)
    structure = _input_structure(model)
    flat = keras.Model(keras.tree.pack_sequence_as(structure, inputs), outputs, name=model.name)
    for old, new in copies.values():
        if isinstance(old, keras.layers.Layer):  # not an operation such as `x[:, 0]`
            copy_weights(old, new)
    return flat


def _input_structure(model: keras.Model) -> Any:
    """The Keras tensors `model` was built on, in the structure it is called with
    (a Sequential model's `input` is that of its last call, not its own)."""
    return model.inputs[0] if isinstance(model, keras.Sequential) else model.input


def _fed_inputs(model: keras.Model, args: Any, kwargs: dict[str, Any]) -> list[Any]:
    """The tensors a call `model(*args, **kwargs)` feeds to each of `model.inputs`, in order.

    A dict of inputs is matched by key, not by flattening the call's
    arguments: on torch, `keras.tree.flatten` sorts a dict's keys only at
    the top of a structure (Keras 3.15; keras-team/keras#23201), so a
    backbone called as `backbone(inputs={...})` (Gemma3CausalLM) had its
    inputs swapped.
    """
    fed: dict[int, Any] = {}

    def pair(expected: Any, given: Any) -> None:
        if isinstance(expected, dict):
            for key, value in expected.items():
                pair(value, given[key])
        elif isinstance(expected, (list, tuple)):
            for e, g in zip(expected, given, strict=True):
                pair(e, g)
        else:
            fed[id(expected)] = given

    pair(_input_structure(model), args[0] if args else kwargs["inputs"])
    return [fed[id(tensor)] for tensor in model.inputs]


def _inlined(model: keras.Model) -> set[int]:
    """`id` of every model `flatten` inlines: `inlinable` ones, and theirs, at any depth."""
    result = set()
    for nested in inlinable(model):
        result |= {id(nested)} | _inlined(nested)
    return result


def _flat_layers(model: keras.Model, inline: set[int]) -> list[keras.layers.Layer]:
    """The layers `flatten(model)` holds besides its inputs (a shared one once per place)."""
    layers = []
    for layer in model.layers:
        if id(layer) in inline:
            layers += _flat_layers(layer, inline)
        elif not isinstance(layer, keras.layers.InputLayer):
            layers.append(layer)
    return layers


def _would_untie(layers: list[keras.layers.Layer]) -> bool:
    """Whether a nested model that stays nested shares a layer with the other `layers`:
    its copy (made from its config) would hold a layer of its own instead."""
    places = collections.Counter()
    kept_nested = []  # the layers of each nested model that stays nested
    for layer in {id(layer): layer for layer in layers}.values():
        inner = []
        if _keras.has_graph(layer):
            inner = [
                id(x)
                for x in _keras.flatten_layers(layer)
                if not isinstance(x, keras.layers.InputLayer)
            ]
            kept_nested.append(inner)
        places.update({id(layer), *inner})
    return any(places[i] > 1 for inner in kept_nested for i in inner)

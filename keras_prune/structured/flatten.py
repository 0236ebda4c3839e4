"""One graph for a model that holds models: nested Functional and Sequential models inlined.

Transfer learning nests models: `keras.Sequential([keras.applications.
MobileNetV2(include_top=False, ...), GlobalAveragePooling2D(), Dense(10)])`.
The channels of the base's last convolution are read by the head's Dense,
so they can only be found and removed in one graph that holds both.
`flatten(model)` returns that graph: a Functional model whose layers are
copies of the nested models' layers (same names, configs and weights),
called where the nested models were, with the same predictions.

A nested model that is called more than once (weights shared between two
branches) or whose layers also appear elsewhere stays nested, since copies
would no longer share weights; the channel walk then leaves it whole.

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


def _graph_models(model: keras.Model) -> list[keras.Model]:
    """The Functional and Sequential models called directly in `model`'s graph."""
    return [layer for layer in model.layers if _keras.has_graph(layer)]


def inlinable(model: keras.Model) -> list[keras.Model]:
    """The nested models that `flatten` inlines: called once, sharing no layer with the rest."""
    calls = collections.Counter(id(op) for op, _, _ in _keras.graph_calls(model))
    owners = collections.Counter(id(layer) for layer in _keras.flatten_layers(model))
    return [
        nested
        for nested in _graph_models(model)
        if calls[id(nested)] == 1
        and all(owners[id(layer)] == 1 for layer in _keras.flatten_layers(nested))
    ]


def flatten(model: keras.Model) -> keras.Model:
    """`model` as one Functional graph, or `model` itself if it nests no model to inline.

    Raises ValueError if two inlined layers would have the same name.
    """
    inline = _inlined(model)
    if not inline:
        return model
    names = collections.Counter(_flat_names(model, inline))
    twice = sorted(name for name, count in names.items() if count > 1)
    if twice:
        raise ValueError(
            f"`{model.name}` nests models whose layers share names ({', '.join(twice)}); "
            "channel pruning inlines nested models into one graph, which needs unique "
            "names. Rename those layers (e.g. build the nested model with `name=` prefixes)."
        )
    pairs: list[tuple[keras.layers.Layer, keras.layers.Layer]] = []

    def call(layer: keras.layers.Layer, *args: Any, **kwargs: Any) -> Any:
        if id(layer) in inline:  # its graph, on the tensors it was called on
            return _keras.run_graph(layer, keras.tree.flatten((args, kwargs)), call)
        new = layer.__class__.from_config(layer.get_config())
        pairs.append((layer, new))
        return new(*args, **kwargs)

    inputs = [keras.Input(batch_shape=x.shape, dtype=x.dtype, name=x.name) for x in model.inputs]
    outputs = _keras.run_graph(model, inputs, call)
    structure = model.inputs[0] if isinstance(model, keras.Sequential) else model.input
    flat = keras.Model(keras.tree.pack_sequence_as(structure, inputs), outputs, name=model.name)
    for old, new in pairs:
        new.set_weights(old.get_weights())
    return flat


def _inlined(model: keras.Model) -> set[int]:
    """`id` of every model `flatten` inlines: `inlinable` ones, and theirs, at any depth."""
    result = set()
    for nested in inlinable(model):
        result |= {id(nested)} | _inlined(nested)
    return result


def _flat_names(model: keras.Model, inline: set[int]) -> list[str]:
    """The names of the layers `flatten(model)` holds besides its inputs."""
    names = []
    for layer in model.layers:
        if id(layer) in inline:
            names += _flat_names(layer, inline)
        elif not isinstance(layer, keras.layers.InputLayer):
            names.append(layer.name)
    return names

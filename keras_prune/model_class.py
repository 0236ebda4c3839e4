"""A model's own class, kept across pruning for models that cloning turns into `Functional`.

`keras.models.clone_model`, which `prune_low_magnitude` and `strip_pruning`
use for graph models, returns a plain `Functional` model for a subclass of
it whose constructor does not take `inputs` and `outputs`: a KerasHub
backbone or task (`GPT2CausalLM(backbone, preprocessor)`). The pruned model
trains like the original, but stripping it would give back a `Functional`
without the task's methods (`generate`, its preprocessor), and Keras cannot
load a `.keras` file of that plain graph when it shares a layer with a nested
model (a causal LM's tied output embedding).

So `prune_low_magnitude` returns such a model as a `PrunedGraph`: the same
graph, which also carries the original's serialized class and config, in
memory and in its `.keras` files, and the layers its graph shares with a
nested model, which it revives as one layer where Keras would revive two.
`strip_pruning` re-creates that class from it (`restore`) and gives it the
stripped weights, checked variable by variable. A KerasHub task's
preprocessor keeps its vocabulary as a file asset, not in its config: the
stripped task gets the original preprocessor object when it is stripped in
the process that pruned it, and none after a `.keras` round trip of the
pruned model (attach one with `task.preprocessor = ...`). `prune_channels`
and `shrink` do the same, the class re-created with the smaller sizes
`shrink` gives its config.

Example:

```python
pruned = keras_prune.prune_low_magnitude(causal_lm)   # a PrunedGraph
...                                                   # fit, save, load, resume
lm = keras_prune.strip_pruning(pruned)                # a GPT2CausalLM again
lm.generate(...)
```
"""

from __future__ import annotations

import copy
import json
import warnings
import weakref
from collections.abc import Callable
from typing import Any

import keras

from keras_prune import _keras

# A KerasHub task's preprocessor, by the PrunedGraph pruned from the task.
_PREPROCESSORS: weakref.WeakKeyDictionary[keras.Model, Any] = weakref.WeakKeyDictionary()


@keras.saving.register_keras_serializable("keras_prune")
class PrunedGraph(keras.Model):
    """A graph model pruned from a `Functional` subclass whose class cloning lost.

    Keras revives it as a graph model (its constructor takes `inputs` and
    `outputs`, as `keras.Model`'s does); `origin` is the original model's
    `keras.saving.serialize_keras_object` as JSON, kept in its config.
    """

    def __init__(self, inputs: Any, outputs: Any, name: str | None = None, **kwargs: Any):
        origin = kwargs.pop("origin", None)
        super().__init__(inputs, outputs, name=name, **kwargs)
        self.origin = origin

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "origin": self.origin, "shared": _shared_layers(self)}

    @classmethod
    def from_config(cls, config: dict[str, Any], custom_objects: Any = None) -> PrunedGraph:
        """Revives the graph with the layers it shares with its nested models shared again.

        Keras's graph config lists such a layer twice, once in the nested
        model and once in the outer graph (a causal LM's tied embedding), and
        would revive two layers; their weights are saved once. Each copy in the
        outer graph is revived as the nested model's own layer instead.
        """
        config = copy.deepcopy(config)
        shared = config.pop("shared", None) or {}
        if not shared:
            return super().from_config(config, custom_objects=custom_objects)
        references = [*(e.get("inbound_nodes") for e in config["layers"]), config["output_layers"]]
        entries = {entry["name"]: entry for entry in config["layers"]}
        records = {model: _Record(entries[model], custom_objects) for model, _ in shared.values()}
        objects = dict(custom_objects or {})
        for i, entry in enumerate(config["layers"]):
            name = entry["name"]
            key = f"keras_prune>revived:{name}"
            if name in shared:
                model, layer = shared[name]
                objects[key] = _Reuse(records[model], layer, references)
            elif name in records:
                objects[key] = records[name]
            else:
                continue
            config["layers"][i] = {
                **entry,
                "module": None,
                "class_name": key,
                "registered_name": key,
            }
        return super().from_config(config, custom_objects=objects)


class _Record:
    """A nested model's config entry, revived once, when Keras or a `_Reuse` first asks."""

    def __init__(self, entry: dict[str, Any], objects: Any):
        self.entry, self.objects, self.model = entry, objects, None

    def from_config(self, config: dict[str, Any] | None = None) -> keras.Model:
        if self.model is None:
            self.model = keras.saving.deserialize_keras_object(
                self.entry, custom_objects=self.objects
            )
        return self.model


class _Reuse:
    """An outer graph's copy of a nested model's layer: that layer itself.

    The layer already has its calls inside the nested model; the outer
    graph's config numbers the layer's calls from 0, so every reference to
    them in `references` (the graph config's node lists) moves past those.
    """

    def __init__(self, record: _Record, layer: str, references: Any):
        self.record, self.layer, self.references = record, layer, references

    def from_config(self, config: dict[str, Any]) -> keras.layers.Layer:
        model = self.record.from_config()
        for layer in _keras.flatten_layers(model):
            if layer.name == self.layer:
                _shift_calls(self.references, self.layer, _keras.call_count(layer))
                return layer
        raise ValueError(f"The nested model {model.name!r} has no layer {self.layer!r}.")


def _shift_calls(data: Any, name: str, by: int) -> None:
    """Adds `by` to the call index of every reference to layer `name` in a graph config:
    `keras_history` of a serialized tensor, or a `[name, call, tensor]` leaf."""
    if isinstance(data, dict):
        history = data.get("keras_history")
        if isinstance(history, list) and history and history[0] == name:
            history[1] += by
        for key, value in data.items():
            if key != "keras_history":
                _shift_calls(value, name, by)
    elif isinstance(data, list) and len(data) == 3 and data[0] == name and type(data[1]) is int:
        data[1] += by
    elif isinstance(data, (list, tuple)):
        for value in data:
            _shift_calls(value, name, by)


def _shared_layers(model: keras.Model) -> dict[str, list[str]]:
    """{outer layer name: [nested model name, layer name]} for each layer with weights
    of `model`'s graph that is also a layer of one of its nested models."""
    inside = {}
    for nested in model.layers:
        if isinstance(nested, keras.Model):
            for layer in _keras.flatten_layers(nested):
                inside.setdefault(id(layer), [nested.name, layer.name])
    return {
        layer.name: inside[id(layer)]
        for layer in model.layers
        if not isinstance(layer, keras.Model) and layer.weights and id(layer) in inside
    }


def remember(
    original: keras.Model, pruned: keras.Model, cls: type[PrunedGraph] = PrunedGraph
) -> keras.Model:
    """`pruned`, or the same graph as a `cls` (a `PrunedGraph`) noting the class that
    cloning lost."""
    origin = _origin(original, pruned)
    if origin is None:
        return pruned
    graph = cls(pruned.input, pruned.output, name=pruned.name, origin=origin)
    preprocessor = _PREPROCESSORS.get(original, getattr(original, "preprocessor", None))
    if preprocessor is not None:
        _PREPROCESSORS[graph] = preprocessor
    return graph


def recreate(model: keras.Model) -> keras.Model | None:
    """A new instance of `model`'s class (for a `PrunedGraph`: the class it was pruned
    from) made from its config, with new weights; None for a model whose class
    takes `inputs` and `outputs` (its config is its layers') or whose config fails."""
    try:
        if isinstance(model, PrunedGraph):
            return from_origin(model.origin) if model.origin else None
        if _keras.is_functional(model) and not _keras.is_plain_graph(model):
            return from_origin(json.dumps(_serialized(model)))
        return None
    except Exception:  # the class's own get_config or from_config; the caller says what failed
        return None


def from_origin(
    origin: str, edit: Callable[[dict[str, Any]], dict[str, Any]] | None = None
) -> keras.Model:
    """A new instance of the class and config `origin` holds (as JSON), the
    config changed by `edit` if given.

    Uncompiled, as a plain graph would be (and without Keras's warning that
    a KerasHub task's custom `compile` was not called).
    """
    serialized = json.loads(origin)
    serialized.pop("compile_config", None)
    return keras.saving.deserialize_keras_object(edit(serialized) if edit else serialized)


def _serialized(model: keras.Model) -> dict[str, Any]:
    """`model` serialized as Keras saves it, less its preprocessor (an asset, see above)."""
    serialized = keras.saving.serialize_keras_object(model)
    if serialized["config"].get("preprocessor") is not None:
        serialized["config"]["preprocessor"] = None
    return serialized


def _origin(original: keras.Model, clone: keras.Model) -> str | None:
    """The serialized class and config of `original` when `clone` lost its class
    (passed on from a `PrunedGraph`), else None."""
    if isinstance(original, PrunedGraph):
        return original.origin
    if not _keras.is_functional(original) or type(clone) is type(original):
        return None
    try:
        return json.dumps(_serialized(original))
    except (TypeError, ValueError) as error:  # a config Keras could not save either
        warnings.warn(
            f"strip_pruning will return a plain graph model for {original.name!r}: the "
            f"config of its class {type(original).__name__} is not JSON ({error}).",
            stacklevel=4,
        )
        return None


def restore(
    pruned: keras.Model,
    stripped: keras.Model,
    edit: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    caller: str = "strip_pruning",
) -> keras.Model:
    """`stripped` as an instance of the class noted on `pruned` (or of `pruned`'s own class).

    The class is re-created from the noted config, changed by `edit` if
    given (`shrink` gives its smaller sizes), and must have the same
    variables as `stripped` (names and shapes, in order). Where it cannot,
    a warning from `caller` says why and the plain graph of `stripped` is
    returned.
    """
    origin = _origin(pruned, stripped)
    if origin is None:
        return plain(stripped)
    name = json.loads(origin).get("class_name", "the original class")
    try:
        model = from_origin(origin, edit)
    except Exception as error:  # the class's own from_config, or a package not installed
        warnings.warn(
            f"{caller} returns a plain graph model: {name} could not be re-created "
            f"from its config ({type(error).__name__}: {error}).",
            stacklevel=4,
        )
        return plain(stripped)
    # By position, as set_weights assigns them: a new instance names the
    # layers its constructor leaves unnamed anew (dense_7/kernel).
    expected = [(v.name, tuple(v.shape)) for v in stripped.weights]
    got = [(v.name, tuple(v.shape)) for v in model.weights]
    if got != expected:
        at = next((i for i, (e, g) in enumerate(zip(expected, got)) if e != g), None)
        if at is None:
            detail = f"{len(expected)} variables against {len(got)}"
        else:
            detail = f"{stripped.weights[at].path} {expected[at][1]} against {got[at][1]}"
        warnings.warn(
            f"{caller} returns a plain graph model: a {name} re-created from its config "
            f"does not have the variables of the model it returns ({detail}).",
            stacklevel=4,
        )
        return plain(stripped)
    model.set_weights(stripped.get_weights())
    preprocessor = _PREPROCESSORS.get(pruned, getattr(pruned, "preprocessor", None))
    if preprocessor is not None:
        model.preprocessor = preprocessor
    return model


def plain(model: keras.Model) -> keras.Model:
    """`model`, or for a `PrunedGraph` a `keras.Model` of the same graph (which loads
    without keras_prune)."""
    if isinstance(model, PrunedGraph):
        return keras.Model(model.input, model.output, name=model.name)
    return model

"""Layers copied from their own config, and the error that names one that cannot be.

Every model keras_prune returns is new: pruning, stripping, channel pruning
and shrinking copy each layer as `type(layer).from_config(layer.get_config())`,
as `keras.models.clone_model` does. A layer whose config cannot re-create it
(KerasHub 0.32's `LlamaTransformerDecoder`, whose `get_config` reads an
attribute it never sets) raises `NotRecreatable`, a ValueError that names the
layer and the error its class raised. `copy_weights` then gives the copy the
original's weights (and an adapted lookup layer's vocabulary), or names the
layer whose config lost some of them.

Example:

```python
original = keras.layers.Dense(4, name="head")
original.build((None, 3))
head = copy_layer(original)    # a new, unbuilt Dense named "head"
head.build((None, 3))
copy_weights(original, head)   # original's kernel and bias, or an error naming what head lacks
```
"""

from __future__ import annotations

import collections
import os
import tempfile
from collections.abc import Callable
from typing import Any

import keras

from keras_prune import _keras


class NotRecreatable(ValueError):
    """A layer that cannot be re-created from its own config; `reason` says which and why."""

    def __init__(self, layer: Any, error: BaseException):
        root = error  # Keras wraps a from_config error in one that repeats the whole config
        while root.__cause__ or root.__context__:
            root = root.__cause__ or root.__context__
        self.layer, self.error = layer, error
        self.reason = (
            f"layer {layer.name!r} ({type(layer).__name__}) cannot be re-created from its "
            f"config ({type(root).__name__}: {root})"
        )
        super().__init__(
            f"The {self.reason}; keras_prune copies each layer of a model it returns from "
            "the layer's config. Fix the layer's get_config() or from_config()."
        )


def copy_layer(
    layer: Any, configure: Callable[[Any], dict[str, Any]] | None = None
) -> keras.layers.Layer:
    """A new layer of `layer`'s class from `configure(layer)` (default: its own config)."""
    try:
        config = configure(layer) if configure else layer.get_config()
        if isinstance(layer, keras.layers.Lambda):
            # Its config holds the bytecode of a Python lambda, which
            # `from_config` refuses in safe mode, a guard against untrusted
            # files; this copy re-creates the user's own function in memory.
            return layer.__class__.from_config(config, safe_mode=False)
        return layer.__class__.from_config(config)
    except Exception as error:  # the layer's own get_config, from_config or __init__
        raise NotRecreatable(layer, error) from error


def copy_weights(source: keras.layers.Layer, copy: keras.layers.Layer, values: Any = None) -> None:
    """Sets the weights of `copy`, a built copy of `source`, to `values` (default:
    `source.get_weights()`), which are in the order of `source.weights`.

    Raises:
        ValueError: naming `source` and the weights the copy lacks, when
            `source`'s config does not record all of its state (a sublayer
            with LoRA enabled, which its parent's config does not carry).
    """
    values = source.get_weights() if values is None else values
    if len(copy.weights) != len(values):
        raise ValueError(_lost_in_copy(source, copy))
    copy.set_weights(values)
    _copy_assets(source, copy)


def asset_files(layer: keras.layers.Layer) -> dict[str, bytes]:
    """The files `layer.save_assets` writes, by name: the state it keeps outside
    its weights and config (an adapted `StringLookup`'s or `TextVectorization`'s
    vocabulary); empty for a layer without any. Sublayers are not included."""
    if not hasattr(layer, "save_assets"):
        return {}
    files = {}
    with tempfile.TemporaryDirectory() as directory:
        layer.save_assets(directory)
        for name in sorted(os.listdir(directory)):
            with open(os.path.join(directory, name), "rb") as handle:
                files[name] = handle.read()
    return files


def load_asset_files(layer: keras.layers.Layer, files: dict[str, bytes]) -> None:
    """Gives `layer` the `files` of `asset_files`, through its `load_assets`."""
    with tempfile.TemporaryDirectory() as directory:
        for name, content in files.items():
            if os.path.basename(name) != name or name in ("", ".", ".."):
                raise ValueError(f"An asset file name must not hold a path; got {name!r}.")
            with open(os.path.join(directory, name), "wb") as handle:
                handle.write(content)
        layer.load_assets(directory)


def _copy_assets(source: keras.layers.Layer, copy: keras.layers.Layer) -> None:
    """Moves the assets of `source` and of every layer inside it, as a `.keras`
    file does; without them an adapted lookup layer's copy has an empty table."""
    pairs = zip(
        _keras.flatten_layers(source, include_self=True),
        _keras.flatten_layers(copy, include_self=True),
    )
    for inner, inner_copy in pairs:
        files = asset_files(inner)
        if files:
            if type(inner_copy) is not type(inner):
                raise ValueError(
                    f"Layer {source.name!r}'s copy holds {inner_copy.name!r} "
                    f"({type(inner_copy).__name__}) where it holds {inner.name!r} "
                    f"({type(inner).__name__}): its config does not re-create its sublayers."
                )
            load_asset_files(inner_copy, files)


def _lost_in_copy(source: keras.layers.Layer, copy: keras.layers.Layer) -> str:
    lacks = collections.Counter(w.name for w in source.weights)
    lacks.subtract(w.name for w in copy.weights)
    missing = sorted(name for name, count in lacks.items() if count > 0)
    message = (
        f"Layer {source.name!r} ({type(source).__name__}) has {len(source.weights)} weights, "
        f"but the copy that its config makes has {len(copy.weights)}: its config does not "
        "record all of its state"
    )
    if missing:
        message += f" (the copy lacks {', '.join(missing)})"
    if any(name.startswith("lora_") for name in missing):
        message += (
            "; LoRA was enabled in it, e.g. by a KerasHub backbone's `enable_lora`, which its "
            "sublayers' configs do not carry: prune or shrink the model without LoRA"
        )
    return message + "."

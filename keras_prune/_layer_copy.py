"""Layers copied from their own config, and the error that names one that cannot be.

Every model keras_prune returns is new: pruning, stripping, channel pruning
and shrinking copy each layer as `type(layer).from_config(layer.get_config())`,
as `keras.models.clone_model` does. A layer whose config cannot re-create it
(KerasHub 0.32's `LlamaTransformerDecoder`, whose `get_config` reads an
attribute it never sets) raises `NotRecreatable`, a ValueError that names the
layer and the error its class raised.

Example:

```python
head = copy_layer(keras.layers.Dense(4, name="head"))   # a new, unbuilt Dense named "head"
```
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import keras


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
        return layer.__class__.from_config(config)
    except Exception as error:  # the layer's own get_config, from_config or __init__
        raise NotRecreatable(layer, error) from error

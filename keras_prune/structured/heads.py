"""The attention heads that channel pruning removes from Keras's attention layers.

A `MultiHeadAttention`'s head has its own query, key and value projections
and its rows of the output projection: removing head `h` removes them, and
`num_heads` shrinks. A `GroupQueryAttention` shares each key and value head
among `r = num_query_heads // num_key_value_heads` query heads (query head
`q` reads key and value head `q // r`), so its channels are those groups:
removing group `g` removes key and value head `g`, query heads `g * r` to
`g * r + r - 1` and their rows of the output projection; both head counts
shrink and their ratio stays. The layer's input and output widths stay.

A removed head adds nothing to the output once its value projection
(kernel and bias) reads 0, which is how a `HeadMask` masks it. A layer
with a gate (`use_gate=True`) multiplies each head's output by a gate of
its own, and is not known here.

Example:

```python
layer = keras.layers.GroupQueryAttention(8, num_query_heads=4, num_key_value_heads=2)
layer(x, x)
found = heads.attention_heads(layer)   # an AttentionHeads, or None
found.count, found.per_group             # (2, 2): two groups of two query heads
```
"""

from __future__ import annotations

import dataclasses
from typing import Any

import keras
import numpy as np

from keras_prune import _keras


@dataclasses.dataclass(frozen=True)
class AttentionHeads:
    """The projections of an attention layer and how its heads sit in their kernels.

    Args:
        query, key, value, output: the four `EinsumDense` projections.
        count: the channels: heads, or key and value heads.
        per_group: the query heads per channel (1 in a MultiHeadAttention).
        grouped: whether the layer is a GroupQueryAttention.
    """

    query: keras.layers.Layer
    key: keras.layers.Layer
    value: keras.layers.Layer
    output: keras.layers.Layer
    count: int
    per_group: int
    grouped: bool

    def query_heads(self, kept: np.ndarray) -> np.ndarray:
        """The query heads of the channels `kept` (indices), in order."""
        r = self.per_group
        return (np.asarray(kept)[:, None] * r + np.arange(r)[None, :]).ravel()

    def config(self, kept: int) -> dict[str, int]:
        """The layer's config entries for `kept` channels."""
        if self.grouped:
            return {"num_query_heads": kept * self.per_group, "num_key_value_heads": kept}
        return {"num_heads": kept}

    def kernel_axes(self) -> list[tuple[keras.Variable, int, int]]:
        """(kernel, axis of its heads, heads per channel) of each projection."""
        r = self.per_group
        return [
            (self.query.kernel, 1, r),
            (self.key.kernel, 1, 1),
            (self.value.kernel, 1, 1),
            (self.output.kernel, 0, r),
        ]


ATTENTION = (keras.layers.MultiHeadAttention, keras.layers.GroupQueryAttention)
"""The attention layers whose heads this module knows."""


def head_counts(layer: keras.layers.Layer) -> tuple[int, int]:
    """(channels, query heads per channel) of a MultiHeadAttention or
    GroupQueryAttention, from its config (built or not)."""
    if isinstance(layer, keras.layers.GroupQueryAttention):
        return layer.num_key_value_heads, layer.num_query_heads // layer.num_key_value_heads
    return layer.num_heads, 1


def projections(layer: keras.layers.Layer) -> tuple[keras.layers.Layer, ...] | None:
    """The query, key, value and output `EinsumDense` of a built MultiHeadAttention
    or GroupQueryAttention, gated or not (without the checks of
    `attention_heads`: for a forward pass or a count); None before it is built."""
    if not layer.built:
        return None
    if isinstance(layer, keras.layers.GroupQueryAttention):
        return _keras.grouped_query_projections(layer)
    return (layer.query_dense, layer.key_dense, layer.value_dense, layer.output_dense)


def attention_heads(layer: Any) -> AttentionHeads | None:
    """`layer`'s heads if it is a built `MultiHeadAttention` or `GroupQueryAttention`
    (not a subclass, which may compute something else) without a gate, whose
    kernels hold its heads where Keras puts them; else None."""
    if type(layer) not in ATTENTION or layer.get_config().get("use_gate"):
        return None
    found_projections = projections(layer)
    if found_projections is None:
        return None
    count, per_group = head_counts(layer)
    grouped = type(layer) is keras.layers.GroupQueryAttention
    found = AttentionHeads(*found_projections, count=count, per_group=per_group, grouped=grouped)
    for kernel, axis, per in found.kernel_axes():
        if len(kernel.shape) != 3 or kernel.shape[axis] != count * per:
            return None
    return found

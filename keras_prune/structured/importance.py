"""How much each channel of a group matters: the norm of the weights that produce it.

A channel's weights are its slice of every producer's kernel (a Conv
filter, a Dense column, a SeparableConv's pointwise filter, an attention
head's query, key, value and output kernels, a transformer block's
feed-forward unit: its columns of the first kernels and row of the last);
biases and normalisation weights do not count. "l2" scores channel `c` of a group
with producers `k_1..k_n` as `sqrt(sum_i ||k_i[..., c]||^2)`, "l1" as
`sum_i |k_i[..., c]|_1`. A callable receives one `(channels, fan_in)`
array per producer and returns one score per channel: numpy arrays in
`scores` (one-shot), float32 tensors inside `prune_channels`' train step
(`ChannelMask`).

Groups are pruned each to the sparsity (`keep`), or, with global pruning,
to one threshold over all of them (`keep_global`): a group's scores are
divided by their mean first, so that layers whose weights differ in scale
compete fairly (as Torch-Pruning's "mean" normaliser does).

Example:

```python
scores = importance.scores("l2", [(conv, 0)], conv.filters)
keep = importance.keep(scores, sparsity=0.5, round_to=8)
```
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import keras
import numpy as np
from keras import ops

from keras_prune.structured import blocks, heads

Importance = str | Callable[[list[np.ndarray]], Any]
NAMES = ("l1", "l2")


def check(importance: Any) -> Importance:
    """Returns `importance` if it is "l1", "l2" or a callable, else raises naming it."""
    if callable(importance):
        return importance
    if not isinstance(importance, str):
        raise TypeError(
            f"`importance` must be 'l1', 'l2' or a callable; got {importance!r} of type "
            f"{type(importance).__name__}."
        )
    if importance not in NAMES:
        raise ValueError(f"`importance` must be 'l1', 'l2' or a callable; got {importance!r}.")
    return importance


def kernel(layer: keras.layers.Layer) -> keras.Variable:
    """The kernel that holds a producer's output channels (a SeparableConv's pointwise
    kernel, an Embedding's table), on its last axis (`output_axis`)."""
    if isinstance(layer, keras.layers.Embedding):
        return layer.embeddings
    return layer.pointwise_kernel if hasattr(layer, "pointwise_kernel") else layer.kernel


def output_axis(layer: keras.layers.Layer) -> int:
    """The axis of `kernel(layer)` that holds the output channels: -1, or -2 for a
    transposed convolution."""
    L = keras.layers  # a transposed kernel is `(*window, filters, input channels)`
    return (
        -2 if isinstance(layer, (L.Conv1DTranspose, L.Conv2DTranspose, L.Conv3DTranspose)) else -1
    )


def _first(axis: int, rank: int) -> list[int]:
    """The permutation that moves `axis` first."""
    return [axis] + [a for a in range(rank) if a != axis]


def _last(axis: int, rank: int) -> list[int]:
    """The permutation that moves `axis` last (`transpose` takes TensorFlow variables;
    `moveaxis` does not)."""
    return [a for a in range(rank) if a != axis] + [axis]


def kernel_columns(layer: keras.layers.Layer) -> Any:
    """`layer`'s kernel as a float32 `(fan_in, output channels)` tensor, one column per channel.

    For a MultiHeadAttention the channels are its heads, and a head's column
    its query, key and value kernels and its rows of the output kernel (in a
    GroupQueryAttention a channel is a key and value head with the query
    heads that read it: `structured.heads`). For
    a known transformer block (`structured.blocks`) they are its
    feed-forward units, and a unit's column its columns of the first
    kernels (two in a gated block) and its row of the last.
    """
    found = heads.attention_heads(layer)
    if found is not None:
        columns = [  # the heads axis first, one row per channel, then columns
            ops.transpose(
                ops.reshape(
                    ops.transpose(ops.cast(k.value, "float32"), _first(axis, 3)),
                    (found.count, -1),
                )
            )
            for k, axis, _ in found.kernel_axes()
        ]
        return ops.concatenate(columns, axis=0)
    found = blocks.feed_forward(layer)
    if found is not None:
        columns = [ops.cast(d.kernel.value, "float32") for d in found.inner]
        columns.append(ops.transpose(ops.cast(found.outer.kernel.value, "float32")))
        return ops.concatenate(columns, axis=0)
    weights = ops.cast(kernel(layer).value, "float32")
    if output_axis(layer) == -2:
        weights = ops.transpose(weights, _last(len(weights.shape) - 2, len(weights.shape)))
    return ops.reshape(weights, (-1, weights.shape[-1]))


def fan_in(layer: keras.layers.Layer) -> int:
    """The number of rows of `kernel_columns(layer)`, from the kernels' shapes alone."""
    found = heads.attention_heads(layer)
    if found is not None:
        return sum(math.prod(k.shape) for k, _, _ in found.kernel_axes()) // found.count
    found = blocks.feed_forward(layer)
    if found is not None:
        return sum(d.kernel.shape[0] for d in found.inner) + found.outer.kernel.shape[1]
    shape = kernel(layer).shape
    return math.prod(shape) // shape[output_axis(layer)]


def channel_weights(layer: keras.layers.Layer) -> np.ndarray:
    """`kernel_columns(layer)` as a float64 `(output channels, fan_in)` array."""
    return ops.convert_to_numpy(kernel_columns(layer)).astype("float64").T


def scores(
    importance: Importance, producers: Sequence[tuple[keras.layers.Layer, int]], channels: int
) -> np.ndarray:
    """One score per channel of a group; higher is kept first.

    `producers` are `(layer, first)`: the group's channel `c` is `layer`'s
    output channel `first + c`.
    """
    weights = [channel_weights(layer)[first : first + channels] for layer, first in producers]
    if importance == "l2":
        return np.sqrt(sum(np.square(w).sum(axis=1) for w in weights))
    if importance == "l1":
        return sum(np.abs(w).sum(axis=1) for w in weights)
    result = np.asarray(importance(weights), dtype="float64")
    if result.shape != (channels,) or not np.all(np.isfinite(result)):
        names = ", ".join(layer.name for layer, _ in producers)
        raise ValueError(
            f"`importance` must return {channels} finite scores, one per channel of the group "
            f"of {names}; got an array of shape {result.shape}."
        )
    return result


def kept_count(channels: int, sparsity: float, round_to: int) -> int:
    """How many of `channels` stay when a `sparsity` fraction is removed.

    At most `floor(sparsity * channels)` go; the count kept is rounded up to a
    multiple of `round_to`, and never below `round_to` (or all, if fewer).
    """
    return _rounded(channels - math.floor(sparsity * channels + 1e-9), channels, round_to)


def _rounded(kept: int, channels: int, round_to: int) -> int:
    """`kept` rounded up to a multiple of `round_to`, at least `round_to`, at most `channels`."""
    return min(channels, max(round_to, math.ceil(kept / round_to) * round_to))


def _top(scores: np.ndarray, count: int, block: int = 1) -> np.ndarray:
    """The indices of the `count` highest scores, ascending (the lower index on a tie),
    in whole runs of `block` channels scored by their sum (`count` a multiple of it)."""
    runs = scores.reshape(-1, block).sum(axis=1)
    order = np.argsort(-runs, kind="stable")[: count // block]
    return np.sort((order[:, None] * block + np.arange(block)[None, :]).ravel())


def keep(scores: np.ndarray, sparsity: float, round_to: int, block: int = 1) -> np.ndarray:
    """The indices of the channels to keep, ascending: the highest scores (the lower
    index on a tie).

    With `block` > 1 (a group that a GroupNormalization reads, `ChannelGroup.block`)
    channels go in aligned runs of `block`, each scored by the sum of its
    channels' scores, and the count kept is a multiple of `block` too.
    """
    unit = math.lcm(round_to, block)
    return _top(scores, kept_count(len(scores), sparsity, unit), block)


def normalized(scores: np.ndarray) -> np.ndarray:
    """`scores` divided by their mean (unchanged if that is 0), to compare across groups."""
    mean = float(np.mean(scores)) if len(scores) else 0.0
    return scores / mean if mean > 0 else scores


def global_threshold(normalised: Sequence[np.ndarray], sparsity: float) -> float:
    """The score at or below which channels go, so that a `sparsity`
    fraction of all channels of the `normalised` groups goes (-inf: none)."""
    values = np.sort(np.concatenate(normalised))
    removed = math.floor(sparsity * len(values) + 1e-9)
    return float(values[removed - 1]) if removed else -math.inf


def keep_global(
    scores: Sequence[np.ndarray],
    sparsity: float,
    round_to: int,
    blocks: Sequence[int] | None = None,
) -> list[np.ndarray]:
    """The indices of the channels to keep in each group, with one threshold for all groups.

    A `sparsity` fraction of all the groups' channels goes: those whose
    normalised score is at or below `global_threshold`. Each group keeps the
    rest, its count rounded up to a multiple of `round_to` (and of its
    `blocks` entry, in whole runs as in `keep`) and at least `round_to` (so
    slightly less than `sparsity` may go).
    """
    normalised = [normalized(group) for group in scores]
    threshold = global_threshold(normalised, sparsity)
    blocks = [1] * len(scores) if blocks is None else blocks
    return [
        _top(group, _rounded(int(np.sum(n > threshold)), len(group), math.lcm(round_to, b)), b)
        for group, n, b in zip(scores, normalised, blocks, strict=True)
    ]

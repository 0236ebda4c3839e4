"""What a pruned or stripped model weighs: per-layer sparsity and zipped size."""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import tempfile
import warnings
import zipfile
from typing import Any

import keras
import numpy as np
from keras import ops

from keras_prune import _keras, registry
from keras_prune.structured import heads
from keras_prune.structured.channel_mask import (
    WRAPPING,
    ChannelMask,
    FeedForwardMask,
    HeadMask,
    channel_masks,
)
from keras_prune.structured.graph import TRANSPOSED
from keras_prune.structured.importance import kernel as channel_kernel
from keras_prune.structured.importance import output_axis
from keras_prune.wrapper import PruneLowMagnitude

_FORMATS = ("h5", "keras")
_DENSE = "left dense by the sparsity distribution; the other weights absorb its share"


@dataclasses.dataclass(frozen=True)
class WeightSparsity:
    """Sparsity of one prunable weight."""

    layer: str
    weight: str
    shape: tuple[int, ...]
    size: int
    zeros: int
    #: Why the weight is as it is, where the sparsity alone does not say (e.g.
    #: "left dense by the sparsity distribution").
    note: str = ""

    @property
    def sparsity(self) -> float:
        return self.zeros / self.size if self.size else 0.0


@dataclasses.dataclass(frozen=True)
class UnprunedLayer:
    """A layer whose weights keras_prune does not know how to prune (or cannot), left dense."""

    layer: str
    class_name: str
    size: int
    reason: str = "keras_prune does not know how to prune this layer"


class SparsityReport(list):
    """A list of `WeightSparsity` rows; `str()` renders a table.

    `unpruned` lists the layers with weights keras_prune does not know how
    to prune (left dense, not counted in the total).
    """

    def __init__(self, rows: Any = (), unpruned: Any = ()):
        super().__init__(rows)
        self.unpruned: list[UnprunedLayer] = list(unpruned)

    @property
    def total_size(self) -> int:
        return sum(row.size for row in self)

    @property
    def total_sparsity(self) -> float:
        size = self.total_size
        return sum(row.zeros for row in self) / size if size else 0.0

    def __str__(self) -> str:
        a = max([32] + [len(row.layer) for row in self])  # column widths
        b = max([24] + [len(row.weight) for row in self])
        lines = [f"{'layer':<{a}} {'weight':<{b}} {'shape':<20} {'sparsity':>9}"]
        for row in self:
            lines.append(
                f"{row.layer:<{a}} {row.weight:<{b}} {str(row.shape):<20} {row.sparsity:>9.2%}"
                + (f"  ({row.note})" if row.note else "")
            )
        lines.append(f"{'total':<{a + b + 22}} {self.total_sparsity:>9.2%}")
        for item in self.unpruned:
            lines.append(
                f"not pruned: {item.layer} ({item.class_name}, {item.size:,} weights): "
                f"{item.reason}"
            )
        return "\n".join(lines)


def sparsity_report(model: keras.layers.Layer) -> SparsityReport:
    """Fraction of zeros in every prunable weight of a pruned or stripped model.

    For pruned layers the zeros of `weight * mask` are counted; for plain
    layers (a stripped model) the zeros of the weights the registry prunes.
    A weight inside a custom layer is named by its path in that layer
    (`self_attention_layer/query/kernel`). Layers whose weights keras_prune
    does not know are listed in `report.unpruned` and below the table.
    In a model from `prune_channels`, the output channels that a
    `ChannelMask` (or `NormalizationMask`) removes count as zeros of the kernel that produces them
    (`shrink` also removes the inputs of the next layer that read them),
    and the heads a `HeadMask` removes as zeros of its attention layer's
    query, key, value and output kernels (the units a `FeedForwardMask`
    removes: of the block's inner and outer feed-forward kernels).

    Example:

    >>> print(keras_prune.sparsity_report(keras_prune.strip_pruning(pruned)))
    """
    if not isinstance(model, keras.layers.Layer):
        raise TypeError(f"`model` must be a keras Model or Layer; got {type(model).__name__}.")
    report = SparsityReport()
    layers = [model] if not isinstance(model, keras.Model) else []
    layers += _keras.flatten_layers(model)
    # Layers a wrapper or a layer with rows of its own (`_has_rows`) already counts.
    covered = {
        id(inner)
        for layer in layers
        if isinstance(layer, PruneLowMagnitude) or _has_rows(layer)
        for inner in _keras.flatten_layers(layer)
    }
    # Layers inside a custom layer: named by their path (two blocks' "query").
    inside_custom = {
        id(inner)
        for layer in layers
        if not (
            registry.is_known(layer)
            or isinstance(layer, (keras.Model, PruneLowMagnitude, ChannelMask))
        )
        for inner in _keras.flatten_layers(layer)
    }
    masks = channel_masks(model)
    channel_mask = {mask.source: mask for mask in masks}
    # The feed-forward Dense layers of the blocks FeedForwardMasks wrap.
    inside_mask = {id(dense): mask for mask in masks for dense in _masked_inside(mask)}
    for layer in layers:
        notes = None
        if isinstance(layer, ChannelMask):
            continue
        if isinstance(layer, PruneLowMagnitude):
            inner = layer.layer
            pairs = [(w, ops.multiply(w.value, m.value)) for w, m, _ in layer.pruning_vars]
            notes = [_DENSE if f == 0 else "" for f in layer.weight_factors()]
        elif not _has_rows(layer):
            if _keras.own_variables(layer) and not isinstance(layer, keras.Model):
                size = sum(math.prod(v.shape) for v in _keras.own_variables(layer))
                report.unpruned.append(UnprunedLayer(layer.name, type(layer).__name__, size))
            continue
        elif id(layer) in covered:
            continue
        elif registry.cannot_prune(layer):
            size = sum(math.prod(v.shape) for v in layer.weights)
            report.unpruned.append(
                UnprunedLayer(layer.name, type(layer).__name__, size, registry.dense_reason(layer))
            )
            continue
        elif not (layer.built and registry.supports(layer)):
            continue
        else:
            inner = layer
            pairs = [(w, w.value) for w in registry.get_prunable_weights(layer)]
            mask = inside_mask.get(id(layer), channel_mask.get(layer.name))
            if mask is not None:
                pairs, notes = _masked_channels(layer, pairs, mask)
        for i, (weight, value) in enumerate(pairs):
            zeros = int(np.count_nonzero(ops.convert_to_numpy(value) == 0))
            relative = _relative_path(weight, inner)
            name = layer.name
            if id(layer) in inside_custom and weight.path.endswith(f"/{relative}"):
                name = weight.path[: -len(relative) - 1]
            report.append(
                WeightSparsity(
                    name,
                    relative,
                    tuple(weight.shape),
                    math.prod(weight.shape),
                    zeros,
                    notes[i] if notes else "",
                )
            )
    return report


def _has_rows(layer: keras.layers.Layer) -> bool:
    """Whether the report names `layer`'s weights as its own: a layer the registry
    knows, or a GroupQueryAttention (which the registry walks into), unless one of
    its projections cannot be pruned (then each is named by its path, as in a custom
    layer, the one with LoRA among the unpruned), like a MultiHeadAttention."""
    if registry.is_known(layer):
        return True
    return isinstance(layer, heads.ATTENTION) and not registry.cannot_prune(layer)


def _masked_inside(mask: ChannelMask) -> list[keras.layers.Layer]:
    """The layers inside the layer `mask` wraps that hold the weights it masks, where
    the report reaches them one by one (not through the wrapped layer)."""
    if isinstance(mask, FeedForwardMask) and mask.built:
        return [*mask.feed_forward.inner, mask.feed_forward.outer]
    return []


def _masked_channels(
    layer: keras.layers.Layer, pairs: list[tuple[Any, Any]], mask: ChannelMask
) -> tuple[list[tuple[Any, Any]], list[str]]:
    """`pairs` with the channels (or heads) `mask` removes zeroed, and notes."""
    kept = ops.convert_to_numpy(mask.mask)
    removed = f"{int(len(kept) - kept.sum())} of {len(kept)}"
    entries = {}  # id(kernel) -> (axis, its entries along it kept or not)
    if isinstance(mask, HeadMask):  # a head is an axis of each projection's kernel
        found = heads.attention_heads(mask.layer)
        what = "head groups" if found.grouped else "heads"  # a key and value head, its queries
        note = f"{removed} {what} removed by its HeadMask"
        entries = {id(k): (axis, np.repeat(kept, per)) for k, axis, per in found.kernel_axes()}
    elif isinstance(mask, FeedForwardMask):  # a unit: inner kernels' column, outer one's row
        note = f"{removed} feed-forward units removed by its FeedForwardMask"
        found = mask.feed_forward
        axes = {id(d.kernel): 1 for d in found.inner} | {id(found.outer.kernel): 0}
        entries = {key: (axis, kept) for key, axis in axes.items()}
    else:
        note = f"{removed} output channels removed by its {type(mask).__name__}"
        kernel = channel_kernel(layer)
        entries = {id(kernel): (len(kernel.shape) + output_axis(layer), kept)}
    result, notes = [], []
    for weight, value in pairs:
        axis, kept_entries = entries.get(id(weight), (None, None))
        if axis is not None:
            shape = [1] * len(weight.shape)
            shape[axis] = len(kept_entries)
            value = ops.multiply(value, kept_entries.reshape(shape))
        result.append((weight, value))
        notes.append("" if axis is None else note)
    return result, notes


def _relative_path(weight: keras.Variable, layer: keras.layers.Layer) -> str:
    """`weight`'s path inside `layer`: "kernel", or "self_attention_layer/query/kernel".

    A layer that builds its sublayers outside its own name scope (a
    `Bidirectional` built in a wrapper) leaves its name out of their paths:
    the whole path then, which still tells "forward_lstm/lstm_cell/kernel"
    from the backward one.
    """
    prefix = f"{layer.name}/"
    path = weight.path
    return path[path.rindex(prefix) + len(prefix) :] if prefix in path else path


_L = keras.layers
_FLOP_LAYERS = (
    _L.Conv1D,
    _L.Conv2D,
    _L.Conv3D,
    _L.DepthwiseConv1D,
    _L.DepthwiseConv2D,
    _L.SeparableConv1D,
    _L.SeparableConv2D,
    _L.Dense,
)


def flops(model: keras.Model) -> int:
    """Floating-point operations of one sample through `model`'s Conv, ConvTranspose,
    DepthwiseConv, SeparableConv, Dense, EinsumDense, MultiHeadAttention and
    GroupQueryAttention layers: 2 per multiply-add.

    Each output position of such a layer costs one multiply-add per kernel
    entry (a separable layer's two kernels both count; a transposed
    convolution's input positions count instead), each time the layer is
    called; zeros inside a kernel count too, as dense kernels compute
    them. An EinsumDense costs one multiply-add per output entry and
    contracted kernel entry; an attention layer its projections (four,
    five with a gate) and, per query head, its attention scores and
    weighted sum. Activations, pooling and normalisation are left out (a few
    percent in a CNN). `model` must be
    Functional or Sequential (nested ones count). A custom layer that holds
    such layers (a KerasHub transformer block) has no graph in which to see
    their calls: it is not counted, and a warning names it.

    Example:

    >>> keras_prune.flops(keras.applications.ResNet50(weights=None))   # 7.7 G
    """
    if not isinstance(model, keras.Model):
        raise TypeError(f"`model` must be a keras.Model; got {type(model).__name__}.")
    if not _keras.has_graph(model):
        raise ValueError(
            f"`model` must be Functional or Sequential to count its FLOPs; {model.name} is a "
            f"subclassed {type(model).__name__}, whose `call` has no graph to count."
        )
    uncounted: list[str] = []
    total = _flops(model, uncounted)
    if uncounted:
        warnings.warn(
            f"flops does not count the layers inside {len(uncounted)} custom layer(s), which "
            f"have no graph to follow: {', '.join(uncounted)}.",
            stacklevel=2,
        )
    return total


def _flops(model: keras.Model, uncounted: list[str]) -> int:
    """`flops(model)`, naming in `uncounted` the custom layers it cannot count."""
    total = 0
    for operation, inputs, outputs in _keras.graph_calls(model):
        if isinstance(operation, (PruneLowMagnitude, *WRAPPING)):  # computes as its layer
            operation = operation.layer
        if isinstance(operation, keras.Model):
            total += _flops(operation, uncounted)
        elif isinstance(operation, _FLOP_LAYERS):
            names = ("depthwise_kernel", "pointwise_kernel")
            kernels = [
                getattr(operation, n) for n in names if getattr(operation, n, None) is not None
            ]
            kernels = kernels or [operation.kernel]
            positions = _positions(_known(outputs[0].shape, operation), operation)
            total += 2 * positions * sum(math.prod(k.shape) for k in kernels)
        elif isinstance(operation, TRANSPOSED):  # each input position spreads over a window
            positions = _positions(_known(inputs[0].shape, operation), operation)
            total += 2 * positions * math.prod(operation.kernel.shape)
        elif isinstance(operation, _L.EinsumDense):
            total += 2 * _einsum_macs(operation, _known(outputs[0].shape, operation))
        elif isinstance(operation, heads.ATTENTION):
            value = inputs[1] if len(inputs) > 1 else inputs[0]
            shapes = (_known(t.shape, operation) for t in (inputs[0], value))
            total += 2 * _attention_macs(operation, *shapes)
        elif isinstance(operation, keras.layers.Layer) and any(
            isinstance(inner, (*_FLOP_LAYERS, *TRANSPOSED, _L.EinsumDense, *heads.ATTENTION))
            for inner in _keras.flatten_layers(operation)
        ):
            name = f"{operation.name} ({type(operation).__name__})"
            if name not in uncounted:  # called more than once
                uncounted.append(name)
    return total


def _positions(shape: tuple[int, ...], layer: Any) -> int:
    """The number of positions of `shape` (batch first) that `layer`'s kernel is applied
    at: the axes between the batch and the channels (after them if channels_first)."""
    first = getattr(layer, "data_format", "channels_last") == "channels_first"
    return math.prod(shape[2:] if first else shape[1:-1])


def _known(shape: Any, layer: Any) -> tuple[int, ...]:
    """`shape` (batch first), or a ValueError if a dimension after the batch is unknown."""
    if any(size is None for size in shape[1:]):
        raise ValueError(
            f"`model` must have known shapes to count its FLOPs: `{layer.name}` sees shape "
            f"{tuple(shape)}. Build it on inputs of a fixed size (e.g. `keras.Input((128,))`)."
        )
    return tuple(shape)


def _einsum_macs(layer: keras.layers.EinsumDense, output_shape: Any) -> int:
    """Multiply-adds of one sample through an EinsumDense: each output entry sums
    over the kernel's contracted axes (its letters absent from the output)."""
    _, rest = layer.equation.split(",")
    kernel_letters, output_letters = rest.split("->")
    contracted = math.prod(
        size
        for letter, size in zip(kernel_letters, layer.kernel.shape)
        if letter not in output_letters
    )
    return math.prod(output_shape[1:]) * contracted


def _attention_macs(layer: keras.layers.Layer, query: Any, value: Any) -> int:
    """Multiply-adds of one sample through a MultiHeadAttention or GroupQueryAttention:
    its projections (key and value at each source position; query, output and
    a gate's at each target position), and per query head the scores (query x
    key) and the weighted sum."""
    _, key_dense, value_dense, _ = heads.projections(layer)
    query_heads = math.prod(heads.head_counts(layer))
    targets = math.prod(query[1:-1])
    sources = math.prod(value[1:-1])
    read_at_sources = {id(key_dense), id(value_dense)}
    projections = sum(
        math.prod(inner.kernel.shape) * (sources if id(inner) in read_at_sources else targets)
        for inner in _keras.flatten_layers(layer)
        if isinstance(inner, _L.EinsumDense)
    )
    key_size = key_dense.kernel.shape[-1]
    value_size = value_dense.kernel.shape[-1]
    return projections + query_heads * targets * sources * (key_size + value_size)


def gzipped_model_size(model: keras.Model, file_format: str = "h5") -> int:
    """Bytes of the saved `model` compressed with zip/deflate, as in tfmot's guide.

    The model is saved without optimizer to a temporary `.h5` (the seed's
    measure) or `.keras` file, which is then zipped with ZIP_DEFLATED. Strip
    a pruned model first (`strip_pruning`) to measure what you would ship.

    Example:

    >>> keras_prune.gzipped_model_size(keras_prune.strip_pruning(pruned))
    """
    if not isinstance(model, keras.Model):
        raise TypeError(f"`model` must be a keras.Model; got {type(model).__name__}.")
    if file_format not in _FORMATS:
        raise ValueError(f"`file_format` must be one of {_FORMATS}; got {file_format!r}.")
    with tempfile.TemporaryDirectory() as tmp:
        saved = os.path.join(tmp, f"model.{file_format}")
        if file_format == "h5":
            # Keras logs, through absl, that .h5 is a legacy format: a notice
            # for users who save .h5 themselves, not for a size measurement.
            absl = logging.getLogger("absl")
            level = absl.level
            absl.setLevel(logging.ERROR)
            try:
                keras.saving.save_model(model, saved, include_optimizer=False)
            finally:
                absl.setLevel(level)
        else:
            model.save(saved)
        zipped = os.path.join(tmp, "model.zip")
        with zipfile.ZipFile(zipped, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            archive.write(saved, arcname=os.path.basename(saved))
        return os.path.getsize(zipped)

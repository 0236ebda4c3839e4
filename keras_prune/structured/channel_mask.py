"""`ChannelMask`: zeroes the removed channels of a tensor while `prune_channels` trains.

`prune_channels` puts one after every layer whose output holds channels it
prunes (a Conv, Dense or SeparableConv, a Batch- or GroupNormalization, a
depthwise convolution), or after the per-channel layers that alone follow it, so a
removed channel is exactly 0 wherever another layer reads it, as it is
absent from the model `shrink` makes. Its mask is one 0/1 entry per
channel, in segments: one per channel group of the tensor (a concatenation
has several), each naming the layers that produce the group.

Each training call advances the layer's `pruning_step` once per batch inside
the compiled train step, as `PruneLowMagnitude` does, and when the schedule
says so recomputes the mask: in each segment the channels with the largest
norm of their producers' kernel slices stay, `kept_count(channels,
sparsity, round_to)` of them, removed channels scoring 0 so that they stay
removed. Every `ChannelMask` of a group computes the same channels from the
same weights (once per forward pass, then shared), so the group is removed
as one without a shared variable, and a saved model resumes as it was.
With `global_pruning`, one threshold over the normalised scores of all
groups of the model (`importance.keep_global`) says how many channels each
group keeps; the first mask of a pass computes it for all of them.

The heads of a `MultiHeadAttention` are masked by a `HeadMask` that wraps
it, since they are inside the layer, and the feed-forward units of a
transformer block (`structured.blocks`) by a `FeedForwardMask`. Where a
Batch- or GroupNormalization follows the layer, a `NormalizationMask`
wraps it and zeroes the removed channels' scale and shift, which costs less
in a training step than multiplying the whole tensor.

Example:

```python
masked = keras_prune.prune_channels(model, keras_prune.PolynomialDecay(0, 0.5, 0, 1000))
[layer.name for layer in masked.layers if isinstance(layer, ChannelMask)]
# ['conv1_channel_mask', ...]
```
"""

from __future__ import annotations

import math
import sys
import types
from collections.abc import Callable
from typing import Any

import keras
from keras import ops

from keras_prune import _backend, _forward_pass, _keras, _validation
from keras_prune.schedules import PruningSchedule
from keras_prune.structured import blocks
from keras_prune.structured import heads as heads_lib
from keras_prune.structured import importance as importance_lib


def _segment(value: Any) -> dict[str, Any]:
    """A segment as stored in the config: its group name, size, producers and block."""
    keys = {"group", "size", "producers"}
    if not isinstance(value, dict) or not keys <= set(value) <= keys | {"block"}:
        raise TypeError(
            "each of `segments` must be a dict with keys 'group', 'size', 'producers' and "
            f"optionally 'block'; got {value!r}."
        )
    producers = [(str(name), int(first)) for name, first in value["producers"]]
    size, block = int(value["size"]), int(value.get("block", 1))  # files before blocks: 1
    if block < 1 or size % block:
        raise ValueError(
            f"a segment's `block` must be a divisor of its size {size} (at least 1); got {block}."
        )
    return {"group": str(value["group"]), "size": size, "producers": producers, "block": block}


# Keras maps a model's graph recursively, one Python frame per layer of depth
# (`Function.__init__` -> `map_graph`, Keras 3.15), and a ChannelMask adds a
# layer after each masked one: EfficientNetV2L's 1031 layers become 1153,
# past Python's default limit of 1000 frames, when `prune_channels` builds the
# masked model and when a `.keras` file of it is loaded. Python 3.11 runs
# Python-to-Python calls without growing the C stack, so a higher limit is safe.
DEEP_GRAPH_FRAMES = 10_000


def _room_for_deep_graphs() -> None:
    """Raises Python's recursion limit to `DEEP_GRAPH_FRAMES` (never lowers it)."""
    if sys.getrecursionlimit() < DEEP_GRAPH_FRAMES:
        sys.setrecursionlimit(DEEP_GRAPH_FRAMES)


@keras.saving.register_keras_serializable(package="keras_prune")
class ChannelMask(keras.layers.Layer):
    """Multiplies its input's channels by a 0/1 mask that a pruning schedule updates.

    Made by `prune_channels`; public so that `isinstance` checks and
    `keras.saving` find it. Making one raises Python's recursion limit to
    `DEEP_GRAPH_FRAMES`, so that Keras can build and load masked models
    deeper than its default allows (see above).

    Args:
        pruning_schedule: a `PruningSchedule`; its sparsity is the fraction
            of each group's channels removed.
        segments: one dict per channel group along the last axis, in order:
            `{"group": name, "size": channels, "producers": [[layer name,
            first output channel], ...], "block": run}`; a segment with no
            producers is never pruned; its channels go in aligned runs of
            `block` (optional, default 1; see `ChannelGroup.block`).
        importance: "l2" or "l1", the norm of a channel's kernel weights,
            or a callable that `keras.saving` can save: given one float32
            `(channels, fan_in)` tensor per producer, it returns the
            channels' scores with `keras.ops`.
        round_to: keep a multiple of this many channels per group (and at
            least this many).
        source: the name of the layer whose output this masks.
        global_pruning: False: each group loses the schedule's sparsity of
            its channels; True: all groups of the model together do (see
            `importance.keep_global`).
        axis: the input's axis that holds the channels: -1 (the last), or
            1 (channels_first images and sequences).
    """

    def __init__(
        self,
        pruning_schedule: PruningSchedule,
        segments: list[dict[str, Any]],
        importance: str | Callable[[list[Any]], Any] = "l2",
        round_to: int = 1,
        source: str | None = None,
        global_pruning: bool = False,
        axis: int = -1,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        _room_for_deep_graphs()
        _validation.instance(
            pruning_schedule, "pruning_schedule", PruningSchedule, "a keras_prune.PruningSchedule"
        )
        self.pruning_schedule = pruning_schedule
        self.segments = [_segment(s) for s in segments]
        if not callable(importance):
            _validation.one_of(importance, "importance", importance_lib.NAMES)
        self.importance = importance
        self.round_to = _validation.count(round_to, "round_to", minimum=1)
        self.source = source
        self.global_pruning = _validation.boolean(global_pruning, "global_pruning")
        self.axis = _validation.one_of(axis, "axis", (-1, 1))
        self.supports_masking = True
        # The pruning step `UpdatePruningStep` saw at the end of `fit` (`wrapper.rewound`).
        self.trained_to_step: int | None = None

    def build(self, input_shape: Any) -> None:
        channels = sum(s["size"] for s in self.segments)
        if len(input_shape) <= self.axis or input_shape[self.axis] != channels:
            raise ValueError(
                f"{self.name!r} masks {channels} channels on axis {self.axis} but its input has "
                f"shape {tuple(input_shape)}."
            )
        self.mask = self.add_weight(
            name="mask", shape=(channels,), initializer="ones", dtype="float32", trainable=False
        )
        # Training batches seen; the first batch is step 1, as for PruneLowMagnitude.
        self.pruning_step = self.add_weight(
            name="pruning_step", shape=(), initializer="zeros", dtype="int32", trainable=False
        )

    def call(self, inputs: Any, training: bool | None = None) -> Any:
        if training:
            self._update()
        mask = ops.cast(self.mask.value, inputs.dtype)
        if self.axis == 1:  # (channels, 1, ...) against (batch, channels, ...)
            mask = ops.reshape(mask, (-1,) + (1,) * (len(inputs.shape) - 2))
        return ops.multiply(inputs, mask)

    def compute_output_shape(self, input_shape: Any) -> Any:
        return input_shape

    def steps_seen(self) -> int:
        """The pruning step: training batches seen, 0 before the mask is built."""
        if not self.built:
            return 0
        return int(ops.convert_to_numpy(self.pruning_step))

    # The mask update ------------------------------------------------------
    def _update(self) -> None:
        if not _forward_pass.first_call(self, ("step", id(self))):
            return
        with _keras.full_precision():  # float32 weights under a mixed policy (see _keras)
            self._advance_and_prune()

    @_backend.eager
    def _advance_and_prune(self) -> None:
        step = ops.add(self.pruning_step.value, 1)
        self.pruning_step.assign(step)
        should_prune, sparsity = _forward_pass.schedule_at(self, self.pruning_schedule, step)
        should_prune = ops.convert_to_tensor(should_prune, "bool")
        if _backend.known_false(should_prune):  # eager torch: most steps cost nothing more
            return
        sparsity = ops.convert_to_tensor(sparsity, "float32")
        current = self.mask.value
        parts, start = [], 0
        for segment in self.segments:
            previous = current[start : start + segment["size"]]
            start += segment["size"]
            if not segment["producers"]:
                parts.append(previous)
                continue
            # A compiled step scores channels only when it prunes (`cond`), and
            # the masks of one group share the result (`shared`).
            if self.global_pruning:
                compute = lambda: _backend.cond(  # noqa: E731
                    should_prune, lambda: self._keep_global(sparsity), self._current_global
                )
                parts.append(
                    _forward_pass.shared(self, "channel_global", compute)[segment["group"]]
                )
                continue
            key = ("channel_group", segment["group"])
            compute = lambda s=segment, p=previous: _backend.cond(  # noqa: E731
                should_prune, lambda: self._keep(s, p, sparsity), lambda: p
            )
            parts.append(_forward_pass.shared(self, key, compute))
        self.mask.assign(ops.concatenate(parts) if len(parts) > 1 else parts[0])

    def _scores(self, segment: dict[str, Any], previous: Any) -> Any:
        """The segment's channel scores (`importance.scores`), 0 for those removed before."""
        size = segment["size"]
        columns = [
            importance_lib.kernel_columns(layer)[:, first : first + size]
            for layer, first in self._producers(segment)
        ]
        if callable(self.importance):
            scores = self.importance([ops.transpose(c) for c in columns])
            scores = ops.reshape(ops.cast(scores, "float32"), (size,))
        elif self.importance == "l2":
            scores = ops.sqrt(sum(ops.sum(ops.square(c), axis=0) for c in columns))
        else:
            scores = sum(ops.sum(ops.abs(c), axis=0) for c in columns)
        return ops.stop_gradient(scores) * previous  # removed channels stay removed

    def _rounded(self, kept: Any, segment: dict[str, Any]) -> Any:
        """`kept` rounded up to a multiple of `round_to` and of the segment's block,
        at least that, at most the segment's size."""
        unit = math.lcm(self.round_to, segment["block"])
        kept = ops.maximum(ops.ceil(kept / unit) * unit, unit)
        return ops.minimum(kept, segment["size"])

    def _keep(self, segment: dict[str, Any], previous: Any, sparsity: Any) -> Any:
        """1.0 for the segment's channels that stay at `sparsity`, 0.0 for the others."""
        size = segment["size"]
        kept = self._rounded(size - ops.floor(sparsity * size + 1e-6), segment)
        return _top_runs(self._scores(segment, previous), kept, segment["block"])

    def _keep_global(self, sparsity: Any) -> dict[str, Any]:
        """`{group: 1.0/0.0 per channel}` for every group of the model, with one threshold."""
        groups = _groups(self._linked_layers())
        scores = {}
        for name, (mask, start, segment) in groups.items():
            previous = mask.mask.value[start : start + segment["size"]]
            score = self._scores(segment, previous)
            # Divided by the mean over the channels still there (removed ones score 0).
            mean = ops.sum(score) / ops.maximum(ops.sum(previous), 1.0)
            scores[name] = ops.where(mean > 0, score / ops.maximum(mean, 1e-30), score)
        values = ops.sort(ops.concatenate(list(scores.values())))
        removed = ops.cast(ops.floor(sparsity * values.shape[0] + 1e-6), "int32")
        threshold = ops.where(removed > 0, ops.take(values, ops.maximum(removed - 1, 0)), -1.0)
        result = {}
        for name, (_, _, segment) in groups.items():
            above = ops.sum(ops.cast(ops.greater(scores[name], threshold), "float32"))
            kept = self._rounded(above, segment)
            result[name] = _top_runs(scores[name], kept, segment["block"])
        return result

    def _current_global(self) -> dict[str, Any]:
        """`{group: its mask now}` for every group of the model: `_keep_global` when not pruning."""
        return {
            name: mask.mask.value[start : start + segment["size"]]
            for name, (mask, start, segment) in _groups(self._linked_layers()).items()
        }

    def _linked_layers(self) -> Any:
        """The model's layers by name (`link`), linking the model this runs in if needed."""
        layers = getattr(self, "_linked", None)
        if layers is None:
            root = _forward_pass.outer_layer(
                self,
                "does not know the layers it scores (a loaded model trained by a custom "
                "loop?). Train with keras_prune.UpdatePruningStep() among the callbacks, or "
                "call keras_prune.structured.channel_mask.link(model) first.",
            )
            link(root)
            layers = self._linked
        return layers

    def _producers(self, segment: dict[str, Any]) -> list[tuple[keras.layers.Layer, int]]:
        layers = self._linked_layers()
        return [(layers[name], first) for name, first in segment["producers"]]

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "pruning_schedule": keras.saving.serialize_keras_object(self.pruning_schedule),
            "segments": [
                {**s, "producers": [list(p) for p in s["producers"]]} for s in self.segments
            ],
            "importance": keras.saving.serialize_keras_object(self.importance)
            if callable(self.importance)
            else self.importance,
            "round_to": self.round_to,
            "source": self.source,
            "global_pruning": self.global_pruning,
            "axis": self.axis,
        }

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> ChannelMask:
        config = dict(config)
        config["pruning_schedule"] = keras.saving.deserialize_keras_object(
            config["pruning_schedule"]
        )
        if isinstance(config.get("importance"), dict):  # a saved callable
            config["importance"] = keras.saving.deserialize_keras_object(config["importance"])
        return cls(**config)


class _WrappingMask(ChannelMask):
    """A `ChannelMask` whose channels are inside the layer it wraps (`layer`):
    it runs that layer with the removed channels' weights read as 0."""

    def __init__(self, layer: keras.layers.Layer, pruning_schedule: PruningSchedule, **kwargs: Any):
        super().__init__(pruning_schedule, **kwargs)
        self.layer = layer

    def _check_channels(self, channels: int, what: str) -> None:
        if sum(s["size"] for s in self.segments) != channels:
            raise ValueError(
                f"{self.name!r}: `segments` hold {sum(s['size'] for s in self.segments)} "
                f"channels but `{self.layer.name}` has {channels} {what}."
            )

    def compute_output_shape(self, *args: Any, **kwargs: Any) -> Any:
        return self.layer.compute_output_shape(*args, **kwargs)

    def compute_output_spec(self, *args: Any, **kwargs: Any) -> Any:
        return self.layer.compute_output_spec(*args, **kwargs)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "layer": keras.saving.serialize_keras_object(self.layer)}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> ChannelMask:
        config = dict(config)
        config["layer"] = keras.saving.deserialize_keras_object(config["layer"])
        return super().from_config(config)


@keras.saving.register_keras_serializable(package="keras_prune")
class HeadMask(_WrappingMask):
    """Wraps a `MultiHeadAttention` or `GroupQueryAttention` whose heads a pruning
    schedule removes.

    The mask has one entry per head (per key and value head, with the query
    heads that read it, in a GroupQueryAttention: `structured.heads`) and
    is computed as a `ChannelMask`'s (a head's weights are its query, key
    and value kernels and its rows of the output kernel:
    `importance.kernel_columns`). The attention runs with a removed head's
    value projection (kernel and bias) read as 0, so that head adds exactly
    nothing to the output, as in the model `shrink` makes without it. Made
    by `prune_channels`.

    Args:
        layer: the `MultiHeadAttention` or `GroupQueryAttention`.
        pruning_schedule, segments, importance, round_to, source,
            global_pruning: as for `ChannelMask`; `segments` is the one
            group of `layer`'s heads.
    """

    def __init__(self, layer: keras.layers.Layer, pruning_schedule: PruningSchedule, **kwargs: Any):
        _validation.instance(
            layer,
            "layer",
            heads_lib.ATTENTION,
            "a keras.layers.MultiHeadAttention or GroupQueryAttention",
        )
        super().__init__(layer, pruning_schedule, **kwargs)
        self._check_channels(heads_lib.head_counts(layer)[0], "heads")

    def build(self, query_shape: Any, value_shape: Any, key_shape: Any = None) -> None:
        if not self.layer.built:
            self.layer.build(query_shape, value_shape, key_shape)
        if heads_lib.attention_heads(self.layer) is None:
            raise ValueError(
                f"{self.name!r}: `{self.layer.name}` uses a gate or holds its heads where "
                "Keras does not put them; its heads cannot be masked."
            )
        super().build((heads_lib.head_counts(self.layer)[0],))

    def call(
        self, query: Any, value: Any, key: Any = None, training: bool | None = None, **kwargs: Any
    ) -> Any:
        if training:
            self._update()
        projection = heads_lib.projections(self.layer)[2]
        heads = self.mask.value
        masked = {  # (inputs, heads, head size) and (heads, head size)
            id(projection.kernel): projection.kernel.value
            * ops.cast(heads[None, :, None], projection.kernel.dtype)
        }
        if projection.bias is not None:
            masked[id(projection.bias)] = projection.bias.value * ops.cast(
                heads[:, None], projection.bias.dtype
            )
        return _forward_pass.call_with_values(
            self, masked, query, value, key, training=training, **kwargs
        )


@keras.saving.register_keras_serializable(package="keras_prune")
class FeedForwardMask(_WrappingMask):
    """Wraps a transformer block whose feed-forward units a pruning schedule removes.

    The block is one `structured.blocks.FEED_FORWARD` knows (KerasHub's
    `TransformerEncoder`, `TransformerDecoder`, and the Falcon, Gemma,
    Gemma 3, Mistral, Qwen and Phi-3 decoder blocks). The mask has one
    entry per unit and is computed as a `ChannelMask`'s (a unit's weights
    are its column of each inner feed-forward kernel, two in a gated
    block, and its row of the outer one: `importance.kernel_columns`).
    The block runs with a removed unit's inner columns and biases read as
    0; the activation keeps 0 at 0 (a gated block multiplies by it), so
    the unit adds exactly nothing, as in the smaller block `shrink` makes.
    Made by `prune_channels`.

    Args:
        layer: the block, built.
        pruning_schedule, segments, importance, round_to, source,
            global_pruning: as for `ChannelMask`; `segments` is the one
            group of `layer`'s units.
    """

    def __init__(self, layer: keras.layers.Layer, pruning_schedule: PruningSchedule, **kwargs: Any):
        _validation.instance(layer, "layer", keras.layers.Layer, "a keras Layer")
        units = blocks.configured_units(layer)
        super().__init__(layer, pruning_schedule, **kwargs)
        self._check_channels(units, "feed-forward units")

    def build(self, inputs_shape: Any) -> None:
        if not self.layer.built:
            self.layer.build(inputs_shape)
        found = blocks.feed_forward(self.layer)
        if found is None:
            raise ValueError(
                f"{self.name!r}: `{self.layer.name}` does not hold the feed-forward layers "
                "keras_prune knows (see keras_prune.structured.blocks)."
            )
        # Looked up once, not on every call. Neither Keras's tracking nor
        # `.keras` saving walks a dataclass: the sublayers are the block's.
        self._feed_forward = found
        super().build((found.units,))

    @property
    def feed_forward(self) -> blocks.FeedForwardLayers:
        """The wrapped block's feed-forward sublayers (once built)."""
        if not self.built:
            raise ValueError(f"{self.name!r} is not built yet: call it on an input first.")
        return self._feed_forward

    def call(self, inputs: Any, *args: Any, training: bool | None = None, **kwargs: Any) -> Any:
        if training:
            self._update()
        units = self.mask.value
        masked = {}
        for inner in self._feed_forward.inner:
            masked[id(inner.kernel)] = inner.kernel.value * ops.cast(units, inner.kernel.dtype)
            bias = getattr(inner, "bias", None)
            if bias is not None:
                masked[id(bias)] = bias.value * ops.cast(units, bias.dtype)
        return _forward_pass.call_with_values(
            self, masked, inputs, *args, training=training, **kwargs
        )


NORMALIZATIONS = (keras.layers.BatchNormalization, keras.layers.GroupNormalization)


@keras.saving.register_keras_serializable(package="keras_prune")
class NormalizationMask(_WrappingMask):
    """Wraps the Batch- or GroupNormalization after a layer whose channels a schedule removes.

    A `ChannelMask` after `conv -> BatchNormalization -> ReLU` multiplies
    the whole activation tensor in every training step, forward and
    backward. This mask does the same job on the normalisation's scale and
    shift: the layer runs with a removed channel's `gamma` and `beta` read
    as 0, so its output there is exactly 0, and so is everything after it
    that keeps 0 at 0 (the ReLU, a pooling), whatever the convolution
    computed. The mask is computed as a `ChannelMask`'s, from the kernels
    of the layers that produce the channels. A GroupNormalization loses
    whole runs of channels (`ChannelGroup.block`), so the other runs'
    statistics stay as they were. Made by `prune_channels`.

    Args:
        layer: the normalisation, with a scale (`scale=True`).
        pruning_schedule, segments, importance, round_to, source,
            global_pruning, axis: as for `ChannelMask`; `source` names the
            layer that produces the channels, `axis` is the normalisation's.
    """

    def __init__(self, layer: keras.layers.Layer, pruning_schedule: PruningSchedule, **kwargs: Any):
        _validation.instance(
            layer,
            "layer",
            NORMALIZATIONS,
            "a keras.layers.BatchNormalization or GroupNormalization",
        )
        if not layer.scale:
            raise ValueError(
                f"`layer` {layer.name!r} has no scale (scale=False), so its output cannot be "
                "masked through its weights; put a ChannelMask after it instead."
            )
        super().__init__(layer, pruning_schedule, **kwargs)

    def build(self, input_shape: Any) -> None:
        if not self.layer.built:
            self.layer.build(input_shape)
        self._check_channels(self.layer.gamma.shape[0], "channels")
        super().build(input_shape)

    def compute_output_spec(self, inputs: Any, *args: Any, **kwargs: Any) -> Any:
        return self.layer.compute_output_spec(inputs)  # the shape and dtype of its input

    def call(self, inputs: Any, training: bool | None = None, **kwargs: Any) -> Any:
        # `kwargs`: what the layer's own call in the model was given (a
        # BatchNormalization's `mask=None`). Without a `mask` argument here,
        # Keras passes this layer no Keras mask; none is lost, since the
        # channel walk leaves a BatchNormalization given one whole.
        if training:
            self._update()
        channels = self.mask.value
        masked = {}
        for variable in (self.layer.gamma, self.layer.beta):
            if variable is not None:
                masked[id(variable)] = variable.value * ops.cast(channels, variable.dtype)
        # A GroupNormalization takes no `training`.
        if isinstance(self.layer, keras.layers.BatchNormalization):
            kwargs["training"] = training
        return _forward_pass.call_with_values(self, masked, inputs, **kwargs)


# Masks whose channels are inside the layer they wrap (one group, `Graph.inner`).
INNER = (HeadMask, FeedForwardMask)
WRAPPING = (*INNER, NormalizationMask)


def _top(scores: Any, kept: Any) -> Any:
    """1.0 for the `kept` highest `scores` (at least 1), 0.0 for the others; ties to the
    lower index.

    Exact and the same on every backend: only the sorted values are used
    (a sort's order among equal values differs between backends), then the
    scores above the `kept`-th highest value stay, and of those equal to it
    the first ones, by index, that fit. O(n log n): a pairwise rank of a
    BERT block's 3 072 units took a third of a pruning step.
    """
    size = scores.shape[0]
    kept = ops.clip(ops.cast(kept, "int32"), 1, size)
    threshold = ops.take(ops.sort(scores), size - kept)  # the kept-th highest value
    above = ops.greater(scores, threshold)
    tied = ops.cast(ops.equal(scores, threshold), "int32")
    room = kept - ops.sum(ops.cast(above, "int32"))
    first_tied = ops.logical_and(ops.cast(tied, "bool"), ops.less_equal(ops.cumsum(tied), room))
    return ops.cast(ops.logical_or(above, first_tied), "float32")


def _top_runs(scores: Any, kept: Any, block: int) -> Any:
    """`_top` over aligned runs of `block` channels, each scored by the sum of its
    channels' scores; `kept` channels (a multiple of `block`) stay."""
    if block == 1:
        return _top(scores, kept)
    runs = ops.sum(ops.reshape(scores, (-1, block)), axis=1)
    return ops.repeat(_top(runs, ops.cast(kept, "int32") // block), block)


def _groups(layers: Any) -> dict[str, tuple[ChannelMask, int, dict[str, Any]]]:
    """`{group: (a mask holding it, its first channel there, its segment)}` of
    every pruned group among `layers` (by name), in name order."""
    groups: dict[str, tuple[ChannelMask, int, dict[str, Any]]] = {}
    for name in sorted(layers):
        if not isinstance(layers[name], ChannelMask):
            continue
        start = 0
        for segment in layers[name].segments:
            if segment["producers"] and segment["group"] not in groups:
                groups[segment["group"]] = (layers[name], start, segment)
            start += segment["size"]
    return groups


def channel_masks(model: keras.layers.Layer) -> list[ChannelMask]:
    """Every `ChannelMask` in `model`, nested models included."""
    return [layer for layer in _keras.flatten_layers(model) if isinstance(layer, ChannelMask)]


def link(model: keras.layers.Layer) -> None:
    """Tells each `ChannelMask` in `model` the layers (by name) whose kernels score its channels."""
    masks = channel_masks(model)
    # The producers are the model's own layers and the layers inside
    # HeadMasks and FeedForwardMasks; they come first, so that a sublayer deeper down with
    # the same name (every MultiHeadAttention has a "query") cannot hide one.
    first = list(model.layers) if isinstance(model, keras.Model) else []
    first += [mask.layer for mask in masks if isinstance(mask, _WrappingMask)]
    layers: dict[str, keras.layers.Layer] = {}
    for layer in first + _keras.flatten_layers(model):
        layers.setdefault(layer.name, layer)
    # A read-only mapping, not a dict: Keras tracks neither (the producers are
    # the model's layers already), and `.keras` saving, which walks every
    # dict, list and layer attribute, would save the layers' weights there.
    linked = types.MappingProxyType(layers)
    for mask in masks:
        object.__setattr__(mask, "_linked", linked)

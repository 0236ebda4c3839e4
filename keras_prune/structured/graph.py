"""Which output channels of a model must be removed together.

Removing output channel `c` of a Conv2D removes input `c` of every layer
that reads it, and the same channel of every tensor added to it, through
batch normalisation, pooling, padding, activations and depthwise
convolutions. `channel_groups` walks a Functional or Sequential model's
graph and returns those sets: each `ChannelGroup` is a number of channels
produced together by one or more layers (the producers: Conv, Dense,
an EinsumDense acting as one, SeparableConv), whose channel `c` is
removed from all of them at once.
The heads of a `MultiHeadAttention` are a group too: removing head `h`
removes its query, key and value projections and its rows of the output
projection (a `GroupQueryAttention` loses whole groups of query heads with
their key and value head: `structured.heads`). So are the feed-forward
units of a KerasHub transformer block (`structured.blocks`).

A group is removable unless something the walk cannot shrink exactly
touches it: a model output (its shape stays), a model input, a layer it
does not know (a custom layer, LayerNormalization, which normalises across
channels, a Reshape that moves channels, a layer called twice), an
activation across channels (softmax: without one channel the others
change), or a layer
that would read a nonzero value from a removed channel (a removed channel
computes `activation(0)`; `sigmoid(0)` is 0.5). Such a group keeps all its
channels, and `reason` says why: nothing is shrunk that the walk does not
understand.

What removing channel `c` of a group means, and what a shrunk model
computes exactly: the producers' kernels and biases for `c` are zero, and
so are the per-channel weights that carry it (BatchNormalization's and
GroupNormalization's scale and shift, a depthwise kernel and bias), so that
every layer reads 0 there. A GroupNormalization normalises runs of
channels together, so a group it reads loses whole runs (`block`).

Example:

```python
model = keras.applications.ResNet50(weights=None, input_shape=(64, 64, 3))
for group in keras_prune.channel_groups(model):
    print(group.size, group.producers, group.reason)   # 256 ('conv2_block1_0_conv', ...) None
```
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import warnings
from collections.abc import Callable
from typing import Any

import keras
import numpy as np

from keras_prune import _keras, registry
from keras_prune.selection import Selection
from keras_prune.structured import blocks, heads
from keras_prune.structured.flatten import flatten

L = keras.layers
CONVOLUTIONS = (L.Conv1D, L.Conv2D, L.Conv3D)
SEPARABLE = (L.SeparableConv1D, L.SeparableConv2D)
TRANSPOSED = (L.Conv1DTranspose, L.Conv2DTranspose, L.Conv3DTranspose)
# An EinsumDense produces channels where it acts as a Dense (`blocks.acts_as_dense`);
# an Embedding's channels are the columns of its table.
PRODUCERS = (*CONVOLUTIONS, *TRANSPOSED, *SEPARABLE, L.Dense, L.EinsumDense, L.Embedding)
DEPTHWISE = (L.DepthwiseConv1D, L.DepthwiseConv2D)
ACTIVATIONS = (L.Activation, L.ReLU, L.LeakyReLU, L.ELU)
# Layers that act on each channel alone and keep 0 at 0.
ZERO_KEEPING = (
    L.Dropout,
    L.SpatialDropout1D,
    L.SpatialDropout2D,
    L.SpatialDropout3D,
    L.GaussianDropout,
    L.Identity,
    L.ActivityRegularization,  # the identity, with a loss that a 0 adds nothing to
    L.MaxPooling1D,
    L.MaxPooling2D,
    L.MaxPooling3D,
    L.AveragePooling1D,
    L.AveragePooling2D,
    L.AveragePooling3D,
    L.GlobalMaxPooling1D,
    L.GlobalMaxPooling2D,
    L.GlobalMaxPooling3D,
    L.GlobalAveragePooling1D,
    L.GlobalAveragePooling2D,
    L.GlobalAveragePooling3D,
    L.ZeroPadding1D,
    L.ZeroPadding2D,
    L.ZeroPadding3D,
    L.Cropping1D,
    L.Cropping2D,
    L.Cropping3D,
    L.UpSampling1D,
    L.UpSampling2D,
    L.UpSampling3D,
)
# Elementwise merges: the zero of a removed channel survives if every input
# is zero there (Multiply: if any is).
MERGES = (L.Add, L.Subtract, L.Maximum, L.Minimum, L.Average)


@dataclasses.dataclass
class ChannelGroup:
    """Channels produced together and removed together.

    Args:
        size: the number of channels.
        producers: names of the layers whose output channels these are.
        offsets: for each producer, its output channel that is the group's
            channel 0 (0 unless the producer's channels are in several
            groups, as when they multiply a concatenation).
        reason: why the group keeps every channel, or None if it can shrink.
        block: its channels go in aligned runs of this many (channel `c`
            with all of `block * (c // block)` to `block * (c // block + 1) - 1`):
            the groups of a GroupNormalization that reads them, whose
            statistics stay exact only when whole groups go; 1 otherwise.
    """

    size: int
    producers: tuple[str, ...]
    offsets: tuple[int, ...]
    reason: str | None
    block: int = 1

    @property
    def removable(self) -> bool:
        return self.reason is None


@dataclasses.dataclass
class _Group:
    size: int
    producers: list[tuple[keras.layers.Layer, int]]  # (layer, its output channel for channel 0)
    reason: str | None
    parent: int
    block: int = 1


@dataclasses.dataclass(frozen=True)
class Layout:
    """What a tensor's channel axis (`Graph.channel_axis`) holds: whole groups side by side.

    `zero[i]` says whether a removed channel of `groups[i]` reads 0 here;
    `repeat` > 1 after Flatten, where channel `c` sits at `p * channels + c`
    for each of `repeat` positions. `tiled` after a Concatenate of such
    tensors: each piece's groups written out once per position, in order
    (a group appears more than once).
    """

    groups: tuple[int, ...]
    zero: tuple[bool, ...]
    repeat: int = 1
    tiled: bool = False

    @property
    def flat(self) -> bool:
        """Whether the tensor holds flattened channels, which only a Dense layer (through
        dropout and activations) may read: a per-feature layer would need a mask per
        position."""
        return self.repeat != 1 or self.tiled


@dataclasses.dataclass
class Graph:
    """The result of the walk: the groups, and each one-input layer's input and output layouts."""

    groups: list[_Group]
    calls: dict[int, tuple[keras.layers.Layer, Layout, Layout]]
    # A group cut in pieces (a Multiply of one group by a concatenation of
    # two): root -> the groups of its pieces, in channel order.
    splits: dict[int, list[int]] = dataclasses.field(default_factory=dict)
    # Layers whose channels are inside them: id(MultiHeadAttention) -> (the
    # layer, the group of its heads); id(transformer block) -> (the block,
    # the group of its feed-forward units).
    inner: dict[int, tuple[keras.layers.Layer, int]] = dataclasses.field(default_factory=dict)
    # Layers with channels of their own, or layers holding such layers, that
    # the walk left whole: id(layer) -> (the layer, why), for the warning.
    whole: dict[int, tuple[keras.layers.Layer, str]] = dataclasses.field(default_factory=dict)
    # Channels on axis 1 of tensors of rank 3 and more (`channel_axis`).
    channels_first: bool = False

    def channel_axis(self, tensor: Any) -> int:
        """The axis of `tensor` that holds its channels, as `ChannelMask(axis=...)` takes
        it: 1 for an image or sequence of a channels_first model, else -1 (also a
        Dense layer's features)."""
        return 1 if self.channels_first and len(tensor.shape) > 2 else -1

    def find(self, index: int) -> int:
        while self.groups[index].parent != index:
            self.groups[index].parent = self.groups[self.groups[index].parent].parent
            index = self.groups[index].parent
        return index

    def leaves(self, index: int) -> list[int]:
        """The root groups that hold group `index`'s channels now, in order."""
        root = self.find(index)
        if root not in self.splits:
            return [root]
        return [leaf for piece in self.splits[root] for leaf in self.leaves(piece)]

    def expand(self, layout: Layout) -> Layout:
        """`layout` in today's groups: roots only, pieces for split groups."""
        groups, zero = [], []
        for group, z in zip(layout.groups, layout.zero):
            for leaf in self.leaves(group):
                groups.append(leaf)
                zero.append(z)
        return dataclasses.replace(layout, groups=tuple(groups), zero=tuple(zero))

    def roots(self) -> list[int]:
        return [i for i in range(len(self.groups)) if self.find(i) == i and i not in self.splits]

    def removable(self) -> list[int]:
        return [
            i for i in self.roots() if self.groups[i].reason is None and self.groups[i].producers
        ]

    def reasons(self, picked: Callable[[keras.layers.Layer], bool] | None = None) -> str:
        """Why no group can be removed, each reason once: those of the groups that
        `picked` layers (any layer, if None) produce, or if none, of every group;
        then why the `whole` layers among them keep their own channels."""
        roots = [self.groups[i] for i in self.roots()]
        produced = [
            group
            for group in roots
            if any(picked is None or picked(layer) for layer, _ in group.producers)
        ]
        reasons = sorted({group.reason for group in produced or roots if group.reason})
        reasons += sorted(
            reason for layer, reason in self.whole.values() if picked is None or picked(layer)
        )
        return "; ".join(reasons) or "no layer in it produces channels"


def _cannot_shrink(operation: Any, uses: int) -> str:
    """Why the channels `operation` reads and writes stay, for a group's `reason`."""
    name = getattr(operation, "name", type(operation).__name__)
    kind = type(operation).__name__
    return _held_whole(operation, uses) or f"`{name}` ({kind}) reads it and cannot be shrunk"


def _held_whole(operation: Any, uses: int) -> str | None:
    """Why `operation` itself keeps its weights' channels, if it says: called
    `uses` > 1 times, a grouped convolution, quantized, or with LoRA (`_cannot_cut`)."""
    if uses > 1 and operation.weights:
        return f"`{getattr(operation, 'name', type(operation).__name__)}` is called {uses} times"
    if isinstance(operation, PRODUCERS) and getattr(operation, "groups", 1) != 1:
        return f"`{operation.name}` is a grouped convolution (groups={operation.groups})"
    return _cannot_cut(operation) if isinstance(operation, keras.layers.Layer) else None


def _produces(operation: Any) -> bool:
    """Whether `operation` is, or holds, a layer whose channels a group could remove."""
    if not isinstance(operation, keras.layers.Layer):
        return False
    return any(
        isinstance(layer, (*PRODUCERS, *heads.ATTENTION, L.RNN))
        for layer in _keras.flatten_layers(operation, include_self=True)
    )


def _left_whole(layer: keras.layers.Layer, uses: int) -> str:
    """Why the walk keeps `layer`'s own channels, for the warning."""
    reason = _held_whole(layer, uses)
    if reason:
        return reason
    what = f"`{layer.name}` ({type(layer).__name__})"
    if isinstance(layer, PRODUCERS):
        return f"{what} cannot lose channels where it is called"
    if isinstance(layer, L.RNN):
        return f"{what} is recurrent: shrink does not remove its units"
    attention = isinstance(layer, heads.ATTENTION)
    if attention and layer.get_config().get("use_gate"):
        return f"{what} has a gate (use_gate=True): shrink does not remove its heads"
    if any(isinstance(inner, L.RNN) for inner in _keras.flatten_layers(layer)):
        return f"{what} holds a recurrent layer: shrink does not remove its units"
    return f"{what} holds layers that the walk does not look into"


def _cannot_cut(layer: keras.layers.Layer) -> str | None:
    """Why the weights of `layer` (or of a layer inside it) cannot lose channels:
    quantized weights, or LoRA factors (their sum with the kernel is what it reads)."""
    quantized = registry.quantized_layers(layer)
    if quantized:
        inner = quantized[0]
        return (
            f"`{inner.name}` ({type(inner).__name__}) is quantized ({inner.quantization_mode}): "
            "shrink the float model, then quantize"
        )
    for inner in _keras.flatten_layers(layer, include_self=True):
        if getattr(inner, "lora_enabled", False):
            return (
                f"`{inner.name}` ({type(inner).__name__}) has LoRA enabled, whose factors "
                "shrink does not cut"
            )
    return None


def _zero_at_zero(function: Any) -> bool:
    """True if `function(0) == 0` (relu, swish, gelu, tanh...; not sigmoid or softplus)."""
    value = keras.ops.convert_to_numpy(function(keras.ops.zeros((1, 2))))
    return bool(np.all(value == 0))


def per_channel(function: Any) -> bool:
    """True if `function` computes each channel from that channel alone.

    Not softmax, log_softmax or sparsemax (they normalise across the last
    axis) nor glu (which halves it): removing a channel would change the
    others.
    """
    x = np.linspace(-2.0, 2.0, 8, dtype="float32").reshape(1, 8)
    try:
        whole = keras.ops.convert_to_numpy(function(keras.ops.convert_to_tensor(x)))
        half = keras.ops.convert_to_numpy(function(keras.ops.convert_to_tensor(x[:, :4])))
    except Exception:  # a user's activation: left whole if it cannot run here
        return False
    return whole.shape == x.shape and bool(np.allclose(whole[:, :4], half))


def channels_first(model: keras.Model) -> bool:
    """True if every layer of `model` with a `data_format` has "channels_first"
    (a model built under `keras.config.set_image_data_format("channels_first")`):
    the walk then finds channels on axis 1 of tensors of rank 3 and more. A
    model that mixes the two formats is walked channels last, and its
    channels_first layers keep their channels."""
    formats = {
        layer.data_format
        for layer in _keras.flatten_layers(model)
        if isinstance(getattr(layer, "data_format", None), str)
    }
    return formats == {"channels_first"}


class _Walk:
    def __init__(self, model: keras.Model):
        first = channels_first(model)
        self.graph = Graph([], {}, channels_first=first)
        self.format = "channels_first" if first else "channels_last"
        self.layouts: dict[int, Layout] = {}
        self.model = model
        self.mixing: list[tuple[int, str]] = []  # producers' groups whose activation mixes them

    # groups -----------------------------------------------------------
    def new(self, size: int, producers: list[Any], reason: str | None) -> int:
        index = len(self.graph.groups)
        self.graph.groups.append(_Group(size, producers, reason, index))
        return index

    def freeze(self, layout: Layout, reason: str) -> None:
        for index in self.graph.expand(layout).groups:
            group = self.graph.groups[self.graph.find(index)]
            group.reason = group.reason or reason

    def union(self, a: int, b: int) -> None:
        a, b = self.graph.find(a), self.graph.find(b)
        if a != b:
            first, second = self.graph.groups[a], self.graph.groups[b]
            second.parent = a
            first.producers += second.producers
            first.reason = first.reason or second.reason
            self.set_block(a, second.block)

    def size(self, layout: Layout) -> int:
        return sum(self.sizes(layout)) * layout.repeat

    def sizes(self, layout: Layout) -> list[int]:
        return [self.graph.groups[g].size for g in layout.groups]

    def split(self, group: int, cuts: list[int]) -> list[int]:
        """Cuts root `group` at the channel positions `cuts`; returns the pieces."""
        whole = self.graph.groups[group]
        bounds = [0, *cuts, whole.size]
        pieces = []
        for start, end in zip(bounds, bounds[1:]):
            producers = [(layer, first + start) for layer, first in whole.producers]
            piece = self.new(end - start, producers, whole.reason)
            if start % whole.block:  # its runs would start mid-run
                self.graph.groups[piece].reason = self.graph.groups[piece].reason or (
                    f"a run of {whole.block} channels normalised together is cut in two"
                )
            else:
                self.set_block(piece, whole.block)
            pieces.append(piece)
        self.graph.splits[group] = pieces
        return pieces

    def set_block(self, index: int, block: int) -> None:
        """Root group `index` loses channels in runs of `block` too (GroupNormalization)."""
        group = self.graph.groups[index]
        group.block = math.lcm(group.block, block)
        if group.size % group.block:
            reason = (
                f"its {group.size} channels do not divide into the runs of {group.block} "
                "that GroupNormalization normalises together"
            )
        elif 1 < group.block == group.size:
            reason = f"GroupNormalization normalises all its {group.size} channels together"
        else:
            return
        group.reason = group.reason or reason

    def align(self, layouts: list[Layout]) -> list[Layout] | None:
        """`layouts` cut into groups of the same sizes at the same places, or None if they differ
        in size or one is tiled (a group cut at one of its places would be cut again)."""
        if len({(self.size(layout), layout.repeat) for layout in layouts}) != 1:
            return None
        if any(layout.tiled for layout in layouts):
            return None
        cuts = set()
        for layout in layouts:
            cuts.update(itertools.accumulate(self.sizes(layout)))
        result = []
        for layout in layouts:
            layout = self.graph.expand(layout)  # an earlier input may have cut a group of this one
            groups, zero, offset = [], [], 0
            for group, z in zip(layout.groups, layout.zero):
                size = self.graph.groups[group].size
                inner = sorted(c - offset for c in cuts if offset < c < offset + size)
                pieces = self.split(group, inner) if inner else [group]
                groups += pieces
                zero += [z] * len(pieces)
                offset += size
            result.append(Layout(tuple(groups), tuple(zero), layout.repeat))
        return [self.graph.expand(layout) for layout in result]

    def channels(self, tensor: Any) -> int | None:
        """The number of channels of `tensor` (None if unknown or a scalar)."""
        return tensor.shape[self.axis(tensor)] if len(tensor.shape) else None

    def axis(self, tensor: Any) -> int:
        """`Graph.channel_axis` counted from the front, to compare with a layer's axis."""
        return self.graph.channel_axis(tensor) % len(tensor.shape)

    def in_format(self, layer: keras.layers.Layer) -> bool:
        """Whether `layer` (if it has a `data_format`) keeps the channels where the walk does."""
        return getattr(layer, "data_format", self.format) == self.format

    def opaque(self, tensor: Any, reason: str) -> Layout:
        """A tensor whose channels nothing may remove."""
        size = self.channels(tensor) or 0
        return Layout((self.new(size, [], reason),), (False,))

    # the walk ---------------------------------------------------------
    def run(self) -> Graph:
        calls = _keras.graph_calls(self.model)
        uses: dict[int, int] = {}
        for operation, _, _ in calls:
            uses[id(operation)] = uses.get(id(operation), 0) + 1
        for tensor in self.model.inputs:
            self.layouts[id(tensor)] = self.opaque(tensor, "it is a model input")
        for operation, inputs, outputs in calls:
            if isinstance(operation, ZERO_KEEPING) and len(inputs) == 2:
                # The padding mask that Keras passes with the tensor (after an
                # `Embedding(mask_zero=True)`): it holds no channels, and a
                # masked pooling still computes each channel from itself.
                inputs = inputs[:1]
            layouts = [self.graph.expand(self.layouts[id(t)]) for t in inputs]
            result = None
            if uses[id(operation)] == 1 or not operation.weights:
                result = self.call(operation, inputs, layouts, outputs)
            if result is None:
                reason = _cannot_shrink(operation, uses[id(operation)])
                if _produces(operation):
                    whole = _left_whole(operation, uses[id(operation)])
                    self.graph.whole[id(operation)] = (operation, whole)
                for layout in layouts:
                    self.freeze(layout, reason)
                result = [self.opaque(t, reason) for t in outputs]
            for tensor, layout in zip(outputs, result):
                self.layouts[id(tensor)] = layout
            if isinstance(operation, keras.layers.Layer) and len(inputs) == 1:
                self.graph.calls[id(operation)] = (operation, layouts[0], result[0])
        for tensor in self.model.outputs:
            name = _keras.source_operation(tensor).name
            self.freeze(self.layouts[id(tensor)], f"it reaches the model output of `{name}`")
        for group, reason in self.mixing:
            self.freeze(Layout((group,), (True,)), reason)
        for key, (layer, inputs, outputs) in self.graph.calls.items():
            self.graph.calls[key] = (layer, self.graph.expand(inputs), self.graph.expand(outputs))
        return self.graph

    def read(self, layer: keras.layers.Layer, layout: Layout) -> None:
        """`layer`'s kernel reads `layout`: a removed channel must be 0 there."""
        for group, zero in zip(layout.groups, layout.zero):
            if not zero:
                self.freeze(
                    Layout((group,), (zero,)),
                    f"`{layer.name}` would read a nonzero value from its removed channels "
                    "(an activation with f(0) != 0 comes first)",
                )

    def call(self, layer: Any, inputs: list[Any], layouts: list[Layout], outputs: list[Any]):
        """The output layouts of one call, or None if it is not understood."""
        kind = type(layer)
        if len(outputs) != 1:
            return None
        if not isinstance(layer, keras.layers.Layer):
            return self.op(layer, inputs, layouts, outputs[0])
        if kind in MERGES or kind is L.Multiply or _keras.is_scaled_sum(layer):
            return self.merge(layouts, multiply=kind is L.Multiply)
        if kind is L.Concatenate:
            return self.concatenate(layer, inputs, layouts)
        if kind in heads.ATTENTION:
            return self.attention(layer, layouts, outputs[0])
        if blocks.feed_forward(layer) is not None:
            return self.block(layer, layouts, outputs[0])
        if len(layouts) != 1:
            return None
        (layout,) = layouts
        if kind in PRODUCERS:
            return self.produce(layer, inputs[0], layout)
        if layout.flat and kind not in (L.Dropout, L.Identity, *ACTIVATIONS):
            return None
        if kind in ACTIVATIONS:
            if kind is L.Activation and not per_channel(layer.activation):
                return None
            zero = tuple(z and _zero_at_zero(layer) for z in layout.zero)
            return [dataclasses.replace(layout, zero=zero)]
        if kind in ZERO_KEEPING:
            return [layout] if self.in_format(layer) else None
        if kind is L.PReLU:  # prelu(0) = 0; its slopes along the last axis go with their channel
            return [layout] if self.axis(inputs[0]) == len(inputs[0].shape) - 1 else None
        if kind is L.BatchNormalization:
            if layer.axis % len(inputs[0].shape) != self.axis(inputs[0]):
                return None
            return [Layout(layout.groups, (True,) * len(layout.groups))]
        if kind is L.GroupNormalization:
            return self.group_norm(layer, inputs[0], layout)
        if kind in DEPTHWISE:
            if layer.depth_multiplier != 1 or not self.in_format(layer):
                return None
            zero = _zero_at_zero(layer.activation)
            return [Layout(layout.groups, (zero,) * len(layout.groups))]
        if kind is L.Flatten:  # channels_first: Flatten moves the channels last first
            shape = inputs[0].shape
            if not self.in_format(layer) or len(shape) < 3 or None in shape[1:]:
                return None
            positions = math.prod(shape[1:]) // self.channels(inputs[0])
            return [Layout(layout.groups, layout.zero, positions)]
        if kind is L.Reshape:
            shape = inputs[0].shape
            if len(outputs[0].shape) == 2 and len(shape) > 2 and None not in shape[1:]:
                if self.axis(inputs[0]) != len(shape) - 1:  # channels first: whole runs
                    return None
                positions = math.prod(shape[1:-1])  # `Reshape((-1,))`: a Flatten
                return [Layout(layout.groups, layout.zero, positions)]
            # Channel c's entries stay together: its axis is last or 1 in both.
            width = self.channels(inputs[0])
            return None if width is None or width != self.channels(outputs[0]) else [layout]
        return None

    def group_norm(self, layer: keras.layers.GroupNormalization, tensor: Any, layout: Layout):
        """Its groups are normalised apart, so whole ones can go: a removed run of
        channels is 0 after it, once its scale and shift are (`set_block`)."""
        channels = self.channels(tensor)
        if layer.axis % len(tensor.shape) != self.axis(tensor) or layout.flat or not channels:
            return None
        run = channels // layer.groups  # a built layer's `groups` (-1 becomes the channels)
        offset = 0
        for group in layout.groups:
            size = self.graph.groups[group].size
            if offset % run or size % run:  # a normalised group spans two channel groups
                self.freeze(
                    layout,
                    f"`{layer.name}` (GroupNormalization) normalises runs of {run} channels "
                    "across channel groups",
                )
                break
            self.set_block(group, run)
            offset += size
        return [Layout(layout.groups, (True,) * len(layout.groups))]

    def op(self, operation: Any, inputs: list[Any], layouts: list[Layout], output: Any):
        """A Keras op: on a tensor and a number (`number_op`), on two tensors as the
        merge layers (`x + shortcut`), or on each entry of one tensor (`ops.relu(x)`)."""
        found = _keras.op_with_number(operation)
        if found is not None:
            return self.number_op(found, inputs, layouts, output)
        kind = _keras.tensor_op(operation)
        if kind is not None:
            widths = {self.channels(inputs[0]), self.channels(inputs[1]), self.channels(output)}
            if len(layouts) != 2 or len(widths) != 1:  # not broadcast along the channels
                return None
            return self.merge(layouts, multiply=kind == "multiply")
        if not _keras.elementwise_op(operation) or len(layouts) != 1:
            return None
        if tuple(inputs[0].shape) != tuple(output.shape):
            return None
        layout, zero = layouts[0], _zero_at_zero(operation)
        return [dataclasses.replace(layout, zero=tuple(z and zero for z in layout.zero))]

    def number_op(self, found: Any, inputs: list[Any], layouts: list[Layout], output: Any):
        """A tensor and a number (`x + 3.0`, `x / 6`; `found` is `_keras.op_with_number`'s):
        each channel from itself alone. A removed channel stays 0 unless a nonzero
        number is added to it."""
        if len(layouts) != 1 or tuple(inputs[0].shape) != tuple(output.shape):
            return None
        kind, number, tensor_first = found
        if not math.isfinite(number) or (kind == "divide" and (not tensor_first or number == 0)):
            return None  # x / 0, 6 / x: not 0 where x is
        zero = number == 0 if kind in ("add", "subtract") else True
        layout = layouts[0]
        return [dataclasses.replace(layout, zero=tuple(z and zero for z in layout.zero))]

    def produce(self, layer: keras.layers.Layer, tensor: Any, layout: Layout):
        if isinstance(layer, L.Embedding):
            return self.embed(layer, layout)
        if not self.in_format(layer) or getattr(layer, "groups", 1) != 1:
            return None
        dense = isinstance(layer, (L.Dense, L.EinsumDense))
        if dense and not blocks.acts_as_dense(layer):
            return None  # an EinsumDense that mixes other axes than the last
        if layout.flat and not dense:
            return None
        if self.axis(tensor) != len(tensor.shape) - 1 and dense:
            return None  # a Dense layer reads the last axis, not the channels
        if self.size(layout) != self.channels(tensor):
            return None
        units = int(layer.kernel.shape[-1]) if dense else layer.filters
        reason = _cannot_cut(layer)
        if reason:  # a producer still: `channel_groups` and the error name it with the reason
            self.freeze(layout, reason)
            return [Layout((self.new(units, [(layer, 0)], reason),), (False,))]
        self.read(layer, layout)
        group = self.new(units, [(layer, 0)], None)
        if not per_channel(layer.activation):  # a model output says so first (see `run`)
            name = getattr(layer.activation, "__name__", "its activation")
            self.mixing.append((group, f"`{layer.name}`'s activation ({name}) mixes its channels"))
        return [Layout((group,), (_zero_at_zero(layer.activation),))]

    def embed(self, layer: keras.layers.Embedding, layout: Layout):
        """Its output channels are the columns of its table; it reads ids, not channels.
        A subclass may read the table elsewhere too (KerasHub's `ReversibleEmbedding`
        projects onto it): left whole."""
        if type(layer) is not L.Embedding or self.graph.channels_first:
            return None
        self.freeze(layout, f"`{layer.name}` (Embedding) reads it as ids")
        reason = _cannot_cut(layer)
        if reason:
            return [Layout((self.new(layer.output_dim, [(layer, 0)], reason),), (False,))]
        return [Layout((self.new(layer.output_dim, [(layer, 0)], None),), (True,))]

    def attention(self, layer: keras.layers.Layer, layouts: list[Layout], output: Any):
        """Its heads (`structured.heads`) are a group of their own; its input and output
        channels stay."""
        found = heads.attention_heads(layer)
        if found is None or self.graph.channels_first or _cannot_cut(layer):  # the last axis
            return None  # `run` freezes its channels with that reason
        what = f"`{layer.name}` ({type(layer).__name__})"
        for layout in layouts:
            self.freeze(layout, f"{what} reads it; only its heads are removed")
        self.graph.inner[id(layer)] = (layer, self.new(found.count, [(layer, 0)], None))
        return [self.opaque(output, f"it is the output of {what}")]

    def block(self, layer: keras.layers.Layer, layouts: list[Layout], output: Any):
        """A known transformer block (`structured.blocks`): its feed-forward units are a
        group of their own; its input and output channels stay."""
        found = blocks.feed_forward(layer)
        if found is None or self.graph.channels_first:  # it reads the last axis
            return None
        # A removed unit's inputs to the last projection are 0 if each first
        # projection's own activation keeps 0 at 0 (a gated block multiplies them).
        for inner in found.inner:
            activation = getattr(inner, "activation", None) or keras.activations.linear
            if not (_zero_at_zero(activation) and per_channel(activation)):
                return None
        if _cannot_cut(layer):
            return None  # `run` freezes its channels with that reason
        kind = type(layer).__name__
        reason = f"`{layer.name}` ({kind}) reads it; only its feed-forward units are removed"
        for layout in layouts:
            self.freeze(layout, reason)
        self.graph.inner[id(layer)] = (layer, self.new(found.units, [(layer, 0)], None))
        return [self.opaque(output, f"it is the output of `{layer.name}` ({kind})")]

    def merge(self, layouts: list[Layout], multiply: bool):
        aligned = self.align(layouts)
        if aligned is None:
            return None
        first = aligned[0]
        for other in aligned[1:]:
            for a, b in zip(first.groups, other.groups):
                self.union(a, b)
        combine = any if multiply else all  # x * 0 is 0; x + 0 is 0 only if x is
        zero = tuple(
            combine(layout.zero[i] for layout in aligned) for i in range(len(first.groups))
        )
        return [Layout(first.groups, zero, first.repeat)]

    def concatenate(self, layer: keras.layers.Layer, inputs: list[Any], layouts: list[Layout]):
        rank = len(inputs[0].shape)
        if layer.axis % rank == self.axis(inputs[0]):
            # Flattened pieces (two branches flattened into one Dense) are
            # written out position by position.
            groups = tuple(g for layout in layouts for g in layout.groups * layout.repeat)
            zero = tuple(z for layout in layouts for z in layout.zero * layout.repeat)
            return [Layout(groups, zero, tiled=any(layout.flat for layout in layouts))]
        if any(layout.flat for layout in layouts):
            return None
        # Along another axis, channel c of each input is one channel.
        return self.merge(layouts, multiply=False)


def analyse(model: keras.Model) -> Graph:
    """The walk behind `channel_groups`, with each layer's layouts (for `shrink`)."""
    return _Walk(model).run()


def chosen_groups(
    graph: Graph,
    selection: Selection,
    layers: list[Any],
    argument: str = "to_prune",
    caller: str = "prune_channels",
) -> set[int]:
    """The roots of the removable groups of which `selection` picks a producer.

    Raises ValueError where `select` names (by instance, name or class) a layer whose
    channels cannot go, saying why, or one that produces none, or no layer of the model
    `layers` come from; and where no group is left (`argument` names that model as
    `caller`, the public function, takes it).
    """
    removable = set(graph.removable())
    producers = set()
    chosen = set()
    for root in graph.roots():
        group = graph.groups[root]
        producers.update(id(layer) for layer, _ in group.producers)
        picked = [layer for layer, _ in group.producers if selection(layer)]
        if not picked:
            continue
        reason = group.reason
        if reason is None and root in removable:
            chosen.add(root)
        elif any(selection.explicit(layer) for layer in picked):
            names = ", ".join(layer.name for layer in picked)
            raise ValueError(f"`select` picks {names}, whose channels cannot be removed: {reason}.")
    for layer in layers:
        if selection.explicit(layer) and id(layer) in graph.whole:
            reason = graph.whole[id(layer)][1]
            raise ValueError(f"`select` picks {layer.name}, whose channels stay: {reason}.")
        if selection.explicit(layer) and id(layer) not in producers:
            raise ValueError(
                f"`select` picks {layer.name} ({type(layer).__name__}), which produces no "
                "channels to remove: select Conv, Dense, EinsumDense, SeparableConv or Embedding "
                "layers."
            )
    selection.check_all_used(argument)
    if not chosen:
        raise ValueError(
            f"`{argument}` has no channel group that {caller} can remove"
            + ("" if selection.everything else " among the selected layers")
            + ": "
            + graph.reasons(selection)
        )
    return chosen


def warn_left_whole(graph: Graph) -> None:
    """One warning naming the groups that keep every channel for another reason than
    reaching the model's output (which no user expects to shrink), and the layers
    whose own channels stay (`Graph.whole`: a custom layer with Dense layers inside)."""
    reasons = sorted(
        {
            f"{', '.join(layer.name for layer, _ in group.producers)}: {group.reason}"
            for group in (graph.groups[i] for i in graph.roots())
            if group.producers and group.reason and "model output" not in group.reason
        }
    )
    layers = sorted(reason for _, reason in graph.whole.values())
    parts = []
    if reasons:
        parts.append(f"{len(reasons)} channel group(s) keep every channel: " + "; ".join(reasons))
    if layers:
        parts.append(f"{len(layers)} layer(s) keep all their channels: " + "; ".join(layers))
    if parts:
        warnings.warn(". ".join(parts), stacklevel=3)


def check_model(model: Any, name: str = "model") -> keras.Model:
    """Raises unless `model` is a built Functional or Sequential Keras model."""
    if not isinstance(model, keras.Model):
        raise TypeError(
            f"`{name}` must be a keras.Model; got {model!r} of type {type(model).__name__}."
        )
    if not _keras.has_graph(model):
        raise ValueError(
            f"`{name}` must be a Functional or Sequential model; `{model.name}` is a subclassed "
            f"{type(model).__name__}, whose `call` has no graph to find channel groups in. Build it "
            "as `keras.Model(inputs, outputs)` (e.g. `keras.Model(x := keras.Input(shape), "
            "model.call(x))` when its call is made of layers)."
        )
    if isinstance(model, keras.Sequential) and not model.built:
        raise ValueError(
            f"`{name}` must be built: give the Sequential model a `keras.Input(shape)` first."
        )
    return model


def channel_groups(model: keras.Model) -> list[ChannelGroup]:
    """The groups of output channels of `model` that are removed together, in graph order.

    Args:
        model: a built Functional or Sequential model (a subclassed model
            has no graph: `ValueError`). Nested models called once are
            seen as part of its graph (`structured.flatten`).

    Returns:
        One `ChannelGroup` per set of channels that layers produce together;
        `reason` is None for the groups channel pruning can shrink.
    """
    graph = analyse(flatten(check_model(model)))
    result = []
    for index in graph.roots():
        group = graph.groups[index]
        if group.producers:
            names = tuple(layer.name for layer, _ in group.producers)
            offsets = tuple(first for _, first in group.producers)
            result.append(ChannelGroup(group.size, names, offsets, group.reason, group.block))
    return result

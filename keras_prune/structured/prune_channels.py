"""`prune_channels`: gradual pruning of whole channels during training, then `shrink`.

The structured counterpart of `prune_low_magnitude`: the same schedules, the
same `model.fit` (with `UpdatePruningStep`, compiled steps, every backend)
and the same `.keras` files, but the schedule's sparsity is the fraction of
each channel group's channels removed (`structured.graph` finds the groups).
The model it returns computes with the removed channels at exactly 0 (a
`ChannelMask` after every layer that holds them, a `HeadMask` around each
`MultiHeadAttention` or `GroupQueryAttention` whose heads go, a
`FeedForwardMask` around each KerasHub transformer block whose feed-forward
units go), and `shrink(model)` then cuts them out: same predictions,
smaller layers. A mask goes after the per-channel
layers that follow its layer alone (`conv -> ReLU -> MaxPooling2D`: one
mask, after the pooling): a removed channel's value there reaches no kept
channel, and the pooled tensor is the smallest one to multiply in every
training step. If a normalisation with a scale is among those layers and
only layers that keep 0 at 0 follow it (`conv -> BatchNormalization ->
ReLU`), a `NormalizationMask` wraps the normalisation instead: a few
products per channel in each step, not one per value of the tensor.

Example:

```python
schedule = keras_prune.PolynomialDecay(0.0, 0.5, begin_step=0, end_step=1000, frequency=100)
masked = keras_prune.prune_channels(model, schedule, round_to=8)
masked.compile(...); masked.fit(x, y, epochs=4, callbacks=[keras_prune.UpdatePruningStep()])
small = keras_prune.shrink(masked)        # a plain Keras model, half the channels
```
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import keras

from keras_prune import _keras, _validation, model_class
from keras_prune.schedules import PruningSchedule
from keras_prune.selection import Selection, by_name
from keras_prune.structured import heads
from keras_prune.structured import importance as importance_lib
from keras_prune.structured.channel_mask import (
    NORMALIZATIONS,
    ChannelMask,
    FeedForwardMask,
    HeadMask,
    NormalizationMask,
    link,
)
from keras_prune.structured.flatten import flatten
from keras_prune.structured.graph import (
    ACTIVATIONS,
    DEPTHWISE,
    PRODUCERS,
    ZERO_KEEPING,
    Graph,
    analyse,
    check_model,
    chosen_groups,
    warn_left_whole,
)
from keras_prune.structured.shrink import rebuild
from keras_prune.wrapper import PruneLowMagnitude

# Layers after which a removed channel could be nonzero: those with per-channel weights.
_MASKED_AFTER = (
    *PRODUCERS,
    *DEPTHWISE,
    *NORMALIZATIONS,
)
_L = keras.layers
# Layers that compute each channel from the same channel alone (a
# GroupNormalization from its own run of channels, which goes whole),
# keeping the last axis, and that a mask may follow past: masking their
# output zeroes the channel as masking their input would, for what comes
# after. Padding and upsampling are left out: they make the tensor to mask
# larger.
_ENLARGING = tuple(
    getattr(_L, f"{k}{d}D") for k in ("ZeroPadding", "UpSampling") for d in (1, 2, 3)
)
_PER_CHANNEL = (
    *NORMALIZATIONS,
    _L.PReLU,
    *ACTIVATIONS,
    *(kind for kind in ZERO_KEEPING if kind not in _ENLARGING),
)


def prune_channels(
    to_prune: keras.Model,
    pruning_schedule: PruningSchedule,
    importance: importance_lib.Importance = "l2",
    select: Any = None,
    global_pruning: bool = False,
    round_to: int = 1,
) -> keras.Model:
    """A copy of `to_prune` that removes whole channels as `pruning_schedule` says while it trains.

    Args:
        to_prune: a built Functional or Sequential model (its weights are
            copied; it is not changed).
        pruning_schedule: a `PruningSchedule` (`ConstantSparsity`,
            `PolynomialDecay`, a subclass); its sparsity is the fraction of
            each group's channels removed.
        importance: "l2" or "l1": channels whose producers' kernel slices
            have the smallest norm go first. Or a callable, called in the
            train step with one float32 `(channels, fan_in)` tensor per
            producer of a group, returning one score per channel with
            `keras.ops`; it is saved with the model, so it must be a
            registered function (`@keras.saving.register_keras_serializable()`).
        select: None (every group that can shrink), or layers by instance,
            name or class, a predicate `f(layer) -> bool`, or a list of
            these: the groups produced by a selected layer.
        global_pruning: False: every group loses the schedule's sparsity of
            its channels. True: the groups together do, the channels with
            the lowest score relative to their group's mean going first,
            so groups that matter less lose more (each keeps at least
            `round_to`).
        round_to: keep a multiple of this many channels per group, and at
            least this many.

    Returns:
        The model with a `ChannelMask` after each layer that holds pruned
        channels (or after the pooling, activation or normalisation that
        alone follows it; or a `NormalizationMask` around that
        normalisation), each pruned `MultiHeadAttention` or
        `GroupQueryAttention` wrapped in a `HeadMask` and each pruned
        transformer block in a `FeedForwardMask`, uncompiled (a KerasHub
        backbone or task as a `model_class.PrunedGraph` that notes its
        class). Train it, then call `shrink(model)`.

    Raises:
        ValueError: a selected layer whose channels cannot be removed (named,
            with the reason), a model without any removable channel, a model
            already pruned, or an argument out of range.
    """
    check_model(to_prune, "to_prune")
    _validation.instance(
        pruning_schedule, "pruning_schedule", PruningSchedule, "a keras_prune.PruningSchedule"
    )
    importance = importance_lib.check(importance)
    if callable(importance):
        _check_saveable(importance)
    global_pruning = _validation.boolean(global_pruning, "global_pruning")
    round_to = _validation.count(round_to, "round_to", minimum=1)
    Selection(select)  # checks it before anything is built
    layers = _keras.flatten_layers(to_prune)
    if any(isinstance(layer, (PruneLowMagnitude, ChannelMask)) for layer in layers):
        raise ValueError(
            "`to_prune` is already pruned (it has PruneLowMagnitude or ChannelMask layers); "
            "prune channels of the plain model (`strip_pruning` gives it for weight pruning)."
        )
    original = to_prune
    flat = flatten(to_prune)
    if flat is not to_prune:  # its layers are copies, with the same names
        select = by_name(select, layers)
        to_prune, layers = flat, _keras.flatten_layers(flat)
    selection = Selection(select)
    graph = analyse(to_prune)
    chosen = chosen_groups(graph, selection, layers)
    if callable(importance):
        for root in chosen:
            _check_traceable(importance, graph.groups[root].producers, graph.groups[root].size)
    if selection.everything:
        warn_left_whole(graph)

    def segment(group: int) -> dict[str, Any]:
        """A mask's entry for `group`; one that is not chosen has no producers and stays."""
        producers = graph.groups[group].producers if group in chosen else []
        return {
            "group": f"group_{group}",
            "size": graph.groups[group].size,
            "producers": [[p.name, first] for p, first in producers],
            "block": graph.groups[group].block,
        }

    masks: dict[int, ChannelMask] = {}
    normalizations: dict[int, dict[str, Any]] = {}  # id(normalisation) -> its mask's arguments
    for end, (layer, output, normalization) in _mask_places(to_prune, graph, chosen).items():
        arguments = dict(
            segments=[segment(group) for group in graph.calls[id(layer)][2].groups],
            importance=importance,
            round_to=round_to,
            source=layer.name,
            global_pruning=global_pruning,
            axis=graph.channel_axis(output),
            name=f"{layer.name}_channel_mask",
        )
        if normalization is None:
            masks[end] = ChannelMask(pruning_schedule, **arguments)
        else:
            normalizations[id(normalization)] = arguments
    inside: dict[int, list[dict[str, Any]]] = {}
    for layer, group in graph.inner.values():
        root = graph.find(group)
        if root in chosen:
            inside[id(layer)] = [segment(root)]  # one channel per head or unit

    def wrap(layer: keras.layers.Layer, new: keras.layers.Layer) -> keras.layers.Layer:
        if id(layer) in normalizations:
            return NormalizationMask(new, pruning_schedule, **normalizations[id(layer)])
        if id(layer) not in inside:
            return new
        attention = isinstance(layer, heads.ATTENTION)
        return (HeadMask if attention else FeedForwardMask)(
            new,
            pruning_schedule,
            segments=inside[id(layer)],
            importance=importance,
            round_to=round_to,
            source=layer.name,
            global_pruning=global_pruning,
            name=f"{layer.name}_{'head' if attention else 'feed_forward'}_mask",
        )

    model = rebuild(to_prune, graph, {}, after=lambda layer: masks.get(id(layer)), wrap=wrap)
    model = model_class.remember(original, model)  # a KerasHub task's class, for `shrink`
    link(model)
    return model


def _check_saveable(importance: Callable[..., Any]) -> None:
    """Raises unless `keras.saving` can save `importance` with the model and load it back."""
    try:
        with warnings.catch_warnings():  # Keras warns of a lambda; the error below says more
            warnings.simplefilter("ignore")
            config = keras.saving.serialize_keras_object(importance)
        restored = keras.saving.deserialize_keras_object(config)
    except Exception as error:  # what keras.saving raises for lambdas and nested functions
        restored, reason = None, f" ({type(error).__name__}: {error})"
    else:
        reason = ""
    if restored is not importance:
        raise ValueError(
            f"`importance` {importance!r} is saved with the model's masks and must load back: "
            "define it at module level and register it with "
            "`@keras.saving.register_keras_serializable()` (a lambda or nested function cannot "
            f"be loaded){reason}."
        )


def _check_traceable(
    importance: Callable[..., Any], producers: list[tuple[Any, int]], channels: int
) -> None:
    """Calls `importance` on symbolic weights of one group, as the train step will."""
    weights = [
        keras.KerasTensor((channels, importance_lib.fan_in(layer))) for layer, _ in producers
    ]
    try:
        shape = tuple(keras.ops.convert_to_tensor(importance(weights)).shape)
    except Exception as error:  # the user's function, on symbolic tensors
        raise ValueError(
            "`importance` must compute its scores with keras.ops (it runs inside the compiled "
            f"train step); calling it on symbolic weights raised {type(error).__name__}: {error}"
        ) from None
    if shape != (channels,):
        names = ", ".join(layer.name for layer, _ in producers)
        raise ValueError(
            f"`importance` must return {channels} scores, one per channel of the group of "
            f"{names}; it returned shape {shape}."
        )


def _mask_places(
    model: keras.Model, graph: Graph, chosen: set[int]
) -> dict[int, tuple[keras.layers.Layer, Any, keras.layers.Layer | None]]:
    """`{id(the last layer of a chain): (the chain's first layer, whose channels are
    masked; the chain's output; the normalisation to mask, or None)}`.

    Each layer with per-channel weights whose channels are chosen starts a
    chain, which goes on past every `_PER_CHANNEL` layer that alone reads
    what comes before (called once, its input read by nothing else, not a
    model output); the layers in it need no mask of their own. If the
    chain's last normalisation (called once, with a scale) is followed only
    by layers that keep 0 at 0, a `NormalizationMask` wraps it: masking its
    scale and shift costs a few products per channel, where a `ChannelMask`
    after the chain multiplies the whole tensor, forward and backward.
    Otherwise a `ChannelMask` follows the chain.
    """
    calls = _keras.graph_calls(model)
    readers: dict[int, list[Any]] = {}
    outputs_of: dict[int, list[Any]] = {}
    uses: dict[int, int] = {}
    for operation, inputs, outputs in calls:
        uses[id(operation)] = uses.get(id(operation), 0) + 1
        outputs_of[id(operation)] = outputs
        for tensor in inputs:
            readers.setdefault(id(tensor), []).append(operation)
    for tensor in model.outputs:
        readers.setdefault(id(tensor), []).append(None)

    def next_link(layer: Any) -> Any:
        outputs = outputs_of[id(layer)]
        users = readers.get(id(outputs[0]), []) if len(outputs) == 1 else []
        if len(users) != 1 or type(users[0]) not in _PER_CHANNEL:  # subclasses may mix channels
            return None
        user = users[0]
        call = graph.calls.get(id(user))
        # The walk passed the same groups through it: not a softmax, a
        # BatchNormalization over another axis or a channels_first pooling,
        # whose outputs the walk leaves opaque.
        if uses[id(user)] != 1 or call is None or call[1].groups != call[2].groups:
            return None
        return user

    def normalization(chain: list[Any]) -> keras.layers.Layer | None:
        last = [layer for layer in chain if type(layer) in NORMALIZATIONS]
        if not last or uses[id(last[-1])] != 1 or not last[-1].scale:
            return None
        # The normalisation's output reads 0 for a removed channel; `zero` says
        # whether it still does at the end of the chain.
        return last[-1] if all(graph.calls[id(chain[-1])][2].zero) else None

    places: dict[int, tuple[keras.layers.Layer, Any, keras.layers.Layer | None]] = {}
    followed: set[int] = set()
    for layer, _, outputs in graph.calls.values():
        if id(layer) in followed or not isinstance(layer, _MASKED_AFTER):
            continue
        if not set(outputs.groups) & chosen:
            continue
        chain = [layer]
        while (link_ := next_link(chain[-1])) is not None:
            chain.append(link_)
            followed.add(id(link_))
        norm = normalization(chain)
        output = outputs_of[id(chain[-1] if norm is None else norm)][0]
        places[id(chain[-1])] = (layer, output, norm)
    return places

"""The feed-forward units of transformer blocks that channel pruning knows.

A KerasHub `TransformerEncoder` or `TransformerDecoder` is a custom layer:
the graph walk (`structured.graph`) sees one call with no graph inside. Its
feed-forward network is `Dense(intermediate_dim, activation) ->
Dense(width)`, and its units are channels that nothing outside the block
reads: removing unit `u` removes column `u` of the first kernel, entry `u`
of its bias and row `u` of the second kernel, and the block's config says
how many there are (`intermediate_dim`), so the smaller block saves and
loads as itself. `FEED_FORWARD` names, for each known block class (by its
registered name), the config key and the names of the two Dense sublayers.

The block's residual width stays (LayerNormalization normalises across it),
and so do its attention heads: KerasHub derives a head's size from
`width // num_heads`, so a block with fewer heads would have larger ones.

Example:

```python
inner, outer = blocks.feed_forward(encoder)    # the two Dense layers, or None
blocks.units_key(encoder)                      # "intermediate_dim"
```
"""

from __future__ import annotations

import dataclasses

import keras

from keras_prune import _keras


@dataclasses.dataclass(frozen=True)
class FeedForward:
    """Where a block class keeps its feed-forward units.

    Args:
        units: the config key holding the number of units.
        inner: the name of the Dense sublayer producing them.
        outer: the name of the Dense sublayer reading them.
    """

    units: str
    inner: str
    outer: str


_KERAS_HUB = FeedForward(
    "intermediate_dim", "feedforward_intermediate_dense", "feedforward_output_dense"
)
# Checked on KerasHub 0.32 (BERT, RoBERTa, DistilBERT, ELECTRA, BART, OPT and GPT-2 use them).
FEED_FORWARD = {
    "keras_hub>TransformerEncoder": _KERAS_HUB,
    "keras_hub>TransformerDecoder": _KERAS_HUB,
}


def _known(layer: keras.layers.Layer) -> FeedForward | None:
    # The exact class: a subclass may compute something else in `call`.
    return FEED_FORWARD.get(keras.saving.get_registered_name(type(layer)))


def feed_forward(
    layer: keras.layers.Layer,
) -> tuple[keras.layers.Dense, keras.layers.Dense] | None:
    """`layer`'s two feed-forward Dense layers (units produced, units read), or None.

    None unless `layer` is a built block of a class in `FEED_FORWARD` whose
    sublayers are as expected: a plain Dense with `units` units, then a
    Dense whose kernel has that many rows.
    """
    known = _known(layer)
    if known is None or not layer.built:
        return None
    found = {sub.name: sub for sub in _keras.flatten_layers(layer)}
    inner, outer = found.get(known.inner), found.get(known.outer)
    if not isinstance(inner, keras.layers.Dense) or not isinstance(outer, keras.layers.Dense):
        return None
    units = layer.get_config().get(known.units)
    if inner.units != units or outer.kernel.shape[0] != units:
        return None
    return inner, outer


def units_key(layer: keras.layers.Layer) -> str:
    """The config key of `layer`'s number of feed-forward units (its class is known)."""
    known = _known(layer)
    if known is None:
        raise ValueError(
            f"`layer` {layer.name!r} ({type(layer).__name__}) is not a transformer block "
            f"keras_prune knows; known: {', '.join(sorted(FEED_FORWARD))}."
        )
    return known.units

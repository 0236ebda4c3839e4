"""The feed-forward units of transformer blocks that channel pruning knows.

A KerasHub `TransformerEncoder`, `TransformerDecoder` or a model's own
decoder block is a custom layer: the graph walk (`structured.graph`) sees
one call with no graph inside. Its feed-forward network is one or two
projections to `units` (`Dense(units, activation)`, or a gated pair such
as `gelu(gate(x)) * up(x)`), then a projection back to the width; its units
are channels that nothing outside the block reads. Removing unit `u`
removes column `u` of each first projection's kernel and bias and row `u`
of the last kernel, and the block's config says how many there are
(`intermediate_dim`), so the smaller block saves and loads as itself.
`FEED_FORWARD` names, for each known block class, the config key and the
names of those sublayers.

The block's residual width stays (its normalisation works across it), and
so do its attention heads: KerasHub derives a head's size from
`width // num_heads`, so a block with fewer heads would have larger ones.

Example:

```python
found = blocks.feed_forward(encoder)   # a FeedForwardLayers, or None
found.inner, found.outer, found.units  # (Dense,), Dense, 3072
```
"""

from __future__ import annotations

import dataclasses
from typing import Any

import keras

from keras_prune import _keras


@dataclasses.dataclass(frozen=True)
class FeedForward:
    """Where a block class keeps its feed-forward units.

    Args:
        key: the config key holding the number of units.
        inner: the names of the sublayers producing them (a gated network
            has two, multiplied together).
        outer: the name of the sublayer reading them.
        per_unit: the config value per unit (Gemma's `intermediate_dim` is
            twice its units), or the config key that holds it (Gemma 3's
            `gate_dim_reduction`).
    """

    key: str
    inner: tuple[str, ...]
    outer: str
    per_unit: int | str = 1


@dataclasses.dataclass(frozen=True)
class FeedForwardLayers:
    """A built block's feed-forward sublayers, each a Dense or an EinsumDense on the last axis."""

    inner: tuple[keras.layers.Layer, ...]
    outer: keras.layers.Layer
    units: int
    key: str
    per_unit: int

    def config_value(self, units: int) -> int:
        """The value of `key` in the block's config for `units` units."""
        return units * self.per_unit


_PLAIN = FeedForward(
    "intermediate_dim", ("feedforward_intermediate_dense",), "feedforward_output_dense"
)
_GATED = FeedForward(
    "intermediate_dim",
    ("feedforward_intermediate_dense", "feedforward_gate_dense"),
    "feedforward_output_dense",
)
_KERAS_HUB = "keras_hub.src."
# By module and class name, checked on KerasHub 0.32 (which models use them
# in brackets). A subclass may compute something else in `call`: only these
# exact classes count.
_GEMMA = ("intermediate_dim", ("ffw_gating", "ffw_gating_2"), "ffw_linear")
FEED_FORWARD = {
    # BERT, RoBERTa, DistilBERT, ELECTRA, BART, OPT, GPT-2, ...
    f"{_KERAS_HUB}layers.modeling.transformer_encoder.TransformerEncoder": _PLAIN,
    f"{_KERAS_HUB}layers.modeling.transformer_decoder.TransformerDecoder": _PLAIN,
    # Falcon: Dense(units, gelu).
    f"{_KERAS_HUB}models.falcon.falcon_transformer_decoder.FalconTransformerDecoder": FeedForward(
        "intermediate_dim", ("dense_h_to_4h",), "dense_4h_to_h"
    ),
    # Gemma: gelu(ffw_gating(x)) * ffw_gating_2(x), intermediate_dim // 2 units.
    f"{_KERAS_HUB}models.gemma.gemma_decoder_block.GemmaDecoderBlock": FeedForward(
        *_GEMMA, per_unit=2
    ),
    # Gemma 3: the same, intermediate_dim // gate_dim_reduction units.
    f"{_KERAS_HUB}models.gemma3.gemma3_decoder_block.Gemma3DecoderBlock": FeedForward(
        *_GEMMA, per_unit="gate_dim_reduction"
    ),
    # Mistral, Qwen, Phi-3: intermediate(x) * activation(gate(x)).
    f"{_KERAS_HUB}models.mistral.mistral_transformer_decoder.MistralTransformerDecoder": _GATED,
    f"{_KERAS_HUB}models.qwen.qwen_decoder.QwenTransformerDecoder": _GATED,
    f"{_KERAS_HUB}models.phi3.phi3_decoder.Phi3Decoder": _GATED,
}
# Not listed, though built alike: KerasHub 0.32's Llama, Qwen 3 and GPT-NeoX
# blocks cannot be re-created from their own config (`clone_model` fails on
# them too), and a smaller block is re-created from its config.


def _known(layer: keras.layers.Layer) -> FeedForward | None:
    kind = type(layer)
    return FEED_FORWARD.get(f"{kind.__module__}.{kind.__qualname__}")


def _per_unit(known: FeedForward, config: dict[str, Any]) -> int:
    """`known.per_unit`, read from a layer's `config` if it names a key there (0 if not an int)."""
    if isinstance(known.per_unit, int):
        return known.per_unit
    value = config.get(known.per_unit)
    return value if isinstance(value, int) and value >= 1 else 0


def _config_units(known: FeedForward, layer: keras.layers.Layer) -> tuple[int, int]:
    """(units, per unit) as `layer`'s config says them; (0, 0) if it cannot say a whole number."""
    config = layer.get_config()
    per_unit, value = _per_unit(known, config), config.get(known.key)
    if not per_unit or not isinstance(value, int) or value % per_unit:
        return 0, 0
    return value // per_unit, per_unit


def acts_as_dense(layer: keras.layers.Layer) -> bool:
    """Whether `layer` is a Dense, or an EinsumDense that acts as one on the last axis
    (`...x,xy->...y`, its bias, if any, along `y`)."""
    if isinstance(layer, keras.layers.Dense):
        return True
    if not isinstance(layer, keras.layers.EinsumDense) or len(layer.kernel.shape) != 2:
        return False
    inputs, rest = layer.equation.split(",")
    kernel, output = rest.split("->")
    bias = getattr(layer, "bias", None)
    return (
        inputs[:-1] == output[:-1]
        and kernel == inputs[-1] + output[-1]
        and (bias is None or tuple(bias.shape) == (layer.kernel.shape[1],))
    )


def feed_forward(layer: keras.layers.Layer) -> FeedForwardLayers | None:
    """`layer`'s feed-forward sublayers, or None.

    None unless `layer` is a built block of a class in `FEED_FORWARD`
    whose sublayers are as expected: each inner one a Dense or EinsumDense
    producing `units` on the last axis, the outer one reading `units` rows,
    and the config saying `units`.
    """
    known = _known(layer)
    if known is None or not layer.built:
        return None
    found = {sub.name: sub for sub in _keras.flatten_layers(layer)}
    inner = tuple(found.get(name) for name in known.inner)
    outer = found.get(known.outer)
    if not all(d is not None and acts_as_dense(d) for d in (*inner, outer)):
        return None
    units = inner[0].kernel.shape[1]
    if any(d.kernel.shape[1] != units for d in inner) or outer.kernel.shape[0] != units:
        return None
    config_units, per_unit = _config_units(known, layer)
    if config_units != units:
        return None
    return FeedForwardLayers(inner, outer, units, known.key, per_unit)


def configured_units(layer: keras.layers.Layer) -> int:
    """The number of feed-forward units `layer`'s config says (0 if it says none),
    or a ValueError naming the block classes known."""
    known = _known(layer)
    if known is None:
        names = ", ".join(sorted(name.rsplit(".", 1)[1] for name in FEED_FORWARD))
        raise ValueError(
            f"`layer` {layer.name!r} ({type(layer).__name__}) is not a transformer block "
            f"keras_prune knows; known: {names}."
        )
    return _config_units(known, layer)[0]

"""The layer registry: which weights of which layers magnitude pruning prunes.

Built-in Keras layers are listed by class with the attribute paths of their
prunable weights (biases and normalisation parameters are never pruned, as in
tfmot). Custom layers either implement `PrunableLayer` or are added with
`register_prunable`. Layers known to have nothing worth pruning are listed
with no weights; they, and layers without any weights, pass through
`prune_low_magnitude` unwrapped.

A layer the registry does not list (a KerasHub `TransformerEncoder`, a
user's block) is looked into: its prunable weights are those of the known
layers inside it, at any depth (attention projections, FFN kernels). The
weights of unknown layers (`unknown_layers`: `LayerScale`, KerasHub's
`PositionEmbedding`, ...) are left alone and reported, never guessed at.
"""

from __future__ import annotations

import abc
import collections
from collections.abc import Sequence
from typing import Any

import keras

from keras_prune import _keras

_REGISTRY: dict[type, tuple[str, ...]] = {}


class PrunableLayer(abc.ABC):
    """Mixin for custom layers that say which of their weights to prune.

    Example:

    ```python
    class MyDense(keras.layers.Dense, keras_prune.PrunableLayer):
        def get_prunable_weights(self):
            return [self.kernel]
    ```
    """

    @abc.abstractmethod
    def get_prunable_weights(self) -> list[keras.Variable]:
        """Returns the variables to prune."""


def register_prunable(layer_class: type, weights: Sequence[str]) -> None:
    """Declares which weights of `layer_class` (and its subclasses) to prune.

    Args:
        layer_class: a `keras.layers.Layer` subclass.
        weights: attribute paths of the variables to prune, relative to the
            layer, e.g. `("kernel",)` or `("cell.kernel", "cell.recurrent_kernel")`.
            An empty sequence marks the layer as having nothing to prune.

    Example:

    >>> register_prunable(MyAttention, ["query_kernel", "value_kernel"])
    """
    if not (isinstance(layer_class, type) and issubclass(layer_class, keras.layers.Layer)):
        raise TypeError(
            f"`layer_class` must be a subclass of keras.layers.Layer; got {layer_class!r}."
        )
    if isinstance(weights, str) or not all(isinstance(w, str) and w for w in weights):
        raise TypeError(
            f"`weights` must be a sequence of attribute names like ['kernel']; got {weights!r}."
        )
    _REGISTRY[layer_class] = tuple(weights)


def _registered_paths(layer: keras.layers.Layer) -> tuple[str, ...] | None:
    for cls in type(layer).__mro__:
        if cls in _REGISTRY:
            return _REGISTRY[cls]
    return None


def _resolve(layer: keras.layers.Layer, path: str) -> keras.Variable:
    obj: Any = layer
    for part in path.split("."):
        obj = getattr(obj, part)
    if not isinstance(obj, keras.Variable):
        raise TypeError(
            f"The registered prunable weight {path!r} of layer {layer.name!r} is a "
            f"{type(obj).__name__}, not a keras.Variable."
        )
    return obj


def is_known(layer: Any) -> bool:
    """Whether the registry knows `layer`'s class, prunable or explicitly not."""
    return isinstance(layer, PrunableLayer) or _registered_paths(layer) is not None


def cannot_prune(layer: Any) -> str | None:
    """Why a layer the registry knows cannot be pruned as it is, or None if it can.

    A Dense, EinsumDense or Embedding with LoRA enabled (`enable_lora`, or a
    KerasHub backbone's) reads its kernel as the frozen kernel plus the
    product of two trained factors, a sum that no mask keeps sparse. Such a
    layer, and a known layer holding one (a `MultiHeadAttention` whose query
    projection has LoRA), stay dense and are reported like unknown layers.
    """
    if any(
        getattr(inner, "lora_enabled", False)
        for inner in _keras.flatten_layers(layer, include_self=True)
    ):
        return (
            "LoRA is enabled, so the kernel it reads is the frozen kernel plus "
            "trained factors, which no mask keeps sparse"
        )
    return None


def dense_reason(layer: keras.layers.Layer) -> str:
    """Why `unknown_layers` lists `layer`: `cannot_prune`'s reason, or that the
    registry does not know it."""
    return cannot_prune(layer) or "keras_prune does not know how to prune this layer"


def _known_inside(layer: keras.layers.Layer) -> list[keras.layers.Layer]:
    """The outermost known layers inside the unknown `layer`, at any depth, each once."""
    found: list[keras.layers.Layer] = []
    seen: set[int] = set()
    pending = collections.deque(_keras.sublayers(layer))
    while pending:  # breadth first: the outermost known layer of each branch
        sub = pending.popleft()
        if id(sub) in seen:
            continue
        seen.add(id(sub))
        if is_known(sub):
            found.append(sub)
        else:
            pending.extend(_keras.sublayers(sub))
    return found


def supports(layer: Any) -> bool:
    """Whether `layer` has prunable weights (its own, or those of known layers inside it)."""
    if not isinstance(layer, keras.layers.Layer):
        return False
    if is_known(layer):
        prunable = isinstance(layer, PrunableLayer) or bool(_registered_paths(layer))
        return prunable and cannot_prune(layer) is None
    return any(supports(sub) for sub in _known_inside(layer))


def unknown_layers(layer: keras.layers.Layer) -> list[keras.layers.Layer]:
    """`layer` and the layers inside it that own weights the registry does not know
    (or knows but `cannot_prune`).

    These weights are never pruned; `prune_low_magnitude` warns about them
    (or refuses, with `strict=True`) and `sparsity_report` lists them.
    Layers inside a known layer are the known layer's business.
    """
    if is_known(layer):
        return [layer] if cannot_prune(layer) else []
    found = [layer] if _keras.own_variables(layer) else []
    for sub in _keras.sublayers(layer):
        found += [u for u in unknown_layers(sub) if all(u is not f for f in found)]
    return found


def quantized_layers(layer: keras.layers.Layer) -> list[keras.layers.Layer]:
    """`layer` and the layers inside it that `model.quantize` changed (they have a
    `quantization_mode`): their kernels are integers, or float8 with scales, that
    neither magnitude pruning nor `shrink` can rank or cut."""
    return [
        inner
        for inner in _keras.flatten_layers(layer, include_self=True)
        if getattr(inner, "quantization_mode", None)
    ]


def get_prunable_weights(layer: keras.layers.Layer) -> list[keras.Variable]:
    """The variables of a built `layer` that pruning masks.

    Raises:
        ValueError: if the layer is not built, the registry does not know it,
            or it `cannot_prune`.
    """
    if not isinstance(layer, keras.layers.Layer):
        raise TypeError(f"`layer` must be a keras.layers.Layer; got {type(layer).__name__}.")
    reason = cannot_prune(layer)
    if reason:
        raise ValueError(f"Layer {layer.name!r} cannot be pruned: {reason}.")
    if isinstance(layer, PrunableLayer):
        weights = list(layer.get_prunable_weights())
        if not all(isinstance(w, keras.Variable) for w in weights):
            raise TypeError(
                f"{type(layer).__name__}.get_prunable_weights() must return keras.Variables."
            )
        return weights
    paths = _registered_paths(layer)
    if paths is None:
        if not supports(layer):
            raise ValueError(
                f"Layer {layer.name!r} of class {type(layer).__name__} is not supported "
                "for pruning: neither it nor any layer inside it has weights keras_prune "
                "knows how to prune. Implement keras_prune.PrunableLayer on it, or call "
                "keras_prune.register_prunable(its_class, ['kernel', ...])."
            )
        weights: dict[int, keras.Variable] = {}
        for sub in _known_inside(layer):
            if not cannot_prune(sub):
                weights.update((id(w), w) for w in get_prunable_weights(sub))
        return list(weights.values())
    if paths and not layer.built:
        raise ValueError(f"Layer {layer.name!r} must be built before its weights are listed.")
    weights = [_resolve(layer, path) for path in paths]
    gate = (
        _keras.attention_gate(layer) if isinstance(layer, keras.layers.MultiHeadAttention) else None
    )
    if gate is not None:  # a kernel like the projections', with no public path to register
        weights.append(gate.kernel)
    return weights


_L = keras.layers
for _cls in (
    _L.Dense, _L.EinsumDense, _L.Conv1D, _L.Conv2D, _L.Conv3D,
    _L.Conv1DTranspose, _L.Conv2DTranspose, _L.Conv3DTranspose,
    _L.DepthwiseConv1D, _L.DepthwiseConv2D,
):  # fmt: skip
    register_prunable(_cls, ["kernel"])
# The depthwise kernels of separable convolutions are tiny; tfmot prunes only
# the pointwise kernel.
register_prunable(_L.SeparableConv1D, ["pointwise_kernel"])
register_prunable(_L.SeparableConv2D, ["pointwise_kernel"])
register_prunable(_L.Embedding, ["embeddings"])
for _cls in (_L.SimpleRNN, _L.LSTM, _L.GRU):
    register_prunable(_cls, ["cell.kernel", "cell.recurrent_kernel"])
for _cls in (_L.SimpleRNNCell, _L.LSTMCell, _L.GRUCell):
    register_prunable(_cls, ["kernel", "recurrent_kernel"])
for _cls in (_L.ConvLSTM1D, _L.ConvLSTM2D, _L.ConvLSTM3D):  # (their cell class is private)
    register_prunable(_cls, ["cell.kernel", "cell.recurrent_kernel"])
# SpectralNormalization rescales its layer's kernel in each training call:
# prune that kernel (the rescaled masked kernel is what the layer reads and
# what is stored); its power-iteration vector is no connection.
register_prunable(_L.SpectralNormalization, ["layer.kernel"])
register_prunable(
    _L.MultiHeadAttention,
    [f"{p}_dense.kernel" for p in ("query", "key", "value", "output")],
)
# Normalisation parameters are scales and shifts, not connections: never
# pruned; nor the score scales of the attention layers without projections.
for _cls in (
    _L.BatchNormalization, _L.LayerNormalization, _L.GroupNormalization,
    _L.UnitNormalization, _L.Normalization, _L.PReLU, _L.Attention, _L.AdditiveAttention,
    *[getattr(_L, n) for n in ("RMSNormalization",) if hasattr(_L, n)],  # Keras >= 3.9
):  # fmt: skip
    register_prunable(_cls, [])
del _L, _cls

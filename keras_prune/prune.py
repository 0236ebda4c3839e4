"""The prune/strip API: `prune_low_magnitude` and `strip_pruning`."""

from __future__ import annotations

from typing import Any, Callable, Iterator

import keras
from keras import ops

from keras_prune import registry
from keras_prune.schedules import ConstantSparsity, PruningSchedule
from keras_prune.wrapper import PruneLowMagnitude


def pruned_layers(model: keras.layers.Layer) -> Iterator[PruneLowMagnitude]:
    """Yields every `PruneLowMagnitude` in `model`, nested models included."""
    if isinstance(model, PruneLowMagnitude):
        yield model
        return
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if isinstance(layer, PruneLowMagnitude):
            yield layer


def _is_plain_model(model: keras.Model) -> bool:
    # `keras.Model(inputs, outputs)` builds an instance of the private class
    # Functional; user subclasses of keras.Model keep their own class name.
    return isinstance(model, keras.Sequential) or type(model).__name__ == "Functional"


def _clone_layer(layer: keras.layers.Layer) -> keras.layers.Layer:
    return layer.__class__.from_config(layer.get_config())


def _clone_model(
    model: keras.Model, transform: Callable[[keras.layers.Layer], keras.layers.Layer]
) -> keras.Model:
    """Clones a Sequential/Functional model through `transform`, keeping weights.

    `transform(layer)` returns the replacement layer; weights are copied
    afterwards by `_copy_weights(original, replacement)`.
    """
    pairs: list[tuple[keras.layers.Layer, keras.layers.Layer]] = []

    def clone_function(layer: keras.layers.Layer) -> keras.layers.Layer:
        new = transform(layer)
        pairs.append((layer, new))
        return new

    clone = keras.models.clone_model(model, clone_function=clone_function)
    for original, new in pairs:
        _copy_weights(original, new)
    return clone


def _copy_weights(original: keras.layers.Layer, new: keras.layers.Layer) -> None:
    if isinstance(original, PruneLowMagnitude) and not isinstance(new, PruneLowMagnitude):
        pruned = {id(w): ops.multiply(w.value, m.value) for w, m, _ in original.pruning_vars}
        values = [pruned.get(id(v), v.value) for v in original.layer.weights]
        new.set_weights([ops.convert_to_numpy(v) for v in values])
    elif isinstance(new, PruneLowMagnitude) and not isinstance(original, PruneLowMagnitude):
        new.layer.set_weights(original.get_weights())
    else:
        new.set_weights(original.get_weights())


def _check_model(model: Any, argument: str) -> None:
    if isinstance(model, keras.Model) and not _is_plain_model(model):
        raise ValueError(
            f"`{argument}` is a subclassed model ({type(model).__name__}); "
            "pass a Sequential or Functional model, or prune its layers."
        )


def prune_low_magnitude(
    to_prune: Any,
    pruning_schedule: PruningSchedule | None = None,
    block_size: tuple[int, int] = (1, 1),
    block_pooling_type: str = "AVG",
    sparsity_m_by_n: tuple[int, int] | None = None,
    **kwargs: Any,
) -> Any:
    """Wraps a layer, a list of layers or a model for magnitude pruning.

    The drop-in replacement of `tfmot.sparsity.keras.prune_low_magnitude`.
    For a model it returns a new, uncompiled model of the same form whose
    prunable layers are wrapped in `PruneLowMagnitude`, with the original
    weights; compile it, then train with `UpdatePruningStep` among the
    callbacks. Layers without prunable weights (pooling, normalisation, ...)
    pass through unwrapped; layers already wrapped are kept as they are.

    Args:
        to_prune: a layer, a list of layers, or a Sequential/Functional model.
        pruning_schedule: when and how much to prune; default
            `ConstantSparsity(0.5, begin_step=0)`.
        block_size: `(h, w)` blocks of 2-D weights pruned together.
        block_pooling_type: "AVG" or "MAX" pooling of block magnitudes.
        sparsity_m_by_n: `(m, n)` zeros m of every n consecutive weights
            along the input channels, e.g. (2, 4), as tfmot does.
        **kwargs: passed to `PruneLowMagnitude` (e.g. `name`) for a layer.

    Example:

    ```python
    schedule = keras_prune.PolynomialDecay(0.0, 0.875, begin_step=0, end_step=1000)
    pruned = keras_prune.prune_low_magnitude(model, pruning_schedule=schedule)
    pruned.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    pruned.fit(x, y, callbacks=[keras_prune.UpdatePruningStep()])
    ```
    """
    options = dict(
        pruning_schedule=pruning_schedule or ConstantSparsity(0.5, 0),
        block_size=block_size,
        block_pooling_type=block_pooling_type,
        sparsity_m_by_n=sparsity_m_by_n,
    )
    # Validate the options once, before touching any layer.
    PruneLowMagnitude(keras.layers.Dense(1), **options)

    def wrap_in_model(layer: keras.layers.Layer) -> keras.layers.Layer:
        if isinstance(layer, PruneLowMagnitude):
            return PruneLowMagnitude.from_config(layer.get_config())
        if registry.supports(layer):
            return PruneLowMagnitude(_clone_layer(layer), **options)
        if isinstance(layer, keras.Model):
            raise ValueError(
                f"Layer {layer.name!r} is a nested model; prune it first and use the "
                "pruned model as the layer."
            )
        if layer.weights and not registry.is_known(layer):
            raise ValueError(
                f"Layer {layer.name!r} ({type(layer).__name__}) has weights but is not "
                "supported for pruning. Implement keras_prune.PrunableLayer on it or "
                "call keras_prune.register_prunable(its_class, [...])."
            )
        return _clone_layer(layer)

    if isinstance(to_prune, keras.Model):
        _check_model(to_prune, "to_prune")
        return _clone_model(to_prune, wrap_in_model)
    if isinstance(to_prune, keras.layers.Layer):
        return PruneLowMagnitude(to_prune, **options, **kwargs)
    if isinstance(to_prune, (list, tuple)):
        if not all(isinstance(layer, keras.layers.Layer) for layer in to_prune):
            raise TypeError("`to_prune` as a list must hold only keras layers.")
        return [
            layer if isinstance(layer, PruneLowMagnitude) or not registry.supports(layer)
            else PruneLowMagnitude(layer, **options)
            for layer in to_prune
        ]  # fmt: skip
    raise TypeError(
        "`to_prune` must be a keras layer, a list of layers, or a Sequential or "
        f"Functional keras.Model; got {type(to_prune).__name__}."
    )


def strip_pruning(model: keras.Model) -> keras.Model:
    """Returns a plain Keras model with the pruning wrappers removed.

    Each wrapped layer is replaced by its inner layer with weights set to
    `weight * mask`, so pruned weights are exact zeros. The result needs no
    keras_prune at load time and predicts exactly what the pruned model
    predicts in inference.

    Example:

    ```python
    final = keras_prune.strip_pruning(pruned)
    final.save("model.keras")
    ```
    """
    if not isinstance(model, keras.Model):
        raise TypeError(
            f"`model` must be a keras.Model to strip; got {type(model).__name__}."
        )
    _check_model(model, "model")

    def unwrap(layer: keras.layers.Layer) -> keras.layers.Layer:
        if isinstance(layer, PruneLowMagnitude):
            return _clone_layer(layer.layer)
        return _clone_layer(layer)

    return _clone_model(model, unwrap)

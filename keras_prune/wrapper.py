"""The `PruneLowMagnitude` wrapper: a layer that prunes the layer it wraps."""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Sequence
from typing import Any

import keras
import numpy as np
from keras import ops

from keras_prune import (
    _backend,
    _forward_pass,
    _keras,
    _validation,
    global_pruning,
    masks,
    registry,
)
from keras_prune.schedules import ConstantSparsity, PruningSchedule


class _MaskedRegularizer(keras.regularizers.Regularizer):
    """A pruned weight's regularizer, on the weight times its mask.

    Keras adds `variable.regularizer(variable)` to the loss outside the
    layer's call, so without this a pruned weight would still count in the
    loss (and be pulled toward 0), though the layer reads it as 0, as
    tfmot's zeroed weights do not. Set on the variable only: the layer's
    config keeps its own regularizer, which `strip_pruning` restores.
    """

    def __init__(self, regularizer: keras.regularizers.Regularizer, mask: keras.Variable):
        self.regularizer, self.mask = regularizer, mask

    def __call__(self, x: Any) -> Any:
        return self.regularizer(ops.multiply(x, ops.cast(self.mask.value, x.dtype)))

    def get_config(self) -> dict[str, Any]:
        return self.regularizer.get_config()


@keras.saving.register_keras_serializable(package="keras_prune")
class PruneLowMagnitude(keras.layers.Wrapper):
    """Wraps a layer so that its prunable weights are magnitude-pruned.

    The wrapper keeps, as non-trainable variables, a 0/1 mask and a threshold
    per prunable weight and a `pruning_step`. Each training call advances the
    step by one and, when `pruning_schedule(step)` says so, recomputes the
    masks from the masked weights (so pruned weights stay pruned) inside the
    compiled train step. In training and inference the wrapped layer runs on
    `weight * mask`, so pruned weights get exactly zero gradient; a weight's
    regularizer (`kernel_regularizer`) also sees `weight * mask`.

    Use `prune_low_magnitude` rather than this class directly; it is
    public so that `isinstance` checks and `keras.saving` find it.

    Args:
        layer: the layer to prune; its class must be in the registry or
            implement `keras_prune.PrunableLayer`.
        pruning_schedule: a `PruningSchedule`.
        block_size: `(h, w)` blocks of 2-D weights pruned together.
        block_pooling_type: "AVG" or "MAX", how block magnitudes are pooled.
        sparsity_m_by_n: `(m, n)` zeros m of every n weights along the input
            channels instead of following the schedule's sparsity.
        global_group: None (each weight gets its own threshold), or the name
            of a global pruning group: all wrappers of one model with the
            same group name are pruned together with one threshold (see
            `keras_prune.global_pruning`).
        sparsity_factors: None (every prunable weight at the schedule's
            sparsity), or one factor >= 0 per prunable weight: weight i is
            pruned to `factor_i * sparsity` (see
            `keras_prune.sparsity_distribution`, which sets them).

    Example:

    ```python
    dense = PruneLowMagnitude(keras.layers.Dense(64), ConstantSparsity(0.8, 0))
    ```
    """

    def __init__(
        self,
        layer: keras.layers.Layer,
        pruning_schedule: PruningSchedule | None = None,
        block_size: tuple[int, int] = (1, 1),
        block_pooling_type: str = "AVG",
        sparsity_m_by_n: tuple[int, int] | None = None,
        global_group: str | None = None,
        sparsity_factors: Sequence[float] | None = None,
        **kwargs: Any,
    ):
        if isinstance(layer, PruneLowMagnitude):
            raise ValueError(
                f"Layer {layer.name!r} is already pruned (a PruneLowMagnitude); "
                "prune each layer once."
            )
        if not isinstance(layer, keras.layers.Layer):
            raise TypeError(f"`layer` must be a keras.layers.Layer; got {type(layer).__name__}.")
        # A custom layer's sublayers may exist only once it is built (KerasHub
        # creates them in `build`); then its weights are checked at build.
        if (layer.built or registry.is_known(layer)) and not registry.supports(layer):
            reason = registry.cannot_prune(layer)
            raise ValueError(
                f"Layer {layer.name!r} ({type(layer).__name__}) "
                + (
                    f"cannot be pruned: {reason}."
                    if reason
                    else "has no prunable weights known to keras_prune. Implement "
                    "keras_prune.PrunableLayer on it or call keras_prune.register_prunable."
                )
            )
        if pruning_schedule is None:
            pruning_schedule = ConstantSparsity(0.5, 0)
        if not isinstance(pruning_schedule, PruningSchedule):
            raise TypeError(
                "`pruning_schedule` must be a keras_prune.PruningSchedule (e.g. "
                f"ConstantSparsity or PolynomialDecay); got {type(pruning_schedule).__name__}."
            )
        kwargs.setdefault("name", f"prune_low_magnitude_{layer.name}")
        super().__init__(layer, **kwargs)
        # Masks (`Embedding(mask_zero=True)`, padding) pass through as they pass
        # through the layer; Keras would warn that a wrapper destroys them.
        self.supports_masking = layer.supports_masking
        self.pruning_schedule = pruning_schedule
        # Shape-independent checks now; shape checks when the weights exist.
        self.block_size, self.block_pooling_type, self.sparsity_m_by_n = masks.normalize_options(
            block_size, block_pooling_type, sparsity_m_by_n
        )
        if global_group is not None:
            if not isinstance(global_group, str) or not global_group:
                raise TypeError(
                    f"`global_group` must be None or a non-empty string; got {global_group!r}."
                )
            if self.block_size != (1, 1) or self.sparsity_m_by_n is not None:
                raise ValueError(
                    "`global_group` (global magnitude pruning) works on single weights; "
                    "it cannot be combined with `block_size` or `sparsity_m_by_n`."
                )
        self.global_group = global_group
        # The pruning step `UpdatePruningStep` saw at the end of `fit` (see `rewound`).
        self.trained_to_step: int | None = None
        self.sparsity_factors = _check_factors(sparsity_factors)
        if self.sparsity_factors is not None and (
            global_group is not None or self.sparsity_m_by_n is not None
        ):
            raise ValueError(
                "`sparsity_factors` (a sparsity distribution) spreads the schedule's sparsity; "
                "it cannot apply with `sparsity_m_by_n` (a fixed m:n sparsity) or "
                "`global_group` (one threshold)."
            )
        self.pruning_vars: list[tuple[keras.Variable, keras.Variable, keras.Variable]] = []
        self.pruning_step: keras.Variable | None = None  # made with the masks
        if not _unbuilt(layer):
            self._create_pruning_variables()

    def build(self, input_shape: Any = None) -> None:
        super().build(input_shape)
        self._finish_build()

    def _finish_build(self) -> None:
        if self.pruning_step is None:
            self._create_pruning_variables()
        self.built = True

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        # Keras builds a layer from the shape of its first input only. Layers
        # with several inputs (MultiHeadAttention(query, value, key)), and
        # layers without a `build` of their own, whose sublayers Keras builds
        # in their first call, are built by calling them once on symbolic
        # stand-ins of the inputs instead (nothing computed, no state updated).
        if (
            self.pruning_step is None  # not `built`: Keras sets it after `build_from_config`
            and _unbuilt(self.layer)
            and (len(args) > 1 or _has_tensor(kwargs) or _builds_in_call(self.layer))
        ):
            self.layer(*_symbolic(args), **_symbolic(kwargs))
            self._finish_build()
        return super().__call__(*args, **kwargs)

    def get_build_config(self) -> dict[str, Any] | None:
        # The inner layer knows how it was built (one input or several).
        inner = self.layer.get_build_config()
        return None if inner is None else {"layer": inner}

    def build_from_config(self, config: dict[str, Any] | None) -> None:
        if self.built:  # built in __init__ around an already built layer
            return
        if config and "layer" in config:
            if _builds_in_call(self.layer):
                return  # its sublayers are built when the model's graph calls it (`__call__`)
            if not self.layer.built:
                self.layer.build_from_config(config["layer"])
            self._finish_build()
        else:
            super().build_from_config(config)

    def check_fits(self, layer: keras.layers.Layer) -> None:
        """Raises ValueError if this wrapper's `block_size` or `sparsity_m_by_n` cannot
        apply to a prunable weight of the built `layer` (its own, or another layer's
        before that one is wrapped)."""
        for weight in registry.get_prunable_weights(layer):
            masks.check_shape(
                tuple(weight.shape),
                self.block_size,
                self.sparsity_m_by_n,
                name=f"{layer.name}/{weight.name}",
            )

    def _create_pruning_variables(self) -> None:
        self.check_fits(self.layer)
        for weight in registry.get_prunable_weights(self.layer):
            mask = self._add_mask_for(weight)
            threshold = self.add_weight(
                name=f"{weight.name}_threshold",
                shape=(),
                dtype=weight.dtype,
                initializer="zeros",
                trainable=False,
            )
            self.pruning_vars.append((weight, mask, threshold))
            regularizer = weight.regularizer
            if isinstance(regularizer, _MaskedRegularizer):  # a layer wrapped anew: this mask
                regularizer = regularizer.regularizer
            if regularizer is not None:
                weight.regularizer = _MaskedRegularizer(regularizer, mask)
        if self.sparsity_factors is not None and len(self.sparsity_factors) != len(
            self.pruning_vars
        ):
            raise ValueError(
                f"`sparsity_factors` has {len(self.sparsity_factors)} entries but "
                f"{self.layer.name!r} has {len(self.pruning_vars)} prunable weights; give one "
                "factor per prunable weight."
            )
        for inner in _keras.flatten_layers(self.layer, include_self=True):
            # `Model.quantize` quantizes the leaf layers inside the wrapper too,
            # replacing the kernels the masks belong to: the layer would run on
            # its unmasked weights. Keras warns with a NotImplementedError's
            # message and leaves that layer in float (Keras itself sets
            # `quantize` per instance, in `Layer.__new__`).
            inner.quantize = _refuse_quantize(inner, self)
        # The number of training batches seen: the first batch is pruning
        # step 1, as in tfmot 0.8.1 (so begin_step=0 first prunes at step
        # `frequency`, and tfmot schedules prune at the same batches here).
        self.pruning_step = self.add_weight(
            name="pruning_step",
            shape=(),
            dtype="int32",
            initializer="zeros",
            trainable=False,
        )

    def _add_mask_for(self, weight: keras.Variable) -> keras.Variable:
        """`add_weight` for the mask of `weight`, with `weight`'s sharding layout.

        Under `keras.distribution.ModelParallel` a LayoutMap rule written for
        the kernel (e.g. ".*dense/kernel") does not match the mask's path
        (".../kernel_mask"), which would leave the mask replicated while the
        kernel is sharded. Like Keras's optimizer slots, the mask takes the
        weight's layout, so it is sharded like the weight whatever the map
        says. Without a distribution the layout is None: plain `add_weight`.
        """
        with keras.name_scope(self.name, caller=self):
            mask = keras.Variable(
                initializer=keras.initializers.Ones(),
                shape=weight.shape,
                dtype=weight.dtype,
                trainable=False,
                name=f"{weight.name}_mask",
                layout=_keras.variable_layout(weight),
            )
        _keras.track_variable(self, mask)
        return mask

    def _update_masks(self) -> None:
        """Advances the pruning step and applies the schedule to every mask.

        Runs once per forward pass: a shared wrapper called several times in
        one training batch advances its step, and updates its masks, on the
        first call only (see `_forward_pass`).
        """
        if not _forward_pass.first_call(self, ("step", id(self))):
            return
        with _keras.full_precision():  # float32 masks under a mixed policy (see _keras)
            self._advance_and_prune()

    @_backend.eager
    def _advance_and_prune(self) -> None:
        """The body of `_update_masks`, with variables read at their own dtype."""
        step = ops.add(self.pruning_step.value, 1)
        self.pruning_step.assign(step)
        if self.global_group is not None:
            global_pruning.update_group(self, step)
            return
        should_prune, sparsity = _forward_pass.schedule_at(self, self.pruning_schedule, step)
        should_prune = ops.convert_to_tensor(should_prune, "bool")
        sparsity = ops.convert_to_tensor(sparsity, "float32")
        if _backend.known_false(should_prune):  # eager torch: most steps cost nothing more
            return
        for i, (weight, mask, threshold) in enumerate(self.pruning_vars):
            masks.update(
                weight,
                mask,
                threshold,
                should_prune,
                self._weight_sparsity(sparsity, i),
                self.block_size,
                self.block_pooling_type,
                self.sparsity_m_by_n,
            )

    def _weight_sparsity(self, sparsity: Any, index: int) -> Any:
        """The sparsity of the `index`-th prunable weight when the schedule says `sparsity`."""
        if self.sparsity_factors is None:
            return sparsity
        return ops.multiply(sparsity, self.sparsity_factors[index])

    def weight_factors(self) -> tuple[float, ...]:
        """Each prunable weight's factor on the schedule's sparsity (1.0 without a distribution)."""
        return self.sparsity_factors or (1.0,) * len(self.pruning_vars)

    def target_sparsities(self) -> list[float | None]:
        """Each prunable weight's final sparsity (None: the schedule has no end)."""
        if self.sparsity_m_by_n is not None:
            m, n = self.sparsity_m_by_n
            return [m / n] * len(self.pruning_vars)
        end = self.pruning_schedule.end_sparsity()
        return [None if end is None else end * f for f in self.weight_factors()]

    def call(self, inputs: Any, *args: Any, training: bool | None = None, **kwargs: Any) -> Any:
        if training:
            self._update_masks()
        if not args and not kwargs and self._plain_embedding():
            return self._embedding_rows(inputs)
        pruned = {id(w): ops.multiply(w.value, m.value) for w, m, _ in self.pruning_vars}
        return _forward_pass.call_with_values(self, pruned, inputs, *args, **kwargs)

    def _plain_embedding(self) -> bool:
        """Whether the layer is a `keras.layers.Embedding` (not a subclass, such
        as a tied `ReversibleEmbedding` that also reads its matrix as a kernel)
        with no LoRA or quantization, whose call is `take(embeddings, ids)`."""
        layer = self.layer
        return (
            type(layer) is keras.layers.Embedding
            and not layer.lora_enabled
            and not layer.quantization_mode
        )

    def _embedding_rows(self, ids: Any) -> Any:
        """`take(embeddings * mask, ids)` as `take(embeddings, ids) * take(mask, ids)`:
        only the looked-up rows are masked, not the whole table every step,
        and TensorFlow keeps the table's gradient sparse (IndexedSlices)."""
        ((weight, mask, _),) = self.pruning_vars
        if keras.backend.standardize_dtype(ids.dtype) not in ("int32", "int64"):
            ids = ops.cast(ids, "int32")
        rows = ops.multiply(ops.take(weight.value, ids, axis=0), ops.take(mask.value, ids, axis=0))
        return ops.cast(rows, self.layer.compute_dtype)

    def compute_output_shape(self, *args: Any, **kwargs: Any) -> Any:
        return self.layer.compute_output_shape(*args, **kwargs)

    def compute_mask(self, inputs: Any, previous_mask: Any = None) -> Any:
        return self.layer.compute_mask(inputs, previous_mask)

    def compute_output_spec(self, *args: Any, **kwargs: Any) -> Any:
        return self.layer.compute_output_spec(*args, **kwargs)

    def steps_seen(self) -> int:
        """The pruning step: training batches seen, 0 before the wrapper is built
        (a subclassed model is built by its first training batch)."""
        if self.pruning_step is None:
            return 0
        # The variable, not its `.value`: under a tf.distribute strategy that
        # is a per-replica value that numpy cannot read.
        return int(ops.convert_to_numpy(self.pruning_step))

    def mask_sparsity(self) -> list[tuple[str, float]]:
        """(weight path, fraction of mask entries that are zero) per prunable weight."""
        return [
            (weight.path, 1.0 - float(ops.convert_to_numpy(ops.mean(mask.value))))
            for weight, mask, _ in self.pruning_vars
        ]

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), **self.options()}

    def options(self) -> dict[str, Any]:
        """The config entries of the pruning options (all but the wrapped layer's and the
        name): what `PruneLowMagnitude.from_config` reads besides them."""
        return {
            "pruning_schedule": keras.saving.serialize_keras_object(self.pruning_schedule),
            "block_size": list(self.block_size),
            "block_pooling_type": self.block_pooling_type,
            "sparsity_m_by_n": None if self.sparsity_m_by_n is None else list(self.sparsity_m_by_n),
            "global_group": self.global_group,
            "sparsity_factors": None
            if self.sparsity_factors is None
            else list(self.sparsity_factors),
        }

    @classmethod
    def from_config(cls, config: dict[str, Any], custom_objects: Any = None) -> PruneLowMagnitude:
        config = dict(config)
        config["pruning_schedule"] = keras.saving.deserialize_keras_object(
            config["pruning_schedule"], custom_objects=custom_objects
        )
        return super().from_config(config, custom_objects=custom_objects)


def _refuse_quantize(layer: keras.layers.Layer, wrapper: PruneLowMagnitude) -> Any:
    """A `quantize` for a layer inside `wrapper` that says why it stays float."""

    def quantize(*args: Any, **kwargs: Any) -> None:
        raise NotImplementedError(
            f"`{layer.name}` is pruned (inside `{wrapper.name}`) and stays in float: "
            "quantizing it would drop its pruning masks. Quantize the model after "
            "`keras_prune.strip_pruning(model)`."
        )

    return quantize


def _check_factors(factors: Any) -> tuple[float, ...] | None:
    if factors is None:
        return None
    if isinstance(factors, (str, bytes)) or not isinstance(factors, Sequence):
        raise TypeError(f"`sparsity_factors` must be None or a list of numbers; got {factors!r}.")
    for factor in factors:
        if (
            isinstance(factor, bool)
            or not isinstance(factor, numbers.Real)
            or not 0 <= factor < math.inf
        ):
            raise ValueError(
                f"`sparsity_factors` must hold finite numbers >= 0; got {list(factors)!r}."
            )
    return tuple(float(f) for f in factors)


def _builds_in_call(layer: keras.layers.Layer) -> bool:
    """Whether `layer` has no `build` of its own (a custom layer that creates its
    sublayers in `__init__`), so that only a call builds its sublayers."""
    return type(layer).build is keras.layers.Layer.build


def _unbuilt(layer: keras.layers.Layer) -> bool:
    """Whether `layer` is not built yet. Keras marks a layer without a `build` of
    its own built when `build` is called, before its first call has built its
    sublayers (as on loading, from its build config): such a layer counts as
    built once every layer inside it is."""
    if not layer.built:
        return True
    return _builds_in_call(layer) and not all(s.built for s in _keras.flatten_layers(layer))


def _symbolic(structure: Any) -> Any:
    """`structure` with each tensor replaced by a `keras.KerasTensor` of its shape and dtype."""

    def stand_in(value: Any) -> Any:
        if isinstance(value, keras.KerasTensor) or not _is_array(value):
            return value
        dtype = keras.backend.standardize_dtype(value.dtype)
        return keras.KerasTensor(tuple(value.shape), dtype=dtype)

    return keras.tree.map_structure(stand_in, structure)


def _has_tensor(kwargs: dict[str, Any]) -> bool:
    return any(_is_array(v) for k, v in kwargs.items() if k not in ("training", "mask"))


def _is_array(value: Any) -> bool:
    """Whether `value` is a backend tensor, a `keras.KerasTensor` or a NumPy array."""
    return keras.ops.is_tensor(value) or isinstance(value, (keras.KerasTensor, np.ndarray))


def rewound(layers: Iterable[Any], caller: str) -> str | None:
    """A warning for the pruning layers (`PruneLowMagnitude` or `ChannelMask`) whose
    pruning step is below `trained_to_step`, the step `UpdatePruningStep` saw them
    reach at the end of `fit`; None if there are none.

    A callback that restores weights from earlier in training restores the
    masks and steps with them (`EarlyStopping(restore_best_weights=True)`
    does, at the end of `fit`): the model then holds an earlier, less
    pruned mask, which nothing else would say.
    """
    back = [
        (layer, layer.steps_seen())
        for layer in layers
        if layer.trained_to_step is not None and layer.steps_seen() < layer.trained_to_step
    ]
    if not back:
        return None
    layer, step = back[0]
    names = _validation.first_few([f"`{layer.name}`" for layer, _ in back])
    return (
        f"{caller}: {len(back)} pruning layer(s) ({names}) are back at pruning step {step} "
        f"though training reached step {layer.trained_to_step}: weights from earlier in "
        "training were restored, masks included (as EarlyStopping(restore_best_weights=True) "
        "does at the end of fit), so the masks are those of that step, not the final ones. "
        "Give EarlyStopping a `start_from_epoch` after pruning ends, or train on from here."
    )

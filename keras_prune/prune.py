"""The prune/strip API: `prune_low_magnitude` and `strip_pruning`.

Every model form is handled:

* Sequential and Functional models are cloned (`keras.models.clone_model`)
  with the selected layers wrapped; shared layers stay shared (one wrapper,
  one mask); nested models (a model used as a layer) are pruned inside. A
  layer whose own config cannot re-create it, in a model whose class can (a
  KerasHub backbone, see `_add_fresh`), is copied from a new instance of
  that class; the result saves as that class (`PrunedFromClass`).
* Subclassed models (`class MyModel(keras.Model)`) are re-created from their
  config as a new instance of the same class, built and given the original
  weights; then every attribute holding a layer (directly, or in a list,
  tuple or dict) that is selected is replaced by its `PruneLowMagnitude`
  wrapper. The original model is left untouched, as for the other forms.
* Layers wrapped by hand (`prune_low_magnitude(layer)` inside a model
  definition, as in tfmot) are kept as they are.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import keras
from keras import ops

from keras_prune import _keras, _validation, model_class, registry, sparsity_distribution
from keras_prune._layer_copy import NotRecreatable, copy_layer, copy_weights
from keras_prune.global_pruning import link as link_groups
from keras_prune.policy import PruningPolicy
from keras_prune.schedules import ConstantSparsity, PruningSchedule
from keras_prune.selection import Selection
from keras_prune.sparsity_distribution import Distribution
from keras_prune.structured.channel_mask import channel_masks
from keras_prune.wrapper import PruneLowMagnitude, rewound

GLOBAL_GROUP = "global"

# transform(layer, original): the replacement of `layer`, a layer of the model
# being built; `original` is the input model's layer at the same place (the
# same object for Sequential/Functional), which selection matches against.
Transform = Callable[[keras.layers.Layer, keras.layers.Layer], keras.layers.Layer]


class Memo:
    """What one `prune_low_magnitude` or `strip_pruning` call knows, across nested models.

    `done`: id(original layer) -> its replacement. `fresh`: id(original
    layer) -> its copy from a new instance of its model's class, for models
    whose layers their own configs cannot re-create (`_add_fresh`); empty
    when every layer copied itself.
    """

    def __init__(self) -> None:
        self.done: dict[int, Any] = {}
        self.fresh: dict[int, Any] = {}

    def copy(self, layer: Any) -> Any:
        """The new model's copy of `layer` (nested models are passed as they are)."""
        if isinstance(layer, keras.Model):
            return layer
        if id(layer) in self.fresh:
            return self.fresh[id(layer)]
        if isinstance(layer, PruneLowMagnitude):
            # The wrapped layer copied by its own class, as when it was
            # wrapped: its config names a class that need not be registered.
            wrapper = _wrapped_like(layer, copy_layer(layer.layer))
            if not layer.trainable:
                wrapper.trainable = False
            return wrapper
        return copy_layer(layer)


def pruned_layers(model: keras.layers.Layer) -> Iterator[PruneLowMagnitude]:
    """Yields every `PruneLowMagnitude` in `model`, nested models included."""
    if isinstance(model, PruneLowMagnitude):
        yield model
        return
    for layer in _keras.flatten_layers(model):
        if isinstance(layer, PruneLowMagnitude):
            yield layer


def _unwrapped_weights(wrapper: PruneLowMagnitude) -> list[Any]:
    pruned = {id(w): ops.multiply(w.value, m.value) for w, m, _ in wrapper.pruning_vars}
    return [ops.convert_to_numpy(pruned.get(id(v), v.value)) for v in wrapper.layer.weights]


def _copy_weights(original: keras.layers.Layer, new: keras.layers.Layer) -> None:
    if not isinstance(original, keras.layers.Layer):
        return  # an op of the graph, such as `x + y`: no weights
    if isinstance(original, keras.Model) or original is new:
        return  # nested models are transformed, weights included, recursively
    if isinstance(original, PruneLowMagnitude) and not isinstance(new, PruneLowMagnitude):
        copy_weights(original.layer, new, _unwrapped_weights(original))
    elif isinstance(new, PruneLowMagnitude) and not isinstance(original, PruneLowMagnitude):
        copy_weights(original, new.layer)
    else:
        copy_weights(original, new)


def _transform_plain(model: keras.Model, transform: Transform, memo: Memo) -> keras.Model:
    """Clones a Sequential/Functional model through `transform`, keeping weights.

    Each layer's copy (`Memo.copy`) is passed to `transform` with the
    original. A layer already transformed, anywhere in the model being
    transformed, keeps its replacement: a layer that a nested model and the
    outer graph share (KerasHub's tied `token_embedding`, called by the
    backbone and by the task's output) stays one layer.
    """
    pairs: list[tuple[keras.layers.Layer, keras.layers.Layer]] = []

    def clone_function(layer: keras.layers.Layer) -> keras.layers.Layer:
        if id(layer) not in memo.done:
            memo.done[id(layer)] = transform(memo.copy(layer), layer)
            pairs.append((layer, memo.done[id(layer)]))
        return memo.done[id(layer)]

    clone = keras.models.clone_model(model, clone_function=clone_function)
    for original, new in pairs:
        _copy_weights(original, new)
    if not model.trainable:  # a frozen base model stays frozen (its layers' copies are)
        clone.trainable = False
    return clone


def _recreate(model: keras.Model) -> keras.Model:
    """A new instance of a subclassed `model`'s class, built like `model`."""
    try:
        clone = model.__class__.from_config(model.get_config())
    except Exception as error:  # the user's get_config/from_config/__init__
        raise ValueError(
            f"Cannot re-create the subclassed model {model.name!r} "
            f"({type(model).__name__}) from its config, which prune_low_magnitude and "
            "strip_pruning need to return a new model: give the class a `get_config()` "
            "returning its constructor arguments, or wrap layers with "
            f"prune_low_magnitude inside its __init__. ({type(error).__name__}: {error})"
        ) from error
    if model.built:
        build_config = model.get_build_config()
        if build_config is None:
            raise ValueError(
                f"The subclassed model {model.name!r} is built but has no build config; "
                "build it with `model.build(input_shape)` or by calling it on data."
            )
        clone.build_from_config(build_config)
        # Keras's `Model.build_from_config` builds a subclassed model's layers by
        # running its call on symbolic inputs but leaves the model unbuilt (3.15):
        # `count_params`, `quantize` and `export` would refuse the copy.
        clone.built = all(layer.built for layer in _keras.flatten_layers(clone))
    return clone


def _attribute_layers(model: keras.Model) -> Iterator[tuple[str, Any, keras.layers.Layer]]:
    """(attribute, key or None, layer) for every layer `model` holds as an attribute."""
    tracked = {id(layer) for layer in _keras.tracked_layers(model)}
    for name, value in list(vars(model).items()):
        if _keras.is_tracking_attribute(name):
            continue
        if isinstance(value, keras.layers.Layer):
            entries = [(None, value)]
        elif isinstance(value, (list, tuple)):
            entries = list(enumerate(value))
        elif isinstance(value, dict):
            entries = list(value.items())
        else:
            continue
        for key, item in entries:
            if isinstance(item, keras.layers.Layer) and id(item) in tracked:
                yield name, key, item


def _set_attribute_layer(model: keras.Model, name: str, key: Any, old: Any, new: Any) -> None:
    # Plain setattr/setitem would track `new` in addition to `old`.
    _keras.replace_tracked_layer(model, old, new)
    container = vars(model)[name]
    if key is None:
        object.__setattr__(model, name, new)
    elif isinstance(container, tuple):
        items = list(container)
        items[key] = new
        object.__setattr__(model, name, type(container)(items))
    elif isinstance(container, list):
        list.__setitem__(container, key, new)
    else:
        dict.__setitem__(container, key, new)


def _transform_subclassed(model: keras.Model, transform: Transform) -> keras.Model:
    """A new instance of `model`'s class whose attribute layers went through `transform`.

    The instance is re-created from the model's config and built; each of its
    attribute layers receives the weights of the layer at the same attribute
    of `model` (unwrapped where `model`'s is pruned) and is then passed to
    `transform`. Nested models are transformed from `model`'s own.
    """
    clone = _recreate(model)
    originals = {(name, key): layer for name, key, layer in _attribute_layers(model)}
    replaced: dict[int, keras.layers.Layer] = {}  # a layer held by two attributes
    for name, key, layer in list(_attribute_layers(clone)):
        if id(layer) in replaced:
            _set_attribute_layer(clone, name, key, layer, replaced[id(layer)])
            continue
        original = originals.get((name, key))
        if original is None:
            raise ValueError(
                f"The re-created {type(model).__name__} has a layer at {name}[{key}] "
                f"that {model.name!r} lacks; its get_config() does not re-create the model."
            )
        if isinstance(original, keras.Model):
            new = transform(original, original)
        else:
            # A wrapper of a built layer has its weights before its first call (built).
            wrapped = isinstance(original, PruneLowMagnitude)
            if (original.layer if wrapped else original).built:
                if wrapped and not isinstance(layer, PruneLowMagnitude):
                    copy_weights(original.layer, layer, _unwrapped_weights(original))
                else:
                    copy_weights(original, layer)
            new = transform(layer, original)
        replaced[id(layer)] = new
        if new is not layer:
            _set_attribute_layer(clone, name, key, layer, new)
    for variable, value in zip(_keras.own_variables(clone), _keras.own_variables(model)):
        variable.assign(value.value)
    return clone


def _add_fresh(model: keras.Model, memo: Memo) -> bool:
    """Adds copies of `model`'s layers, nested models' included, from a new
    instance of its class to `memo.fresh`; False where the class cannot make one.

    For a graph model with a layer that its own config cannot re-create
    (KerasHub 0.32's `LlamaTransformerDecoder` and `ViTPatchingAndEmbedding`)
    where the model's class can: a KerasHub backbone or task is re-created
    from its constructor arguments, as a `.keras` file is loaded. The copies
    are layers of a private instance; their weights are set after cloning.
    """
    fresh = model_class.recreate(model)
    if fresh is None:
        return False
    pairs: list[tuple[Any, Any]] = []

    def match(original: keras.Model, copy: keras.Model) -> bool:
        if len(original.layers) != len(copy.layers):
            return False
        for a, b in zip(original.layers, copy.layers):
            inner = a.layer if isinstance(a, PruneLowMagnitude) else a
            if isinstance(a, keras.Model) and isinstance(b, keras.Model):
                if not match(a, b):
                    return False
            elif type(inner) is not type(b) or [w.shape for w in inner.weights] != [
                w.shape for w in b.weights
            ]:
                return False
            else:
                pairs.append((a, b))
        return True

    if not match(model, fresh):
        return False
    memo.fresh.update((id(a), b) for a, b in pairs)
    return True


def _transform_model(model: keras.Model, transform: Transform, memo: Memo) -> keras.Model:
    if not _keras.has_graph(model):
        # User subclasses of keras.Model are re-created from their config
        # instead of cloned layer by layer.
        return _transform_subclassed(model, transform)
    before = dict(memo.done)
    try:
        return _transform_plain(model, transform, memo)
    except NotRecreatable:
        memo.done = before  # nothing of the failed clone stays
        if not _add_fresh(model, memo):
            raise  # a model holding this one may re-create it
    return _transform_plain(model, transform, memo)


def _not_recreatable(failed: NotRecreatable, caller: str) -> ValueError:
    return ValueError(
        f"{caller} cannot copy the model: its {failed.reason}, and no model holding it "
        "is a class that its own config re-creates (as a KerasHub backbone is). Fix the "
        "layer's get_config() or from_config()."
    )


def _check_training_argument(model: keras.Model) -> None:
    # Keras passes `training=True` into a model's layers only through a call
    # signature that has `training`; without it the wrappers never see a
    # training call and pruning would silently never happen.
    if not _keras.has_graph(model) and "training" not in inspect.signature(model.call).parameters:
        raise ValueError(
            f"{type(model).__name__}.call must accept a `training` argument (e.g. "
            "`def call(self, x, training=None)`) so that Keras runs its layers in "
            "training mode in fit(); pruning updates happen only in training calls."
        )


def prune_low_magnitude(
    to_prune: Any,
    pruning_schedule: PruningSchedule | None = None,
    block_size: tuple[int, int] = (1, 1),
    block_pooling_type: str = "AVG",
    sparsity_m_by_n: tuple[int, int] | None = None,
    *,
    select: Any = None,
    sparsity_distribution: Distribution = "uniform",
    pruning_policy: PruningPolicy | None = None,
    strict: bool = False,
    global_pruning: bool | None = None,
    **kwargs: Any,
) -> Any:
    """Wraps a layer, a list of layers or a model for magnitude pruning.

    The drop-in replacement of `tfmot.sparsity.keras.prune_low_magnitude`.
    For a model it returns a new, uncompiled model of the same form
    (Sequential, Functional, or an instance of your `keras.Model` subclass;
    a KerasHub backbone or task becomes a graph model of the same layers
    that remembers its class for `strip_pruning`: `model_class.PrunedGraph`)
    whose selected prunable layers are wrapped in `PruneLowMagnitude`, with
    the original weights; nested models are pruned inside. Compile it, then
    train with `UpdatePruningStep` among the callbacks. Layers without
    prunable weights (pooling, normalisation, ...) pass through unwrapped;
    layers already wrapped are kept as they are.

    Custom layers (a KerasHub `TransformerEncoder`, your own block) are
    pruned inside: the known weights of the layers they hold, at any depth
    (attention projections, FFN kernels, embeddings), are masked wherever
    the layer's `call` reads them. Weights of layers keras_prune does not
    know (`LayerScale`, KerasHub's `PositionEmbedding`) are left dense and
    named once in a warning and in `sparsity_report`.

    Args:
        to_prune: a layer, a list of layers, or a model (Sequential,
            Functional or subclassed).
        pruning_schedule: when and how much to prune; default
            `ConstantSparsity(0.5, begin_step=0)`.
        block_size: `(h, w)` blocks of 2-D weights pruned together.
        block_pooling_type: "AVG" or "MAX" pooling of block magnitudes.
        sparsity_m_by_n: `(m, n)` zeros m of every n consecutive weights
            along the input channels, e.g. (2, 4), as tfmot does.
        select: for a model, which layers to prune: None (every prunable
            layer), or a layer instance, a layer name, a layer class, a
            predicate `f(layer) -> bool`, or a list of these (a layer is
            pruned if any matches). Selecting a nested model prunes all of
            it. Instances, names and classes that match nothing raise.
        sparsity_distribution: for a model, how the schedule's sparsity is
            spread over the pruned weights (see
            `keras_prune.sparsity_distribution`): "uniform" (every weight
            at the schedule's sparsity), "global" (one threshold: the
            smallest weights of the whole model go), "erk"
            (Erdős–Rényi-Kernel: small weights denser, large ones sparser),
            or a dict `{layer name: factor}` / callable `f(layer) -> factor`
            (a layer's sparsity proportional to its factor). The total is
            always the schedule's.
        pruning_policy: for a model, a `PruningPolicy` (e.g.
            `PruneForLatencyOnXNNPack()`): it checks the model first and
            then decides, with `select`, which layers are pruned.
        strict: for a model, True refuses (ValueError) a selected layer
            with weights keras_prune does not know how to prune (or cannot:
            a layer with LoRA enabled), instead of leaving it dense with a
            warning. A layer selected by instance, name or class that has
            nothing to prune is an error either way.
        global_pruning: deprecated spelling of
            `sparsity_distribution="global"` (True) or "uniform" (False).
        **kwargs: passed to `PruneLowMagnitude` (e.g. `name`) for a layer.

    Example:

    ```python
    schedule = keras_prune.PolynomialDecay(0.0, 0.875, begin_step=0, end_step=1000)
    pruned = keras_prune.prune_low_magnitude(
        model, pruning_schedule=schedule, select=keras.layers.Dense)
    pruned.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    pruned.fit(x, y, callbacks=[keras_prune.UpdatePruningStep()])
    ```
    """
    distribution = _distribution(sparsity_distribution, global_pruning)
    if pruning_policy is not None and not isinstance(pruning_policy, PruningPolicy):
        raise TypeError(
            "`pruning_policy` must be a keras_prune.PruningPolicy (e.g. "
            f"PruneForLatencyOnXNNPack()) or None; got {type(pruning_policy).__name__}."
        )
    options = dict(
        pruning_schedule=pruning_schedule or ConstantSparsity(0.5, 0),
        block_size=block_size,
        block_pooling_type=block_pooling_type,
        sparsity_m_by_n=sparsity_m_by_n,
        global_group=GLOBAL_GROUP if distribution == "global" else None,
    )
    if distribution == "global" and (tuple(block_size) != (1, 1) or sparsity_m_by_n):
        raise ValueError(
            "sparsity_distribution='global' ranks single weights across the model; it "
            "cannot apply with `block_size` or `sparsity_m_by_n`."
        )
    # Validate the options once, before touching any layer.
    probe = PruneLowMagnitude(keras.layers.Dense(1), **options)
    spread = distribution not in ("uniform", "global")
    if spread:
        _check_spreadable(to_prune, options)

    _validation.boolean(strict, "strict")
    _check_not_quantized(to_prune)
    if isinstance(to_prune, keras.Model) and channel_masks(to_prune):
        raise ValueError(
            "`to_prune` prunes channels (it has ChannelMask layers from prune_channels); "
            "shrink it first (`keras_prune.shrink(model)`), then prune the weights of the "
            "smaller model."
        )
    if isinstance(to_prune, keras.Model):
        if kwargs:
            raise TypeError(f"Unexpected keyword arguments for a model: {sorted(kwargs)}.")
        if pruning_policy is not None:
            pruning_policy.ensure_model_supports_pruning(to_prune)
        selection = Selection(select)
        if pruning_policy is None:
            _check_weight_shapes(to_prune, probe, selection)
        unknown: dict[int, keras.layers.Layer] = {}
        memo = Memo()
        try:
            pruned = _prune_model(
                to_prune, options, selection, pruning_policy, strict, unknown, memo
            )
        except NotRecreatable as failed:
            raise _not_recreatable(failed, "prune_low_magnitude") from failed.error
        selection.check_all_used()
        if unknown:
            warnings.warn(_unknown_message(unknown.values(), strict=False), stacklevel=2)
        _warn_kept_schedules(to_prune, options["pruning_schedule"])
        link_groups(pruned_layers(pruned))
        if spread:
            _spread(pruned, distribution)
        if memo.fresh:
            return model_class.remember(to_prune, pruned, PrunedFromClass)
        return model_class.remember(to_prune, pruned)
    if select is not None or pruning_policy is not None or distribution != "uniform":
        raise ValueError(
            "`select`, `pruning_policy` and `sparsity_distribution` apply to models; for a "
            "layer or a list, pass the layers to prune (each at the schedule's sparsity)."
        )
    if isinstance(to_prune, keras.layers.Layer):
        return PruneLowMagnitude(to_prune, **options, **kwargs)
    if isinstance(to_prune, (list, tuple)):
        if not all(isinstance(layer, keras.layers.Layer) for layer in to_prune):
            raise TypeError("`to_prune` as a list must hold only keras layers.")
        return [
            layer
            if isinstance(layer, PruneLowMagnitude) or not registry.supports(layer)
            else PruneLowMagnitude(layer, **options)
            for layer in to_prune
        ]
    raise TypeError(
        "`to_prune` must be a keras layer, a list of layers, or a keras.Model; "
        f"got {type(to_prune).__name__}."
    )


def _check_weight_shapes(
    model: keras.Model, probe: PruneLowMagnitude, selection: Selection
) -> None:
    """Raises before any copying where `block_size` or `sparsity_m_by_n` (normalised in
    `probe`) cannot apply to a weight of a layer `selection` picks; the wrapper checks
    again as it builds (a layer inside a picked custom layer)."""
    if probe.block_size == (1, 1) and probe.sparsity_m_by_n is None:
        return
    for layer in _keras.flatten_layers(model):
        if isinstance(layer, keras.Model) or not (layer.built and registry.supports(layer)):
            continue
        if selection(layer) and not registry.cannot_prune(layer):
            probe.check_fits(layer)


def _check_not_quantized(to_prune: Any) -> None:
    """Refuses layers that `model.quantize` turned to int8, int4 or float8: their
    kernels are integers (or scaled for float8 training) that no config copy
    re-creates, and magnitude pruning ranks float weights."""
    tops = to_prune if isinstance(to_prune, (list, tuple)) else [to_prune]
    quantized = [
        layer
        for top in tops
        if isinstance(top, keras.layers.Layer)
        for layer in registry.quantized_layers(top)
    ]
    if quantized:
        names = _validation.first_few(
            [f"{layer.name!r} ({layer.quantization_mode})" for layer in quantized]
        )
        raise ValueError(
            f"`to_prune` holds quantized layers: {names}. keras_prune prunes float "
            "weights: prune the float model, `strip_pruning` it, then `model.quantize(...)`."
        )


def _distribution(distribution: Any, global_pruning: Any) -> Distribution:
    """`sparsity_distribution`, checked, with the deprecated `global_pruning` folded in."""
    distribution = sparsity_distribution.check(distribution)
    if global_pruning is None:
        return distribution
    _validation.boolean(global_pruning, "global_pruning")
    warnings.warn(
        "`global_pruning` is deprecated: write sparsity_distribution="
        f"{'global' if global_pruning else 'uniform'!r}.",
        DeprecationWarning,
        stacklevel=3,
    )
    if global_pruning and distribution not in ("uniform", "global"):
        raise ValueError(
            f"`global_pruning=True` contradicts sparsity_distribution={distribution!r}; "
            "pass only sparsity_distribution."
        )
    return "global" if global_pruning else distribution


def _check_spreadable(to_prune: Any, options: dict[str, Any]) -> None:
    """Raises, before any cloning, where a non-uniform, non-global distribution cannot apply."""
    if options["sparsity_m_by_n"] is not None:
        raise ValueError(
            "`sparsity_distribution` cannot apply with `sparsity_m_by_n`: m:n pruning "
            "fixes every weight's sparsity at m/n. Use sparsity_distribution='uniform'."
        )
    if options["pruning_schedule"].end_sparsity() is None:
        raise ValueError(
            "`sparsity_distribution` other than 'uniform' or 'global' needs a schedule "
            "whose end_sparsity() is a number (the per-layer sparsities are fixed from "
            f"it); {options['pruning_schedule']!r} has none."
        )
    if isinstance(to_prune, keras.Model) and not to_prune.built:
        raise ValueError(
            "`sparsity_distribution` other than 'uniform' or 'global' needs the weights' "
            f"shapes: build {to_prune.name!r} first (keras.Input, model.build(input_shape) "
            "or a call on data)."
        )


def _spread(model: keras.Model, distribution: Distribution) -> None:
    """Gives every wrapper of `model` its weights' factors under `distribution`."""
    wrappers = list(pruned_layers(model))
    if not wrappers:
        return
    schedules = {repr(w.pruning_schedule) for w in wrappers}
    if len(schedules) > 1:
        raise ValueError(
            f"`sparsity_distribution` spreads one schedule over the model, but its pruned "
            f"layers have several: {sorted(schedules)}."
        )
    if any(w.sparsity_m_by_n is not None or not w.pruning_vars for w in wrappers):
        raise ValueError(
            "`sparsity_distribution`: some layers were pruned by hand with `sparsity_m_by_n` "
            "or are not built; spread sparsity over built, unstructured layers only."
        )
    weights = [(w.layer, tuple(weight.shape)) for w in wrappers for weight, _, _ in w.pruning_vars]
    end = wrappers[0].pruning_schedule.end_sparsity()
    factors = sparsity_distribution.factors(distribution, weights, end) if end > 0 else None
    start = 0
    for wrapper in wrappers:
        count = len(wrapper.pruning_vars)
        wrapper.sparsity_factors = (
            None if factors is None else tuple(factors[start : start + count])
        )
        start += count


def _unknown_message(layers: Any, strict: bool) -> str:
    """The warning (or, `strict`, the error) about `registry.unknown_layers` left dense."""
    reasons = [(layer, registry.cannot_prune(layer)) for layer in layers]
    unknown = [layer for layer, reason in reasons if reason is None]
    parts = []
    if unknown:
        names = ", ".join(f"{layer.name!r} ({type(layer).__name__})" for layer in unknown)
        start = "cannot prune" if strict else "does not know how to prune"
        parts.append(
            f"{start} {names}. Implement keras_prune.PrunableLayer on the class or call "
            "keras_prune.register_prunable(its_class, [...]) to prune them."
        )
    parts += [
        f"cannot prune {layer.name!r} ({type(layer).__name__}): {reason}."
        for layer, reason in reasons
        if reason
    ]
    if strict:
        return f"keras_prune {' It '.join(parts)} Pass strict=False to leave them dense."
    return f"keras_prune left these weights dense: it {' It '.join(parts)} strict=True refuses."


def _wrapped_like(wrapper: PruneLowMagnitude, layer: keras.layers.Layer) -> PruneLowMagnitude:
    """`layer` in a wrapper with `wrapper`'s name and options (its weights come after cloning)."""
    return _wrapped(layer, wrapper.options(), wrapper.name)


def _wrapped(layer: keras.layers.Layer, options: dict[str, Any], name: str) -> PruneLowMagnitude:
    """`layer` in a `PruneLowMagnitude` made from `options` (`PruneLowMagnitude.options`)."""
    schedule = keras.saving.deserialize_keras_object(options["pruning_schedule"])
    return PruneLowMagnitude(layer, **{**options, "pruning_schedule": schedule}, name=name)


@keras.saving.register_keras_serializable("keras_prune")
class PrunedFromClass(model_class.PrunedGraph):
    """A `PrunedGraph` with layers that their own configs cannot re-create (`_add_fresh`).

    No graph config can re-create it, so its config is the original's class
    and config (`origin`) and, in `wrapped`, where each wrapper sits with its
    name and options (`_wrapped_paths`). Loading re-creates the class and
    wraps the layers at the same places again; Keras then loads the
    weights, masks and steps into them, as for any model.
    """

    def get_config(self) -> dict[str, Any]:
        return {"name": self.name, "origin": self.origin, "wrapped": _wrapped_paths(self)}

    @classmethod
    def from_config(cls, config: dict[str, Any], custom_objects: Any = None) -> PrunedFromClass:
        fresh = model_class.from_origin(config["origin"])
        plan = {tuple(entry["path"]): entry for entry in config["wrapped"]}
        memo = Memo()

        def reuse(model: keras.Model) -> None:  # the private instance's own layers
            for layer in model.layers:
                memo.fresh[id(layer)] = layer
                if _keras.has_graph(layer):
                    reuse(layer)

        def transform(model: keras.Model, path: tuple[int, ...]) -> Transform:
            places = {id(layer): (*path, i) for i, layer in enumerate(model.layers)}

            def wrap(layer: keras.layers.Layer, original: keras.layers.Layer) -> keras.layers.Layer:
                place = places.get(id(original))  # None for an op such as `x + y`
                if isinstance(original, keras.Model):
                    return _transform_model(original, transform(original, place), memo)
                entry = plan.get(place)
                return layer if entry is None else _wrapped(layer, entry["options"], entry["name"])

            return wrap

        reuse(fresh)
        pruned = _transform_model(fresh, transform(fresh, ()), memo)
        link_groups(pruned_layers(pruned))
        return cls(pruned.input, pruned.output, name=config["name"], origin=config["origin"])


def _wrapped_paths(model: keras.Model, path: tuple[int, ...] = ()) -> list[dict[str, Any]]:
    """`{"path", "name", "options"}` of each wrapper in `model`'s graph and its nested
    models', at every place it is called (a tied embedding: in the backbone and the task).

    A path is the positions in `layers` of the nested models and of the
    wrapper, not their names: a new instance of a class names the layers
    its constructor leaves unnamed anew (`dense_7`), and Keras loads a
    model's layers by position too.
    """
    entries = []
    for i, layer in enumerate(model.layers):
        if isinstance(layer, PruneLowMagnitude):
            entries.append({"path": [*path, i], "name": layer.name, "options": layer.options()})
        elif _keras.has_graph(layer):
            entries += _wrapped_paths(layer, (*path, i))
    return entries


def _warn_kept_schedules(model: keras.Model, schedule: PruningSchedule) -> None:
    """Warns that layers pruned before keep their schedule, not `schedule` (as in tfmot)."""
    kept = [layer for layer in pruned_layers(model) if layer.pruning_schedule != schedule]
    if kept:
        names = _validation.first_few([f"`{layer.name}`" for layer in kept])
        warnings.warn(
            f"`to_prune` has layers pruned before ({names}), which keep their own "
            f"schedule ({kept[0].pruning_schedule!r}), not `pruning_schedule` ({schedule!r}). "
            "To prune them on the new schedule, `strip_pruning` the model first (its zeros, "
            "the smallest weights, are pruned first).",
            stacklevel=3,
        )


def _prune_model(
    model: keras.Model,
    options: dict[str, Any],
    selection: Selection,
    policy: PruningPolicy | None,
    strict: bool,
    unknown: dict[int, keras.layers.Layer],
    memo: Memo,
) -> keras.Model:
    """`model` with its selected layers wrapped; unknown weights left dense are added
    to `unknown`."""
    _check_training_argument(model)

    def wrap(layer: keras.layers.Layer, original: keras.layers.Layer) -> keras.layers.Layer:
        # `layer` is the new model's copy of `original` (a nested model: itself).
        if not isinstance(layer, keras.layers.Layer):  # an op such as `x + y` (MobileNetV3)
            return layer
        if isinstance(layer, PruneLowMagnitude):
            return layer
        if isinstance(original, PruneLowMagnitude):  # its layer copied from a re-created class
            return _wrapped_like(original, layer)
        if isinstance(layer, keras.Model):
            inner = Selection(None) if selection(original) else selection
            return _prune_model(layer, options, inner, policy, strict, unknown, memo)
        chosen = selection(original) and (policy is None or policy.allow_pruning(original))
        if not chosen:
            return layer
        prunable = registry.supports(original)  # built: custom layers make sublayers in build
        if not prunable and selection.explicit(original):
            reason = registry.cannot_prune(original)
            raise ValueError(
                f"`select` picks layer {original.name!r} ({type(original).__name__}), "
                + (
                    f"which keras_prune cannot prune: {reason}."
                    if reason
                    else "which has no weights keras_prune can prune; select layers with "
                    "kernels or embeddings, or register its class with "
                    "keras_prune.register_prunable."
                )
            )
        dense = registry.unknown_layers(original)
        if dense and strict:
            raise ValueError(_unknown_message(dense, strict=True))
        unknown.update((id(u), u) for u in dense)
        return PruneLowMagnitude(layer, **options) if prunable else layer

    return _transform_model(model, wrap, memo)


def strip_pruning(model: keras.Model) -> keras.Model:
    """Returns a plain Keras model with the pruning wrappers removed.

    Each wrapped layer is replaced by its inner layer with weights set to
    `weight * mask`, so pruned weights are exact zeros; nested models are
    stripped inside. The result needs no keras_prune at load time and
    predicts exactly what the pruned model predicts in inference. A model
    with no pruning wrappers is returned as an equal copy (a documented
    no-op, with a warning-free result you can save as usual). A KerasHub
    backbone or task (a `Functional` subclass that cloning turns into a plain
    `Functional`) comes back as its own class, e.g. a `GPT2CausalLM` with
    `generate` (see `keras_prune.model_class`).

    Example:

    ```python
    final = keras_prune.strip_pruning(pruned)
    final.save("model.keras")
    ```
    """
    if not isinstance(model, keras.Model):
        raise TypeError(f"`model` must be a keras.Model to strip; got {type(model).__name__}.")
    if channel_masks(model):
        raise ValueError(
            "`model` prunes channels (it has ChannelMask layers from prune_channels); call "
            "`keras_prune.shrink(model)` instead, which removes the masked channels and "
            "returns a plain Keras model."
        )
    message = rewound(pruned_layers(model), "strip_pruning")
    if message:
        warnings.warn(message, UserWarning, stacklevel=2)
    try:
        stripped = _strip(model, Memo())
    except NotRecreatable as failed:
        raise _not_recreatable(failed, "strip_pruning") from failed.error
    return model_class.restore(model, stripped)


def _strip(model: keras.Model, memo: Memo) -> keras.Model:
    plain = _keras.has_graph(model)

    def unwrap(layer: keras.layers.Layer, original: keras.layers.Layer) -> keras.layers.Layer:
        if isinstance(layer, keras.Model):
            return model_class.plain(_strip(layer, memo))
        if isinstance(layer, PruneLowMagnitude):
            if not plain:  # a graph's copies get their weights after cloning
                layer.layer.set_weights(_unwrapped_weights(layer))
            return layer.layer
        return layer

    return _transform_model(model, unwrap, memo)

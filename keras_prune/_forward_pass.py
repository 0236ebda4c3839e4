"""Once-per-forward-pass bookkeeping for layers that update state in `call`.

A pruning wrapper advances its step and recomputes its masks in its training
call. A shared wrapper (one layer called twice in a model) and the members
of a global pruning group must do so once per training batch, not once per
call (`first_call`), and wrappers with one schedule evaluate it once
(`shared`). Keras opens one `CallContext` per outermost layer call (the
model's forward pass) and passes it down to every nested call; the first
call of a forward pass records a key on it, later calls in the same pass
find the key.

JAX's trainer runs the model through `stateless_call`, which calls
`model.call` directly and so opens no model-level context; there every
top-level layer call opens its own. In that case the pass is identified by
the enclosing `StatelessScope` that `stateless_call` opens for the whole
forward pass.

This is Python-level bookkeeping, so it is resolved while a compiled train
step is traced and costs nothing at run time, on every backend (including
JAX, where the step is a pure function traced once). The call context and
the current stateless scope are Keras internals, reached through
`keras_prune._keras`.

A wrapper runs its layer on masked weights for the pass with
`call_with_values`.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any

import keras

from keras_prune import _backend, _keras

_KEY = "keras_prune_done"


def _pass_state(layer: keras.layers.Layer) -> Any:
    """The object that lives exactly as long as the current forward pass."""
    context = _keras.call_context(layer)
    if context.entry_layer is layer:
        scope = _keras.current_stateless_scope()
        if scope is not None:
            return scope
    return context


def _seen(layer: keras.layers.Layer) -> dict[Any, Any]:
    """The keys (and shared results) recorded in the current forward pass."""
    state = _pass_state(layer)
    seen: dict[Any, Any] | None = getattr(state, _KEY, None)
    if seen is None:
        seen = {}
        setattr(state, _KEY, seen)
    return seen


def first_call(layer: keras.layers.Layer, key: Hashable) -> bool:
    """True the first time `key` is seen in the current forward pass.

    Must be called from inside `layer.call`.
    """
    seen = _seen(layer)
    if key in seen:
        return False
    seen[key] = None
    return True


def shared(layer: keras.layers.Layer, key: Hashable, compute: Callable[[], Any]) -> Any:
    """`compute()` the first time `key` is seen in the current forward pass, then its result.

    Must be called from inside `layer.call`.
    """
    seen = _seen(layer)
    if key not in seen:
        seen[key] = compute()
    return seen[key]


def schedule_at(layer: keras.layers.Layer, schedule: Any, step: Any) -> tuple[Any, Any]:
    """`schedule(step)`, evaluated once per forward pass in eager code.

    Eager code (torch's default) runs a schedule as a dozen scalar ops,
    ~0.4 ms each time here; layers that hold the same schedule object at the
    same step (all wrappers after `prune_low_magnitude(model)`, all masks
    after `prune_channels`) share one evaluation. In a traced step the ops
    are compiled and cost next to nothing. Must be called from inside
    `layer.call`.
    """
    if not _backend.is_concrete(step):
        return schedule(step)
    key = ("schedule", id(schedule), int(keras.ops.convert_to_numpy(step)))
    return shared(layer, key, lambda: schedule(step))


def entry_layer(layer: keras.layers.Layer) -> keras.layers.Layer:
    """The outermost layer (usually the model) of the current forward pass."""
    return _keras.call_context(layer).entry_layer


def outer_layer(layer: keras.layers.Layer, unknown: str) -> keras.layers.Layer:
    """The model that `layer` runs in now, to look up its partners in.

    JAX's trainer calls each top-level layer on its own (see above), so
    there the layer is its own entry layer and cannot find the model:
    raises ValueError, `unknown` saying what the layer is missing and how
    to link it beforehand.
    """
    root = entry_layer(layer)
    if root is layer:
        raise ValueError(f"{layer.name!r} {unknown}")
    return root


def call_with_values(
    wrapper: keras.layers.Layer, values: dict[int, Any], *args: Any, **kwargs: Any
) -> Any:
    """`wrapper.layer(*args, **kwargs)`, called in `wrapper.call`, with each variable
    whose `id` is in `values` read as that value (a weight times its mask).

    The scope maps every variable of the layer, so that values from an outer
    stateless scope (JAX's train step) are seen; updates the layer makes
    inside (normalisation statistics, a dropout's seed) are assigned, and its
    losses added to `wrapper`. That includes a new value the layer gives a
    masked weight, computed from the masked value (`SpectralNormalization`
    rescales its kernel in each training call), so that the stored weight
    is what the layer read, as without pruning.
    """
    current = [(v, values.get(id(v), v.value)) for v in wrapper.layer.variables]
    with keras.StatelessScope(state_mapping=current, collect_losses=True) as scope:
        # What the scope holds before the call: it converts the values it is
        # given (to the variable's dtype, and on torch to the current device,
        # "meta" while Keras infers shapes), so a value it returns unchanged
        # is not the one passed in, and must not be assigned back.
        given = [scope.get_current_value(variable) for variable, _ in current]
        outputs = wrapper.layer(*args, **kwargs)
    for (variable, _), before in zip(current, given):
        new_value = scope.get_current_value(variable)
        if new_value is not before:
            variable.assign(new_value)
    for loss in scope.losses:
        wrapper.add_loss(loss)
    return outputs

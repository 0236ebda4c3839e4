"""Training callbacks: `UpdatePruningStep`."""

from __future__ import annotations

import math
import warnings
from typing import Any

import keras
from keras import ops

from keras_prune import global_pruning
from keras_prune.masks import keep_count
from keras_prune.prune import pruned_layers


class UpdatePruningStep(keras.callbacks.Callback):
    """The tfmot callback that drives pruning during `model.fit`.

    In keras_prune each `PruneLowMagnitude` advances its own pruning step
    once per training batch inside the compiled train step, so pruning is
    correct with or without this callback, on every backend. The callback is
    kept so tfmot code runs unchanged, and it checks at the end of training
    that every pruned weight reached its schedule's final sparsity: it warns
    when training stopped before the schedule's end or the schedule's last
    pruning step fell short of it.

    Example:

    ```python
    pruned.fit(x, y, epochs=2, callbacks=[keras_prune.UpdatePruningStep()])
    ```
    """

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        global_pruning.link(self.model)
        if not any(True for _ in pruned_layers(self.model)):
            warnings.warn(
                "UpdatePruningStep: the model has no PruneLowMagnitude layers; "
                "nothing will be pruned. Call keras_prune.prune_low_magnitude first.",
                UserWarning,
                stacklevel=2,
            )

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        for message in final_sparsity_shortfalls(self.model):
            warnings.warn(message, UserWarning, stacklevel=2)


def final_sparsity_shortfalls(model: keras.layers.Layer) -> list[str]:
    """Messages for every pruned weight below its schedule's final sparsity.

    The final sparsity is the schedule's `end_sparsity()` (m/n with
    `sparsity_m_by_n`); schedules whose `end_sparsity()` is None are skipped.
    A weight falls short when its mask keeps more than the count that
    sparsity prescribes (one block of slack for block pruning).
    """
    messages = []
    for layer in pruned_layers(model):
        schedule = layer.pruning_schedule
        target = schedule.end_sparsity()
        if layer.sparsity_m_by_n is not None:
            m, n = layer.sparsity_m_by_n
            target = m / n
        if target is None:
            continue
        step = int(ops.convert_to_numpy(layer.pruning_step))
        block = math.prod(layer.block_size)
        for weight, mask, _ in layer.pruning_vars:
            size = math.prod(weight.shape)
            kept = int(ops.convert_to_numpy(ops.sum(mask.value)))
            allowed = int(ops.convert_to_numpy(keep_count(size, target)))
            if kept <= allowed + (block - 1 if block > 1 else 0):
                continue
            end_step = getattr(schedule, "end_step", -1)
            reason = (
                f"training stopped at pruning step {step}, before the schedule's "
                f"end_step={end_step}; train longer or lower end_step"
                if step < end_step
                else "the schedule never pruned to it; check begin_step, end_step "
                "and frequency (end_step - begin_step should be a multiple of frequency)"
            )
            messages.append(
                f"Pruning ended below the scheduled final sparsity for "
                f"{weight.path}: {1 - kept / size:.4f} < {target:.4f} ({reason})."
            )
    return messages

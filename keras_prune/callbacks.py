"""Training callbacks: `UpdatePruningStep` and `PruningSummaries`."""

from __future__ import annotations

import collections
import math
import numbers
import os
import warnings
from collections.abc import Iterable
from typing import Any

import keras
import numpy as np
from keras import ops

from keras_prune import _tfevents, global_pruning
from keras_prune.masks import keep_count
from keras_prune.prune import pruned_layers
from keras_prune.wrapper import PruneLowMagnitude


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
        global_pruning.link(pruned_layers(self.model))
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


class PruningSummaries(keras.callbacks.Callback):
    """Logs each pruned weight's sparsity and threshold, and the scheduled sparsity.

    The values go to TensorBoard event files in `{log_dir}/metrics` (as
    tfmot's callback does; view with `tensorboard --logdir {log_dir}`), on
    every backend (the files are written without TensorFlow), and into the
    `logs` dict of the epoch and of the batches where they are written, so
    Keras progress bars, `History` and `keras.callbacks.CSVLogger` show them.
    Callbacks see `logs` in list order: put `PruningSummaries` before
    `CSVLogger`.

    Tags (also the `logs` keys), for every `PruneLowMagnitude` wrapper:

    * `{weight.path}/sparsity`: the fraction of the weight's mask that is 0.
    * `{weight.path}/threshold`: the magnitude threshold of the last mask
      update (0 before the first one).
    * `{wrapper.path}/scheduled_sparsity`: the sparsity the pruning schedule
      prescribes at the current step (m/n with `sparsity_m_by_n`).

    Each value is logged at the wrapper's `pruning_step`, the number of
    training batches it has seen (`optimizer.iterations` in a fresh `fit`).
    Unlike tfmot's callback, which subclasses `keras.callbacks.TensorBoard`
    and logs at the beginning of epochs, this one logs only these values and
    logs at the end of epochs (so the final state is logged); add
    `keras.callbacks.TensorBoard` for the loss and metrics.

    Args:
        log_dir: the TensorBoard log directory (a str or `os.PathLike`).
        update_freq: "epoch" (log at the end of every epoch), "batch" (also
            after every training batch) or an int N >= 1 (also after every
            N-th training batch, counted in pruning steps). Each write copies
            the masks to the host (and on JAX first writes the trainer's state
            back into the model), so pick N for an occasional write.

    Example:

    ```python
    pruned.fit(x, y, epochs=2, callbacks=[
        keras_prune.UpdatePruningStep(),
        keras_prune.PruningSummaries(log_dir="logs", update_freq=100),
        keras.callbacks.CSVLogger("training.csv"),
    ])
    ```
    """

    def __init__(self, log_dir: str | os.PathLike, update_freq: str | int = "epoch"):
        super().__init__()
        if not isinstance(log_dir, (str, os.PathLike)) or not isinstance(os.fspath(log_dir), str):
            raise TypeError(
                f"`log_dir` must be a str or os.PathLike path; got {log_dir!r} of type "
                f"{type(log_dir).__name__}."
            )
        if not os.fspath(log_dir):
            raise ValueError("`log_dir` must be a non-empty path; got ''.")
        if isinstance(update_freq, str) and update_freq in ("epoch", "batch"):
            frequency = None if update_freq == "epoch" else 1
        elif (
            isinstance(update_freq, numbers.Integral)
            and not isinstance(update_freq, bool)
            and update_freq >= 1
        ):
            frequency = int(update_freq)
        else:
            raise ValueError(
                f"`update_freq` must be 'epoch', 'batch' or an int >= 1; got {update_freq!r}."
            )
        self.log_dir = os.fspath(log_dir)
        self.update_freq = update_freq
        self._frequency = frequency  # None: only at the end of epochs
        self._writer: _tfevents.EventFileWriter | None = None
        self._active = False  # the model has pruned layers
        self._step = 0  # the pruning step after the last training batch
        self._epoch_start = 0
        self._written_at: int | None = None

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        global_pruning.link(pruned_layers(self.model))
        wrappers = list(pruned_layers(self.model))
        self._active = bool(wrappers)
        if not wrappers:
            warnings.warn(
                "PruningSummaries: the model has no PruneLowMagnitude layers; "
                "there is nothing to log. Call keras_prune.prune_low_magnitude first.",
                UserWarning,
                stacklevel=2,
            )
            return
        tags = [tag for wrapper in wrappers for tag in _tags(wrapper)]
        duplicates = sorted(tag for tag, count in collections.Counter(tags).items() if count > 1)
        if duplicates:
            raise ValueError(
                f"PruningSummaries: several pruned weights log under the same tags {duplicates}; "
                "give the layers distinct names."
            )
        self._step = int(ops.convert_to_numpy(wrappers[0].pruning_step.value))
        self._written_at = None
        if self._writer is None:
            self._writer = _tfevents.EventFileWriter(os.path.join(self.log_dir, "metrics"))

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._epoch_start = self._step

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        # `batch` is the index of the last batch the call covers (several
        # with steps_per_execution > 1).
        step = self._epoch_start + batch + 1
        due = (
            self._frequency is not None and step // self._frequency > self._step // self._frequency
        )
        self._step = step
        if due and self._active:
            self._log(logs)

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if self._active:
            self._log(logs, write=self._written_at != self._step)

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def _log(self, logs: dict[str, Any] | None, write: bool = True) -> None:
        # On JAX, reading `self.model` writes the trainer's state back into
        # the variables (mid-epoch they are not up to date otherwise).
        by_step = _pruning_values(pruned_layers(self.model))
        if write and self._writer is not None:
            for step, scalars in sorted(by_step.items()):
                self._writer.add_scalars(step, scalars)
            self._written_at = self._step
        if logs is not None:
            for scalars in by_step.values():
                logs.update(scalars)


def _tags(wrapper: PruneLowMagnitude) -> list[str]:
    tags = []
    for weight, _, _ in wrapper.pruning_vars:
        tags += [f"{weight.path}/sparsity", f"{weight.path}/threshold"]
    return tags + [f"{wrapper.path}/scheduled_sparsity"]


def _pruning_values(wrappers: Iterable[PruneLowMagnitude]) -> dict[int, list[tuple[str, float]]]:
    """(tag, value) pairs of `wrappers` grouped by their pruning step."""
    by_step: dict[int, list[tuple[str, float]]] = {}
    for wrapper in wrappers:
        step = int(ops.convert_to_numpy(wrapper.pruning_step.value))
        values = []
        for _, mask, threshold in wrapper.pruning_vars:
            mask_value = ops.convert_to_numpy(mask.value)
            values.append(float(np.count_nonzero(mask_value == 0) / mask_value.size))
            values.append(float(ops.convert_to_numpy(threshold.value)))
        if wrapper.sparsity_m_by_n is not None:
            m, n = wrapper.sparsity_m_by_n
            values.append(m / n)
        else:
            values.append(float(ops.convert_to_numpy(wrapper.pruning_schedule(step)[1])))
        by_step.setdefault(step, []).extend(zip(_tags(wrapper), values))
    return by_step


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
                f"{weight.path}: {kept} of {size} weights kept, {kept - allowed} more "
                f"than {target:.2%} sparsity allows ({reason})."
            )
    return messages

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

from keras_prune import _keras, _tfevents, global_pruning
from keras_prune.masks import keep_count
from keras_prune.prune import pruned_layers
from keras_prune.schedules import pruning_points
from keras_prune.structured import channel_mask
from keras_prune.wrapper import PruneLowMagnitude, rewound


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
        wrappers = list(pruned_layers(self.model))
        global_pruning.link(wrappers)
        masks = channel_mask.channel_masks(self.model)
        channel_mask.link(self.model)  # a loaded model's masks find the layers they score
        # The first pruning step of this run (a resumed model starts past 1).
        steps = [w.steps_seen() for w in wrappers]
        self._first_step = min(steps, default=0) + 1
        self._epoch_steps: dict[int, int] = {}  # id(layer) -> its step at the last epoch end
        self._checked = _keras.has_graph(self.model)  # a graph passes `training` on
        if not wrappers and not masks:
            warnings.warn(
                "UpdatePruningStep: the model has no PruneLowMagnitude or ChannelMask layers; "
                "nothing will be pruned. Call keras_prune.prune_low_magnitude (or "
                "prune_channels) first.",
                UserWarning,
                stacklevel=2,
            )
        elif not _keras.has_graph(self.model) and not _keras.fit_passes_training(self.model):
            self._checked = True  # said now; the first batch would only repeat it
            warnings.warn(
                f"UpdatePruningStep: {type(self.model).__name__}.call takes no `training` "
                "argument, so `fit` calls it without training=True and the pruning layers "
                "inside it see no training batch: nothing will be pruned. Give it "
                "`call(self, x, training=None)` and pass it on, `layer(x, training=training)`.",
                UserWarning,
                stacklevel=2,
            )

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        # Once, after the run's first batch(es): a subclassed model whose pruning
        # layers saw no training batch would otherwise train to the end unpruned.
        if self._checked:
            return
        self._checked = True
        wrappers = list(pruned_layers(self.model))
        if wrappers and all(w.steps_seen() < self._first_step for w in wrappers):
            warnings.warn(
                "UpdatePruningStep: after the first training batch no pruning layer has "
                f"seen a training batch, so nothing will be pruned: {type(self.model).__name__}"
                ".call must pass `training` on to its layers, `layer(x, training=training)` "
                "(Keras on JAX does not do it for you).",
                UserWarning,
                stacklevel=2,
            )

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._epoch_steps = {id(layer): layer.steps_seen() for layer in _pruning_layers(self.model)}

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        # A callback that restores earlier weights (EarlyStopping) does it here:
        # before this one, the steps went back since the last epoch's end; after
        # it, `strip_pruning` and `shrink` compare with what is recorded now.
        layers = _pruning_layers(self.model)
        for layer in layers:
            layer.trained_to_step = max(layer.steps_seen(), self._epoch_steps.get(id(layer), 0))
        message = rewound(layers, "UpdatePruningStep")
        if message:
            warnings.warn(message, UserWarning, stacklevel=2)
            return  # the sparsity it reached is not what the model now holds
        messages = final_sparsity_shortfalls(self.model, self._first_step)
        if len(messages) > 1:  # one warning, not one per weight of a large model
            lines = [f"- {m.removeprefix(_SHORTFALL)}" for m in messages]
            messages = [f"{_SHORTFALL}{len(messages)} pruned weights:\n" + "\n".join(lines)]
        for message in messages:
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
      prescribes at the current step (m/n with `sparsity_m_by_n`), the
      model's total: a sparsity distribution other than "uniform" spreads it
      unevenly over the weights, whose own sparsities are logged above.

    and for every `ChannelMask` of a model from `prune_channels`:

    * `{mask.path}/sparsity`: the fraction of its channels (heads, units)
      removed.
    * `{mask.path}/scheduled_sparsity`: what its schedule prescribes now.

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
        channel_mask.link(self.model)  # a loaded model's masks find the layers they score
        layers = _pruning_layers(self.model)
        self._active = bool(layers)
        if not layers:
            warnings.warn(
                "PruningSummaries: the model has no PruneLowMagnitude or ChannelMask layers; "
                "there is nothing to log. Call keras_prune.prune_low_magnitude (or "
                "prune_channels) first.",
                UserWarning,
                stacklevel=2,
            )
            return
        tags = [tag for layer in layers for tag in _tags(layer)]
        duplicates = sorted(tag for tag, count in collections.Counter(tags).items() if count > 1)
        if duplicates:
            raise ValueError(
                f"PruningSummaries: several pruned weights log under the same tags {duplicates}; "
                "give the layers distinct names."
            )
        self._step = layers[0].steps_seen()
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
        by_step = _pruning_values(_pruning_layers(self.model))
        if write and self._writer is not None:
            for step, scalars in sorted(by_step.items()):
                self._writer.add_scalars(step, scalars)
            self._written_at = self._step
        if logs is not None:
            for scalars in by_step.values():
                logs.update(scalars)


def _tags(layer: PruneLowMagnitude | channel_mask.ChannelMask) -> list[str]:
    if isinstance(layer, channel_mask.ChannelMask):
        return [f"{layer.path}/sparsity", f"{layer.path}/scheduled_sparsity"]
    tags = []
    for weight, _, _ in layer.pruning_vars:
        tags += [f"{weight.path}/sparsity", f"{weight.path}/threshold"]
    return tags + [f"{layer.path}/scheduled_sparsity"]


def _pruning_values(layers: Iterable[Any]) -> dict[int, list[tuple[str, float]]]:
    """(tag, value) pairs of pruning layers (wrappers and channel masks) by pruning step."""
    by_step: dict[int, list[tuple[str, float]]] = {}
    for layer in layers:
        step = layer.steps_seen()
        if isinstance(layer, channel_mask.ChannelMask):
            kept = ops.convert_to_numpy(layer.mask.value)
            scheduled = float(ops.convert_to_numpy(layer.pruning_schedule(step)[1]))
            values = [float(np.count_nonzero(kept == 0) / kept.size), scheduled]
            by_step.setdefault(step, []).extend(zip(_tags(layer), values))
            continue
        values = []
        for _, mask, threshold in layer.pruning_vars:
            mask_value = ops.convert_to_numpy(mask.value)
            values.append(float(np.count_nonzero(mask_value == 0) / mask_value.size))
            values.append(float(ops.convert_to_numpy(threshold.value)))
        if layer.sparsity_m_by_n is not None:
            m, n = layer.sparsity_m_by_n
            values.append(m / n)
        else:
            values.append(float(ops.convert_to_numpy(layer.pruning_schedule(step)[1])))
        by_step.setdefault(step, []).extend(zip(_tags(layer), values))
    return by_step


_SHORTFALL = "Pruning ended below the scheduled final sparsity for "


def _pruning_layers(model: keras.Model) -> list[Any]:
    """The `PruneLowMagnitude` and `ChannelMask` layers of `model`."""
    return [*pruned_layers(model), *channel_mask.channel_masks(model)]


def final_sparsity_shortfalls(model: keras.layers.Layer, first_step: int = 1) -> list[str]:
    """Messages for every pruned weight (or global group) below its schedule's final sparsity.

    The final sparsity is the schedule's `end_sparsity()` (m/n with
    `sparsity_m_by_n`); schedules whose `end_sparsity()` is None are skipped.
    A weight falls short when its mask keeps more than the count that
    sparsity prescribes (one block of slack for block pruning); a global
    pruning group when all its weights together do. Each message names the
    cause, told apart with the schedule's pruning steps among those of the
    run being checked, `first_step` to the wrapper's current step:

    * training stopped before the schedule's `end_step`;
    * no pruning step fell inside the run, or the last one prescribes less
      than the final sparsity (a schedule problem: begin, end, frequency);
    * the last pruning step ran but the mask keeps more than it prescribes:
      the update had no effect, an internal failure, reported with the
      training configuration (backend, dtype policy, compilation).
    """
    messages = []
    for layer, paths, size, kept, factor in _pruned_units(model):
        schedule = layer.pruning_schedule
        target = schedule.end_sparsity()
        if layer.sparsity_m_by_n is not None:
            m, n = layer.sparsity_m_by_n
            target = m / n
        if target is None:
            continue
        target *= factor
        block = math.prod(layer.block_size)
        slack = block - 1 if block > 1 else 0
        allowed = int(ops.convert_to_numpy(keep_count(size, target)))
        if kept <= allowed + slack:
            continue
        step = layer.steps_seen()
        end_step = getattr(schedule, "end_step", None)
        points = pruning_points(schedule, min(first_step, step + 1), step)
        if step < first_step:
            reason = (
                "it saw no training batch in this run: a subclassed model's `call` must take "
                "a `training` argument and pass it on, `layer(x, training=training)`"
            )
        elif end_step is not None and step < end_step:
            reason = (
                f"training stopped at pruning step {step}, before the schedule's "
                f"end_step={end_step}; train longer or lower end_step"
            )
        elif not points:
            reason = (
                f"no pruning step of the schedule fell inside this training run "
                f"(steps {first_step}..{step}), so the schedule never pruned to it; check "
                "begin_step, end_step and frequency"
            )
        else:
            last_step, last_sparsity = points[-1]
            last_sparsity *= factor
            if layer.sparsity_m_by_n is not None:
                last_sparsity = target
            if kept > int(ops.convert_to_numpy(keep_count(size, last_sparsity))) + slack:
                reason = (
                    f"the schedule pruned at step {last_step} to {last_sparsity:.2%}, but the "
                    "mask keeps more than that: the mask update had no effect. This is an "
                    f"internal failure of keras-prune under {_configuration(model)}; please "
                    "report it"
                )
            else:
                reason = (
                    f"the schedule's last pruning step, {last_step}, prescribes only "
                    f"{last_sparsity:.3%}, so the schedule never pruned to it; check "
                    "begin_step, end_step and frequency (end_step - begin_step should be a "
                    "multiple of frequency)"
                )
        messages.append(
            f"{_SHORTFALL}{paths}: {kept} of "
            f"{size} weights kept, {kept - allowed} more than {target:.2%} sparsity "
            f"allows ({reason})."
        )
    return messages


_Unit = tuple[PruneLowMagnitude, str, int, int, float]


def _pruned_units(model: keras.layers.Layer) -> list[_Unit]:
    """(a wrapper, weight path(s), size, weights kept, sparsity factor) per pruned
    weight or global group; the factor scales the schedule's sparsity."""
    units: list[_Unit] = []
    groups: dict[str, list[_Unit]] = {}
    for layer in pruned_layers(model):
        for (weight, mask, _), factor in zip(layer.pruning_vars, layer.weight_factors()):
            kept = int(ops.convert_to_numpy(ops.sum(mask.value)))
            unit = (layer, weight.path, math.prod(weight.shape), kept, factor)
            if layer.global_group is None:
                units.append(unit)
            else:
                groups.setdefault(layer.global_group, []).append(unit)
    for name, members in groups.items():
        paths = f"the global pruning group {name!r} ({', '.join(m[1] for m in members)})"
        size, kept = sum(m[2] for m in members), sum(m[3] for m in members)
        units.append((members[0][0], paths, size, kept, 1.0))
    return units


def _configuration(model: keras.layers.Layer) -> str:
    """The training configuration a bug report needs."""
    policy = keras.config.dtype_policy().name
    compiled = ", ".join(
        f"{name}={getattr(model, name)!r}"
        for name in ("run_eagerly", "jit_compile", "steps_per_execution")
        if hasattr(model, name)
    )
    return f"backend {keras.backend.backend()}, dtype policy {policy}, {compiled}"

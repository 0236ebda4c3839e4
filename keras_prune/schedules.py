"""Pruning schedules: when to prune, and to which sparsity.

A schedule maps a pruning step (one per training batch) to a pair
`(should_prune, sparsity)`. The built-in schedules return exactly the values
of tfmot 0.8.1 (`tfmot.sparsity.keras.ConstantSparsity` and
`PolynomialDecay`); they are written with `keras.ops` so they run inside a
compiled train step on every backend.
"""

from __future__ import annotations

import abc
import warnings
from typing import Any

import keras
import numpy as np
from keras import ops

from keras_prune import _validation

# A PolynomialDecay whose last pruning step falls short of `final_sparsity` by
# more than this gets a warning at construction (the seed's settings miss it by
# 5e-9, which rounds to the same mask).
_FINAL_SPARSITY_TOLERANCE = 1e-4


class PruningSchedule(abc.ABC):
    """Base class of pruning schedules.

    Subclasses implement `__call__(step)`, returning `(should_prune, sparsity)`
    as a boolean scalar and a float32 scalar, with `keras.ops` so that it can
    run inside a compiled train step, and `get_config()`. They may override
    `end_sparsity()` so that training that ends short of it is reported.

    Example:

    ```python
    class Halfway(keras_prune.PruningSchedule):
        def __init__(self, step):
            self.step = step

        def __call__(self, step):
            return self._should_prune_in_step(step, self.step, self.step, 1), 0.5

        def get_config(self):
            return {"step": self.step}
    ```
    """

    @abc.abstractmethod
    def __call__(self, step: Any) -> tuple[Any, Any]:
        """Returns `(should_prune, sparsity)` for the pruning step `step`."""

    @abc.abstractmethod
    def get_config(self) -> dict[str, Any]:
        """Returns the constructor arguments as a JSON-serializable dict."""

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> PruningSchedule:
        # tfmot's configs nest the arguments as {"class_name", "config"}.
        if "config" in config and "class_name" in config:
            config = config["config"]
        return cls(**config)

    def end_sparsity(self) -> float | None:
        """The sparsity the schedule ends at, or None if it has no end."""
        return None

    @staticmethod
    def _should_prune_in_step(step: Any, begin_step: int, end_step: int, frequency: int) -> Any:
        """True iff begin ≤ step ≤ end (or end == -1) and on a frequency turn."""
        step = _as_step(step)
        in_range = ops.greater_equal(step, begin_step)
        if end_step >= 0:
            in_range = ops.logical_and(in_range, ops.less_equal(step, end_step))
        on_turn = ops.equal(ops.mod(step - begin_step, frequency), 0)
        return ops.logical_and(in_range, on_turn)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and self.get_config() == other.get_config()

    def __hash__(self) -> int:
        return hash((type(self).__name__, tuple(sorted(self.get_config().items()))))


_INT32_MAX = 2**31 - 1


def _as_step(step: Any) -> Any:
    """The step as an int32 tensor; Python and NumPy numbers are checked."""
    if isinstance(step, (int, float, np.number)) and not isinstance(step, bool):
        step = _validation.whole_number(step, "step")
        if not -1 <= step <= _INT32_MAX:
            raise ValueError(f"`step` must be in [-1, {_INT32_MAX}]; got {step}.")
    return ops.convert_to_tensor(step, dtype="int32")


def _validate_steps(
    begin_step: Any, end_step: Any, frequency: Any, *, allow_forever: bool
) -> tuple[int, int, int]:
    begin_step = _validation.whole_number(begin_step, "begin_step", minimum=0)
    end_step = _validation.whole_number(end_step, "end_step")
    frequency = _validation.whole_number(frequency, "frequency", minimum=1)
    if end_step == -1 and allow_forever:
        return begin_step, end_step, frequency
    if end_step < begin_step:
        allowed = "-1 (prune forever) or " if allow_forever else ""
        raise ValueError(
            f"`end_step` must be {allowed}>= begin_step ({begin_step}); got {end_step}."
        )
    return begin_step, end_step, frequency


@keras.saving.register_keras_serializable(package="keras_prune")
class ConstantSparsity(PruningSchedule):
    """Prunes to `target_sparsity` every `frequency` steps in [begin, end].

    Args:
        target_sparsity: fraction of weights to set to zero, in [0, 1).
        begin_step: first step at which to prune (a whole number ≥ 0).
        end_step: last step at which to prune, or -1 to prune forever.
        frequency: prune every `frequency` steps (≥ 1).

    Example:

    >>> schedule = ConstantSparsity(0.875, begin_step=1000, frequency=100)
    >>> should_prune, sparsity = schedule(1100)
    >>> bool(should_prune), float(sparsity)
    (True, 0.875)
    """

    def __init__(
        self,
        target_sparsity: float,
        begin_step: int,
        end_step: int = -1,
        frequency: int = 100,
    ):
        self.target_sparsity = _validation.sparsity(target_sparsity, "target_sparsity")
        self.begin_step, self.end_step, self.frequency = _validate_steps(
            begin_step, end_step, frequency, allow_forever=True
        )

    def __call__(self, step: Any) -> tuple[Any, Any]:
        should_prune = self._should_prune_in_step(
            step, self.begin_step, self.end_step, self.frequency
        )
        return should_prune, ops.convert_to_tensor(self.target_sparsity, "float32")

    def end_sparsity(self) -> float:
        return self.target_sparsity

    def get_config(self) -> dict[str, Any]:
        return {
            "target_sparsity": self.target_sparsity,
            "begin_step": self.begin_step,
            "end_step": self.end_step,
            "frequency": self.frequency,
        }


@keras.saving.register_keras_serializable(package="keras_prune")
class PolynomialDecay(PruningSchedule):
    """Raises sparsity from `initial_sparsity` to `final_sparsity` polynomially.

    sparsity(step) = final + (initial − final)·(1 − clip((step − begin) /
    (end − begin), 0, 1))^power, pruning every `frequency` steps in
    [begin_step, end_step] (Zhu & Gupta, 2017). With begin_step == end_step the
    schedule is `final_sparsity` from begin_step on (tfmot returns NaN there).

    Args:
        initial_sparsity: sparsity at begin_step, in [0, 1).
        final_sparsity: sparsity at end_step, in [0, 1).
        begin_step: first pruning step (a whole number ≥ 0).
        end_step: last pruning step (≥ begin_step).
        power: exponent of the polynomial (> 0); 3 in Zhu & Gupta.
        frequency: prune every `frequency` steps (≥ 1).

    Example:

    >>> schedule = PolynomialDecay(0.0, 0.875, begin_step=0, end_step=1000)
    >>> round(float(schedule(500)[1]), 4)
    0.7656
    """

    def __init__(
        self,
        initial_sparsity: float,
        final_sparsity: float,
        begin_step: int,
        end_step: int,
        power: float = 3,
        frequency: int = 100,
    ):
        self.initial_sparsity = _validation.sparsity(initial_sparsity, "initial_sparsity")
        self.final_sparsity = _validation.sparsity(final_sparsity, "final_sparsity")
        self.power = _validation.positive_number(power, "power")
        if float(power).is_integer():
            self.power = int(power)
        self.begin_step, self.end_step, self.frequency = _validate_steps(
            begin_step, end_step, frequency, allow_forever=False
        )
        self._warn_if_final_sparsity_missed()

    def end_sparsity(self) -> float:
        return self.final_sparsity

    def _sparsity_at(self, step: Any) -> Any:
        step = _as_step(step)
        span = self.end_step - self.begin_step
        if span == 0:
            progress = ops.cast(ops.greater_equal(step, self.begin_step), "float32")
        else:
            progress = ops.divide(ops.cast(step - self.begin_step, "float32"), np.float32(span))
            progress = ops.minimum(np.float32(1.0), ops.maximum(np.float32(0.0), progress))
        decay = ops.power(np.float32(1.0) - progress, np.float32(self.power))
        return ops.add(
            ops.multiply(np.float32(self.initial_sparsity - self.final_sparsity), decay),
            np.float32(self.final_sparsity),
        )

    def __call__(self, step: Any) -> tuple[Any, Any]:
        should_prune = self._should_prune_in_step(
            step, self.begin_step, self.end_step, self.frequency
        )
        return should_prune, self._sparsity_at(step)

    def _warn_if_final_sparsity_missed(self) -> None:
        span = self.end_step - self.begin_step
        last = self.begin_step + (span // self.frequency) * self.frequency
        if last == self.end_step:
            return
        reached = float(ops.convert_to_numpy(self._sparsity_at(last)))
        if abs(self.final_sparsity - reached) > _FINAL_SPARSITY_TOLERANCE:
            warnings.warn(
                f"PolynomialDecay: the last pruning step in [begin_step="
                f"{self.begin_step}, end_step={self.end_step}] with frequency="
                f"{self.frequency} is step {last}, where sparsity is "
                f"{reached:.4f}, not final_sparsity={self.final_sparsity}. "
                "Make end_step - begin_step a multiple of frequency.",
                UserWarning,
                stacklevel=3,
            )

    def get_config(self) -> dict[str, Any]:
        return {
            "initial_sparsity": self.initial_sparsity,
            "final_sparsity": self.final_sparsity,
            "begin_step": self.begin_step,
            "end_step": self.end_step,
            "power": self.power,
            "frequency": self.frequency,
        }


def pruning_points(schedule: PruningSchedule, first: int, last: int) -> list[tuple[int, float]]:
    """The steps in [first, last] at which `schedule` prunes, with the sparsity it prescribes.

    The schedule is called once on all the steps; one that takes only scalar
    steps is called step by step.

    Example:

    >>> pruning_points(ConstantSparsity(0.5, 0, frequency=4), 1, 10)
    [(4, 0.5), (8, 0.5)]
    """
    if not isinstance(schedule, PruningSchedule):
        raise TypeError(f"`schedule` must be a PruningSchedule; got {type(schedule).__name__}.")
    first = _validation.whole_number(first, "first", minimum=0)
    last = _validation.whole_number(last, "last", minimum=first - 1)
    steps = np.arange(first, last + 1, dtype="int32")
    if not steps.size:
        return []
    try:
        should_prune, sparsity = (ops.convert_to_numpy(v) for v in schedule(steps))
        should_prune = np.broadcast_to(should_prune, steps.shape)
        sparsity = np.broadcast_to(sparsity, steps.shape)
    except Exception:  # a user schedule written for scalar steps only
        pairs = [schedule(int(step)) for step in steps]
        should_prune = np.array([bool(ops.convert_to_numpy(p)) for p, _ in pairs])
        sparsity = np.array([float(ops.convert_to_numpy(v)) for _, v in pairs])
    return [(int(steps[i]), float(sparsity[i])) for i in np.flatnonzero(should_prune)]

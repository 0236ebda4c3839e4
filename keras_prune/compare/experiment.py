"""The seed experiment: pruning schedules compared on an MNIST ConvNet.

A comparison trains the dense baseline and one pruned model per schedule,
sparsity distribution (`keras_prune.sparsity_distribution`: "uniform", the
seed's, "global" or "erk") and target sparsity, for each of `seeds` seeds,
with the seed article's settings by default: Conv2D(32, 3, relu) - MaxPool -
Conv2D(64, 3, relu) - MaxPool - Flatten - Dense(256, relu) - Dense(10,
softmax), Adam, categorical cross-entropy, batch 250, validation_split 0.2,
30 epochs, pruning from 20 % of the training steps to the last one every 100
steps. The article's code has no Flatten before the Dense layers; its
published sizes (1.6 MB zipped baseline, about 430 000 float32 weights) are
those of the model with one. Your own model (`model`, a `.keras` file) and
data (`dataset`, an `.npz` file) take the seed's place with the same
protocol: `keras_prune.compare.task`.

Each run records test accuracy and loss, per-layer sparsity of the stripped
model, its zipped `.h5` and `.keras` sizes (the article's measure), the
sizes of `keras_prune.export` files (float32 and int8) and the int8 model's
test accuracy, validation accuracy per epoch and seconds per epoch. With a
given seed, the baseline and every schedule start from the same initial
weights (`keras.utils.set_random_seed(seed)` before building each model).

Schedules are "constant" (`ConstantSparsity(s, begin, end, frequency)`),
"polynomial" (`PolynomialDecay(0, s, begin, end, frequency=frequency)`,
power 3) or an import path "package.module:attribute" naming a callable,
typically a `PruningSchedule` subclass, that is called with the keyword
arguments `sparsity`, `begin_step`, `end_step` and `frequency` and returns a
`PruningSchedule`.

Example:

>>> comparison = compare(ExperimentConfig(epochs=2, limit=1000, frequency=1, verbose=0))
>>> [(row["schedule"], row["total_sparsity"][0]) for row in comparison.summary()]
[('baseline', 0.0), ('constant', 0.875), ('polynomial', 0.875)]
>>> comparison.write("out")
['out/results.json', 'out/results.csv']

(With 4 steps per epoch, 8 in all, and the seed's `frequency=100`,
polynomial's one pruning step, step 1, would prescribe sparsity 0:
`prepare` refuses such a run before training, naming a frequency or a
number of epochs that works.)
"""

from __future__ import annotations

import csv
import dataclasses
import importlib
import io
import json
import math
import os
import platform
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import keras

from keras_prune import _files, _validation, runtimes
from keras_prune.callbacks import UpdatePruningStep, final_sparsity_shortfalls
from keras_prune.compare import results, stats
from keras_prune.compare.datasets import DATASETS, load_dataset
from keras_prune.compare.results import (
    BASELINE,
    CHANNELS,
    STRUCTURES,
    RunResult,
    label,
    run_distributions,
    shown_distribution,
)
from keras_prune.compare.task import Data, Task, file_task, load_npz, seed_model, seed_task
from keras_prune.kps import export, load
from keras_prune.prune import prune_low_magnitude, strip_pruning
from keras_prune.report import flops, gzipped_model_size, sparsity_report
from keras_prune.schedules import (
    ConstantSparsity,
    PolynomialDecay,
    PruningSchedule,
    pruning_points,
)
from keras_prune.sparsity_distribution import NAMES as DISTRIBUTIONS
from keras_prune.structured.prune_channels import prune_channels
from keras_prune.structured.shrink import shrink

__all__ = [
    "BASELINE",
    "BUILTIN_SCHEDULES",
    "SEED_FIGURES",
    "Comparison",
    "ExperimentConfig",
    "RunResult",
    "check_schedules",
    "compare",
    "make_schedule",
    "prepare",
    "pruning_steps",
    "run_once",
    "seed_model",
]
# seed_model and Task live in keras_prune.compare.task and are re-exported here.

BUILTIN_SCHEDULES = ("constant", "polynomial")

#: The seed article's published figures (full MNIST, tfmot, one run each).
SEED_FIGURES = {
    "baseline": {"gzip_h5_bytes": 1601609},
    "constant": {"test_accuracy": 0.9886, "test_loss": 0.0317, "gzip_h5_bytes": 388071},
    "polynomial": {"test_accuracy": 0.9927, "test_loss": 0.0218, "gzip_h5_bytes": 384305},
}

SIGNIFICANCE_LEVEL = 0.05
_NUM_CLASSES = 10  # of the built-in datasets


def _pair_label(run: tuple[str, str], distributions: Sequence[str]) -> str:
    """The label of a `(schedule, distribution)` pair in a comparison of `distributions`."""
    schedule, distribution = run
    return label(schedule, 0.0, False, shown_distribution(distributions, distribution))


def schedule_factory(name: str) -> Callable[..., PruningSchedule]:
    """The callable behind a schedule name: built-in, or "module:attribute"."""
    if not isinstance(name, str):
        raise TypeError(f"`schedule` must be a str; got {type(name).__name__}.")
    if name == "constant":
        return lambda sparsity, begin_step, end_step, frequency: ConstantSparsity(
            sparsity, begin_step, end_step, frequency
        )
    if name == "polynomial":
        return lambda sparsity, begin_step, end_step, frequency: PolynomialDecay(
            0.0, sparsity, begin_step, end_step, frequency=frequency
        )
    module_name, _, attribute = name.partition(":")
    if not module_name or not attribute:
        raise ValueError(
            f"unknown schedule {name!r}: use one of {', '.join(BUILTIN_SCHEDULES)} "
            "or an import path 'package.module:attribute'"
        )
    try:
        target: Any = importlib.import_module(module_name)
        for part in attribute.split("."):
            target = getattr(target, part)
    except (ImportError, AttributeError) as error:
        raise ValueError(f"unknown schedule {name!r}: cannot import it ({error})") from None
    if not callable(target):
        raise ValueError(f"schedule {name!r} is a {type(target).__name__}, not a callable")
    return target


def make_schedule(
    name: str, sparsity: float, begin_step: int, end_step: int, frequency: int
) -> PruningSchedule:
    """Builds the schedule `name` (see the module docstring) for one run."""
    schedule = schedule_factory(name)(
        sparsity=sparsity, begin_step=begin_step, end_step=end_step, frequency=frequency
    )
    if not isinstance(schedule, PruningSchedule):
        raise TypeError(
            f"schedule {name!r} returned a {type(schedule).__name__}, not a "
            "keras_prune.PruningSchedule"
        )
    return schedule


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    """Settings of a comparison; the defaults are the seed article's.

    `dataset` is a built-in dataset's name (`DATASETS`) or the path of an
    `.npz` file with arrays `x_train`, `y_train`, `x_test`, `y_test`.
    `model` is None (the seed's ConvNet) or the path of a `.keras` file,
    trained with its own compile settings unless `loss` and `metrics` (Keras
    names) replace them; see `keras_prune.compare.task`. `imports` names
    modules imported before the model file is loaded, which register its
    custom layers (e.g. "keras_hub", "my_layers"). `limit` keeps only
    the first `limit` training and test samples (for quick checks);
    `verbose` is passed to `model.fit` (1: progress bars). `structures` says
    what the schedules remove: single "weights" (spread over the layers by
    each of `distributions`), whole "channels" (`prune_channels`, then
    `shrink`), or both side by side. Pruning runs from `begin_fraction` to
    `end_fraction` of the training steps (`pruning_steps`). `tflite` adds
    the `.tflite` measures; "auto" adds them where TensorFlow and LiteRT are
    installed and LiteRT runs the model, and `prepare` says why not in a note.
    """

    schedules: tuple[str, ...] = BUILTIN_SCHEDULES
    sparsities: tuple[float, ...] = (0.875,)
    distributions: tuple[str, ...] = ("uniform",)
    structures: tuple[str, ...] = ("weights",)
    epochs: int = 30
    batch_size: int = 250
    begin_fraction: float = 0.2
    end_fraction: float = 1.0
    frequency: int = 100
    seeds: int = 1
    dataset: str = "mnist10k"
    data_dir: str | None = None
    limit: int | None = None
    validation_split: float = 0.2
    verbose: int = 1
    tflite: bool | Literal["auto"] = False
    model: str | None = None
    loss: str | None = None
    metrics: tuple[str, ...] | None = None
    imports: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for name in ("schedules", "sparsities", "distributions", "structures"):
            value = getattr(self, name)
            if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or not value:
                raise TypeError(f"`{name}` must be a non-empty sequence; got {value!r}.")
            if len(set(value)) != len(value):
                raise ValueError(f"`{name}` has duplicates: {list(value)}.")
            object.__setattr__(self, name, tuple(value))
        for schedule in self.schedules:
            if schedule == BASELINE:
                raise ValueError("`schedules`: the baseline always runs; do not list it.")
            schedule_factory(schedule)
        for distribution in self.distributions:
            _validation.one_of(distribution, "distributions", DISTRIBUTIONS)
        for structure in self.structures:
            _validation.one_of(structure, "structures", STRUCTURES)
        if "weights" not in self.structures and self.distributions != ("uniform",):
            raise ValueError(
                "`distributions` spread pruned weights over the layers; with `structures` "
                f"{list(self.structures)} no weights are pruned. Add 'weights' to `structures`."
            )
        object.__setattr__(
            self, "sparsities", tuple(_validation.fraction(s, "sparsity") for s in self.sparsities)
        )
        _validation.count(self.epochs, "epochs", 1)
        _validation.count(self.batch_size, "batch_size", 1)
        _validation.count(self.frequency, "frequency", 1)
        _validation.count(self.seeds, "seeds", 1)
        _validation.fraction(self.begin_fraction, "begin_fraction")
        if _validation.positive_number(self.end_fraction, "end_fraction") > 1.0:
            raise ValueError(f"`end_fraction` must be in (0, 1]; got {self.end_fraction!r}.")
        if self.begin_fraction >= self.end_fraction:
            raise ValueError(
                f"`begin_fraction` ({self.begin_fraction!r}) must be below `end_fraction` "
                f"({self.end_fraction!r}): pruning must begin before it ends."
            )
        _validation.fraction(self.validation_split, "validation_split")
        _validation.instance(self.dataset, "dataset", str, "a dataset name or an .npz path")
        if self.dataset not in DATASETS and not self.dataset.endswith(".npz"):
            raise ValueError(
                f"`dataset` must be one of {', '.join(DATASETS)} or the path of an .npz file; "
                f"got {self.dataset!r}."
            )
        if self.data_dir is not None and self.dataset not in ("mnist", "fashion_mnist"):
            raise ValueError(
                f"`data_dir` is only used by the mnist and fashion_mnist datasets; got dataset "
                f"{self.dataset!r}."
            )
        if self.model is not None:
            _validation.instance(self.model, "model", str, "None or a .keras file's path")
            if not self.model.endswith(".keras"):
                raise ValueError(f"`model` must be the path of a .keras file; got {self.model!r}.")
        if self.loss is not None:
            _validation.instance(self.loss, "loss", str, "None or a Keras loss name")
        if self.metrics is not None:
            if isinstance(self.metrics, str) or not isinstance(self.metrics, Sequence):
                raise TypeError(f"`metrics` must be a sequence of names; got {self.metrics!r}.")
            object.__setattr__(self, "metrics", tuple(self.metrics))
        if isinstance(self.imports, str) or not isinstance(self.imports, Sequence):
            raise TypeError(f"`imports` must be a sequence of module names; got {self.imports!r}.")
        object.__setattr__(self, "imports", tuple(self.imports))
        for module in self.imports:
            _validation.instance(module, "imports", str, "a sequence of module names")
        if self.model is None and (
            self.loss is not None or self.metrics is not None or self.imports
        ):
            raise ValueError(
                "`loss`, `metrics` and `imports` apply to a `model` file; the seed's ConvNet "
                "trains with categorical cross-entropy and accuracy."
            )
        if self.limit is not None:
            _validation.count(self.limit, "limit", 2)
        if self.verbose not in (0, 1, 2):
            raise ValueError(f"`verbose` must be 0, 1 or 2; got {self.verbose!r}.")
        if not isinstance(self.tflite, bool) and self.tflite != "auto":
            raise TypeError(f"`tflite` must be True, False or 'auto'; got {self.tflite!r}.")
        lacking = runtimes.missing(".tflite") if self.tflite is True else None
        if lacking:
            raise ValueError(f"`tflite`: measuring .tflite files needs {lacking}")


def pruning_steps(num_train: int, config: ExperimentConfig) -> tuple[int, int, int]:
    """`(steps_per_epoch, begin_step, end_step)` as in the seed article.

    Training takes `steps = ceil(n_fit / batch_size) * epochs` batches,
    where n_fit is the number of images `model.fit` trains on after
    `validation_split` (split as Keras does); `begin_step = int(begin_fraction
    * steps)` and `end_step = int(end_fraction * steps)`. The first training
    batch is pruning step 1, so with the seed's `end_fraction=1.0`,
    `end_step` is the last batch; a smaller one leaves the pruned model
    `steps - end_step` batches to recover at its final sparsity.
    """
    _validation.count(num_train, "num_train", 2)
    if not isinstance(config, ExperimentConfig):
        raise TypeError(f"`config` must be an ExperimentConfig; got {type(config).__name__}.")
    num_fit = int(math.floor(num_train * (1.0 - config.validation_split)))
    steps_per_epoch = math.ceil(num_fit / config.batch_size)
    steps = steps_per_epoch * config.epochs
    return steps_per_epoch, int(config.begin_fraction * steps), int(config.end_fraction * steps)


class _EpochTimer(keras.callbacks.Callback):
    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        self.seconds: list[float] = []

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self.seconds.append(time.perf_counter() - self._start)


def run_once(
    config: ExperimentConfig,
    data: Task | Data,
    schedule: str,
    sparsity: float,
    seed: int,
    distribution: str = "uniform",
) -> RunResult:
    """Trains and measures one model: the baseline (`schedule="baseline"`,
    `sparsity` and `distribution` ignored) or one pruned with `schedule` to
    `sparsity`, spread over the layers by `distribution`.

    `data` is a `Task` (see `prepare`), or `((x_train, y_train), (x_test,
    y_test))` of images with integer labels for the seed's ConvNet. Warnings
    of keras_prune during the run (e.g. a schedule that ends below its final
    sparsity) are recorded in the result and re-issued.
    """
    if not isinstance(config, ExperimentConfig):
        raise TypeError(f"`config` must be an ExperimentConfig; got {type(config).__name__}.")
    if schedule != BASELINE:
        schedule_factory(schedule)
        sparsity = _validation.fraction(sparsity, "sparsity")
        _validation.one_of(distribution, "distribution", (*DISTRIBUTIONS, CHANNELS))
    _validation.count(seed, "seed", 0)
    task = data if isinstance(data, Task) else seed_task(data, _NUM_CLASSES)
    metric = task.metric

    keras.utils.clear_session()
    keras.utils.set_random_seed(seed)
    model = task.build()
    timer = _EpochTimer()
    callbacks: list[keras.callbacks.Callback] = [timer]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if schedule != BASELINE:
            _, begin_step, end_step = pruning_steps(len(task.x_train), config)
            pruning_schedule = make_schedule(
                schedule, sparsity, begin_step, end_step, config.frequency
            )
            if distribution == CHANNELS:
                model = prune_channels(model, pruning_schedule)
            else:
                model = prune_low_magnitude(
                    model, pruning_schedule=pruning_schedule, sparsity_distribution=distribution
                )
            callbacks.append(UpdatePruningStep())
        task.compiled(model)
        history = model.fit(
            task.x_train,
            task.y_train,
            batch_size=config.batch_size,
            epochs=config.epochs,
            validation_split=config.validation_split,
            callbacks=callbacks,
            verbose=config.verbose,
        )
    # UpdatePruningStep's own warnings (attributed to Keras's callback code)
    # are replaced by final_sparsity_shortfalls, asked directly.
    messages = list(
        dict.fromkeys(
            [
                *(
                    str(w.message)
                    for w in caught
                    if issubclass(w.category, UserWarning) and f"keras_prune{os.sep}" in w.filename
                ),
                *(final_sparsity_shortfalls(model) if schedule != BASELINE else []),
            ]
        )
    )
    for message in messages:
        warnings.warn(message, UserWarning, stacklevel=2)

    scores = task.evaluate(model, config.batch_size)
    if distribution == CHANNELS and schedule != BASELINE:
        stripped = shrink(model)
        layer_sparsity, total_sparsity = _removed_weights(model, stripped)
    else:
        if schedule != BASELINE:
            stripped = strip_pruning(model)
        else:  # an uncompiled copy, as strip_pruning returns: no optimizer in the .keras file
            stripped = keras.models.clone_model(model)
            stripped.set_weights(model.get_weights())
        report = sparsity_report(stripped)
        layer_sparsity = {f"{row.layer}/{row.weight}": row.sparsity for row in report}
        total_sparsity = report.total_sparsity
    tflite: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        float32_bytes = export(stripped, os.path.join(tmp, "float32.kps"))
        int8_bytes = export(stripped, os.path.join(tmp, "int8.kps"), quantize="int8")
        int8_model = load(os.path.join(tmp, "int8.kps"))
        if config.tflite:
            tflite = _measure_tflite(stripped, tmp, task)
    int8_scores = task.evaluate(task.compiled(int8_model), config.batch_size)
    return RunResult(
        schedule=schedule,
        sparsity=sparsity if schedule != BASELINE else 0.0,
        distribution=distribution if schedule != BASELINE else "uniform",
        seed=seed,
        test_accuracy=scores[metric],
        test_loss=scores["loss"],
        int8_test_accuracy=int8_scores[metric],
        layer_sparsity=layer_sparsity,
        total_sparsity=total_sparsity,
        gzip_h5_bytes=gzipped_model_size(stripped, "h5"),
        gzip_keras_bytes=gzipped_model_size(stripped, "keras"),
        export_float32_bytes=float32_bytes,
        export_int8_bytes=int8_bytes,
        seconds_per_epoch=statistics.median(timer.seconds),
        val_accuracy=[float(v) for v in history.history[f"val_{metric}"]],
        test_metrics=scores,
        warnings=messages,
        parameters=stripped.count_params(),
        flops=flops(stripped),
        predict_ms=_predict_ms(stripped, task.x_test[: config.batch_size]),
        **tflite,
    )


def _removed_weights(masked: keras.Model, shrunk: keras.Model) -> tuple[dict[str, float], float]:
    """Per prunable weight of a channel-pruned model, the fraction of its entries `shrink`
    removed, and that fraction over all of them: the counterparts of weight sparsity."""
    dense = {f"{r.layer}/{r.weight}": r.size for r in sparsity_report(masked)}
    small = {f"{r.layer}/{r.weight}": r.size for r in sparsity_report(shrunk)}
    removed = {name: 1.0 - small[name] / size for name, size in dense.items()}
    return removed, 1.0 - sum(small.values()) / sum(dense.values())


_PREDICT_REPEATS = 7


def _predict_ms(model: keras.Model, x: Any) -> float:
    """Milliseconds of `model.predict` on the batch `x`: the median of a few calls after one."""
    model.predict(x, batch_size=len(x), verbose=0)
    times = []
    for _ in range(_PREDICT_REPEATS):
        start = time.perf_counter()
        model.predict(x, batch_size=len(x), verbose=0)
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def _measure_tflite(model: keras.Model, directory: str, task: Task) -> dict[str, Any]:
    """Sizes of `model` as sparse float32 and int8 `.tflite` files, and the int8 file's
    score in the task's metric, of LiteRT's own predictions (builtin kernels) of the
    whole test set."""
    float32 = runtimes.export(model, os.path.join(directory, "float32.tflite"))
    path = os.path.join(directory, "int8.tflite")
    with warnings.catch_warnings():  # that XNNPack refuses sparse int8 is known (docs/export.md)
        warnings.filterwarnings("ignore", message=".*XNNPack", category=UserWarning)
        int8 = runtimes.export(model, path, quantize="int8")
    (predictions,) = runtimes.run(path, task.x_test)
    return {
        "tflite_float32_bytes": float32,
        "tflite_int8_bytes": int8,
        "tflite_int8_test_accuracy": task.score(model, predictions),
    }


_MEASURES = (
    "test_accuracy",
    "test_loss",
    "int8_test_accuracy",
    "total_sparsity",
    "gzip_h5_bytes",
    "gzip_keras_bytes",
    "export_float32_bytes",
    "export_int8_bytes",
    "seconds_per_epoch",
    "tflite_float32_bytes",
    "tflite_int8_bytes",
    "tflite_int8_test_accuracy",
    "parameters",
    "flops",
    "predict_ms",
)


@dataclasses.dataclass
class Comparison:
    """The runs of a comparison so far, with their summary and statistics."""

    config: ExperimentConfig
    data: dict[str, int]
    steps: dict[str, int]
    schedule_points: dict[str, list[tuple[int, float]]]
    runs: list[RunResult] = dataclasses.field(default_factory=list)
    #: Found before training: schedules whose last pruning step prescribes
    #: less than their target (see `check_schedules`), and why a
    #: `tflite="auto"` comparison has no `.tflite` measures.
    notes: list[str] = dataclasses.field(default_factory=list)
    #: What `test_accuracy` and the t-tests measure (`Task.metric`).
    metric: str = "accuracy"

    def groups(self) -> dict[tuple[str, str, float], list[RunResult]]:
        """Runs grouped by (schedule, distribution, sparsity), baseline first, in run order."""
        grouped: dict[tuple[str, str, float], list[RunResult]] = {}
        for run in self.runs:
            grouped.setdefault((run.schedule, run.distribution, run.sparsity), []).append(run)
        return grouped

    def summary(self) -> list[dict[str, Any]]:
        """Per (schedule, distribution, sparsity): every measure as `(mean, std)` over seeds,
        per-layer sparsity means, validation accuracy means per epoch, and the
        compression ratio of the zipped `.h5` against the baseline's."""
        groups = self.groups()
        baseline = groups.get((BASELINE, "uniform", 0.0))
        dense_bytes = stats.mean_std([r.gzip_h5_bytes for r in baseline])[0] if baseline else None
        rows = []
        for (schedule, distribution, sparsity), runs in groups.items():
            row: dict[str, Any] = {
                "schedule": schedule,
                "distribution": distribution,
                "sparsity": sparsity,
                "seeds": [r.seed for r in runs],
            }
            for measure in _MEASURES:  # None where a run did not measure it (no .tflite)
                values = [getattr(r, measure) for r in runs]
                row[measure] = None if None in values else stats.mean_std(values)
            row["test_metrics"] = {  # runs resumed from format 3 and older have none
                name: stats.mean_std([r.test_metrics[name] for r in runs])
                for name in runs[0].test_metrics
                if all(name in r.test_metrics for r in runs)
            }
            row["layer_sparsity"] = {
                name: stats.mean_std([r.layer_sparsity[name] for r in runs])[0]
                for name in runs[0].layer_sparsity
            }
            row["val_accuracy"] = [
                stats.mean_std(list(epoch))[0] for epoch in zip(*(r.val_accuracy for r in runs))
            ]
            row["compression_ratio"] = (
                dense_bytes / row["gzip_h5_bytes"][0] if dense_bytes else None
            )
            row["warnings"] = sorted({m for r in runs for m in r.warnings})
            rows.append(row)
        return rows

    def tests(self) -> list[dict[str, Any]]:
        """Welch's t-test on test accuracy for each pair of pruned runs (schedule
        and distribution) at each sparsity; `p_value` is None with fewer than
        two seeds per side. `first` and `second` are the runs' labels."""
        groups = self.groups()
        shown = run_distributions(dataclasses.asdict(self.config))
        results = []
        for sparsity in self.config.sparsities:
            names = [
                (s, d) for s in self.config.schedules for d in shown if (s, d, sparsity) in groups
            ]
            for i, first in enumerate(names):
                for second in names[i + 1 :]:
                    a = [r.test_accuracy for r in groups[(*first, sparsity)]]
                    b = [r.test_accuracy for r in groups[(*second, sparsity)]]
                    p_value = None
                    if len(a) >= 2 and len(b) >= 2:
                        p = stats.welch_t_test(a, b)[2]
                        p_value = None if math.isnan(p) else p
                    results.append(
                        {
                            "sparsity": sparsity,
                            "first": _pair_label(first, shown),
                            "second": _pair_label(second, shown),
                            "accuracy_difference": stats.mean_std(a)[0] - stats.mean_std(b)[0],
                            "p_value": p_value,
                            "significant": None
                            if p_value is None
                            else p_value < SIGNIFICANCE_LEVEL,
                        }
                    )
        return results

    def planned_runs(self) -> list[tuple[str, float, int, str]]:
        """`(schedule, sparsity, seed, distribution)` of every run, in the order they run."""
        config = self.config
        per_seed = [(BASELINE, 0.0, "uniform")] + [
            (n, s, d)
            for n in config.schedules
            for d in run_distributions(dataclasses.asdict(config))
            for s in config.sparsities
        ]
        return [(name, s, seed, d) for seed in range(config.seeds) for name, s, d in per_seed]

    def resume(self, previous: Mapping[str, Any]) -> None:
        """Keeps the runs of an earlier comparison with the same settings, so
        that `run` trains only the runs it had not finished.

        `previous` is that comparison's `to_dict()`, e.g. its `results.json`.
        Its `seeds` may differ (a finished 2-seed comparison grows to 5
        seeds); every other setting and the data must be the same, else
        ValueError names what differs.

        Example:

        ```python
        comparison, task = prepare(ExperimentConfig(seeds=5))
        with open("out/results.json") as f:
            comparison.resume(json.load(f))
        comparison.run(task)
        ```
        """
        if not isinstance(previous, Mapping) or not {"config", "data", "runs"} <= previous.keys():
            raise ValueError(
                "`previous` must be a comparison's results (with config, data and runs)."
            )
        results.check_format(previous)
        ours = json.loads(json.dumps(dataclasses.asdict(self.config)))
        # Files of format 2 and older compared the uniform distribution only,
        # of format 4 and older weights only, of format 5 and older ended
        # pruning at the last batch.
        theirs = {
            "distributions": ["uniform"],
            "structures": ["weights"],
            "end_fraction": 1.0,
            **previous["config"],
        }
        differ = sorted(
            key
            for key in ours.keys() | theirs.keys()
            if key not in ("seeds", "verbose", "tflite") and ours.get(key) != theirs.get(key)
        )
        if previous["data"] != self.data:
            differ.append("data")
        if differ:
            details = ", ".join(
                f"data {previous['data']} vs {self.data}"
                if key == "data"
                else f"{key} {theirs.get(key)!r} vs {ours.get(key)!r}"
                for key in differ
            )
            raise ValueError(
                f"cannot resume: the earlier comparison differs in {details} (earlier vs now)."
            )
        planned = self.planned_runs()
        runs = [RunResult.from_dict(run) for run in previous["runs"]][: len(planned)]
        if [(r.schedule, r.sparsity, r.seed, r.distribution) for r in runs] != planned[: len(runs)]:
            raise ValueError("cannot resume: the earlier runs are not in this comparison's order.")
        self.runs = runs

    def run(
        self, data: Task | Data, on_run_end: Callable[[Comparison, float], None] | None = None
    ) -> None:
        """Trains the planned runs not yet in `runs`, appending each result.

        `data` is the `Task` that `prepare` returns (or the seed's data, see `run_once`).
        Seeds are 0, 1, ..., `config.seeds - 1`; all runs of one seed finish
        before the next seed starts, so an interrupted comparison holds
        complete seeds. `on_run_end(comparison, seconds)` follows every run.
        """
        if on_run_end is not None and not callable(on_run_end):
            raise TypeError(
                f"`on_run_end` must be callable or None; got {type(on_run_end).__name__}."
            )
        for schedule, sparsity, seed, distribution in self.planned_runs()[len(self.runs) :]:
            start = time.perf_counter()
            self.runs.append(run_once(self.config, data, schedule, sparsity, seed, distribution))
            if on_run_end is not None:
                on_run_end(self, time.perf_counter() - start)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": results.FORMAT,
            "config": dataclasses.asdict(self.config),
            "environment": {
                "backend": keras.backend.backend(),
                "keras": keras.__version__,
                "python": platform.python_version(),
                "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, {platform.platform()}",
            },
            "data": self.data,
            "metric": self.metric,
            "steps": self.steps,
            "schedule_points": {k: [list(p) for p in v] for k, v in self.schedule_points.items()},
            "runs": [dataclasses.asdict(r) for r in self.runs],
            "summary": self.summary(),
            "tests": self.tests(),
            "seed_figures": SEED_FIGURES,
        }

    def write(self, directory: str | os.PathLike[str]) -> list[str]:
        """Writes `results.json` and `results.csv` (one row per run) to `directory`."""
        os.makedirs(directory, exist_ok=True)
        json_path = os.path.join(directory, "results.json")
        # Written after every run: atomically, so that an interrupted
        # comparison always leaves a results.json that --resume can read.
        _files.write_text(json_path, json.dumps(self.to_dict(), indent=1))
        csv_path = os.path.join(directory, "results.csv")
        layers = list(self.runs[0].layer_sparsity) if self.runs else []
        table = io.StringIO(newline="")
        writer = csv.writer(table)
        writer.writerow(
            [
                "schedule",
                "distribution",
                "sparsity",
                "seed",
                *_MEASURES,
                *(f"sparsity:{n}" for n in layers),
            ]
        )
        for run in self.runs:
            row = [
                run.schedule,
                run.distribution,
                run.sparsity,
                run.seed,
                *(getattr(run, m) for m in _MEASURES),
            ]
            writer.writerow(row + [run.layer_sparsity.get(n, "") for n in layers])
        _files.write_text(csv_path, table.getvalue())
        return [json_path, csv_path]


# A schedule's last prescribed sparsity counts as its target within float32 rounding.
_REACHED = 1e-6


def _schedule_points(name: str, target: float, config: ExperimentConfig, num_train: int) -> Any:
    """`(points, begin_step, end_step)` of schedule `name` to `target` in this run."""
    _, begin_step, end_step = pruning_steps(num_train, config)
    schedule = make_schedule(name, target, begin_step, end_step, config.frequency)
    return pruning_points(schedule, 1, end_step), begin_step, end_step


def _fitting_frequency(begin_step: int, end_step: int, frequency: int) -> int | None:
    """The largest frequency <= `frequency` whose pruning steps end at `end_step`."""
    span = end_step - begin_step
    fitting = [d for d in range(1, min(frequency, span) + 1) if span % d == 0]
    return fitting[-1] if fitting else None


def check_schedules(config: ExperimentConfig, num_train: int) -> list[str]:
    """Checks before training that every schedule prunes in a run of `config`.

    A schedule that never prunes (no pruning step inside training, or only
    steps that prescribe 0 %, e.g. PolynomialDecay with one pruning step)
    raises ValueError naming a `--frequency` or `--epochs` that makes it
    reach its target. A schedule whose last pruning step prescribes less
    than its target (it ends short, as the seed's PolynomialDecay does, by
    0.005 points) gives a message, returned, naming a frequency that ends
    exactly on it.
    """
    notes = []
    for name in config.schedules:
        for target in config.sparsities:
            points, begin_step, end_step = _schedule_points(name, target, config, num_train)
            reached = points[-1][1] if points else 0.0
            if target == 0 or reached >= target - _REACHED:
                continue
            label = results.label(name, target, True)
            frequency = _fitting_frequency(begin_step, end_step, config.frequency)
            fix = f"--frequency {frequency}" if frequency else None
            if max((p for _, p in points), default=0.0) > 0:
                where = f"; {fix} ends exactly on it" if fix else ""
                notes.append(
                    f"{label}: the last pruning step, {points[-1][0]}, prescribes "
                    f"{reached:.3%}, not {target:.2%} (pruning steps {begin_step}..{end_step} "
                    f"every {config.frequency}){where}."
                )
                continue
            with warnings.catch_warnings():  # PolynomialDecay's own, for every try
                warnings.simplefilter("ignore")
                for epochs in range(config.epochs + 1, 100 * config.epochs + 2):
                    longer = dataclasses.replace(config, epochs=epochs)
                    longer_points = _schedule_points(name, target, longer, num_train)[0]
                    if longer_points and longer_points[-1][1] >= 0.99 * target:
                        fix = f"{fix} or --epochs {epochs}" if fix else f"--epochs {epochs}"
                        break
            steps = ", ".join(str(step) for step, _ in points)
            why = (
                f"its only pruning steps ({steps}) prescribe 0 %"
                if points
                else "no pruning step falls inside training"
            )
            raise ValueError(
                f"schedule {label} never prunes in this run: {end_step} training steps, pruning "
                f"from step {begin_step} every {config.frequency}, and {why}; "
                f"{'use ' + fix if fix else 'train longer'}."
            )
    return notes


def prepare(config: ExperimentConfig) -> tuple[Comparison, Task]:
    """Loads the data and builds every schedule once, and the model, compiled
    and evaluated on a few samples, before any training, so that a missing
    dataset, a bad schedule (also one that never prunes in this run:
    `check_schedules`), a model that does not fit its data, a model file
    that a run could not prune (`_check_pruning`) or, with `config.tflite`,
    that LiteRT cannot run (`TfliteUnavailableError`) fails fast.

    Returns the empty comparison, whose config has `tflite` True or False
    (see `ExperimentConfig`), and the task for `Comparison.run`. Raises
    `keras_prune.compare.datasets.DatasetUnavailableError` when the dataset's files
    are missing, ValueError/TypeError for a schedule, model or data file that
    cannot be used.
    """
    if not isinstance(config, ExperimentConfig):
        raise TypeError(f"`config` must be an ExperimentConfig; got {type(config).__name__}.")
    if config.dataset in DATASETS:
        (x_train, y_train), (x_test, y_test) = load_dataset(config.dataset, config.data_dir)
    else:
        (x_train, y_train), (x_test, y_test) = load_npz(config.dataset)
    if config.limit is not None:
        x_train, y_train = x_train[: config.limit], y_train[: config.limit]
        x_test, y_test = x_test[: config.limit], y_test[: config.limit]
    steps_per_epoch, begin_step, end_step = pruning_steps(len(x_train), config)
    num_fit = int(math.floor(len(x_train) * (1.0 - config.validation_split)))
    points = {
        results.label(name, s, len(config.sparsities) > 1): _schedule_points(
            name, s, config, len(x_train)
        )[0]
        for name in config.schedules
        for s in config.sparsities
    }
    comparison = Comparison(
        config=config,
        data={"train": num_fit, "validation": len(x_train) - num_fit, "test": len(x_test)},
        steps={"per_epoch": steps_per_epoch, "begin_step": begin_step, "end_step": end_step},
        schedule_points=points,
        notes=check_schedules(config, len(x_train)),
    )
    data = ((x_train, y_train), (x_test, y_test))
    if config.model is None:
        num_classes = _NUM_CLASSES if config.dataset in DATASETS else None
        task = seed_task(data, num_classes).check()
    else:
        for module in config.imports:
            try:
                importlib.import_module(module)
            except ImportError as error:
                raise ValueError(f"`imports`: cannot import {module!r} ({error}).") from None
        task = file_task(config.model, data, config.loss, config.metrics)
        _check_pruning(task, run_distributions(dataclasses.asdict(config)))
    comparison.config = dataclasses.replace(config, tflite=_tflite(config, task, comparison.notes))
    comparison.metric = task.metric
    return comparison, task


def _tflite(config: ExperimentConfig, task: Task, notes: list[str]) -> bool:
    """Whether the runs measure `.tflite` files: `config.tflite`, with "auto" resolved
    (and the reason for False added to `notes`)."""
    if config.tflite is False:
        return False
    if config.tflite == "auto":
        lacking = runtimes.missing(".tflite")
        if lacking:
            notes.append(f"no .tflite measures: they need {lacking}")
            return False
    if config.model is None:  # the seed ConvNet converts and runs
        return True
    try:
        _check_tflite(task)
    except TfliteUnavailableError as error:
        if config.tflite is True:
            raise
        notes.append(f"no .tflite measures: {error}")
        return False
    return True


def _check_pruning(task: Task, distributions: Sequence[str]) -> None:
    """Prunes (and shrinks) the untrained model once in each way the runs will, so
    that a model that cannot be pruned so (no channel group to remove) fails
    before any training."""
    schedule = ConstantSparsity(0.5, 0)
    with warnings.catch_warnings():  # each run reports its own
        warnings.simplefilter("ignore", UserWarning)
        for distribution in distributions:
            try:
                if distribution == CHANNELS:
                    prune_channels(task.build(), schedule)
                    shrink(task.build(), 0.5)  # what each run does after training
                else:
                    prune_low_magnitude(
                        task.build(), pruning_schedule=schedule, sparsity_distribution=distribution
                    )
            except ValueError as error:
                way = (
                    "--structure channels"
                    if distribution == CHANNELS
                    else f"--distribution {distribution}"
                )
                raise ValueError(f"the model cannot be pruned ({way}): {error}") from None


class TfliteUnavailableError(ValueError):
    """The model does not become a `.tflite` file that LiteRT runs; the message says why."""


def _check_tflite(task: Task) -> None:
    """Exports the untrained model once, so that a model LiteRT cannot run (a
    looping LSTM) fails before any training rather than after the first run."""
    with tempfile.TemporaryDirectory() as directory, warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        try:
            path = os.path.join(directory, "check.tflite")
            runtimes.export(task.build(), path, check_inputs=task.x_test[:4])
        except (ValueError, ImportError) as error:
            raise TfliteUnavailableError(f"the model does not export to .tflite: {error}") from None


def compare(
    config: ExperimentConfig,
    on_run_end: Callable[[Comparison, float], None] | None = None,
) -> Comparison:
    """Runs the baseline and every schedule at every sparsity, seed after seed.

    `prepare(config)`, then `Comparison.run`; see those.
    """
    comparison, task = prepare(config)
    comparison.run(task, on_run_end)
    return comparison

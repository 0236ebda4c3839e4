"""What a comparison trains and scores: the model, its data, loss and metrics.

Two kinds of task:

- `seed_task`: the seed article's ConvNet (`seed_model`) on images with
  integer class labels (one-hot encoded for it), Adam, categorical
  cross-entropy and accuracy, built afresh for every run, so that
  `keras.utils.set_random_seed(seed)` gives every run of a seed the same
  initial weights.
- `file_task`: your own model, a `.keras` file, loaded afresh for every run,
  so that every run starts from the file's weights (pruning a trained model
  and fine-tuning it, or an untrained one). Its optimizer, loss and metrics
  are those the file was compiled with; `loss` and `metrics` replace them
  (a file saved uncompiled needs `loss`, and trains with Adam).

The metric compared (`Task.metric`) is the first compiled metric, or the
loss when there is none. `Task.check` compiles a fresh model and evaluates
it on a few samples before any training, so a model that does not fit its
data or its loss fails at once, with one message.

Example:

```python
data = load_npz("data.npz")      # ((x_train, y_train), (x_test, y_test))
task = file_task("model.keras", data, metrics=("mae",))
model = task.compiled(task.build())
model.fit(task.x_train, task.y_train)
task.metric                      # 'mae'
```
"""

from __future__ import annotations

import copy
import dataclasses
import os
import warnings
import zipfile
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import keras
import numpy as np

from keras_prune import _validation

__all__ = ["NPZ_ARRAYS", "Data", "Task", "file_task", "load_npz", "seed_model", "seed_task"]

Data = tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]

#: The arrays a `--data` file holds.
NPZ_ARRAYS = ("x_train", "y_train", "x_test", "y_test")


def seed_model(
    input_shape: tuple[int, ...] = (28, 28, 1),
    num_classes: int = 10,
    widths: tuple[int, int, int] = (32, 64, 256),
) -> keras.Model:
    """The seed article's ConvNet, with the Flatten its code leaves out.

    `widths` are its two convolutions' filters and its hidden Dense layer's
    units (the article's by default; a benchmark builds shrunk shapes).
    """
    if len(widths) != 3 or not all(isinstance(w, int) and w >= 1 for w in widths):
        raise ValueError(f"`widths` must be three positive ints; got {widths!r}.")
    conv1, conv2, dense1 = widths
    return keras.Sequential(
        [
            keras.Input(input_shape),
            keras.layers.Conv2D(conv1, 3, activation="relu", name="conv1"),
            keras.layers.MaxPooling2D(2, name="pool1"),
            keras.layers.Conv2D(conv2, 3, activation="relu", name="conv2"),
            keras.layers.MaxPooling2D(2, name="pool2"),
            keras.layers.Flatten(name="flatten"),
            keras.layers.Dense(dense1, activation="relu", name="dense1"),
            keras.layers.Dense(num_classes, activation="softmax", name="dense2"),
        ],
        name="seed_convnet",
    )


@dataclasses.dataclass(frozen=True)
class Task:
    """A model to build for every run, how to compile it, and its data.

    `compile_config` is a `Model.get_compile_config()` dict; `metric` is the
    key of `model.evaluate(..., return_dict=True)` that the comparison
    reports and tests ("loss" when the model has no metric).
    """

    build: Callable[[], keras.Model]
    compile_config: dict[str, Any]
    data: Data
    metric: str = "accuracy"

    @property
    def x_train(self) -> np.ndarray:
        return self.data[0][0]

    @property
    def y_train(self) -> np.ndarray:
        return self.data[0][1]

    @property
    def x_test(self) -> np.ndarray:
        return self.data[1][0]

    @property
    def y_test(self) -> np.ndarray:
        return self.data[1][1]

    def compiled(self, model: keras.Model) -> keras.Model:
        """`model`, compiled with a fresh optimizer, the loss and the metrics of the task."""
        # Model.compile_from_config would skip a model whose class overrides
        # compile (KerasHub tasks); the public deserializer and compile do not.
        config = keras.saving.deserialize_keras_object(copy.deepcopy(self.compile_config))
        model.compile(**config)
        return model

    def evaluate(self, model: keras.Model, batch_size: int) -> dict[str, float]:
        """`model`'s loss and metrics on the test set (the model must be compiled)."""
        scores = model.evaluate(
            self.x_test, self.y_test, batch_size=batch_size, verbose=0, return_dict=True
        )
        return {name: float(value) for name, value in scores.items()}

    def score(self, model: keras.Model, y_pred: np.ndarray) -> float:
        """The task's metric of predictions `y_pred` of the test set (e.g. a
        runtime's), computed by `model`'s compiled loss and metrics."""
        model = self.compiled(model)
        y_true = keras.ops.convert_to_tensor(self.y_test)
        y_pred = keras.ops.convert_to_tensor(y_pred)
        if self.metric == "loss":
            return float(keras.ops.convert_to_numpy(model.compute_loss(y=y_true, y_pred=y_pred)))
        for metric in model.metrics:
            metric.reset_state()
        scores = model.compute_metrics(None, y_true, y_pred)
        return float(keras.ops.convert_to_numpy(scores[self.metric]))

    def check(self) -> Task:
        """The task with its `metric` found, after compiling a fresh model and
        evaluating it on up to 64 test samples; ValueError if that fails."""
        few = slice(0, 64)
        unfit = "the model cannot be evaluated on the data"
        try:
            model = self.compiled(self.build())
        except Exception as error:  # the seed ConvNet on images too small for it
            raise ValueError(f"{unfit}: {_first_line(error)}") from None
        if len(model.inputs) != 1 or len(model.outputs) != 1:
            raise ValueError(
                f"`model` must have one input and one output, for x and y arrays; it has "
                f"{len(model.inputs)} and {len(model.outputs)}."
            )
        # Keras only warns when a model meets inputs of another shape than
        # it was built for, and a convolutional model may then even train.
        takes = tuple(model.inputs[0].shape[1:])
        for name, x in (("x_train", self.x_train), ("x_test", self.x_test)):
            given = x.shape[1:]
            if len(given) != len(takes) or any(t not in (None, g) for t, g in zip(takes, given)):
                raise ValueError(
                    f"`data`: the samples of {name} have shape {given}, but the model's "
                    f"input takes {takes} (None: any size)."
                )
        try:
            scores = model.evaluate(self.x_test[few], self.y_test[few], verbose=0, return_dict=True)
        except Exception as error:  # any Keras or backend error: the model does not fit its data
            raise ValueError(f"{unfit}: {_first_line(error)}") from None
        metrics = [name for name in scores if name != "loss"]
        return dataclasses.replace(self, metric=metrics[0] if metrics else "loss")


def seed_task(data: Data, num_classes: int | None = None) -> Task:
    """The seed article's ConvNet, one-hot labels, Adam, categorical cross-entropy, accuracy.

    `data` holds images `(N, H, W, C)` and integer labels `0..num_classes - 1`
    (`num_classes` None: the largest label + 1); the model is sized for them.
    """
    if num_classes is not None:
        _validation.count(num_classes, "num_classes", 2)
    (x_train, y_train), (x_test, y_test) = _checked_data(data, "data")
    for name, x, y in (("train", x_train, y_train), ("test", x_test, y_test)):
        if x.ndim != 4 or y.ndim != 1 or not np.issubdtype(y.dtype, np.integer) or y.min() < 0:
            raise ValueError(
                f"the seed ConvNet needs images (N, H, W, C) and integer labels 0..K-1 (N,); the "
                f"{name} arrays are {x.shape} {x.dtype} and {y.shape} {y.dtype}: pass a `model` "
                "that fits them."
            )
    classes = num_classes or int(max(y_train.max(), y_test.max())) + 1
    one_hot = (
        (x_train, keras.utils.to_categorical(y_train, classes)),
        (x_test, keras.utils.to_categorical(y_test, classes)),
    )
    return Task(
        build=lambda: seed_model(tuple(x_train.shape[1:]), classes),
        compile_config={
            "optimizer": "adam",
            "loss": "categorical_crossentropy",
            "metrics": ["accuracy"],
        },
        data=one_hot,
        metric="accuracy",
    )


def file_task(
    path: str | os.PathLike[str],
    data: Data,
    loss: str | None = None,
    metrics: Sequence[str] | None = None,
) -> Task:
    """Your model file `path` (`.keras`) on `data`, compiled as the file was,
    with `loss` and `metrics` (Keras names, e.g. "mse", ["mae"]) in place of
    the file's when given, checked on a few test samples (`Task.check`).
    Raises ValueError when the file cannot be loaded, has no loss and `loss`
    is None, or the model does not fit the data or the loss."""
    _validation.instance(path, "model", (str, os.PathLike), "a path to a .keras file")
    path = os.fspath(path)
    if loss is not None:
        _validation.instance(loss, "loss", str, "a Keras loss name such as 'mse'")
    if metrics is not None:
        if isinstance(metrics, str) or not isinstance(metrics, Sequence):
            raise TypeError(f"`metrics` must be a sequence of metric names; got {metrics!r}.")
        for metric in metrics:
            _validation.instance(metric, "metrics", str, "a sequence of Keras metric names")
    if not path.endswith(".keras"):
        raise ValueError(f"`model` must be a .keras file (keras.Model.save); got {path!r}.")
    if not os.path.isfile(path):
        raise ValueError(f"`model`: no file {path!r}.")
    model = _load(path, compile=True)
    config = model.get_compile_config() or {}
    if not config.get("loss") and loss is None:
        raise ValueError(
            f"`loss`: {path} was saved without a loss (not compiled); name one, e.g. --loss "
            "sparse_categorical_crossentropy or --loss mse (and --metrics)."
        )
    config = {"optimizer": "adam", **config}
    if loss is not None:
        config["loss"] = loss
    if metrics is not None:
        config["metrics"] = list(metrics)
    return Task(
        build=lambda: _load(path, compile=False),
        compile_config=config,
        data=_checked_data(data, "data"),
    ).check()


def _load(path: str, compile: bool) -> keras.Model:
    try:
        with warnings.catch_warnings():
            # Only the compile settings are wanted from compile=True; the
            # saved optimizer's state, which Keras warns it may not restore,
            # is not used: every run trains with a fresh optimizer.
            warnings.filterwarnings("ignore", message="Skipping variable loading for optimizer")
            model = keras.saving.load_model(path, compile=compile)
    except Exception as error:  # zip, JSON, unknown class, mismatched weights: not loadable
        raise ValueError(
            f"`model`: cannot load {path} ({_first_line(error)}); a custom layer must be "
            "registered with @keras.saving.register_keras_serializable in a module imported "
            "first (--import MODULE)."
        ) from None
    if not isinstance(model, keras.Model):
        raise ValueError(f"`model`: {path} holds a {type(model).__name__}, not a keras.Model.")
    return model


def _first_line(error: Exception) -> str:
    """`error`'s type and first non-empty line, without Keras's ANSI bold codes."""
    lines = [
        line.strip()
        for line in str(error).replace("\x1b[1m", "").replace("\x1b[0m", "").splitlines()
    ]
    first = next(
        (line for line in lines if line and not line.startswith("Exception encountered")), ""
    )
    return f"{type(error).__name__}: {first}" if first else type(error).__name__


def load_npz(path: str | os.PathLike[str]) -> Data:
    """`((x_train, y_train), (x_test, y_test))` from an `.npz` file (`numpy.savez`)
    holding those four arrays; ValueError names what is missing or mismatched."""
    _validation.instance(path, "data", (str, os.PathLike), "a path to an .npz file")
    shown = os.fspath(path)
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        raise ValueError(f"`data`: cannot read {shown} as .npz ({error}).") from None
    if not isinstance(archive, Mapping):  # a .npy file: one array
        raise ValueError(f"`data`: {shown} holds one array, not {', '.join(NPZ_ARRAYS)}.")
    with archive:
        missing = [name for name in NPZ_ARRAYS if name not in archive]
        if missing:
            raise ValueError(
                f"`data`: {shown} lacks {', '.join(missing)} (it needs {', '.join(NPZ_ARRAYS)}; "
                f"it has {', '.join(archive) or 'no arrays'})."
            )
        try:
            arrays = [archive[name] for name in NPZ_ARRAYS]
        except ValueError as error:  # object arrays, which would need pickle
            raise ValueError(f"`data`: cannot read {shown}: {error}") from None
    x_train, y_train, x_test, y_test = arrays
    return _checked_data(((x_train, y_train), (x_test, y_test)), "data")


def _checked_data(data: Any, name: str) -> Data:
    try:
        (x_train, y_train), (x_test, y_test) = data
    except (TypeError, ValueError):
        raise TypeError(f"`{name}` must be ((x_train, y_train), (x_test, y_test)).") from None
    out = []
    for part, x, y in (("train", x_train, y_train), ("test", x_test, y_test)):
        x, y = np.asarray(x), np.asarray(y)
        for array, what in ((x, f"x_{part}"), (y, f"y_{part}")):
            if array.dtype.kind not in "biuf" or array.ndim == 0:
                raise ValueError(
                    f"`{name}`: {what} must be a numeric array with a sample axis; got "
                    f"{array.dtype} of shape {array.shape}."
                )
        if len(x) != len(y) or len(x) < 2:
            raise ValueError(
                f"`{name}`: x_{part} and y_{part} must hold the same number (>= 2) of samples; "
                f"got {len(x)} and {len(y)}."
            )
        out.append((x, y))
    return out[0], out[1]

"""Tests for keras_prune.compare.task: your own model file and data in a comparison."""

from __future__ import annotations

import sys

import keras
import numpy as np
import pytest

from keras_prune.compare import experiment, task
from keras_prune.compare.experiment import ExperimentConfig


def _regression(n=300, features=12, seed=0):
    rng = np.random.RandomState(seed)
    x = rng.rand(n, features).astype("float32")
    y = (x @ rng.randn(features, 1) + 0.05 * rng.randn(n, 1)).astype("float32")
    return (x[: n - 100], y[: n - 100]), (x[n - 100 :], y[n - 100 :])


def _model(features=12, outputs=1, activation=None):
    return keras.Sequential(
        [
            keras.Input((features,)),
            keras.layers.Dense(32, activation="relu", name="hidden"),
            keras.layers.Dense(outputs, activation=activation, name="out"),
        ]
    )


def _save_npz(path, data):
    (x_train, y_train), (x_test, y_test) = data
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    return str(path)


def test_load_npz_reads_the_four_arrays_and_names_what_is_wrong(tmp_path):
    data = _regression()
    loaded = task.load_npz(_save_npz(tmp_path / "d.npz", data))
    for got, want in zip([*loaded[0], *loaded[1]], [*data[0], *data[1]]):
        np.testing.assert_array_equal(got, want)

    np.savez(tmp_path / "partial.npz", x_train=data[0][0], y_train=data[0][1])
    with pytest.raises(ValueError, match="lacks x_test, y_test"):
        task.load_npz(tmp_path / "partial.npz")
    (x_train, y_train), test = data
    np.savez(
        tmp_path / "short.npz", x_train=x_train, y_train=y_train[:5], x_test=test[0], y_test=test[1]
    )
    with pytest.raises(ValueError, match=r"x_train and y_train .* got 200 and 5"):
        task.load_npz(tmp_path / "short.npz")
    (tmp_path / "text.npz").write_text("not a zip")
    with pytest.raises(ValueError, match="cannot read .* as .npz"):
        task.load_npz(tmp_path / "text.npz")
    np.savez(
        tmp_path / "objects.npz",
        x_train=np.array([{}] * 3),
        y_train=y_train,
        x_test=test[0],
        y_test=test[1],
    )
    with pytest.raises(ValueError, match="cannot read|numeric"):
        task.load_npz(tmp_path / "objects.npz")


def test_file_task_takes_the_files_compile_settings_or_the_given_ones(tmp_path):
    data = _regression()
    model = _model()
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse", metrics=["mae", "mse"])
    path = str(tmp_path / "m.keras")
    model.save(path)

    own = task.file_task(path, data)
    assert own.metric == "mae"
    assert own.compile_config["optimizer"]["class_name"] == "SGD"
    replaced = task.file_task(path, data, loss="mae", metrics=["mse"])
    assert replaced.metric == "mse" and replaced.compile_config["loss"] == "mae"
    assert task.file_task(path, data, metrics=[]).metric == "loss"

    # Scores of predictions (a runtime's, say) are model.evaluate's, recomputed in numpy.
    fresh = own.compiled(own.build())
    predictions = fresh.predict(own.x_test, verbose=0)
    mae = float(np.mean(np.abs(predictions - own.y_test)))
    assert own.score(fresh, predictions) == pytest.approx(mae, rel=1e-5)
    assert own.evaluate(fresh, 50)["mae"] == pytest.approx(mae, rel=1e-5)
    by_loss = task.file_task(path, data, metrics=[])
    mse = float(np.mean((predictions - own.y_test) ** 2))
    assert by_loss.score(by_loss.compiled(by_loss.build()), predictions) == pytest.approx(
        mse, rel=1e-5
    )


def test_file_task_refuses_what_cannot_train_before_training(tmp_path):
    data = _regression()
    uncompiled = str(tmp_path / "uncompiled.keras")
    _model().save(uncompiled)
    with pytest.raises(ValueError, match="`loss`: .* saved without a loss"):
        task.file_task(uncompiled, data)
    assert task.file_task(uncompiled, data, loss="mse").compile_config["optimizer"] == "adam"

    wide = str(tmp_path / "wide.keras")
    model = _model(features=30)
    model.compile(loss="mse")
    model.save(wide)
    with pytest.raises(ValueError, match="x_train have shape \\(12,\\), but the model's input "
                       "takes \\(30,\\)"):  # fmt: skip
        task.file_task(wide, data)  # Keras would only warn, and a convolution would even train
    sequences = str(tmp_path / "sequences.keras")
    model = keras.Sequential([keras.Input((None, 3)), keras.layers.Conv1D(4, 2),
                              keras.layers.GlobalAveragePooling1D(), keras.layers.Dense(1)])  # fmt: skip
    model.compile(loss="mse")
    model.save(sequences)
    (x, y), (x_test, y_test) = data
    steps = ((x.reshape(-1, 4, 3), y), (x_test.reshape(-1, 4, 3), y_test))
    assert task.file_task(sequences, steps).metric == "loss"  # any length
    with pytest.raises(ValueError, match="x_test have shape \\(3, 4\\), but the model's input "
                       "takes \\(None, 3\\)"):  # fmt: skip
        task.file_task(sequences, (steps[0], (x_test.reshape(-1, 3, 4), y_test)))
    with pytest.raises(ValueError, match="cannot be evaluated on the data: .*nonsense"):
        task.file_task(uncompiled, data, loss="nonsense")
    with pytest.raises(ValueError, match="`model`: no file"):
        task.file_task(str(tmp_path / "missing.keras"), data)
    with pytest.raises(ValueError, match="must be a .keras file"):
        task.file_task(str(tmp_path / "model.h5"), data)
    (tmp_path / "broken.keras").write_text("not a zip")
    with pytest.raises(ValueError, match="`model`: cannot load"):
        task.file_task(str(tmp_path / "broken.keras"), data)
    with pytest.raises(TypeError, match="`metrics` must be a sequence"):
        task.file_task(uncompiled, data, loss="mse", metrics="mae")


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"dataset": "cifar10"}, "`dataset` must be one of"),
        ({"dataset": "d.npz", "data_dir": "/tmp"}, "`data_dir` is only used"),
        ({"model": "m.h5"}, "`model` must be the path of a .keras file"),
        ({"loss": "mse"}, "`loss`, `metrics` and `imports` apply to a `model` file"),
        ({"model": "m.keras", "metrics": "mae"}, "`metrics` must be a sequence"),
    ],
)
def test_config_checks_model_and_data_settings(kwargs, words):
    with pytest.raises((ValueError, TypeError), match=words):
        ExperimentConfig(**kwargs)


def test_seed_model_is_the_articles_convnet_at_the_widths_asked_for():
    shapes = [tuple(w.shape) for w in task.seed_model().weights]
    assert shapes == [(3, 3, 1, 32), (32,), (3, 3, 32, 64), (64,), (1600, 256), (256,),
                      (256, 10), (10,)]  # fmt: skip
    narrow = task.seed_model(widths=(16, 32, 128))
    assert [tuple(w.shape) for w in narrow.weights][::2] == [
        (3, 3, 1, 16), (3, 3, 16, 32), (800, 128), (128, 10)
    ]  # fmt: skip
    for bad in [(16, 32), (16, 0, 8), (16.0, 32, 8)]:
        with pytest.raises(ValueError, match="`widths` must be three positive ints"):
            task.seed_model(widths=bad)


def test_seed_task_needs_images_and_class_labels():
    (x, y), _ = _regression()
    with pytest.raises(ValueError, match="the seed ConvNet needs images"):
        task.seed_task(((x, y), (x, y)))
    images = np.random.RandomState(0).rand(8, 8, 8, 1).astype("float32")
    with pytest.raises(ValueError, match="cannot be evaluated on the data"):
        labels = np.arange(8) % 3
        task.seed_task(((images, labels), (images, labels))).check()


@pytest.mark.slow
def test_comparison_of_your_model_starts_from_its_weights_and_prunes_it(tmp_path):
    data = _regression(n=420)
    model = _model()
    # A learning rate of 0: training changes nothing but the masks, so the
    # baseline must score exactly what the saved model scores, and every
    # pruned run must score what the saved model scores with its smallest
    # weights zeroed, computed here in numpy.
    model.compile(optimizer=keras.optimizers.SGD(0.0), loss="mse", metrics=["mae"])
    model_path = str(tmp_path / "m.keras")
    model.save(model_path)
    data_path = _save_npz(tmp_path / "d.npz", data)
    config = ExperimentConfig(
        schedules=("constant",),
        sparsities=(0.5,),
        epochs=2,
        batch_size=32,
        frequency=1,
        verbose=0,
        model=model_path,
        dataset=data_path,
    )
    comparison, own = experiment.prepare(config)
    assert comparison.metric == own.metric == "mae"
    comparison.run(own)
    baseline, pruned = comparison.runs
    (x_test, y_test) = data[1]
    kernel, bias, out_kernel, out_bias = (np.asarray(w) for w in model.get_weights())

    def mae(first, second):
        hidden = np.maximum(x_test @ first + bias, 0.0)
        return float(np.mean(np.abs(hidden @ second + out_bias - y_test)))

    def half(weight):
        cut = np.sort(np.abs(weight).ravel())[weight.size // 2 - 1]
        return np.where(np.abs(weight) > cut, weight, 0.0)

    assert baseline.test_accuracy == pytest.approx(mae(kernel, out_kernel), rel=1e-4)
    assert baseline.test_metrics["mae"] == baseline.test_accuracy
    assert pruned.test_accuracy == pytest.approx(mae(half(kernel), half(out_kernel)), rel=1e-4)
    assert pruned.layer_sparsity == {"hidden/kernel": 0.5, "out/kernel": 0.5}
    assert len(pruned.val_accuracy) == 2
    assert abs(pruned.int8_test_accuracy - pruned.test_accuracy) < 0.05 * pruned.test_accuracy
    summary = comparison.to_dict()
    assert summary["metric"] == "mae" and summary["config"]["model"] == model_path


LAYER_MODULE = """
import keras


@keras.saving.register_keras_serializable(package="kp_compare_test")
class Doubling(keras.layers.Layer):
    def call(self, x):
        return 2.0 * x
"""


def test_imports_register_a_models_custom_layers_before_it_loads(tmp_path, monkeypatch):
    (tmp_path / "kp_compare_layers.py").write_text(LAYER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    import kp_compare_layers

    inputs = keras.Input((12,))
    model = keras.Model(inputs, _model()(kp_compare_layers.Doubling()(inputs)))
    model.compile(loss="mse", metrics=["mae"])
    model.save(tmp_path / "custom.keras")
    # As in a fresh `keras-prune compare` process: the layer is not registered.
    keras.saving.get_custom_objects().pop("kp_compare_test>Doubling")
    monkeypatch.delitem(sys.modules, "kp_compare_layers")
    config = dict(
        model=str(tmp_path / "custom.keras"),
        dataset=_save_npz(tmp_path / "d.npz", _regression()),
        frequency=1,
        epochs=2,
    )
    with pytest.raises(ValueError, match=r"cannot load .*--import MODULE"):
        experiment.prepare(ExperimentConfig(**config))
    with pytest.raises(ValueError, match="`imports`: cannot import 'no_such_module_kp'"):
        experiment.prepare(ExperimentConfig(**config, imports=("no_such_module_kp",)))
    comparison, own = experiment.prepare(ExperimentConfig(**config, imports=("kp_compare_layers",)))
    assert comparison.metric == "mae"
    assert type(own.build().layers[1]).__name__ == "Doubling"

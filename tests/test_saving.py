"""Persistence: resume after save/load, Keras checkpoint callbacks, cross-backend load, bad files."""

import os
import subprocess
import sys
import zipfile

import keras
import numpy as np
import pytest
from conftest import BACKEND
from keras import ops

import keras_prune as kp


def make_pruned():
    model = keras.Sequential(
        [keras.Input((6,)), keras.layers.Dense(16, activation="relu"), keras.layers.Dense(3)]
    )
    schedule = kp.PolynomialDecay(0.0, 0.8, begin_step=0, end_step=8, frequency=2)
    pruned = kp.prune_low_magnitude(model, schedule)
    pruned.compile(keras.optimizers.SGD(0.05), "mse")
    return pruned


def data():
    rng = np.random.RandomState(0)
    return rng.rand(40, 6).astype("float32"), rng.rand(40, 3).astype("float32")


def state(model):
    return [
        ops.convert_to_numpy(v.value)
        for w in kp.pruned_layers(model)
        for v in [w.pruning_step] + [m for _, m, _ in w.pruning_vars]
    ]


def fit(model, x, y, epochs=1, **kwargs):
    model.fit(
        x,
        y,
        batch_size=8,
        epochs=epochs,
        shuffle=False,
        verbose=0,
        callbacks=[kp.UpdatePruningStep()] + kwargs.pop("callbacks", []),
        **kwargs,
    )


@pytest.mark.slow
def test_resume_after_save_and_load_gives_identical_masks(tmp_path):
    x, y = data()
    keras.utils.set_random_seed(1)
    straight = make_pruned()
    initial = straight.get_weights()
    fit(straight, x, y, epochs=2)  # 10 steps

    keras.utils.set_random_seed(1)
    resumed = make_pruned()
    resumed.set_weights(initial)
    fit(resumed, x, y, epochs=1)
    path = str(tmp_path / "mid.keras")
    kp.save_model(resumed, path)
    loaded = keras.saving.load_model(path)  # no custom_objects
    assert int(ops.convert_to_numpy(next(kp.pruned_layers(loaded)).pruning_step.value)) == 5
    fit(loaded, x, y, epochs=1)
    for a, b in zip(state(straight), state(loaded)):
        np.testing.assert_array_equal(a, b)
    assert int(state(loaded)[0]) == 10


@pytest.mark.slow
def test_model_checkpoint_and_backup_and_restore(tmp_path):
    x, y = data()
    pruned = make_pruned()
    checkpoint = str(tmp_path / "ckpt.keras")

    class StopAfterFirstEpoch(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 0:
                raise RuntimeError("interrupted")

    backup = str(tmp_path / "backup")
    with pytest.raises(RuntimeError, match="interrupted"):
        fit(
            pruned,
            x,
            y,
            epochs=2,
            callbacks=[
                keras.callbacks.ModelCheckpoint(checkpoint),
                keras.callbacks.BackupAndRestore(backup),
                StopAfterFirstEpoch(),
            ],
        )
    saved = keras.saving.load_model(checkpoint)
    assert int(state(saved)[0]) == 5
    restarted = make_pruned()
    fit(restarted, x, y, epochs=2, callbacks=[keras.callbacks.BackupAndRestore(backup)])
    assert int(state(restarted)[0]) == 10  # resumed at epoch 1, not from scratch


@pytest.mark.slow
def test_stripped_model_loads_on_another_backend(tmp_path):
    x, y = data()
    pruned = make_pruned()
    fit(pruned, x, y, epochs=2)
    stripped = kp.strip_pruning(pruned)
    path = str(tmp_path / "stripped.keras")
    kp.save_model(stripped, path)
    np.save(tmp_path / "x.npy", x)
    expected = ops.convert_to_numpy(stripped.predict(x, verbose=0))
    other = {"tensorflow": "jax", "jax": "torch", "torch": "tensorflow"}[BACKEND]
    script = (
        "import sys, numpy as np, keras; "
        f"m = keras.saving.load_model({path!r}); "
        f"np.save({str(tmp_path / 'y.npy')!r}, m.predict(np.load({str(tmp_path / 'x.npy')!r}), verbose=0))"
    )
    env = dict(os.environ, KERAS_BACKEND=other, TF_CPP_MIN_LOG_LEVEL="3")
    subprocess.run([sys.executable, "-c", script], env=env, check=True, timeout=120)
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), expected, rtol=1e-5, atol=1e-5)


def test_bad_files_give_clear_errors(tmp_path):
    model = make_pruned()
    good = str(tmp_path / "good.keras")
    kp.save_model(model, good)
    not_keras = tmp_path / "notes.keras"
    not_keras.write_text("hello")
    with pytest.raises(ValueError, match="not a zip archive"):
        kp.load_model(not_keras)
    truncated = tmp_path / "truncated.keras"
    truncated.write_bytes(open(good, "rb").read()[:200])
    with pytest.raises(ValueError, match="not a loadable"):
        kp.load_model(truncated)
    other_zip = tmp_path / "other.keras"
    with zipfile.ZipFile(other_zip, "w") as archive:
        archive.writestr("readme.txt", "x")
    with pytest.raises(ValueError, match="no config.json"):
        kp.load_model(other_zip)
    with pytest.raises(FileNotFoundError):
        kp.load_model(tmp_path / "missing.keras")
    with pytest.raises(ValueError, match=".keras"):
        kp.save_model(model, str(tmp_path / "model.h5"))
    assert sorted(os.listdir(tmp_path)) == sorted(
        ["good.keras", "notes.keras", "truncated.keras", "other.keras"]
    )  # no temp files left


def test_strip_with_nothing_to_strip_is_an_equal_copy():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    stripped = kp.strip_pruning(model)
    assert stripped is not model
    x = np.ones((2, 3), "float32")
    np.testing.assert_allclose(ops.convert_to_numpy(stripped(x)), ops.convert_to_numpy(model(x)))


def test_prune_scope_runs_tfmot_loading_code(tmp_path):
    path = str(tmp_path / "pruned.keras")
    kp.save_model(make_pruned(), path)
    assert keras.saving.get_registered_object("PruneLowMagnitude") is None
    with kp.prune_scope():  # tfmot: with tfmot.sparsity.keras.prune_scope(): load_model(...)
        assert keras.saving.get_registered_object("PruneLowMagnitude") is kp.PruneLowMagnitude
        assert keras.saving.get_registered_object("PolynomialDecay") is kp.PolynomialDecay
        loaded = keras.saving.load_model(path)
    assert len(list(kp.pruned_layers(loaded))) == 2

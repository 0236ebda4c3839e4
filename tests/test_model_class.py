"""A Functional subclass (as KerasHub's backbones and tasks are) comes back as its class from strip_pruning."""

import keras
import numpy as np
import pytest

import keras_prune


@keras.saving.register_keras_serializable("test_model_class")
class Classifier(keras.Model):
    """Builds its graph in __init__ from its own arguments, as a KerasHub task does."""

    def __init__(self, units, **kwargs):
        inputs = keras.Input((6,))
        hidden = keras.layers.Dense(units, activation="relu", name="hidden")(inputs)
        super().__init__(inputs, keras.layers.Dense(3, name="head")(hidden), **kwargs)
        self.units = units

    def get_config(self):
        return {"units": self.units, "name": self.name}

    def probabilities(self, x):
        return keras.ops.softmax(self(x))


class Unrebuildable(Classifier):
    def get_config(self):
        return {"name": self.name}  # without `units`: from_config fails


def _data():
    rng = np.random.default_rng(0)
    return rng.normal(size=(32, 6)).astype("float32"), rng.integers(0, 3, 32)


def _pruned(model):
    pruned = keras_prune.prune_low_magnitude(
        model, keras_prune.ConstantSparsity(0.5, 0, frequency=1)
    )
    pruned.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    pruned.fit(
        *_data(), batch_size=8, epochs=1, verbose=0, callbacks=[keras_prune.UpdatePruningStep()]
    )
    return pruned


def test_strip_gives_back_the_class_with_the_masked_models_predictions(tmp_path):
    x, _ = _data()
    pruned = _pruned(Classifier(8))
    assert type(pruned) is not Classifier  # clone_model made it a plain Functional
    stripped = keras_prune.strip_pruning(pruned)
    assert type(stripped) is Classifier and stripped.units == 8
    kernel = stripped.get_layer("hidden").kernel.numpy()
    assert np.count_nonzero(kernel == 0) == kernel.size // 2
    np.testing.assert_allclose(
        stripped.predict(x, verbose=0), pruned.predict(x, verbose=0), rtol=1e-6, atol=1e-6
    )
    assert stripped.probabilities(x).shape == (32, 3)
    path = str(tmp_path / "stripped.keras")
    stripped.save(path)
    loaded = keras.saving.load_model(path)
    assert type(loaded) is Classifier
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), stripped.predict(x, verbose=0))


def test_strip_of_an_unpruned_subclass_keeps_its_class():
    model = Classifier(4)
    copy = keras_prune.strip_pruning(model)
    assert type(copy) is Classifier and copy is not model
    for a, b in zip(copy.weights, model.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_a_reloaded_pruned_model_strips_to_functional_whose_weights_fit_the_class(tmp_path):
    x, _ = _data()
    path = str(tmp_path / "pruned.keras")
    _pruned(Classifier(8)).save(path)
    stripped = keras_prune.strip_pruning(keras.saving.load_model(path))
    assert type(stripped) is not Classifier
    model = Classifier(8)
    model.set_weights(stripped.get_weights())  # the documented way back
    np.testing.assert_allclose(
        model.predict(x, verbose=0), stripped.predict(x, verbose=0), rtol=1e-6, atol=1e-6
    )


def test_a_class_that_cannot_be_rebuilt_warns_and_strips_to_functional():
    pruned = _pruned(Unrebuildable(8))
    with pytest.warns(UserWarning, match="Unrebuildable could not be re-created"):
        stripped = keras_prune.strip_pruning(pruned)
    assert type(stripped) is not Unrebuildable
    x, _ = _data()
    np.testing.assert_allclose(
        stripped.predict(x, verbose=0), pruned.predict(x, verbose=0), rtol=1e-6, atol=1e-6
    )

import keras
import numpy as np
import pytest
from conftest import small_cnn, small_images
from keras import ops

import keras_prune
from keras_prune import ConstantSparsity, PruneLowMagnitude


def functional_cnn():
    inputs = keras.Input((12, 12, 1))
    x = keras.layers.Conv2D(4, 3, activation="relu")(inputs)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(4, activation="softmax")(x))


@pytest.mark.slow
@pytest.mark.parametrize("make", [small_cnn, functional_cnn])
def test_model_is_wrapped_with_weights_kept(make):
    model = make()
    x, _ = small_images(8)
    expected = model.predict(x, verbose=0)
    pruned = keras_prune.prune_low_magnitude(model)
    assert type(pruned) is type(model) and pruned is not model
    wrapped = [layer for layer in pruned.layers if isinstance(layer, PruneLowMagnitude)]
    prunable = [layer for layer in model.layers if keras_prune.registry.supports(layer)]
    assert [w.layer.name for w in wrapped] == [layer.name for layer in prunable]
    assert not any(
        isinstance(l, PruneLowMagnitude) and not keras_prune.registry.supports(l.layer)
        for l in pruned.layers
    )
    # Masks start at one: the pruned model computes what the original did.
    np.testing.assert_allclose(pruned.predict(x, verbose=0), expected, rtol=1e-6, atol=1e-6)
    # The original model is untouched by training the pruned one.
    before = [w.copy() for w in model.get_weights()]
    pruned.compile("adam", "sparse_categorical_crossentropy")
    pruned.fit(x, np.zeros(8), epochs=1, verbose=0)
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_layer_and_list_of_layers():
    dense = keras.layers.Dense(3)
    wrapped = keras_prune.prune_low_magnitude(dense, ConstantSparsity(0.2, 0))
    assert isinstance(wrapped, PruneLowMagnitude) and wrapped.layer is dense
    assert wrapped.pruning_schedule == ConstantSparsity(0.2, 0)
    layers = keras_prune.prune_low_magnitude([keras.layers.Dense(2), keras.layers.Flatten()])
    assert isinstance(layers[0], PruneLowMagnitude) and isinstance(layers[1], keras.layers.Flatten)
    default = keras_prune.prune_low_magnitude(keras.layers.Dense(2))
    assert default.pruning_schedule == ConstantSparsity(0.5, 0)


@pytest.mark.slow
def test_strip_pruning_exact_zeros_and_identical_predictions(tmp_path):
    x, y = small_images(64)
    pruned = keras_prune.prune_low_magnitude(small_cnn(), ConstantSparsity(0.8, 0, frequency=1))
    pruned.compile("adam", "sparse_categorical_crossentropy")
    pruned.fit(x, y, batch_size=16, epochs=1, verbose=0)
    stripped = keras_prune.strip_pruning(pruned)
    assert not any(isinstance(layer, PruneLowMagnitude) for layer in stripped.layers)
    assert [layer.name for layer in stripped.layers] == [layer.name for layer in small_cnn_names()]
    for wrapper in keras_prune.pruned_layers(pruned):
        ((weight, mask, _),) = wrapper.pruning_vars
        stripped_kernel = stripped.get_layer(wrapper.layer.name).kernel
        np.testing.assert_array_equal(
            ops.convert_to_numpy(stripped_kernel),
            ops.convert_to_numpy(weight) * ops.convert_to_numpy(mask),
        )
    expected = pruned.predict(x, verbose=0)
    np.testing.assert_array_equal(stripped.predict(x, verbose=0), expected)
    path = str(tmp_path / "stripped.keras")
    stripped.save(path)
    # A subprocess without keras_prune imported must load it.
    import subprocess  # noqa: E401
    import sys

    code = f"import keras, sys; m = keras.saving.load_model({path!r}); assert 'keras_prune' not in sys.modules; print(type(m).__name__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "Sequential"
    np.testing.assert_array_equal(keras.saving.load_model(path).predict(x, verbose=0), expected)


def small_cnn_names():
    keras.utils.clear_session()
    return small_cnn().layers


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda: keras_prune.prune_low_magnitude("model"), TypeError, "to_prune"),
        (
            lambda: keras_prune.prune_low_magnitude([keras.layers.Dense(2), 3]),
            TypeError,
            "to_prune",
        ),
        (
            lambda: keras_prune.prune_low_magnitude(
                keras.layers.Dense(2), pruning_schedule="constant"
            ),
            TypeError,
            "pruning_schedule",
        ),
        (
            lambda: keras_prune.prune_low_magnitude(small_cnn(), sparsity_m_by_n=(2, 3)),
            ValueError,
            "sparsity_m_by_n",
        ),
        (lambda: keras_prune.strip_pruning(keras.layers.Dense(2)), TypeError, "model"),
    ],
)
def test_rejects_bad_input(call, error, match):
    with pytest.raises(error, match=match):
        call()


class Scale(keras.layers.Layer):
    def build(self, shape):
        self.scale = self.add_weight(shape=(shape[-1],), initializer="ones")

    def call(self, x):
        return x * self.scale


def test_unknown_layer_with_weights_is_rejected_and_prunable_layer_accepted():
    model = keras.Sequential([keras.Input((4,)), Scale(), keras.layers.Dense(2)])
    with pytest.raises(ValueError, match="Scale.*not supported.*PrunableLayer"):
        keras_prune.prune_low_magnitude(model)

    class PrunableScale(Scale, keras_prune.PrunableLayer):
        def get_prunable_weights(self):
            return [self.scale]

    layer = keras_prune.prune_low_magnitude(PrunableScale(), ConstantSparsity(0.5, 0, frequency=1))
    model = keras.Sequential([keras.Input((4,)), layer])
    model.compile("sgd", "mse")
    model.fit(np.ones((8, 4), "float32"), np.ones((8, 4), "float32"), verbose=0)
    assert keras_prune.sparsity_report(model)[0].sparsity == 0.5

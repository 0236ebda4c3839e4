"""Model forms: shared layers, subclassed and nested models, selection, global pruning.

Each layer type is tested in tests/test_layers.py.
"""

import keras
import numpy as np
import pytest
from keras import ops

import keras_prune as kp


def every_step(sparsity=0.5):
    return kp.ConstantSparsity(sparsity, 0, frequency=1)


def train(model, x, y, batches=3, batch_size=4):
    model.compile("sgd", "mse")
    model.fit(
        x[: batches * batch_size],
        y[: batches * batch_size],
        batch_size=batch_size,
        epochs=1,
        verbose=0,
        shuffle=False,
    )


def mask_zero_fraction(wrapper):
    return [s for _, s in wrapper.mask_sparsity()]


def test_shared_layer_steps_once_per_batch_and_has_one_mask():
    inputs = keras.Input((4,))
    dense = keras.layers.Dense(4)
    model = keras.Model(inputs, dense(dense(inputs)))
    pruned = kp.prune_low_magnitude(model, every_step())
    wrappers = list(kp.pruned_layers(pruned))
    assert len(wrappers) == 1
    x = np.random.RandomState(0).rand(20, 4).astype("float32")
    train(pruned, x, x, batches=5)
    assert (
        int(ops.convert_to_numpy(wrappers[0].pruning_step.value)) == 5
    )  # the first batch is step 1
    assert mask_zero_fraction(wrappers[0]) == [0.5]


class Blocks(keras.Model):
    def __init__(self, units=8, **kwargs):
        super().__init__(**kwargs)
        self.first = keras.layers.Dense(units, activation="relu")
        self.blocks = [keras.layers.Dense(units), keras.layers.Dense(units)]
        self.heads = {"out": keras.layers.Dense(2)}
        self.norm = keras.layers.LayerNormalization()

    def call(self, x, training=None):
        x = self.first(x, training=training)
        for block in self.blocks:
            x = block(x, training=training)
        return self.heads["out"](self.norm(x), training=training)


@pytest.mark.slow
def test_subclassed_model_is_pruned_as_a_new_instance_with_its_weights():
    model = Blocks()
    x = np.random.RandomState(0).rand(12, 4).astype("float32")
    before = ops.convert_to_numpy(model(x))
    skipped = model.blocks[0]
    pruned = kp.prune_low_magnitude(model, every_step(0.75), select=lambda l: l is not skipped)
    assert type(pruned) is Blocks and pruned is not model
    assert isinstance(pruned.first, kp.PruneLowMagnitude)
    assert not isinstance(pruned.blocks[0], kp.PruneLowMagnitude)
    assert isinstance(pruned.blocks[1], kp.PruneLowMagnitude)
    assert isinstance(pruned.heads["out"], kp.PruneLowMagnitude)
    assert isinstance(pruned.norm, keras.layers.LayerNormalization)
    assert not any(isinstance(l, kp.PruneLowMagnitude) for l in model.layers)  # original untouched
    np.testing.assert_allclose(ops.convert_to_numpy(pruned(x)), before, atol=1e-6)
    train(pruned, x, np.zeros((12, 2), "float32"))
    assert [mask_zero_fraction(w) for w in kp.pruned_layers(pruned)] == [[0.75]] * 3
    stripped = kp.strip_pruning(pruned)
    assert type(stripped) is Blocks and not list(kp.pruned_layers(stripped))
    # Built, as the original was: count_params, quantize and export need it.
    assert pruned.built and stripped.built
    assert stripped.count_params() == model.count_params()
    np.testing.assert_allclose(
        ops.convert_to_numpy(stripped(x)), ops.convert_to_numpy(pruned(x)), atol=1e-6
    )


def test_a_subclassed_model_stripped_before_any_call_keeps_its_weights():
    model = Blocks()
    x = np.random.RandomState(0).rand(6, 4).astype("float32")
    before = ops.convert_to_numpy(model(x))
    pruned = kp.prune_low_magnitude(model, every_step(0.75))  # wrappers not called yet
    np.testing.assert_allclose(ops.convert_to_numpy(kp.strip_pruning(pruned)(x)), before, atol=1e-6)


def test_subclassed_model_without_training_argument_is_refused():
    class NoTraining(keras.Model):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.dense = keras.layers.Dense(2)

        def call(self, x):
            return self.dense(x)

    model = NoTraining()
    model(np.ones((1, 3)))
    with pytest.raises(ValueError, match="training"):
        kp.prune_low_magnitude(model)


def test_nested_model_is_pruned_inside():
    inner = keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(6), keras.layers.Dense(6)], name="inner"
    )
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(2)(inner(inputs)))
    x = np.random.RandomState(1).rand(12, 4).astype("float32")
    before = ops.convert_to_numpy(model(x))
    pruned = kp.prune_low_magnitude(model, every_step())
    assert len(list(kp.pruned_layers(pruned))) == 3
    np.testing.assert_allclose(ops.convert_to_numpy(pruned(x)), before, atol=1e-6)
    train(pruned, x, np.zeros((12, 2), "float32"))
    assert all(mask_zero_fraction(w) == [0.5] for w in kp.pruned_layers(pruned))
    stripped = kp.strip_pruning(pruned)
    assert not list(kp.pruned_layers(stripped))
    np.testing.assert_allclose(
        ops.convert_to_numpy(stripped(x)), ops.convert_to_numpy(pruned(x)), atol=1e-6
    )


@pytest.mark.parametrize("how", ["instance", "name", "class", "predicate"])
def test_select(how):
    model = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(4, 3, name="conv"),
            keras.layers.Flatten(),
            keras.layers.Dense(3, name="head"),
        ]
    )
    select = {
        "instance": model.layers[2],
        "name": "head",
        "class": keras.layers.Dense,
        "predicate": lambda layer: layer.name.startswith("he"),
    }[how]
    pruned = kp.prune_low_magnitude(model, select=[select])
    assert [w.layer.name for w in kp.pruned_layers(pruned)] == ["head"]


def test_select_of_a_missing_layer_raises():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    with pytest.raises(ValueError, match="not in the model"):
        kp.prune_low_magnitude(model, select="nope")
    with pytest.raises(TypeError, match="select"):
        kp.prune_low_magnitude(model, select=3)


def test_global_pruning_keeps_exact_k_with_one_threshold():
    rng = np.random.RandomState(0)
    model = keras.Sequential([keras.Input((10,)), keras.layers.Dense(20), keras.layers.Dense(5)])
    model.layers[0].kernel.assign(rng.randn(10, 20).astype("float32") * 0.1)  # small weights
    model.layers[1].kernel.assign(rng.randn(20, 5).astype("float32") * 10.0)  # large weights
    pruned = kp.prune_low_magnitude(model, every_step(0.8), sparsity_distribution="global")
    model_weights = [w.kernel for w in model.layers]
    # One training batch with lr=0 prunes without moving the weights.
    pruned.compile(keras.optimizers.SGD(0.0), "mse")
    pruned.fit(
        rng.rand(4, 10), rng.rand(4, 5), batch_size=4, verbose=0, callbacks=[kp.UpdatePruningStep()]
    )
    wrappers = list(kp.pruned_layers(pruned))
    masks = [ops.convert_to_numpy(m.value) for w in wrappers for _, m, _ in w.pruning_vars]
    kept = sum(int(m.sum()) for m in masks)
    assert kept == round(300 * 0.2)
    values = np.concatenate([np.abs(ops.convert_to_numpy(w.value)).ravel() for w in model_weights])
    expected = np.sort(values)[-kept:]
    got = np.concatenate(
        [
            np.abs(ops.convert_to_numpy(w.value)).ravel()[m.ravel() > 0]
            for w, m in zip(model_weights, masks)
        ]
    )
    np.testing.assert_allclose(np.sort(got), expected)
    assert masks[1].mean() > masks[0].mean()  # the large layer keeps more
    thresholds = {
        float(ops.convert_to_numpy(t.value)) for w in wrappers for _, _, t in w.pruning_vars
    }
    assert len(thresholds) == 1


def test_pruning_a_pruned_layer_raises():
    wrapper = kp.prune_low_magnitude(keras.layers.Dense(2))
    with pytest.raises(ValueError, match="already pruned"):
        kp.PruneLowMagnitude(wrapper)


def test_functional_model_with_ops_on_keras_tensors_prunes_and_strips():
    """`x + y` on Keras tensors is an op, not a layer (MobileNetV3's hard swish, residuals)."""
    inputs = keras.Input((6,))
    hidden = keras.layers.Dense(6, name="hidden")(inputs)
    mixed = hidden * keras.ops.relu(hidden + 3.0) + inputs
    model = keras.Model(inputs, keras.layers.Dense(2, name="head")(mixed))
    x = np.random.default_rng(0).random((8, 6), dtype=np.float32)
    pruned = kp.prune_low_magnitude(model, every_step())
    assert sorted(w.layer.name for w in kp.pruned_layers(pruned)) == ["head", "hidden"]
    np.testing.assert_allclose(pruned.predict(x, verbose=0), model.predict(x, verbose=0), 1e-6)
    train(pruned, x, np.zeros((8, 2), "float32"))
    stripped = kp.strip_pruning(pruned)
    np.testing.assert_allclose(
        stripped.predict(x, verbose=0), pruned.predict(x, verbose=0), rtol=1e-6, atol=1e-6
    )

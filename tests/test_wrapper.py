import re
import warnings

import keras
import numpy as np
import pytest
from conftest import small_cnn, small_images
from keras import ops

import keras_prune
from keras_prune import ConstantSparsity, PolynomialDecay, PruneLowMagnitude


def value(x):
    return ops.convert_to_numpy(x)


def dense_model(schedule, units=32):
    inputs = keras.Input((6,))
    hidden = keras_prune.prune_low_magnitude(
        keras.layers.Dense(units, activation="relu"), schedule
    )(inputs)
    outputs = keras.layers.Dense(1)(hidden)
    return keras.Model(inputs, outputs)


def regression_data(n=64):
    rng = np.random.RandomState(0)
    x = rng.randn(n, 6).astype("float32")
    return x, x @ rng.randn(6, 1).astype("float32")


@pytest.mark.slow
def test_step_advances_once_per_batch_and_masks_follow_schedule():
    # Steps are 1, 2, ... as in tfmot; prune at steps 2, 4, 6 to 0.25, 0.5, 0.75.
    schedule = PolynomialDecay(0.0, 0.75, begin_step=0, end_step=6, power=1, frequency=2)
    model = dense_model(schedule)
    model.compile("adam", "mse")
    x, y = regression_data()
    wrapper = next(keras_prune.pruned_layers(model))
    seen = []
    for _ in range(7):
        model.fit(x[:16], y[:16], batch_size=16, epochs=1, verbose=0)
        mask = value(wrapper.pruning_vars[0][1])
        seen.append((int(value(wrapper.pruning_step)), float(1 - mask.mean())))
    assert seen == [(1, 0.0), (2, 0.25), (3, 0.25), (4, 0.5), (5, 0.5), (6, 0.75), (7, 0.75)]


@pytest.mark.slow
def test_pruned_weights_get_zero_gradient_and_inference_uses_masked_weights():
    model = dense_model(ConstantSparsity(0.5, begin_step=0, frequency=1))
    model.compile(keras.optimizers.SGD(0.1), "mse")
    x, y = regression_data()
    model.fit(x[:16], y[:16], batch_size=16, epochs=1, verbose=0)  # step 1: mask set
    wrapper = next(keras_prune.pruned_layers(model))
    ((kernel, mask, _),) = wrapper.pruning_vars
    before = value(kernel)
    # Freeze the mask (steps 2.. do not prune) and train with plain SGD: the
    # kernel entries under a zero mask must not move at all.
    wrapper.pruning_schedule = ConstantSparsity(0.5, begin_step=10**6)
    model.compile(keras.optimizers.SGD(0.1), "mse")
    model.fit(x, y, batch_size=16, epochs=2, verbose=0)
    after, m = value(kernel), value(mask)
    np.testing.assert_array_equal(after[m == 0], before[m == 0])
    assert np.abs(after[m == 1] - before[m == 1]).max() > 0
    # Inference runs on weight * mask: zeroing the pruned entries changes nothing.
    expected = model.predict(x, verbose=0)
    kernel.assign(after * m)
    np.testing.assert_array_equal(model.predict(x, verbose=0), expected)


@pytest.mark.slow
def test_fit_reaches_exact_target_sparsity_on_seed_cnn():
    x, y = small_images(96)
    model = small_cnn()
    schedule = ConstantSparsity(0.875, begin_step=2, frequency=100)
    pruned = keras_prune.prune_low_magnitude(model, pruning_schedule=schedule)
    pruned.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    history = pruned.fit(
        x, y, batch_size=32, epochs=3, verbose=0, callbacks=[keras_prune.UpdatePruningStep()]
    )
    report = keras_prune.sparsity_report(pruned)
    assert len(report) == 4
    for row in report:
        assert row.zeros == row.size - max(round(row.size * 0.125), 1), row
    assert np.isfinite(history.history["loss"]).all()


class _CountingSchedule(keras_prune.PruningSchedule):
    """Prunes to 0.5 at every step and counts its evaluations."""

    def __init__(self):
        self.calls = 0
        self.inner = ConstantSparsity(0.5, begin_step=0, frequency=1)

    def __call__(self, step):
        self.calls += 1
        return self.inner(step)

    def get_config(self):
        return {}


def test_eager_steps_evaluate_a_shared_schedule_once_per_batch():
    shared, own = _CountingSchedule(), _CountingSchedule()
    inputs = keras.Input((6,))
    hidden = inputs
    for schedule in (shared, shared, own):
        hidden = keras_prune.prune_low_magnitude(keras.layers.Dense(8), schedule)(hidden)
    model = keras.Model(inputs, keras.layers.Dense(1)(hidden))
    model.compile("sgd", "mse", run_eagerly=True)  # concrete steps on every backend
    x, y = regression_data(32)
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)  # 4 batches
    assert (shared.calls, own.calls) == (4, 4)
    for wrapper in keras_prune.pruned_layers(model):
        assert int(value(wrapper.pruning_step)) == 4
        assert value(wrapper.pruning_vars[0][1]).mean() == 0.5


def test_training_false_does_not_advance_or_prune():
    model = dense_model(ConstantSparsity(0.5, begin_step=0, frequency=1))
    x, _ = regression_data()
    model(x, training=False)
    model.predict(x, verbose=0)
    wrapper = next(keras_prune.pruned_layers(model))
    assert int(value(wrapper.pruning_step)) == 0
    assert value(wrapper.pruning_vars[0][1]).min() == 1


def test_config_round_trip():
    wrapper = PruneLowMagnitude(
        keras.layers.Dense(8),
        PolynomialDecay(0.1, 0.6, 0, 100, frequency=5),
        block_size=(2, 2),
        block_pooling_type="max",
    )
    config = wrapper.get_config()
    restored = PruneLowMagnitude.from_config(config)
    assert restored.pruning_schedule == wrapper.pruning_schedule
    assert restored.block_size == (2, 2) and restored.block_pooling_type == "MAX"
    assert restored.get_config() == config


@pytest.mark.parametrize(
    "make, error, match",
    [
        (lambda: PruneLowMagnitude(keras.layers.MaxPooling2D()), ValueError, "no prunable weights"),
        (lambda: PruneLowMagnitude("dense"), TypeError, "layer"),
        (
            lambda: PruneLowMagnitude(keras.layers.Dense(2), pruning_schedule=0.5),
            TypeError,
            "pruning_schedule",
        ),
        (
            lambda: PruneLowMagnitude(PruneLowMagnitude(keras.layers.Dense(2))),
            ValueError,
            "already pruned",
        ),
        (
            lambda: PruneLowMagnitude(keras.layers.Dense(2), block_pooling_type="SUM"),
            ValueError,
            "block_pooling_type",
        ),
    ],
)
def test_rejects_bad_arguments(make, error, match):
    with pytest.raises(error, match=match):
        make()


def test_block_size_on_conv_kernel_is_rejected_at_build():
    with pytest.raises(ValueError, match="block_size.*2-D"):
        keras_prune.prune_low_magnitude(small_cnn(), block_size=(2, 2))


def test_a_pruned_weights_regularizer_sees_it_as_the_layer_does(tmp_path):
    # Keras adds the regularizer's loss outside the layer's call; a pruned
    # weight must count as the 0 the layer reads, as tfmot's zeroed one does.
    l2 = keras.regularizers.L2(1.0)
    model = keras.Sequential(
        [
            keras.Input((4,)),
            keras.layers.Dense(8, kernel_regularizer=l2, bias_regularizer=l2, name="d"),
            keras.layers.Dense(1, name="out"),
        ]
    )
    model.get_layer("d").bias.assign(np.full(8, 0.5, "float32"))
    pruned = keras_prune.prune_low_magnitude(model, ConstantSparsity(0.75, 0, frequency=1))
    pruned.compile(keras.optimizers.SGD(0.0), "mse")  # the weights stay as they are
    x = np.random.RandomState(0).normal(size=(8, 4)).astype("float32")
    y = np.zeros((8, 1), "float32")
    history = pruned.fit(x, y, batch_size=8, verbose=0, callbacks=[keras_prune.UpdatePruningStep()])
    wrapper = pruned.layers[0]
    kernel, mask, _ = (ops.convert_to_numpy(v) for v in wrapper.pruning_vars[0])
    assert mask.mean() == 0.25
    expected = float(((kernel * mask) ** 2).sum()) + 8 * 0.25  # the bias is not pruned
    mse = float(np.mean(ops.convert_to_numpy(pruned(x)) ** 2))
    assert history.history["loss"][0] == pytest.approx(mse + expected, rel=1e-5)

    def penalty(m):
        return sum(float(ops.convert_to_numpy(loss)) for loss in m.losses)

    assert penalty(pruned) == pytest.approx(expected, rel=1e-5)
    pruned.save(tmp_path / "pruned.keras")
    assert penalty(keras.saving.load_model(tmp_path / "pruned.keras")) == pytest.approx(expected)
    stripped = keras_prune.strip_pruning(pruned)
    assert stripped.get_layer("d").get_config()["kernel_regularizer"]["config"] == {"l2": 1.0}
    assert penalty(stripped) == pytest.approx(expected, rel=1e-5)


def _masked_sequence_model(mask_zero):
    inputs = keras.Input((6,), dtype="int32")
    x = keras.layers.Embedding(20, 8, mask_zero=mask_zero, name="embed")(inputs)
    x = keras.layers.LSTM(4, return_sequences=True, name="lstm")(x)
    return keras.Model(inputs, keras.layers.Dense(3, name="out")(x))


def _destroys_mask(caught, prefix=""):
    """The layers that Keras warned would destroy a mask, less `prefix`."""
    found = (re.match(r"Layer '(\w+)' \(of type", str(w.message)) for w in caught)
    return {m.group(1).removeprefix(prefix) for m in found if m}


def test_a_padding_mask_passes_through_wrapped_layers_as_through_the_layers():
    keras.utils.set_random_seed(0)
    ids = np.random.default_rng(0).integers(1, 20, (4, 6)).astype("int32")
    ids[:, 3:] = 0  # padding
    labels = np.zeros((4, 6), "int32")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = _masked_sequence_model(mask_zero=True)
        expected = model.predict(ids, verbose=0)
    by_keras = _destroys_mask(caught)  # none on Keras 3.15; keras-nightly warns for the LSTM
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pruned = keras_prune.prune_low_magnitude(model, ConstantSparsity(0.5, 1000))
        got = pruned.predict(ids, verbose=0)
    assert _destroys_mask(caught, "prune_low_magnitude_") <= by_keras  # no more than the layers
    np.testing.assert_allclose(got, expected, atol=1e-6)
    unmasked = _masked_sequence_model(mask_zero=False)
    unmasked.set_weights(model.get_weights())
    losses = []
    for m in (model, pruned, unmasked):
        m.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        losses.append(m.evaluate(ids, labels, verbose=0))
    assert losses[1] == pytest.approx(losses[0], rel=1e-6)  # the loss skips the padding
    assert losses[2] != pytest.approx(losses[0], rel=1e-3)  # as it does only with the mask


@keras.saving.register_keras_serializable("test_wrapper")
class _Block(keras.layers.Layer):
    """A custom layer whose Dense sits one level down, as in a transformer block."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.inner = keras.layers.Dense(8, name="inner")

    def call(self, x):
        return self.inner(x) + x


def test_model_quantize_leaves_pruned_layers_in_float_and_says_why():
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((8,)), _Block(name="block"), keras.layers.Dense(4, name="head")]
    )
    pruned = keras_prune.prune_low_magnitude(model, ConstantSparsity(0.5, 0, frequency=1))
    pruned.compile("adam", "mse")
    x, y = np.random.default_rng(0).random((16, 8), dtype=np.float32), np.zeros((16, 4))
    pruned.fit(x, y, verbose=0, callbacks=[keras_prune.UpdatePruningStep()])
    expected = pruned.predict(x, verbose=0)
    with pytest.warns(UserWarning) as caught:
        pruned.quantize("int8")
    messages = {str(w.message) for w in caught if "stays in float" in str(w.message)}
    major_minor = tuple(int(part) for part in keras.version().split(".")[:2])
    if major_minor < (3, 16):  # Keras 3.16 sums up the layers it skipped in one warning
        assert messages == {
            f"`{name}` is pruned (inside `prune_low_magnitude_{wrapped}`) and stays in float: "
            "quantizing it would drop its pruning masks. Quantize the model after "
            "`keras_prune.strip_pruning(model)`."
            for name, wrapped in (("inner", "block"), ("head", "head"))
        }
    assert [w.path for w in pruned.weights if "scale" in w.path] == []
    np.testing.assert_array_equal(pruned.predict(x, verbose=0), expected)
    stripped = keras_prune.strip_pruning(pruned)
    stripped.quantize("int8")  # after strip_pruning, Keras quantizes every kernel
    assert {w.path.split("/")[-2] for w in stripped.weights if "kernel_scale" in w.path} == {
        "inner",
        "head",
    }
    np.testing.assert_allclose(stripped.predict(x, verbose=0), expected, atol=0.05)


def test_pruning_a_pruned_model_on_a_new_schedule_warns_that_its_layers_keep_theirs():
    model = dense_model(ConstantSparsity(0.75, 0))
    pruned = keras_prune.prune_low_magnitude(model, ConstantSparsity(0.75, 0))
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        keras_prune.prune_low_magnitude(pruned, ConstantSparsity(0.75, 0))  # the same: no word
    with pytest.warns(
        UserWarning,
        match=r"layers pruned before \(`prune_low_magnitude_.*"
        r"keep their own schedule \(ConstantSparsity\(target_sparsity=0.75",
    ):
        again = keras_prune.prune_low_magnitude(pruned, ConstantSparsity(0.5, 0))
    assert {w.pruning_schedule.target_sparsity for w in keras_prune.pruned_layers(again)} == {0.75}

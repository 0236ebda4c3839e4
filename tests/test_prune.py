import os
import traceback

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


def test_unknown_layer_is_left_dense_with_one_warning_or_refused_when_strict():
    model = keras.Sequential([keras.Input((4,)), Scale(name="scale"), keras.layers.Dense(2)])
    with pytest.warns(UserWarning, match="left these weights dense.*'scale' \\(Scale\\)") as record:
        pruned = keras_prune.prune_low_magnitude(model, ConstantSparsity(0.5, 0, frequency=1))
    assert sum("left these weights dense" in str(w.message) for w in record) == 1
    assert [type(layer).__name__ for layer in pruned.layers] == ["Scale", "PruneLowMagnitude"]
    pruned.compile("sgd", "mse")
    pruned.fit(
        np.ones((8, 4), "float32"),
        np.ones((8, 2), "float32"),
        verbose=0,
        callbacks=[keras_prune.UpdatePruningStep()],
    )
    report = keras_prune.sparsity_report(pruned)
    assert [(row.layer, row.sparsity) for row in report] == [("prune_low_magnitude_dense", 0.5)]
    assert [(u.layer, u.class_name, u.size) for u in report.unpruned] == [("scale", "Scale", 4)]
    assert "not pruned: scale (Scale, 4 weights)" in str(report)
    assert np.all(ops.convert_to_numpy(pruned.layers[0].scale) != 0)

    with pytest.raises(ValueError, match="cannot prune 'scale' \\(Scale\\).*strict=False"):
        keras_prune.prune_low_magnitude(model, strict=True)
    for select in ("scale", Scale, ["dense", model.layers[0]]):  # picked explicitly: an error
        with pytest.raises(ValueError, match="`select` picks layer 'scale' \\(Scale\\)"):
            keras_prune.prune_low_magnitude(model, select=select)
    with pytest.raises(TypeError, match="strict"):
        keras_prune.prune_low_magnitude(model, strict="yes")


def test_a_layer_with_lora_is_left_dense_and_reported_or_refused_when_strict():
    # Its kernel is read as frozen kernel + a @ b: no mask keeps that sparse.
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(8, name="lora"), keras.layers.Dense(2, name="dense")]
    )
    model.get_layer("lora").enable_lora(2)
    with pytest.warns(UserWarning, match="cannot prune 'lora' \\(Dense\\): LoRA is enabled"):
        pruned = keras_prune.prune_low_magnitude(model, ConstantSparsity(0.5, 0, frequency=1))
    assert [type(layer).__name__ for layer in pruned.layers] == ["Dense", "PruneLowMagnitude"]
    x = np.random.default_rng(0).normal(size=(16, 4)).astype("float32")
    pruned.compile("sgd", "mse")
    pruned.fit(x, np.ones((16, 2), "float32"), batch_size=8, verbose=0,
               callbacks=[keras_prune.UpdatePruningStep()])  # fmt: skip
    report = keras_prune.sparsity_report(pruned)
    assert [(row.layer, row.sparsity) for row in report] == [("prune_low_magnitude_dense", 0.5)]
    (left,) = report.unpruned
    assert (left.layer, left.class_name, left.size) == ("lora", "Dense", 32 + 8 + 8 + 16)
    assert "not pruned: lora (Dense, 64 weights): LoRA is enabled" in str(report)
    kernel = ops.convert_to_numpy(pruned.get_layer("lora").kernel)  # what the layer reads
    assert np.count_nonzero(kernel) == kernel.size
    stripped = keras_prune.strip_pruning(pruned)
    np.testing.assert_allclose(
        ops.convert_to_numpy(stripped(x)), ops.convert_to_numpy(pruned(x)), rtol=1e-6
    )

    with pytest.raises(ValueError, match="cannot prune 'lora' \\(Dense\\): LoRA.*strict=False"):
        keras_prune.prune_low_magnitude(model, strict=True)
    with pytest.raises(ValueError, match="picks layer 'lora' \\(Dense\\), which keras_prune "
                       "cannot prune: LoRA is enabled"):  # fmt: skip
        keras_prune.prune_low_magnitude(model, select="lora")
    # Alone, or as an attention layer's projection: the same reason, not "unknown".
    attention = keras.layers.MultiHeadAttention(2, 4, name="attention")
    attention(np.zeros((1, 3, 8), "float32"), np.zeros((1, 3, 8), "float32"))
    attention.query_dense.enable_lora(2)
    for layer in (model.get_layer("lora"), attention):
        with pytest.raises(ValueError, match=f"'{layer.name}' \\(.*\\) cannot be pruned: LoRA"):
            keras_prune.prune_low_magnitude(layer)


@pytest.mark.parametrize("mode", ["int8", "float8"])
def test_a_quantized_model_is_refused_naming_its_layers(mode):
    # int8 was pruned in its integer units, float8 failed deep in Keras's set_weights.
    model = keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(8, name="hidden"), keras.layers.Dense(2, name="out")]
    )
    model.quantize(mode)
    expected = f"quantized layers: 'hidden' \\({mode}\\), 'out' \\({mode}\\)\\. .*model.quantize"
    with pytest.raises(ValueError, match=expected):
        keras_prune.prune_low_magnitude(model)
    with pytest.raises(ValueError, match=f"quantized layers: 'hidden' \\({mode}\\)\\."):
        keras_prune.prune_low_magnitude(model.layers[:1])


def test_prunable_layer_accepted():
    class PrunableScale(Scale, keras_prune.PrunableLayer):
        def get_prunable_weights(self):
            return [self.scale]

    layer = keras_prune.prune_low_magnitude(PrunableScale(), ConstantSparsity(0.5, 0, frequency=1))
    model = keras.Sequential([keras.Input((4,)), layer])
    model.compile("sgd", "mse")
    model.fit(np.ones((8, 4), "float32"), np.ones((8, 4), "float32"), verbose=0)
    assert keras_prune.sparsity_report(model)[0].sparsity == 0.5


@keras.saving.register_keras_serializable(package="test_prune")
class TiedBlock(keras.layers.Layer):
    """A custom layer as KerasHub writes them: sublayers made in `build`, some read directly."""

    def __init__(self, vocabulary=12, width=8, **kwargs):
        super().__init__(**kwargs)
        self.vocabulary, self.width = vocabulary, width

    def build(self, shape):
        self.embed = keras.layers.Embedding(self.vocabulary, self.width, name="embed")
        self.embed.build(shape)
        self.up = keras.layers.Dense(2 * self.width, activation="relu", name="up")
        self.up.build((None, self.width))
        self.down = keras.layers.Dense(self.width, use_bias=False, name="down")
        self.down.build((None, 2 * self.width))
        self.gain = self.add_weight(name="gain", shape=(self.width,), initializer="ones")

    def call(self, tokens):
        h = self.up(self.embed(tokens))
        h = ops.matmul(h, self.down.kernel) * self.gain  # the kernel read directly
        return ops.matmul(h, ops.transpose(self.embed.embeddings))  # tied output embedding

    def get_config(self):
        return {**super().get_config(), "vocabulary": self.vocabulary, "width": self.width}


def test_custom_layer_is_pruned_inside_and_masks_hold_on_every_read(tmp_path):
    tokens = keras.Input((5,), dtype="int32")
    model = keras.Model(tokens, TiedBlock(name="block")(tokens))
    x = np.random.default_rng(0).integers(0, 12, (16, 5)).astype("int32")
    y = np.random.default_rng(1).normal(size=(16, 5, 12)).astype("float32")
    with pytest.warns(UserWarning, match="'block' \\(TiedBlock\\)"):  # its own `gain`
        pruned = keras_prune.prune_low_magnitude(model, ConstantSparsity(0.5, 0, frequency=1))
    pruned.compile("adam", "mse")
    pruned.fit(x, y, batch_size=8, epochs=2, verbose=0, callbacks=[keras_prune.UpdatePruningStep()])

    wrapper = pruned.layers[1]
    report = keras_prune.sparsity_report(pruned)
    assert [(row.weight, row.sparsity) for row in report] == [
        ("embed/embeddings", 0.5),
        ("up/kernel", 0.5),
        ("down/kernel", 0.5),
    ]
    assert [u.class_name for u in report.unpruned] == ["TiedBlock"]
    # An independent forward pass in numpy on weight * mask, every read masked.
    block = wrapper.layer
    value = {id(w): ops.convert_to_numpy(w.value * m.value) for w, m, _ in wrapper.pruning_vars}
    embed = value[id(block.embed.embeddings)]
    up = np.maximum(embed[x] @ value[id(block.up.kernel)] + ops.convert_to_numpy(block.up.bias), 0)
    expected = (up @ value[id(block.down.kernel)] * ops.convert_to_numpy(block.gain)) @ embed.T
    np.testing.assert_allclose(pruned.predict(x, verbose=0), expected, rtol=1e-4, atol=1e-5)
    stripped = keras_prune.strip_pruning(pruned)
    np.testing.assert_allclose(stripped.predict(x, verbose=0), expected, rtol=1e-4, atol=1e-5)

    pruned.save(tmp_path / "pruned.keras")  # resumes with the same masks
    loaded = keras.saving.load_model(tmp_path / "pruned.keras")
    np.testing.assert_allclose(loaded.predict(x, verbose=0), expected, rtol=1e-4, atol=1e-5)


@keras.saving.register_keras_serializable(package="test_prune")
class EagerBlock(keras.layers.Layer):
    """A custom layer as keras.io's examples write them: sublayers made in
    `__init__`, no `build`, so that only the layer's first call builds them."""

    def __init__(self, vocabulary=12, width=8, **kwargs):
        super().__init__(**kwargs)
        self.vocabulary, self.width = vocabulary, width
        self.embed = keras.layers.Embedding(vocabulary, width, name="embed")
        self.dense = keras.layers.Dense(width, activation="relu", name="dense")

    def call(self, tokens):
        return self.dense(self.embed(tokens))

    def get_config(self):
        return {**super().get_config(), "vocabulary": self.vocabulary, "width": self.width}


def test_custom_layer_without_build_is_pruned_stripped_saved_and_resumed(tmp_path):
    class Unregistered(EagerBlock):  # strip_pruning copies it without the registry
        pass

    x = np.random.default_rng(0).integers(0, 12, (16, 5)).astype("int32")
    y = np.random.default_rng(1).normal(size=(16, 5, 8)).astype("float32")
    for block in (EagerBlock(name="block"), Unregistered(name="block")):
        tokens = keras.Input((5,), dtype="int32")
        model = keras.Model(tokens, block(tokens))
        pruned = keras_prune.prune_low_magnitude(model, ConstantSparsity(0.5, 0, frequency=1))
        pruned.compile("adam", "mse")
        pruned.fit(x, y, batch_size=8, verbose=0, callbacks=[keras_prune.UpdatePruningStep()])
        report = keras_prune.sparsity_report(pruned)
        assert [(row.weight, row.sparsity) for row in report] == [
            ("embed/embeddings", 0.5),
            ("dense/kernel", 0.5),
        ]
        # An independent forward pass in numpy on weight * mask.
        wrapper = pruned.layers[1]
        value = [ops.convert_to_numpy(w.value * m.value) for w, m, _ in wrapper.pruning_vars]
        bias = ops.convert_to_numpy(wrapper.layer.dense.bias)
        expected = np.maximum(value[0][x] @ value[1] + bias, 0)
        np.testing.assert_allclose(pruned.predict(x, verbose=0), expected, rtol=1e-5, atol=1e-6)
        stripped = keras_prune.strip_pruning(pruned)
        np.testing.assert_allclose(stripped.predict(x, verbose=0), expected, rtol=1e-5, atol=1e-6)

    pruned.layers[1].layer.__class__ = EagerBlock  # registered, so that a file can name it
    pruned.save(tmp_path / "pruned.keras")
    loaded = keras.saving.load_model(tmp_path / "pruned.keras")  # built by its graph's call
    np.testing.assert_allclose(loaded.predict(x, verbose=0), expected, rtol=1e-5, atol=1e-6)
    loaded.fit(x, y, batch_size=8, verbose=0, callbacks=[keras_prune.UpdatePruningStep()])
    assert int(ops.convert_to_numpy(loaded.layers[1].pruning_step.value)) == 4


def test_a_frozen_base_model_is_pruned_stays_frozen_and_can_be_unfrozen(tmp_path):
    # Transfer learning: a frozen base, a new head. Pruning still zeros the
    # base's smallest weights (the masks update in training, as tfmot's do)
    # and leaves its other weights as they were; the base stays frozen
    # through pruning, saving and stripping, and unfreezes as any base does.
    inputs = keras.Input((12, 12, 1))
    hidden = keras.layers.Conv2D(4, 3, activation="relu", name="conv")(inputs)
    base = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(hidden), name="base")
    base.trainable = False
    model = keras.Sequential([keras.Input((12, 12, 1)), base, keras.layers.Dense(4, name="head")])
    kernel = ops.convert_to_numpy(base.get_layer("conv").kernel)
    schedule = ConstantSparsity(0.5, 0, frequency=1)
    pruned = keras_prune.prune_low_magnitude(model, schedule)
    assert not pruned.get_layer("base").trainable
    trained = [w.path.split("/")[-2:] for w in pruned.trainable_weights]
    assert trained == [["head", "kernel"], ["head", "bias"]]
    x, y = small_images(8)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    pruned.compile("sgd", loss)
    callbacks = [keras_prune.UpdatePruningStep()]
    pruned.fit(x, y, batch_size=4, epochs=1, verbose=0, callbacks=callbacks)
    pruned.save(tmp_path / "pruned.keras")
    loaded = keras.saving.load_model(tmp_path / "pruned.keras")
    stripped = keras_prune.strip_pruning(loaded)
    assert not loaded.get_layer("base").trainable and not stripped.get_layer("base").trainable
    after = ops.convert_to_numpy(stripped.get_layer("base").get_layer("conv").kernel)
    kept = np.abs(kernel).ravel() >= np.sort(np.abs(kernel).ravel())[kernel.size // 2]
    np.testing.assert_array_equal(after.ravel(), np.where(kept, kernel.ravel(), 0.0))

    loaded.get_layer("base").trainable = True
    assert len(loaded.trainable_weights) == 4
    loaded.compile("sgd", loss)
    loaded.fit(x, y, batch_size=4, epochs=1, verbose=0, callbacks=callbacks)
    tuned = ops.convert_to_numpy(
        keras_prune.strip_pruning(loaded).get_layer("base").get_layer("conv").kernel
    )
    assert not np.array_equal(tuned, after) and np.array_equal(tuned == 0, after == 0)


def test_block_and_m_by_n_shapes_are_checked_on_the_model_before_any_copy():
    model = keras.Sequential(
        [
            keras.Input((6, 6, 3)),
            keras.layers.Conv2D(4, 3, name="conv"),
            keras.layers.Flatten(),
            keras.layers.Dense(8, name="dense"),
        ]
    )
    with pytest.raises(
        ValueError, match=r"needs a 2-D weight, but conv/kernel.*`select=`"
    ) as raised:
        keras_prune.prune_low_magnitude(model, block_size=(1, 4))
    # Raised by keras_prune before copying, not from inside keras.models.clone_model.
    frames = [frame.filename for frame in traceback.extract_tb(raised.tb)]
    assert not any(f"{os.sep}keras{os.sep}src{os.sep}" in name for name in frames)
    pruned = keras_prune.prune_low_magnitude(model, block_size=(1, 4), select="dense")
    assert [w.layer.name for w in keras_prune.pruned_layers(pruned)] == ["dense"]
    with pytest.raises(
        ValueError, match=r"\(2, 4\) groups .* conv/kernel has shape \(3, 3, 3, 4\)"
    ):
        keras_prune.prune_low_magnitude(model, sparsity_m_by_n=(2, 4), select="conv")

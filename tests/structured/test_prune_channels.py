"""Tests for keras_prune.prune_channels: channels removed while `fit` trains, then `shrink`."""

from __future__ import annotations

import sys
import warnings

import keras
import numpy as np
import pytest
from conftest import image_twins, small_cnn, small_encoder, small_images

import keras_prune
from keras_prune import ChannelMask, NormalizationMask, prune_channels, shrink

L = keras.layers
pytestmark = pytest.mark.slow  # every test trains


def _numpy(x):
    return keras.ops.convert_to_numpy(x)


def _masks(model):
    """`{source layer: mask}` of the ChannelMask and HeadMask layers."""
    return {
        layer.source: _numpy(layer.mask) for layer in model.layers if isinstance(layer, ChannelMask)
    }


def _assert_same_predictions(small, masked, x, atol=1e-6):
    """The shrunk model predicts what the masked one does (1e-4 relative)."""
    expected = _numpy(masked(x, training=False))
    np.testing.assert_allclose(_numpy(small(x, training=False)), expected, rtol=1e-4, atol=atol)


def _top(kernel, count):
    """The `count` output channels of `kernel` with the largest L2 norm, by a full sort."""
    flat = _numpy(kernel).reshape(-1, kernel.shape[-1]).astype("float64")
    return np.sort(np.argsort(-(flat**2).sum(axis=0), kind="stable")[:count])


def _se_residual_model():
    x = keras.Input((8, 8, 3))
    a = L.Conv2D(8, 1, name="a")(x)
    b = L.BatchNormalization(name="bn")(L.Conv2D(8, 3, padding="same", name="b")(x))
    s = L.Activation("relu")(L.Add()([a, b]))
    d = L.Conv2D(8, 1, activation="relu", name="d")(s)
    cat = L.Concatenate()([s, d])
    se = L.Conv2D(4, 1, activation="relu", name="squeeze")(
        L.GlobalAveragePooling2D(keepdims=True)(cat)
    )
    se = L.Conv2D(16, 1, activation="sigmoid", name="excite")(se)
    h = L.Multiply()([cat, se])
    h = L.DepthwiseConv2D(3, padding="same", name="dw")(h)
    y = L.Dense(4, activation="softmax", name="out")(L.GlobalAveragePooling2D()(L.ReLU()(h)))
    return keras.Model(x, y)


def test_the_masks_keep_the_largest_channels_and_shrink_gives_the_masked_predictions():
    x, y = small_images(64)
    model = small_cnn()
    masked = prune_channels(model, keras_prune.ConstantSparsity(0.5, 0, frequency=1))
    masked.compile(keras.optimizers.SGD(0.0), "sparse_categorical_crossentropy")  # weights stay
    masked.fit(
        x, y, batch_size=32, epochs=1, verbose=0, callbacks=[keras_prune.UpdatePruningStep()]
    )
    masks = _masks(masked)
    assert sorted(masks) == [model.layers[0].name, model.layers[2].name, model.layers[4].name]
    for name, mask in masks.items():
        expected = np.zeros(len(mask))
        expected[_top(model.get_layer(name).kernel, len(mask) // 2)] = 1
        np.testing.assert_array_equal(mask, expected)
    small = shrink(masked)
    assert small.count_params() == 520 and not any(
        isinstance(la, ChannelMask) for la in small.layers
    )
    _assert_same_predictions(small, masked, x)


def test_global_pruning_keeps_the_channels_of_a_full_sort_over_all_groups():
    x, y = small_images(64)
    model = small_cnn()
    conv = model.layers[0]
    kernel = _numpy(conv.kernel)
    kernel[..., :6] *= 0.05  # six of conv1's eight channels matter little next to the others
    conv.kernel.assign(kernel * 100)  # its scale as a whole does not count
    names = [model.layers[i].name for i in (0, 2, 4)]
    scores = []
    for name in names:
        flat = _numpy(model.get_layer(name).kernel).astype("float64")
        scores.append(np.sqrt((flat.reshape(-1, flat.shape[-1]) ** 2).sum(axis=0)))
    values = np.sort(np.concatenate([s / s.mean() for s in scores]))
    threshold = values[len(values) // 2 - 1]  # half of all 32 channels go
    masked = prune_channels(
        model, keras_prune.ConstantSparsity(0.5, 0, frequency=1), global_pruning=True
    )
    masked.compile(keras.optimizers.SGD(0.0), "sparse_categorical_crossentropy")  # weights stay
    masked.fit(x, y, batch_size=32, epochs=1, verbose=0)
    masks = _masks(masked)
    for name, score in zip(names, scores):
        np.testing.assert_array_equal(masks[name], (score / score.mean() > threshold).astype(float))
    assert masks[names[0]].sum() == 2  # not the 4 that uniform pruning keeps
    assert sum(mask.sum() for mask in masks.values()) == 16
    small = shrink(masked)
    one_shot = shrink(model, 0.5, global_pruning=True)
    for name in names:
        assert small.get_layer(name).kernel.shape == one_shot.get_layer(name).kernel.shape
    _assert_same_predictions(small, masked, x)


def test_a_nested_model_is_pruned_as_one_graph_and_select_finds_its_layers():
    x, y = small_images(64)
    features = keras.Sequential(
        [
            keras.Input((12, 12, 1)),
            L.Conv2D(8, 3, activation="relu", name="c1"),
            L.MaxPooling2D(2),
            L.Conv2D(8, 3, activation="relu", name="c2"),
        ],
        name="features",
    )
    model = keras.Sequential(
        [
            keras.Input((12, 12, 1)),
            features,
            L.Flatten(),
            L.Dense(16, activation="relu", name="d"),
            L.Dense(4, activation="softmax", name="out"),
        ]
    )
    schedule = keras_prune.ConstantSparsity(0.5, 0, frequency=1)
    masked = prune_channels(model, schedule, select=[features.get_layer("c2"), "d"])
    masked.compile(keras.optimizers.SGD(0.0), "sparse_categorical_crossentropy")  # weights stay
    masked.fit(x, y, batch_size=32, epochs=1, verbose=0)
    masks = _masks(masked)
    assert sorted(masks) == ["c2", "d"]  # c1 was not selected
    expected = np.zeros(8)
    expected[_top(features.get_layer("c2").kernel, 4)] = 1
    np.testing.assert_array_equal(masks["c2"], expected)
    small = shrink(masked)
    assert small.get_layer("c2").filters == 4 and small.get_layer("c1").filters == 8
    _assert_same_predictions(small, masked, x)


COMPILATION = {  # compile arguments beside an SGD optimizer's
    "run_eagerly": ({"run_eagerly": True}, {}),
    "jit_compile": ({"jit_compile": True}, {}),
    "steps_per_execution": ({"steps_per_execution": 4}, {}),  # Keras refuses it on torch
    "gradient_accumulation": ({}, {"gradient_accumulation_steps": 2}),
}


@pytest.mark.parametrize("compilation", COMPILATION)
def test_every_way_keras_compiles_the_step_prunes_to_the_schedule(compilation):
    if compilation == "steps_per_execution" and keras.backend.backend() == "torch":
        pytest.skip("Keras runs one step per execution on torch")
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 1))
    h = L.BatchNormalization()(L.Conv2D(8, 3, activation="relu", name="c1")(inputs))
    h = L.GlobalAveragePooling2D()(L.Conv2D(8, 3, activation="relu", name="c2")(h))
    model = keras.Model(inputs, L.Dense(3, name="out")(L.Dense(8, name="d")(h)))
    masked = prune_channels(model, keras_prune.PolynomialDecay(0.0, 0.5, 0, 8, frequency=2))
    arguments, optimizer = COMPILATION[compilation]
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    masked.compile(keras.optimizers.SGD(**optimizer), loss, **arguments)
    x, y = small_images(64, size=8, classes=3)
    callbacks = [keras_prune.UpdatePruningStep()]
    masked.fit(x, y, batch_size=4, epochs=1, verbose=0, callbacks=callbacks)
    for mask in (layer for layer in masked.layers if isinstance(layer, ChannelMask)):
        assert int(_numpy(mask.pruning_step)) == 16, mask.name
        assert _numpy(mask.mask).tolist().count(0.0) == 4, mask.name
    _assert_same_predictions(shrink(masked), masked, x)


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_a_mixed_precision_model_loses_channels_and_shrinks_in_its_policy(policy):
    keras.utils.set_random_seed(0)
    keras.config.set_dtype_policy(policy)
    try:
        inputs = keras.Input((8, 8, 1))
        h = L.ReLU()(L.BatchNormalization(name="bn")(L.Conv2D(8, 3, name="c1")(inputs)))
        h = L.GlobalAveragePooling2D()(L.Conv2D(8, 3, activation="relu", name="c2")(h))
        outputs = L.Dense(3, name="out", dtype="float32")(L.Dense(8, name="d")(h))
        model = keras.Model(inputs, outputs)
    finally:
        keras.config.set_dtype_policy("float32")
    masked = prune_channels(model, keras_prune.ConstantSparsity(0.5, 0, frequency=1))
    masked.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x, y = small_images(32, size=8, classes=3)
    masked.fit(x, y, batch_size=8, verbose=0)
    for name in ("c1", "c2"):  # ranked by the float32 kernels
        expected = np.zeros(8)
        expected[_top(model.get_layer(name).kernel, 4)] = 1
        np.testing.assert_array_equal(_masks(masked)[name], expected)
    small = shrink(masked)
    assert small.get_layer("c1").filters == 4 and small.get_layer("bn").gamma.shape == (4,)
    assert small.get_layer("c2").dtype_policy.name == policy
    assert small.get_layer("c2").kernel.dtype == "float32"
    _assert_same_predictions(small, masked, x, atol=1e-3)


def test_a_residual_squeeze_excitation_model_prunes_to_the_schedule_and_shrinks_exactly():
    rng = np.random.RandomState(0)
    x, y = rng.rand(96, 8, 8, 3).astype("float32"), rng.randint(0, 4, 96)
    masked = prune_channels(
        _se_residual_model(), keras_prune.PolynomialDecay(0.0, 0.5, 0, 6, frequency=2), round_to=2
    )
    masked.compile("adam", "sparse_categorical_crossentropy")
    masked.fit(x, y, batch_size=32, epochs=3, verbose=0)
    masks = _masks(masked)
    # a, b and the features' half of excite: one group of 8; d and the other half: another.
    assert masks["a"].sum() == masks["b"].sum() == 4
    np.testing.assert_array_equal(masks["a"], masks["b"])
    # b's channels are masked through bn's scale and shift; dw's mask follows the ReLU and
    # pooling after it.
    assert "bn" not in masks
    assert masked.get_layer("b_channel_mask").layer.name == "bn"
    assert masked.get_layer("dw_channel_mask").input.shape == (None, 16)
    np.testing.assert_array_equal(masks["excite"], np.concatenate([masks["a"], masks["d"]]))
    np.testing.assert_array_equal(masks["dw"], masks["excite"])
    assert masks["squeeze"].sum() == 2
    small = shrink(masked)
    assert small.get_layer("excite").filters == 8 and small.get_layer("dw").kernel.shape[-2] == 8
    _assert_same_predictions(small, masked, x[:8])


def test_a_mask_follows_the_per_channel_layers_that_alone_read_its_layer():
    x = keras.Input((8, 8, 3))
    c = L.Conv2D(8, 3, name="c")(x)
    normalized = L.BatchNormalization(scale=False, name="bn")(c)  # no scale to mask c through
    pooled = L.MaxPooling2D(name="pool")(L.ReLU(name="relu")(normalized))
    e = L.Conv2D(8, 1, name="e")(pooled)  # read twice: its mask stays right after it
    h = L.Add()([L.ReLU(name="relu_e")(e), e])
    model = keras.Model(x, L.Dense(3, name="out")(L.GlobalAveragePooling2D()(h)))
    masked = prune_channels(model, keras_prune.ConstantSparsity(0.5, 0, frequency=1))
    assert sorted(_masks(masked)) == ["c", "e"]
    assert type(masked.get_layer("c_channel_mask")) is ChannelMask
    assert masked.get_layer("c_channel_mask").input is masked.get_layer("pool").output
    assert masked.get_layer("e_channel_mask").input is masked.get_layer("e").output
    rng = np.random.RandomState(0)
    images, labels = rng.rand(32, 8, 8, 3).astype("float32"), rng.randint(0, 3, 32)
    masked.compile(keras.optimizers.SGD(0.0), "sparse_categorical_crossentropy")
    masked.fit(images, labels, batch_size=16, epochs=1, verbose=0)
    assert all(mask.sum() == 4 for mask in _masks(masked).values())
    small = shrink(masked)
    assert small.get_layer("c").filters == small.get_layer("e").filters == 4
    _assert_same_predictions(small, masked, images)


def test_a_normalization_in_the_chain_is_masked_through_its_scale_and_shift(tmp_path):
    x = keras.Input((8, 8, 3))
    c = L.Conv2D(8, 3, name="c")(x)
    h = L.MaxPooling2D(name="pool")(L.ReLU(name="relu")(L.BatchNormalization(name="bn")(c)))
    h = L.BatchNormalization(scale=False, name="bn_e")(L.Conv2D(8, 1, name="e")(h))
    model = keras.Model(x, L.Dense(3, name="out")(L.GlobalAveragePooling2D()(h)))
    rng = np.random.RandomState(0)
    for variable in model.get_layer("bn").weights:  # a removed channel's shift must not leak
        variable.assign(rng.uniform(0.5, 1.5, 8).astype("float32"))
    masked = prune_channels(model, keras_prune.ConstantSparsity(0.5, 0, frequency=1))
    wrapper = masked.get_layer("c_channel_mask")
    assert isinstance(wrapper, NormalizationMask) and wrapper.layer.name == "bn"
    assert "bn" not in [layer.name for layer in masked.layers]
    assert type(masked.get_layer("e_channel_mask")) is ChannelMask  # bn_e has no scale
    images, labels = rng.rand(32, 8, 8, 3).astype("float32"), rng.randint(0, 3, 32)
    masked.compile(keras.optimizers.SGD(0.0), "sparse_categorical_crossentropy")
    before = _numpy(wrapper.layer.moving_mean)
    masked.fit(images, labels, batch_size=16, epochs=1, verbose=0)
    assert not np.allclose(_numpy(wrapper.layer.moving_mean), before)  # bn's statistics train
    kept = _masks(masked)["c"]
    expected = np.zeros(8)
    expected[_top(model.get_layer("c").kernel, 4)] = 1
    np.testing.assert_array_equal(kept, expected)
    # The reference: plain Keras with bn's trained weights, the removed channels' scale and
    # shift zeroed by hand.
    reference = keras.models.clone_model(model)
    reference.set_weights(model.get_weights())
    weights = [_numpy(w) for w in wrapper.layer.weights]  # gamma, beta, moving mean, variance
    reference.get_layer("bn").set_weights([weights[0] * kept, weights[1] * kept, *weights[2:]])
    pooled = keras.Model(masked.inputs, masked.get_layer("pool").output)
    expected_pooled = keras.Model(reference.inputs, reference.get_layer("pool").output)
    result = _numpy(pooled(images, training=False))
    assert np.all(result[..., kept == 0] == 0)
    np.testing.assert_allclose(result, _numpy(expected_pooled(images, training=False)), atol=1e-6)
    masked.save(tmp_path / "masked.keras")
    loaded = keras.saving.load_model(tmp_path / "masked.keras")
    np.testing.assert_array_equal(_numpy(loaded.get_layer("c_channel_mask").mask), kept)
    small = shrink(loaded)
    assert small.get_layer("bn").gamma.shape == (4,) and small.get_layer("c").filters == 4
    _assert_same_predictions(small, masked, images)


def test_a_normalization_mask_trains_where_keras_infers_the_shapes_twice():
    # Keras on torch infers a model's output on the "meta" device, then, where a layer
    # fails there (an UpSampling2D), once more on the CPU: the first pass's values must
    # not stay in the masks' variables.
    model = keras.Sequential(
        [
            keras.Input((6, 6, 3)),
            L.Conv2D(8, 3, padding="same", name="c"),
            L.BatchNormalization(name="bn"),
            L.ReLU(),
            L.UpSampling2D(),
            L.Conv2D(4, 3, name="e"),
            L.GlobalAveragePooling2D(),
            L.Dense(2, name="out"),
        ]
    )
    masked = prune_channels(model, keras_prune.ConstantSparsity(0.5, 0, frequency=1))
    assert isinstance(masked.get_layer("c_channel_mask"), NormalizationMask)
    masked.compile("sgd", "mse")  # fit builds the metrics by inferring the output
    rng = np.random.RandomState(0)
    images = rng.rand(16, 6, 6, 3).astype("float32")
    masked.fit(images, rng.rand(16, 2), batch_size=8, verbose=0)
    expected = np.zeros(8)
    expected[_top(model.get_layer("c").kernel, 4)] = 1
    np.testing.assert_array_equal(_masks(masked)["c"], expected)
    small = shrink(masked)
    assert small.get_layer("bn").gamma.shape == (4,)
    _assert_same_predictions(small, masked, images)


def test_a_batch_normalization_of_a_masked_sequence_keeps_its_channels():
    # A NormalizationMask passes no Keras mask on: the walk must leave such a layer whole.
    ids = keras.Input((6,), dtype="int32")
    h = L.Embedding(20, 8, mask_zero=True, name="embedding")(ids)
    h = L.ReLU()(L.BatchNormalization(name="bn")(L.Dense(8, name="d")(h)))  # moments skip padding
    model = keras.Model(ids, L.Dense(2, name="out")(L.GlobalAveragePooling1D()(h)))
    with pytest.raises(ValueError, match="`bn` \\(BatchNormalization\\) reads it"):
        prune_channels(model, keras_prune.ConstantSparsity(0.5, 0), select="d")


def test_a_saved_model_resumes_pruning_where_it_stopped(tmp_path):
    x, y = small_images(128)

    def start():
        keras.utils.set_random_seed(7)
        masked = prune_channels(
            small_cnn(), keras_prune.PolynomialDecay(0.0, 0.75, 0, 8, frequency=2)
        )
        masked.compile("adam", "sparse_categorical_crossentropy")
        return masked

    whole = start()
    whole.fit(x, y, batch_size=32, epochs=2, shuffle=False, verbose=0)
    half = start()
    half.fit(x, y, batch_size=32, epochs=1, shuffle=False, verbose=0)
    half.save(tmp_path / "half.keras")
    resumed = keras.saving.load_model(tmp_path / "half.keras")
    np.testing.assert_allclose(
        _numpy(resumed(x[:8], training=False)), _numpy(half(x[:8], training=False)), rtol=1e-6
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # no "nothing will be pruned" warning
        resumed.fit(
            x, y, batch_size=32, epochs=1, shuffle=False, verbose=0,
            callbacks=[keras_prune.UpdatePruningStep()],
        )  # fmt: skip
    for mask, expected in zip(_masks(resumed).values(), _masks(whole).values(), strict=True):
        np.testing.assert_array_equal(mask, expected)
        assert mask.sum() == len(mask) // 4
    np.testing.assert_allclose(
        _numpy(resumed(x[:8], training=False)), _numpy(whole(x[:8], training=False)), atol=1e-4
    )


def test_select_and_round_to():
    model = small_cnn()
    masked = prune_channels(
        model,
        keras_prune.ConstantSparsity(0.9, 0, frequency=1),
        select=[model.layers[2].name],
        round_to=4,
    )
    masked.compile("sgd", "sparse_categorical_crossentropy")
    x, y = small_images(32)
    masked.fit(x, y, batch_size=32, epochs=1, verbose=0)
    assert {name: int(m.sum()) for name, m in _masks(masked).items()} == {model.layers[2].name: 4}


@keras.saving.register_keras_serializable(package="keras_prune_tests")
def _latest_channels(weights):
    """Scores that keep the highest-numbered channels, whatever the weights."""
    return keras.ops.arange(weights[0].shape[0], dtype="float32")


@keras.saving.register_keras_serializable(package="keras_prune_tests")
def _numpy_norm(weights):  # numpy cannot run inside a compiled step
    return np.linalg.norm(weights[0], axis=1)


@keras.saving.register_keras_serializable(package="keras_prune_tests")
def _one_score(weights):
    return keras.ops.sum(weights[0])


@keras.saving.register_keras_serializable(package="keras_prune_tests")
def _l1_of_first(weights):
    return keras.ops.sum(keras.ops.abs(weights[0]), axis=1)


def test_a_callable_importance_scores_in_the_train_step_and_is_saved(tmp_path):
    x, y = small_images(32)
    model = small_cnn()
    schedule = keras_prune.PolynomialDecay(0.0, 0.5, 0, 2, frequency=1)
    masked = prune_channels(model, schedule, importance=_latest_channels)
    masked.compile(keras.optimizers.SGD(0.0), "sparse_categorical_crossentropy")
    masked.fit(x, y, batch_size=16, epochs=1, verbose=0)  # step 1 removes 3 of 8; step 2, 4
    for mask in _masks(masked).values():
        np.testing.assert_array_equal(mask, np.repeat([0.0, 1.0], len(mask) // 2))
    # As "l1" does, the callable's own L1 norm keeps the channels a full sort keeps.
    masked = prune_channels(model, schedule, importance=_l1_of_first)
    masked.compile(keras.optimizers.SGD(0.0), "sparse_categorical_crossentropy")
    masked.fit(x, y, batch_size=16, epochs=1, verbose=0)
    masked.save(tmp_path / "callable.keras")
    loaded = keras.saving.load_model(tmp_path / "callable.keras")
    assert loaded.get_layer(f"{model.layers[0].name}_channel_mask").importance is _l1_of_first
    for name, mask in _masks(loaded).items():
        flat = _numpy(model.get_layer(name).kernel).reshape(-1, len(mask)).astype("float64")
        expected = np.zeros(len(mask))
        expected[
            np.sort(np.argsort(-np.abs(flat).sum(axis=0), kind="stable")[: len(mask) // 2])
        ] = 1
        np.testing.assert_array_equal(mask, expected)


def test_an_embeddings_columns_go_while_fit_trains(tmp_path):
    keras.utils.set_random_seed(0)
    ids = keras.Input((8,), dtype="int32")
    h = L.Embedding(40, 16, mask_zero=True, name="embedding")(ids)
    h = L.Conv1D(8, 3, activation="relu", name="conv")(h)
    model = keras.Model(ids, L.Dense(2, name="out")(L.GlobalMaxPooling1D()(h)))
    masked = prune_channels(model, keras_prune.ConstantSparsity(0.5, 0, frequency=1))
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    masked.compile(keras.optimizers.SGD(0.0), loss)  # the weights stay, to rank them here
    rng = np.random.RandomState(0)
    x, y = rng.randint(0, 40, (32, 8)), rng.randint(0, 2, 32)
    masked.fit(x, y, batch_size=16, verbose=0)
    expected = np.zeros(16)
    expected[_top(masked.get_layer("embedding").embeddings, 8)] = 1  # the columns' norms
    np.testing.assert_array_equal(_masks(masked)["embedding"], expected)
    masked.save(tmp_path / "masked.keras")
    small = shrink(keras.saving.load_model(tmp_path / "masked.keras"))
    assert small.get_layer("embedding").output_dim == 8
    _assert_same_predictions(small, masked, x)


def test_a_transposed_convolutions_filters_go_while_fit_trains():
    x = keras.Input((8, 8, 3))
    h = L.Conv2D(6, 3, strides=2, padding="same", activation="relu", name="down")(x)
    h = L.Conv2DTranspose(8, 3, strides=2, padding="same", activation="relu", name="up")(h)
    model = keras.Model(x, L.Conv2D(2, 1, name="out")(h))
    kernel = _numpy(model.get_layer("up").kernel)  # (3, 3, filters, inputs)
    scores = np.sqrt((np.moveaxis(kernel, 2, 0).reshape(8, -1).astype("float64") ** 2).sum(1))
    expected = np.zeros(8)
    expected[np.sort(np.argsort(-scores, kind="stable")[:4])] = 1
    images = np.random.RandomState(0).rand(16, 8, 8, 3).astype("float32")
    masked = prune_channels(model, keras_prune.ConstantSparsity(0.5, 0, frequency=1))
    masked.compile(keras.optimizers.SGD(0.0), "mse")  # the weights stay
    masked.fit(images, np.zeros((16, 8, 8, 2)), batch_size=8, epochs=1, verbose=0)
    np.testing.assert_array_equal(_masks(masked)["up"], expected)
    report = {row.layer: row.sparsity for row in keras_prune.sparsity_report(masked)}
    assert report["up"] == 0.5  # 4 of its 8 filters, axis -2 of its kernel
    small = shrink(masked)
    assert small.get_layer("up").kernel.shape == (3, 3, 4, 3)
    _assert_same_predictions(small, masked, images)


def test_an_einsum_dense_loses_units_while_fit_trains(tmp_path):
    x = keras.Input((6, 8))
    h = L.EinsumDense("btd,de->bte", (6, 12), bias_axes="e", activation="relu", name="ein")(x)
    model = keras.Model(x, L.Dense(2, name="out")(L.Flatten()(h)))
    expected = np.zeros(12)
    expected[_top(model.get_layer("ein").kernel, 6)] = 1
    masked = prune_channels(model, keras_prune.ConstantSparsity(0.5, 0, frequency=1))
    masked.compile(keras.optimizers.SGD(0.0), "mse")  # the weights stay
    sequences = np.random.RandomState(0).normal(size=(16, 6, 8)).astype("float32")
    masked.fit(sequences, np.zeros((16, 2)), batch_size=8, epochs=1, verbose=0)
    np.testing.assert_array_equal(_masks(masked)["ein"], expected)
    small = shrink(masked)
    assert small.get_layer("ein").kernel.shape == (8, 6)
    assert small.get_layer("out").kernel.shape == (36, 2)  # Flatten: 6 steps x 6 units
    _assert_same_predictions(small, masked, sequences)
    small.save(tmp_path / "small.keras")
    loaded = keras.saving.load_model(tmp_path / "small.keras")
    _assert_same_predictions(loaded, small, sequences)


def test_a_mask_moves_past_prelu_and_shrink_keeps_the_masked_predictions():
    x = keras.Input((8, 8, 3))
    slopes = keras.initializers.RandomUniform(0.1, 0.5, seed=1)
    h = L.PReLU(alpha_initializer=slopes, shared_axes=[1, 2], name="prelu")(L.Conv2D(6, 3)(x))
    model = keras.Model(x, L.Dense(2)(L.GlobalAveragePooling2D()(L.Conv2D(4, 3)(h))))
    masked = prune_channels(model, keras_prune.ConstantSparsity(0.5, 0, frequency=1))
    kinds = [type(layer).__name__ for layer in masked.layers]
    assert kinds.index("ChannelMask") == kinds.index("PReLU") + 1  # after it, one mask
    images = np.random.RandomState(0).normal(size=(16, 8, 8, 3)).astype("float32")
    masked.compile("adam", "mse")
    masked.fit(images, np.zeros((16, 2)), batch_size=8, epochs=1, verbose=0)
    small = shrink(masked)
    assert small.get_layer("prelu").alpha.shape == (1, 1, 3)
    _assert_same_predictions(small, masked, images)


@pytest.mark.parametrize("global_pruning", [False, True], ids=["local", "global"])
def test_group_normalizations_groups_go_whole_while_fit_trains(tmp_path, global_pruning):
    x = keras.Input((8, 8, 3))
    h = L.Conv2D(12, 3, name="conv")(x)
    h = L.ReLU()(L.GroupNormalization(groups=4, name="gn")(h))  # runs of 3 channels
    h = L.GroupNormalization(groups=-1)(L.Conv2D(4, 3, name="conv2")(h))
    model = keras.Model(x, L.Dense(2)(L.GlobalAveragePooling2D()(h)))
    for variable in model.get_layer("gn").weights:  # a removed run's shift must not leak
        variable.assign(np.linspace(0.5, 1.5, 12).astype("float32"))
    schedule = keras_prune.ConstantSparsity(0.5, 0, frequency=1)
    masked = prune_channels(model, schedule, global_pruning=global_pruning)
    kinds = [type(layer).__name__ for layer in masked.layers]
    # Both masked through a GroupNormalization's scale and shift: relu(0) = 0.
    assert kinds.count("NormalizationMask") == 2 and "ChannelMask" not in kinds
    assert masked.get_layer("conv_channel_mask").layer.name == "gn"
    images = np.random.RandomState(0).normal(size=(16, 8, 8, 3)).astype("float32")
    masked.compile(keras.optimizers.SGD(0.0), "mse")  # the weights stay
    masked.fit(images, np.zeros((16, 2)), batch_size=8, epochs=1, verbose=0)
    mask = _masks(masked)["conv"]
    assert np.all(mask.reshape(4, 3) == mask.reshape(4, 3)[:, :1])  # whole runs
    if not global_pruning:
        kernel = _numpy(model.get_layer("conv").kernel).reshape(-1, 12).astype("float64")
        runs = np.sqrt((kernel**2).sum(axis=0)).reshape(4, 3).sum(axis=1)
        expected = np.repeat(np.isin(np.arange(4), np.argsort(-runs)[:2]), 3)
        np.testing.assert_array_equal(mask, expected.astype("float32"))
    masked.save(tmp_path / "masked.keras")
    loaded = keras.saving.load_model(tmp_path / "masked.keras")
    assert loaded.get_layer("conv_channel_mask").segments[0]["block"] == 3
    small = shrink(loaded)
    kept = int(mask.sum())
    assert (small.get_layer("gn").groups, small.get_layer("conv").filters) == (kept // 3, kept)
    _assert_same_predictions(small, masked, images)


def test_a_channels_first_model_prunes_and_shrinks_as_its_channels_last_twin(tmp_path):
    images = np.random.RandomState(0).rand(16, 10, 10, 3).astype("float32")
    masked = {}
    for model, x in zip(image_twins(), (images, images.transpose(0, 3, 1, 2))):
        masked[model] = prune_channels(model, keras_prune.ConstantSparsity(0.5, 0, frequency=1))
        masked[model].compile(keras.optimizers.SGD(0.0), "mse")  # the weights stay
        masked[model].fit(x, np.zeros((16, 3)), batch_size=8, epochs=1, verbose=0)
    last, first = masked.values()
    assert _masks(first).keys() == _masks(last).keys()
    for name, mask in _masks(first).items():
        np.testing.assert_array_equal(mask, _masks(last)[name])
        assert 0 < mask.sum() < len(mask)
    assert {layer.axis for layer in first.layers if isinstance(layer, ChannelMask)} == {1}
    first.save(tmp_path / "first.keras")
    small = shrink(keras.saving.load_model(tmp_path / "first.keras"))
    assert small.get_layer("c1").kernel.shape == (3, 3, 3, 4)
    _assert_same_predictions(small, first, images.transpose(0, 3, 1, 2))


def test_bad_arguments_are_named_before_anything_is_built():
    model = small_cnn()
    schedule = keras_prune.ConstantSparsity(0.5, 0)
    with pytest.raises(TypeError, match="`pruning_schedule` must be a keras_prune.PruningSchedule"):
        prune_channels(model, 0.5)
    with pytest.raises(ValueError, match="`importance` must be 'l1', 'l2' or a callable; got 'l3'"):
        prune_channels(model, schedule, importance="l3")
    with pytest.raises(ValueError, match="a lambda or nested function cannot be loaded"):
        prune_channels(model, schedule, importance=lambda w: keras.ops.sum(w[0], axis=1))
    with pytest.raises(ValueError, match="must compute its scores with keras.ops"):
        prune_channels(model, schedule, importance=_numpy_norm)
    with pytest.raises(ValueError, match="must return 8 scores, one per channel of the group of"):
        prune_channels(model, schedule, importance=_one_score)
    with pytest.raises(ValueError, match="`round_to` must be >= 1"):
        prune_channels(model, schedule, round_to=0)
    with pytest.raises(TypeError, match="`global_pruning` must be True or False"):
        prune_channels(model, schedule, global_pruning="yes")
    with pytest.raises(
        ValueError, match="picks dense_1, whose channels cannot be removed: it reaches"
    ):
        prune_channels(model, schedule, select="dense_1")
    with pytest.raises(  # only the selected layer's reason, not the other groups'
        ValueError, match="among the selected layers: it reaches the model output of `dense_1`$"
    ):
        prune_channels(model, schedule, select=lambda layer: layer.name == "dense_1")
    with pytest.raises(
        ValueError, match="picks max_pooling2d \\(MaxPooling2D\\), which produces no channels"
    ):
        prune_channels(model, schedule, select="max_pooling2d")
    with pytest.raises(ValueError, match="not in the model"):
        prune_channels(model, schedule, select="nope")
    with pytest.raises(ValueError, match="already pruned"):
        prune_channels(keras_prune.prune_low_magnitude(model, schedule), schedule)
    masked = prune_channels(model, schedule)
    with pytest.raises(ValueError, match="already pruned"):
        prune_channels(masked, schedule)
    with pytest.raises(ValueError, match="shrink it first .*then prune the weights"):
        keras_prune.prune_low_magnitude(masked, schedule)  # it used to mask ChannelMask layers
    with pytest.raises(ValueError, match="its masks say which channels go"):
        shrink(masked, 0.5)
    with pytest.raises(ValueError, match="`sparsity` is needed"):
        shrink(model)
    with pytest.raises(ValueError, match="call `keras_prune.shrink\\(model\\)` instead"):
        keras_prune.strip_pruning(masked)


def _attention_model():
    x = keras.Input((5, 8))
    h = L.MultiHeadAttention(4, 3, name="attention")(x, x)
    h = L.Dense(6, activation="relu", name="hidden")(L.Add()([x, h]))
    return keras.Model(x, L.Dense(2, name="out")(L.GlobalAveragePooling1D()(h)))


def test_lora_leaves_its_channels_whole_and_a_config_that_loses_it_is_named():
    dense_lora = keras.Sequential(
        [keras.Input((4,)), L.Dense(8, name="hidden"), L.Dense(8, name="kept"), L.Dense(2)]
    )
    dense_lora.get_layer("hidden").enable_lora(2)
    reasons = {g.producers: g.reason for g in keras_prune.channel_groups(dense_lora)}
    assert reasons[("hidden",)] == (
        "`hidden` (Dense) has LoRA enabled, whose factors shrink does not cut"
    )
    assert reasons[("kept",)] is None
    with pytest.raises(ValueError, match="picks hidden, whose channels cannot be .*LoRA enabled"):
        prune_channels(dense_lora, keras_prune.ConstantSparsity(0.5, 0), select="hidden")

    # A MultiHeadAttention's config does not carry its projections' LoRA: the
    # copy would lose the factors, so both calls name the layer (they failed in Keras).
    model = _attention_model()
    model.get_layer("attention").query_dense.enable_lora(2)
    assert "attention" not in {p for g in keras_prune.channel_groups(model) for p in g.producers}
    lost = "'attention' \\(MultiHeadAttention\\) has 10 weights.*lacks lora_kernel_a, lora_kernel_b"
    with pytest.raises(ValueError, match=lost):
        shrink(model, 0.5)
    with pytest.raises(ValueError, match=lost):
        prune_channels(model, keras_prune.ConstantSparsity(0.5, 0))


def _head_scores(attention):
    """Each head's L2 norm over its query, key, value and output kernels, by hand."""
    parts = [
        np.moveaxis(_numpy(p.kernel), 1, 0).reshape(attention.num_heads, -1)
        for p in (attention.query_dense, attention.key_dense, attention.value_dense)
    ]
    parts.append(_numpy(attention.output_dense.kernel).reshape(attention.num_heads, -1))
    return np.sqrt((np.concatenate(parts, axis=1).astype("float64") ** 2).sum(axis=1))


def test_attention_heads_go_while_fit_trains_and_shrink_removes_them(tmp_path):
    model = _attention_model()
    attention = model.get_layer("attention")
    for projection in (attention.query_dense, attention.value_dense):  # heads 1 and 2 matter less
        kernel = _numpy(projection.kernel)
        kernel[:, 1:3] *= 0.1
        projection.kernel.assign(kernel)
    for projection in (attention.value_dense, attention.query_dense):  # biases that are not 0
        projection.bias.assign(np.random.RandomState(0).normal(size=(4, 3)).astype("float32"))
    expected = np.zeros(4)
    expected[np.sort(np.argsort(-_head_scores(attention), kind="stable")[:2])] = 1
    assert expected.tolist() == [1, 0, 0, 1]
    x = np.random.RandomState(1).normal(size=(32, 5, 8)).astype("float32")
    y = np.random.RandomState(2).randint(0, 2, 32)

    masked = prune_channels(
        model, keras_prune.ConstantSparsity(0.5, 0, frequency=1), select="attention"
    )
    (head_mask,) = [la for la in masked.layers if isinstance(la, keras_prune.HeadMask)]
    assert head_mask.source == "attention" and list(_masks(masked)) == ["attention"]
    masked.compile(keras.optimizers.SGD(0.0), "sparse_categorical_crossentropy")  # weights stay
    masked.fit(x, y, batch_size=16, epochs=1, verbose=0)
    np.testing.assert_array_equal(_masks(masked)["attention"], expected)

    # A removed head adds nothing: the masked model predicts what the model
    # does with those heads' value projections zeroed by hand.
    reference = keras.models.clone_model(model)
    reference.set_weights(model.get_weights())
    value = reference.get_layer("attention").value_dense
    value.kernel.assign(_numpy(value.kernel) * expected[None, :, None])
    value.bias.assign(_numpy(value.bias) * expected[:, None])
    masked_out = _numpy(masked(x, training=False))
    np.testing.assert_allclose(masked_out, _numpy(reference(x)), rtol=1e-5, atol=1e-6)

    masked.save(tmp_path / "heads.keras")
    loaded = keras.saving.load_model(tmp_path / "heads.keras")
    np.testing.assert_allclose(_numpy(loaded(x, training=False)), masked_out, rtol=1e-6)
    small = shrink(loaded)
    assert small.get_layer("attention").num_heads == 2
    assert small.get_layer("attention").query_dense.kernel.shape == (8, 2, 3)
    assert not any(isinstance(la, ChannelMask) for la in small.layers)
    np.testing.assert_allclose(_numpy(small(x, training=False)), masked_out, rtol=1e-4, atol=1e-6)


def test_group_query_attention_loses_key_value_groups_while_fit_trains(tmp_path):
    x = keras.Input((5, 8))
    layer = L.GroupQueryAttention(3, num_query_heads=4, num_key_value_heads=2, name="attention")
    h = layer(x, x)
    model = keras.Model(x, L.Dense(2, activation="softmax")(L.GlobalAveragePooling1D()(h)))
    value = next(la for la in keras_prune._keras.flatten_layers(layer) if la.name == "value")
    value.kernel.assign(_numpy(value.kernel) * np.array([1.0, 0.01])[None, :, None])  # group 1
    value.bias.assign(np.random.RandomState(0).normal(size=(2, 3)).astype("float32"))
    x_train = np.random.RandomState(1).normal(size=(32, 5, 8)).astype("float32")
    y_train = np.random.RandomState(2).randint(0, 2, 32)

    masked = prune_channels(model, keras_prune.PolynomialDecay(0.0, 0.5, 0, 2, frequency=1))
    masked.compile(keras.optimizers.SGD(0.0), "sparse_categorical_crossentropy")  # weights stay
    masked.fit(x_train, y_train, batch_size=16, epochs=2, verbose=0)
    # The query, key and output kernels score too; group 1's value kernel is a
    # hundredth of group 0's, which the other kernels (random, alike) do not outweigh.
    np.testing.assert_array_equal(_masks(masked)["attention"], [1, 0])
    report = {(row.layer, row.weight): row for row in keras_prune.sparsity_report(masked)}
    kernels = ["query/kernel", "key/kernel", "value/kernel", "attention_output/kernel"]
    assert [weight for layer, weight in report if layer == "attention"] == kernels
    query, value = report["attention", "query/kernel"], report["attention", "value/kernel"]
    assert query.note == "1 of 2 head groups removed by its HeadMask"
    assert query.sparsity == value.sparsity == 0.5

    masked.save(tmp_path / "groups.keras")
    loaded = keras.saving.load_model(tmp_path / "groups.keras")
    small = shrink(loaded)
    attention = small.get_layer("attention")
    assert (attention.num_query_heads, attention.num_key_value_heads) == (2, 1)
    _assert_same_predictions(small, masked, x_train)
    assert keras_prune.flops(small) < keras_prune.flops(model)


def test_heads_and_units_train_and_shrink_together():
    model = _attention_model()
    x = np.random.RandomState(1).normal(size=(32, 5, 8)).astype("float32")
    y = np.random.RandomState(2).randint(0, 2, 32)
    for global_pruning in (False, True):
        masked = prune_channels(
            model,
            keras_prune.PolynomialDecay(0.0, 0.5, 0, 4, frequency=1),
            global_pruning=global_pruning,
        )
        masked.compile("adam", "sparse_categorical_crossentropy")
        masked.fit(x, y, batch_size=8, epochs=2, verbose=0)  # real updates, compiled steps
        masks = _masks(masked)
        assert sorted(masks) == ["attention", "hidden"]
        assert sum(m.sum() for m in masks.values()) == 5  # half of 4 heads and 6 units
        small = shrink(masked)
        kept = masks["attention"].sum()
        assert small.get_layer("attention").num_heads == kept
        assert small.get_layer("hidden").units == masks["hidden"].sum()
        _assert_same_predictions(small, masked, x)


def test_a_transformer_encoder_loses_heads_and_ffn_units_while_it_trains(tmp_path):
    model = small_encoder()
    ids = np.random.RandomState(0).randint(0, 50, (32, 6))
    y = np.random.RandomState(1).randint(0, 3, 32)
    schedule = keras_prune.PolynomialDecay(0.0, 0.5, 0, 4, frequency=2)
    residual = (
        r"3 channel group\(s\) keep every channel: embedding: `attention_0` "
        r"\(MultiHeadAttention\) reads it; only its heads are removed; ffn_0_out"
    )
    with pytest.warns(UserWarning, match=residual):
        masked = prune_channels(model, schedule)  # the residual width stays
    masked.compile("adam", "sparse_categorical_crossentropy")
    masked.fit(ids, y, batch_size=16, epochs=1, verbose=0)  # steps 1, 2: the first mask update
    masked.save(tmp_path / "encoder.keras")  # and on, mid-pruning, from the file
    masked = keras.saving.load_model(tmp_path / "encoder.keras")
    masked.fit(
        ids, y, batch_size=16, epochs=1, verbose=0, callbacks=[keras_prune.UpdatePruningStep()]
    )
    masks = _masks(masked)
    assert sorted(masks) == ["attention_0", "attention_1", "ffn_0_in", "ffn_1_in"]
    assert [m.sum() for m in masks.values()] == [2, 16, 2, 16]  # half the heads and FFN units
    small = shrink(masked)
    assert small.get_layer("attention_1").num_heads == 2 and small.get_layer("ffn_0_in").units == 16
    assert small.get_layer("ffn_1_out").units == 16  # the residual width stays
    _assert_same_predictions(small, masked, ids, atol=1e-5)


def test_a_loaded_model_finds_its_layers_or_says_how_to(tmp_path):
    x, y = small_images(32)
    masked = prune_channels(small_cnn(), keras_prune.ConstantSparsity(0.5, 0, frequency=1))
    masked.compile("sgd", "sparse_categorical_crossentropy")
    masked.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    if keras.backend.backend() == "jax":  # its trainer calls each layer on its own
        with pytest.raises(
            ValueError, match="does not know the layers it scores.*UpdatePruningStep"
        ):
            loaded.fit(x, y, batch_size=32, epochs=1, verbose=0)
        loaded = keras.saving.load_model(tmp_path / "m.keras")
        loaded.fit(x, y, batch_size=32, verbose=0, callbacks=[keras_prune.UpdatePruningStep()])
    else:
        loaded.fit(x, y, batch_size=32, epochs=1, verbose=0)
    assert all(m.sum() == len(m) // 2 for m in _masks(loaded).values())


def test_groups_it_cannot_prune_are_named_in_one_warning():
    x = keras.Input((6, 4))
    a = L.Dense(8, name="a")(x)
    b = L.Dense(8, name="b")(L.LayerNormalization(name="norm")(a))
    model = keras.Model(x, L.Dense(2, name="out")(L.Activation("relu")(b)))
    with pytest.warns(UserWarning, match="1 channel group\\(s\\) keep every channel: a: `norm`"):
        masked = prune_channels(model, keras_prune.ConstantSparsity(0.5, 0))
    assert list(_masks(masked)) == ["b"]


class _Block(L.Layer):
    """A custom layer whose get_config reads an attribute never set (KerasHub 0.32's Llama)."""

    def call(self, x):
        return x

    def get_config(self):
        return {**super().get_config(), "factor": self.factor}


@pytest.mark.parametrize("nested", [False, True], ids=["graph", "nested"])
def test_a_layer_its_config_cannot_copy_is_named_before_anything_is_built(nested):
    inputs = keras.Input((6,))
    hidden = _Block(name="block")(L.Dense(8, name="hidden")(L.Dense(8, name="a")(inputs)))
    if nested:  # channel_groups copies it too, to inline the nested model
        outer = keras.Input((6,))
        model = keras.Model(outer, L.Dense(2, name="out")(keras.Model(inputs, hidden)(outer)))
        calls = [keras_prune.channel_groups]
    else:
        model, calls = keras.Model(inputs, L.Dense(2, name="out")(hidden)), []
    calls.append(lambda m: prune_channels(m, keras_prune.ConstantSparsity(0.5, 0)))
    for call in calls:
        with pytest.raises(ValueError, match=r"layer 'block' \(_Block\) .*AttributeError.*factor"):
            call(model)


def test_a_masked_model_deeper_than_the_recursion_limit_builds_and_loads(tmp_path):
    # Keras maps graphs recursively; masks add a layer after each masked one
    # (EfficientNetV2L: 1031 layers masked to 1370, past Python's default 1000).
    x = keras.Input((4,))
    h = x
    for i in range(100):
        h = L.Dense(4, name=f"d{i}")(h)
    model = keras.Model(x, L.Dense(2, name="out")(h))
    data = np.random.default_rng(0).normal(size=(8, 4)).astype("float32")
    limit, low = sys.getrecursionlimit(), 200  # the model (100 deep) builds; 200 masked cannot
    try:
        sys.setrecursionlimit(low)
        masked = prune_channels(model, keras_prune.ConstantSparsity(0.5, 0))
        assert len(masked.layers) == len(model.layers) + 100
        masked.save(str(tmp_path / "masked.keras"))
        sys.setrecursionlimit(low)  # as a new process would start
        loaded = keras.saving.load_model(str(tmp_path / "masked.keras"))
    finally:
        sys.setrecursionlimit(limit)
    np.testing.assert_array_equal(_numpy(loaded(data)), _numpy(masked(data)))

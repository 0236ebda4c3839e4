"""Tests for keras_prune.structured.shrink: smaller layers, the masked model's predictions.

The reference for every shrunk model is the original model with the removed
channels' weights set to zero by hand here, the removed channels found by a
full sort of numpy norms of the producers' kernels.
"""

from __future__ import annotations

import os
import subprocess
import sys

import keras
import numpy as np
import pytest
from conftest import image_twins, small_cnn, small_encoder, small_images

import keras_prune
from keras_prune.structured.graph import channel_groups
from keras_prune.structured.shrink import shrink

L = keras.layers


def _numpy(variable):
    return keras.ops.convert_to_numpy(variable)


def _kernel(layer):
    return getattr(layer, _kernel_name(layer))


def _kernel_name(layer):
    """The weight that holds a producer's output channels, on its last axis."""
    if isinstance(layer, L.Embedding):
        return "embeddings"
    return "pointwise_kernel" if hasattr(layer, "pointwise_kernel") else "kernel"


def _removed(layers, sparsity=0.5, norm=2, offsets=None, size=None):
    """Removed channels of a group of producer layers (from `offsets`): lowest norms, by a full sort."""
    kernels = [_numpy(_kernel(layer)) for layer in layers]
    flat = [k.reshape(-1, k.shape[-1]) for k in kernels]
    if offsets is not None:
        flat = [f[:, first : first + size] for f, first in zip(flat, offsets)]
    if norm == 2:
        scores = np.sqrt(sum((f.astype("float64") ** 2).sum(axis=0) for f in flat))
    else:
        scores = sum(np.abs(f.astype("float64")).sum(axis=0) for f in flat)
    count = int(np.floor(sparsity * len(scores)))
    return np.sort(np.argsort(scores)[:count])


def _zero(layer, name, index, axis=-1):
    variable = getattr(layer, name, None)  # an Embedding has no bias
    if variable is None:
        return
    value = _numpy(variable).copy()
    np.moveaxis(value, axis, 0)[index] = 0
    variable.assign(value)


def _zero_channels(layer, index):
    """Zeroes channels `index` of a producer's kernel and bias, or a normalisation's scale and shift."""
    if hasattr(layer, "gamma"):
        for name in ("gamma", "beta"):
            _zero(layer, name, index, axis=0)
    else:
        _zero(layer, "kernel", index)
        _zero(layer, "bias", index, axis=0)


def _all_nonzero(model, seed):
    """Every weight of `model` in [0.5, 1.5], shifts and biases too; returns the generator."""
    rng = np.random.RandomState(seed)
    for variable in model.weights:
        variable.assign(rng.uniform(0.5, 1.5, variable.shape).astype("float32"))
    return rng


def _copy(model):
    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    return clone


def _randomize(model, seed=0):
    """Random nonzero biases; BatchNormalization that maps 0 to 0 (shift 0, mean 0), depthwise bias 0.

    So the masked reference need only zero the producers' channels.
    """
    rng = np.random.RandomState(seed)
    for layer in model.layers:
        if isinstance(layer, L.BatchNormalization):
            n = layer.moving_mean.shape[0]
            if layer.gamma is not None:
                layer.gamma.assign(rng.uniform(0.5, 1.5, n).astype("float32"))
            layer.moving_variance.assign(rng.uniform(0.5, 2.0, n).astype("float32"))
        elif getattr(layer, "bias", None) is not None:
            zero = isinstance(layer, (L.DepthwiseConv2D, L.DepthwiseConv1D))
            value = 0 if zero else rng.normal(0, 0.1, layer.bias.shape)
            layer.bias.assign(np.broadcast_to(value, layer.bias.shape).astype("float32"))


def _masked_reference(model, sparsity=0.5, norm=2):
    """`model` with the removed channels of each removable group zeroed in its producers."""
    reference = _copy(model)
    for group in channel_groups(model):
        if not group.removable:
            continue
        producers = [model.get_layer(name) for name in group.producers]
        removed = _removed(producers, sparsity, norm, group.offsets, group.size)
        for name, first in zip(group.producers, group.offsets):
            layer = reference.get_layer(name)
            _zero(layer, _kernel_name(layer), first + removed)
            _zero(layer, "bias", first + removed, axis=0)
    return reference


def _outputs(model, x):
    return keras.ops.convert_to_numpy(model(x, training=False))


def _close(a, b):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_the_seed_cnn_loses_half_its_channels_and_predicts_as_the_masked_model():
    model = small_cnn()
    _randomize(model)
    x, _ = small_images(8)
    small = shrink(model, 0.5)
    assert [small.get_layer(index=i).output.shape[-1] for i in (0, 2, 4)] == [4, 4, 8]
    assert _outputs(small, x).shape == _outputs(model, x).shape
    # conv1 3*3*1*4+4, conv2 3*3*4*4+4, dense 9*4*8+8 (Flatten: 3x3 positions), out 8*4+4
    assert small.count_params() == 40 + 148 + 296 + 36
    _close(_outputs(small, x), _outputs(_masked_reference(model), x))


def test_batch_normalization_and_depthwise_weights_go_with_their_channels():
    x = keras.Input((6, 6, 2))
    h = L.Conv2D(6, 3, padding="same", name="conv")(x)
    h = L.BatchNormalization(name="bn")(h)
    h = L.DepthwiseConv2D(3, padding="same", name="dw")(h)
    h = L.ReLU()(h)
    y = L.Dense(3, name="out")(L.Flatten()(h))
    model = keras.Model(x, y)
    rng = _all_nonzero(model, seed=1)
    small = shrink(model, 0.5)
    assert small.get_layer("dw").kernel.shape == (3, 3, 3, 1)
    assert small.get_layer("bn").moving_mean.shape == (3,)
    reference = _copy(model)
    removed = _removed([model.get_layer("conv")])
    _zero_channels(reference.get_layer("conv"), removed)
    _zero_channels(reference.get_layer("bn"), removed)
    _zero(reference.get_layer("dw"), "kernel", removed, axis=-2)
    _zero(reference.get_layer("dw"), "bias", removed, axis=0)
    inputs = rng.rand(4, 6, 6, 2).astype("float32")
    _close(_outputs(small, inputs), _outputs(reference, inputs))


def test_group_normalization_loses_whole_groups_with_their_scale_and_shift():
    x = keras.Input((6, 6, 2))
    h = L.Conv2D(12, 3, padding="same", name="conv")(x)
    h = L.GroupNormalization(groups=4, name="gn")(h)  # runs of 3 channels
    h = L.Conv2D(5, 1, activation="relu", name="mid")(h)
    h = L.GroupNormalization(groups=-1, name="instance")(h)  # each channel alone
    y = L.Dense(3, name="out")(L.Flatten()(h))
    model = keras.Model(x, y)
    rng = _all_nonzero(model, seed=2)
    small = shrink(model, 0.5)
    assert (small.get_layer("gn").groups, small.get_layer("gn").gamma.shape) == (2, (6,))
    assert small.get_layer("instance").beta.shape == (3,)  # 5 - floor(2.5)
    # conv: the two runs of 3 with the lowest sums of channel norms, by a full sort
    kernel = _numpy(model.get_layer("conv").kernel).reshape(-1, 12).astype("float64")
    runs = np.sqrt((kernel**2).sum(axis=0)).reshape(4, 3).sum(axis=1)
    removed = (np.sort(np.argsort(runs)[:2])[:, None] * 3 + np.arange(3)).ravel()
    reference = _copy(model)
    mid = _removed([model.get_layer("mid")])
    for name, index in (("conv", removed), ("gn", removed), ("mid", mid), ("instance", mid)):
        _zero_channels(reference.get_layer(name), index)
    inputs = rng.rand(4, 6, 6, 2).astype("float32")
    _close(_outputs(small, inputs), _outputs(reference, inputs))


def test_a_channels_first_model_shrinks_as_its_channels_last_twin():
    last, first = image_twins()
    assert channel_groups(first) == channel_groups(last)
    small_last, small_first = shrink(last, 0.5), shrink(first, 0.5)
    names = ("c1", "c2", "c3", "squeeze", "excite", "c4")
    filters = [small_first.get_layer(name).filters for name in names]
    assert filters == [small_last.get_layer(name).filters for name in names]
    assert filters == [4, 4, 2, 2, 6, 3] and small_first.get_layer("gn").groups == 3
    x = np.random.RandomState(0).rand(4, 10, 10, 3).astype("float32")
    _close(_outputs(small_first, x.transpose(0, 3, 1, 2)), _outputs(small_last, x))


def test_residuals_concatenations_and_squeeze_excitation_shrink_exactly():
    x = keras.Input((8, 8, 3))
    a = L.Conv2D(8, 1, name="a")(x)
    b = L.BatchNormalization()(L.Conv2D(8, 3, padding="same", name="b")(x))
    s = L.Activation("relu")(L.Add()([a, b]))
    d = L.Conv2D(6, 1, activation="relu", name="d")(s)
    cat = L.Concatenate()([s, d])
    se = L.GlobalAveragePooling2D()(cat)
    se = L.Reshape((1, 1, 14))(se)
    se = L.Conv2D(4, 1, activation="relu", name="squeeze")(se)
    se = L.Conv2D(14, 1, activation="sigmoid", name="excite")(se)
    h = L.Multiply()([cat, se])
    h = L.SeparableConv2D(10, 3, depth_multiplier=2, activation="relu", name="sep")(h)
    y = L.Dense(3, name="out")(L.GlobalMaxPooling2D()(h))
    model = keras.Model(x, y)
    _randomize(model)
    small = shrink(model, 0.5)
    assert small.get_layer("excite").filters == 7  # the features' 4 + 3, one group each
    assert small.get_layer("sep").depthwise_kernel.shape == (3, 3, 7, 2)
    assert small.get_layer("sep").pointwise_kernel.shape == (1, 1, 14, 5)
    inputs = np.random.RandomState(0).rand(4, 8, 8, 3).astype("float32")
    _close(_outputs(small, inputs), _outputs(_masked_reference(model), inputs))


def test_a_transposed_convolution_produces_and_reads_channels_like_a_convolution():
    # A small U-Net: the upsampled features concatenated with the encoder's.
    x = keras.Input((8, 8, 3))
    e1 = L.Conv2D(8, 3, padding="same", activation="relu", name="e1")(x)
    e2 = L.Conv2D(12, 3, padding="same", activation="relu", name="e2")(L.MaxPooling2D()(e1))
    up = L.Conv2DTranspose(8, 3, strides=2, padding="same", activation="relu", name="up")(e2)
    h = L.Conv2D(6, 3, padding="same", activation="relu", name="fuse")(L.Concatenate()([up, e1]))
    model = keras.Model(x, L.Conv2D(2, 1, name="out")(h))
    _randomize(model)
    removable = {group.producers: group.removable for group in channel_groups(model)}
    assert removable == {("e1",): True, ("e2",): True, ("up",): True, ("fuse",): True,
                         ("out",): False}  # fmt: skip
    small = shrink(model, 0.5)
    assert small.get_layer("up").kernel.shape == (3, 3, 4, 6)  # (window, filters, inputs)
    assert small.get_layer("fuse").kernel.shape == (3, 3, 8, 3)

    reference = _copy(model)
    for name in ("e1", "e2", "fuse"):
        removed = _removed([model.get_layer(name)])
        _zero(reference.get_layer(name), "kernel", removed)
        _zero(reference.get_layer(name), "bias", removed, axis=0)
    kernel = np.moveaxis(_numpy(model.get_layer("up").kernel), -2, -1).reshape(-1, 8)
    scores = np.sqrt((kernel.astype("float64") ** 2).sum(axis=0))  # one per filter
    removed = np.sort(np.argsort(scores)[:4])
    _zero(reference.get_layer("up"), "kernel", removed, axis=-2)
    _zero(reference.get_layer("up"), "bias", removed, axis=0)
    inputs = np.random.RandomState(0).rand(4, 8, 8, 3).astype("float32")
    _close(_outputs(small, inputs), _outputs(reference, inputs))


def test_an_einsum_dense_on_the_last_axis_produces_and_reads_channels_like_a_dense():
    x = keras.Input((6, 16))
    h = L.EinsumDense("btd,de->bte", (6, 12), bias_axes="e", activation="relu", name="e1")(x)
    h = L.EinsumDense("btd,de->bte", (6, 8), name="e2")(h)  # reads e1's channels; no bias
    heads = L.EinsumDense("btd,dhk->bthk", (6, 2, 4), name="heads")(h)  # no Dense: e2 stays
    flat = L.Flatten()(L.Conv1D(4, 1, activation="relu", name="conv")(x))
    flat = L.EinsumDense("ab,bc->ac", 10, bias_axes="c", activation="relu", name="flat")(flat)
    y = L.Add()([L.Dense(2, name="out")(flat), L.Dense(2, name="out2")(L.Flatten()(heads))])
    model = keras.Model(x, y)
    _randomize(model)
    removable = {group.producers: group.removable for group in channel_groups(model)}
    assert removable == {("e1",): True, ("e2",): False, ("conv",): True, ("flat",): True,
                         ("out", "out2"): False}  # fmt: skip
    with pytest.warns(UserWarning, match="`heads` \\(EinsumDense\\) cannot lose channels"):
        small = shrink(model, 0.5)
    shapes = {layer.name: [tuple(w.shape) for w in layer.weights] for layer in small.layers}
    assert shapes["e1"] == [(16, 6), (6,)] and shapes["e2"] == [(6, 8)]
    assert shapes["heads"] == [(8, 2, 4)] and shapes["flat"] == [(12, 5), (5,)]
    assert small.get_layer("e1").get_config()["output_shape"] == (6, 6)
    assert small.get_layer("flat").get_config()["output_shape"] == (5,)
    inputs = np.random.RandomState(0).rand(4, 6, 16).astype("float32")
    _close(_outputs(small, inputs), _outputs(_masked_reference(model), inputs))


def test_flattened_branches_concatenated_into_a_dense_layer_lose_channels_at_every_position():
    image, extra = keras.Input((6, 6, 2)), keras.Input((3,))
    a = L.Conv2D(6, 3, activation="relu", name="a")(image)  # 4 x 4 positions
    b = L.Conv2D(4, 4, activation="relu", name="b")(image)  # 3 x 3 positions
    c = L.Dense(8, activation="relu", name="c")(extra)  # not flattened
    joined = L.Concatenate()([L.Flatten()(a), c, L.Flatten()(b)])
    h = L.Dense(10, activation="relu", name="h")(L.Dropout(0.1)(L.Activation("relu")(joined)))
    normalised = L.BatchNormalization(name="bn")(L.Concatenate()([L.Flatten()(a), h]))
    model = keras.Model([image, extra], L.Dense(3, name="out")(normalised))
    _randomize(model)
    reasons = {group.producers: group.reason for group in channel_groups(model)}
    assert [reasons[p] for p in [("b",), ("c",)]] == [None, None]
    # A per-feature layer after flattening would need a mask at each position.
    assert (
        reasons[("a",)]
        == reasons[("h",)]
        == "`bn` (BatchNormalization) reads it and cannot be shrunk"
    )
    with pytest.warns(UserWarning, match="keep every channel: a: `bn`"):
        small = shrink(model, 0.5)
    assert small.get_layer("b").filters == 2 and small.get_layer("c").units == 4
    assert small.get_layer("h").kernel.shape == (16 * 6 + 4 + 9 * 2, 10)
    rng = np.random.RandomState(0)
    inputs = [rng.rand(4, 6, 6, 2).astype("float32"), rng.rand(4, 3).astype("float32")]
    _close(_outputs(small, inputs), _outputs(_masked_reference(model), inputs))


@pytest.mark.parametrize("mask_zero", [False, True])
def test_an_embedding_loses_the_columns_of_its_table(mask_zero):
    ids = keras.Input((7,), dtype="int32")
    h = L.Embedding(30, 8, mask_zero=mask_zero, name="embedding")(ids)
    h = L.Dense(6, activation="relu", name="conv")(h)  # passes the padding mask on
    model = keras.Model(ids, L.Dense(2, name="out")(L.GlobalAveragePooling1D()(h)))
    _randomize(model)
    assert [g.producers for g in channel_groups(model) if g.removable] == [
        ("embedding",),
        ("conv",),
    ]
    small = shrink(model, 0.5)
    assert small.get_layer("embedding").embeddings.shape == (30, 4)
    assert small.get_layer("conv").kernel.shape == (4, 3)
    x = np.random.RandomState(0).randint(1, 30, (5, 7))
    x[:, 5:] = 0  # padding, which the pooling skips under mask_zero
    _close(_outputs(small, x), _outputs(_masked_reference(model), x))
    # A subclass may read its table elsewhere too (KerasHub's tied ReversibleEmbedding).
    tied = keras.Sequential([keras.Input((7,), dtype="int32"), _TiedEmbedding(30, 8, name="tied"),
                             L.Dense(4, name="d"), L.Dense(2, name="out")])  # fmt: skip
    reasons = {g.producers: g.reason for g in channel_groups(tied)}
    assert reasons[("d",)] is None and ("tied",) not in reasons


class _TiedEmbedding(L.Embedding):
    pass


@pytest.mark.parametrize("target", [(-1,), (32,)])
def test_a_reshape_to_one_axis_loses_channels_at_every_position_as_flatten(target):
    x = keras.Input((4, 4, 2))
    h = L.ActivityRegularization(l1=0.01)(L.Conv2D(8, 3, activation="relu", name="conv")(x))
    flat = L.Reshape(target, name="flat")(h)
    model = keras.Model(x, L.Dense(3, name="out")(flat))
    _randomize(model)
    assert [g.reason for g in channel_groups(model) if g.producers == ("conv",)] == [None]
    small = shrink(model, 0.5)
    assert small.get_layer("conv").filters == 4
    assert small.get_layer("out").kernel.shape == (2 * 2 * 4, 3)  # 2 x 2 positions
    assert small.get_layer("flat").output.shape == (None, 16)
    inputs = np.random.RandomState(0).rand(4, 4, 4, 2).astype("float32")
    _close(_outputs(small, inputs), _outputs(_masked_reference(model), inputs))
    # The same Reshape of channels-first maps maps each channel to a run; left whole.
    x = keras.Input((2, 4, 4))
    h = L.Conv2D(8, 3, data_format="channels_first", name="conv")(x)
    first = keras.Model(x, L.Dense(3, name="out")(L.Reshape((-1,), name="flat")(h)))
    (group,) = [g for g in channel_groups(first) if g.producers == ("conv",)]
    assert group.reason == "`flat` (Reshape) reads it and cannot be shrunk"


@pytest.mark.parametrize("shared_axes, alpha_shape", [([1, 2], (1, 1, 3)), ([3], (6, 6, 1))])
def test_prelu_slopes_go_with_their_channels_unless_shared_across_them(shared_axes, alpha_shape):
    x = keras.Input((8, 8, 3))
    slopes = keras.initializers.RandomUniform(0.1, 0.5, seed=1)
    h = L.Conv2D(6, 3, name="conv")(x)
    h = L.PReLU(alpha_initializer=slopes, shared_axes=shared_axes, name="prelu")(h)
    model = keras.Model(x, L.Dense(2, name="out")(L.Flatten()(L.Conv2D(4, 3, name="next")(h))))
    _randomize(model)
    assert [group.removable for group in channel_groups(model)] == [True, True, False]
    small = shrink(model, 0.5)
    assert small.get_layer("prelu").alpha.shape == alpha_shape
    inputs = np.random.RandomState(0).normal(size=(4, 8, 8, 3)).astype("float32")
    _close(_outputs(small, inputs), _outputs(_masked_reference(model), inputs))


def test_keras_ops_tie_and_pass_channels_as_the_layers_that_do_the_same():
    ops = keras.ops
    x = keras.Input((8, 8, 3))
    a = L.Conv2D(6, 3, padding="same", name="a")(x)
    b = L.Conv2D(6, 3, padding="same", name="b")(ops.relu(a))
    h = a + b  # a residual written as an op: one group
    h = h * ops.sigmoid(h)  # swish by hand: 0 stays 0
    h = ops.maximum(h, ops.leaky_relu(h, 0.2))
    g = L.Conv2D(4, 1, name="g")(h)
    gate = L.Conv2D(5, 1, name="gate")(h)
    s = L.Conv2D(5, 1, name="s")(ops.sigmoid(gate))  # a removed channel would read 0.5
    model = keras.Model(x, L.Dense(2, name="out")(L.Flatten()(L.Concatenate()([g, s]))))
    _randomize(model)
    reasons = {group.producers: group.reason for group in channel_groups(model)}
    assert [reasons[p] for p in [("a", "b"), ("g",), ("s",)]] == [None, None, None]
    assert reasons[("gate",)].startswith("`s` would read a nonzero value")
    with pytest.warns(UserWarning, match="keep every channel: gate: `s` would read"):
        small = shrink(model, 0.5)
    assert small.get_layer("b").kernel.shape == (3, 3, 3, 3)
    assert small.get_layer("gate").filters == 5
    inputs = np.random.RandomState(0).normal(size=(4, 8, 8, 3)).astype("float32")
    _close(_outputs(small, inputs), _outputs(_masked_reference(model), inputs))


@pytest.mark.parametrize("norm", [1, 2])
def test_importance_picks_the_channels_a_full_sort_picks(norm):
    model = small_cnn()
    _randomize(model)
    small = shrink(model, 0.75, importance=f"l{norm}")
    kept = np.setdiff1d(np.arange(8), _removed([model.get_layer(index=0)], 0.75, norm))
    np.testing.assert_array_equal(
        _numpy(small.get_layer(index=0).kernel), _numpy(model.get_layer(index=0).kernel)[..., kept]
    )


def test_a_callable_importance_and_round_to():
    model = small_cnn()
    first = model.get_layer(index=0)

    def by_index(weights):  # keeps the highest-numbered channels
        return np.arange(weights[0].shape[0])

    small = shrink(model, 0.5, importance=by_index)
    np.testing.assert_array_equal(
        _numpy(small.get_layer(index=0).kernel), _numpy(first.kernel)[..., 4:]
    )
    rounded = shrink(model, 0.9, round_to=4)  # 8 -> 1 rounds up to 4; 16 -> 2 rounds up to 4
    assert [rounded.get_layer(index=i).output.shape[-1] for i in (0, 2, 4)] == [4, 4, 4]
    with pytest.raises(ValueError, match="`importance` must return 8 finite scores"):
        shrink(model, 0.5, importance=lambda weights: np.zeros(3))


def _global_kept(layers, sparsity):
    """Kept channels of single-producer groups with one threshold: each layer's
    L2 norms divided by their mean, all of them sorted together."""
    scores = [
        np.sqrt((_numpy(la.kernel).astype("float64") ** 2).reshape(-1, la.kernel.shape[-1]).sum(0))
        for la in layers
    ]
    values = np.sort(np.concatenate([s / s.mean() for s in scores]))
    threshold = values[int(np.floor(sparsity * len(values))) - 1]
    return [np.flatnonzero(s / s.mean() > threshold) for s in scores]


def test_global_pruning_removes_the_lowest_normalised_scores_of_all_groups():
    model = small_cnn()
    _randomize(model)
    first = model.get_layer(index=0)
    kernel = _numpy(first.kernel)
    kernel[..., :6] *= 0.05  # six of conv1's eight channels matter little next to the others
    first.kernel.assign(kernel * 100)  # its scale as a whole does not count
    layers = [model.get_layer(index=i) for i in (0, 2, 4)]
    kept = _global_kept(layers, 0.5)
    assert len(kept[0]) == 2  # not the 4 that uniform pruning keeps
    small = shrink(model, 0.5, global_pruning=True)
    for i, k in zip((0, 2, 4), kept):
        assert small.get_layer(index=i).output.shape[-1] == len(k)
    np.testing.assert_array_equal(
        _numpy(small.get_layer(index=0).kernel), _numpy(first.kernel)[..., kept[0]]
    )
    reference = _copy(model)
    for layer, k in zip(layers, kept):
        removed = np.setdiff1d(np.arange(layer.kernel.shape[-1]), k)
        _zero(reference.get_layer(layer.name), "kernel", removed)
        _zero(reference.get_layer(layer.name), "bias", removed, axis=0)
    x, _ = small_images(8)
    _close(_outputs(small, x), _outputs(reference, x))
    rounded = shrink(model, 0.9, global_pruning=True, round_to=4)  # every group keeps 4 or more
    assert all(rounded.get_layer(index=i).output.shape[-1] % 4 == 0 for i in (0, 2, 4))


@pytest.mark.slow
def test_the_original_is_untouched_and_the_result_trains_saves_and_loads_without_keras_prune(
    tmp_path,
):
    x, y = small_images(128)
    model = small_cnn()
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x, y, epochs=4, batch_size=32, verbose=0)
    before = [w.copy() for w in model.get_weights()]
    small = shrink(model, 0.5)
    for old, new in zip(before, model.get_weights()):
        np.testing.assert_array_equal(old, new)
    small.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    history = small.fit(x, y, epochs=3, batch_size=32, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0]
    assert all(type(layer).__module__.startswith("keras.") for layer in small.layers)
    path = tmp_path / "small.keras"
    small.save(path)
    np.save(tmp_path / "x.npy", x[:8])
    np.save(tmp_path / "expected.npy", _outputs(small, x[:8]))
    code = (
        "import sys, keras, numpy as np; d = sys.argv[1]; "
        "m = keras.saving.load_model(d + '/small.keras'); "
        "out = keras.ops.convert_to_numpy(m(np.load(d + '/x.npy'), training=False)); "
        "np.testing.assert_allclose(out, np.load(d + '/expected.npy'), rtol=1e-5, atol=1e-6); "
        "assert 'keras_prune' not in sys.modules"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)],
        capture_output=True,
        text=True,
        env=os.environ,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]


def test_a_base_model_inside_a_sequential_model_shrinks_as_one_graph():
    """Transfer learning's shape: a keras.applications base, pooling, a new head.
    Shrunk, it predicts what the same layers wired without nesting do."""
    base = keras.applications.MobileNetV2(
        weights=None, include_top=False, input_shape=(32, 32, 3), alpha=0.35
    )
    head = L.Dense(10, name="head")
    nested = keras.Sequential([keras.Input((32, 32, 3)), base, L.GlobalAveragePooling2D(), head])
    _randomize(base)
    wired = keras.Model(base.input, head(L.GlobalAveragePooling2D()(base.output)))
    small = shrink(nested, 0.5)
    assert not any(isinstance(layer, keras.Model) for layer in small.layers)
    # Conv_1's 1280 channels feed the head through the pooling, so they shrink too.
    assert (
        small.get_layer("Conv_1").filters == 640 and small.get_layer("head").kernel.shape[0] == 640
    )
    inputs = np.random.RandomState(0).rand(2, 32, 32, 3).astype("float32")
    _close(_outputs(small, inputs), _outputs(shrink(wired, 0.5), inputs))
    _close(_outputs(small, inputs), _outputs(_masked_reference(wired), inputs))


@pytest.mark.slow
@pytest.mark.parametrize(
    "name, build",
    [
        (
            "MobileNetV2",
            lambda: keras.applications.MobileNetV2(
                weights=None, input_shape=(32, 32, 3), alpha=0.35, classes=10
            ),
        ),
        (
            "ResNet50",
            lambda: keras.applications.ResNet50(weights=None, input_shape=(32, 32, 3), classes=10),
        ),
        (
            "EfficientNetB0",
            lambda: keras.applications.EfficientNetB0(
                weights=None, input_shape=(32, 32, 3), classes=10
            ),
        ),
        (
            "DenseNet121",
            lambda: keras.applications.DenseNet121(
                weights=None, input_shape=(32, 32, 3), classes=10
            ),
        ),
        (
            "VGG16",
            lambda: keras.applications.VGG16(weights=None, input_shape=(32, 32, 3), classes=10),
        ),
        (  # hard sigmoid and hard swish built of `x + 3.0`, `x * (1 / 6)` ops
            "MobileNetV3Small",
            lambda: keras.applications.MobileNetV3Small(
                weights=None, input_shape=(32, 32, 3), classes=10, classifier_activation=None
            ),
        ),
    ],
)
def test_keras_applications_shrink_to_the_masked_models_predictions(name, build):
    model = build()
    _randomize(model)
    small = shrink(model, 0.5, round_to=2)
    assert small.count_params() < 0.4 * model.count_params()
    inputs = np.random.RandomState(0).rand(2, 32, 32, 3).astype("float32") * 255
    reference = _masked_reference(model, sparsity=0.5)
    _close(_outputs(small, inputs), _outputs(reference, inputs))


def test_bad_arguments_are_named():
    model = small_cnn()
    with pytest.raises(ValueError, match="`sparsity` must be in \\[0, 1\\)"):
        shrink(model, 1.0)
    with pytest.raises(TypeError, match="`sparsity`"):
        shrink(model, "half")
    with pytest.raises(ValueError, match="`importance` must be 'l1', 'l2' or a callable; got 'l3'"):
        shrink(model, 0.5, importance="l3")
    with pytest.raises(ValueError, match="`round_to` must be >= 1"):
        shrink(model, 0.5, round_to=0)
    with pytest.raises(TypeError, match="`global_pruning` must be True or False; got 1"):
        shrink(model, 0.5, global_pruning=1)
    only_output = keras.Sequential([keras.Input((4,)), L.Dense(2)])
    with pytest.raises(
        ValueError, match="`model` has no channel group that shrink can remove: it reaches the"
    ):
        shrink(only_output, 0.5)
    quantized = keras.Sequential([keras.Input((4,)), L.Dense(8, name="hidden"), L.Dense(2)])
    quantized.quantize("int8")
    with pytest.raises(
        ValueError,
        match="remove: .*`hidden` \\(Dense\\) is quantized \\(int8\\): shrink the float",
    ):
        shrink(quantized, 0.5)  # no producer can shrink: the reasons of every group
    with_lora = keras.Sequential([keras.Input((4,)), L.Dense(8, name="hidden"), L.Dense(2)])
    with_lora.get_layer("hidden").enable_lora(2)
    with pytest.raises(ValueError, match="`hidden` \\(Dense\\) has LoRA enabled"):
        shrink(with_lora, 0.5)


def test_select_shrinks_only_the_groups_of_the_layers_it_picks():
    x = keras.Input((8, 8, 1))
    h = L.Conv2D(8, 3, activation="relu", name="c1")(x)
    inner = keras.Sequential([keras.Input((6, 6, 8)), L.Conv2D(8, 3, name="c2")], name="inner")
    h = L.Dense(8, activation="relu", name="d")(L.GlobalAveragePooling2D()(inner(h)))
    model = keras.Model(x, L.Dense(2, name="out")(h))
    _randomize(model)
    small = shrink(model, 0.5, select=[inner.get_layer("c2"), "d"])  # inside a nested model too
    assert [small.get_layer(n).kernel.shape[-1] for n in ("c1", "c2", "d")] == [8, 4, 4]
    reference = _copy(model)  # a full sort of c2's and d's channels, zeroed by hand
    for name in ("c2", "d"):
        removed = _removed([model.get_layer(name) if name == "d" else inner.get_layer(name)])
        layer = reference.get_layer(name) if name == "d" else reference.get_layer("inner").layers[0]
        _zero_channels(layer, removed)
    inputs = np.random.RandomState(0).rand(4, 8, 8, 1).astype("float32")
    _close(_outputs(small, inputs), _outputs(reference, inputs))
    by_class = shrink(model, 0.5, select=L.Conv2D)
    assert [by_class.get_layer(n).kernel.shape[-1] for n in ("c1", "c2", "d")] == [4, 4, 8]
    with pytest.raises(ValueError, match="not in the model: \\['c9'\\]. Select layers of the "
                       "model passed as `model`"):  # fmt: skip
        shrink(model, 0.5, select=["c1", "c9"])
    with pytest.raises(ValueError, match="`select` picks out, whose channels cannot be removed: "
                       "it reaches the model output"):  # fmt: skip
        shrink(model, 0.5, select="out")
    with pytest.raises(TypeError, match="`select` must be None, a layer, a layer name"):
        shrink(model, 0.5, select=3)
    masked = keras_prune.prune_channels(model, keras_prune.ConstantSparsity(0.5, 0))
    with pytest.raises(ValueError, match="`select` must be left out; got .* select='d'"):
        shrink(masked, select="d")


def test_a_model_pruned_by_weights_must_be_stripped_first():
    import keras_prune

    pruned = keras_prune.prune_low_magnitude(small_cnn(), keras_prune.ConstantSparsity(0.5, 0))
    with pytest.raises(ValueError, match="strip_pruning"):
        shrink(pruned, 0.5)


def test_a_channel_masked_model_quantized_before_shrink_is_refused_whole():
    import keras_prune

    model = keras.Sequential([keras.Input((4,)), L.Dense(8, name="hidden"), L.Dense(2)])
    masked = keras_prune.prune_channels(model, keras_prune.ConstantSparsity(0.5, 0))
    masked.quantize("int8")
    with pytest.raises(ValueError, match=r"quantized after prune_channels \(`hidden` \(int8\)"):
        shrink(masked)


def test_layers_it_cannot_shrink_are_left_whole_with_a_warning():
    x = keras.Input((6, 4))
    a = L.Dense(8, name="a")(x)
    b = L.Dense(8, name="b")(L.LayerNormalization(name="norm")(a))
    y = L.Dense(2, name="out")(L.Activation("relu")(b))
    model = keras.Model(x, y)
    with pytest.warns(UserWarning, match="1 channel group\\(s\\) keep every channel: a: `norm`"):
        small = shrink(model, 0.5)
    assert small.get_layer("a").units == 8 and small.get_layer("b").units == 4


class _Block(keras.layers.Layer):
    """A custom layer with a Dense inside and no graph of its own."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.dense = L.Dense(8, activation="relu", name="hidden")

    def call(self, x):
        return self.dense(x)


def test_layers_whose_own_channels_stay_are_named_in_the_warning():
    x = keras.Input((4,))
    a = L.Dense(8, activation="relu", name="a")(x)
    block = _Block(name="block")(a)
    shared = L.Dense(8, activation="relu", name="shared")
    c = L.Dense(8, activation="relu", name="c")(x)
    y = L.Dense(2, name="out")(L.Concatenate()([shared(block), shared(a), c]))
    model = keras.Model(x, y)
    with pytest.warns(UserWarning) as caught:
        small = shrink(model, 0.5)
    (message,) = [str(w.message) for w in caught if "keep" in str(w.message)]
    assert message.startswith("1 channel group(s) keep every channel: a: `block` (_Block) reads")
    assert message.endswith(
        "2 layer(s) keep all their channels: `block` (_Block) holds layers that the walk does "
        "not look into; `shared` is called 2 times"
    )
    assert small.get_layer("c").units == 4  # the rest shrinks
    assert small.get_layer("block").dense.units == 8 and small.get_layer("shared").units == 8

    x = keras.Input((5, 4))
    y = L.Dense(2, name="out")(L.TimeDistributed(L.Dense(8), name="steps")(x))
    with pytest.raises(ValueError, match="`steps` \\(TimeDistributed\\) holds layers that"):
        shrink(keras.Model(x, y), 0.5)  # the only error: nothing else to remove


def test_a_grouped_convolution_keeps_its_channels_and_says_why():
    x = keras.Input((8, 8, 4))
    a = L.Conv2D(8, 3, activation="relu", name="a")(x)
    grouped = L.Conv2D(16, 3, groups=4, activation="relu", name="grouped")(a)
    b = L.Conv2D(8, 1, activation="relu", name="b")(grouped)
    model = keras.Model(x, L.Dense(3, name="out")(L.Flatten()(b)))
    with pytest.warns(UserWarning) as caught:
        small = shrink(model, 0.5)
    (message,) = [str(w.message) for w in caught if "keep" in str(w.message)]
    assert message == (
        "1 channel group(s) keep every channel: a: `grouped` is a grouped convolution "
        "(groups=4). 1 layer(s) keep all their channels: `grouped` is a grouped convolution "
        "(groups=4)"
    )
    assert [small.get_layer(n).filters for n in ("a", "grouped", "b")] == [8, 16, 4]


def _pooled_text_model(mask_zero):
    ids = keras.Input((6,), dtype="int32")
    x = L.Embedding(20, 8, mask_zero=mask_zero, name="embed")(ids)
    x = L.GlobalAveragePooling1D()(L.Dense(16, activation="relu", name="hidden")(x))
    return keras.Model(ids, L.Dense(2, name="out")(x))


def test_a_pooling_layer_that_reads_a_padding_mask_still_passes_channels_through():
    # Keras passes Embedding(mask_zero=True)'s mask to the pooling as an input;
    # it used to leave `hidden` whole ("reads it and cannot be shrunk").
    keras.utils.set_random_seed(0)
    model = _pooled_text_model(mask_zero=True)
    ids = np.random.default_rng(0).integers(1, 20, (8, 6)).astype("int32")
    ids[:, 3:] = 0  # padding, which the average skips
    masked = keras_prune.prune_channels(model, keras_prune.ConstantSparsity(0.5, 0, frequency=1))
    masked.compile("sgd", "mse")
    masked.fit(ids, np.zeros((8, 2)), verbose=0, callbacks=[keras_prune.UpdatePruningStep()])
    small = shrink(masked)
    assert small.get_layer("hidden").units == 8
    expected = masked.predict(ids, verbose=0)
    np.testing.assert_allclose(small.predict(ids, verbose=0), expected, rtol=1e-4, atol=1e-6)
    plain = shrink(_pooled_text_model(mask_zero=False), 0.5)  # the same shapes, no mask
    plain.set_weights(small.get_weights())
    assert not np.allclose(plain.predict(ids, verbose=0), expected, atol=1e-3)  # the mask counts


def test_recurrent_layers_are_named_where_they_keep_their_units():
    x = keras.Input((5, 4))
    lstm = L.LSTM(8, return_sequences=True, name="lstm")(x)
    both = L.Bidirectional(L.GRU(8), name="both")(lstm)
    y = L.Dense(2, name="out")(L.Dense(8, activation="relu", name="hidden")(both))
    with pytest.warns(UserWarning) as caught:
        small = shrink(keras.Model(x, y), 0.5)
    (message,) = [str(w.message) for w in caught if "keep" in str(w.message)]
    assert message == (
        "2 layer(s) keep all their channels: `both` (Bidirectional) holds a recurrent layer: "
        "shrink does not remove its units; `lstm` (LSTM) is recurrent: shrink does not remove "
        "its units"
    )
    assert small.get_layer("hidden").units == 4 and small.get_layer("lstm").units == 8

    y = L.Dense(2, name="out")(L.LSTM(8, name="lstm")(x))
    with pytest.raises(ValueError, match="of `out`; `lstm` \\(LSTM\\) is recurrent: shrink"):
        shrink(keras.Model(x, y), 0.5)  # it used to name only the output


def test_a_transformer_encoder_loses_heads_and_ffn_units_and_keeps_its_width():
    model = small_encoder()
    _randomize(model)
    groups = {g.producers: g for g in channel_groups(model)}
    assert groups[("attention_0",)].size == 4 and groups[("attention_0",)].removable
    assert groups[("ffn_0_in",)].removable
    assert "LayerNormalization" in groups[("ffn_0_out",)].reason  # the residual width stays
    with pytest.warns(UserWarning, match="keep every channel"):
        small = shrink(model, 0.5)
    assert small.get_layer("attention_1").num_heads == 2
    assert small.get_layer("attention_1").query_dense.kernel.shape == (16, 2, 4)
    assert small.get_layer("ffn_1_in").units == 16 and small.get_layer("ffn_1_out").units == 16
    reference = _copy(model)
    for i in range(2):
        original = model.get_layer(f"attention_{i}")
        heads = np.concatenate(
            [
                np.moveaxis(_numpy(p.kernel), 1, 0).reshape(4, -1)
                for p in (original.query_dense, original.key_dense, original.value_dense)
            ]
            + [_numpy(original.output_dense.kernel).reshape(4, -1)],
            axis=1,
        )
        removed = np.sort(np.argsort((heads.astype("float64") ** 2).sum(axis=1))[:2])
        attention = reference.get_layer(f"attention_{i}")
        _zero(attention.value_dense, "kernel", removed, axis=1)  # a removed head outputs 0
        _zero(attention.value_dense, "bias", removed, axis=0)
        ffn = reference.get_layer(f"ffn_{i}_in")
        removed = _removed([model.get_layer(f"ffn_{i}_in")])
        _zero(ffn, "kernel", removed)
        _zero(ffn, "bias", removed, axis=0)
    ids = np.random.RandomState(0).randint(0, 50, (4, 6))
    _close(_outputs(small, ids), _outputs(reference, ids))


def test_a_group_query_attention_loses_whole_groups_of_query_heads_with_their_key_and_value():
    x = keras.Input((6, 16))
    h = L.GroupQueryAttention(4, num_query_heads=6, num_key_value_heads=3, name="attention")(x, x)
    model = keras.Model(x, L.Dense(2, name="out")(L.LayerNormalization()(L.Add()([x, h]))))
    _all_nonzero(model, seed=1)
    (group,) = [g for g in channel_groups(model) if g.producers == ("attention",)]
    assert group.size == 3 and group.removable
    small = shrink(model, 0.34)  # one of the three groups
    attention = small.get_layer("attention")
    assert (attention.num_query_heads, attention.num_key_value_heads) == (4, 2)

    # A group's weights, by hand: query heads 2g and 2g + 1 (Keras repeats each
    # key and value head in place), key and value head g, the output rows of
    # the query heads. The lowest L2 norm goes.
    weights = model.get_layer("attention").weights
    kernels = {w.path.split("/")[-2]: _numpy(w) for w in weights if w.path.endswith("kernel")}
    query = np.moveaxis(kernels["query"], 1, 0).reshape(3, -1)  # (16, 6, 4): 2 heads a group
    key, value = (np.moveaxis(kernels[k], 1, 0).reshape(3, -1) for k in ("key", "value"))
    output = kernels["attention_output"].reshape(3, -1)  # (6, 4, 16)
    norms = (np.concatenate([query, key, value, output], axis=1) ** 2).sum(axis=1)
    removed = int(np.argmin(norms))
    reference = _copy(model)
    value_dense = [
        la for la in keras_prune._keras.flatten_layers(reference.get_layer("attention"))
        if la.name == "value"
    ][0]  # fmt: skip
    _zero(value_dense, "kernel", [removed], axis=1)  # its query heads then add nothing
    _zero(value_dense, "bias", [removed], axis=0)
    inputs = np.random.RandomState(0).normal(size=(4, 6, 16)).astype("float32")
    _close(_outputs(small, inputs), _outputs(reference, inputs))
    assert not np.allclose(_outputs(model, inputs), _outputs(reference, inputs), atol=1e-3)


@pytest.mark.parametrize("kind", ["MultiHeadAttention", "GroupQueryAttention"])
def test_a_gated_attention_keeps_its_heads_and_says_why(kind):
    x = keras.Input((6, 16))
    if kind == "MultiHeadAttention":
        attention = L.MultiHeadAttention(4, 4, use_gate=True, name="attention")
    else:
        attention = L.GroupQueryAttention(4, 4, 2, use_gate=True, name="attention")
    h = L.Dense(8, activation="relu", name="hidden")(L.Add()([x, attention(x, x)]))
    model = keras.Model(x, L.Dense(2, name="out")(h))
    why = f"`attention` \\({type(attention).__name__}\\) has a gate \\(use_gate=True\\)"
    with pytest.warns(UserWarning, match=f"1 layer\\(s\\) keep all their channels: {why}"):
        small = shrink(model, 0.5)
    assert small.get_layer("hidden").units == 4
    with pytest.raises(ValueError, match=f"`select` picks attention, whose channels stay: {why}"):
        keras_prune.prune_channels(model, keras_prune.ConstantSparsity(0.5, 0), select="attention")


def test_an_operation_that_is_not_a_layer_is_kept_in_the_graph():
    # `h[:, 0]` is a GetItem operation: it has no weights to copy, and stops its group.
    x = keras.Input((6, 4))
    h = L.Dense(8, activation="relu", name="a")(x)
    h = L.Dense(8, activation="relu", name="b")(h)
    model = keras.Model(x, L.Dense(2, name="out")(h[:, 0]))
    _randomize(model)
    with pytest.warns(UserWarning, match="b: `get_item` \\(GetItem\\) reads it"):
        small = shrink(model, 0.5)
    assert small.get_layer("a").units == 4 and small.get_layer("b").units == 8
    reference = _copy(model)
    removed = _removed([model.get_layer("a")])
    _zero(reference.get_layer("a"), "kernel", removed)
    _zero(reference.get_layer("a"), "bias", removed, axis=0)
    x = np.random.RandomState(0).normal(size=(4, 6, 4)).astype("float32")
    _close(_outputs(small, x), _outputs(reference, x))


def test_inception_resnets_scaled_residual_sum_ties_its_inputs_and_shrinks():
    # InceptionResNetV2's residual: inputs[0] + inputs[1] * scale, a layer Keras does not export.
    from keras.src.applications.inception_resnet_v2 import CustomScaleLayer  # noqa: PLC0415

    x = keras.Input((6, 6, 3))
    a = L.Conv2D(8, 3, padding="same", activation="relu", name="a")(x)
    b = L.Conv2D(8, 1, name="b")(a)
    h = L.Conv2D(8, 1, activation="relu", name="c")(CustomScaleLayer(0.17, name="sum")([a, b]))
    model = keras.Model(x, L.Dense(2, name="out")(L.GlobalAveragePooling2D()(h)))
    _randomize(model)
    groups = {group.producers: group for group in channel_groups(model)}
    assert groups[("a", "b")].removable and groups[("c",)].removable
    small = shrink(model, 0.5)
    assert [small.get_layer(n).filters for n in "abc"] == [4, 4, 4]
    inputs = np.random.RandomState(0).normal(size=(2, 6, 6, 3)).astype("float32")
    _close(_outputs(small, inputs), _outputs(_masked_reference(model), inputs))

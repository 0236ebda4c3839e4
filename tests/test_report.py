"""Tests for keras_prune.report: flops counted by hand, sparsity_report of channel masks."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from conftest import small_cnn, small_images

import keras_prune

L = keras.layers


def test_flops_are_two_per_multiply_add_of_each_kernel_entry_and_output_position():
    x = keras.Input((10, 10, 3))
    h = L.Conv2D(4, 3, name="conv")(x)  # 8x8 positions x 3*3*3*4 entries
    h = L.DepthwiseConv2D(3, padding="same")(h)  # 8x8 x 3*3*4*1
    h = L.SeparableConv2D(6, 1)(h)  # 8x8 x (1*1*4*1 + 1*1*4*6)
    h = L.BatchNormalization()(h)  # not counted
    y = L.Dense(5)(L.Flatten()(h))  # 1 x 384*5
    model = keras.Model(x, y)
    expected = 64 * 108 + 64 * 36 + 64 * (4 + 24) + 384 * 5
    assert keras_prune.flops(model) == 2 * expected
    sequence = keras.Sequential([keras.Input((7, 4)), L.Dense(3)])  # 7 positions x 12
    assert keras_prune.flops(sequence) == 2 * 7 * 12
    # A transposed convolution spreads each input position over its window:
    # 5x5 input positions x 3*3*6*4 entries (its 10x10 output would count 4x too many).
    up = keras.Sequential(
        [keras.Input((5, 5, 4)), L.Conv2DTranspose(6, 3, strides=2, padding="same")]
    )
    assert up.compute_output_shape((None, 5, 5, 4)) == (None, 10, 10, 6)
    assert keras_prune.flops(up) == 2 * 25 * 216
    # channels_first: the positions are the axes after the channels
    first = keras.Sequential(
        [
            keras.Input((3, 10, 9)),
            L.Conv2D(4, 3, data_format="channels_first"),  # 8x7 positions x 3*3*3*4
            L.Conv2DTranspose(2, 1, data_format="channels_first"),  # 8x7 x 1*1*2*4
        ]
    )
    assert keras_prune.flops(first) == 2 * (56 * 108 + 56 * 8)


def test_flops_count_every_call_and_nested_models_and_refuse_subclassed_models():
    shared = L.Dense(4)
    x = keras.Input((4,))
    twice = keras.Model(x, shared(shared(x)))
    assert keras_prune.flops(twice) == 2 * 2 * 16
    outer = keras.Input((4,))
    assert keras_prune.flops(keras.Model(outer, L.Dense(2)(twice(outer)))) == 64 + 2 * 8
    with pytest.raises(TypeError, match="`model` must be a keras.Model"):
        keras_prune.flops(L.Dense(3))

    class Net(keras.Model):
        def call(self, x):
            return x

    with pytest.raises(ValueError, match="subclassed Net"):
        keras_prune.flops(Net())


@pytest.mark.slow  # trains
def test_sparsity_report_counts_the_channels_a_channel_mask_removes():
    x, y = small_images(64)
    masked = keras_prune.prune_channels(
        small_cnn(), keras_prune.PolynomialDecay(0.0, 0.75, 0, 2, frequency=1)
    )
    masked.compile("sgd", "sparse_categorical_crossentropy")
    masked.fit(x, y, batch_size=32, epochs=1, verbose=0)
    report = keras_prune.sparsity_report(masked)
    assert not report.unpruned  # the ChannelMask layers are not "unknown layers"
    small = keras_prune.shrink(masked)
    rows = {row.layer: row for row in report}
    assert len(rows) == 4
    for layer in small.layers:
        if layer.name in rows:  # the shrunk kernel keeps the channels the report does not count
            original = masked.get_layer(layer.name).kernel.shape[-1]
            assert rows[layer.name].sparsity == pytest.approx(1 - layer.kernel.shape[-1] / original)
    assert [rows[name].sparsity for name in rows][:3] == [0.75, 0.75, 0.75]


def test_sparsity_report_names_a_normalization_mask_in_a_sequential_model():
    layers = keras.layers
    model = keras.Sequential(
        [
            keras.Input((10, 10, 1)),
            layers.Conv2D(8, 3, name="c"),
            layers.BatchNormalization(name="bn"),
            layers.ReLU(),
            layers.MaxPooling2D(),
            layers.Flatten(),
            layers.Dense(3, name="out"),
        ]
    )
    masked = keras_prune.prune_channels(model, keras_prune.ConstantSparsity(0.5, 0))
    assert [type(la).__name__ for la in masked.layers][:2] == ["Conv2D", "NormalizationMask"]
    masked.get_layer("c_channel_mask").mask.assign([1.0, 0.0] * 4)
    report = keras_prune.sparsity_report(masked)
    assert not report.unpruned
    (row,) = [row for row in report if row.layer == "c"]
    assert (
        row.sparsity == 0.5
        and row.note == "4 of 8 output channels removed by its NormalizationMask"
    )
    small = keras_prune.shrink(masked)
    assert (
        small.get_layer("bn").gamma.shape == (4,) and small.get_layer("out").kernel.shape[0] == 64
    )
    images = np.random.RandomState(0).rand(4, 10, 10, 1).astype("float32")
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(small(images)), keras.ops.convert_to_numpy(masked(images)),
        rtol=1e-4, atol=1e-6,
    )  # fmt: skip


def test_sparsity_report_counts_the_heads_a_head_mask_removes():
    x = keras.Input((5, 8))
    h = keras.layers.MultiHeadAttention(4, 2, name="attention")(x, x)
    model = keras.Model(x, keras.layers.Dense(2, name="out")(keras.layers.Add()([x, h])))
    masked = keras_prune.prune_channels(model, keras_prune.ConstantSparsity(0.5, 0))
    (head_mask,) = [la for la in masked.layers if isinstance(la, keras_prune.HeadMask)]
    head_mask.mask.assign([1.0, 0.0, 0.0, 1.0])  # as two pruning steps of training leave it
    report = keras_prune.sparsity_report(masked)
    assert not report.unpruned
    rows = {row.weight: row for row in report if row.layer == "attention"}
    assert sorted(rows) == [
        "attention_output/kernel",
        "key/kernel",
        "query/kernel",
        "value/kernel",
    ]
    for row in rows.values():  # half of every kernel: a removed head's slice
        assert row.sparsity == 0.5 and row.note == "2 of 4 heads removed by its HeadMask"
    # A head's slice of the (8, 4, 2) key kernel is 8 x 2 entries; two heads go.
    assert rows["key/kernel"].zeros == 2 * 8 * 2


def test_a_group_query_attention_is_reported_as_a_multi_head_attention_is():
    x = keras.Input((5, 8))
    attention = L.GroupQueryAttention(2, num_query_heads=4, num_key_value_heads=2, name="attention")
    model = keras.Model(x, L.Dense(2, name="out")(attention(x, x)))
    schedule = keras_prune.ConstantSparsity(0.5, 0, frequency=1)
    pruned = keras_prune.prune_low_magnitude(model, schedule)
    pruned.compile("sgd", "mse")
    data = np.random.RandomState(0).rand(4, 5, 8).astype("float32")
    callbacks = [keras_prune.UpdatePruningStep()]
    pruned.fit(data, data[:, :, :2], batch_size=2, verbose=0, callbacks=callbacks)
    stripped = keras_prune.strip_pruning(pruned)
    kernels = {  # the projections, found by their paths
        v.path.split("/")[-2] + "/kernel": v
        for v in stripped.get_layer("attention").weights
        if v.path.endswith("kernel")
    }
    rows = [row for row in keras_prune.sparsity_report(stripped) if row.layer == "attention"]
    names = ["query/kernel", "key/kernel", "value/kernel", "attention_output/kernel"]
    assert [row.weight for row in rows] == names
    for row in rows:
        zeros = np.count_nonzero(keras.ops.convert_to_numpy(kernels[row.weight]) == 0)
        assert row.zeros == zeros and row.sparsity == pytest.approx(0.5, abs=0.02)


def test_flops_count_attention_and_einsum_dense_by_hand():
    from conftest import small_encoder

    # 2 blocks of 6 tokens, width 16, 4 heads of 4: per block the four
    # projections (16*4*4 entries each, 6 positions), scores and weighted sum
    # (4 heads x 6 x 6 x (4 + 4)), and the FFN (6 x (16*32 + 32*16)); out 16*3.
    attention = 4 * 6 * 16 * 16 + 4 * 6 * 6 * 8
    expected = 2 * (attention + 6 * 2 * 16 * 32) + 16 * 3
    model = small_encoder()
    assert keras_prune.flops(model) == 2 * expected
    x = keras.Input((5, 8))
    einsum = L.EinsumDense("abc,cd->abd", output_shape=(5, 3))(x)  # 5 x 8*3
    heads = L.EinsumDense("abc,cde->abde", output_shape=(5, 2, 4))(x)  # 5 x 8*2*4
    model = keras.Model(x, [einsum, heads])
    assert keras_prune.flops(model) == 2 * (5 * 24 + 5 * 64)
    # A GroupQueryAttention: 6 tokens of 16, 4 query heads of 4 sharing 2 key
    # and value heads: query and output 6 x 16*4*4, key and value 6 x 16*2*4,
    # then per query head 6 x 6 x (4 + 4).
    x = keras.Input((6, 16))
    gqa = L.GroupQueryAttention(4, num_query_heads=4, num_key_value_heads=2)
    expected_gqa = 2 * 6 * 16 * 16 + 2 * 6 * 16 * 8 + 4 * 6 * 6 * 8
    assert keras_prune.flops(keras.Model(x, gqa(x, x))) == 2 * expected_gqa
    # A gate is one more query-sized projection (6 x 16*4*4), on either kind;
    # the query attends to 3 other positions (key and value 3 x 16*...).
    source = keras.Input((3, 16))
    mha = L.MultiHeadAttention(4, 4, use_gate=True)
    expected_mha = 3 * 6 * 16 * 16 + 2 * 3 * 16 * 16 + 4 * 6 * 3 * 8
    assert keras_prune.flops(keras.Model([x, source], mha(x, source))) == 2 * expected_mha
    gqa = L.GroupQueryAttention(4, num_query_heads=4, num_key_value_heads=2, use_gate=True)
    expected_gqa = 3 * 6 * 16 * 16 + 2 * 3 * 16 * 8 + 4 * 6 * 3 * 8
    assert keras_prune.flops(keras.Model([x, source], gqa(x, source))) == 2 * expected_gqa
    unknown = keras.Input((None, 8))
    with pytest.raises(ValueError, match="known shapes.*`dense_of_any_length` sees"):
        keras_prune.flops(keras.Model(unknown, L.Dense(2, name="dense_of_any_length")(unknown)))
    # A weight-pruned or channel-masked layer costs what its layer does.
    pruned = keras_prune.prune_low_magnitude(small_encoder())
    assert keras_prune.flops(pruned) == 2 * expected


def test_flops_name_the_custom_layers_they_cannot_see_into():
    class Block(L.Layer):
        def build(self, shape):
            self.dense = L.Dense(4)
            self.dense.build(shape)

        def call(self, x):
            return self.dense(x)

    x = keras.Input((3, 4))
    model = keras.Model(x, L.Dense(2)(Block(name="block")(x)))
    with pytest.warns(UserWarning, match=r"inside 1 custom layer\(s\).*: block \(Block\)"):
        assert keras_prune.flops(model) == 2 * 3 * 8


def test_sparsity_report_tells_a_bidirectional_layers_two_directions_apart():
    inputs = keras.Input((6, 4))
    hidden = keras.layers.Bidirectional(keras.layers.LSTM(8), name="both")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(2)(hidden))
    pruned = keras_prune.prune_low_magnitude(model, keras_prune.ConstantSparsity(0.5, 0))
    names = [row.weight for row in keras_prune.sparsity_report(pruned) if "both" in row.layer]
    assert [name.split("/", 1)[0] for name in names] == ["forward_lstm"] * 2 + ["backward_lstm"] * 2
    assert [name.rsplit("/", 1)[1] for name in names] == ["kernel", "recurrent_kernel"] * 2

"""Tests for keras_prune.report: flops counted by hand, sparsity_report of channel masks."""

from __future__ import annotations

import keras
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

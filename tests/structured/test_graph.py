"""Tests for keras_prune.structured.graph: which channels are removed together, and which stay."""

from __future__ import annotations

import keras
import pytest
from conftest import small_cnn

from keras_prune.structured.graph import channel_groups

L = keras.layers


def _groups(model):
    return {group.producers: group for group in channel_groups(model)}


def test_a_sequential_cnn_has_one_group_per_layer_and_keeps_its_output():
    model = small_cnn()
    groups = channel_groups(model)
    assert [g.size for g in groups] == [8, 8, 16, 4]
    assert [g.removable for g in groups] == [True, True, True, False]
    assert "model output" in groups[-1].reason


def test_residual_adds_tie_channels_and_concatenations_do_not():
    x = keras.Input((8, 8, 3))
    a = L.Conv2D(6, 1, name="a")(x)
    b = L.Conv2D(6, 3, padding="same", name="b")(x)
    b = L.BatchNormalization(name="bn")(b)
    s = L.Activation("relu")(L.Add()([a, b]))
    c = L.Conv2D(6, 1, name="c")(s)
    s = L.Add()([s, c])  # a, b and c: one group of 6
    d = L.Conv2D(4, 1, name="d")(s)
    cat = L.Concatenate()([s, d])  # d stays its own group
    e = L.DepthwiseConv2D(3, padding="same", name="dw")(cat)
    y = L.Dense(2, name="out")(L.GlobalAveragePooling2D()(e))
    groups = _groups(keras.Model(x, y))
    assert set(groups) == {("a", "b", "c"), ("d",), ("out",)}
    assert groups[("a", "b", "c")].size == 6 and groups[("a", "b", "c")].removable
    assert groups[("d",)].removable
    assert not groups[("out",)].removable


def test_squeeze_and_excitation_ties_the_excitation_to_the_features():
    x = keras.Input((8, 8, 3))
    f = L.Conv2D(8, 3, activation="swish", name="features")(x)
    se = L.GlobalAveragePooling2D(keepdims=True)(f)
    se = L.Conv2D(2, 1, activation="swish", name="squeeze")(se)
    se = L.Conv2D(8, 1, activation="sigmoid", name="excite")(se)
    y = L.Multiply()([f, se])
    y = L.Dense(3, name="out")(L.Flatten()(y))
    groups = _groups(keras.Model(x, y))
    # sigmoid(0) = 0.5, but a removed feature channel is 0 and 0 * 0.5 = 0.
    assert groups[("features", "excite")].removable
    assert groups[("squeeze",)].removable


def test_a_nonzero_activation_before_a_reader_keeps_the_channels():
    model = keras.Sequential(
        [
            keras.Input((5,)),
            L.Dense(8, activation="sigmoid", name="gate"),
            L.Dense(8, activation="relu", name="hidden"),
            L.Dense(2, name="out"),
        ]
    )
    groups = _groups(model)
    assert not groups[("gate",)].removable
    assert "`hidden` would read a nonzero value" in groups[("gate",)].reason
    assert groups[("hidden",)].removable


def test_ops_with_a_number_are_per_channel_and_adding_one_makes_removed_channels_nonzero():
    # MobileNetV3's hard sigmoid is `relu6(x + 3) / 6`, built of Keras ops, not layers.
    x = keras.Input((5,))
    scaled = L.Dense(8, activation="relu", name="scaled")(x)
    shifted = L.Dense(8, activation="relu", name="shifted")(x)
    inverted = L.Dense(8, activation="relu", name="inverted")(x)
    hidden = L.Concatenate()(
        [(scaled * 0.5 - 0.0) / 6.0, L.ReLU(6.0)(shifted + 3.0), 2.0 / inverted]
    )
    model = keras.Model(x, L.Dense(2, name="out")(L.Dense(4, name="hidden")(hidden)))
    groups = _groups(model)
    assert groups[("scaled",)].removable
    assert "`hidden` would read a nonzero value" in groups[("shifted",)].reason
    assert "(TrueDivide) reads it and cannot be shrunk" in groups[("inverted",)].reason


def test_an_activation_across_channels_keeps_them():
    # softmax normalises over the channels: without one of them the others change.
    x = keras.Input((8, 8, 3))
    soft = L.Activation("softmax", name="soft")(L.Conv2D(4, 1, name="a")(x))
    gated = L.Multiply()([soft, L.Conv2D(4, 1, name="b")(x)])  # 0 where b's channel is 0
    mixed = L.Conv2D(4, 1, activation="softmax", name="c")(gated)
    mixed = L.Multiply()([mixed, L.Conv2D(4, 1, activation="relu", name="e")(gated)])
    y = L.Dense(2, name="out")(L.GlobalAveragePooling2D()(L.Conv2D(4, 1, name="d")(mixed)))
    groups = _groups(keras.Model(x, y))
    assert "`soft` (Activation) reads it" in groups[("a",)].reason
    assert not groups[("b",)].removable  # multiplied by soft's output, which stays whole
    assert "`c`'s activation (softmax) mixes its channels" in groups[("c", "e")].reason
    assert groups[("d",)].removable


def test_group_normalization_makes_channels_go_in_whole_runs():
    x = keras.Input((8, 8, 3))
    a = L.GroupNormalization(groups=4, name="gn_a")(L.Conv2D(8, 1, name="a")(x))  # runs of 2
    b = L.GroupNormalization(groups=-1, name="gn_b")(L.Conv2D(8, 1, name="b")(a))  # runs of 1
    c = L.Concatenate()([L.Conv2D(6, 1, name="c")(b), L.Conv2D(4, 1, name="d")(b)])
    c = L.GroupNormalization(groups=5, name="gn_cd")(c)  # runs of 2: c's 6 and d's 4 fill them
    e = L.Concatenate()([L.Conv2D(3, 1, name="e")(c), L.Conv2D(5, 1, name="f")(c)])
    e = L.GroupNormalization(groups=2, name="gn_ef")(e)  # runs of 4: one spans e and f
    g = L.Conv2D(6, 1, name="g")(e)
    h = L.Add()([L.GroupNormalization(groups=3)(g), L.GroupNormalization(groups=2)(g)])
    i = L.GroupNormalization(groups=1, name="gn_i")(L.Conv2D(4, 1, name="i")(h))
    y = L.Dense(2, name="out")(L.GlobalAveragePooling2D()(i))
    groups = _groups(keras.Model(x, y))
    assert [(groups[(n,)].block, groups[(n,)].removable) for n in "abcd"] == [
        (2, True),
        (1, True),
        (2, True),
        (2, True),
    ]
    for name in "ef":
        assert "`gn_ef` (GroupNormalization) normalises runs of 4" in groups[(name,)].reason
    # runs of 2 and of 3 over 6 channels: only all 6 together; groups=1 likewise
    assert groups[("g",)].block == 6
    assert "normalises all its 6 channels together" in groups[("g",)].reason
    assert "normalises all its 4 channels together" in groups[("i",)].reason


def test_a_cut_through_a_run_of_group_normalization_keeps_the_pieces():
    x = keras.Input((8, 8, 3))
    a = L.GroupNormalization(groups=2)(L.Conv2D(8, 1, name="a")(x))  # runs of 4
    b = L.Concatenate()([L.Conv2D(2, 1, name="b")(x), L.Conv2D(6, 1, name="c")(x)])
    y = L.Dense(2, name="out")(L.GlobalAveragePooling2D()(L.Add()([a, b])))
    pieces = [g for g in channel_groups(keras.Model(x, y)) if "a" in g.producers]
    assert [(g.size, g.producers) for g in pieces] == [(2, ("a", "b")), (6, ("a", "c"))]
    assert "do not divide into the runs of 4" in pieces[0].reason
    assert "a run of 4 channels normalised together is cut in two" in pieces[1].reason


def test_channels_first_finds_channels_on_axis_1_and_keeps_what_reads_another_axis():
    first = "channels_first"
    x = keras.Input((3, 10, 9))
    a = L.Conv2D(6, 3, data_format=first, name="a")(x)
    b = L.Conv2D(6, 1, data_format=first, name="b")(L.BatchNormalization(axis=1)(a))
    h = L.Add()([a, b])
    w = L.Dense(4, name="w")(h)  # its last axis is the width, not the channels
    y = L.Dense(2, name="out")(L.GlobalMaxPooling2D(data_format=first)(w))
    groups = _groups(keras.Model(x, y))
    assert set(groups) == {("a", "b"), ("out",)} and groups[("a", "b")].size == 6
    assert "`w` (Dense) reads it" in groups[("a", "b")].reason
    # one model, two formats: walked channels last, the channels_first layers stay whole
    x = keras.Input((8, 8, 3))
    c = L.Conv2D(4, 1, name="c")(x)
    d = L.Conv2D(5, 1, data_format=first, name="d")(c)
    y = L.Dense(2, name="out")(L.GlobalAveragePooling2D()(L.Conv2D(4, 1, name="e")(d)))
    mixed = _groups(keras.Model(x, y))
    assert "`d` (Conv2D) reads it" in mixed[("c",)].reason and ("d",) not in mixed
    assert mixed[("e",)].removable


def test_unknown_layers_keep_the_channels_they_touch():
    x = keras.Input((6, 4))
    a = L.Dense(8, name="a")(x)
    n = L.LayerNormalization(name="norm")(a)  # normalises across channels
    b = L.Dense(8, name="b")(n)
    shared = L.Dense(8, name="shared")
    c = shared(shared(b))  # called twice
    y = L.Dense(2, name="out")(c)
    groups = _groups(keras.Model(x, y))
    assert "`norm` (LayerNormalization)" in groups[("a",)].reason
    assert "`shared` is called 2 times" in groups[("b",)].reason
    assert set(groups) == {("a",), ("b",), ("out",)}  # `shared` is no producer


def test_a_model_input_is_never_a_group():
    x = keras.Input((4,))
    y = L.Dense(3, name="out")(L.Dense(5, name="h")(x))
    assert [g.producers for g in channel_groups(keras.Model(x, y))] == [("h",), ("out",)]


def test_a_subclassed_model_or_an_unbuilt_one_is_refused_with_what_to_do():
    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            self.dense = L.Dense(3)

        def call(self, x):
            return self.dense(x)

    net = Net()
    net(keras.ops.zeros((1, 4)))
    with pytest.raises(ValueError, match="subclassed Net.*keras.Model\\(inputs, outputs\\)"):
        channel_groups(net)
    with pytest.raises(ValueError, match="must be built"):
        channel_groups(keras.Sequential([L.Dense(3)]))
    with pytest.raises(TypeError, match="`model` must be a keras.Model"):
        channel_groups(L.Dense(3))


def test_attention_heads_are_a_group_unless_gated():
    x = keras.Input((5, 8))
    a = L.MultiHeadAttention(4, 2, name="plain")(x, x)
    b = L.MultiHeadAttention(4, 2, use_gate=True, name="gated")(a, a)
    groups = _groups(keras.Model(x, L.Dense(2, name="out")(b)))
    assert groups[("plain",)].size == 4 and groups[("plain",)].removable
    assert ("gated",) not in groups

"""Tests for keras_prune.structured.heads: where Keras's attention layers keep their heads."""

import keras
import numpy as np

from keras_prune.structured.heads import attention_heads

L = keras.layers


def _built(layer):
    x = keras.Input((5, 16))
    layer(x, x)
    return layer


def test_a_multi_head_attentions_channels_are_its_heads():
    found = attention_heads(_built(L.MultiHeadAttention(4, 8)))
    assert (found.count, found.per_group, found.grouped) == (4, 1, False)
    assert [(tuple(k.shape), axis, per) for k, axis, per in found.kernel_axes()] == [
        ((16, 4, 8), 1, 1),
        ((16, 4, 8), 1, 1),
        ((16, 4, 8), 1, 1),
        ((4, 8, 16), 0, 1),
    ]
    assert found.config(3) == {"num_heads": 3}


def test_a_group_query_attentions_channels_are_its_key_and_value_heads():
    layer = _built(L.GroupQueryAttention(8, num_query_heads=6, num_key_value_heads=3))
    found = attention_heads(layer)
    assert (found.count, found.per_group, found.grouped) == (3, 2, True)
    assert [(tuple(k.shape), axis, per) for k, axis, per in found.kernel_axes()] == [
        ((16, 6, 8), 1, 2),
        ((16, 3, 8), 1, 1),
        ((16, 3, 8), 1, 1),
        ((6, 8, 16), 0, 2),
    ]
    # Keras repeats key and value heads in place: query head q reads q // 2.
    np.testing.assert_array_equal(found.query_heads(np.array([0, 2])), [0, 1, 4, 5])
    assert found.config(2) == {"num_query_heads": 4, "num_key_value_heads": 2}


def test_gated_unbuilt_and_subclassed_attention_layers_are_not_known():
    class Attention(L.MultiHeadAttention):
        pass

    assert attention_heads(L.MultiHeadAttention(4, 8)) is None  # not built
    assert attention_heads(_built(L.MultiHeadAttention(4, 8, use_gate=True))) is None
    gated = L.GroupQueryAttention(8, num_query_heads=4, num_key_value_heads=2, use_gate=True)
    assert attention_heads(_built(gated)) is None
    assert attention_heads(_built(Attention(4, 8))) is None
    dense = L.Dense(4)
    dense(keras.Input((5, 4)))
    assert attention_heads(dense) is None

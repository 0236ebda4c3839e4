import keras
import pytest

import keras_prune
from keras_prune import registry

L = keras.layers


@pytest.mark.parametrize(
    "layer, shape, expected",
    [
        (L.Dense(3), (None, 4), ["kernel"]),
        (L.EinsumDense("ab,bc->ac", output_shape=3), (None, 4), ["kernel"]),
        (L.Conv1D(2, 3), (None, 8, 2), ["kernel"]),
        (L.Conv2D(2, 3), (None, 8, 8, 2), ["kernel"]),
        (L.Conv3D(2, 3), (None, 6, 6, 6, 2), ["kernel"]),
        (L.Conv2DTranspose(2, 3), (None, 8, 8, 2), ["kernel"]),
        (L.DepthwiseConv2D(3), (None, 8, 8, 2), ["kernel"]),
        (L.SeparableConv2D(2, 3), (None, 8, 8, 2), ["pointwise_kernel"]),
        (L.Embedding(10, 4), (None, 5), ["embeddings"]),
        (L.LSTM(3), (None, 5, 2), ["kernel", "recurrent_kernel"]),
        (L.ConvLSTM2D(2, 3), (None, 3, 6, 6, 2), ["kernel", "recurrent_kernel"]),
        (L.SpectralNormalization(L.Dense(3)), (None, 4), ["kernel"]),
        (L.Attention(use_scale=True), [(None, 5, 2), (None, 5, 2)], []),
        (L.AdditiveAttention(), [(None, 5, 2), (None, 5, 2)], []),
        (L.BatchNormalization(), (None, 4), []),
        (L.LayerNormalization(), (None, 4), []),
    ],
)
def test_builtin_layers(layer, shape, expected):
    layer.build(shape)
    assert [w.name for w in registry.get_prunable_weights(layer)] == expected
    assert registry.supports(layer) == bool(expected)
    assert registry.is_known(layer)


def test_bias_is_never_pruned():
    layer = L.Dense(3)
    layer.build((None, 4))
    assert all(w is not layer.bias for w in registry.get_prunable_weights(layer))


def test_register_custom_layer_and_errors():
    class Gate(keras.layers.Layer):
        def build(self, shape):
            self.gate = self.add_weight(shape=(shape[-1], 2))

    layer = Gate()
    layer.build((None, 3))
    with pytest.raises(ValueError, match="not supported for pruning"):
        registry.get_prunable_weights(layer)
    keras_prune.register_prunable(Gate, ["gate"])
    assert registry.get_prunable_weights(layer) == [layer.gate]
    with pytest.raises(TypeError, match="layer_class"):
        keras_prune.register_prunable(object, ["gate"])
    with pytest.raises(TypeError, match="weights"):
        keras_prune.register_prunable(Gate, "gate")
    with pytest.raises(TypeError, match="layer"):
        registry.get_prunable_weights("dense")


class Block(keras.layers.Layer):
    """A transformer-style custom layer: known sublayers, one unknown one, its own weight."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.attention = L.MultiHeadAttention(2, 4, name="attention")
        self.ffn = [L.Dense(8, name="up"), L.Dense(4, name="down")]
        self.norm = L.LayerNormalization(name="norm")
        self.extra = Gain(name="gain")

    def build(self, shape):
        self.attention.build(shape, shape)
        self.ffn[0].build(shape)
        self.ffn[1].build((None, None, 8))
        self.norm.build(shape)
        self.extra.build(shape)
        self.bias = self.add_weight(shape=(4,), initializer="zeros", name="bias")


class Gain(keras.layers.Layer):
    def build(self, shape):
        self.gain = self.add_weight(shape=(shape[-1],), initializer="ones", name="gain")


def test_custom_layer_prunes_the_known_layers_inside_it():
    block = Block(name="block")
    block.build((None, 3, 4))
    expected = [
        block.attention._query_dense.kernel,
        block.attention._key_dense.kernel,
        block.attention._value_dense.kernel,
        block.attention._output_dense.kernel,
        block.ffn[0].kernel,
        block.ffn[1].kernel,
    ]
    # MultiHeadAttention's EinsumDense kernels once each; biases, norms, gain never.
    assert [id(w) for w in registry.get_prunable_weights(block)] == [id(w) for w in expected]
    assert registry.supports(block) and not registry.is_known(block)
    assert [layer.name for layer in registry.unknown_layers(block)] == ["block", "gain"]
    assert registry.unknown_layers(block.attention) == []

"""Pruning policies: tfmot 0.8's own accept/refuse cases for PruneForLatencyOnXNNPack, ported.

tfmot's `pruning_policy_test.py` builds each model below and checks the
error message or the number of layers wrapped; the same models and counts
here, in Keras 3, on every backend.
"""

import keras
import numpy as np
import pytest
from keras import layers

import keras_prune
from keras_prune import PruneForLatencyOnXNNPack, PruningPolicy

START_ERROR = (
    "Could not find `Conv2D 3x3` layer with stride 2x2, `input filters == 3` and `VALID` "
    "padding and preceding `ZeroPadding2D` with `padding == 1` in all input branches of the model"
)
STOP_ERROR = "Could not find a `GlobalAveragePooling2D` layer in all output branches"
MIDDLE_ERROR = "Layer {} is not supported for the PruneForLatencyOnXNNPack pruning policy"
SCHEDULE = keras_prune.ConstantSparsity(0.5, 0)


def prune(model, policy=None):
    return keras_prune.prune_low_magnitude(
        model, SCHEDULE, pruning_policy=policy or PruneForLatencyOnXNNPack()
    )


def count_pruned(model):
    return len(list(keras_prune.pruned_layers(model)))


def stem(x, filters=16):
    """The start of XNNPack's sparse subgraph: ZeroPadding2D(1) + 3x3 stride-2 VALID Conv2D."""
    x = layers.ZeroPadding2D(padding=1)(x)
    return layers.Conv2D(filters, (3, 3), strides=(2, 2), padding="valid")(x)


def refuses(model, message):
    with pytest.raises(ValueError) as error:
        prune(model)
    assert str(error.value) == message


def test_no_start_layer():
    i = keras.Input((8, 8, 3))
    x = layers.Conv2D(16, (3, 3), strides=(2, 2), padding="same")(i)
    x = layers.Conv2D(16, [1, 1])(x)
    refuses(keras.Model(i, layers.GlobalAveragePooling2D()(x)), START_ERROR)


def test_no_stop_layer():
    i = keras.Input((8, 8, 3))
    x = layers.Conv2D(16, [1, 1])(stem(i))
    refuses(keras.Model(i, layers.AveragePooling2D(pool_size=2)(x)), STOP_ERROR)


def test_unsupported_middle_layer():
    i = keras.Input((8, 8, 3))
    x = layers.Conv2D(16, [1, 1])(stem(i))
    x = layers.MaxPooling2D(pool_size=(2, 2), strides=(2, 2))(x)
    refuses(keras.Model(i, layers.GlobalAveragePooling2D()(x)), MIDDLE_ERROR.format("MaxPooling2D"))


def test_sequential_model_unbuilt_then_built():
    def body():
        return [
            layers.ZeroPadding2D(padding=1),
            layers.Conv2D(4, (3, 3), strides=(2, 2), padding="valid"),
            layers.DepthwiseConv2D(kernel_size=(3, 3), padding="same"),
            layers.Conv2D(8, [1, 1]),
            layers.GlobalAveragePooling2D(),
        ]

    refuses(keras.Sequential(body()), "Unbuilt models are not supported currently.")
    pruned = prune(keras.Sequential([keras.Input((8, 8, 3)), *body()]))
    assert count_pruned(pruned) == 1


def test_nested_sequential_is_pruned_inside():
    model = keras.Sequential(
        [
            keras.Input((8, 8, 3)),
            layers.ZeroPadding2D(padding=1),
            layers.Conv2D(4, (3, 3), strides=(2, 2), padding="valid"),
            keras.Sequential([layers.Conv2D(8, [1, 1]), layers.Conv2D(16, [1, 1])]),
            layers.GlobalAveragePooling2D(),
        ]
    )
    assert count_pruned(prune(model)) == 2


def test_reused_layer_is_pruned_once():
    i = keras.Input((8, 8, 3))
    conv = layers.Conv2D(16, [1, 1])
    x = conv(conv(stem(i)))
    assert count_pruned(prune(keras.Model(i, layers.GlobalAveragePooling2D()(x)))) == 1


def test_model_without_1x1_convolutions_prunes_nothing():
    i = keras.Input((8, 8, 3))
    x = layers.DepthwiseConv2D(kernel_size=(3, 3), padding="same")(stem(i))
    x = layers.Activation("relu")(x)
    assert count_pruned(prune(keras.Model(i, layers.GlobalAveragePooling2D()(x)))) == 0


def test_two_inputs_two_outputs_with_squeeze_and_excitation():
    i1 = keras.Input((16, 16, 3))
    x1 = stem(i1)
    x1 = layers.Add()(
        [layers.DepthwiseConv2D((3, 3), padding="same")(x1), layers.Conv2D(16, [1, 1])(x1)]
    )
    i2 = keras.Input((16, 16, 3))
    x2 = layers.ZeroPadding2D(padding=1)(stem(i2, filters=8))
    x2 = layers.DepthwiseConv2D((3, 3), strides=(2, 2), padding="valid")(x2)
    x2_1 = layers.GlobalAveragePooling2D(keepdims=True)(x2)
    x2_1 = layers.Activation("sigmoid")(layers.Conv2D(32, [1, 1])(x2_1))
    x2_2 = layers.UpSampling2D(interpolation="bilinear")(layers.Conv2D(32, [1, 1])(x2))
    x2 = layers.Conv2D(16, [1, 1])(layers.Multiply()([x2_1, x2_2]))
    x = layers.GlobalAveragePooling2D(keepdims=True)(layers.Add()([x1, x2]))
    outputs = [layers.Conv2D(7, [1, 1])(x), layers.Conv2D(3, [1, 1])(x)]
    assert count_pruned(prune(keras.Model([i1, i2], outputs))) == 6


def test_cloned_model():
    i = keras.Input((8, 8, 3))
    x = layers.Conv2D(16, [1, 1])(stem(i))
    model = keras.Model(i, layers.GlobalAveragePooling2D()(x))
    cloned = keras.models.clone_model(model, clone_function=lambda layer: layer)
    assert count_pruned(prune(cloned)) == 1


def test_elementwise_ops_on_keras_tensors():
    """tfmot's TFOpLambda case: `x + r`, `x - r`, `x * r` are Keras ops here."""
    i = keras.Input((8, 8, 3))
    x = stem(i)
    residual = layers.Conv2D(16, [1, 1])(x)
    x = (x + residual - residual) * residual
    assert count_pruned(prune(keras.Model(i, layers.GlobalAveragePooling2D()(x)))) == 1


def test_pruning_a_pruned_model_again_keeps_one_wrapper():
    i = keras.Input((8, 8, 3))
    x = layers.Conv2D(16, [1, 1])(stem(i))
    pruned = prune(keras.Model(i, layers.GlobalAveragePooling2D()(x)))
    assert count_pruned(pruned) == 1
    assert count_pruned(prune(pruned)) == 1


def test_subclassed_model_is_refused():
    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            self.conv = layers.Conv2D(4, 1)

        def call(self, x, training=None):
            return self.conv(x)

    net = Net()
    net(np.zeros((1, 8, 8, 3), "float32"))
    refuses(net, "Subclassed models are not supported currently.")


def test_a_user_policy_decides_which_layers_are_pruned():
    class DenseOnly(PruningPolicy):
        def allow_pruning(self, layer):
            return isinstance(layer, layers.Dense)

        def ensure_model_supports_pruning(self, model):
            if not any(isinstance(layer, layers.Dense) for layer in model.layers):
                raise ValueError("no Dense layer")

    model = keras.Sequential(
        [keras.Input((6, 6, 1)), layers.Conv2D(2, 3), layers.Flatten(), layers.Dense(3)]
    )
    pruned = prune(model, DenseOnly())
    assert [type(w.layer).__name__ for w in keras_prune.pruned_layers(pruned)] == ["Dense"]
    with pytest.raises(ValueError, match="no Dense layer"):
        prune(keras.Sequential([keras.Input((6, 6, 1)), layers.Conv2D(2, 3)]), DenseOnly())


def test_bad_policy_arguments():
    model = keras.Sequential([keras.Input((4,)), layers.Dense(3)])
    with pytest.raises(TypeError, match="`pruning_policy` must be a keras_prune.PruningPolicy"):
        keras_prune.prune_low_magnitude(model, pruning_policy="xnnpack")
    with pytest.raises(
        ValueError, match="`pruning_policy` and `sparsity_distribution` apply to models"
    ):
        keras_prune.prune_low_magnitude(layers.Dense(3), pruning_policy=PruneForLatencyOnXNNPack())


def test_keras_3_mobilenet_v2_has_no_xnnpack_stem():
    """Keras 3's MobileNetV2 starts with a SAME-padded stride-2 Conv2D, not tf.keras 2's
    ZeroPadding2D + VALID Conv2D, so the policy's start check refuses it as tfmot's would."""
    model = keras.applications.MobileNetV2(
        input_shape=(32, 32, 3), alpha=0.35, weights=None, classes=4
    )
    refuses(model, START_ERROR)


def inverted_residual(x, expand, out):
    """MobileNetV2's block in the form XNNPack's sparse subgraph supports."""
    y = layers.ReLU(6.0)(layers.BatchNormalization()(layers.Conv2D(expand, 1)(x)))
    y = layers.ReLU(6.0)(layers.DepthwiseConv2D(3, padding="same")(y))
    y = layers.BatchNormalization()(layers.Conv2D(out, 1)(y))
    return layers.Add()([x, y]) if x.shape[-1] == out else y


@pytest.mark.slow
def test_mobilenet_like_model_trains_with_only_its_1x1_convolutions_pruned():
    i = keras.Input((16, 16, 3))
    x = layers.ReLU(6.0)(layers.BatchNormalization()(stem(i, filters=8)))
    x = inverted_residual(inverted_residual(x, 16, 8), 24, 12)
    x = layers.Conv2D(4, 1)(layers.GlobalAveragePooling2D(keepdims=True)(x))
    model = keras.Model(i, layers.Flatten()(x))
    pruned = keras_prune.prune_low_magnitude(
        model,
        keras_prune.ConstantSparsity(0.5, begin_step=0, frequency=1),
        pruning_policy=PruneForLatencyOnXNNPack(),
    )
    one_by_one = [
        layer
        for layer in model.layers
        if isinstance(layer, layers.Conv2D) and layer.kernel_size == (1, 1)
    ]
    wrapped = list(keras_prune.pruned_layers(pruned))
    assert len(wrapped) == len(one_by_one) == 5
    pruned.compile("sgd", "mse")
    rng = np.random.default_rng(0)
    x, y = rng.random((8, 16, 16, 3), dtype=np.float32), rng.random((8, 4), dtype=np.float32)
    pruned.fit(x, y, batch_size=4, verbose=0, callbacks=[keras_prune.UpdatePruningStep()])
    for wrapper in wrapped:
        weight, mask, _ = wrapper.pruning_vars[0]
        kernel = keras.ops.convert_to_numpy(weight * mask)
        assert np.sum(kernel != 0) == max(round(kernel.size * 0.5), 1)

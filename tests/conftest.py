"""Shared test fixtures. The backend is chosen by KERAS_BACKEND, one pytest run per backend."""

import os
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
warnings.filterwarnings("ignore", message=".*retracing.*")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

BACKEND = keras.backend.backend()


@pytest.fixture(autouse=True)
def _fresh_keras_state():
    """Every test starts with fresh layer names and a fixed seed."""
    keras.utils.clear_session(free_memory=False)  # gc.collect() would cost ~0.3 s a test
    keras.utils.set_random_seed(1234)
    yield


def small_images(n=64, seed=0, size=12, classes=4):
    """Learnable toy images: class c has a bright square at position c."""
    rng = np.random.RandomState(seed)
    y = rng.randint(0, classes, n)
    x = rng.rand(n, size, size, 1).astype("float32") * 0.3
    for i, c in enumerate(y):
        x[i, c * 2 : c * 2 + 3, c * 2 : c * 2 + 3, 0] += 1.0
    return x, y


def small_cnn(size=12, classes=4):
    """The seed's ConvNet, shrunk: Conv, Pool, Conv, Pool, Flatten, Dense, Dense."""
    return keras.Sequential(
        [
            keras.Input((size, size, 1)),
            keras.layers.Conv2D(8, 3, activation="relu"),
            keras.layers.MaxPooling2D(2),
            keras.layers.Conv2D(8, 3, activation="relu"),
            keras.layers.Flatten(),
            keras.layers.Dense(16, activation="relu"),
            keras.layers.Dense(classes, activation="softmax"),
        ]
    )


def small_encoder(hidden=16, heads=4, ffn=32, blocks=2, length=6, vocab=50):
    """A BERT-style encoder from Keras layers: attention and FFN blocks between LayerNorms."""
    ids = keras.Input((length,), dtype="int32")
    x = keras.layers.Embedding(vocab, hidden, name="embedding")(ids)
    for i in range(blocks):
        attention = keras.layers.MultiHeadAttention(heads, hidden // heads, name=f"attention_{i}")(
            x, x
        )
        x = keras.layers.LayerNormalization(name=f"norm_{i}_a")(keras.layers.Add()([x, attention]))
        h = keras.layers.Dense(ffn, activation="gelu", name=f"ffn_{i}_in")(x)
        h = keras.layers.Dense(hidden, name=f"ffn_{i}_out")(h)
        x = keras.layers.LayerNormalization(name=f"norm_{i}_b")(keras.layers.Add()([x, h]))
    y = keras.layers.Dense(3, name="out")(keras.layers.GlobalAveragePooling1D()(x))
    return keras.Model(ids, y)


def image_twins(size=10):
    """One residual CNN built channels_last and channels_first, with the same weights:
    `(channels_last model, channels_first model)`. It has BatchNormalization,
    pooling, a residual Add, a depthwise conv, a Concatenate, a GroupNormalization,
    squeeze and excitation (a Reshape) and a Flatten into a Dense layer. No tensor
    has as many channels as rows and columns: there, Keras 3.15's TensorFlow
    backend computed channels_first convolutions with a bias wrongly (an 8x8x8
    DepthwiseConv2D output 9 % off numpy, a 3x3x3 Conv2D output 0.35 % off JAX's
    run of the same file), and right on 8x6x5."""
    L = keras.layers

    def build(data_format):
        first = data_format == "channels_first"
        axis = 1 if first else -1
        x = keras.Input((3, size, size) if first else (size, size, 3))
        h = L.Conv2D(8, 3, padding="same", data_format=data_format, name="c1")(x)
        h = L.ReLU()(L.BatchNormalization(axis=axis, name="bn")(h))
        h = L.MaxPooling2D(data_format=data_format)(h)
        h = L.Add()([h, L.Conv2D(8, 1, data_format=data_format, name="c2")(h)])
        h = L.DepthwiseConv2D(3, padding="same", data_format=data_format, name="dw")(h)
        c3 = L.Conv2D(4, 1, data_format=data_format, name="c3")(h)
        h = L.Concatenate(axis=axis)([h, c3])
        h = L.GroupNormalization(groups=6, axis=axis, name="gn")(h)
        se = L.GlobalAveragePooling2D(data_format=data_format)(h)  # squeeze and excitation
        se = L.Reshape((12, 1, 1) if first else (1, 1, 12))(se)
        se = L.Conv2D(4, 1, activation="relu", data_format=data_format, name="squeeze")(se)
        se = L.Conv2D(12, 1, activation="sigmoid", data_format=data_format, name="excite")(se)
        h = L.Multiply()([h, se])
        h = L.Conv2D(6, 3, padding="same", activation="relu", data_format=data_format, name="c4")(h)
        y = L.Dense(3, name="out")(L.Flatten(data_format=data_format)(h))
        return keras.Model(x, y)

    last, first = build("channels_last"), build("channels_first")
    rng = np.random.RandomState(0)
    for variable in last.weights:  # nonzero shifts and biases too
        variable.assign(rng.uniform(0.5, 1.5, variable.shape).astype("float32"))
    first.set_weights(last.get_weights())  # kernels do not depend on the format
    return last, first

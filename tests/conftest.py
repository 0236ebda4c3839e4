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

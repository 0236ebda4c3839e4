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

# The seed article's ConstantSparsity example, migrated from tfmot/tf.keras 2 to
# keras_prune/Keras 3: only the import lines and module paths changed
# (`tensorflow.keras.` -> `keras.`, `tfmot.sparsity.keras.` -> `keras_prune.`).
# One fix: Flatten() before the first Dense, which the article's listing lost
# (without it Dense acts per pixel and its output does not match the labels).
# Runs on any backend: KERAS_BACKEND=jax python examples/seed_constant_sparsity.py
import tempfile

import keras
import numpy as np
from keras.datasets import mnist
from keras.layers import Conv2D, Dense, Flatten, MaxPooling2D
from keras.models import Sequential, save_model

import keras_prune

# Model configuration
img_width, img_height = 28, 28
batch_size = 250
no_classes = 10
validation_split = 0.2
verbosity = 1
pruning_epochs = 30

# Load MNIST dataset
(input_train, target_train), (input_test, target_test) = mnist.load_data()
input_shape = (img_width, img_height, 1)

# Reshape data for ConvNet
input_train = input_train.reshape(input_train.shape[0], img_width, img_height, 1)
input_test = input_test.reshape(input_test.shape[0], img_width, img_height, 1)
input_shape = (img_width, img_height, 1)

# Parse numbers as floats
input_train = input_train.astype("float32")
input_test = input_test.astype("float32")

# Normalize [0, 255] into [0, 1]
input_train = input_train / 255
input_test = input_test / 255

# Convert target vectors to categorical targets
target_train = keras.utils.to_categorical(target_train, no_classes)
target_test = keras.utils.to_categorical(target_test, no_classes)

# Create the model
model = Sequential()
model.add(Conv2D(32, kernel_size=(3, 3), activation="relu", input_shape=input_shape))
model.add(MaxPooling2D(pool_size=(2, 2)))
model.add(Conv2D(64, kernel_size=(3, 3), activation="relu"))
model.add(MaxPooling2D(pool_size=(2, 2)))
model.add(Flatten())
model.add(Dense(256, activation="relu"))
model.add(Dense(no_classes, activation="softmax"))

# Compile the model
model.compile(
    loss=keras.losses.categorical_crossentropy,
    optimizer=keras.optimizers.Adam(),
    metrics=["accuracy"],
)

# Load functionality for adding pruning wrappers
prune_low_magnitude = keras_prune.prune_low_magnitude

# Finish pruning after 10 epochs
num_images = input_train.shape[0] * (1 - validation_split)
end_step = np.ceil(num_images / batch_size).astype(np.int32) * pruning_epochs

# Define pruning configuration
pruning_params = {
    "pruning_schedule": keras_prune.ConstantSparsity(
        target_sparsity=0.875, begin_step=0.2 * end_step, end_step=end_step, frequency=100
    )
}
model_for_pruning = prune_low_magnitude(model, **pruning_params)

# Recompile the model
model_for_pruning.compile(
    loss=keras.losses.categorical_crossentropy,
    optimizer=keras.optimizers.Adam(),
    metrics=["accuracy"],
)

# Model callbacks
callbacks = [keras_prune.UpdatePruningStep()]

# Fitting data
model_for_pruning.fit(
    input_train,
    target_train,
    batch_size=batch_size,
    epochs=pruning_epochs,
    verbose=verbosity,
    callbacks=callbacks,
    validation_split=validation_split,
)

# Generate generalization metrics
score_pruned = model_for_pruning.evaluate(input_test, target_test, verbose=0)
print(f"Pruned CNN - Test loss: {score_pruned[0]} / Test accuracy: {score_pruned[1]}")

# Export the model
model_for_export = keras_prune.strip_pruning(model_for_pruning)
_, pruned_keras_file = tempfile.mkstemp(".h5")
save_model(model_for_export, pruned_keras_file, include_optimizer=False)
print(f"Pruned model saved: {pruned_keras_file}")

# Measuring the size of your pruned model
# (source: https://www.tensorflow.org/model_optimization/guide/pruning/pruning_with_keras#fine-tune_pre-trained_model_with_pruning)


def get_gzipped_model_size(file):
    # Returns size of gzipped model, in bytes.
    import os
    import zipfile

    _, zipped_file = tempfile.mkstemp(".zip")
    with zipfile.ZipFile(zipped_file, "w", compression=zipfile.ZIP_DEFLATED) as f:
        f.write(file)

    return os.path.getsize(zipped_file)


print(
    "Size of gzipped pruned Keras model: %.2f bytes" % (get_gzipped_model_size(pruned_keras_file))
)

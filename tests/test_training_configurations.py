"""Every training configuration users run prunes, or fails before training saying why.

The matrix: dtype policy (float32, mixed_float16, mixed_bfloat16) x
compilation (Keras's default, run_eagerly, jit_compile) x how batches arrive
and steps run (arrays, steps_per_execution=4, gradient accumulation, a
Python generator, a keras.utils.PyDataset, a tf.data.Dataset), as a
pairwise design: 18 cases in which every pair of values of two of the three
factors occurs (the full product, 54 cases, would triple CI's time for
failures that, in this code, come from one or two factors). Each case
trains a small CNN for 24 batches with ConstantSparsity(0.8, 0,
frequency=2) and must end with every wrapper's step counter at 24 and every
kernel at exactly the scheduled sparsity (k = round(0.2 n) kept), and with
no shortfall warning. A configuration Keras itself does not support on a
backend must be refused by Keras before any training step.
"""

from __future__ import annotations

import math
import warnings

import keras
import numpy as np
import pytest
from conftest import BACKEND, small_images
from keras import ops

import keras_prune
from keras_prune.callbacks import final_sparsity_shortfalls

BATCH, STEPS = 8, 24
POLICIES = ("float32", "mixed_float16", "mixed_bfloat16")
COMPILATION = {
    "default": {},
    "run_eagerly": {"run_eagerly": True},
    "jit_compile": {"jit_compile": True},
}
INPUTS = (
    "arrays",
    "steps_per_execution",
    "gradient_accumulation",
    "generator",
    "py_dataset",
    "tf_data",
)


class _Batches(keras.utils.PyDataset):
    def __init__(self, x, y):
        super().__init__()
        self.x, self.y = x, y

    def __len__(self):
        return len(self.x) // BATCH

    def __getitem__(self, index):
        part = slice(index * BATCH, (index + 1) * BATCH)
        return self.x[part], self.y[part]


def _fit_arguments(how, x, y):
    """(compile arguments, fit arguments) that feed the batches as `how` says."""
    if how == "generator":

        def batches():
            while True:
                for i in range(0, len(x), BATCH):
                    yield x[i : i + BATCH], y[i : i + BATCH]

        return {}, {"x": batches(), "steps_per_epoch": STEPS // 2, "epochs": 2}
    if how == "py_dataset":
        return {}, {"x": _Batches(x, y), "epochs": 2}
    if how == "tf_data":
        import tensorflow as tf  # the input pipeline Keras accepts on every backend

        return {}, {"x": tf.data.Dataset.from_tensor_slices((x, y)).batch(BATCH), "epochs": 2}
    compile_args = {"steps_per_execution": 4} if how == "steps_per_execution" else {}
    return compile_args, {"x": x, "y": y, "batch_size": BATCH, "epochs": 2}


def _model():
    return keras.Sequential(
        [
            keras.Input((12, 12, 1)),
            keras.layers.Conv2D(8, 3, activation="relu", name="conv"),
            keras.layers.Flatten(),
            keras.layers.Dense(16, activation="relu", name="hidden"),
            # Outputs in float32 under a mixed policy, as Keras's guide advises.
            keras.layers.Dense(4, activation="softmax", dtype="float32", name="out"),
        ]
    )


def _refused_by_keras(how, error):
    """Whether `error` is Keras's own limit for this case (Keras 3.15's torch
    trainer runs one step per execution and says so; keras-nightly 3.16 runs
    several)."""
    return (
        BACKEND == "torch"
        and how == "steps_per_execution"
        and "`steps_per_execution` must be 1" in str(error)
    )


def _too_slow_for_ci(policy, compilation, how):
    # torch.compile takes about a minute per model on two CPU cores; one case
    # (arrays, under mixed_bfloat16) stands for the torch jit_compile column.
    return (
        BACKEND == "torch"
        and compilation == "jit_compile"
        and (policy, how) != ("mixed_float16", "arrays")
    )


@pytest.fixture
def policy(request):
    keras.mixed_precision.set_global_policy(request.param)
    yield request.param
    keras.mixed_precision.set_global_policy("float32")


# Input i with compilation j runs under policy (i + j) mod 3: each input meets
# every policy and every compilation, each compilation every policy (twice).
PAIRWISE = [
    (POLICIES[(i + j) % 3], compilation, how)
    for i, how in enumerate(INPUTS)
    for j, compilation in enumerate(COMPILATION)
]


@pytest.mark.slow
@pytest.mark.parametrize("policy, compilation, how", PAIRWISE, indirect=["policy"])
def test_configuration_prunes_to_the_schedule(policy, compilation, how):
    if _too_slow_for_ci(policy, compilation, how):
        pytest.skip("torch.compile: about a minute per model here; the arrays case covers it")
    x, y = small_images(STEPS * BATCH // 2, size=12)
    pruned = keras_prune.prune_low_magnitude(
        _model(), keras_prune.ConstantSparsity(0.8, 0, frequency=2)
    )
    optimizer = keras.optimizers.Adam(
        1e-3, gradient_accumulation_steps=2 if how == "gradient_accumulation" else None
    )
    compile_args, fit_args = _fit_arguments(how, x, y)
    pruned.compile(
        optimizer, "sparse_categorical_crossentropy", **COMPILATION[compilation], **compile_args
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            pruned.fit(**fit_args, verbose=0, callbacks=[keras_prune.UpdatePruningStep()])
        except ValueError as error:
            if not _refused_by_keras(how, error):
                raise
            assert all(
                int(ops.convert_to_numpy(w.pruning_step)) == 0
                for w in keras_prune.pruned_layers(pruned)
            )
            return
    shortfalls = [str(w.message) for w in caught if "Pruning ended below" in str(w.message)]
    assert shortfalls == []
    assert final_sparsity_shortfalls(pruned) == []
    for wrapper in keras_prune.pruned_layers(pruned):
        assert int(ops.convert_to_numpy(wrapper.pruning_step)) == STEPS, wrapper.name
        ((weight, mask, _),) = wrapper.pruning_vars
        size = math.prod(weight.shape)
        assert int(np.sum(ops.convert_to_numpy(mask))) == round(0.2 * size), wrapper.name
    stripped = keras_prune.strip_pruning(pruned)
    assert keras_prune.sparsity_report(stripped).total_sparsity == pytest.approx(0.8, abs=2e-3)


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"], indirect=True)
def test_masks_rank_the_float32_weights_under_a_mixed_policy(policy):
    # Weights that differ in float32 but tie in float16 and bfloat16: the mask
    # keeps the k largest float32 magnitudes, as float32 training does.
    wrapper = keras_prune.PruneLowMagnitude(
        keras.layers.Dense(1, use_bias=False), keras_prune.ConstantSparsity(0.5, 0, frequency=1)
    )
    wrapper.build((None, 8))
    base = np.float32(1.0)
    # Largest last: a tie-break by index among float16 ties would keep the smallest.
    kernel = (base + np.arange(8, dtype="float32") * 1e-6).reshape(8, 1)
    kernel[::2] *= -1
    wrapper.layer.kernel.assign(kernel)
    assert len(np.unique(kernel.astype("float16"))) == 2  # +1 and -1 in float16
    wrapper(np.ones((2, 8), "float32"), training=True)
    mask = ops.convert_to_numpy(wrapper.pruning_vars[0][1])[:, 0]
    order = np.argsort(-np.abs(kernel[:, 0]), kind="stable")  # the full sort, float32
    expected = np.zeros(8, "float32")
    expected[order[:4]] = 1
    np.testing.assert_array_equal(mask, expected)
    assert int(ops.convert_to_numpy(wrapper.pruning_step)) == 1


@pytest.mark.slow
@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"], indirect=True)
def test_save_load_and_resume_under_a_mixed_policy(policy, tmp_path):
    x, y = small_images(STEPS * BATCH // 2, size=12)
    schedule = keras_prune.PolynomialDecay(0.0, 0.8, begin_step=0, end_step=STEPS, frequency=2)
    pruned = keras_prune.prune_low_magnitude(_model(), schedule)
    pruned.compile("adam", "sparse_categorical_crossentropy")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # stops halfway on purpose
        pruned.fit(
            x, y, batch_size=BATCH, epochs=1, verbose=0, callbacks=[keras_prune.UpdatePruningStep()]
        )
    halfway = [
        ops.convert_to_numpy(m)
        for w in keras_prune.pruned_layers(pruned)
        for _, m, _ in w.pruning_vars
    ]
    assert all(0 < np.mean(m) < 1 for m in halfway)
    path = str(tmp_path / "halfway.keras")
    keras_prune.save_model(pruned, path)
    resumed = keras.saving.load_model(path)
    for wrapper in keras_prune.pruned_layers(resumed):
        assert int(ops.convert_to_numpy(wrapper.pruning_step)) == STEPS // 2
    resumed.fit(
        x, y, batch_size=BATCH, epochs=1, verbose=0, callbacks=[keras_prune.UpdatePruningStep()]
    )
    assert final_sparsity_shortfalls(resumed) == []
    for wrapper, before in zip(keras_prune.pruned_layers(resumed), halfway):
        ((weight, mask, _),) = wrapper.pruning_vars
        after = ops.convert_to_numpy(mask)
        assert int(after.sum()) == round(0.2 * math.prod(weight.shape))
        assert np.all(after[before == 0] == 0)  # what was pruned stays pruned

"""Runs the hand-written training loops of docs/training_loops.md, each on its backend.

The code is read from the page (the fenced block after each
`<!-- training_loops: NAME -->` comment), so the documentation and the test
cannot drift apart. Each loop is run for one epoch (pruned to the schedule's
sparsity at step 4), then for one more (step 8, the final 75%): every pruned
weight holds exactly its scheduled number of zeros, and every weight pruned
after the first epoch is still exactly zero after the second.
"""

import math
import pathlib
import re
import warnings

import keras
import numpy as np
import pytest
from conftest import BACKEND
from keras import ops

import keras_prune

DOC = pathlib.Path(__file__).resolve().parent.parent / "docs" / "training_loops.md"
BLOCK = re.compile(r"<!-- training_loops: (\w+) -->\s*```python\n(.*?)```", re.S)


def blocks():
    found = {}
    for name, code in BLOCK.findall(DOC.read_text()):
        found.setdefault(name, []).append(code)
    return found


LOOPS = [
    (name, i)
    for name, codes in blocks().items()
    if name not in ("common", "after")
    for i in range(len(codes))
]


def effective_weights(model):
    return [
        ops.convert_to_numpy(ops.multiply(w.value, m.value))
        for wrapper in keras_prune.pruned_layers(model)
        for w, m, _ in wrapper.pruning_vars
    ]


def pruning_steps(model):
    return [
        int(ops.convert_to_numpy(w.pruning_step.value)) for w in keras_prune.pruned_layers(model)
    ]


def assert_exact_sparsity(model, sparsity):
    for weight in effective_weights(model):
        kept = max(round(weight.size * (1 - sparsity)), 1)
        assert np.count_nonzero(weight) == kept


def test_the_page_has_one_loop_per_backend_family():
    assert sorted({name for name, _ in LOOPS}) == ["jax", "tensorflow", "torch"]
    assert [len(blocks()[name]) for name in ("common", "after")] == [1, 1]


@pytest.fixture
def policy(request):
    keras.mixed_precision.set_global_policy(request.param)
    yield request.param
    keras.mixed_precision.set_global_policy("float32")


@pytest.mark.slow
@pytest.mark.parametrize("policy", ["float32", "mixed_float16", "mixed_bfloat16"], indirect=True)
@pytest.mark.parametrize("name, index", LOOPS)
def test_documented_loop(name, index, policy):
    if name != BACKEND:
        pytest.skip(f"the {name} loop runs on the {name} backend")
    code = blocks()
    namespace = {}
    exec(code["common"][0], namespace)
    pruned, schedule = namespace["pruned"], namespace["schedule"]
    initial = [ops.convert_to_numpy(v.value) for v in pruned.trainable_variables]
    loop = compile(code[name][index], f"{DOC.name}:{name}[{index}]", "exec")

    namespace["epochs"] = 1
    exec(loop, namespace)
    assert pruning_steps(pruned) == [4, 4]  # one step per batch
    halfway = float(ops.convert_to_numpy(schedule(4)[1]))
    assert 0 < halfway < 0.75
    assert_exact_sparsity(pruned, halfway)
    zeros = [w == 0 for w in effective_weights(pruned)]

    exec(loop, namespace)  # the second epoch continues from the model's state
    assert pruning_steps(pruned) == [8, 8]
    assert_exact_sparsity(pruned, 0.75)
    for was_zero, weight in zip(zeros, effective_weights(pruned)):
        assert np.all(weight[was_zero] == 0)
    trained = [ops.convert_to_numpy(v.value) for v in pruned.trainable_variables]
    assert all(not np.array_equal(a, b) for a, b in zip(trained, initial))
    assert math.isfinite(float(ops.convert_to_numpy(namespace["loss"])))

    exec(code["after"][0], namespace)
    final = namespace["final"]
    assert not list(keras_prune.pruned_layers(final))
    x = namespace["x"]
    np.testing.assert_allclose(
        np.asarray(ops.convert_to_numpy(final(x)), "float32"),
        np.asarray(ops.convert_to_numpy(pruned(x)), "float32"),
        atol=1e-6 if policy == "float32" else 1e-2,
    )
    assert keras_prune.callbacks.final_sparsity_shortfalls(pruned) == []


def test_tfmot_custom_loop_callback_calls_are_harmless():
    # tfmot's recipe drives UpdatePruningStep by hand around a custom loop.
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4)])
    pruned = keras_prune.prune_low_magnitude(
        model, keras_prune.ConstantSparsity(0.5, 0, frequency=1)
    )
    callback = keras_prune.UpdatePruningStep()
    callback.set_model(pruned)
    callback.on_train_begin()
    callback.on_train_batch_begin(batch=-1)
    pruned(np.ones((2, 3), "float32"), training=True)
    callback.on_epoch_end(0)
    assert pruning_steps(pruned) == [1]
    assert [s for _, s in next(keras_prune.pruned_layers(pruned)).mask_sparsity()] == [0.5]
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        callback.on_train_end()  # silent: the final sparsity is reached

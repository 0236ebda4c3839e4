"""Multi-device pruning checks, run in a fresh process by tests/test_distribution.py.

Simulated devices must be configured before the backend initialises, which a
pytest process has already done, so each scenario runs here:

    python tests/distributed_worker.py SCENARIO NUM_DEVICES

SCENARIO is "jax_data_parallel", "jax_model_parallel" or "tf_mirrored". The
worker sets XLA_FLAGS / KERAS_BACKEND itself, trains, and prints one JSON
line of measurements (prefixed RESULT:) that the test asserts on. It imports
jax/tensorflow directly: inspecting per-device shards and replicas is
backend-specific by nature.
"""

from __future__ import annotations

import json
import os
import sys

SCENARIO, NUM_DEVICES = sys.argv[1], int(sys.argv[2])
BACKEND = "tensorflow" if SCENARIO.startswith("tf_") else "jax"
os.environ["KERAS_BACKEND"] = BACKEND
os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={NUM_DEVICES}"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_prune  # noqa: E402

BATCH = 16
END_STEP = 8
TARGET = 0.75


def toy_data(n=64, features=24, classes=4, seed=0):
    """Learnable data: the class sets a bright band of features."""
    rng = np.random.RandomState(seed)
    y = rng.randint(0, classes, n)
    x = rng.rand(n, features).astype("float32") * 0.3
    for i, c in enumerate(y):
        x[i, c * 6 : c * 6 + 6] += 1.0
    return x, y


def pruned_mlp(schedule=None, features=24, classes=4):
    model = keras.Sequential(
        [
            keras.Input((features,)),
            keras.layers.Dense(32, activation="relu", name="dense"),
            keras.layers.Dense(classes, activation="softmax", name="dense_out"),
        ]
    )
    schedule = schedule or keras_prune.PolynomialDecay(
        0.0, TARGET, begin_step=0, end_step=END_STEP, frequency=2
    )
    return keras_prune.prune_low_magnitude(model, pruning_schedule=schedule)


def train(model, initial_weights, x, y, epochs=3):
    model.set_weights(initial_weights)
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="sparse_categorical_crossentropy")
    model.fit(
        x,
        y,
        batch_size=BATCH,
        epochs=epochs,
        shuffle=False,
        verbose=0,
        callbacks=[keras_prune.UpdatePruningStep()],
    )
    return model


def masks_of(model):
    """{layer/weight name: mask (numpy)} as Keras reads it (replica 0 / gathered)."""
    return {
        f"{layer.name}/{w.name}": keras.ops.convert_to_numpy(m)
        for layer in keras_prune.pruned_layers(model)
        for w, m, _ in layer.pruning_vars
    }


def replica_values(variable):
    """Every per-device copy or shard of `variable`, as (index, numpy array)."""
    if BACKEND == "jax":
        return [(s.index, np.asarray(s.data)) for s in variable.value.addressable_shards]
    values = getattr(variable.value, "values", None)
    if values is None:  # not a distributed variable: a single copy
        return [(None, variable.numpy())]
    return [(None, v.numpy()) for v in values]


def compare_with_single_device(reference_masks, model):
    """Mask agreement, exact sparsity and replica consistency for a distributed model."""
    result = {"layers": {}}
    for layer in keras_prune.pruned_layers(model):
        for weight, mask, threshold in layer.pruning_vars:
            copies = replica_values(mask)
            full = copies[0][1]
            key = f"{layer.name}/{weight.name}"
            ref = reference_masks[key]
            result["layers"][key] = {
                "num_copies": len(copies),
                "copies_identical": all(np.array_equal(full, c) for _, c in copies),
                "thresholds_identical": len({float(c) for _, c in replica_values(threshold)}) == 1,
                "steps": sorted({int(c) for _, c in replica_values(layer.pruning_step)}),
                "sparsity": float(1.0 - full.mean()),
                "reference_sparsity": float(1.0 - ref.mean()),
                "agreement": float((full == ref).mean()),
            }
    return result


def data_parallel_case(make_distributed_scope):
    x, y = toy_data()
    keras.utils.set_random_seed(1234)
    reference = pruned_mlp()
    initial = reference.get_weights()
    reference_masks = masks_of(train(reference, initial, x, y))
    with make_distributed_scope():
        model = train(pruned_mlp(), initial, x, y)
        result = compare_with_single_device(reference_masks, model)
    result["expected_steps"] = 3 * len(x) // BATCH
    return result


def jax_data_parallel():
    import contextlib

    devices = keras.distribution.list_devices("cpu")

    @contextlib.contextmanager
    def scope():
        with keras.distribution.DataParallel(devices=devices).scope():
            yield

    result = data_parallel_case(scope)
    result["devices"] = len(devices)
    return result


def tf_mirrored():
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * NUM_DEVICES
    )
    names = [d.name for d in tf.config.list_logical_devices("CPU")]
    strategy = tf.distribute.MirroredStrategy(names)
    result = data_parallel_case(strategy.scope)
    result["devices"] = strategy.num_replicas_in_sync
    return result


def train_step_hlo(model, mesh, x, y):
    """Compiled HLO of `model`'s train step on a batch sharded along "batch"."""
    import jax

    batch = jax.sharding.NamedSharding(mesh.backend_mesh, jax.sharding.PartitionSpec("batch"))
    state = tuple(
        [v.value for v in variables]
        for variables in (
            model.trainable_variables,
            model.non_trainable_variables,
            model.optimizer.variables,
            model.metrics_variables,
        )
    )
    data = (jax.device_put(x, batch), jax.device_put(y, batch))
    return jax.jit(model.train_step).lower(state, data).compile().as_text()


def all_gathers(hlo):
    """[(HLO computation, gathered shape, in a cond branch)] for every all-gather."""
    branches = set()
    for line in hlo.splitlines():
        if "branch_computations={" in line:
            names = line.split("branch_computations={")[1].split("}")[0]
            branches.update(name.strip() for name in names.split(","))
    found, computation = [], None
    for line in hlo.splitlines():
        if line and not line.startswith(" ") and line.rstrip().endswith("{"):
            computation = "ENTRY" if line.startswith("ENTRY") else line.split()[0]
        if " all-gather(" in line:
            shape = line.split("=")[1].split()[0].split("{")[0]
            found.append((computation, shape, computation in branches))
    return found


def jax_model_parallel():
    """Dense kernel sharded on its output axis; check layout, global k and HLO."""
    devices = keras.distribution.list_devices("cpu")
    mesh = keras.distribution.DeviceMesh((2, len(devices) // 2), ["batch", "model"], devices)
    layout_map = keras.distribution.LayoutMap(mesh)
    # The user's rule for the kernel only; the mask must follow the kernel.
    layout_map[".*dense/kernel"] = (None, "model")
    distribution = keras.distribution.ModelParallel(layout_map=layout_map, batch_dim_name="batch")
    x, y = toy_data()
    with distribution.scope():
        keras.utils.set_random_seed(1234)
        # Constant 50% at every step, with lr 0: the mask must be exactly the
        # global magnitude mask of the initial kernel.
        model = pruned_mlp(keras_prune.ConstantSparsity(0.5, 0, frequency=1))
        layer = next(keras_prune.pruned_layers(model))
        kernel, mask, _ = layer.pruning_vars[0]
        # Column shards differ in scale: the left half of the columns holds every
        # large weight, so a per-shard top-k would keep half of each shard, the
        # global top-k keeps the left half only.
        rows, cols = kernel.shape
        rng = np.random.RandomState(0)
        magnitudes = rng.rand(rows, cols).astype("float32") + 0.01
        magnitudes[:, cols // 2 :] *= 0.001
        kernel.assign(magnitudes * rng.choice([-1.0, 1.0], size=(rows, cols)).astype("float32"))
        initial = np.asarray(kernel.value)
        model.compile(optimizer=keras.optimizers.SGD(0.0), loss="sparse_categorical_crossentropy")
        model.fit(
            x,
            y,
            batch_size=BATCH,
            epochs=1,
            shuffle=False,
            verbose=0,
            callbacks=[keras_prune.UpdatePruningStep()],
        )
        expected = np.asarray(keras_prune.magnitude_mask(initial, 0.5))
        full = np.asarray(mask.value)
        shards = mask.value.addressable_shards
        kept_per_shard = sorted(int(np.asarray(s.data).sum()) for s in shards)
        hlo = train_step_hlo(model, mesh, x[:BATCH], y[:BATCH])
    return {
        "devices": len(devices),
        "kernel_spec": str(kernel.value.sharding.spec),
        "mask_spec": str(mask.value.sharding.spec),
        "mask_shard_shapes": sorted({tuple(s.data.shape) for s in shards}),
        "kernel_shard_shapes": sorted(
            {tuple(s.data.shape) for s in kernel.value.addressable_shards}
        ),
        "mask_equals_global": bool(np.array_equal(full, expected)),
        "kept": int(full.sum()),
        "size": int(full.size),
        "kept_per_shard": kept_per_shard,
        "all_gathers": all_gathers(hlo),
    }


if __name__ == "__main__":
    scenarios = {
        "jax_data_parallel": jax_data_parallel,
        "jax_model_parallel": jax_model_parallel,
        "tf_mirrored": tf_mirrored,
    }
    if SCENARIO not in scenarios:
        raise SystemExit(f"unknown scenario {SCENARIO!r}; one of {sorted(scenarios)}")
    print("RESULT:" + json.dumps(scenarios[SCENARIO]()))

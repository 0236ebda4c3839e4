"""Pruning on many (simulated) devices.

JAX: keras.distribution.DataParallel and ModelParallel with a LayoutMap on 4
CPU devices (XLA_FLAGS=--xla_force_host_platform_device_count=4). TensorFlow:
tf.distribute.MirroredStrategy on 2 logical CPU devices. Devices must be
configured before the backend initialises, so each case trains in a fresh
process (tests/distributed_worker.py) and the test asserts its measurements.
The JAX cases run in the jax pytest run, the TensorFlow case in the
tensorflow run; Keras has no distribution support for the torch backend.
"""

import json
import os
import pathlib
import subprocess
import sys

import keras
import numpy as np
import pytest
from conftest import BACKEND

import keras_prune

pytestmark = pytest.mark.slow  # trains models or starts Python processes

ROOT = pathlib.Path(__file__).resolve().parents[1]
WORKER = ROOT / "tests" / "distributed_worker.py"

# Masks of a data-parallel run may differ from single-device training only
# where the all-reduced gradient's summation order moves a weight across the
# threshold; the sparsity itself is exact (k is fixed), so a few swapped
# entries are the only possible difference.
MIN_MASK_AGREEMENT = 0.99

needs_jax = pytest.mark.skipif(
    BACKEND != "jax",
    reason="keras.distribution is implemented for JAX only (not torch); these "
    "cases run in the KERAS_BACKEND=jax test run",
)
needs_tf = pytest.mark.skipif(
    BACKEND != "tensorflow",
    reason="tf.distribute needs the TensorFlow backend (Keras has no torch "
    "multi-device support); this case runs in the KERAS_BACKEND=tensorflow test run",
)


def run_worker(scenario, num_devices):
    """Runs one scenario in a fresh process; returns its RESULT JSON."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    done = subprocess.run(
        [sys.executable, str(WORKER), scenario, str(num_devices)],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT:")]
    assert done.returncode == 0 and lines, (
        f"{scenario} failed (exit {done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    )
    return json.loads(lines[-1][len("RESULT:") :])


def check_data_parallel(result, num_devices):
    assert result["devices"] == num_devices
    assert len(result["layers"]) == 2
    for path, layer in result["layers"].items():
        # Every replica holds the same mask, threshold and step.
        assert layer["num_copies"] == num_devices, path
        assert layer["copies_identical"], path
        assert layer["thresholds_identical"], path
        assert layer["steps"] == [result["expected_steps"]], path
        # The schedule's final sparsity, exactly, as in single-device training.
        assert layer["sparsity"] == pytest.approx(0.75, abs=1e-9), path
        assert layer["reference_sparsity"] == pytest.approx(0.75, abs=1e-9), path
        assert layer["agreement"] >= MIN_MASK_AGREEMENT, path


@needs_jax
def test_jax_data_parallel_masks_match_single_device():
    check_data_parallel(run_worker("jax_data_parallel", 4), 4)


@needs_tf
def test_tf_mirrored_strategy_masks_match_single_device():
    check_data_parallel(run_worker("tf_mirrored", 2), 2)


@needs_jax
def test_jax_model_parallel_mask_sharded_like_kernel_with_global_k():
    result = run_worker("jax_model_parallel", 4)
    # The LayoutMap names only the kernel; the mask follows it.
    assert result["kernel_spec"] == "P(None, 'model')"
    assert result["mask_spec"] == result["kernel_spec"]
    assert result["mask_shard_shapes"] == result["kernel_shard_shapes"] == [[24, 16]]
    # Global top-k: all large weights sit in one column shard, so that shard
    # keeps everything and the other nothing (per-shard top-k would keep half
    # of each); 2 batch replicas x 2 model shards.
    assert result["mask_equals_global"]
    assert result["kept"] == result["size"] // 2
    assert result["kept_per_shard"] == [0, 0, 24 * 16, 24 * 16]
    # In the compiled train step the sharded kernel is gathered whole (for the
    # global sort) only inside a cond branch, i.e. only on pruning steps.
    gathers = result["all_gathers"]
    assert [shape for _, shape, _ in gathers if shape == "f32[24,32]"] == ["f32[24,32]"], gathers
    assert all(in_branch for _, _, in_branch in gathers), gathers


def test_mask_variables_keep_add_weight_order_and_paths():
    """The mask is created with its weight's layout; order and paths stay add_weight's."""
    layer = keras_prune.PruneLowMagnitude(keras.layers.Dense(3, name="d"))
    layer.build((None, 4))
    names = [v.path for v in layer.non_trainable_variables]
    assert names == [
        "prune_low_magnitude_d/kernel_mask",
        "prune_low_magnitude_d/kernel_threshold",
        "prune_low_magnitude_d/pruning_step",
    ]
    kernel, mask, _ = layer.pruning_vars[0]
    assert mask.trainable is False and mask.dtype == kernel.dtype
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(mask), np.ones((4, 3)))
    # Without a distribution nothing is laid out.
    assert getattr(mask, "_layout", None) is None

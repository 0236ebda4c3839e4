import keras
import numpy as np
import pytest
from keras import ops

from keras_prune import _backend


class _Probe(keras.layers.Layer):
    def __init__(self, record, **kwargs):
        super().__init__(**kwargs)
        self.record = record

    def call(self, inputs):
        self.record(_backend.is_concrete(inputs))
        return inputs


def test_is_concrete_in_eager_code_and_not_in_a_compiled_step():
    assert _backend.is_concrete(ops.convert_to_tensor(True))
    seen = []
    model = keras.Sequential([keras.Input((1,)), _Probe(seen.append)])
    model.predict(np.zeros((2, 1), "float32"), verbose=0)
    # Keras runs torch eagerly; TF traces a tf.function, JAX a jax.jit.
    assert seen and all(s == (keras.backend.backend() == "torch") for s in seen)


def test_fused_compiles_large_inputs_on_tensorflow_only():
    seen = []

    def double(x):
        seen.append(_backend.is_concrete(x))
        return x * 2

    fn = _backend.fused(double, min_size=4)
    np.testing.assert_array_equal(ops.convert_to_numpy(fn(ops.ones((3,)))), [2, 2, 2])
    np.testing.assert_array_equal(ops.convert_to_numpy(fn(ops.ones((2, 2)))), [[2, 2], [2, 2]])
    assert seen == [True, keras.backend.backend() != "tensorflow"]


def _on_cpu(x):
    return x.cpu() if keras.backend.backend() == "torch" else x  # also on a GPU machine


def test_top_k_mask_on_host_keeps_the_first_ties_and_writes_the_dtype():
    def select(values, k, dtype="float32"):
        flat = _on_cpu(ops.convert_to_tensor(np.array(values, "float32")))
        keep, threshold = _backend.top_k_mask_on_host(flat, k, dtype)
        assert keras.backend.standardize_dtype(keep.dtype) == dtype
        return ops.convert_to_numpy(keep).tolist(), np.int32(threshold).view(np.float32)

    assert select([5, -1, 3, -3, 3, 0], 2) == ([1, 0, 1, 0, 0, 0], 3)
    assert select([5, -1, 3, -3, 3, 0], 5, "bool") == ([1, 1, 1, 1, 1, 0], 1)
    # Pruned weights are zeros: selected among the nonzero ones, or 0 itself.
    assert select([0, 7, 0, 0, -2, 0, 9], 3) == ([0, 1, 0, 0, 1, 0, 1], 2)
    assert select([0, 7, 0, 0, -2, 0, 9], 5) == ([1, 1, 1, 0, 1, 0, 1], 0)
    assert select([0, 0, 0], 1, "float16") == ([1, 0, 0], 0)
    # numpy has no bfloat16: the mask comes back as bool for top_k_mask to cast.
    keep, _ = _backend.top_k_mask_on_host(_on_cpu(ops.ones((3,))), 2, "bfloat16")
    assert keras.backend.standardize_dtype(keep.dtype) == "bool"


@pytest.mark.skipif(keras.backend.backend() != "torch", reason="the host path is for eager torch")
@pytest.mark.parametrize("case", ["dense", "pruned_before", "ties"])
def test_update_mask_on_host_rewrites_the_mask_like_a_stable_sort(case):
    rng = np.random.default_rng(3)
    weight = rng.standard_normal(5000).astype("float32")
    mask = np.ones(5000, "float32")
    if case == "pruned_before":
        mask[rng.random(5000) < 0.6] = 0
    if case == "ties":
        weight = np.round(weight, 1)
    k = 900
    masked = np.abs(weight * mask)
    order = np.argsort(-masked, kind="stable")  # the independent reference: a full sort
    expected = np.zeros(5000, "float32")
    expected[order[:k]] = 1
    w, m = keras.Variable(weight), keras.Variable(mask, trainable=False)
    assert _backend.host_updatable(w, m)
    storage = m.value.data_ptr()
    threshold = _backend.update_mask_on_host(w.value, m.value, k)
    assert m.value.data_ptr() == storage  # rewritten in place
    np.testing.assert_array_equal(ops.convert_to_numpy(m), expected)
    assert threshold == masked[order[k - 1]]
    np.testing.assert_array_equal(ops.convert_to_numpy(w), weight)  # the weight is untouched
    assert not _backend.host_updatable(w, keras.Variable(mask, dtype="float16"))


def test_eager_keeps_a_function_out_of_torch_compile():
    seen = []

    def double(x):
        seen.append(_backend.is_concrete(x))
        return x * 2

    eager = _backend.eager(double)
    if keras.backend.backend() != "torch":
        assert eager is double  # traced into the compiled step as usual
        return
    import torch

    compiled = torch.compile(lambda x: eager(x) + 1)
    np.testing.assert_array_equal(ops.convert_to_numpy(compiled(torch.ones(3))), [3, 3, 3])
    assert seen == [True]  # ran eagerly, inside the compiled function


def test_known_false_only_for_a_concrete_false():
    assert _backend.known_false(ops.convert_to_tensor(False))
    assert not _backend.known_false(ops.convert_to_tensor(True))


def test_cond_calls_the_branch_that_a_concrete_pred_picks():
    calls = []

    def branch(name):
        return lambda: calls.append(name) or ops.convert_to_tensor(len(name))

    assert int(_backend.cond(ops.convert_to_tensor(True), branch("yes"), branch("no"))) == 3
    assert int(_backend.cond(ops.convert_to_tensor(False), branch("yes"), branch("no"))) == 2
    assert calls == ["yes", "no"]  # the other branch is not even traced


class _Choose(keras.layers.Layer):
    def call(self, inputs):
        pred = ops.greater(ops.sum(inputs), 0)
        return _backend.cond(pred, lambda: inputs + 1, lambda: inputs - 1)


def test_cond_follows_a_traced_pred_in_a_compiled_step():
    model = keras.Sequential([keras.Input((2,)), _Choose()])
    got = model.predict(np.array([[1.0, 2.0], [-5.0, 1.0]], "float32"), batch_size=1, verbose=0)
    np.testing.assert_array_equal(got, [[2.0, 3.0], [-6.0, 0.0]])

import keras
import numpy as np
import pytest
from keras import ops

from keras_prune import _backend, magnitude_mask, masks
from keras_prune.masks import compute_mask, keep_count, top_k_mask


def reference_keep(weight, k):
    """Stable full sort: keep the k largest |w|, lower flat index first on ties."""
    flat = np.abs(np.asarray(weight, np.float32)).ravel()
    order = np.argsort(-flat, kind="stable")
    keep = np.zeros(flat.size, bool)
    keep[order[:k]] = True
    return keep.reshape(np.shape(weight))


def reference_mask(weight, sparsity):
    k = max(int(np.round(np.float32(weight.size) * (np.float32(1) - np.float32(sparsity)))), 1)
    return reference_keep(weight, k).astype(np.float32)


def as_numpy(x):
    return ops.convert_to_numpy(x)


@pytest.mark.parametrize("sparsity", [0.0, 0.1, 0.5, 0.875, 0.99, 0.999999])
@pytest.mark.parametrize("shape", [(7,), (13, 11), (3, 3, 4, 5)])
def test_keeps_exactly_k_by_magnitude(shape, sparsity):
    weight = np.random.RandomState(sum(shape)).randn(*shape).astype("float32")
    mask = as_numpy(magnitude_mask(weight, sparsity))
    np.testing.assert_array_equal(mask, reference_mask(weight, sparsity))
    assert mask.dtype == np.float32


def test_ties_keep_lower_flat_index():
    weight = np.array([[1.0, -2.0, 2.0, 0.5], [2.0, -1.0, 0.0, 2.0]], "float32")
    # k = 3 of 8: |w| = 2 four times; the first three by flat index win.
    mask = as_numpy(magnitude_mask(weight, 0.625))
    np.testing.assert_array_equal(mask, [[0, 1, 1, 0], [1, 0, 0, 0]])
    np.testing.assert_array_equal(
        as_numpy(magnitude_mask(np.ones((4, 4), "float32"), 0.75)).ravel(), [1, 1, 1, 1] + [0] * 12
    )


def test_keep_count_rounds_half_to_even_in_float32():
    cases = [(10, 0.75), (4, 0.375), (4, 0.125), (10, 0.85), (4, 0.875), (100, 1.0)]
    # 2.5 -> 2 and 3.5 -> 4 (half to even); 10 * float32(1 - 0.85) = 1.4999998 -> 1.
    assert [int(as_numpy(keep_count(n, s))) for n, s in cases] == [2, 2, 4, 1, 1, 1]
    assert int(as_numpy(keep_count(431_242, 0.875))) == 53905  # round(53905.25)
    assert int(as_numpy(keep_count(8, float("nan")))) == 8  # a faulty schedule prunes nothing


def test_pruned_weights_stay_pruned():
    """Masks are computed from weight * mask, so a pruned weight ranks last."""
    weight = np.array([5.0, 4.0, 3.0, 2.0, 1.0, 0.5], "float32")
    first = as_numpy(magnitude_mask(weight, 0.5))  # keeps 5, 4, 3
    weight[3:] = [9.0, 9.0, 9.0]  # pruned weights drifted upward
    second, _ = compute_mask(ops.convert_to_tensor(weight * first), np.float32(0.5))
    np.testing.assert_array_equal(as_numpy(second), first)


def test_threshold_is_kth_largest_magnitude():
    weight = np.array([0.3, -0.9, 0.1, 0.7], "float32")
    _, threshold = compute_mask(ops.convert_to_tensor(weight), np.float32(0.5))
    assert float(as_numpy(threshold)) == pytest.approx(0.7)


@pytest.mark.parametrize(
    "pooling, expected",
    [
        ("AVG", [[1, 1, 0, 0, 0], [1, 1, 0, 0, 0], [0, 0, 0, 0, 0]]),
        ("MAX", [[0, 0, 1, 1, 0], [0, 0, 1, 1, 0], [0, 0, 0, 0, 0]]),
    ],
)
def test_block_pruning(pooling, expected):
    weight = np.array(
        [[2.0, 2.0, 0.0, 5.0, 0.1], [2.0, 2.0, 0.0, 0.0, 0.1], [0.2, 0.2, 0.3, 0.3, 0.1]], "float32"
    )
    # 2x2 blocks over a 3x5 weight: 2x3 blocks, edge blocks partial; keep 1 of 6.
    mask = as_numpy(magnitude_mask(weight, 0.9, block_size=(2, 2), block_pooling_type=pooling))
    np.testing.assert_array_equal(mask, expected)


def test_m_by_n_zeros_m_of_every_n_input_channels():
    weight = np.random.RandomState(3).randn(8, 3).astype("float32")  # (in, out)
    mask = as_numpy(magnitude_mask(weight, 0.0, sparsity_m_by_n=(2, 4)))
    groups = mask.reshape(2, 4, 3)
    np.testing.assert_array_equal(groups.sum(axis=1), 2 * np.ones((2, 3)))
    for g in range(2):
        for out in range(3):
            kept = np.flatnonzero(groups[g, :, out])
            block = np.abs(weight[g * 4 : g * 4 + 4, out])
            assert set(kept) == set(np.argsort(-block, kind="stable")[:2])
    conv = np.random.RandomState(4).randn(3, 3, 8, 2).astype("float32")
    mask = as_numpy(magnitude_mask(conv, 0.0, sparsity_m_by_n=(1, 4)))
    np.testing.assert_array_equal(mask.reshape(3, 3, 2, 4, 2).sum(axis=3), 3)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(sparsity=1.0), ValueError, "sparsity.*\\[0, 1\\)"),
        (dict(sparsity=None), TypeError, "sparsity"),
        (dict(block_size=(2, 2), weight_shape=(3, 3, 2)), ValueError, "block_size.*2-D"),
        (dict(block_size=(0, 2)), ValueError, "block_size"),
        (dict(block_size=2), TypeError, "block_size"),
        (dict(block_size=(2, 2), block_pooling_type="MIN"), ValueError, "block_pooling_type"),
        (dict(sparsity_m_by_n=(2, 3)), ValueError, "sparsity_m_by_n.*must divide"),
        (dict(sparsity_m_by_n=(4, 4)), ValueError, "sparsity_m_by_n.*m < n"),
        (dict(sparsity_m_by_n=(2, 4), weight_shape=(8,)), ValueError, "sparsity_m_by_n"),
    ],
)
def test_rejects_bad_options(kwargs, error, match):
    shape = kwargs.pop("weight_shape", (8, 4))
    args = {"sparsity": 0.5, **kwargs}
    with pytest.raises(error, match=match):
        magnitude_mask(np.ones(shape, "float32"), **args)


def _selection_cases():
    """(name, weight) pairs that stress the radix select in `top_k_mask`."""
    rng = np.random.RandomState(7)
    normal = rng.randn(4099).astype("float32")  # odd size, > one 16-bit digit
    previously_pruned = normal * (rng.rand(4099) < 0.3)  # many exact zeros
    # All values share the high 16 bits: only the second pass separates them.
    same_high = (np.float32(1.5).view(np.int32) + rng.randint(0, 2**16, 3001)).view(np.float32)
    # Adjacent high-16-bit bins and the 2**16 boundary of the low digit.
    boundary = (np.int32(0x3F80FFFF) + np.arange(-3, 4, dtype=np.int32)).view(np.float32)
    tiny = np.array([1e-45, -1e-45, 2e-45, -0.0, 0.0, 1e-38, 3e38, -3e38], "float32")
    return [
        ("normal", normal),
        ("signs", -normal),
        ("rounded", np.round(normal, 1)),  # heavy ties at many values
        ("all_equal", np.full(37, -0.25, "float32")),
        ("zeros", np.zeros(16, "float32")),
        ("previously_pruned", previously_pruned),
        ("same_high_bits", np.concatenate([same_high, same_high[:500]])),
        ("boundary", np.tile(boundary, 5)),
        ("subnormal_and_signed_zero", tiny),
        ("one", np.array([-2.0], "float32")),
        ("two_dim", rng.randn(33, 17).astype("float32")),
    ]


# numpy.partition selects in eager CPU tensors (these tests call top_k_mask
# eagerly). "radix_chunks" makes the radix select's passes run over
# 1000-entry chunks plus a remainder.
_SELECTIONS = ["radix_select", "radix_chunks", "numpy_partition"]


@pytest.fixture(params=_SELECTIONS)
def selection(request, monkeypatch):
    """Each way `top_k_mask` can select here: keras.ops, or numpy.partition in eager code."""
    if request.param.startswith("radix"):
        monkeypatch.setattr(_backend, "host_selectable", lambda flat: False)
        monkeypatch.setattr(_backend, "host_callable", lambda flat: False)
    if request.param == "radix_chunks":
        monkeypatch.setattr(masks, "_CHUNK", 1000)
    return request.param


def test_eager_cpu_tensors_select_with_numpy_partition():
    flat = ops.convert_to_tensor(np.ones(8, "float32"))
    on_cpu = keras.backend.backend() != "torch" or flat.device.type == "cpu"  # not on a GPU
    assert _backend.host_selectable(flat) == on_cpu


@pytest.mark.parametrize("name, weight", _selection_cases(), ids=[c[0] for c in _selection_cases()])
def test_top_k_mask_equals_stable_sort(name, weight, selection):
    """Exactly k kept, ties by lower flat index, at every k from 1 to n."""
    n = weight.size
    for k in sorted({1, 2, 3, n // 8, n // 2, n - 1, n} & set(range(1, n + 1))):
        keep, threshold = top_k_mask(
            ops.convert_to_tensor(weight), ops.convert_to_tensor(k, "int32")
        )
        expected = reference_keep(weight, k)
        np.testing.assert_array_equal(as_numpy(keep), expected, err_msg=f"{name} k={k}")
        kth = np.sort(np.abs(weight).ravel())[n - k]
        assert as_numpy(threshold).view(np.int32) == kth.view(np.int32), (name, k)


@pytest.mark.slow
def test_large_weight_mask_equals_stable_sort(selection):
    """Large enough to run as one XLA program on TensorFlow (>= 2**16 entries)
    and to take more than one chunk in the radix select (> 2**18)."""
    # One shape per selection: TensorFlow keeps one compiled program per shape.
    rows = 600 + _SELECTIONS.index(selection)
    weight = np.round(np.random.RandomState(3).randn(rows, 600), 2).astype("float32")  # ties
    for sparsity in (0.5, 0.875):
        mask, threshold = compute_mask(
            ops.convert_to_tensor(weight), ops.convert_to_tensor(sparsity)
        )
        np.testing.assert_array_equal(as_numpy(mask), reference_mask(weight, sparsity))
        kth = np.sort(np.abs(weight).ravel())[int(as_numpy(ops.sum(mask))) * -1]
        assert as_numpy(threshold) == kth


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
def test_low_precision_weights_are_ranked_exactly(dtype):
    weight = np.round(np.random.RandomState(5).randn(31, 9), 2).astype("float32")
    tensor = ops.cast(ops.convert_to_tensor(weight), dtype)
    exact = as_numpy(ops.cast(tensor, "float32"))  # the values after rounding to dtype
    mask = magnitude_mask(tensor, 0.7)
    assert keras.backend.standardize_dtype(mask.dtype) == dtype
    np.testing.assert_array_equal(as_numpy(ops.cast(mask, "float32")), reference_mask(exact, 0.7))


class _MaskLayer(keras.layers.Layer):
    """Computes the mask of its weight inside the model's compiled function."""

    def __init__(self, weight, sparsity, **kwargs):
        super().__init__(**kwargs)
        self.kernel = self.add_weight(shape=weight.shape, initializer="zeros", trainable=False)
        self.kernel.assign(weight)
        self.sparsity = sparsity

    def call(self, inputs):
        mask, _ = compute_mask(self.kernel.value, self.sparsity)
        return ops.expand_dims(ops.reshape(mask, (-1,)), 0) + 0.0 * inputs[:, :1]


@pytest.mark.parametrize("step", ["default", "radix_select", "xla"])
@pytest.mark.parametrize(
    "name, weight", _selection_cases()[:8], ids=[c[0] for c in _selection_cases()[:8]]
)
def test_same_mask_inside_compiled_function(name, weight, step, monkeypatch):
    """The mask computed in a predict step (eager torch, tf.function, XLA, jax.jit) equals the sort.

    A plain TensorFlow graph on a CPU selects with numpy through
    `tf.numpy_function`; "radix_select" makes it use the radix select,
    which XLA steps (TensorFlow's `jit_compile=True`, every JAX step) run.
    """
    backend = keras.backend.backend()
    if backend != "tensorflow" and step != {"torch": "default", "jax": "xla"}[backend]:
        pytest.skip(f"{backend} has one kind of predict step (torch.compile is not the default)")
    if step == "radix_select":
        monkeypatch.setattr(_backend, "host_callable", lambda flat: False)
    jit_compile = step == "xla"
    sparsity = np.float32(0.6)
    model = keras.Sequential([keras.Input((1,)), _MaskLayer(weight, sparsity)])
    model.compile(jit_compile=jit_compile)
    calls = []  # in the predict step, not in the model's symbolic build above
    by_callback = _backend.kth_largest_by_callback
    monkeypatch.setattr(
        _backend,
        "kth_largest_by_callback",
        lambda *args: calls.append(1) or by_callback(*args),
    )
    mask = model.predict(np.zeros((1, 1), "float32"), verbose=0)[0]
    np.testing.assert_array_equal(mask.reshape(weight.shape), reference_mask(weight, sparsity))
    assert bool(calls) == (backend == "tensorflow" and step == "default")

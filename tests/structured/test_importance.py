import keras
import numpy as np
import pytest

from keras_prune.structured import importance

L = keras.layers


def _built(layer, *shapes):
    layer.build(*shapes)
    return layer


@pytest.mark.parametrize(
    "layer",
    [
        _built(L.Dense(5), (None, 7)),
        _built(L.Conv2D(4, 3), (None, 8, 8, 3)),
        _built(L.Conv1D(6, 2), (None, 9, 5)),
        _built(L.SeparableConv2D(4, 3), (None, 8, 8, 3)),
        _built(L.MultiHeadAttention(num_heads=3, key_dim=2), (None, 4, 6), (None, 4, 6)),
    ],
    ids=lambda layer: type(layer).__name__,
)
def test_fan_in_is_the_number_of_rows_of_the_kernel_columns(layer):
    columns = keras.ops.convert_to_numpy(importance.kernel_columns(layer))
    assert importance.fan_in(layer) == columns.shape[0]
    if isinstance(layer, L.MultiHeadAttention):
        assert columns.shape[1] == layer.num_heads  # one column per head


def test_runs_of_a_block_go_whole_locally_and_globally():
    rng = np.random.RandomState(0)
    a, b = rng.rand(12), rng.rand(8) * 10  # b's scale differs: normalised away globally
    # locally: half of a's 4 runs of 3, by their sums; round_to 2 with runs of 3 keeps 6
    runs = a.reshape(4, 3).sum(axis=1)
    expected = (np.sort(np.argsort(-runs)[:2])[:, None] * 3 + np.arange(3)).ravel()
    np.testing.assert_array_equal(importance.keep(a, 0.5, 2, block=3), expected)
    np.testing.assert_array_equal(importance.keep(a, 0.6, 2, block=3), expected)  # 5 -> 6
    assert len(importance.keep(a, 0.25, 2, block=3)) == 12  # 9, rounded up to 6s
    # globally: the threshold over every channel's normalised score says how many
    # stay in each group, rounded up to whole runs, and the best runs stay
    normalised = np.concatenate([a / a.mean(), b / b.mean()])
    threshold = np.sort(normalised)[9]  # 10 of the 20 channels go
    counts = [int(np.sum(a / a.mean() > threshold)), int(np.sum(b / b.mean() > threshold))]
    kept_a, kept_b = importance.keep_global([a, b], 0.5, 1, blocks=[3, 1])
    assert len(kept_a) == 3 * int(np.ceil(counts[0] / 3)) and len(kept_b) == counts[1]
    runs_kept = np.sort(np.argsort(-runs, kind="stable")[: len(kept_a) // 3])
    np.testing.assert_array_equal(kept_a, (runs_kept[:, None] * 3 + np.arange(3)).ravel())

import keras
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

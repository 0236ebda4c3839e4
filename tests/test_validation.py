"""`_validation`: the argument checks and message pieces that the public API shares."""

import pytest

from keras_prune._validation import first_few


@pytest.mark.parametrize(
    ("names", "shown", "expected"),
    [
        ([], 3, ""),
        (["a"], 3, "a"),
        (["a", "b", "c"], 3, "a, b, c"),
        (["a", "b", "c", "d"], 3, "a, b, c and 1 more"),
        (["a", "b", "c", "d", "e", "f"], 4, "a, b, c, d and 2 more"),
    ],
)
def test_first_few_names_the_first_then_counts_the_rest(names, shown, expected):
    assert first_few(names, shown) == expected

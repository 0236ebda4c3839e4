"""Tests for keras_prune.structured.channel_mask's selection of the channels that stay.

The reference is a full stable sort in numpy: the highest scores, the lower
index first among equal ones. (ChannelMask's training, saving and shrinking
are tested through prune_channels in test_prune_channels.py.)
"""

from __future__ import annotations

import keras
import numpy as np
import pytest

from keras_prune.structured.channel_mask import _top


def _expected(scores, kept):
    order = np.argsort(-scores, kind="stable")[: max(1, kept)]
    result = np.zeros(len(scores), "float32")
    result[order] = 1
    return result


@pytest.mark.parametrize("kept", [1, 3, 7, 16, 20])
def test_the_kept_highest_scores_stay_and_ties_go_to_the_lower_index(kept):
    rng = np.random.RandomState(kept)
    scores = rng.randint(0, 5, 20).astype("float32")  # many ties
    scores[:4] = 0.0  # removed before: score 0
    got = keras.ops.convert_to_numpy(_top(keras.ops.convert_to_tensor(scores), kept))
    np.testing.assert_array_equal(got, _expected(scores, kept))


def test_distinct_scores_and_a_float_count_as_the_train_step_gives_it():
    scores = np.random.RandomState(0).normal(size=3072).astype("float32")
    kept = keras.ops.convert_to_tensor(1536.0)
    got = keras.ops.convert_to_numpy(_top(keras.ops.convert_to_tensor(scores), kept))
    np.testing.assert_array_equal(got, _expected(scores, 1536))

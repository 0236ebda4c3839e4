"""Tests for keras_prune.structured.channel_mask's selection of the channels that stay.

The reference is a full stable sort in numpy: the highest scores, the lower
index first among equal ones. A `NormalizationMask` is checked against the
normalisation written in numpy. (Training, saving and shrinking are tested
through prune_channels in test_prune_channels.py.)
"""

from __future__ import annotations

import keras
import numpy as np
import pytest

from keras_prune import ConstantSparsity
from keras_prune.structured.channel_mask import ChannelMask, NormalizationMask, _top, _top_runs


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


@pytest.mark.parametrize("kept", [3, 6, 12])
def test_runs_of_a_block_stay_or_go_whole_by_the_sum_of_their_scores(kept):
    scores = np.random.RandomState(kept).rand(12).astype("float32")
    got = keras.ops.convert_to_numpy(_top_runs(keras.ops.convert_to_tensor(scores), kept, 3))
    runs = scores.astype("float64").reshape(4, 3).sum(axis=1)
    np.testing.assert_array_equal(got, np.repeat(_expected(runs, kept // 3), 3))


def test_a_segment_without_a_block_loads_as_one_and_a_bad_block_is_named():
    schedule = ConstantSparsity(0.5, 0)
    old = {"group": "g", "size": 6, "producers": [["conv", 0]]}  # a file from before blocks
    assert ChannelMask(schedule, [old]).segments[0]["block"] == 1
    with pytest.raises(ValueError, match="`block` must be a divisor of its size 6"):
        ChannelMask(schedule, [{**old, "block": 4}])
    with pytest.raises(TypeError, match="optionally 'block'"):
        ChannelMask(schedule, [{**old, "blocks": 2}])


def test_a_mask_on_axis_1_multiplies_the_channels_of_a_channels_first_tensor():
    segment = {"group": "g", "size": 3, "producers": [["conv", 0]]}
    mask = ChannelMask(ConstantSparsity(0.5, 0), [segment], axis=1)
    x = np.random.RandomState(0).rand(2, 3, 4, 5).astype("float32")
    mask.build(x.shape)
    mask.mask.assign(np.array([1.0, 0.0, 1.0], "float32"))
    expected = x * np.array([1.0, 0.0, 1.0], "float32")[None, :, None, None]
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(mask(x)), expected)
    with pytest.raises(ValueError, match="masks 3 channels on axis 1 but its input has shape"):
        ChannelMask(ConstantSparsity(0.5, 0), [segment], axis=1).build((2, 4, 4, 3))
    with pytest.raises(ValueError, match="`axis` must be one of -1, 1; got 2"):
        ChannelMask(ConstantSparsity(0.5, 0), [segment], axis=2)


@pytest.mark.parametrize("kind", ["batch", "group"])
def test_a_normalization_mask_zeroes_the_scale_and_shift_of_the_removed_channels(kind):
    segment = {"group": "g", "size": 4, "producers": [["conv", 0]]}
    if kind == "batch":
        norm = keras.layers.BatchNormalization(epsilon=1e-3)
    else:
        norm = keras.layers.GroupNormalization(groups=2, epsilon=1e-3)
        segment["block"] = 2
    x = np.random.RandomState(0).normal(size=(3, 5, 4)).astype("float32")
    norm.build(x.shape)
    gamma, beta = np.array([1.5, 0.5, 2.0, 1.0], "float32"), np.full(4, 0.25, "float32")
    norm.gamma.assign(gamma)
    norm.beta.assign(beta)
    mask = NormalizationMask(norm, ConstantSparsity(0.5, 0), segments=[segment])
    mask.build(x.shape)
    kept = np.array([1.0, 1.0, 0.0, 0.0], "float32")
    mask.mask.assign(kept)
    if kind == "batch":  # inference: the moving statistics, 0 and 1
        normalized = x / np.sqrt(1.0 + 1e-3)
    else:  # each run of 2 channels over its positions and channels, per sample
        runs = x.reshape(3, 5, 2, 2)
        mean = runs.mean(axis=(1, 3), keepdims=True)
        variance = runs.var(axis=(1, 3), keepdims=True)
        normalized = ((runs - mean) / np.sqrt(variance + 1e-3)).reshape(x.shape)
    expected = (normalized * gamma + beta) * kept
    np.testing.assert_allclose(keras.ops.convert_to_numpy(mask(x)), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(norm.gamma), gamma)  # not assigned


def test_a_normalization_mask_needs_a_normalization_with_a_scale():
    segment = {"group": "g", "size": 4, "producers": [["conv", 0]]}
    with pytest.raises(TypeError, match="`layer` must be a keras.layers.BatchNormalization or"):
        NormalizationMask(keras.layers.Dense(4), ConstantSparsity(0.5, 0), segments=[segment])
    with pytest.raises(ValueError, match="has no scale"):
        NormalizationMask(
            keras.layers.BatchNormalization(scale=False),
            ConstantSparsity(0.5, 0),
            segments=[segment],
        )
    with pytest.raises(ValueError, match="`segments` hold 4 channels but `bn` has 6 channels"):
        NormalizationMask(
            keras.layers.BatchNormalization(name="bn"), ConstantSparsity(0.5, 0), segments=[segment]
        ).build((2, 6))

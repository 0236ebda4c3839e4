"""Tests for keras_prune.compare.stats: Welch's t-test against known values, bad input."""

from __future__ import annotations

import math

import pytest

from keras_prune.compare import stats


def test_welch_t_test_matches_the_formula():
    # Welch (1947): t = (ma - mb) / sqrt(va/na + vb/nb) = -3 / sqrt(2.5) and the
    # Welch-Satterthwaite df = (0.5 + 2)**2 / (0.5**2 / 4 + 2**2 / 4) = 100 / 17.
    t, df, p = stats.welch_t_test([1, 2, 3, 4, 5], [2, 4, 6, 8, 10])
    assert t == pytest.approx(-3 / math.sqrt(2.5), abs=1e-12) and df == pytest.approx(
        100 / 17, abs=1e-12
    )
    assert (t, df, p) == pytest.approx(
        (-1.8973665961010275, 5.882352941176471, 0.10753119493062728), abs=1e-12
    )
    t, df, p = stats.welch_t_test([0.9886, 0.9890, 0.9879], [0.9927, 0.9921, 0.9930, 0.9925])
    assert (t, df, p) == pytest.approx(
        (-10.931639841541777, 3.3512033445068377, 0.000977654105594146), rel=1e-9
    )


def test_welch_t_test_identical_constant_groups_is_undefined():
    assert all(math.isnan(v) for v in stats.welch_t_test([0.5, 0.5], [0.5, 0.5, 0.5]))


def test_mean_std():
    assert stats.mean_std([0.9886, 0.9890, 0.9879]) == pytest.approx(
        (0.9885, 0.0005567764362830008)
    )
    assert stats.mean_std([3.0]) == (3.0, 0.0)


@pytest.mark.parametrize(
    "call, error, words",
    [
        (lambda: stats.mean_std([]), ValueError, "`values`"),
        (lambda: stats.mean_std("12"), TypeError, "`values`"),
        (lambda: stats.mean_std([1.0, math.nan]), ValueError, "finite"),
        (lambda: stats.welch_t_test([1.0], [1.0, 2.0]), ValueError, "at least 2"),
    ],
)
def test_statistics_reject_bad_input(call, error, words):
    with pytest.raises(error, match=words.replace("[", r"\[").replace("]", r"\]")):
        call()

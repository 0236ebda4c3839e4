"""Statistics over seeds: the mean and spread of runs, and Welch's t-test.

`mean_std` summarizes repeated runs; `welch_t_test` (SciPy's
`ttest_ind(equal_var=False)`) tells whether two schedules' mean accuracies
differ more than their seed-to-seed spread explains.

Example:

>>> mean_std([0.9886, 0.9890, 0.9879])
(0.9885, 0.000556...)
>>> t, df, p = welch_t_test([1, 2, 3, 4, 5], [2, 4, 6, 8, 10])
>>> round(t, 4), round(df, 4), round(p, 4)
(-1.8974, 5.8824, 0.1075)
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Sequence

from scipy import stats

__all__ = ["mean_std", "welch_t_test"]


def _numbers(values: Sequence[float], name: str, minimum: int) -> list[float]:
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise TypeError(f"`{name}` must be a sequence of numbers; got {type(values).__name__}.")
    if len(values) < minimum:
        raise ValueError(f"`{name}` must hold at least {minimum} value(s); got {len(values)}.")
    result = []
    for value in values:
        if (
            isinstance(value, bool)
            or not isinstance(value, numbers.Real)
            or not math.isfinite(value)
        ):
            raise ValueError(f"`{name}` must hold finite numbers; got {value!r}.")
        result.append(float(value))
    return result


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n − 1); the deviation is 0 for one value."""
    values = _numbers(values, "values", 1)
    mean = math.fsum(values) / len(values)
    if len(values) == 1:
        return mean, 0.0
    return mean, math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (len(values) - 1))


def welch_t_test(a: Sequence[float], b: Sequence[float]) -> tuple[float, float, float]:
    """Welch's unequal-variance t-test: `(t, degrees of freedom, two-sided p)`.

    Needs at least two values per group. When both groups have zero variance
    the test is undefined and all three results are NaN.
    """
    a, b = _numbers(a, "a", 2), _numbers(b, "b", 2)
    if mean_std(a)[1] == 0.0 and mean_std(b)[1] == 0.0:
        return math.nan, math.nan, math.nan
    with warnings.catch_warnings():  # near-identical groups: SciPy warns of precision loss
        warnings.simplefilter("ignore", RuntimeWarning)
        result = stats.ttest_ind(a, b, equal_var=False)
    return float(result.statistic), float(result.df), float(result.pvalue)

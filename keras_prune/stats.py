"""Small-sample statistics for comparing schedules over seeds, with no SciPy.

`mean_std` summarizes repeated runs; `welch_t_test` tells whether two
schedules' mean accuracies differ more than their seed-to-seed spread
explains. The Student t distribution comes from the regularized incomplete
beta function, evaluated by its continued fraction (Lentz's method) with
`math.lgamma`, accurate to about 1e-12.

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
from collections.abc import Sequence

__all__ = ["mean_std", "regularized_incomplete_beta", "student_t_cdf", "welch_t_test"]

_MAX_ITERATIONS = 300
_EPSILON = 1e-15
_TINY = 1e-300


def _numbers(values: Sequence[float], name: str, minimum: int) -> list[float]:
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise TypeError(f"`{name}` must be a sequence of numbers; got {type(values).__name__}.")
    if len(values) < minimum:
        raise ValueError(f"`{name}` must hold at least {minimum} value(s); got {len(values)}.")
    result = []
    for value in values:
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
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


def regularized_incomplete_beta(a: float, b: float, x: float) -> float:
    """I_x(a, b) for a, b > 0 and x in [0, 1]."""
    for name, value in (("a", a), ("b", b)):
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not value > 0:
            raise ValueError(f"`{name}` must be a number > 0; got {value!r}.")
    if isinstance(x, bool) or not isinstance(x, numbers.Real) or not 0.0 <= x <= 1.0:
        raise ValueError(f"`x` must be a number in [0, 1]; got {x!r}.")
    if x in (0.0, 1.0):
        return float(x)
    log_front = (
        math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
        + a * math.log(x) + b * math.log1p(-x)
    )  # fmt: skip
    # The continued fraction converges fast for x < (a + 1) / (a + b + 2);
    # otherwise use I_x(a, b) = 1 - I_{1-x}(b, a).
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _beta_fraction(a, b, x) / a
    return 1.0 - math.exp(log_front) * _beta_fraction(b, a, 1.0 - x) / b


def _beta_fraction(a: float, b: float, x: float) -> float:
    """The continued fraction of the incomplete beta function (modified Lentz)."""
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > _TINY else _TINY)
    result = d
    for m in range(1, _MAX_ITERATIONS + 1):
        for numerator in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),
        ):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > _TINY else _TINY)
            c = 1.0 + numerator / c
            c = c if abs(c) > _TINY else _TINY
            result *= c * d
        if abs(c * d - 1.0) < _EPSILON:
            return result
    raise ArithmeticError(f"incomplete beta fraction did not converge for a={a}, b={b}, x={x}")


def student_t_cdf(t: float, df: float) -> float:
    """P(T ≤ t) for Student's t distribution with `df` > 0 degrees of freedom."""
    if isinstance(t, bool) or not isinstance(t, numbers.Real) or math.isnan(t):
        raise ValueError(f"`t` must be a number; got {t!r}.")
    if isinstance(df, bool) or not isinstance(df, numbers.Real) or not df > 0:
        raise ValueError(f"`df` must be a number > 0; got {df!r}.")
    if math.isinf(t):
        return 1.0 if t > 0 else 0.0
    tail = 0.5 * regularized_incomplete_beta(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t > 0 else tail


def welch_t_test(a: Sequence[float], b: Sequence[float]) -> tuple[float, float, float]:
    """Welch's unequal-variance t-test: `(t, degrees of freedom, two-sided p)`.

    Needs at least two values per group. When both groups have zero variance
    the test is undefined and all three results are NaN.
    """
    a, b = _numbers(a, "a", 2), _numbers(b, "b", 2)
    (mean_a, std_a), (mean_b, std_b) = mean_std(a), mean_std(b)
    var_a, var_b = std_a**2 / len(a), std_b**2 / len(b)
    if var_a + var_b == 0.0:
        return math.nan, math.nan, math.nan
    t = (mean_a - mean_b) / math.sqrt(var_a + var_b)
    df = (var_a + var_b) ** 2 / (var_a**2 / (len(a) - 1) + var_b**2 / (len(b) - 1))
    p = 2.0 * student_t_cdf(-abs(t), df)
    return t, df, min(1.0, p)

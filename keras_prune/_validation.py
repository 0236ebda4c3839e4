"""Argument checks shared by the public API.

Every public function of keras_prune validates its input through these
helpers so that errors name the argument and the allowed range the same way
everywhere.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any


def whole_number(value: Any, name: str, *, minimum: int | None = None) -> int:
    """Returns `value` as a Python int, or raises naming `name`.

    Accepts Python and NumPy integers and integral floats (the tfmot examples
    pass `0.2 * end_step`). Rejects booleans, non-integral floats (tfmot then
    silently never prunes) and anything else.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(
            f"`{name}` must be a whole number (int, or a float with no "
            f"fractional part); got {value!r} of type {type(value).__name__}."
        )
    if isinstance(value, numbers.Integral):
        result = int(value)
    else:
        as_float = float(value)
        if not as_float.is_integer():
            raise ValueError(
                f"`{name}` must be a whole number of steps; got {value!r}. "
                f"Round it, e.g. `int(round({value!r}))`."
            )
        result = int(as_float)
    if minimum is not None and result < minimum:
        raise ValueError(f"`{name}` must be >= {minimum}; got {result}.")
    return result


def fraction(value: Any, name: str, low: float = 0.0, high: float = 1.0) -> float:
    """Returns `value` as a float in [low, high), or raises naming `name`."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(
            f"`{name}` must be a float in [{low:g}, {high:g}); got {value!r} of type "
            f"{type(value).__name__}."
        )
    result = float(value)
    if not low <= result < high:
        raise ValueError(f"`{name}` must be in [{low:g}, {high:g}); got {value!r}.")
    return result


def sparsity(value: Any, name: str) -> float:
    """Returns `value` as a float in [0, 1), or raises naming `name`."""
    return fraction(value, name, 0.0, 1.0)


def count(value: Any, name: str, minimum: int = 0) -> int:
    """Returns `value` (an int, not a float or bool) as a Python int >= `minimum`, or raises."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"`{name}` must be an int >= {minimum}; got {value!r}.")
    if value < minimum:
        raise ValueError(f"`{name}` must be >= {minimum}; got {value}.")
    return int(value)


def boolean(value: Any, name: str) -> bool:
    """Returns `value` if it is True or False (not 0, 1 or None), else raises TypeError."""
    if not isinstance(value, bool):
        raise TypeError(f"`{name}` must be True or False; got {value!r}.")
    return value


def instance(value: Any, name: str, types: type | tuple[type, ...], description: str) -> Any:
    """Returns `value` if it is one of `types`, else raises TypeError naming `name`."""
    if not isinstance(value, types):
        raise TypeError(
            f"`{name}` must be {description}; got {value!r} of type {type(value).__name__}."
        )
    return value


def one_of(value: Any, name: str, choices: tuple[Any, ...]) -> Any:
    """Returns `value` if it is in `choices`, else raises ValueError naming `name`."""
    if value not in choices:
        raise ValueError(f"`{name}` must be one of {', '.join(map(repr, choices))}; got {value!r}.")
    return value


def positive_number(value: Any, name: str) -> float:
    """Returns `value` as a float > 0, or raises naming `name`."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(
            f"`{name}` must be a number > 0; got {value!r} of type {type(value).__name__}."
        )
    result = float(value)
    if not result > 0:
        raise ValueError(f"`{name}` must be > 0; got {value!r}.")
    return result


def int_pair(value: Any, name: str) -> tuple[int, int]:
    """Returns `value` as a pair of ints >= 1, or raises naming `name`."""
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise TypeError(f"`{name}` must be a pair of positive integers like (1, 1); got {value!r}.")
    return tuple(whole_number(v, name, minimum=1) for v in value)


def first_few(names: Sequence[str], shown: int = 3) -> str:
    """`names` joined for a message, the first `shown` of them, then how many more.

    >>> first_few(["a", "b", "c", "d", "e"])
    'a, b, c and 2 more'
    """
    listed = ", ".join(names[:shown])
    return f"{listed} and {len(names) - shown} more" if len(names) > shown else listed

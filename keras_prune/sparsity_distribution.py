"""Where a model's sparsity goes: how it is spread over the pruned weights.

The pruning schedule decides *when* to prune and *how much in total*; the
sparsity distribution decides *where*. `prune_low_magnitude(model, schedule,
sparsity_distribution=...)` takes one of:

* `"uniform"` (the default): every pruned weight at the schedule's sparsity.
* `"global"`: one magnitude threshold across all pruned weights
  (`keras_prune.global_pruning`), so the schedule's fraction of the model's
  smallest weights goes, wherever they are.
* `"erk"`: Erdős–Rényi-Kernel (Evci et al., "Rigging the Lottery", 2020):
  a weight of shape (d1, ..., dk) keeps a fraction proportional to
  `(d1 + ... + dk) / (d1 · ... · dk)`, scaled so that the weights together
  keep what the schedule's sparsity allows. Small weights (the first
  convolution) stay dense or nearly so, large ones (the first Dense layer
  after a Flatten) give up more.
* a dict `{layer name: factor}` or a callable `f(layer) -> factor`: a layer's
  sparsity is proportional to its factor (layers a dict does not name get
  1.0), scaled so that the total is the schedule's; 0 keeps a layer dense.

A non-uniform distribution is a per-weight *factor* `f_i`: at a step where the
schedule says sparsity `s`, weight i is pruned to `f_i · s`. The factors are
fixed from the schedule's final sparsity `S` (its `end_sparsity()`) so that
`Σ n_i · f_i = Σ n_i` over the n_i-entry weights: the total is exactly the
schedule's at every step, to within the rounding of one weight per weight
tensor, and each weight's sparsity grows along the schedule's curve.

ERK's small-weight rule: a weight whose ERK share would be denser than dense
(`f_i · S < 0`, i.e. ERK density > 1) is left dense (factor 0) and the others
absorb its share; `sparsity_report` marks such weights. A dict or callable
factor that would push a weight to 100 % at `S`, or below 0 %, is an error.

Example:

>>> factors = erk_factors([(3, 3, 1, 32), (3, 3, 32, 64), (1600, 256), (256, 10)], 0.95)
>>> [round(f * 0.95, 4) for f in factors]   # the seed CNN's per-weight sparsities
[0.0, 0.9471, 0.9567, 0.0069]
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import keras

NAMES = ("uniform", "global", "erk")

#: What `sparsity_distribution` accepts (see the module docstring).
Distribution = str | Mapping[str, float] | Callable[[keras.layers.Layer], float]


def check(distribution: Any) -> Distribution:
    """Returns `distribution` if it is a name of `NAMES`, a dict or a callable, else raises."""
    if isinstance(distribution, str):
        if distribution not in NAMES:
            raise ValueError(
                f"`sparsity_distribution` must be one of {', '.join(map(repr, NAMES))}, a dict "
                "{layer name: factor} or a callable f(layer) -> factor; "
                f"got {distribution!r}."
            )
        return distribution
    if isinstance(distribution, Mapping):
        for name, factor in distribution.items():
            if not isinstance(name, str):
                raise TypeError(
                    f"`sparsity_distribution` keys must be layer names (str); got {name!r}."
                )
            _factor(factor, name)
        return distribution
    if callable(distribution):
        return distribution
    raise TypeError(
        "`sparsity_distribution` must be 'uniform', 'global', 'erk', a dict {layer name: "
        "factor} or a callable f(layer) -> factor; "
        f"got {type(distribution).__name__}."
    )


def _factor(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise TypeError(
            f"`sparsity_distribution`: the factor of layer {name!r} must be a finite number "
            f">= 0; got {value!r}."
        )
    if value < 0:
        raise ValueError(
            f"`sparsity_distribution`: the factor of layer {name!r} is {value}, which would "
            "prune it below 0 %; factors must be >= 0 (0 keeps the layer dense)."
        )
    return float(value)


def erk_factors(shapes: Sequence[tuple[int, ...]], sparsity: float) -> list[float]:
    """Per-weight factors of ERK at the total `sparsity` in (0, 1) (see the module docstring).

    RigL's algorithm: the density of weight i is `ε · r_i`, with
    `r_i = Σ shape / Π shape` and ε chosen so that the weights together keep
    `(1 − sparsity) · Σ n_i` entries; while the largest `ε · r_i` exceeds 1,
    that weight is made dense and ε is solved again over the others.
    """
    sizes = [math.prod(shape) for shape in shapes]
    ratios = [sum(shape) / size for shape, size in zip(shapes, sizes)]
    density = 1.0 - sparsity
    dense: set[int] = set()
    while True:
        budget = sum(n * density if i not in dense else -n * sparsity for i, n in enumerate(sizes))
        divisor = sum(r * n for i, (r, n) in enumerate(zip(ratios, sizes)) if i not in dense)
        if divisor == 0:  # every weight dense: only when sparsity is 0
            break
        epsilon = budget / divisor
        free = [i for i in range(len(sizes)) if i not in dense]
        largest = max(free, key=lambda i: ratios[i])
        if epsilon * ratios[largest] <= 1.0:
            break
        dense.add(largest)
    return [
        0.0 if i in dense else (1.0 - epsilon * ratios[i]) / sparsity for i in range(len(sizes))
    ]


def factors(
    distribution: Distribution,
    weights: Sequence[tuple[keras.layers.Layer, tuple[int, ...]]],
    sparsity: float,
) -> list[float]:
    """The factor of each of `weights` (`(layer, shape)` pairs) under `distribution`.

    `distribution` is "erk", a dict or a callable; `sparsity` is the
    schedule's final sparsity, in (0, 1). Raises ValueError when a dict names
    a layer not among `weights`' or a factor would prune a weight to 100 %.
    """
    shapes = [tuple(shape) for _, shape in weights]
    if distribution == "erk":
        return erk_factors(shapes, sparsity)
    if isinstance(distribution, Mapping):
        names = {layer.name for layer, _ in weights}
        unknown = sorted(set(distribution) - names)
        if unknown:
            raise ValueError(
                f"`sparsity_distribution` names layers that are not pruned in the model: "
                f"{unknown}; pruned layers: {sorted(names)}."
            )
        raw = [_factor(distribution.get(layer.name, 1.0), layer.name) for layer, _ in weights]
    else:
        by_layer: dict[int, float] = {}
        for layer, _ in weights:
            if id(layer) not in by_layer:
                by_layer[id(layer)] = _factor(distribution(layer), layer.name)
        raw = [by_layer[id(layer)] for layer, _ in weights]
    sizes = [math.prod(shape) for shape in shapes]
    weighted = sum(f * n for f, n in zip(raw, sizes))
    if weighted == 0:
        raise ValueError(
            "`sparsity_distribution`: every factor is 0, so nothing could be pruned; give "
            "some layer a factor > 0."
        )
    scale = sum(sizes) / weighted
    result = [f * scale for f in raw]
    for (layer, _), factor in zip(weights, result):
        if factor * sparsity >= 1.0:
            raise ValueError(
                f"`sparsity_distribution`: layer {layer.name!r} would be pruned to "
                f"{factor * sparsity:.1%} at the schedule's final sparsity {sparsity:g} "
                "(its factor, scaled so that the total is the schedule's, is "
                f"{factor:.3g}); lower its factor or raise the others so every layer "
                "stays below 100 %."
            )
    return result

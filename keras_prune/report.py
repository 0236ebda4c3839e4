"""Per-layer sparsity report of a pruned or stripped model."""

from __future__ import annotations

import dataclasses
import math

import keras
import numpy as np
from keras import ops

from keras_prune import registry
from keras_prune.wrapper import PruneLowMagnitude


@dataclasses.dataclass(frozen=True)
class WeightSparsity:
    """Sparsity of one prunable weight."""

    layer: str
    weight: str
    shape: tuple[int, ...]
    size: int
    zeros: int

    @property
    def sparsity(self) -> float:
        return self.zeros / self.size if self.size else 0.0


class SparsityReport(list):
    """A list of `WeightSparsity` rows; `str()` renders a table."""

    @property
    def total_size(self) -> int:
        return sum(row.size for row in self)

    @property
    def total_sparsity(self) -> float:
        size = self.total_size
        return sum(row.zeros for row in self) / size if size else 0.0

    def __str__(self) -> str:
        lines = [f"{'layer':<32} {'weight':<24} {'shape':<20} {'sparsity':>9}"]
        for row in self:
            lines.append(
                f"{row.layer:<32} {row.weight:<24} {str(row.shape):<20} {row.sparsity:>9.2%}"
            )
        lines.append(f"{'total':<78} {self.total_sparsity:>9.2%}")
        return "\n".join(lines)


def sparsity_report(model: keras.layers.Layer) -> SparsityReport:
    """Fraction of zeros in every prunable weight of a pruned or stripped model.

    For pruned layers the zeros of `weight * mask` are counted; for plain
    layers (a stripped model) the zeros of the weights the registry prunes.

    Example:

    >>> print(keras_prune.sparsity_report(keras_prune.strip_pruning(pruned)))
    """
    if not isinstance(model, keras.layers.Layer):
        raise TypeError(f"`model` must be a keras Model or Layer; got {type(model).__name__}.")
    report = SparsityReport()
    layers = [model] if not isinstance(model, keras.Model) else []
    layers += list(model._flatten_layers(include_self=False, recursive=True))
    inside_wrappers = {
        id(inner)
        for layer in layers if isinstance(layer, PruneLowMagnitude)
        for inner in layer.layer._flatten_layers(include_self=True, recursive=True)
    }  # fmt: skip
    for layer in layers:
        if isinstance(layer, PruneLowMagnitude):
            pairs = [(w, ops.multiply(w.value, m.value)) for w, m, _ in layer.pruning_vars]
        elif id(layer) in inside_wrappers or not (layer.built and registry.supports(layer)):
            continue
        else:
            pairs = [(w, w.value) for w in registry.get_prunable_weights(layer)]
        for weight, value in pairs:
            zeros = int(np.count_nonzero(ops.convert_to_numpy(value) == 0))
            report.append(
                WeightSparsity(layer.name, weight.name, tuple(weight.shape),
                               math.prod(weight.shape), zeros)
            )  # fmt: skip
    return report

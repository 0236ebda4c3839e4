"""What a pruned or stripped model weighs: per-layer sparsity and zipped size."""

from __future__ import annotations

import dataclasses
import math
import os
import tempfile
import zipfile

import keras
import numpy as np
from keras import ops

from keras_prune import _keras, registry
from keras_prune.wrapper import PruneLowMagnitude

_FORMATS = ("h5", "keras")
_DENSE = "left dense by the sparsity distribution; the other weights absorb its share"


@dataclasses.dataclass(frozen=True)
class WeightSparsity:
    """Sparsity of one prunable weight."""

    layer: str
    weight: str
    shape: tuple[int, ...]
    size: int
    zeros: int
    #: Why the weight is as it is, where the sparsity alone does not say (e.g.
    #: "left dense by the sparsity distribution").
    note: str = ""

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
                + (f"  ({row.note})" if row.note else "")
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
    layers += _keras.flatten_layers(model)
    inside_wrappers = {
        id(inner)
        for layer in layers
        if isinstance(layer, PruneLowMagnitude)
        for inner in _keras.flatten_layers(layer.layer, include_self=True)
    }
    for layer in layers:
        notes = None
        if isinstance(layer, PruneLowMagnitude):
            pairs = [(w, ops.multiply(w.value, m.value)) for w, m, _ in layer.pruning_vars]
            notes = [_DENSE if f == 0 else "" for f in layer.weight_factors()]
        elif id(layer) in inside_wrappers or not (layer.built and registry.supports(layer)):
            continue
        else:
            pairs = [(w, w.value) for w in registry.get_prunable_weights(layer)]
        for i, (weight, value) in enumerate(pairs):
            zeros = int(np.count_nonzero(ops.convert_to_numpy(value) == 0))
            report.append(
                WeightSparsity(
                    layer.name,
                    weight.name,
                    tuple(weight.shape),
                    math.prod(weight.shape),
                    zeros,
                    notes[i] if notes else "",
                )
            )
    return report


def gzipped_model_size(model: keras.Model, file_format: str = "h5") -> int:
    """Bytes of the saved `model` compressed with zip/deflate, as in tfmot's guide.

    The model is saved without optimizer to a temporary `.h5` (the seed's
    measure) or `.keras` file, which is then zipped with ZIP_DEFLATED. Strip
    a pruned model first (`strip_pruning`) to measure what you would ship.

    Example:

    >>> keras_prune.gzipped_model_size(keras_prune.strip_pruning(pruned))
    """
    if not isinstance(model, keras.Model):
        raise TypeError(f"`model` must be a keras.Model; got {type(model).__name__}.")
    if file_format not in _FORMATS:
        raise ValueError(f"`file_format` must be one of {_FORMATS}; got {file_format!r}.")
    with tempfile.TemporaryDirectory() as tmp:
        saved = os.path.join(tmp, f"model.{file_format}")
        if file_format == "h5":
            keras.saving.save_model(model, saved, include_optimizer=False)
        else:
            model.save(saved)
        zipped = os.path.join(tmp, "model.zip")
        with zipfile.ZipFile(zipped, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            archive.write(saved, arcname=os.path.basename(saved))
        return os.path.getsize(zipped)

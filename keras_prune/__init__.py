"""keras_prune: magnitude-based pruning with pruning schedules for Keras 3.

The names, signatures and semantics of `tfmot.sparsity.keras`, on the
TensorFlow, JAX and PyTorch backends:

```python
import keras
import keras_prune as sparsity   # was: tfmot.sparsity.keras

pruned = sparsity.prune_low_magnitude(model, sparsity.PolynomialDecay(0.0, 0.8, 0, 1000))
```

Importing Keras fixes its backend, so `import keras_prune` does not import
Keras by itself: when Keras is already imported (the usual `import keras`
first) the library loads at once, else at the first use of one of the names
below. Either way its layers and schedules are registered with
`keras.saving` before any of them can be used, and `keras-prune compare
--backend jax` can still choose the backend.
"""

from __future__ import annotations

import importlib
import sys
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# Public name -> the module that defines it (a module never imports this file's names).
_EXPORTS = {
    "ConstantSparsity": "schedules",
    "PolynomialDecay": "schedules",
    "PruningSchedule": "schedules",
    "magnitude_mask": "masks",
    "PrunableLayer": "registry",
    "get_prunable_weights": "registry",
    "register_prunable": "registry",
    "PruneLowMagnitude": "wrapper",
    "PruningPolicy": "policy",
    "PruneForLatencyOnXNNPack": "policy",
    "prune_low_magnitude": "prune",
    "pruned_layers": "prune",
    "strip_pruning": "prune",
    "SparsityReport": "report",
    "sparsity_report": "report",
    "load_model": "saving",
    "prune_scope": "saving",
    "save_model": "saving",
    "PruningSummaries": "callbacks",
    "UpdatePruningStep": "callbacks",
    "export": "runtimes",
    "load": "kps",
    "gzipped_model_size": "report",
    "flops": "report",
    "Sensitivity": "sensitivity",
    "sensitivity": "sensitivity",
    "ChannelGroup": "structured.graph",
    "channel_groups": "structured.graph",
    "shrink": "structured.shrink",
    "ChannelMask": "structured.channel_mask",
    "HeadMask": "structured.channel_mask",
    "FeedForwardMask": "structured.channel_mask",
    "NormalizationMask": "structured.channel_mask",
    "prune_channels": "structured.prune_channels",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from keras_prune.callbacks import PruningSummaries, UpdatePruningStep
    from keras_prune.kps import load
    from keras_prune.masks import magnitude_mask
    from keras_prune.policy import PruneForLatencyOnXNNPack, PruningPolicy
    from keras_prune.prune import prune_low_magnitude, pruned_layers, strip_pruning
    from keras_prune.registry import PrunableLayer, get_prunable_weights, register_prunable
    from keras_prune.report import SparsityReport, flops, gzipped_model_size, sparsity_report
    from keras_prune.runtimes import export
    from keras_prune.saving import load_model, prune_scope, save_model
    from keras_prune.schedules import ConstantSparsity, PolynomialDecay, PruningSchedule
    from keras_prune.sensitivity import Sensitivity, sensitivity
    from keras_prune.structured.channel_mask import (
        ChannelMask,
        FeedForwardMask,
        HeadMask,
        NormalizationMask,
    )
    from keras_prune.structured.graph import ChannelGroup, channel_groups
    from keras_prune.structured.prune_channels import prune_channels
    from keras_prune.structured.shrink import shrink
    from keras_prune.wrapper import PruneLowMagnitude


def _load() -> None:
    """Imports every module behind `_EXPORTS` and binds the public names here."""
    for name, module in _EXPORTS.items():
        globals()[name] = getattr(importlib.import_module(f"keras_prune.{module}"), name)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        _load()
        return globals()[name]
    raise AttributeError(f"module 'keras_prune' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


if "keras" in sys.modules:  # the backend is chosen already: register the classes now
    _load()

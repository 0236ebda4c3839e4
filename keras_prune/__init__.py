"""keras_prune: magnitude-based pruning with pruning schedules for Keras 3.

The names, signatures and semantics of `tfmot.sparsity.keras`, on the
TensorFlow, JAX and PyTorch backends:

```python
import keras_prune as sparsity   # was: tfmot.sparsity.keras
```
"""

from keras_prune.callbacks import PruningSummaries, UpdatePruningStep
from keras_prune.export import export, gzipped_model_size, load
from keras_prune.masks import magnitude_mask
from keras_prune.prune import prune_low_magnitude, pruned_layers, strip_pruning
from keras_prune.registry import PrunableLayer, get_prunable_weights, register_prunable
from keras_prune.saving import load_model, prune_scope, save_model
from keras_prune.report import SparsityReport, sparsity_report
from keras_prune.schedules import ConstantSparsity, PolynomialDecay, PruningSchedule
from keras_prune.wrapper import PruneLowMagnitude

__version__ = "0.1.0"

__all__ = [
    "ConstantSparsity",
    "PolynomialDecay",
    "PrunableLayer",
    "PruneLowMagnitude",
    "PruningSchedule",
    "PruningSummaries",
    "SparsityReport",
    "UpdatePruningStep",
    "export",
    "get_prunable_weights",
    "gzipped_model_size",
    "load",
    "load_model",
    "magnitude_mask",
    "prune_low_magnitude",
    "prune_scope",
    "pruned_layers",
    "register_prunable",
    "save_model",
    "sparsity_report",
    "strip_pruning",
]

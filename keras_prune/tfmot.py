"""tfmot code, unchanged but for one import line.

`tfmot.sparsity.keras.<name>` is keras_prune's `<name>` for every name of
`tensorflow_model_optimization.sparsity.keras` that pruning code uses, so
code written for tfmot runs on Keras 3, on any backend, once its
`import tensorflow_model_optimization as tfmot` line reads as below (and
`tensorflow.keras` is written `keras` where the backend is not TensorFlow).
Only `sparsity.keras` is here: tfmot's quantization and clustering are not.

Example:

```python
import keras_prune.tfmot as tfmot   # was: import tensorflow_model_optimization as tfmot

schedule = tfmot.sparsity.keras.ConstantSparsity(0.875, begin_step=0, end_step=1000)
pruned = tfmot.sparsity.keras.prune_low_magnitude(model, pruning_schedule=schedule)
pruned.fit(x, y, callbacks=[tfmot.sparsity.keras.UpdatePruningStep()])
final = tfmot.sparsity.keras.strip_pruning(pruned)
```
"""

from __future__ import annotations

import types

from keras_prune.callbacks import PruningSummaries, UpdatePruningStep
from keras_prune.policy import PruneForLatencyOnXNNPack, PruningPolicy
from keras_prune.prune import prune_low_magnitude, strip_pruning
from keras_prune.registry import PrunableLayer
from keras_prune.saving import prune_scope
from keras_prune.schedules import ConstantSparsity, PolynomialDecay, PruningSchedule

__all__ = ["sparsity"]

#: `tfmot.sparsity`: its one submodule, `keras`.
sparsity = types.SimpleNamespace(
    keras=types.SimpleNamespace(
        ConstantSparsity=ConstantSparsity,
        PolynomialDecay=PolynomialDecay,
        PrunableLayer=PrunableLayer,
        PruneForLatencyOnXNNPack=PruneForLatencyOnXNNPack,
        PruningPolicy=PruningPolicy,
        PruningSchedule=PruningSchedule,
        PruningSummaries=PruningSummaries,
        UpdatePruningStep=UpdatePruningStep,
        prune_low_magnitude=prune_low_magnitude,
        prune_scope=prune_scope,
        strip_pruning=strip_pruning,
    )
)

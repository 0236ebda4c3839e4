"""A model's own class, kept across pruning for models that cloning turns into `Functional`.

`keras.models.clone_model`, which `prune_low_magnitude` and `strip_pruning`
use for graph models, returns a plain `Functional` model for a subclass of
it whose constructor does not take `inputs` and `outputs`: a KerasHub
backbone or task (`GPT2CausalLM(backbone, preprocessor)`). The pruned model
trains like the original, but stripping it would give back a `Functional`
without the task's methods (`generate`, its preprocessor), and Keras cannot
load a `.keras` file of that plain graph when it shares a layer with a nested
model (a causal LM's tied output embedding).

`remember(original, pruned)` notes the original's class and config when
`prune_low_magnitude` returns; `restore(pruned, stripped)` re-creates that
class from the config in `strip_pruning` (or `pruned`'s own class, for a
model stripped without having been pruned) and gives it the stripped
weights, checked variable by variable. The note lives as long as the pruned model
object: a pruned model reloaded from a file strips to a plain `Functional`
model with the same weights (`task.set_weights(stripped.get_weights())`
moves them into a task built from the same config).

Example:

```python
pruned = keras_prune.prune_low_magnitude(causal_lm)   # a Functional, noted
...                                                   # fit with UpdatePruningStep
lm = keras_prune.strip_pruning(pruned)                # a GPT2CausalLM again
lm.generate(...)
```
"""

from __future__ import annotations

import warnings
import weakref
from dataclasses import dataclass
from typing import Any

import keras

from keras_prune import _keras


@dataclass(frozen=True)
class _Origin:
    cls: type[keras.Model]
    config: dict[str, Any]
    preprocessor: Any  # a KerasHub task's: its vocabulary is an asset, not config


_ORIGINS: weakref.WeakKeyDictionary[keras.Model, _Origin] = weakref.WeakKeyDictionary()


def remember(original: keras.Model, pruned: keras.Model) -> None:
    """Notes on `pruned` the class that cloning `original` lost, if it lost one."""
    origin = _origin(original, pruned)
    if origin is not None:
        _ORIGINS[pruned] = origin


def _origin(original: keras.Model, clone: keras.Model) -> _Origin | None:
    """`original`'s note (passed on from the model it was pruned from), or a new one
    when `clone` lost `original`'s class; None when nothing was lost."""
    if original in _ORIGINS:
        return _ORIGINS[original]
    if _keras.is_functional(original) and type(clone) is not type(original):
        preprocessor = getattr(original, "preprocessor", None)
        return _Origin(type(original), original.get_config(), preprocessor)
    return None


def restore(pruned: keras.Model, stripped: keras.Model) -> keras.Model:
    """`stripped` as an instance of the class `pruned` was noted with (or is), or `stripped`.

    The class is re-created from the noted config and must have the same
    variables as `stripped` (paths and shapes, in order); if it cannot be
    re-created or differs, a warning says why and `stripped` is returned.
    """
    origin = _origin(pruned, stripped)
    if origin is None:
        return stripped
    name = origin.cls.__name__
    try:
        model = origin.cls.from_config(origin.config)
    except Exception as error:  # the class's own from_config
        warnings.warn(
            f"strip_pruning returns a plain Functional model: {name} could not be re-created "
            f"from its config ({type(error).__name__}: {error}).",
            stacklevel=3,
        )
        return stripped
    expected = [(v.path, tuple(v.shape)) for v in stripped.weights]
    found = [(v.path, tuple(v.shape)) for v in model.weights]
    if found != expected:
        warnings.warn(
            f"strip_pruning returns a plain Functional model: a {name} re-created from its "
            "config does not have the pruned model's variables.",
            stacklevel=3,
        )
        return stripped
    model.set_weights(stripped.get_weights())
    if origin.preprocessor is not None:
        model.preprocessor = origin.preprocessor
    return model

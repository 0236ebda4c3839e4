"""Pruning policies: which layers of a model to prune, and whether the model suits them.

tfmot's `PruningPolicy` and `PruneForLatencyOnXNNPack`, for Keras 3 models
on every backend. `prune_low_magnitude(model, ..., pruning_policy=policy)`
first calls `policy.ensure_model_supports_pruning(model)` (which raises
ValueError if the model does not suit the policy), then wraps only the
layers for which `policy.allow_pruning(layer)` is true.

Example:

```python
pruned = keras_prune.prune_low_magnitude(
    mobilenet, keras_prune.ConstantSparsity(0.75, 0),
    pruning_policy=keras_prune.PruneForLatencyOnXNNPack())
```
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterable
from typing import Any

import keras

from keras_prune import _keras
from keras_prune.wrapper import PruneLowMagnitude

_ACTIVATIONS = ("relu", "relu6", "leaky_relu", "elu", "sigmoid")
# `x + y`, `x - y`, `x * y` on Keras tensors are ops of these classes (no layer).
_ELEMENTWISE_OPS = ("Add", "Subtract", "Multiply")


class PruningPolicy(abc.ABC):
    """Decides which layers of a model `prune_low_magnitude` wraps; subclass it.

    Example:

    ```python
    class DenseOnly(keras_prune.PruningPolicy):
        def allow_pruning(self, layer):
            return isinstance(layer, keras.layers.Dense)

        def ensure_model_supports_pruning(self, model):
            if not any(isinstance(l, keras.layers.Dense) for l in model.layers):
                raise ValueError("The model has no Dense layer to prune.")
    ```
    """

    @abc.abstractmethod
    def allow_pruning(self, layer: keras.layers.Layer) -> bool:
        """True if `layer` may be wrapped for pruning."""

    @abc.abstractmethod
    def ensure_model_supports_pruning(self, model: keras.Model) -> None:
        """Raises ValueError if `model` does not suit this policy."""


class PruneForLatencyOnXNNPack(PruningPolicy):
    """Prunes only the 1x1 `Conv2D` layers of a model that XNNPack's sparse inference runs.

    XNNPack (LiteRT's CPU delegate) runs sparse 1x1 convolutions fast
    ("Fast Sparse ConvNets", Elsen et al., 2019) inside a subgraph that
    starts with a `ZeroPadding2D(1)` + 3x3 stride-2 `Conv2D` on 3 input
    channels and ends with a `GlobalAveragePooling2D`, with only the layers
    XNNPack supports between them (1x1 and depthwise convolutions,
    `BatchNormalization`, ReLU-like activations, `Add`, `Multiply`, ...).
    `ensure_model_supports_pruning` checks that structure with the same
    rules and messages as tfmot 0.8.

    Example:

    ```python
    model = keras.applications.MobileNetV2(weights=None)
    pruned = keras_prune.prune_low_magnitude(
        model, keras_prune.ConstantSparsity(0.75, 0),
        pruning_policy=keras_prune.PruneForLatencyOnXNNPack())
    ```
    """

    def allow_pruning(self, layer: keras.layers.Layer) -> bool:
        return isinstance(layer, keras.layers.Conv2D) and tuple(layer.kernel_size) == (1, 1)

    def ensure_model_supports_pruning(self, model: keras.Model) -> None:
        if not _keras.has_graph(model):
            raise ValueError("Subclassed models are not supported currently.")
        if not model.built:
            raise ValueError("Unbuilt models are not supported currently.")
        inputs = {_keras.source_operation(tensor) for tensor in model.inputs}
        starts = _search(inputs, _starts_sparse_subgraph, _consumers)
        if not starts:
            raise ValueError(
                "Could not find `Conv2D 3x3` layer with stride 2x2, `input filters == 3` "
                "and `VALID` padding and preceding `ZeroPadding2D` with `padding == 1` in "
                "all input branches of the model"
            )
        outputs = {_keras.source_operation(tensor) for tensor in model.outputs}
        ends = _search(outputs, _ends_sparse_subgraph, _keras.producers)
        if not ends:
            raise ValueError(
                "Could not find a `GlobalAveragePooling2D` layer in all output branches"
            )

        def check(operation: Any) -> bool:
            if operation not in ends and not _supported(operation):
                raise ValueError(
                    f"Layer {type(operation).__name__} is not supported for the "
                    f"{type(self).__name__} pruning policy"
                )
            return operation in ends

        _search([c for start in starts for c in _consumers(start)], check, _consumers)


def _consumers(operation: Any) -> list[Any]:
    """The operations after `operation`; a nested Sequential counts as its first layer."""

    def first(op: Any) -> Any:
        return first(op.layers[0]) if isinstance(op, keras.Sequential) and op.layers else op

    return [first(op) for op in _keras.consumers(operation)]


def _search(
    sources: Iterable[Any], stop: Callable[[Any], bool], step: Callable[[Any], list[Any]]
) -> set[Any]:
    """Walks from `sources` along `step` to the operations where `stop` holds.

    Returns them, or an empty set if some path ends (no next operation)
    without reaching one.
    """
    to_visit, seen, found = set(sources), set(sources), set()
    while to_visit:
        operation = to_visit.pop()
        if stop(operation):
            found.add(operation)
            continue
        following = step(operation)
        if not following:
            return set()
        for op in following:
            if op not in seen:
                seen.add(op)
                to_visit.add(op)
    return found


def _padding_before(layer: Any) -> tuple[Any, ...] | None:
    """The padding of the `ZeroPadding2D` that alone feeds `layer`, if one does.

    A layer called in two graphs (a model and its clone) counts its
    producer once.
    """
    producers = list(dict.fromkeys(_keras.producers(layer)))
    if len(producers) == 1 and isinstance(producers[0], keras.layers.ZeroPadding2D):
        return tuple(tuple(side) for side in producers[0].padding)
    return None


def _starts_sparse_subgraph(operation: Any) -> bool:
    return (
        isinstance(operation, keras.layers.Conv2D)
        and getattr(operation, "kernel", None) is not None
        and tuple(operation.kernel.shape[:3]) == (3, 3, 3)
        and tuple(operation.strides) == (2, 2)
        and operation.padding.lower() == "valid"
        and _padding_before(operation) == ((1, 1), (1, 1))
    )


def _ends_sparse_subgraph(operation: Any) -> bool:
    return isinstance(operation, keras.layers.GlobalAveragePooling2D)


def _supported(operation: Any) -> bool:
    """Whether XNNPack's sparse subgraph supports `operation` (tfmot's rules,
    XNNPack's subgraph.c)."""
    layers = keras.layers
    if isinstance(operation, PruneLowMagnitude):
        return _supported(operation.layer)
    if not isinstance(operation, layers.Layer):
        return type(operation).__name__ in _ELEMENTWISE_OPS
    simple = (layers.Add, layers.Multiply, layers.ZeroPadding2D, layers.ReLU)
    if isinstance(operation, (*simple, layers.LeakyReLU, layers.ELU, layers.Dropout)):
        return True
    if isinstance(operation, layers.DepthwiseConv2D):
        return _depthwise_supported(operation)
    if isinstance(operation, layers.Conv2D):  # 1x1, no stride, dilation or groups
        return (
            operation.groups == 1
            and tuple(operation.dilation_rate) == (1, 1)
            and tuple(operation.kernel_size) == (1, 1)
            and tuple(operation.strides) == (1, 1)
        )
    if isinstance(operation, layers.GlobalAveragePooling2D):
        return bool(operation.keepdims)
    if isinstance(operation, layers.BatchNormalization):
        return operation.axis in (-1, 3)  # channels last (tfmot: axis == [3])
    if isinstance(operation, layers.UpSampling2D):
        return operation.interpolation == "bilinear"
    if isinstance(operation, layers.Activation):
        return keras.activations.serialize(operation.activation) in _ACTIVATIONS
    return False


def _depthwise_supported(layer: keras.layers.DepthwiseConv2D) -> bool:
    """3x3 or 5x5, stride 1 "same", or stride 1/2 "valid" after a ZeroPadding2D of 1 or 2."""
    kernel, strides = tuple(layer.kernel_size), tuple(layer.strides)
    padding = layer.padding.lower()
    if layer.depth_multiplier != 1 or tuple(layer.dilation_rate) != (1, 1):
        return False
    for size, pad in (((3, 3), 1), ((5, 5), 2)):
        if kernel != size:
            continue
        if strides == (1, 1) and padding == "same":
            return True
        return (
            strides in ((1, 1), (2, 2))
            and padding == "valid"
            and _padding_before(layer) == ((pad, pad), (pad, pad))
        )
    return False

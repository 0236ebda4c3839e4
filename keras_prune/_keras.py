"""The one door to Keras internals.

keras_prune needs a few things that Keras 3 has no public API for. Every
use of an underscored Keras name goes through a function here, with the
reason it is needed and the Keras versions it was checked on, so that a
Keras release that changes one breaks this module's tests
(`tests/test_keras.py`) and CI's keras-nightly smoke run, not a user's
training. Everything else in keras_prune uses public Keras only.

Checked on Keras 3.8 to 3.15 and keras-nightly 3.16.dev (the smoke run in
`.ci/run`). Each name below exists since Keras 3.0 unless it says otherwise.

Example:

```python
from keras_prune import _keras
layers = _keras.flatten_layers(model)   # every layer at any depth
```
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import keras

# Since 3.0: the scope `keras.StatelessScope` opens. Public is the class,
# not the function that returns the current one.
from keras.src.backend.common.stateless_scope import get_stateless_scope

# Since 3.0: the scope a layer's call opens under a mixed precision policy.
from keras.src.backend.common.variables import AutocastScope

# Since 3.0: the class of `keras.Model(inputs, outputs)`, which Keras does not
# export (`keras.Model.__new__` returns it).
from keras.src.models.functional import Functional


def current_stateless_scope() -> Any:
    """The innermost open `keras.StatelessScope`, or None.

    JAX's trainer runs a forward pass inside one scope (`stateless_call`)
    without a model-level call context; the scope then identifies the pass.
    """
    return get_stateless_scope()


def full_precision() -> AutocastScope:
    """A scope in which variables read at their own dtype, whatever the dtype policy.

    Under a mixed policy (`mixed_float16`, `mixed_bfloat16`) Keras opens an
    `AutocastScope` for every layer call, in which reading a float32
    variable gives a float16 copy. A mask update must rank the float32
    weights (else float16 creates ties that float32 training has not), and
    on the torch backend it must not assign at all inside that scope:
    `Variable.assign` copies into `self.value`, the float16 copy, so the
    update is lost (Keras 3.15). `AutocastScope(None)` (3.0) casts nothing.
    """
    return AutocastScope(None)


def call_context(layer: keras.layers.Layer) -> Any:
    """The `CallContext` of the forward pass `layer` is being called in.

    `Layer._get_call_context()` (3.0): Keras opens one per outermost layer
    call and passes it down; its `entry_layer` is that outermost layer.
    """
    return layer._get_call_context()


def flatten_layers(
    layer: keras.layers.Layer, include_self: bool = False
) -> list[keras.layers.Layer]:
    """Every layer inside `layer` at any depth, in tracking order.

    `Layer._flatten_layers` (3.0): the only walk that reaches the sublayers
    of custom layers and nested models alike (`Model.layers` lists one level
    of a model only).
    """
    return list(layer._flatten_layers(include_self=include_self, recursive=True))


def sublayers(layer: keras.layers.Layer) -> list[keras.layers.Layer]:
    """The layers `layer` holds directly (one level), in tracking order.

    `Layer._flatten_layers(recursive=False)` (3.0); the registry walks into
    unknown custom layers one level at a time, stopping at layers it knows.
    """
    return list(layer._flatten_layers(include_self=False, recursive=False))


def attention_gate(layer: keras.layers.Layer) -> keras.layers.Layer | None:
    """The gate projection (an `EinsumDense`) of a built `MultiHeadAttention` with
    `use_gate=True`, or None.

    `_gate_dense` (since `use_gate` came, in 2026): Keras has no public
    property for it, as it has for the query, key, value and output
    projections.
    """
    return getattr(layer, "_gate_dense", None)


def grouped_query_projections(layer: keras.layers.Layer) -> tuple[Any, ...] | None:
    """The query, key, value and output `EinsumDense` of a built `GroupQueryAttention`,
    or None before it is built.

    `_query_dense`, `_key_dense`, `_value_dense`, `_output_dense` (3.2):
    Keras keeps them in private attributes only (a `MultiHeadAttention` has
    public properties for its own).
    """
    names = ("_query_dense", "_key_dense", "_value_dense", "_output_dense")
    found = tuple(getattr(layer, name, None) for name in names)
    return None if any(projection is None for projection in found) else found


def is_functional(model: keras.Model) -> bool:
    """True for a model run by its graph: `keras.Model(inputs, outputs)` or a subclass of it.

    KerasHub backbones and tasks subclass the (unexported) `Functional`
    class and build their graph in `__init__`; such a model runs through
    its graph, not its attributes, so it is cloned through the graph.
    """
    return isinstance(model, Functional)


def is_plain_graph(model: keras.Model) -> bool:
    """True for `keras.Model(inputs, outputs)` itself, not a subclass of `Functional`."""
    return type(model) is Functional


def has_graph(model: Any) -> bool:
    """True for a Sequential or Functional model: one whose layers form a graph to walk."""
    return isinstance(model, keras.Sequential) or is_functional(model)


def fit_passes_training(model: keras.Model) -> bool:
    """Whether `fit` calls `model` with `training=True`: Keras's trainers pass it
    only when the model's `call` declares a `training` argument
    (`Layer._call_has_training_arg`, 3.0); otherwise no layer inside it sees a
    training batch."""
    return bool(model._call_has_training_arg)


def tracked_layers(model: keras.Model) -> list[keras.layers.Layer]:
    """The layers `model` tracks as its own (`Layer._layers`, 3.0), attributes included."""
    return model._layers


def replace_tracked_layer(
    model: keras.Model, old: keras.layers.Layer, new: keras.layers.Layer
) -> None:
    """Makes `model` track `new` in place of `old`.

    Setting the attribute would track `new` in addition to `old`. Replacing
    it in `Layer._layers` and the tracker's `stored_ids` (3.0) keeps
    `model.layers` and `model.weights` exact.
    """
    layers = model._layers
    for i, layer in enumerate(layers):
        if layer is old:
            layers[i] = new
            stored = model._tracker.stored_ids.get("layers", set())
            stored.discard(id(old))
            stored.add(id(new))


def is_tracking_attribute(name: str) -> bool:
    """True for attributes that hold Keras's (or TensorFlow's) tracking state, not
    the user's layers."""
    return name in ("_layers", "_tracker") or name.startswith("_self_")


def own_variables(model: keras.Model) -> list[keras.Variable]:
    """Variables `model` created itself (`add_weight` in a subclass), not its layers'.

    `_trainable_variables` and `_non_trainable_variables` (3.0); the public
    `model.variables` includes every sublayer's.
    """
    return model._trainable_variables + model._non_trainable_variables


def variable_layout(variable: keras.Variable) -> Any:
    """The sharding layout a `keras.distribution` gave `variable` (`_layout`, 3.0), or None."""
    return getattr(variable, "_layout", None)


def track_variable(layer: keras.layers.Layer, variable: keras.Variable) -> None:
    """Adds a variable made with `keras.Variable(...)` to `layer`'s weights.

    `Layer._track_variable` (3.0) is what `add_weight` calls; `add_weight`
    takes no sharding layout, which a mask must share with its weight.
    """
    layer._track_variable(variable)


def producers(operation: Any) -> list[Any]:
    """The operations whose outputs `operation` consumes in a Functional/Sequential graph.

    `Operation._inbound_nodes` and `Node.parent_nodes` (3.0): Keras keeps
    the graph of a model's layers and ops (`x + y` on Keras tensors is an
    op too) in nodes and has no public walk over it.
    """
    return [parent.operation for node in operation._inbound_nodes for parent in node.parent_nodes]


def call_count(operation: Any) -> int:
    """How many times `operation` was called on symbolic tensors (`_inbound_nodes`, 3.0):
    a graph config numbers a layer's calls, and reviving a graph resolves those
    numbers against this list."""
    return len(operation._inbound_nodes)


def consumers(operation: Any) -> list[Any]:
    """The operations that consume `operation`'s outputs, once per use (`_outbound_nodes`, 3.0)."""
    return [node.operation for node in operation._outbound_nodes]


def source_operation(tensor: Any) -> Any:
    """The operation that produced the Keras tensor `tensor` (`_keras_history`, 3.0)."""
    return tensor._keras_history.operation


def _graph(model: keras.Model) -> Any:
    """The Functional graph of `model`: itself, or a Sequential model's `_functional` (3.0)."""
    return model._functional if isinstance(model, keras.Sequential) else model


def graph_calls(model: keras.Model) -> list[tuple[Any, list[Any], list[Any]]]:
    """`(operation, input tensors, output tensors)` of every call in `model`'s graph, inputs first.

    `Function._nodes_by_depth` (3.0) holds the calls of a Functional model's
    graph (a Sequential model keeps its graph in `_functional`, 3.0), and
    `Node.input_tensors`/`output_tensors` (3.0) their Keras tensors; Keras
    has no public walk over them. Calls of equal depth do not depend on each
    other, so deepest first is an order in which every input is made before
    it is read.
    """
    graph = _graph(model)
    calls = []
    for depth in sorted(graph._nodes_by_depth, reverse=True):
        for node in graph._nodes_by_depth[depth]:
            if not node.is_input:
                calls.append((node.operation, list(node.input_tensors), list(node.output_tensors)))
    return calls


def run_graph(model: keras.Model, inputs: Any, call: Callable[..., Any]) -> Any:
    """`model`'s graph run on the Keras tensors `inputs`, each call made by
    `call(operation, *args, **kwargs)`; the outputs, connected to `inputs`.

    `Function._run_through_graph` (3.0) is what `keras.models.clone_model`
    runs; but `clone_model` then wraps the outputs in a new Functional
    model, which copies the graph when `inputs` are not `keras.Input`
    tensors, so its outputs no longer connect to the tensors given.
    """
    return _graph(model)._run_through_graph(inputs, operation_fn=lambda op: op, call_fn=call)


# The Keras ops (`keras.src.ops.numpy`, 3.0) that `x + 3.0` and friends
# record in a graph; their classes are not exported.
_NUMBER_OPS = {"Add": "add", "Subtract": "subtract", "Multiply": "multiply",
               "Divide": "divide", "TrueDivide": "divide"}  # fmt: skip


def op_with_number(operation: Any) -> tuple[str, float, bool] | None:
    """`(kind, number, tensor_first)` if `operation` is a Keras op called once on
    one tensor and one number (`x + 3.0`, `(1 / 6) * x`), else None; `kind` is
    "add", "subtract", "multiply" or "divide".

    The op classes of `keras.ops` (`keras.src.ops.numpy`, 3.0) are not
    exported, and a node's call arguments (`Node.arguments`, 3.0) are where
    the number is kept: MobileNetV3's hard sigmoid is `relu6(x + 3) / 6`
    built from such ops.
    """
    kind = _NUMBER_OPS.get(type(operation).__name__)
    if kind is None or type(operation).__module__ != "keras.src.ops.numpy":
        return None
    if call_count(operation) != 1:
        return None
    arguments = operation._inbound_nodes[0].arguments
    if arguments.kwargs or len(arguments.args) != 2:
        return None
    first, second = arguments.args
    tensor_first = isinstance(first, keras.KerasTensor)
    number = second if tensor_first else first
    if tensor_first == isinstance(second, keras.KerasTensor):  # two tensors, or none
        return None
    try:
        value = keras.ops.convert_to_numpy(number)  # a numpy array or scalar
    except (TypeError, ValueError):
        return None
    if value.size != 1:
        return None
    return kind, float(value.reshape(())), tensor_first


# Keras ops on two tensors that compute each entry from the same entries of
# both, as the merge layers do (`x + shortcut`, `x * gate`).
_TENSOR_OPS = {"Add": "add", "Subtract": "subtract", "Multiply": "multiply",
               "Maximum": "maximum", "Minimum": "minimum"}  # fmt: skip
# Keras ops on one tensor that compute each entry from that entry alone
# (`ops.relu(x)`, `keras.activations.silu(x)`), by module and class name.
_ELEMENTWISE_OPS = {
    "keras.src.ops.nn": {
        "Celu", "Elu", "Gelu", "HardShrink", "HardSigmoid", "HardSilu", "HardTanh",
        "LeakyRelu", "LogSigmoid", "Relu", "Relu6", "Selu", "Sigmoid", "Silu", "SoftShrink",
        "Softplus", "Softsign", "SparsePlus", "SparseSigmoid", "Squareplus", "TanhShrink",
        "Threshold",
    },
    "keras.src.ops.numpy": {"Abs", "Absolute", "Negative", "Square", "Tanh", "Exp", "Erf"},
}  # fmt: skip


def _tensor_arguments(operation: Any) -> tuple[Any, ...] | None:
    """The tensors a Keras op was called on, if called once on tensors alone
    (`Node.arguments`, 3.0: other arguments are its own attributes)."""
    if call_count(operation) != 1:
        return None
    arguments = operation._inbound_nodes[0].arguments
    if arguments.kwargs or not all(isinstance(a, keras.KerasTensor) for a in arguments.args):
        return None
    return tuple(arguments.args)


def tensor_op(operation: Any) -> str | None:
    """ "add", "subtract", "multiply", "maximum" or "minimum" if `operation` is that
    Keras op called once on two tensors (`x + y`), else None. Its class
    (`keras.src.ops.numpy`, 3.0) is not exported."""
    kind = _TENSOR_OPS.get(type(operation).__name__)
    if kind is None or type(operation).__module__ != "keras.src.ops.numpy":
        return None
    arguments = _tensor_arguments(operation)
    return kind if arguments is not None and len(arguments) == 2 else None


def elementwise_op(operation: Any) -> bool:
    """Whether `operation` is a Keras op called once on one tensor that computes each
    entry from that entry alone (`ops.relu(x)`); calling it on a tensor computes
    the same. Their classes (`keras.src.ops.nn`, `keras.src.ops.numpy`, 3.0)
    are not exported."""
    names = _ELEMENTWISE_OPS.get(type(operation).__module__, set())
    if type(operation).__name__ not in names:
        return False
    arguments = _tensor_arguments(operation)
    return arguments is not None and len(arguments) == 1


def is_scaled_sum(layer: Any) -> bool:
    """Whether `layer` is InceptionResNetV2's `CustomScaleLayer`, which returns
    `inputs[0] + inputs[1] * scale` (a residual sum: its inputs' channels are
    one group). The class (`keras.src.applications.inception_resnet_v2`,
    3.0) is not exported, so it is known by module and name."""
    kind = type(layer)
    return (kind.__module__, kind.__qualname__) == (
        "keras.src.applications.inception_resnet_v2",
        "CustomScaleLayer",
    )


def patch_tf2onnx() -> None:
    """Makes tf2onnx 1.17 work with NumPy 2, as Keras's own ONNX export does before
    calling it (`keras.src.export.tf2onnx_lib.patch_tf2onnx`, 3.8; cached, so once):
    keras_prune calls tf2onnx itself (`_backend._write_onnx`)."""
    from keras.src.export.tf2onnx_lib import patch_tf2onnx as patch

    patch()

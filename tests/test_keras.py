"""Every function of keras_prune._keras, the door to Keras internals, on real layers.

When a Keras release renames or changes one of the internals, a test here
fails (CI runs this file against keras-nightly too) before any user's
training does.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
from keras import ops

from keras_prune import _keras

ENTRY_LAYERS: list[int] = []  # ids, not layers: a list attribute of a layer would track them


class Block(keras.layers.Layer):
    """A custom layer holding sublayers, as KerasHub's blocks do."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.inner = keras.layers.Dense(3, name="inner")
        self.norm = keras.layers.LayerNormalization(name="norm")

    def call(self, x):
        ENTRY_LAYERS.append(id(_keras.call_context(self).entry_layer))
        return self.norm(self.inner(x))


class Scaled(keras.Model):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.block = Block(name="block")
        self.scale = self.add_weight(shape=(), initializer="ones", name="scale")

    def call(self, x, training=None):
        return self.block(x) * self.scale


def test_flatten_layers_reaches_sublayers_of_custom_layers_and_nested_models():
    inner = keras.Sequential([keras.Input((4,)), Block(name="block")], name="inner_model")
    model = keras.Sequential([keras.Input((4,)), inner, keras.layers.Dense(2, name="head")])
    names = [
        layer.name
        for layer in _keras.flatten_layers(model)
        if not isinstance(layer, keras.layers.InputLayer)
    ]
    assert sorted(names) == ["block", "head", "inner", "inner_model", "norm"]
    assert _keras.flatten_layers(model, include_self=True)[0] is model


def test_sublayers_are_one_level_deep():
    block = Block(name="block")
    outer = keras.Sequential([keras.Input((4,)), block])
    assert [layer.name for layer in _keras.sublayers(block)] == ["inner", "norm"]
    top = [l for l in _keras.sublayers(outer) if not isinstance(l, keras.layers.InputLayer)]
    assert top == [block]  # not block's own sublayers


class FunctionalSubclass(keras.Model):
    """A class that builds its graph in __init__, as KerasHub backbones do."""

    def __init__(self, width=2, **kwargs):
        inputs = keras.Input((4,))
        super().__init__(inputs, keras.layers.Dense(width)(inputs), **kwargs)


def test_is_functional_tells_graph_models_from_the_rest():
    inputs = keras.Input((4,))
    functional = keras.Model(inputs, keras.layers.Dense(2)(inputs))
    sequential = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    assert _keras.is_functional(functional) and _keras.is_functional(FunctionalSubclass())
    assert not _keras.is_functional(sequential) and not _keras.is_functional(Scaled())
    graphs = (functional, FunctionalSubclass(), sequential)
    assert all(_keras.has_graph(model) for model in graphs)
    assert not _keras.has_graph(Scaled()) and not _keras.has_graph(keras.layers.Dense(2))


def test_call_context_names_the_outermost_layer_of_the_pass():
    model = Scaled()
    model(np.ones((2, 4), "float32"))
    assert ENTRY_LAYERS[-1] == id(model)


def test_current_stateless_scope_is_the_open_scope():
    assert _keras.current_stateless_scope() is None
    with keras.StatelessScope() as scope:
        assert _keras.current_stateless_scope() is scope


def test_tracked_layers_and_their_replacement_keep_weights_exact():
    model = Scaled()
    model(np.ones((2, 4), "float32"))
    assert model.block in _keras.tracked_layers(model)
    other = Block(name="other")
    other(np.ones((2, 4), "float32"))
    _keras.replace_tracked_layer(model, model.block, other)
    assert other in _keras.tracked_layers(model) and model.block not in _keras.tracked_layers(model)
    assert {id(v) for v in model.weights} == {id(v) for v in other.weights} | {id(model.scale)}
    assert _keras.is_tracking_attribute("_layers") and not _keras.is_tracking_attribute("block")


def test_own_variables_are_the_models_own():
    model = Scaled()
    model(np.ones((2, 4), "float32"))
    assert [v.name for v in _keras.own_variables(model)] == ["scale"]


def test_track_variable_adds_a_variable_and_layout_is_none_without_distribution():
    layer = keras.layers.Dense(2)
    layer.build((None, 3))
    holder = keras.layers.Layer(name="holder")  # not built yet, as a wrapper adding masks
    extra = keras.Variable(np.zeros((3, 2), "float32"), trainable=False, name="extra")
    _keras.track_variable(holder, extra)
    assert any(v is extra for v in holder.non_trainable_weights)
    assert _keras.variable_layout(layer.kernel) is None
    np.testing.assert_array_equal(ops.convert_to_numpy(extra), np.zeros((3, 2)))


def test_graph_walk_finds_producers_and_consumers_of_layers_and_ops():
    inputs = keras.Input((8, 8, 3))
    conv = keras.layers.Conv2D(4, 1, name="conv")
    x = conv(inputs)
    y = x + x  # an op, not a layer
    pool = keras.layers.GlobalAveragePooling2D(name="pool")
    model = keras.Model(inputs, pool(y))
    input_layer = _keras.source_operation(model.inputs[0])
    assert isinstance(input_layer, keras.layers.InputLayer)
    assert _keras.consumers(input_layer) == [conv]
    add = _keras.consumers(conv)[0]
    assert _keras.consumers(conv) == [add, add]  # one entry per use: `x + x` uses x twice
    assert type(add).__name__ == "Add" and not isinstance(add, keras.layers.Layer)
    assert _keras.producers(add) == [conv, conv]
    assert _keras.consumers(add) == [pool]
    assert _keras.source_operation(model.outputs[0]) is pool


def test_call_count_counts_symbolic_calls():
    dense = keras.layers.Dense(2)
    assert _keras.call_count(dense) == 0
    a, b = keras.Input((3,)), keras.Input((3,))
    dense(a), dense(b)
    assert _keras.call_count(dense) == 2
    dense(np.ones((1, 3), "float32"))  # an eager call adds no node
    assert _keras.call_count(dense) == 2


@pytest.mark.parametrize("kind", ["functional", "sequential"])
def test_graph_calls_list_every_call_with_its_tensors_inputs_first(kind):
    dense, relu = keras.layers.Dense(3, name="dense"), keras.layers.ReLU(name="relu")
    if kind == "sequential":
        model = keras.Sequential([keras.Input((4,)), dense, relu])
    else:
        inputs = keras.Input((4,))
        hidden = dense(inputs)
        model = keras.Model(inputs, keras.layers.Add()([hidden, relu(hidden)]))
    calls = _keras.graph_calls(model)
    names = [operation.name for operation, _, _ in calls]
    assert names[:2] == ["dense", "relu"] and len(names) == (2 if kind == "sequential" else 3)
    (operation, inputs, outputs) = calls[0]
    assert inputs[0] is model.inputs[0] and outputs[0].shape == (None, 3)
    assert calls[1][1][0] is outputs[0]  # relu reads what dense made
    assert calls[-1][2][0] is model.outputs[0]


@pytest.mark.parametrize("kind", ["functional", "sequential"])
def test_run_graph_calls_each_operation_on_the_tensors_given_and_stays_connected(kind):
    dense, relu = keras.layers.Dense(3, name="dense"), keras.layers.ReLU(name="relu")
    if kind == "sequential":
        model = keras.Sequential([keras.Input((4,)), dense, relu])
    else:
        inputs = keras.Input((4,))
        model = keras.Model(inputs, relu(dense(inputs)))
    x = keras.Input((4,))
    start = keras.layers.Dense(4, name="start")(x)  # not a keras.Input: clone_model would copy
    seen = []

    def call(operation, *args, **kwargs):
        seen.append(operation.name)
        return operation(*args, **kwargs)

    outputs = _keras.run_graph(model, [start], call)
    assert seen == ["dense", "relu"]
    joined = keras.Model(x, outputs)  # raises unless the outputs connect to `x`
    assert [layer.name for layer in joined.layers[1:]] == ["start", "dense", "relu"]


def test_op_with_number_reads_the_number_of_an_op_on_one_tensor():
    x = keras.Input((3,))
    y = keras.Input((3,))
    ops = {
        "plus": x + 3.0,
        "times": (1 / 6) * x,
        "over": x / 2,
        "minus_from": 1 - x,
        "two_tensors": x * y,
        "power": x**2,
    }
    found = {name: _keras.op_with_number(_keras.source_operation(t)) for name, t in ops.items()}
    assert found["plus"] == ("add", 3.0, True)
    assert found["times"] == ("multiply", pytest.approx(1 / 6), False)
    assert found["over"] == ("divide", 2.0, True)
    assert found["minus_from"] == ("subtract", 1.0, False)
    assert found["two_tensors"] is None and found["power"] is None
    assert _keras.op_with_number(keras.layers.Dense(2)) is None


def test_tensor_and_elementwise_ops_are_known_by_what_they_were_called_on():
    x = keras.Input((3,))
    y = keras.Input((3,))
    ops = keras.ops
    cases = {
        "sum": x + y,
        "gate": x * ops.sigmoid(y),
        "max": ops.maximum(x, y),
        "plus_number": x + 3.0,
        "matmul": ops.matmul(x, ops.transpose(y)),
        "relu": ops.relu(x),
        "gelu": ops.gelu(x, approximate=False),
        "silu": keras.activations.silu(x),
        "softmax": ops.softmax(x),
        "sum_over_axis": ops.sum(x, axis=-1),
    }
    source = {name: _keras.source_operation(t) for name, t in cases.items()}
    kinds = {name: _keras.tensor_op(op) for name, op in source.items()}
    assert kinds == {"sum": "add", "gate": "multiply", "max": "maximum"} | {
        name: None for name in cases if name not in ("sum", "gate", "max")
    }
    elementwise = {name for name, op in source.items() if _keras.elementwise_op(op)}
    assert elementwise == {"relu", "gelu", "silu"}
    assert not _keras.elementwise_op(keras.layers.ReLU())


def test_is_scaled_sum_knows_inception_resnets_residual_layer():
    model = keras.applications.InceptionResNetV2(weights=None, input_shape=(75, 75, 3), classes=2)
    found = [layer for layer in model.layers if _keras.is_scaled_sum(layer)]
    assert len(found) == 40  # 10 + 20 + 10 residual blocks
    assert not _keras.is_scaled_sum(keras.layers.Add())


def test_patch_tf2onnx_replaces_tf2onnx_functions_that_fail_on_numpy_2():
    tf2onnx = pytest.importorskip("tf2onnx")
    _keras.patch_tf2onnx()
    patched = tf2onnx.tfonnx.rewrite_constant_fold  # one of those Keras replaces
    assert patched.__module__ == "keras.src.export.tf2onnx_lib"

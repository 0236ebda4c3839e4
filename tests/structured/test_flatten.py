"""Tests for keras_prune.structured.flatten: nested models inlined into one graph.

The reference is the nested model itself: the flat one must predict what it does.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest

from keras_prune.structured.flatten import flatten

L = keras.layers


def _numpy(x):
    return keras.ops.convert_to_numpy(x)


def _nested():
    """Sequential( Functional(two branches, a nested Sequential inside), Dense )."""
    x = keras.Input((6, 6, 2))
    deep = keras.Sequential([keras.Input((6, 6, 4)), L.Conv2D(4, 1, name="deep_conv")], name="deep")
    a = L.Conv2D(4, 3, padding="same", name="a")(x)
    b = deep(L.BatchNormalization(name="bn")(a))
    inner = keras.Model(x, L.Concatenate(name="cat")([a, b]), name="inner")
    return keras.Sequential(
        [
            keras.Input((6, 6, 2)),
            inner,
            L.GlobalAveragePooling2D(name="gap"),
            L.Dense(3, name="out"),
        ]
    )


def test_nested_models_called_once_become_one_graph_with_the_same_predictions():
    model = _nested()
    for layer in model.get_layer("inner").layers:  # moving statistics that are not 0 and 1
        if isinstance(layer, L.BatchNormalization):
            layer.moving_mean.assign(np.full(4, 0.3, "float32"))
            layer.moving_variance.assign(np.full(4, 2.0, "float32"))
    flat = flatten(model)
    assert not any(isinstance(layer, keras.Model) for layer in flat.layers)
    names = [layer.name for layer in flat.layers[1:]]
    assert names == ["a", "bn", "deep_conv", "cat", "gap", "out"]
    x = np.random.RandomState(0).rand(5, 6, 6, 2).astype("float32")
    np.testing.assert_allclose(
        _numpy(flat(x, training=False)), _numpy(model(x, training=False)), rtol=1e-5, atol=1e-6
    )
    assert flat.get_layer("a") is not model.get_layer("inner").get_layer("a")  # copies
    assert flatten(flat) is flat


def test_a_model_called_twice_stays_nested_and_clashing_names_are_refused():
    shared = keras.Sequential([keras.Input((4,)), L.Dense(4, name="shared_dense")], name="shared")
    x = keras.Input((4,))
    siamese = keras.Model(x, L.Add()([shared(x), shared(L.Dense(4)(x))]))
    assert flatten(siamese) is siamese  # copies would stop sharing the weights
    inner = keras.Sequential([keras.Input((4,)), L.Dense(4, name="same")], name="inner")
    clash = keras.Sequential([keras.Input((4,)), inner, L.Dense(2, name="same")])
    with pytest.raises(ValueError, match=r"share names \(same\)"):
        flatten(clash)


def test_a_layer_shared_with_an_inlined_model_stays_one_layer():
    # As a causal LM's tied embedding: called inside the nested model and by the outer graph.
    x = keras.Input((4,))
    tied = L.Dense(4, name="tied")
    body = keras.Model(x, L.Dense(4, name="body_dense")(tied(x)), name="body")
    model = keras.Model(x, L.Add()([body(x), tied(L.Dense(4, name="side")(x))]))
    flat = flatten(model)
    assert sorted(layer.name for layer in flat.layers[1:]) == ["add", "body_dense", "side", "tied"]
    assert len(flat.weights) == len(model.weights)  # one kernel and bias for `tied`
    data = np.random.RandomState(0).rand(5, 4).astype("float32")
    np.testing.assert_allclose(_numpy(flat(data)), _numpy(model(data)), rtol=1e-5, atol=1e-6)


def test_a_model_kept_nested_that_shares_a_layer_keeps_the_whole_graph():
    x = keras.Input((4,))
    tied = L.Dense(4, name="tied")
    twice = keras.Model(x, tied(x), name="twice")  # called twice: stays nested
    once = keras.Sequential([keras.Input((4,)), L.Dense(4, name="once_dense")], name="once")
    model = keras.Model(x, L.Add()([twice(x), twice(once(x)), tied(x)]))
    assert flatten(model) is model  # a copy of `twice` would hold a `tied` of its own


def test_an_operation_inside_an_inlined_model_is_copied_without_weights():
    x = keras.Input((6, 4))
    inner = keras.Model(x, L.Dense(8, name="a")(x)[:, 0], name="inner")  # a GetItem operation
    model = keras.Sequential([keras.Input((6, 4)), inner, L.Dense(2, name="out")])
    flat = flatten(model)
    assert [type(op).__name__ for op in flat.operations[1:]] == ["Dense", "GetItem", "Dense"]
    x = np.random.RandomState(0).normal(size=(3, 6, 4)).astype("float32")
    np.testing.assert_allclose(_numpy(flat(x)), _numpy(model(x)), rtol=1e-6, atol=1e-6)


def test_a_nested_model_called_with_a_dict_by_keyword_gets_each_input_by_its_key():
    # As Gemma3CausalLM calls its backbone: `backbone(inputs={...})`, the keys
    # not in sorted order. Both inputs have one shape, so a swap would run.
    z, a = keras.Input((3,), name="z"), keras.Input((3,), name="a")
    inner = keras.Model(
        {"z": z, "a": a},
        L.Concatenate(name="cat")([L.Dense(2, name="dz")(z), L.Dense(2, name="da")(a)]),
        name="inner",
    )
    outer_z, outer_a = keras.Input((3,), name="z"), keras.Input((3,), name="a")
    y = L.Dense(1, name="out")(inner(inputs={"z": outer_z, "a": outer_a}))
    model = keras.Model({"z": outer_z, "a": outer_a}, y)
    flat = flatten(model)
    assert [layer.name for layer in flat.layers if isinstance(layer, L.Dense)] == [
        "dz",
        "da",
        "out",
    ]
    rng = np.random.RandomState(0)
    x = {"z": rng.normal(size=(4, 3)), "a": rng.normal(size=(4, 3)) + 5}
    np.testing.assert_allclose(_numpy(flat(x)), _numpy(model(x)), rtol=1e-6, atol=1e-6)

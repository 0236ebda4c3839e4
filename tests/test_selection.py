"""Tests for keras_prune.selection: what `select=` picks, and what it refuses.

(Each operation's own use of it is tested with that operation.)
"""

from __future__ import annotations

import keras
import pytest

from keras_prune.selection import Selection, by_name

L = keras.layers


def _model():
    return keras.Sequential(
        [keras.Input((4,)), L.Dense(4, name="a"), L.Dropout(0.1, name="drop"), L.Dense(2, name="b")]
    )


def test_instances_names_classes_and_predicates_each_pick_their_layers():
    model = _model()
    a, drop, b = model.layers
    picked = {
        "everything": Selection(None),
        "instance": Selection(a),
        "name": Selection("b"),
        "class": Selection(L.Dropout),
        "predicate": Selection(lambda layer: layer.name != "a"),
        "list": Selection([a, "drop"]),
    }
    names = {key: [x.name for x in model.layers if s(x)] for key, s in picked.items()}
    assert names == {
        "everything": ["a", "drop", "b"],
        "instance": ["a"],
        "name": ["b"],
        "class": ["drop"],
        "predicate": ["drop", "b"],
        "list": ["a", "drop"],
    }
    assert picked["list"].explicit(drop) and not picked["predicate"].explicit(drop)
    for selection in picked.values():
        selection.check_all_used()  # each named something of the model


def test_what_matches_nothing_or_is_no_selector_is_named():
    model = _model()
    selection = Selection(["a", "typo", L.Conv2D, lambda layer: False])
    for layer in model.layers:
        selection(layer)
    with pytest.raises(ValueError, match="not in the model: \\['typo', <class .*Conv2D'>\\]\\. "
                       "Select layers of the model passed as `model`"):  # fmt: skip
        selection.check_all_used("model")
    with pytest.raises(TypeError, match="`select` must be None, .* got 3 of type int"):
        Selection(["a", 3])


def test_by_name_turns_the_models_own_instances_into_names():
    model, other = _model(), L.Dense(2, name="other")
    a = model.layers[0]
    assert by_name([a, "b", other, L.Dense], model.layers) == ["a", "b", other, L.Dense]
    assert by_name(a, model.layers) == "a" and by_name(None, model.layers) is None

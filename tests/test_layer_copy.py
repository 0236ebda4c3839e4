"""`_layer_copy`: a layer copied from its config, or an error naming it and its class's error."""

import re

import keras
import numpy as np
import pytest
from conftest import BACKEND

import keras_prune
from keras_prune._keras import flatten_layers
from keras_prune._layer_copy import NotRecreatable, copy_layer


class ReadsUnsetAttribute(keras.layers.Layer):
    """As KerasHub 0.32's LlamaTransformerDecoder: get_config reads what __init__ never set."""

    def get_config(self):
        return {**super().get_config(), "factor": self.factor}


class RefusesItsConfig(keras.layers.Layer):
    """As KerasHub 0.32's ViTPatchingAndEmbedding: its config holds an argument __init__ refuses."""

    def get_config(self):
        return {**super().get_config(), "derived": 3}


def test_a_copy_is_a_new_layer_of_the_same_class_and_config():
    dense = keras.layers.Dense(4, activation="relu", name="head")
    dense.build((None, 3))
    copy = copy_layer(dense)
    assert type(copy) is keras.layers.Dense and copy is not dense and not copy.built
    assert copy.get_config() == dense.get_config()
    edited = copy_layer(dense, lambda layer: {**layer.get_config(), "units": 2})
    assert edited.units == 2 and edited.name == "head"


@pytest.mark.parametrize(
    "layer, root",
    [
        (ReadsUnsetAttribute(name="block"), r"AttributeError: .*'factor'"),
        (RefusesItsConfig(name="block"), r"ValueError: Unrecognized keyword arguments .*derived"),
    ],
)
def test_a_layer_its_config_cannot_re_create_is_named_with_the_root_error(layer, root):
    with pytest.raises(NotRecreatable, match=r"layer 'block' \(\w+\) cannot be re-created") as e:
        copy_layer(layer)
    assert isinstance(e.value, ValueError)
    assert re.search(root, e.value.reason), e.value.reason
    assert "using config=" not in e.value.reason  # Keras's wrapper, which repeats the config


def test_a_python_lambda_is_copied_in_memory_and_a_model_holding_it_prunes():
    offset = 0.5  # a closure, as a Lambda's function often has
    inputs = keras.Input((3,))
    x = keras.layers.Lambda(lambda t: t * 2.0 + offset, name="scale")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(2, name="head")(x))
    copy = copy_layer(model.get_layer("scale"))
    probe = np.arange(6, dtype="float32").reshape(2, 3)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(copy(probe)), probe * 2.0 + 0.5)

    pruned = keras_prune.prune_low_magnitude(model, keras_prune.ConstantSparsity(0.5, 0))
    stripped = keras_prune.strip_pruning(pruned)
    np.testing.assert_allclose(stripped.predict(probe, verbose=0), model.predict(probe, verbose=0))
    with pytest.raises(ValueError, match="Python lambda"):  # a file still needs safe_mode=False
        keras.layers.Lambda.from_config(model.get_layer("scale").get_config())


def test_an_adapted_lookup_layer_keeps_its_vocabulary_through_prune_and_strip():
    lookup = keras.layers.IntegerLookup(name="ids")
    lookup.adapt(np.array([7, 7, 7, 3, 3, 11]))  # its vocabulary, which its config lacks
    inputs = keras.Input((2,), dtype="int64")
    hidden = keras.layers.Flatten()(keras.layers.Embedding(5, 4)(lookup(inputs)))
    model = keras.Model(inputs, keras.layers.Dense(2)(hidden))
    probe = np.array([[7, 3], [11, 5]])  # 5 is out of vocabulary
    pruned = keras_prune.prune_low_magnitude(model, keras_prune.ConstantSparsity(0.5, 0))
    stripped = keras_prune.strip_pruning(pruned)
    for copy in (pruned, stripped):
        assert copy.get_layer("ids").get_vocabulary() == [-1, 7, 3, 11]
        np.testing.assert_allclose(copy.predict(probe, verbose=0), model.predict(probe, verbose=0))


@keras.saving.register_keras_serializable("test_layer_copy")
class LookedUpEmbedding(keras.layers.Layer):
    """A custom layer that holds an adapted lookup, as a feature-encoding block does."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.lookup = keras.layers.IntegerLookup(name="ids")
        self.embedding = keras.layers.Embedding(5, 4, name="vectors")

    def call(self, ids):
        return self.embedding(self.lookup(ids))


@pytest.mark.skipif(
    BACKEND != "tensorflow",
    reason="Keras traces a lookup layer inside a custom layer on TensorFlow only",
)
def test_a_lookup_layer_inside_a_custom_layer_keeps_its_vocabulary_in_every_copy(tmp_path):
    block = LookedUpEmbedding(name="block")
    block.lookup.adapt(np.array([7, 7, 7, 3, 3, 11]))
    inputs = keras.Input((2,), dtype="int64")
    hidden = keras.layers.Flatten()(block(inputs))
    model = keras.Model(inputs, keras.layers.Dense(2)(hidden))
    probe = np.array([[7, 3], [11, 5]])  # 5 is out of vocabulary
    pruned = keras_prune.prune_low_magnitude(model, keras_prune.ConstantSparsity(0.5, 0))
    stripped = keras_prune.strip_pruning(pruned)
    keras_prune.export(stripped, tmp_path / "block.kps")
    loaded = keras_prune.load(tmp_path / "block.kps")
    for copy in (pruned, stripped, loaded):
        lookups = [layer for layer in flatten_layers(copy) if layer.name == "ids"]
        assert [layer.get_vocabulary() for layer in lookups] == [[-1, 7, 3, 11]]
        np.testing.assert_allclose(copy.predict(probe, verbose=0), model.predict(probe, verbose=0))

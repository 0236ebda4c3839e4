"""A Functional subclass (as KerasHub's backbones and tasks are) comes back as its class from strip_pruning."""

import warnings

import keras
import numpy as np
import pytest

import keras_prune


@keras.saving.register_keras_serializable("test_model_class")
class Classifier(keras.Model):
    """Builds its graph in __init__ from its own arguments, as a KerasHub task does."""

    def __init__(self, units, **kwargs):
        inputs = keras.Input((6,))
        hidden = keras.layers.Dense(units, activation="relu", name="hidden")(inputs)
        super().__init__(inputs, keras.layers.Dense(3, name="head")(hidden), **kwargs)
        self.units = units

    def get_config(self):
        return {"units": self.units, "name": self.name}

    def probabilities(self, x):
        return keras.ops.softmax(self(x))


@keras.saving.register_keras_serializable("test_model_class")
class UnnamedClassifier(keras.Model):
    """A `Classifier` whose layers are left unnamed: each new instance names them anew."""

    def __init__(self, units, **kwargs):
        inputs = keras.Input((6,))
        hidden = keras.layers.Dense(units, activation="relu")(inputs)
        super().__init__(inputs, keras.layers.Dense(3)(hidden), **kwargs)
        self.units = units

    def get_config(self):
        return {"units": self.units, "name": self.name}


class Unrebuildable(Classifier):
    def get_config(self):
        return {"name": self.name}  # without `units`: from_config fails


def _data():
    rng = np.random.default_rng(0)
    return rng.normal(size=(32, 6)).astype("float32"), rng.integers(0, 3, 32)


def _pruned(model):
    pruned = keras_prune.prune_low_magnitude(
        model, keras_prune.ConstantSparsity(0.5, 0, frequency=1)
    )
    pruned.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    pruned.fit(
        *_data(), batch_size=8, epochs=1, verbose=0, callbacks=[keras_prune.UpdatePruningStep()]
    )
    return pruned


def test_strip_gives_back_the_class_with_the_masked_models_predictions(tmp_path):
    x, _ = _data()
    pruned = _pruned(Classifier(8))
    assert type(pruned) is not Classifier  # clone_model made it a plain Functional
    stripped = keras_prune.strip_pruning(pruned)
    assert type(stripped) is Classifier and stripped.units == 8
    kernel = stripped.get_layer("hidden").kernel.numpy()
    assert np.count_nonzero(kernel == 0) == kernel.size // 2
    np.testing.assert_allclose(
        stripped.predict(x, verbose=0), pruned.predict(x, verbose=0), rtol=1e-6, atol=1e-6
    )
    assert stripped.probabilities(x).shape == (32, 3)
    path = str(tmp_path / "stripped.keras")
    stripped.save(path)
    loaded = keras.saving.load_model(path)
    assert type(loaded) is Classifier
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), stripped.predict(x, verbose=0))


def test_strip_of_an_unpruned_subclass_keeps_its_class():
    model = Classifier(4)
    copy = keras_prune.strip_pruning(model)
    assert type(copy) is Classifier and copy is not model
    for a, b in zip(copy.weights, model.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_a_pruned_model_saved_and_resumed_still_strips_to_its_class(tmp_path):
    x, y = _data()
    path = str(tmp_path / "pruned.keras")
    pruned = _pruned(Classifier(8))
    assert isinstance(pruned, keras_prune.model_class.PrunedGraph)
    pruned.save(path)
    resumed = keras.saving.load_model(path)
    np.testing.assert_array_equal(resumed.predict(x, verbose=0), pruned.predict(x, verbose=0))
    resumed.fit(x, y, epochs=1, verbose=0, callbacks=[keras_prune.UpdatePruningStep()])
    stripped = keras_prune.strip_pruning(resumed)
    assert type(stripped) is Classifier
    np.testing.assert_allclose(
        stripped.predict(x, verbose=0), resumed.predict(x, verbose=0), rtol=1e-6, atol=1e-6
    )


@keras.saving.register_keras_serializable("test_model_class")
class Tied(keras.Model):
    """Its graph calls a layer of its nested model again, as a causal LM's tied embedding."""

    def __init__(self, **kwargs):
        embedding = keras.layers.Embedding(10, 4, name="embedding")
        ids = keras.Input((5,), dtype="int32", name="ids")
        body = keras.Model(ids, keras.layers.Dense(4, name="mix")(embedding(ids)), name="body")
        joined = keras.layers.Concatenate()([body(ids), embedding(ids)])
        pooled = keras.layers.GlobalAveragePooling1D()(joined)
        super().__init__(ids, keras.layers.Dense(3, name="head")(pooled), **kwargs)

    def get_config(self):
        return {"name": self.name}


def test_a_layer_shared_with_a_nested_model_stays_one_layer_through_a_file(tmp_path):
    x = np.random.default_rng(0).integers(0, 10, (32, 5)).astype("int32")
    y = np.random.default_rng(1).integers(0, 3, 32)
    pruned = keras_prune.prune_low_magnitude(
        Tied(), keras_prune.ConstantSparsity(0.5, 0, frequency=1)
    )
    pruned.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    pruned.fit(x, y, batch_size=8, verbose=0, callbacks=[keras_prune.UpdatePruningStep()])
    path = str(tmp_path / "pruned.keras")
    pruned.save(path)  # Keras alone revives two embeddings and loads one of them
    loaded = keras.saving.load_model(path)
    outer = loaded.get_layer("prune_low_magnitude_embedding")
    assert outer is loaded.get_layer("body").get_layer("prune_low_magnitude_embedding")
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), pruned.predict(x, verbose=0))
    config = pruned.get_config()  # the shared layer listed before its nested model: the same
    names = [entry["name"] for entry in config["layers"]]
    i, j = names.index("body"), names.index(outer.name)
    config["layers"][i], config["layers"][j] = config["layers"][j], config["layers"][i]
    swapped = keras_prune.model_class.PrunedGraph.from_config(config)
    shared = swapped.get_layer(outer.name)
    assert shared is swapped.get_layer("body").get_layer(outer.name)
    stripped = keras_prune.strip_pruning(loaded)
    assert type(stripped) is Tied
    np.testing.assert_allclose(
        stripped.predict(x, verbose=0), pruned.predict(x, verbose=0), rtol=1e-6, atol=1e-6
    )


def test_a_class_that_cannot_be_rebuilt_warns_and_strips_to_functional():
    pruned = _pruned(Unrebuildable(8))
    with pytest.warns(UserWarning, match="Unrebuildable could not be re-created"):
        stripped = keras_prune.strip_pruning(pruned)
    assert type(stripped) is not Unrebuildable
    x, _ = _data()
    np.testing.assert_allclose(
        stripped.predict(x, verbose=0), pruned.predict(x, verbose=0), rtol=1e-6, atol=1e-6
    )


class Unsaveable(Classifier):
    def get_config(self):
        return {"units": self.units, "name": self.name, "tags": {"a set", "is not JSON"}}


def test_a_config_that_is_not_json_warns_when_pruning_and_strips_to_a_graph():
    with pytest.warns(UserWarning, match="Unsaveable is not JSON"):
        pruned = keras_prune.prune_low_magnitude(Unsaveable(8))
    assert not isinstance(pruned, keras_prune.model_class.PrunedGraph)
    assert type(keras_prune.strip_pruning(pruned)) is not Unsaveable


class Block(keras.layers.Layer):
    """A custom layer whose own config cannot re-create it, as KerasHub 0.32's
    `LlamaTransformerDecoder` (get_config reads an attribute never set)."""

    def __init__(self, units, **kwargs):
        super().__init__(**kwargs)
        self.units = units

    def build(self, input_shape):
        self.dense = keras.layers.Dense(self.units, activation="relu", name="dense")
        self.dense.build(input_shape)

    def call(self, x):
        return self.dense(x)

    def get_config(self):
        return {**super().get_config(), "units": self.units, "scale": self.scale}


@keras.saving.register_keras_serializable("test_model_class")
class Backbone(keras.Model):
    """Re-created from its own arguments, as a KerasHub backbone (and a `.keras` file) is."""

    def __init__(self, units, **kwargs):
        inputs = keras.Input((6,), name="x")
        super().__init__(inputs, Block(units, name="block")(inputs), **kwargs)
        self.units = units

    def get_config(self):
        return {"units": self.units, "name": self.name}


@keras.saving.register_keras_serializable("test_model_class")
class Task(keras.Model):
    """A task around a `Backbone`, as a KerasHub task holds its backbone."""

    def __init__(self, backbone, **kwargs):
        inputs = keras.Input((6,), name="x")
        super().__init__(inputs, keras.layers.Dense(3, name="head")(backbone(inputs)), **kwargs)
        self.backbone = backbone

    def get_config(self):
        return {"backbone": keras.saving.serialize_keras_object(self.backbone), "name": self.name}

    @classmethod
    def from_config(cls, config):
        backbone = keras.saving.deserialize_keras_object(config.pop("backbone"))
        return cls(backbone, **config)


@pytest.mark.parametrize("form", ["backbone", "task"])
def test_layers_their_config_cannot_copy_are_copied_from_a_recreated_class(form, tmp_path):
    model = Backbone(3) if form == "backbone" else Task(Backbone(8))
    before = [w.numpy().copy() for w in model.weights]
    x, _ = _data()
    pruned = _pruned(model)
    report = keras_prune.sparsity_report(pruned)
    assert len(report) == (1 if form == "backbone" else 2)  # the block's kernel; the head's
    assert all(row.zeros == row.size // 2 for row in report)
    for weight, value in zip(model.weights, before):  # the original is untouched
        np.testing.assert_array_equal(weight.numpy(), value)
    assert not any(isinstance(layer, keras_prune.PruneLowMagnitude) for layer in model.layers)
    stripped = keras_prune.strip_pruning(pruned)
    assert type(stripped) is type(model)
    backbone = stripped if form == "backbone" else stripped.backbone
    kernel = backbone.get_layer("block").dense.kernel.numpy()
    assert np.count_nonzero(kernel == 0) == kernel.size // 2
    np.testing.assert_allclose(
        stripped.predict(x, verbose=0), pruned.predict(x, verbose=0), rtol=1e-6, atol=1e-6
    )
    path = str(tmp_path / "stripped.keras")
    stripped.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), stripped.predict(x, verbose=0))


def test_such_a_pruned_model_saves_as_its_class_and_resumes_from_the_file(tmp_path):
    x, _ = _data()
    resumed, steps = _saved_and_resumed(_pruned(Task(Backbone(8))), tmp_path)
    assert steps == [8, 8]  # 4 batches before the file, 4 after
    assert all(row.zeros == row.size // 2 for row in keras_prune.sparsity_report(resumed))
    stripped = keras_prune.strip_pruning(resumed)
    assert type(stripped) is Task
    np.testing.assert_allclose(
        stripped.predict(x, verbose=0), resumed.predict(x, verbose=0), rtol=1e-6, atol=1e-6
    )


def _saved_and_resumed(pruned, tmp_path, before_loading=lambda: None):
    """`pruned` saved, loaded (checked equal) and trained one more epoch; the
    loaded model and its wrappers' pruning steps."""
    x, y = _data()
    path = str(tmp_path / "pruned.keras")
    pruned.save(path)
    before_loading()
    resumed = keras.saving.load_model(path)
    assert type(resumed) is type(pruned)
    for a, b in zip(pruned.weights, resumed.weights, strict=True):  # kernels, masks, steps
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(b), keras.ops.convert_to_numpy(a))
    np.testing.assert_array_equal(resumed.predict(x, verbose=0), pruned.predict(x, verbose=0))
    resumed.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    resumed.fit(x, y, batch_size=8, verbose=0, callbacks=[keras_prune.UpdatePruningStep()])
    wrappers = keras_prune.pruned_layers(resumed)
    return resumed, [int(keras.ops.convert_to_numpy(w.pruning_step)) for w in wrappers]


@keras.saving.register_keras_serializable("test_model_class")
class UnnamedTask(keras.Model):
    """A graph with such a layer whose layers are left unnamed: each new
    instance of the class names them anew (`dense_7`)."""

    def __init__(self, units, **kwargs):
        inputs = keras.Input((6,))
        hidden = Block(units)(keras.layers.Dense(units)(inputs))
        super().__init__(inputs, keras.layers.Dense(3)(hidden), **kwargs)
        self.units = units

    def get_config(self):
        return {"units": self.units, "name": self.name}


def test_such_a_pruned_model_with_unnamed_layers_loads_under_other_names(tmp_path):
    pruned = _pruned(UnnamedTask(8))
    # The instance that loading makes is not the next one: it names its layers otherwise.
    _, steps = _saved_and_resumed(pruned, tmp_path, before_loading=lambda: UnnamedTask(8))
    assert steps == [8, 8, 8]  # two Dense layers and the block's


@pytest.mark.parametrize("cls", ["UnnamedClassifier", "UnnamedTask"])
def test_strip_gives_back_a_class_whose_layers_are_unnamed(cls):
    x, _ = _data()
    pruned = _pruned(globals()[cls](8))
    with warnings.catch_warnings():
        warnings.filterwarnings("error", "strip_pruning returns a plain graph model")
        stripped = keras_prune.strip_pruning(pruned)
    assert type(stripped) is globals()[cls]
    np.testing.assert_allclose(
        stripped.predict(x, verbose=0), pruned.predict(x, verbose=0), rtol=1e-6, atol=1e-6
    )


def test_a_plain_graph_with_such_a_layer_is_refused_naming_it():
    inputs = keras.Input((6,))
    model = keras.Model(inputs, Block(4, name="block")(inputs))
    with pytest.raises(ValueError, match=r"'block' \(Block\) .*AttributeError.*scale"):
        keras_prune.prune_low_magnitude(model)


def test_pruning_such_a_pruned_model_again_keeps_its_wrappers_and_masks():
    x, _ = _data()
    pruned = _pruned(Task(Backbone(8)))
    again = keras_prune.prune_low_magnitude(pruned, keras_prune.ConstantSparsity(0.9, 0))
    before = {w.name: w for w in keras_prune.pruned_layers(pruned)}
    after = {w.name: w for w in keras_prune.pruned_layers(again)}
    assert sorted(after) == sorted(before) and len(after) == 2
    for name, wrapper in after.items():
        assert wrapper.pruning_schedule.get_config() == before[name].pruning_schedule.get_config()
        for a, b in zip(wrapper.weights, before[name].weights):
            np.testing.assert_array_equal(keras.ops.convert_to_numpy(a), b.numpy())
    np.testing.assert_array_equal(again.predict(x, verbose=0), pruned.predict(x, verbose=0))

"""`sensitivity`: against a brute-force loop over layers and sparsities (a full
sort decides what is pruned), the model left as it was, the PNG, bad input."""

import keras
import numpy as np
import pytest
from conftest import small_cnn, small_images
from keras import ops
from PIL import Image

import keras_prune as kp


@pytest.fixture
def trained():
    x, y = small_images(96)
    model = small_cnn()
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x, y, batch_size=16, epochs=3, verbose=0)
    return model, (x, y)


def brute_force(model, data, sparsities):
    """Each layer's kernel pruned alone, smallest magnitudes first by a stable sort."""
    table = []
    for layer in [layer for layer in model.layers if layer.weights]:
        original = ops.convert_to_numpy(layer.kernel)
        row = []
        for sparsity in sparsities:
            k = max(round(original.size * (1 - sparsity)), 1)
            order = np.argsort(-np.abs(original).ravel(), kind="stable")
            keep = np.zeros(original.size, bool)
            keep[order[:k]] = True
            layer.kernel.assign(np.where(keep.reshape(original.shape), original, 0.0))
            row.append(model.evaluate(*data, verbose=0, return_dict=True)["accuracy"])
        layer.kernel.assign(original)
        table.append(row)
    return table


def test_sensitivity_matches_a_brute_force_loop(trained, capsys, tmp_path):
    model, data = trained
    before = [ops.convert_to_numpy(w) for w in model.weights]
    sparsities = (0.5, 0.9, 0.99)
    table = kp.sensitivity(model, data, sparsities)
    lines = [
        line for line in capsys.readouterr().out.splitlines() if line.startswith("sensitivity")
    ]
    assert len(lines) == 4 and lines[0].startswith("sensitivity [1/4]")
    for got, want in zip(before, model.weights):
        np.testing.assert_array_equal(got, ops.convert_to_numpy(want))
    assert table.metric == "accuracy"
    assert table.baseline == pytest.approx(
        model.evaluate(*data, verbose=0, return_dict=True)["accuracy"]
    )
    assert table.layers == tuple(layer.name for layer in model.layers if layer.weights)
    assert table.sizes == (72, 576, 1152, 64)
    np.testing.assert_allclose(table.values, brute_force(model, data, sparsities), atol=1e-6)
    assert table.values[3][-1] < table.baseline  # one weight left in the head hurts
    assert str(table).splitlines()[1].split() == ["layer", "weights", "50.00%", "90.00%", "99.00%"]
    path = table.plot(tmp_path / "sensitivity.png")
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size[0] > 100


def test_sensitivity_of_selected_layers_on_the_loss(trained):
    model, data = trained
    dense = [layer for layer in model.layers if isinstance(layer, keras.layers.Dense)]
    table = kp.sensitivity(
        model, data, [0.0, 0.9], metric="loss", select=keras.layers.Dense, verbose=False
    )
    assert table.layers == tuple(layer.name for layer in dense)
    assert table.values[0][0] == pytest.approx(table.baseline, rel=1e-6)  # 0 %: unchanged


def test_sample_weights_and_batch_size_reach_evaluate(trained):
    model, (x, y) = trained
    weights = np.where(y == 0, 0.0, 1.0).astype("float32")
    table = kp.sensitivity(
        model, (x, y, weights), [0.5], metric="loss", batch_size=7, verbose=False
    )
    expected = model.evaluate(x, y, sample_weight=weights, verbose=0, return_dict=True)["loss"]
    unweighted = model.evaluate(x, y, verbose=0, return_dict=True)["loss"]
    assert table.baseline == pytest.approx(expected, rel=1e-5)
    assert table.baseline != pytest.approx(unweighted, rel=1e-3)


def test_bad_input_raises_before_touching_the_model(trained):
    model, data = trained
    with pytest.raises(ValueError, match="`sparsities`"):
        kp.sensitivity(model, data, [0.5, 1.0])
    with pytest.raises(ValueError, match="at least one"):
        kp.sensitivity(model, data, [])
    with pytest.raises(ValueError, match="`metric` 'f1'"):
        kp.sensitivity(model, data, [0.5], metric="f1", verbose=False)
    with pytest.raises(ValueError, match="not in the model: \\['nope'\\]. Select layers of "
                       "the model passed as `model`"):  # fmt: skip
        kp.sensitivity(model, data, [0.5], select="nope")
    with pytest.raises(TypeError, match="`model`"):
        kp.sensitivity(model.layers[0], data, [0.5])
    uncompiled = small_cnn()
    with pytest.raises(ValueError, match="must be compiled"):
        kp.sensitivity(uncompiled, data, [0.5])
    pruned = kp.prune_low_magnitude(small_cnn(), kp.ConstantSparsity(0.5, 0))
    pruned.compile("sgd", "mse")
    with pytest.raises(ValueError, match="already pruned"):
        kp.sensitivity(pruned, data, [0.5])


def brute_force_channels(model, data, sparsity):
    """Each producer's lowest-norm output channels zeroed alone (kernel and bias), by a
    stable sort: what removing them computes where only ReLU and pooling follow."""
    table = []
    for layer in [layer for layer in model.layers if layer.weights][:-1]:  # not the output
        kernel, bias = (ops.convert_to_numpy(w) for w in (layer.kernel, layer.bias))
        norms = np.sqrt((kernel.reshape(-1, kernel.shape[-1]).astype("float64") ** 2).sum(0))
        removed = np.argsort(norms, kind="stable")[: int(sparsity * len(norms))]
        keep = np.ones(len(norms), "float32")
        keep[removed] = 0.0
        layer.kernel.assign(kernel * keep)
        layer.bias.assign(bias * keep)
        table.append(model.evaluate(*data, verbose=0, return_dict=True)["accuracy"])
        layer.kernel.assign(kernel)
        layer.bias.assign(bias)
    return table


def test_channel_sensitivity_matches_zeroing_each_groups_channels(trained, capsys):
    model, data = trained
    before = [ops.convert_to_numpy(w) for w in model.weights]
    table = kp.sensitivity(model, data, [0.0, 0.5], structure="channels")
    assert len(capsys.readouterr().out.splitlines()) == 3
    for got, want in zip(before, model.weights):
        np.testing.assert_array_equal(got, ops.convert_to_numpy(want))
    *producers, output = [layer.name for layer in model.layers if layer.weights]
    assert (table.unit, table.layers, table.sizes) == ("channels", tuple(producers), (8, 8, 16))
    assert [row[0] for row in table.values] == pytest.approx([table.baseline] * 3, abs=1e-6)
    np.testing.assert_allclose(
        [row[1] for row in table.values], brute_force_channels(model, data, 0.5), atol=1e-6
    )
    assert str(table).splitlines()[1].split() == ["layer", "channels", "0.00%", "50.00%"]
    only = kp.sensitivity(
        model, data, [0.5], structure="channels", select=producers[2], verbose=False
    )
    assert only.layers == (producers[2],) and only.values[0] == table.values[2][1:]
    with pytest.raises(ValueError, match="`structure` must be one of 'weights', 'channels'"):
        kp.sensitivity(model, data, [0.5], structure="filters")
    with pytest.raises(ValueError, match=f"picks {output}, whose channels cannot be removed: it "
                       "reaches the model output"):  # fmt: skip
        kp.sensitivity(model, data, [0.5], structure="channels", select=output)
    masked = kp.prune_channels(model, kp.ConstantSparsity(0.5, 0))
    masked.compile("adam", "sparse_categorical_crossentropy")
    with pytest.raises(ValueError, match="comes from prune_channels .* `shrink\\(model\\)`"):
        kp.sensitivity(masked, data, [0.5], structure="channels")

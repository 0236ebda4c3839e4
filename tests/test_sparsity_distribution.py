"""Sparsity distributions: ERK against hand-computed values, the total reached in
training, the small-layer rule, dict and callable factors, persistence, bad input."""

import math
import warnings

import keras
import numpy as np
import pytest
from conftest import small_cnn, small_images
from keras import ops

import keras_prune as kp
from keras_prune.compare.experiment import seed_model
from keras_prune.sparsity_distribution import erk_factors


def prune_one_step(model, sparsity, **kwargs):
    """Prunes `model` at one training batch with lr=0, so the weights do not move."""
    pruned = kp.prune_low_magnitude(model, kp.ConstantSparsity(sparsity, 0, frequency=1), **kwargs)
    x, y = small_images(8)
    pruned.compile(keras.optimizers.SGD(0.0), "sparse_categorical_crossentropy")
    pruned.fit(x, y, batch_size=8, epochs=1, verbose=0)
    return pruned


def kept_per_weight(pruned):
    return [
        int(ops.convert_to_numpy(ops.sum(m.value)))
        for w in kp.pruned_layers(pruned)
        for _, m, _ in w.pruning_vars
    ]


def test_erk_of_the_seed_cnn_by_hand():
    # Shapes (3,3,1,32), (3,3,32,64), (1600,256), (256,10); N = 430 880.
    # ERK density of weight i: eps * sum(shape)/prod(shape). At 95 % the
    # first convolution's would be 9.52 * 39/288 = 1.29 > 1, so it is dense;
    # the others share the rest: eps = (0.05 * N - 288) / (102 + 1856 + 266).
    eps = (0.05 * 430880 - 288) / (102 + 1856 + 266)
    expected = [0.0, 1 - eps * 102 / 18432, 1 - eps * 1856 / 409600, 1 - eps * 266 / 2560]
    pruned = kp.prune_low_magnitude(
        seed_model(), kp.ConstantSparsity(0.95, 0), sparsity_distribution="erk"
    )
    factors = [f for w in kp.pruned_layers(pruned) for f in w.sparsity_factors]
    np.testing.assert_allclose([f * 0.95 for f in factors], expected, rtol=1e-12, atol=1e-12)
    assert expected[3] < 0.01  # the 10-class head stays nearly dense
    shapes = [(3, 3, 1, 32), (3, 3, 32, 64), (1600, 256), (256, 10)]
    sizes = [math.prod(s) for s in shapes]
    for sparsity in (0.5, 0.875, 0.98):
        factors = erk_factors(shapes, sparsity)
        total = sum(f * sparsity * n for f, n in zip(factors, sizes)) / sum(sizes)
        assert total == pytest.approx(sparsity, abs=1e-12)
        assert all(0.0 <= f * sparsity < 1.0 for f in factors)


def test_erk_in_training_reaches_the_total_and_keeps_the_largest_weights():
    model = small_cnn()
    originals = [ops.convert_to_numpy(layer.kernel) for layer in model.layers if layer.weights]
    pruned = prune_one_step(model, 0.9, sparsity_distribution="erk")
    wrappers = list(kp.pruned_layers(pruned))
    factors = [w.sparsity_factors[0] for w in wrappers]
    sizes = [w.size for w in originals]
    kept = kept_per_weight(pruned)
    # Each weight keeps round(n (1 - f s)); together they keep the
    # schedule's total to within one weight per weight tensor.
    assert kept == [max(round(n * (1 - f * 0.9)), 1) for n, f in zip(sizes, factors)]
    assert abs(sum(kept) - round(sum(sizes) * 0.1)) <= len(sizes)
    assert len(set(np.round(factors, 6))) == len(factors)  # really not uniform
    # The kept weights are the largest of each weight (a full sort).
    for original, wrapper in zip(originals, wrappers):
        mask = ops.convert_to_numpy(wrapper.pruning_vars[0][1].value)
        k = int(mask.sum())
        expected = np.sort(np.abs(original).ravel())[-k:]
        np.testing.assert_array_equal(np.sort(np.abs(original[mask > 0])), expected)


def test_erk_leaves_small_layers_dense_and_says_so():
    pruned = prune_one_step(small_cnn(), 0.5, sparsity_distribution="erk")
    wrappers = list(kp.pruned_layers(pruned))
    dense = [w for w in wrappers if w.sparsity_factors == (0.0,)]
    # The first convolution (72 weights, ratio 15/72) and the head (64
    # weights, ratio 20/64) are under-budget at 50 %: ERK keeps them whole.
    assert [w.layer.name for w in dense] == [wrappers[0].layer.name, wrappers[-1].layer.name]
    kept = kept_per_weight(pruned)
    assert kept[0] == 72 and kept[-1] == 64
    report = kp.sparsity_report(pruned)
    assert [bool(row.note) for row in report] == [True, False, False, True]
    assert "left dense by the sparsity distribution" in str(report)
    assert report.total_sparsity == pytest.approx(0.5, abs=4 / report.total_size)


def test_dict_and_callable_factors_set_proportional_sparsities():
    model = small_cnn()
    names = [layer.name for layer in model.layers if layer.weights]
    sizes = [math.prod(layer.kernel.shape) for layer in model.layers if layer.weights]
    by_dict = prune_one_step(model, 0.6, sparsity_distribution={names[0]: 0.0, names[2]: 1.4})
    factors = [w.sparsity_factors[0] for w in kp.pruned_layers(by_dict)]
    scale = sum(sizes) / (sizes[1] + 1.4 * sizes[2] + sizes[3])
    np.testing.assert_allclose(factors, [0.0, scale, 1.4 * scale, scale], rtol=1e-12)
    kept = kept_per_weight(by_dict)
    assert kept[0] == sizes[0]
    assert abs(sum(kept) - round(sum(sizes) * 0.4)) <= len(sizes)

    def convolutions_dense(layer):
        return 0.0 if isinstance(layer, keras.layers.Conv2D) else 1.0

    by_callable = prune_one_step(small_cnn(), 0.6, sparsity_distribution=convolutions_dense)
    kept = kept_per_weight(by_callable)
    assert kept[:2] == sizes[:2]
    assert abs(sum(kept) - round(sum(sizes) * 0.4)) <= len(sizes)


def test_global_is_one_threshold_and_global_pruning_is_its_old_spelling():
    pruned = prune_one_step(small_cnn(), 0.7, sparsity_distribution="global")
    thresholds = {
        float(ops.convert_to_numpy(t.value))
        for w in kp.pruned_layers(pruned)
        for _, _, t in w.pruning_vars
    }
    assert len(thresholds) == 1
    with pytest.warns(DeprecationWarning, match="sparsity_distribution='global'"):
        old = kp.prune_low_magnitude(small_cnn(), kp.ConstantSparsity(0.7, 0), global_pruning=True)
    assert {w.global_group for w in kp.pruned_layers(old)} == {"global"}


def test_factors_survive_save_and_load(tmp_path):
    pruned = kp.prune_low_magnitude(
        small_cnn(), kp.PolynomialDecay(0.0, 0.9, 0, 8, frequency=1), sparsity_distribution="erk"
    )
    path = str(tmp_path / "erk.keras")
    pruned.save(path)
    loaded = keras.saving.load_model(path)
    assert [w.sparsity_factors for w in kp.pruned_layers(loaded)] == [
        w.sparsity_factors for w in kp.pruned_layers(pruned)
    ]
    targets = [t for w in kp.pruned_layers(loaded) for t in w.target_sparsities()]
    sizes = [
        math.prod(weight.shape)
        for wrapper in kp.pruned_layers(loaded)
        for weight, _, _ in wrapper.pruning_vars
    ]
    assert np.dot(targets, sizes) / sum(sizes) == pytest.approx(0.9, abs=1e-12)
    assert len(set(targets)) == len(targets)


@pytest.mark.parametrize(
    "kwargs, error, words",
    [
        ({"sparsity_distribution": "erdos"}, ValueError, "`sparsity_distribution` must be one of"),
        ({"sparsity_distribution": 3}, TypeError, "`sparsity_distribution` must be"),
        ({"sparsity_distribution": {"nope": 1.0}}, ValueError, "not pruned in the model"),
        ({"sparsity_distribution": {"first": -1.0}}, ValueError, "below 0 %"),
        ({"sparsity_distribution": {"first": float("nan")}}, TypeError, "finite number"),
        ({"sparsity_distribution": {"first": 50.0}}, ValueError, "would be pruned to"),
        ({"sparsity_distribution": lambda layer: 0.0}, ValueError, "every factor is 0"),
        (
            {"sparsity_distribution": "erk", "sparsity_m_by_n": (2, 4)},
            ValueError,
            "cannot apply with `sparsity_m_by_n`",
        ),
        (
            {"sparsity_distribution": "global", "block_size": (2, 2)},
            ValueError,
            "cannot apply with `block_size`",
        ),
        (
            {"sparsity_distribution": "erk", "global_pruning": True},
            ValueError,
            "contradicts",
        ),
    ],
)
def test_bad_distributions_raise_naming_the_argument(kwargs, error, words):
    model = keras.Sequential(
        [keras.Input((8,)), keras.layers.Dense(8, name="first"), keras.layers.Dense(4)]
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        with pytest.raises(error, match=words):
            kp.prune_low_magnitude(model, kp.ConstantSparsity(0.9, 0), **kwargs)


def test_distributions_that_cannot_apply_raise_before_pruning():
    unbuilt = keras.Sequential([keras.layers.Dense(4), keras.layers.Dense(2)])
    with pytest.raises(ValueError, match="needs the weights' shapes"):
        kp.prune_low_magnitude(unbuilt, kp.ConstantSparsity(0.5, 0), sparsity_distribution="erk")
    with pytest.raises(ValueError, match="apply to models"):
        kp.prune_low_magnitude(
            keras.layers.Dense(4), kp.ConstantSparsity(0.5, 0), sparsity_distribution="erk"
        )

    class Endless(kp.PruningSchedule):
        def __call__(self, step):
            return True, 0.5

        def get_config(self):
            return {}

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(4)])
    with pytest.raises(ValueError, match="end_sparsity"):
        kp.prune_low_magnitude(model, Endless(), sparsity_distribution="erk")

import keras
import numpy as np
import pytest
from conftest import small_cnn, small_images

import keras_prune
from keras_prune import ConstantSparsity, PolynomialDecay
from keras_prune.callbacks import final_sparsity_shortfalls


def train(schedule, epochs, **kwargs):
    x, y = small_images(64)  # 4 batches of 16 per epoch
    pruned = keras_prune.prune_low_magnitude(small_cnn(), schedule, **kwargs)
    pruned.compile("adam", "sparse_categorical_crossentropy")
    pruned.fit(x, y, batch_size=16, epochs=epochs, verbose=0, callbacks=[keras_prune.UpdatePruningStep()])
    return pruned


def test_warns_when_training_stops_before_end_step():
    schedule = PolynomialDecay(0.0, 0.8, begin_step=0, end_step=12, frequency=1)
    with pytest.warns(UserWarning, match="pruning step 8, before the schedule's end_step=12"):
        train(schedule, epochs=2)


def test_warns_when_schedule_never_prunes():
    # 12 training steps; pruning would begin at step 100.
    with pytest.warns(UserWarning, match="never pruned to it; check begin_step"):
        pruned = train(ConstantSparsity(0.5, begin_step=100), epochs=3)
    assert len(final_sparsity_shortfalls(pruned)) == 4
    assert keras_prune.sparsity_report(pruned).total_sparsity == 0


def test_silent_when_final_sparsity_is_reached(recwarn):
    pruned = train(PolynomialDecay(0.0, 0.8, begin_step=0, end_step=8, frequency=2), epochs=3)
    assert not [w for w in recwarn if issubclass(w.category, UserWarning) and "Pruning" in str(w.message)]
    assert final_sparsity_shortfalls(pruned) == []
    assert keras_prune.sparsity_report(pruned).total_sparsity == pytest.approx(0.8, abs=1e-3)


def test_m_by_n_target_is_m_over_n():
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4), keras.layers.Dense(1)])
    pruned = keras_prune.prune_low_magnitude(model, ConstantSparsity(0.0, 0, frequency=1), sparsity_m_by_n=(2, 4))
    pruned.compile("sgd", "mse")
    pruned.fit(np.ones((4, 8), "float32"), np.ones((4, 1), "float32"), verbose=0)
    assert [row.sparsity for row in keras_prune.sparsity_report(pruned)] == [0.5, 0.5]
    assert final_sparsity_shortfalls(pruned) == []


def test_warns_on_model_without_pruning():
    model = small_cnn()
    model.compile("adam", "sparse_categorical_crossentropy")
    x, y = small_images(16)
    with pytest.warns(UserWarning, match="no PruneLowMagnitude"):
        model.fit(x, y, verbose=0, callbacks=[keras_prune.UpdatePruningStep()])

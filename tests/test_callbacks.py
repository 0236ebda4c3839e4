import csv
import warnings

import keras
import numpy as np
import pytest
from conftest import small_cnn, small_images
from keras import ops

import keras_prune
from keras_prune import ConstantSparsity, PolynomialDecay, _tfevents
from keras_prune.callbacks import final_sparsity_shortfalls
from keras_prune.masks import keep_count


def train(schedule, epochs, **kwargs):
    x, y = small_images(64)  # 4 batches of 16 per epoch
    pruned = keras_prune.prune_low_magnitude(small_cnn(), schedule, **kwargs)
    pruned.compile("adam", "sparse_categorical_crossentropy")
    pruned.fit(
        x, y, batch_size=16, epochs=epochs, verbose=0, callbacks=[keras_prune.UpdatePruningStep()]
    )
    return pruned


@pytest.mark.slow
def test_warns_when_training_stops_before_end_step():
    schedule = PolynomialDecay(0.0, 0.8, begin_step=0, end_step=12, frequency=1)
    with pytest.warns(UserWarning, match="pruning step 8, before the schedule's end_step=12"):
        train(schedule, epochs=2)


@pytest.mark.slow
def test_warns_once_when_schedule_never_prunes():
    # 12 training steps; pruning would begin at step 100.
    with pytest.warns(
        UserWarning,
        match=r"no pruning step of the schedule fell inside this training run \(steps 1..12\)",
    ) as caught:
        pruned = train(ConstantSparsity(0.5, begin_step=100), epochs=3)
    (warning,) = [w for w in caught if "Pruning ended below" in str(w.message)]
    assert str(warning.message).startswith(
        "Pruning ended below the scheduled final sparsity for 4 pruned weights:\n- "
    )
    messages = final_sparsity_shortfalls(pruned)
    assert len(messages) == 4
    assert "72 of 72 weights kept, 36 more than 50.00% sparsity allows" in messages[0]
    assert keras_prune.sparsity_report(pruned).total_sparsity == 0


@pytest.mark.slow
def test_tells_a_schedule_that_stops_short_from_a_mask_update_without_effect():
    # PolynomialDecay to 0.8 over steps 0..10 every 4: the last pruning step is 8.
    with pytest.warns(UserWarning, match=r"last pruning step, 8, prescribes only 79\.\d+%"):
        pruned = train(PolynomialDecay(0.0, 0.8, begin_step=0, end_step=10, frequency=4), epochs=3)
    assert all("internal failure" not in m for m in final_sparsity_shortfalls(pruned))
    # A mask that pruning steps left untouched is an internal failure, named as one.
    wrapper = next(keras_prune.pruned_layers(pruned))
    wrapper.pruning_vars[0][1].assign(np.ones(wrapper.pruning_vars[0][1].shape, "float32"))
    (message,) = [
        m for m in final_sparsity_shortfalls(pruned) if wrapper.pruning_vars[0][0].path in m
    ]
    assert "the schedule pruned at step 8" in message and "the mask update had no effect" in message
    assert "internal failure of keras-prune under backend " + keras.backend.backend() in message
    assert "dtype policy float32" in message and "steps_per_execution=1" in message


@pytest.mark.slow
def test_silent_when_final_sparsity_is_reached(recwarn):
    pruned = train(PolynomialDecay(0.0, 0.8, begin_step=0, end_step=8, frequency=2), epochs=3)
    assert not [
        w for w in recwarn if issubclass(w.category, UserWarning) and "Pruning" in str(w.message)
    ]
    assert final_sparsity_shortfalls(pruned) == []
    assert keras_prune.sparsity_report(pruned).total_sparsity == pytest.approx(0.8, abs=1e-3)


def test_a_global_group_is_checked_as_a_whole(recwarn):
    # Global pruning leaves layers at different sparsities; only the total must reach 0.8.
    pruned = train(ConstantSparsity(0.8, 0, frequency=2), epochs=1, sparsity_distribution="global")
    assert final_sparsity_shortfalls(pruned) == []
    report = keras_prune.sparsity_report(pruned)
    assert report.total_sparsity == pytest.approx(0.8, abs=1e-3)
    assert len({round(row.sparsity, 3) for row in report}) > 1
    wrapper = next(keras_prune.pruned_layers(pruned))
    wrapper.pruning_vars[0][1].assign(np.ones(wrapper.pruning_vars[0][1].shape, "float32"))
    (message,) = final_sparsity_shortfalls(pruned)
    assert message.startswith(
        "Pruning ended below the scheduled final sparsity for the global pruning group 'global'"
    )


def test_m_by_n_target_is_m_over_n():
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4), keras.layers.Dense(1)])
    pruned = keras_prune.prune_low_magnitude(
        model, ConstantSparsity(0.0, 0, frequency=1), sparsity_m_by_n=(2, 4)
    )
    pruned.compile("sgd", "mse")
    pruned.fit(np.ones((4, 8), "float32"), np.ones((4, 1), "float32"), verbose=0)
    assert [row.sparsity for row in keras_prune.sparsity_report(pruned)] == [0.5, 0.5]
    assert final_sparsity_shortfalls(pruned) == []


@pytest.mark.slow
@pytest.mark.parametrize("structure", ["weights", "channels"])
@pytest.mark.parametrize("early_stopping_first", [True, False], ids=["before", "after"])
def test_early_stopping_restoring_an_earlier_mask_is_told(structure, early_stopping_first):
    # The "best" epoch is the first (a score that falls each epoch): restoring
    # it brings back the masks of step 4 of 16, where the schedule stood at 0.
    x, y = small_images(64)  # 4 batches of 16 per epoch
    schedule = PolynomialDecay(0.0, 0.5, begin_step=4, end_step=16, frequency=4)
    prune = (
        keras_prune.prune_low_magnitude if structure == "weights" else keras_prune.prune_channels
    )
    pruned = prune(small_cnn(), pruning_schedule=schedule)
    pruned.compile("adam", "sparse_categorical_crossentropy")
    score = keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: logs.update(s=-epoch))
    stopping = keras.callbacks.EarlyStopping(
        monitor="s", mode="max", patience=10, restore_best_weights=True
    )
    update = keras_prune.UpdatePruningStep()
    callbacks = [score, stopping, update] if early_stopping_first else [score, update, stopping]
    expected = "are back at pruning step 4 though training reached step 16"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pruned.fit(x, y, batch_size=16, epochs=4, verbose=0, callbacks=callbacks)
    told = [str(w.message) for w in caught if expected in str(w.message)]
    assert len(told) == (1 if early_stopping_first else 0)  # before it: it sees the restore
    assert all(m.startswith("UpdatePruningStep: ") for m in told)
    assert not any("sparsity allows" in str(w.message) for w in caught)  # no shortfall instead
    finish = keras_prune.strip_pruning if structure == "weights" else keras_prune.shrink
    with pytest.warns(UserWarning, match=f"{finish.__name__}: .* {expected}: weights from"):
        finish(pruned)
    assert stopping.best_epoch == 0


def test_warns_on_model_without_pruning():
    model = small_cnn()
    model.compile("adam", "sparse_categorical_crossentropy")
    x, y = small_images(16)
    with pytest.warns(UserWarning, match="no PruneLowMagnitude"):
        model.fit(x, y, verbose=0, callbacks=[keras_prune.UpdatePruningStep()])


# PruningSummaries ------------------------------------------------------------


def read_events(log_dir):
    """{tag: [(step, value), ...]} as TensorBoard itself reads the event files."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(log_dir / "metrics"))
    accumulator.Reload()
    return {
        tag: [(e.step, e.value) for e in accumulator.Scalars(tag)]
        for tag in accumulator.Tags()["scalars"]
    }


def expected_zero_fraction(size, sparsity):
    return (size - int(ops.convert_to_numpy(keep_count(size, sparsity)))) / size


@pytest.mark.slow
def test_summaries_write_exact_values_to_tensorboard_and_csv(tmp_path):
    # 4 batches per epoch, 3 epochs: pruning steps 1..12; pruned at steps 2, 4, 6, 8.
    schedule = PolynomialDecay(0.0, 0.8, begin_step=0, end_step=8, frequency=2)
    x, y = small_images(64)
    pruned = keras_prune.prune_low_magnitude(small_cnn(), schedule)
    pruned.compile("adam", "sparse_categorical_crossentropy")
    history = pruned.fit(
        x,
        y,
        batch_size=16,
        epochs=3,
        verbose=0,
        callbacks=[
            keras_prune.UpdatePruningStep(),
            keras_prune.PruningSummaries(tmp_path, update_freq=3),
            keras.callbacks.CSVLogger(str(tmp_path / "log.csv")),
        ],
    )
    wrappers = list(keras_prune.pruned_layers(pruned))
    events = read_events(tmp_path)
    expected_tags = set()
    for wrapper in wrappers:
        expected_tags.add(f"{wrapper.path}/scheduled_sparsity")
        for weight, _, _ in wrapper.pruning_vars:
            expected_tags |= {f"{weight.path}/sparsity", f"{weight.path}/threshold"}
    assert set(events) == expected_tags
    assert len(expected_tags) == 12  # 4 layers x (sparsity, threshold, schedule)
    # Every 3rd batch, and at each epoch end (step 12 is both, written once).
    steps = [3, 4, 6, 8, 9, 12]
    last_pruned = {3: 2, 4: 4, 6: 6, 8: 8, 9: 8, 12: 8}
    rows = list(csv.DictReader(open(tmp_path / "log.csv")))
    assert [row["epoch"] for row in rows] == ["0", "1", "2"]
    for wrapper in wrappers:
        tag = f"{wrapper.path}/scheduled_sparsity"
        scheduled = {s: float(ops.convert_to_numpy(schedule(s)[1])) for s in steps}
        assert events[tag] == [(s, pytest.approx(scheduled[s], abs=1e-7)) for s in steps]
        assert history.history[tag] == [scheduled[4], scheduled[8], scheduled[12]]
        assert [float(row[tag]) for row in rows] == [scheduled[4], scheduled[8], scheduled[12]]
        for weight, _, threshold in wrapper.pruning_vars:
            size = int(np.prod(weight.shape))
            tag = f"{weight.path}/sparsity"
            want = {s: expected_zero_fraction(size, schedule(last_pruned[s])[1]) for s in steps}
            assert events[tag] == [(s, np.float32(want[s])) for s in steps]
            assert history.history[tag] == [want[4], want[8], want[12]]
            assert [float(row[tag]) for row in rows] == [want[4], want[8], want[12]]
            tag = f"{weight.path}/threshold"
            final = float(ops.convert_to_numpy(threshold.value))
            assert final > 0
            assert [s for s, _ in events[tag]] == steps
            assert events[tag][-1][1] == np.float32(final)  # masks are fixed after step 8
            assert events[tag][3][1] == np.float32(final)
            assert [float(row[tag]) for row in rows][1:] == [final, final]
            assert 0 < events[tag][0][1] < final  # step 3: the lower sparsity of step 2


class Subclassed(keras.Model):
    """tfmot's pattern for a subclassed model: a wrapped layer, built by the first batch."""

    def __init__(self):
        super().__init__()
        self.hidden = keras_prune.prune_low_magnitude(
            keras.layers.Dense(6), ConstantSparsity(0.5, 0, frequency=1)
        )
        self.out = keras.layers.Dense(1)

    def call(self, x, training=None):
        return self.out(self.hidden(x, training=training))


class WithoutTraining(Subclassed):
    def call(self, x):
        return self.out(self.hidden(x))


class NotPassingTraining(Subclassed):
    def call(self, x, training=None):  # declares `training` but keeps its layers out of it
        return self.out(self.hidden(x, training=False))


def test_a_model_whose_layers_see_no_training_batch_is_told_after_the_first_batch():
    model = NotPassingTraining()
    model.compile("sgd", "mse")
    x = np.random.default_rng(0).normal(size=(8, 8)).astype("float32")
    batches = []

    class Batches(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            batches.append(batch)

    with pytest.warns(UserWarning) as caught:
        model.fit(
            x,
            np.ones((8, 1), "float32"),
            batch_size=2,
            epochs=2,
            verbose=0,
            callbacks=[keras_prune.UpdatePruningStep(), Batches()],
        )
    early = [w for w in caught if "after the first training batch" in str(w.message)]
    assert len(early) == 1 and "NotPassingTraining.call must pass `training` on" in str(
        early[0].message
    )
    assert model.hidden.steps_seen() == 0 and len(batches) == 8
    with warnings.catch_warnings():  # a model that prunes: no word
        warnings.simplefilter("error", UserWarning)
        passing = Subclassed()
        passing.compile("sgd", "mse")
        passing.fit(
            x,
            np.ones((8, 1), "float32"),
            epochs=2,
            verbose=0,
            callbacks=[keras_prune.UpdatePruningStep()],
        )


def test_callbacks_start_on_a_model_that_fit_builds(tmp_path):
    model = Subclassed()
    assert not model.built
    model.compile("sgd", "mse")
    x = np.random.default_rng(0).normal(size=(8, 8)).astype("float32")
    callbacks = [keras_prune.UpdatePruningStep(), keras_prune.PruningSummaries(str(tmp_path))]
    model.fit(x, np.ones((8, 1), "float32"), batch_size=4, epochs=2, verbose=0, callbacks=callbacks)
    assert model.hidden.steps_seen() == 4
    kernel = model.hidden.pruning_vars[0][0]
    assert read_events(tmp_path)[f"{kernel.path}/sparsity"] == [(2, 0.5), (4, 0.5)]
    assert keras_prune.sparsity_report(model)[0].sparsity == 0.5


def test_a_model_whose_call_takes_no_training_argument_is_told_why_nothing_pruned():
    model = WithoutTraining()  # keras.io's Distiller is one: call(self, x)
    update = keras_prune.UpdatePruningStep()
    update.set_model(model)
    with pytest.warns(UserWarning, match="WithoutTraining.call takes no `training` argument"):
        update.on_train_begin()  # before the first batch
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        update.set_model(Subclassed())  # declares `training`: no warning
        update.on_train_begin()
    model.compile("sgd", "mse")
    x = np.random.default_rng(0).normal(size=(8, 8)).astype("float32")
    with pytest.warns(UserWarning) as caught:
        model.fit(x, np.ones((8, 1), "float32"), verbose=0, callbacks=[update])
    messages = [str(w.message) for w in caught]
    assert any("saw no training batch in this run: a subclassed model's" in m for m in messages)
    assert not any("after the first training batch" in m for m in messages)  # said before
    assert model.hidden.steps_seen() == 0  # what the first warning foretold


def test_summaries_default_logs_at_epoch_ends_and_keeps_one_file_per_fit(tmp_path):
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(6), keras.layers.Dense(1)])
    pruned = keras_prune.prune_low_magnitude(model, ConstantSparsity(0.5, 0, frequency=1))
    pruned.compile("sgd", "mse")
    x, y = np.ones((8, 8), "float32"), np.ones((8, 1), "float32")
    summaries = keras_prune.PruningSummaries(str(tmp_path))
    pruned.fit(x, y, batch_size=4, epochs=2, verbose=0, callbacks=[summaries])
    pruned.fit(x, y, batch_size=4, epochs=1, verbose=0, callbacks=[summaries])
    assert len(list((tmp_path / "metrics").glob("events.out.tfevents.*"))) == 2
    events = read_events(tmp_path)
    assert len(events) == 6
    kernel = next(keras_prune.pruned_layers(pruned)).pruning_vars[0][0]
    assert events[f"{kernel.path}/sparsity"] == [(2, 0.5), (4, 0.5), (6, 0.5)]


def test_summaries_log_the_channels_a_channel_mask_removes(tmp_path):
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(8), keras.layers.Dense(1)])
    schedule = PolynomialDecay(0.0, 0.5, begin_step=0, end_step=4, frequency=2)
    masked = keras_prune.prune_channels(model, schedule)
    masked.compile("sgd", "mse")
    x, y = np.ones((8, 8), "float32"), np.ones((8, 1), "float32")
    summaries = keras_prune.PruningSummaries(str(tmp_path))
    history = masked.fit(x, y, batch_size=4, epochs=2, verbose=0, callbacks=[summaries])
    (mask,) = keras_prune.structured.channel_mask.channel_masks(masked)
    removed = 1 - keras.ops.convert_to_numpy(mask.mask).mean()  # the mask itself, at the end
    events = read_events(tmp_path)
    # Steps 2 and 4 prescribe 0.5 - 0.5 * (1 - 2/4)**3 = 0.4375 and 0.5 of the
    # 8 units: 3 of them (rounded down), then 4.
    assert events[f"{mask.path}/scheduled_sparsity"] == [(2, 0.4375), (4, 0.5)]
    assert events[f"{mask.path}/sparsity"] == [(2, 0.375), (4, removed)]
    assert removed == 0.5
    assert history.history[f"{mask.path}/sparsity"] == [0.375, 0.5]


def test_summaries_log_m_over_n_as_the_scheduled_sparsity(tmp_path):
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4)])
    pruned = keras_prune.prune_low_magnitude(
        model, ConstantSparsity(0.0, 0, frequency=1), sparsity_m_by_n=(2, 4)
    )
    pruned.compile("sgd", "mse")
    history = pruned.fit(
        np.ones((4, 8), "float32"),
        np.ones((4, 4), "float32"),
        verbose=0,
        callbacks=[keras_prune.PruningSummaries(tmp_path, update_freq="batch")],
    )
    wrapper = next(keras_prune.pruned_layers(pruned))
    assert history.history[f"{wrapper.path}/scheduled_sparsity"] == [0.5]
    assert history.history[f"{wrapper.pruning_vars[0][0].path}/sparsity"] == [0.5]
    assert read_events(tmp_path)[f"{wrapper.path}/scheduled_sparsity"] == [(1, 0.5)]


@pytest.mark.parametrize("log_dir", [3, None, b"logs", ["logs"]])
def test_summaries_reject_a_log_dir_that_is_not_a_path(log_dir):
    with pytest.raises(TypeError, match="`log_dir` must be a str or os.PathLike"):
        keras_prune.PruningSummaries(log_dir)


@pytest.mark.parametrize("update_freq", ["step", "Epoch", 0, -2, 1.5, True, None])
def test_summaries_reject_a_bad_update_freq(tmp_path, update_freq):
    with pytest.raises(ValueError, match="`update_freq` must be 'epoch', 'batch' or an int >= 1"):
        keras_prune.PruningSummaries(tmp_path, update_freq=update_freq)


def test_summaries_warn_on_model_without_pruning(tmp_path):
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    model.compile("sgd", "mse")
    with pytest.warns(
        UserWarning, match="PruningSummaries: the model has no PruneLowMagnitude or ChannelMask"
    ):
        model.fit(
            np.ones((4, 3)),
            np.ones((4, 1)),
            verbose=0,
            callbacks=[keras_prune.PruningSummaries(tmp_path)],
        )
    assert not (tmp_path / "metrics").exists()


def test_event_records_use_the_tfrecord_checksum():
    from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c

    assert _tfevents.crc32c(b"123456789") == 0xE3069283  # the CRC-32C check value
    for data in (b"", b"a", bytes(range(256)) * 3):
        assert _tfevents.masked_crc32c(data) == masked_crc32c(data)


def test_summaries_refuse_weights_that_would_share_a_tag(tmp_path):
    class TwinLayers(keras.Model):  # subclassed models allow repeated layer names
        def __init__(self):
            super().__init__()
            self.a = keras_prune.prune_low_magnitude(keras.layers.Dense(3, name="d"), name="p")
            self.b = keras_prune.prune_low_magnitude(keras.layers.Dense(3, name="d"), name="p")

        def call(self, x, training=None):
            return self.a(x, training=training) + self.b(x, training=training)

    model = TwinLayers()
    model(np.ones((1, 3), "float32"))
    model.compile("sgd", "mse")
    with pytest.raises(ValueError, match=r"same tags \['twin_layers/p/d/kernel/sparsity'"):
        model.fit(
            np.ones((2, 3)),
            np.ones((2, 3)),
            verbose=0,
            callbacks=[keras_prune.PruningSummaries(tmp_path)],
        )

import json
import pathlib
import warnings

import keras
import numpy as np
import pytest
from keras import ops

import keras_prune
from keras_prune import ConstantSparsity, PolynomialDecay, PruningSchedule

REFERENCE = json.loads(
    (pathlib.Path(__file__).parent / "data" / "tfmot_schedules.json").read_text()
)
CLASSES = {"ConstantSparsity": ConstantSparsity, "PolynomialDecay": PolynomialDecay}
INT32_MAX = 2**31 - 1


def _cases():
    for case in REFERENCE["schedules"]:
        for row in case["steps"]:
            if row["step"] > INT32_MAX:
                continue  # pruning steps are int32 here; see test_step_range
            if case.get("degenerate") and row["step"] >= case["kwargs"]["begin_step"]:
                continue  # tfmot returns NaN there; see test_begin_equals_end
            yield case["class_name"], case["kwargs"], row


CASES = list(_cases())


def _float32_bits(value):
    return np.asarray(value, np.float32).view(np.uint32).item()


def test_reference_is_real_tfmot():
    assert REFERENCE["versions"]["tensorflow_model_optimization"] == "0.8.1"
    assert len(CASES) > 1000


@pytest.mark.slow
def test_schedules_match_tfmot_exactly():
    """Every (schedule, step) of the tfmot 0.8.1 reference, bit for bit."""
    mismatches = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        schedules = {}
        for name, kwargs, row in CASES:
            key = (name, json.dumps(kwargs, sort_keys=True))
            schedule = schedules.setdefault(key, CLASSES[name](**kwargs))
            should_prune, sparsity = schedule(row["step"])
            # tfmot's eager value; in a tf.function grappler turns its x / span
            # into x * (1 / span), which differs in the last bit for some steps.
            expected_bits = int(row.get("sparsity_eager_bits", row["sparsity_bits"]), 16)
            got = (
                bool(ops.convert_to_numpy(should_prune)),
                _float32_bits(ops.convert_to_numpy(sparsity)),
            )
            if got != (row["should_prune"], expected_bits):
                mismatches.append((name, kwargs, row, got))
    assert not mismatches, f"{len(mismatches)} mismatches, first: {mismatches[:3]}"


def test_schedule_inside_compiled_function():
    schedule = PolynomialDecay(0.1, 0.9, begin_step=10, end_step=110, frequency=10)
    steps = np.arange(0, 130, dtype="int32")
    if keras.backend.backend() == "jax":
        import jax

        fn = jax.jit(jax.vmap(schedule))
    elif keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        fn = tf.function(
            lambda s: tf.map_fn(schedule, s, fn_output_signature=(tf.bool, tf.float32)),
            jit_compile=True,
        )
    else:
        fn = lambda s: tuple(map(list, zip(*[schedule(int(x)) for x in s])))  # noqa: E731
    should, sparsity = fn(ops.convert_to_tensor(steps))
    should = np.array(
        [
            bool(x)
            for x in ops.convert_to_numpy(ops.stack(should) if isinstance(should, list) else should)
        ]
    )
    sparsity = ops.convert_to_numpy(ops.stack(sparsity) if isinstance(sparsity, list) else sparsity)
    np.testing.assert_array_equal(np.flatnonzero(should), np.arange(10, 111, 10))
    np.testing.assert_allclose(sparsity[110:], 0.9, rtol=1e-6)
    np.testing.assert_allclose(sparsity[:11], 0.1, rtol=1e-6)


def test_begin_equals_end_gives_final_sparsity():
    # tfmot divides by zero here and returns NaN at step == begin.
    schedule = PolynomialDecay(0.2, 0.8, begin_step=50, end_step=50, frequency=10)
    for step, prune, sparsity in [
        (49, False, 0.2),
        (50, True, 0.8),
        (51, False, 0.8),
        (60, False, 0.8),
    ]:
        should, value = schedule(step)
        assert bool(ops.convert_to_numpy(should)) is prune
        assert float(ops.convert_to_numpy(value)) == pytest.approx(sparsity, abs=1e-7)


def test_integral_float_steps_are_accepted():
    end_step = np.ceil(48000 / 250).astype(np.int32) * 30
    schedule = ConstantSparsity(0.875, begin_step=0.2 * end_step, end_step=end_step)
    assert schedule.begin_step == 1152 and isinstance(schedule.begin_step, int)
    assert schedule.end_step == 5760
    assert PolynomialDecay(0, 0.5, np.int64(3), np.float32(10.0), frequency=7).end_step == 10


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(target_sparsity=1.0, begin_step=0), ValueError, "target_sparsity.*\\[0, 1\\)"),
        (dict(target_sparsity=-0.1, begin_step=0), ValueError, "target_sparsity"),
        (dict(target_sparsity="0.5", begin_step=0), TypeError, "target_sparsity"),
        (dict(target_sparsity=0.5, begin_step=-1), ValueError, "begin_step.*>= 0"),
        (dict(target_sparsity=0.5, begin_step=10, end_step=5), ValueError, "end_step"),
        (dict(target_sparsity=0.5, begin_step=0, end_step=-2), ValueError, "end_step"),
        (dict(target_sparsity=0.5, begin_step=0, frequency=0), ValueError, "frequency.*>= 1"),
        (dict(target_sparsity=0.5, begin_step=0.5), ValueError, "begin_step.*whole number"),
        (dict(target_sparsity=0.5, begin_step=True), TypeError, "begin_step"),
        (dict(target_sparsity=0.5, begin_step=None), TypeError, "begin_step"),
    ],
)
def test_constant_sparsity_rejects(kwargs, error, match):
    with pytest.raises(error, match=match):
        ConstantSparsity(**kwargs)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(initial_sparsity=0.0, final_sparsity=1.0), ValueError, "final_sparsity"),
        (dict(initial_sparsity=1.5, final_sparsity=0.5), ValueError, "initial_sparsity"),
        (dict(end_step=-1), ValueError, "end_step.*>= begin_step"),
        (dict(begin_step=20, end_step=10), ValueError, "end_step"),
        (dict(power=0), ValueError, "power.*> 0"),
        (dict(frequency=-3), ValueError, "frequency"),
        (dict(end_step=100.5), ValueError, "end_step.*whole number"),
    ],
)
def test_polynomial_decay_rejects(kwargs, error, match):
    args = dict(initial_sparsity=0.0, final_sparsity=0.5, begin_step=0, end_step=100)
    with pytest.raises(error, match=match):
        PolynomialDecay(**{**args, **kwargs})


def test_step_range():
    schedule = ConstantSparsity(0.5, 0, frequency=1)
    with pytest.raises(ValueError, match="step"):
        schedule(INT32_MAX + 1)
    with pytest.raises(ValueError, match="step"):
        schedule(1.5)


def test_warns_when_last_pruning_step_misses_final_sparsity():
    with pytest.warns(UserWarning, match="last pruning step .* is step 200"):
        PolynomialDecay(0.0, 0.8, begin_step=0, end_step=250, frequency=100)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        PolynomialDecay(0.0, 0.8, begin_step=0, end_step=300, frequency=100)
        # The seed's settings miss end_step by 8 steps, about 5e-9 in sparsity.
        PolynomialDecay(0.0, 0.875, begin_step=1152, end_step=5760, frequency=100)


@pytest.mark.parametrize(
    "schedule",
    [ConstantSparsity(0.75, 3, 90, 7), PolynomialDecay(0.1, 0.9, 5, 105, power=2, frequency=4)],
)
def test_serialization_round_trip(schedule):
    config = schedule.get_config()
    assert type(schedule).from_config(config) == schedule
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(schedule))
    assert restored == schedule and restored is not schedule
    assert json.loads(json.dumps(config)) == config


def test_from_tfmot_config():
    tfmot_config = REFERENCE["get_config"]["PolynomialDecay"]
    schedule = PolynomialDecay.from_config(tfmot_config)
    assert schedule.get_config() == {k: tfmot_config["config"][k] for k in schedule.get_config()}


class EveryOtherStep(PruningSchedule):
    """A user schedule: 0.25 then 0.5 sparsity, pruning on every step."""

    def __call__(self, step):
        sparsity = ops.where(ops.greater_equal(step, 4), 0.5, 0.25)
        return self._should_prune_in_step(step, 0, -1, 1), sparsity

    def get_config(self):
        return {}


@pytest.mark.slow
def test_user_schedule_trains_like_builtins():
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16), keras.layers.Dense(1)])
    pruned = keras_prune.prune_low_magnitude(model, pruning_schedule=EveryOtherStep())
    pruned.compile("adam", "mse")
    x = np.random.RandomState(0).rand(64, 8).astype("float32")
    pruned.fit(x, x[:, :1], batch_size=16, epochs=1, verbose=0)  # steps 1..4
    report = keras_prune.sparsity_report(pruned)
    assert [row.sparsity for row in report] == [0.5, 0.5]
    pruned.fit(x[:16], x[:16, :1], batch_size=16, epochs=1, verbose=0)
    assert int(ops.convert_to_numpy(keras_prune.pruned_layers(pruned).__next__().pruning_step)) == 5

"""Tests for keras_prune.compare.experiment: the seed's step arithmetic, schedules by
name, and real tiny runs."""

from __future__ import annotations

import dataclasses
import json
import sys

import numpy as np
import pytest

from keras_prune.compare import experiment, stats
from keras_prune.compare.datasets import load_dataset
from keras_prune.compare.experiment import ExperimentConfig, RunResult
from keras_prune.schedules import ConstantSparsity, PolynomialDecay


def test_pruning_steps_are_the_seeds():
    config = ExperimentConfig()
    # Full MNIST: 48 000 training images after the split, 192 batches of 250.
    assert experiment.pruning_steps(60000, config) == (192, 1152, 5760)
    # The embedded 8 000: 6 400 after the split, 26 batches (the last of 150).
    assert experiment.pruning_steps(8000, config) == (26, 156, 780)
    short = ExperimentConfig(epochs=2, batch_size=50, begin_fraction=0.5)
    assert experiment.pruning_steps(300, short) == (5, 5, 10)
    # Ending at 80 % of training leaves the last 6 of 30 epochs to fine-tune.
    early = ExperimentConfig(end_fraction=0.8)
    assert experiment.pruning_steps(60000, early) == (192, 1152, 4608)


def test_builtin_schedules_are_the_seeds():
    constant = experiment.make_schedule("constant", 0.875, 156, 780, 100)
    assert constant == ConstantSparsity(0.875, 156, 780, 100)
    polynomial = experiment.make_schedule("polynomial", 0.875, 156, 780, 100)
    assert polynomial == PolynomialDecay(0.0, 0.875, 156, 780, power=3, frequency=100)


def test_schedule_by_import_path(tmp_path, monkeypatch):
    (tmp_path / "my_schedules.py").write_text(
        "import keras_prune\n"
        "class Halfway(keras_prune.ConstantSparsity):\n"
        "    def __init__(self, sparsity, begin_step, end_step, frequency):\n"
        "        super().__init__(sparsity / 2, begin_step, end_step, frequency)\n"
        "def not_a_schedule(**kwargs):\n"
        "    return 0.5\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    schedule = experiment.make_schedule("my_schedules:Halfway", 0.8, 10, 50, 5)
    assert schedule.get_config() == {
        "target_sparsity": 0.4,
        "begin_step": 10,
        "end_step": 50,
        "frequency": 5,
    }
    with pytest.raises(TypeError, match="returned a float, not a keras_prune.PruningSchedule"):
        experiment.make_schedule("my_schedules:not_a_schedule", 0.8, 10, 50, 5)
    with pytest.raises(ValueError, match="cannot import"):
        experiment.make_schedule("my_schedules:Missing", 0.8, 10, 50, 5)
    sys.modules.pop("my_schedules", None)


@pytest.mark.parametrize(
    "kwargs, error, words",
    [
        ({"schedules": ("cubic",)}, ValueError, "unknown schedule 'cubic'"),
        ({"schedules": ("no_such_module_xyz:f",)}, ValueError, "cannot import"),
        ({"schedules": ("constant", "constant")}, ValueError, "duplicates"),
        ({"sparsities": (1.0,)}, ValueError, r"sparsity.*\[0, 1\)"),
        ({"sparsities": (-0.1,)}, ValueError, r"\[0, 1\)"),
        ({"epochs": 0}, ValueError, "`epochs` must be >= 1"),
        ({"epochs": 2.5}, TypeError, "`epochs`"),
        ({"seeds": 0}, ValueError, "`seeds` must be >= 1"),
        ({"begin_fraction": 1.0}, ValueError, "`begin_fraction`"),
        ({"end_fraction": 0.0}, ValueError, "`end_fraction` must be > 0"),
        ({"end_fraction": 1.5}, ValueError, r"`end_fraction` must be in \(0, 1\]"),
        ({"end_fraction": True}, TypeError, "`end_fraction`"),
        ({"end_fraction": 0.2}, ValueError, "`begin_fraction` .0.2. must be below `end_fraction`"),
        ({"dataset": "cifar10"}, ValueError, "`dataset` must be one of"),
        ({"distributions": ("rigl",)}, ValueError, "`distributions` must be one of"),
        ({"distributions": ("erk", "erk")}, ValueError, "duplicates"),
        ({"distributions": ()}, TypeError, "`distributions` must be a non-empty"),
        ({"structures": ("filters",)}, ValueError, "`structures` must be one of 'weights'"),
        ({"structures": ("channels",), "distributions": ("erk",)}, ValueError, "Add 'weights'"),
        ({"tflite": "yes"}, TypeError, "`tflite` must be True, False or 'auto'; got 'yes'"),
        ({"tflite": 1}, TypeError, "`tflite` must be True, False or 'auto'"),
    ],
)
def test_config_rejects_bad_settings(kwargs, error, words):
    with pytest.raises(error, match=words):
        ExperimentConfig(**kwargs)


def _result(schedule, sparsity, seed, accuracy, h5_bytes, distribution="uniform"):
    return RunResult(
        schedule=schedule,
        sparsity=sparsity,
        distribution=distribution,
        seed=seed,
        test_accuracy=accuracy,
        test_loss=1 - accuracy,
        int8_test_accuracy=accuracy,
        layer_sparsity={"dense/kernel": sparsity},
        total_sparsity=sparsity,
        gzip_h5_bytes=h5_bytes,
        gzip_keras_bytes=h5_bytes,
        export_float32_bytes=h5_bytes // 2,
        export_int8_bytes=h5_bytes // 4,
        seconds_per_epoch=1.0,
        val_accuracy=[accuracy - 0.1, accuracy],
        warnings=[],
    )


def test_schedules_are_checked_before_training():
    # The seed's settings on the embedded digits: PolynomialDecay's last
    # pruning step, 756, falls 24 steps before end_step 780.
    (note,) = experiment.check_schedules(ExperimentConfig(), 8000)
    assert note == (
        "polynomial@0.875: the last pruning step, 756, prescribes 87.495%, not 87.50% "
        "(pruning steps 156..780 every 100); --frequency 78 ends exactly on it."
    )
    assert experiment.check_schedules(ExperimentConfig(frequency=78), 8000) == []
    # Ending at 80 % (step 624), the last pruning step is 556.
    (note,) = experiment.check_schedules(ExperimentConfig(end_fraction=0.8), 8000)
    assert note.startswith("polynomial@0.875: the last pruning step, 556, prescribes 87.2")
    assert note.endswith("(pruning steps 156..624 every 100); --frequency 78 ends exactly on it.")
    # One epoch: 26 steps from step 5; PolynomialDecay's one pruning step prescribes 0.
    with pytest.raises(ValueError) as error:
        experiment.check_schedules(ExperimentConfig(epochs=1), 8000)
    assert str(error.value) == (
        "schedule polynomial@0.875 never prunes in this run: 26 training steps, pruning from "
        "step 5 every 100, and its only pruning steps (5) prescribe 0 %; use --frequency 21 "
        "or --epochs 5."
    )
    for fix in (["--frequency", 21], ["--epochs", 5]):
        config = dataclasses.replace(ExperimentConfig(epochs=1), **{fix[0][2:]: fix[1]})
        points = experiment._schedule_points("polynomial", 0.875, config, 8000)[0]
        assert points[-1][1] >= 0.99 * 0.875


def test_summary_and_tests_of_recorded_runs():
    config = ExperimentConfig(seeds=3)
    comparison = experiment.Comparison(config, data={}, steps={}, schedule_points={})
    constant = [0.9886, 0.9890, 0.9879]
    polynomial = [0.9927, 0.9921, 0.9930]
    for seed in range(3):
        comparison.runs += [
            _result("baseline", 0.0, seed, 0.99, 1600000),
            _result("constant", 0.875, seed, constant[seed], 400000),
            _result("polynomial", 0.875, seed, polynomial[seed], 390000 + seed * 1000),
        ]
    assert [name for name, *_ in comparison.planned_runs()[:3]] == [
        "baseline",
        "constant",
        "polynomial",
    ]
    summary = {row["schedule"]: row for row in comparison.summary()}
    assert summary["constant"]["test_accuracy"] == pytest.approx(stats.mean_std(constant))
    assert summary["polynomial"]["gzip_h5_bytes"] == pytest.approx((391000.0, 1000.0))
    assert summary["constant"]["compression_ratio"] == pytest.approx(4.0)
    assert summary["baseline"]["compression_ratio"] == pytest.approx(1.0)
    assert summary["polynomial"]["val_accuracy"] == pytest.approx(
        [np.mean(polynomial) - 0.1, np.mean(polynomial)]
    )
    (test,) = comparison.tests()
    assert (test["first"], test["second"]) == ("constant", "polynomial")
    assert test["accuracy_difference"] == pytest.approx(np.mean(constant) - np.mean(polynomial))
    assert test["p_value"] == pytest.approx(stats.welch_t_test(constant, polynomial)[2])
    assert test["significant"] is True


def test_distributions_are_compared_run_by_run():
    config = ExperimentConfig(schedules=("polynomial",), distributions=("uniform", "erk"), seeds=2)
    comparison = experiment.Comparison(config, data={}, steps={}, schedule_points={})
    assert comparison.planned_runs()[:3] == [
        ("baseline", 0.0, 0, "uniform"),
        ("polynomial", 0.875, 0, "uniform"),
        ("polynomial", 0.875, 0, "erk"),
    ]
    uniform, erk = [0.95, 0.951], [0.97, 0.972]
    for seed in range(2):
        comparison.runs += [
            _result("baseline", 0.0, seed, 0.98, 1600000),
            _result("polynomial", 0.875, seed, uniform[seed], 400000),
            _result("polynomial", 0.875, seed, erk[seed], 400000, "erk"),
        ]
    rows = comparison.summary()
    assert [(r["schedule"], r["distribution"]) for r in rows] == [
        ("baseline", "uniform"),
        ("polynomial", "uniform"),
        ("polynomial", "erk"),
    ]
    assert rows[2]["test_accuracy"] == pytest.approx(stats.mean_std(erk))
    (test,) = comparison.tests()
    assert (test["first"], test["second"]) == ("polynomial/uniform", "polynomial/erk")
    assert test["p_value"] == pytest.approx(stats.welch_t_test(uniform, erk)[2])


def _without_distributions(old):
    del old["config"]["distributions"]
    for run in old["runs"]:
        del run["distribution"]


def _without_end_fraction(old):
    del old["config"]["end_fraction"]


@pytest.mark.parametrize(
    "old_format, strip, other, error",
    [
        (
            2,
            _without_distributions,
            ExperimentConfig(distributions=("erk",)),
            r"differs in distributions \['uniform'\] vs \['erk'\]",
        ),
        (
            5,
            _without_end_fraction,
            ExperimentConfig(end_fraction=0.8),
            "differs in end_fraction 1.0 vs 0.8",
        ),
    ],
    ids=["before distributions", "before end_fraction"],
)
def test_resume_reads_a_file_of_an_older_format(old_format, strip, other, error):
    data = {"train": 8, "validation": 2, "test": 10}
    earlier = experiment.Comparison(ExperimentConfig(), data=data, steps={}, schedule_points={})
    earlier.runs = [_result("baseline", 0.0, 0, 0.99, 1600000)]
    old = _saved(earlier)
    old["format"] = old_format
    strip(old)
    later = experiment.Comparison(ExperimentConfig(), data=data, steps={}, schedule_points={})
    later.resume(old)
    assert later.runs == earlier.runs  # what the older file lacks reads as its default then
    different = experiment.Comparison(other, data=data, steps={}, schedule_points={})
    with pytest.raises(ValueError, match=error):
        different.resume(old)


@pytest.fixture(scope="module")
def tiny_data():
    (x_train, y_train), (x_test, y_test) = load_dataset()
    return (x_train[:400], y_train[:400]), (x_test[:200], y_test[:200])


@pytest.mark.slow
def test_tiny_runs_reach_their_sparsity_and_shrink_the_model(tiny_data):
    config = ExperimentConfig(epochs=2, batch_size=32, frequency=1, verbose=0, tflite=True)
    # 320 training images: 10 steps per epoch, end_step 20, pruning from step 4.
    assert experiment.pruning_steps(400, config) == (10, 4, 20)
    dense = experiment.run_once(config, tiny_data, "baseline", 0.0, seed=0)
    pruned = experiment.run_once(config, tiny_data, "polynomial", 0.875, seed=0)

    assert dense.total_sparsity < 0.01
    assert set(pruned.layer_sparsity) == {
        "conv1/kernel",
        "conv2/kernel",
        "dense1/kernel",
        "dense2/kernel",
    }
    for name, sparsity in pruned.layer_sparsity.items():
        assert sparsity == pytest.approx(0.875, abs=0.005), name
    assert pruned.warnings == []
    # 20 Adam steps on 320 digits learn well above chance (0.1).
    assert dense.test_accuracy > 0.5 and pruned.test_accuracy > 0.3
    assert len(dense.val_accuracy) == 2 and all(0 <= v <= 1 for v in dense.val_accuracy)
    assert abs(pruned.int8_test_accuracy - pruned.test_accuracy) < 0.05
    assert pruned.gzip_h5_bytes < dense.gzip_h5_bytes / 3
    assert pruned.export_int8_bytes < pruned.export_float32_bytes < pruned.gzip_h5_bytes
    assert dense.seconds_per_epoch > 0
    # Sparse .tflite files: smaller than the dense model's, int8 smaller still, and the
    # int8 file, run by LiteRT, about as accurate as the Keras model.
    assert pruned.tflite_int8_bytes < pruned.tflite_float32_bytes < dense.tflite_float32_bytes / 3
    assert abs(pruned.tflite_int8_test_accuracy - pruned.test_accuracy) < 0.05


@pytest.mark.slow
def test_a_channel_run_shrinks_the_model_and_measures_its_speed(tiny_data):
    config = ExperimentConfig(
        epochs=2, batch_size=32, frequency=1, verbose=0, structures=("weights", "channels")
    )
    comparison = experiment.Comparison(config, data={}, steps={}, schedule_points={})
    assert [(s, d) for s, _, _, d in comparison.planned_runs()][:3] == [
        ("baseline", "uniform"),
        ("constant", "uniform"),
        ("constant", "channels"),
    ]
    dense = experiment.run_once(config, tiny_data, "baseline", 0.0, seed=0)
    small = experiment.run_once(
        config, tiny_data, "polynomial", 0.5, seed=0, distribution="channels"
    )
    # Half the filters of conv1 (32) and conv2 (64) and the units of dense1 (256) go:
    # conv2 keeps a quarter of its kernel, dense1 a quarter, dense2 half.
    kernels = {"conv1": 288, "conv2": 18432, "dense1": 409600, "dense2": 2560}
    kept = {"conv1": 144, "conv2": 4608, "dense1": 102400, "dense2": 1280}
    assert small.layer_sparsity == {f"{k}/kernel": 1 - kept[k] / n for k, n in kernels.items()}
    assert small.total_sparsity == pytest.approx(1 - sum(kept.values()) / sum(kernels.values()))
    biases = 16 + 32 + 128 + 10
    assert small.parameters == sum(kept.values()) + biases
    assert dense.parameters == sum(kernels.values()) + 32 + 64 + 256 + 10
    assert small.flops < dense.flops / 3 and small.predict_ms > 0 and dense.predict_ms > 0
    assert small.gzip_h5_bytes < dense.gzip_h5_bytes / 3
    assert small.test_accuracy > 0.3 and small.warnings == []


@pytest.mark.slow
def test_same_seed_same_initial_model_and_result(tiny_data):
    config = ExperimentConfig(epochs=1, batch_size=64, verbose=0)
    first = experiment.run_once(config, tiny_data, "baseline", 0.0, seed=3)
    again = experiment.run_once(config, tiny_data, "baseline", 0.0, seed=3)
    other = experiment.run_once(config, tiny_data, "baseline", 0.0, seed=4)
    assert again.test_accuracy == pytest.approx(first.test_accuracy, abs=1e-6)
    assert again.test_loss == pytest.approx(first.test_loss, rel=1e-5)
    assert other.test_loss != pytest.approx(first.test_loss, rel=1e-5)


@pytest.mark.slow
def test_a_schedule_that_ends_short_is_reported(tiny_data):
    config = ExperimentConfig(epochs=1, batch_size=64, frequency=100, verbose=0)
    # 5 steps, pruning from step 1 every 100: polynomial prunes once, at sparsity 0.
    with pytest.warns(UserWarning) as caught:
        result = experiment.run_once(config, tiny_data, "polynomial", 0.875, seed=0)
    assert result.total_sparsity < 0.01
    assert set(result.warnings) <= {str(w.message) for w in caught}
    assert any(m.startswith("PolynomialDecay: the last pruning step") for m in result.warnings)
    shortfalls = [m for m in result.warnings if "below the scheduled final sparsity" in m]
    assert len(shortfalls) == 4  # one per pruned kernel


def _saved(comparison):
    """`comparison` as read back from its results.json."""
    return json.loads(json.dumps(comparison.to_dict()))


def test_resume_keeps_the_finished_runs_of_the_same_settings():
    data = {"train": 8, "validation": 2, "test": 10}
    earlier = experiment.Comparison(
        ExperimentConfig(seeds=1), data=data, steps={}, schedule_points={}
    )
    earlier.runs = [
        _result("baseline", 0.0, 0, 0.99, 1600000),
        _result("constant", 0.875, 0, 0.98, 400000),
    ]
    later = experiment.Comparison(
        ExperimentConfig(seeds=3), data=data, steps={}, schedule_points={}
    )
    later.resume(_saved(earlier))
    assert later.runs == earlier.runs
    assert later.planned_runs()[len(later.runs)] == ("polynomial", 0.875, 0, "uniform")

    other = experiment.Comparison(
        ExperimentConfig(epochs=5), data=data, steps={}, schedule_points={}
    )
    with pytest.raises(ValueError, match="differs in epochs 30 vs 5"):
        other.resume(_saved(earlier))
    more_data = experiment.Comparison(
        ExperimentConfig(), data={**data, "train": 9}, steps={}, schedule_points={}
    )
    with pytest.raises(ValueError, match="differs in data"):
        more_data.resume(_saved(earlier))
    shuffled = _saved(earlier)
    shuffled["runs"].reverse()
    with pytest.raises(ValueError, match="not in this comparison's order"):
        later.resume(shuffled)
    with pytest.raises(ValueError, match="must be a comparison's results"):
        later.resume({"runs": []})


@pytest.mark.slow
def test_resumed_comparison_trains_only_the_missing_runs(tiny_data):
    config = ExperimentConfig(
        schedules=("polynomial",), epochs=1, batch_size=64, frequency=1, verbose=0
    )
    comparison, _ = experiment.prepare(dataclasses.replace(config, limit=400))
    earlier = _saved(comparison)
    earlier["runs"] = [dataclasses.asdict(_result("baseline", 0.0, 0, 0.5, 1600000))]
    comparison.resume(earlier)
    comparison.run(tiny_data)
    baseline, polynomial = comparison.runs
    assert baseline == _result("baseline", 0.0, 0, 0.5, 1600000)  # kept, not retrained
    assert (polynomial.schedule, polynomial.seed) == ("polynomial", 0)
    assert polynomial.total_sparsity > 0.5 and 0.0 < polynomial.test_accuracy <= 1.0


def test_auto_tflite_says_why_it_does_not_measure(monkeypatch):
    monkeypatch.setattr(experiment.runtimes, "missing", lambda suffix: "`ai_edge_litert`: pip x")
    config = ExperimentConfig(epochs=2, frequency=1, limit=40, verbose=0, tflite="auto")
    comparison, _ = experiment.prepare(config)
    assert comparison.config.tflite is False
    assert comparison.notes == ["no .tflite measures: they need `ai_edge_litert`: pip x"]
    with pytest.raises(ValueError, match="`tflite`: measuring .tflite files needs `ai_edge"):
        ExperimentConfig(tflite=True)

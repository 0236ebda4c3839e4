"""Tests for the keras-prune command line: a real end-to-end comparison on a
tiny slice of the embedded digits, and bad input giving one line and exit 2."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
from PIL import Image

from keras_prune.compare import cli

BACKEND = keras.backend.backend()
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(*args, backend=BACKEND, quiet_tensorflow=True):
    env = dict(os.environ, KERAS_BACKEND=backend, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="3")
    if not quiet_tensorflow:  # as a user runs it: the command itself must keep TF quiet
        del env["TF_CPP_MIN_LOG_LEVEL"]
    return subprocess.run(
        [sys.executable, "-m", "keras_prune", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )


# 250 images: 200 train (4 steps of 50), 50 validation, 250 test; pruning
# from step int(0.2 * 4) = 0 at every step up to 4, so both schedules reach
# their target.
TINY = ["--limit", "250", "--epochs", "1", "--batch-size", "50", "--frequency", "1"]
TINY += ["--sparsity", "0.5,0.875", "--no-tflite"]  # .tflite: test_experiment's tiny runs


@pytest.fixture(scope="module")
def tiny_comparison(tmp_path_factory):
    out = tmp_path_factory.mktemp("compare")
    done = _run("compare", *TINY, "--out", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    return done, out


@pytest.mark.slow
def test_compare_prints_the_table(tiny_comparison):
    done, _ = tiny_comparison
    out = done.stdout
    assert f"backend {BACKEND}" in out
    assert "mnist10k (200 train / 50 validation / 250 test images)" in out
    assert "1 epochs of 4 steps, batch 50, pruning steps 0..4 every 1" in out
    for line in (
        "[1/5] baseline seed 0",
        "[5/5] polynomial@0.875 seed 0: test accuracy",
        "all runs done",
    ):
        assert line in out
    header = next(
        line for line in out.splitlines() if "baseline" in line and "constant@0.5" in line
    )
    assert header.split() == [
        "baseline",
        "constant@0.5",
        "constant@0.875",
        "polynomial@0.5",
        "polynomial@0.875",
    ]
    total = next(line for line in out.splitlines() if line.startswith("sparsity total"))
    assert total.split()[2:] == ["0.00%", "50.00%", "87.50%", "50.00%", "87.50%"]
    for label in (
        "test accuracy",
        "zipped .h5",
        "zipped .keras",
        "export float32 .kps",
        "export int8 .kps",
        "int8 test accuracy",
        "compression vs dense .h5",
        "seconds per epoch",
        "sparsity dense1/kernel",
        "parameters",
        "FLOPs per sample",
        "predict ms (batch 50)",
    ):
        assert any(line.startswith(label) for line in out.splitlines()), label
    assert "constant - polynomial at sparsity 0.875: test accuracy difference" in out
    assert "no t-test (needs --seeds 2 or more" in out
    assert "The seed article's figures (full MNIST, tfmot, one run each)" in out
    assert "warning:" not in out


def test_compare_writes_json_csv_and_pngs(tiny_comparison):
    _, out = tiny_comparison
    results = json.loads((out / "results.json").read_text())
    assert results["environment"]["backend"] == BACKEND
    assert results["config"]["sparsities"] == [0.5, 0.875] and results["config"]["epochs"] == 1
    assert results["steps"] == {"per_epoch": 4, "begin_step": 0, "end_step": 4}
    runs = results["runs"]
    assert [(r["schedule"], r["sparsity"]) for r in runs] == [
        ("baseline", 0.0),
        ("constant", 0.5),
        ("constant", 0.875),
        ("polynomial", 0.5),
        ("polynomial", 0.875),
    ]
    for run in runs[1:]:
        for name, sparsity in run["layer_sparsity"].items():
            assert sparsity == pytest.approx(run["sparsity"], abs=0.01), (run["schedule"], name)
        assert run["gzip_h5_bytes"] < runs[0]["gzip_h5_bytes"]
        assert 0.0 <= run["test_accuracy"] <= 1.0 and len(run["val_accuracy"]) == 1
    # Constant prunes at every step to its target; polynomial ramps up to it at step 4.
    assert results["schedule_points"]["constant@0.875"] == [[s, 0.875] for s in range(1, 5)]
    polynomial = results["schedule_points"]["polynomial@0.875"]
    assert [s for s, _ in polynomial] == [1, 2, 3, 4] and polynomial[-1][1] == pytest.approx(0.875)
    assert polynomial[0][1] < polynomial[1][1] < polynomial[2][1] < 0.875
    baseline = next(row for row in results["summary"] if row["schedule"] == "baseline")
    assert baseline["compression_ratio"] == pytest.approx(1.0)

    with open(out / "results.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["schedule"] for row in rows] == [r["schedule"] for r in runs]
    assert float(rows[2]["sparsity:dense1/kernel"]) == pytest.approx(0.875, abs=0.01)
    assert int(rows[2]["export_int8_bytes"]) == runs[2]["export_int8_bytes"]

    for name in ("schedules.png", "val_accuracy.png", "accuracy_vs_sparsity.png"):
        path = out / name
        assert path.stat().st_size > 1000
        with Image.open(path) as image:
            image.verify()
        with Image.open(path) as image:
            assert image.format == "PNG" and image.size[0] > 100 and image.size[1] > 100


@pytest.mark.slow
def test_short_epochs_keep_three_significant_digits(tiny_comparison):
    _, out = tiny_comparison
    results = json.loads((out / "results.json").read_text())
    times = [[0.004123, 0.0], [1.2345, 0.0], [31.27, 0.0], [0.004, 0.0], [0.05, 0.0]]
    for row, pair in zip(results["summary"], times):
        row["seconds_per_epoch"] = pair
    line = next(
        line for line in cli.format_results(results).splitlines() if line.startswith("seconds")
    )
    assert line.split()[3:] == ["0.00412", "1.23", "31.3", "0.004", "0.05"]


@pytest.mark.slow
def test_resume_of_a_finished_comparison_trains_nothing(tiny_comparison, tmp_path):
    _, out = tiny_comparison
    (tmp_path / "results.json").write_text((out / "results.json").read_text())
    done = _run(
        "compare",
        *TINY,
        "--out",
        str(tmp_path),
        "--resume",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resuming" in done.stderr and "5 of 5 runs done" in done.stderr
    assert "[1/5]" not in done.stdout  # no run trained again
    runs = json.loads((tmp_path / "results.json").read_text())["runs"]
    assert runs == json.loads((out / "results.json").read_text())["runs"]
    other = _run(
        "compare",
        "--limit",
        "250",
        "--epochs",
        "2",
        "--frequency",
        "1",
        "--out",
        str(tmp_path),
        "--resume",
    )
    assert other.returncode == 2 and "cannot resume" in other.stderr


@pytest.mark.slow
def test_compare_distributions_end_to_end(tmp_path):
    args = ["--limit", "250", "--epochs", "1", "--batch-size", "50", "--frequency", "1"]
    args += ["--schedules", "constant", "--sparsity", "0.8,0.9", "--no-tflite", "--quiet"]
    done = _run(
        "compare",
        *args,
        "--distribution",
        "uniform,erk",
        "--out",
        str(tmp_path),
        quiet_tensorflow=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    for line in ("Compiled cluster using XLA", "cpu_feature_guard", "absl::InitializeLog"):
        assert line not in done.stderr  # TensorFlow's C++ log lines
    header = next(line for line in done.stdout.splitlines() if line.strip().startswith("baseline"))
    assert header.split() == [
        "baseline",
        "constant/uniform@0.8",
        "constant/uniform@0.9",
        "constant/erk@0.8",
        "constant/erk@0.9",
    ]
    total = next(line for line in done.stdout.splitlines() if line.startswith("sparsity total"))
    assert total.split()[2:] == ["0.00%", "80.00%", "90.00%", "80.00%", "90.00%"]
    # ERK keeps the first convolution (288 weights) dense at 80 % and 90 %.
    conv1 = next(line for line in done.stdout.splitlines() if line.startswith("sparsity conv1"))
    uniform = [f"{1 - round(288 * (1 - s)) / 288:.2%}" for s in (0.8, 0.9)]
    assert conv1.split()[2:] == ["0.00%", *uniform, "0.00%", "0.00%"]
    assert (
        "constant/uniform - constant/erk at sparsity 0.9: test accuracy difference" in done.stdout
    )
    results = json.loads((tmp_path / "results.json").read_text())
    assert [r["distribution"] for r in results["runs"]] == ["uniform"] * 3 + ["erk"] * 2
    with open(tmp_path / "results.csv", newline="") as handle:
        assert [row["distribution"] for row in csv.DictReader(handle)][-1] == "erk"
    with Image.open(tmp_path / "accuracy_vs_sparsity.png") as image:
        assert image.format == "PNG"


@pytest.mark.slow
def test_compare_channels_beside_weights_end_to_end(tmp_path):
    args = ["--limit", "250", "--epochs", "1", "--batch-size", "50", "--frequency", "1"]
    args += ["--schedules", "constant", "--sparsity", "0.5,0.75", "--no-tflite", "--quiet"]
    args += ["--end-fraction", "0.5"]
    done = _run("compare", *args, "--structure", "weights,channels", "--out", str(tmp_path))
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    header = next(line for line in lines if line.strip().startswith("baseline"))
    assert header.split() == [
        "baseline",
        "constant/uniform@0.5",
        "constant/uniform@0.75",
        "constant/channels@0.5",
        "constant/channels@0.75",
    ]
    parameters = next(line for line in lines if line.startswith("parameters")).split()[1:]
    # The seed CNN: 431,242 weights; half its channels: 108,618 (keras_prune.shrink's test).
    assert parameters[:3] == ["431", "k", "431"] and parameters[-4:-2] == ["109", "k"]
    assert any(line.startswith("FLOPs per sample") for line in lines)
    assert any(line.startswith("predict ms (batch 50)") for line in lines)
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["config"]["structures"] == ["weights", "channels"]
    # 200 images in batches of 50: pruning ends after 2 of the 4 steps and
    # the weight-pruned runs are at their sparsity.
    assert results["steps"] == {"per_epoch": 4, "begin_step": 0, "end_step": 2}
    reached = [r["total_sparsity"] for r in results["runs"] if r["distribution"] == "uniform"]
    assert reached[1:] == [pytest.approx(0.5, abs=0.01), pytest.approx(0.75, abs=0.01)]
    assert [r["distribution"] for r in results["runs"]][-2:] == ["channels", "channels"]
    with Image.open(tmp_path / "accuracy_vs_latency.png") as image:
        assert image.format == "PNG"


@pytest.mark.parametrize(
    "args, words",
    [
        (["compare", "--schedules", "cubic"], "unknown schedule 'cubic'"),
        (["compare", "--schedules", "constant,no_such_module_xyz:make"], "cannot import"),
        (["compare", "--sparsity", "1.0"], "outside [0, 1)"),
        (["compare", "--sparsity", "0.5,-0.2"], "outside [0, 1)"),
        (["compare", "--end-fraction", "0"], "--end-fraction: 0.0 is outside (0, 1]"),
        (["compare", "--begin-fraction", "0.5", "--end-fraction", "0.4"], "must be below"),
        (["compare", "--epochs", "0"], "--epochs: 0 must be >= 1"),
        (["compare", "--epochs", "-3"], "--epochs"),
        (["compare", "--seeds", "two"], "--seeds: 'two' is not a whole number"),
        (["compare", "--dataset", "cifar10"], "invalid choice: 'cifar10'"),
        (["compare", "--distribution", "uniform,rigl"], "unknown distribution 'rigl'"),
        (["compare", "--structure", "filters"], "unknown structure 'filters'"),
        (["compare", "--structure", "channels", "--distribution", "erk"], "Add 'weights'"),
        (["compare", "--backend", "theano"], "invalid choice: 'theano'"),
        (["compare", "--bogus"], "unrecognized arguments: --bogus"),
        ([], "the following arguments are required"),
        (["compare", "--resume"], "--resume needs --out DIR"),
        (["compare", "--data", "d.npz", "--dataset", "mnist"], "--data and --dataset are"),
        (["compare", "--loss", "mse"], "`loss`, `metrics` and `imports` apply to a `model` file"),
        (["compare", "--model", "model.h5"], "`model` must be the path of a .keras file"),
        (["compare", "--model", "no_such.keras"], "`model`: no file 'no_such.keras'"),
        (["compare", "--data", "no_such.npz"], "`data`: cannot read no_such.npz as .npz"),
    ],
)
def test_bad_input_is_one_line_and_status_2(args, words, capsys):
    assert cli.main(args) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1 and captured.err.startswith("keras-prune: error: ")
    assert words in captured.err


@pytest.fixture(scope="module")
def own_model_and_data(tmp_path_factory):
    """A regression model file compiled with MSE and MAE, and its data as .npz."""
    folder = tmp_path_factory.mktemp("own")
    rng = np.random.RandomState(0)
    x = rng.rand(300, 10).astype("float32")
    y = (x @ rng.randn(10, 1)).astype("float32")
    np.savez(folder / "d.npz", x_train=x[:200], y_train=y[:200], x_test=x[200:], y_test=y[200:])
    model = keras.Sequential(
        [keras.Input((10,)), keras.layers.Dense(32, activation="relu"), keras.layers.Dense(1)]
    )
    model.compile(optimizer="adam", loss="mse", metrics=["mae"])
    model.save(folder / "m.keras")
    return folder


@pytest.mark.slow
def test_compare_your_own_model_and_data(own_model_and_data, tmp_path):
    folder = own_model_and_data
    done = _run(
        "compare",
        "--model",
        str(folder / "m.keras"),
        "--data",
        str(folder / "d.npz"),
        "--epochs",
        "2",
        "--batch-size",
        "40",
        "--frequency",
        "1",
        "--seeds",
        "2",
        "--no-tflite",
        "--out",
        str(tmp_path),
        quiet_tensorflow=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    # 200 samples: 160 train (4 steps of 40) and 40 validation; 8 steps, pruning from step 1.
    assert f"m.keras on {folder / 'd.npz'} (160 train / 40 validation / 100 test samples)" in out
    assert "2 epochs of 4 steps, batch 40, pruning steps 1..8 every 1, seeds 0..1" in out
    assert "[6/6] polynomial seed 1: test mae " in out
    rows = {line.split("  ")[0]: line.split() for line in out.splitlines() if "  " in line}
    for row in ("test mae", "test loss", "int8 test mae", "sparsity total", "zipped .keras"):
        assert row in rows, row
    assert rows["sparsity total"][2:] == ["0.00%", "87.50%", "87.50%"]
    assert "constant - polynomial: test mae difference" in out and "Welch's t-test p =" in out
    assert "seed article" not in out
    # Nothing from TensorFlow's C++ side or absl reaches the user.
    assert "oneDNN" not in done.stderr and "absl" not in done.stderr, done.stderr
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["metric"] == "mae" and results["format"] == 6
    for run in results["runs"]:
        assert run["test_accuracy"] == run["test_metrics"]["mae"] > 0
    assert (tmp_path / "val_mae.png").stat().st_size > 1000
    assert not (tmp_path / "val_accuracy.png").exists()


def test_a_model_that_does_not_fit_the_data_fails_before_training(
    own_model_and_data, tmp_path, capsys
):
    rng = np.random.RandomState(0)
    images = rng.rand(20, 28, 28, 1).astype("float32")
    labels = np.arange(20) % 10
    np.savez(tmp_path / "i.npz", x_train=images, y_train=labels, x_test=images, y_test=labels)
    model = str(own_model_and_data / "m.keras")
    args = ["compare", "--model", model, "--data", str(tmp_path / "i.npz"), "--frequency", "1"]
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert err.startswith(
        "keras-prune: error: `data`: the samples of x_train have shape (28, 28, 1), but the "
        "model's input takes (10,)"
    )


@pytest.fixture(scope="module")
def looping_lstm(tmp_path_factory):
    """A model file LiteRT cannot run (an LSTM that loops keeps TensorFlow ops), and its data."""
    folder = tmp_path_factory.mktemp("lstm")
    rng = np.random.RandomState(0)
    x = rng.rand(60, 5, 2).astype("float32")
    y = (x.sum(axis=(1, 2)) > 5).astype("int64")
    np.savez(folder / "d.npz", x_train=x[:40], y_train=y[:40], x_test=x[40:], y_test=y[40:])
    model = keras.Sequential(
        [keras.Input((5, 2)), keras.layers.LSTM(4, name="lstm"), keras.layers.Dense(2)]
    )
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile(optimizer="adam", loss=loss, metrics=["accuracy"])
    model.save(folder / "m.keras")
    return [f"--model={folder / 'm.keras'}", f"--data={folder / 'd.npz'}"]


@pytest.mark.slow
def test_a_model_litert_cannot_run_fails_before_training_when_tflite_is_asked(looping_lstm, capsys):
    pytest.importorskip("ai_edge_litert")
    pytest.importorskip("tensorflow")
    assert cli.main(["compare", *looping_lstm, "--frequency", "1", "--tflite"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1, captured.err
    assert captured.err.startswith(
        "keras-prune: error: the model does not export to .tflite: the written .tflite file "
        "does not run in ai-edge-litert (layers named in the error: lstm)"
    )
    assert captured.err.endswith("; pass --no-tflite to compare without .tflite measures\n")


def test_a_model_without_channels_to_remove_fails_before_training(looping_lstm, capsys):
    args = ["compare", *looping_lstm, "--frequency", "1", "--structure", "channels"]
    assert cli.main([*args, "--no-tflite"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1, captured.err
    assert captured.err.startswith(
        "keras-prune: error: the model cannot be pruned (--structure channels): `to_prune` has "
        "no channel group that prune_channels can remove: "
    )
    assert "`lstm` (LSTM) is recurrent" in captured.err


@pytest.mark.slow
def test_a_model_litert_cannot_run_is_compared_without_tflite_by_default(looping_lstm):
    pytest.importorskip("ai_edge_litert")
    pytest.importorskip("tensorflow")
    args = ["compare", *looping_lstm, "--epochs", "1", "--batch-size", "8", "--frequency", "1"]
    args += ["--schedules", "constant", "--sparsity", "0.5", "--quiet"]
    done = _run(*args, quiet_tensorflow=False)
    assert done.returncode == 0, done.stderr[-3000:]
    notes = [line for line in done.stderr.splitlines() if line.startswith("keras-prune: ")]
    assert notes[0].startswith(
        "keras-prune: warning: no .tflite measures: the model does not export to"
    )
    # Nothing from TensorFlow's or LiteRT's C++ side reaches the user.
    assert "INFO: Created TensorFlow Lite" not in done.stderr and "oneDNN" not in done.stderr
    rows = {line.split("  ")[0]: line.split() for line in done.stdout.splitlines() if "  " in line}
    assert rows["sparse float32 .tflite"][-2:] == ["-", "-"]  # dense and pruned: not measured
    assert rows["sparsity total"][-1] == "50.00%"


def test_cli_distribution_names_are_the_librarys():
    from keras_prune.sparsity_distribution import NAMES

    assert cli.DISTRIBUTIONS == NAMES


def test_a_schedule_that_never_prunes_fails_before_training(capsys):
    assert cli.main(["compare", "--epochs", "1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("keras-prune: error: schedule polynomial@0.875 never prunes")
    assert err.endswith("use --frequency 21 or --epochs 5.\n")


def test_missing_matplotlib_fails_before_training(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` fails
    assert cli.main(["compare", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "matplotlib" in err
    assert "pip install 'keras-prune[compare]'" in err
    assert not (tmp_path / "results.json").exists()


def test_unwritable_out_is_one_line_and_status_2(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    assert cli.main(["compare", "--out", str(blocker / "results")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is not writable" in err


def test_missing_dataset_says_where_to_get_it(tmp_path, capsys):
    assert cli.main(["compare", "--dataset", "mnist", "--data-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("keras-prune: error: mnist: ")
    assert "--data-dir DIR" in err and "Traceback" not in err


@pytest.mark.slow
def test_bad_input_through_python_m_and_another_backend():
    other = "jax" if BACKEND != "jax" else "tensorflow"
    # The child reads --backend before it imports Keras: no second process.
    done = _run("compare", "--backend", other, "--schedules", "cubic")
    assert done.returncode == 2
    assert (
        done.stderr.strip()
        .splitlines()[-1]
        .startswith("keras-prune: error: unknown schedule 'cubic'")
    )
    assert done.stdout == ""


def test_another_backend_in_a_process_that_imported_keras_is_one_line(capsys):
    other = "jax" if BACKEND != "jax" else "tensorflow"
    assert cli.main(["compare", "--backend", other]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert f"Keras is already imported with the {BACKEND} backend" in err
    assert f"keras-prune compare --backend {other}` in a new process" in err

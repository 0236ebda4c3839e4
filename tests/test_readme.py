"""The README's Python examples run as written (on small data) and print what it says."""

import pathlib
import re

import keras
import numpy as np
import pytest

import keras_prune
from keras_prune.compare import datasets
from keras_prune.compare.task import seed_model

pytestmark = pytest.mark.slow  # trains models or starts Python processes

README = (pathlib.Path(__file__).parents[1] / "README.md").read_text()
BLOCKS = re.findall(r"```python\n(.*?)```", README, flags=re.S)


def block(containing):
    (found,) = [b for b in BLOCKS if containing in b]
    return found


def replace(code, old, new):
    assert old in code, f"the README example no longer contains {old!r}"
    return code.replace(old, new)


def test_quickstart_prunes_the_seed_cnn_to_the_target(monkeypatch, tmp_path):
    (x_train, y_train), (x_test, y_test) = datasets.load_dataset()
    monkeypatch.setattr(
        datasets,
        "load_dataset",
        lambda: ((x_train[:1000], y_train[:1000]), (x_test[:200], y_test[:200])),
    )
    monkeypatch.chdir(tmp_path)
    code = block("load_dataset()")
    # 4 steps per epoch: pruning from step 4 to 20, every 2 steps.
    code = replace(code, "250, 10, 0.2", "250, 5, 0.2")
    code = replace(
        code, "validation_split=validation_split,", "validation_split=validation_split, verbose=0,"
    )
    namespace = {}
    exec(compile(code, "README.md", "exec"), namespace)
    report = keras_prune.sparsity_report(namespace["final"])
    assert [row.sparsity for row in report] == [0.875] * 4
    x = x_test[:16]
    np.testing.assert_allclose(
        keras.saving.load_model("pruned.keras").predict(x, verbose=0),
        namespace["final"].predict(x, verbose=0),
        rtol=1e-6,
        atol=1e-6,
    )
    assert (tmp_path / "pruned.kps").stat().st_size < 120_000
    assert 150_000 < (tmp_path / "pruned.tflite").stat().st_size < 190_000  # "~174 KB"
    assert list((tmp_path / "logs").rglob("events.out.tfevents.*"))


def test_saving_and_resuming_example_prints_the_readme_table(tmp_path, capsys):
    code = replace(block("sparsity.save_model"), "/tmp/", f"{tmp_path}/")
    exec(compile(code, "README.md", "exec"), {})
    printed = capsys.readouterr().out.strip()
    table = re.search(r"```\n(layer +weight.*?total +[\d.]+%)\n```", README, flags=re.S).group(1)
    assert printed == table


def test_kerashub_example_prints_the_readme_table(capsys):
    pytest.importorskip("keras_hub", reason="tools/setup installs keras-hub")
    with pytest.warns(UserWarning, match="'position_embedding' \\(PositionEmbedding\\)"):
        exec(compile(block("keras_hub.models.BertBackbone"), "README.md", "exec"), {})
    printed = capsys.readouterr().out.strip()
    start = README.index("```\nlayer", README.index("keras_hub.models.BertBackbone"))
    table = README[start + 4 : README.index("\n```", start + 4)]
    assert printed == table


def test_shrink_example_halves_the_channels_and_fine_tunes(monkeypatch, tmp_path):
    (x_train, y_train), (x_test, y_test) = datasets.load_dataset()
    monkeypatch.chdir(tmp_path)
    model = seed_model()  # the quickstart's CNN
    code = replace(block("keras_prune.shrink(dense"), "epochs=10", "epochs=3")
    names = {
        "keras": keras,
        "keras_prune": keras_prune,
        "model": model,
        "x_train": x_train[:4000],
        "y_train": y_train[:4000],
        "x_test": x_test[:500],
        "y_test": y_test[:500],
    }
    exec(compile(code, "README.md", "exec"), names)
    small = names["small"]
    assert small.count_params() == 108_618  # the figure the README prints
    loss, accuracy = small.evaluate(x_test[:500], y_test[:500], verbose=0)
    assert accuracy > 0.85
    loaded = keras.saving.load_model(tmp_path / "small.keras")
    assert [w.shape for w in loaded.weights] == [w.shape for w in small.weights]

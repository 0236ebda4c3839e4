"""The seed article's example, migrated by changing imports only, on small data:
written for keras_prune, and as tfmot code through `keras_prune.tfmot`."""

import pathlib
import runpy

import keras
import numpy as np
import pytest

import keras_prune
from keras_prune.compare import datasets

pytestmark = pytest.mark.slow  # trains models or starts Python processes

EXAMPLE = pathlib.Path(__file__).parents[1] / "examples" / "seed_constant_sparsity.py"


def run_listing(path, monkeypatch, capsys):
    """Runs the listing at `path` on 500 embedded digits; checks what it prints and saves."""
    (x_train, y_train), (x_test, y_test) = datasets.load_dataset()
    small = lambda x: (np.rint(x[..., 0] * 255)).astype("uint8")  # noqa: E731
    # 500 images: 2 batches per epoch, 30 epochs, pruning at step 12 (0.2 * 60).
    monkeypatch.setattr(
        keras.datasets.mnist,
        "load_data",
        lambda: ((small(x_train[:500]), y_train[:500]), (small(x_test[:200]), y_test[:200])),
    )
    fitted = []
    original_fit = keras.Model.fit
    monkeypatch.setattr(
        keras.Model,
        "fit",
        lambda self, *a, **k: fitted.append(self) or original_fit(self, *a, **{**k, "verbose": 0}),
    )
    runpy.run_path(str(path), run_name="__main__")
    out = capsys.readouterr().out
    assert "Pruned CNN - Test loss:" in out and "Size of gzipped pruned Keras model:" in out
    accuracy = float(out.split("Test accuracy: ")[1].split()[0])
    assert accuracy > 0.5, out
    report = keras_prune.sparsity_report(fitted[0])
    assert [row.sparsity for row in report] == [0.875] * 4
    saved = out.split("Pruned model saved: ")[1].split()[0]
    stripped = keras.saving.load_model(saved)
    assert [row.sparsity for row in keras_prune.sparsity_report(stripped)] == [0.875] * 4


def test_seed_example_prunes_to_exact_target(monkeypatch, capsys):
    run_listing(EXAMPLE, monkeypatch, capsys)


def test_tfmot_code_runs_with_its_import_line_changed(monkeypatch, capsys, tmp_path):
    # The listing as tfmot code: `tfmot.sparsity.keras.` where the example
    # says `keras_prune.`, and tfmot's import line changed to keras_prune.tfmot.
    tfmot_code = (
        EXAMPLE.read_text()
        .replace("keras_prune.", "tfmot.sparsity.keras.")
        .replace("import keras_prune\n", "import keras_prune.tfmot as tfmot\n")
    )
    code = [line for line in tfmot_code.splitlines() if not line.startswith("#")]
    assert [line for line in code if "keras_prune" in line] == ["import keras_prune.tfmot as tfmot"]
    assert sum("tfmot.sparsity.keras." in line for line in code) == 4
    listing = tmp_path / "seed_tfmot.py"
    listing.write_text(tfmot_code)
    run_listing(listing, monkeypatch, capsys)

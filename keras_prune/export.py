"""Export: measuring and writing the files a pruned model is shipped as."""

from __future__ import annotations

import os
import tempfile
import zipfile

import keras

_FORMATS = ("h5", "keras")


def gzipped_model_size(model: keras.Model, file_format: str = "h5") -> int:
    """Bytes of the saved `model` compressed with zip/deflate, as in tfmot's guide.

    The model is saved without optimizer to a temporary `.h5` (the seed's
    measure) or `.keras` file, which is then zipped with ZIP_DEFLATED. Strip
    a pruned model first (`strip_pruning`) to measure what you would ship.

    Example:

    >>> keras_prune.gzipped_model_size(keras_prune.strip_pruning(pruned))
    """
    if not isinstance(model, keras.Model):
        raise TypeError(f"`model` must be a keras.Model; got {type(model).__name__}.")
    if file_format not in _FORMATS:
        raise ValueError(f"`file_format` must be one of {_FORMATS}; got {file_format!r}.")
    with tempfile.TemporaryDirectory() as tmp:
        saved = os.path.join(tmp, f"model.{file_format}")
        if file_format == "h5":
            keras.saving.save_model(model, saved, include_optimizer=False)
        else:
            model.save(saved)
        zipped = os.path.join(tmp, "model.zip")
        with zipfile.ZipFile(zipped, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            archive.write(saved, arcname=os.path.basename(saved))
        return os.path.getsize(zipped)

"""Saving and loading pruned models: atomic writes and clear errors.

`keras.saving.load_model` loads pruned models without `custom_objects` once
keras_prune is imported (the wrapper and schedules are registered Keras
serializables). These helpers add what Keras leaves out: a save that never
leaves a half-written file, and a load that says what is wrong with a file
instead of failing deep inside Keras.
"""

from __future__ import annotations

import os
import zipfile
from typing import Any

import keras

from keras_prune import _files
from keras_prune.schedules import ConstantSparsity, PolynomialDecay
from keras_prune.wrapper import PruneLowMagnitude


def save_model(model: keras.Model, filepath: str | os.PathLike, **kwargs: Any) -> None:
    """Saves `model` to a `.keras` file atomically (temporary name, then rename).

    A crash or a full disk during the save leaves any previous file at
    `filepath` intact. `kwargs` go to `model.save`.

    Example:

    >>> keras_prune.save_model(pruned, "pruned.keras")
    """
    if not isinstance(model, keras.Model):
        raise TypeError(f"`model` must be a keras.Model; got {type(model).__name__}.")
    path = os.fspath(filepath)
    if not isinstance(path, str) or not path.endswith(".keras"):
        raise ValueError(f"`filepath` must end in '.keras'; got {filepath!r}.")
    with _files.atomic_path(path, suffix=".keras") as temporary:
        model.save(temporary, **kwargs)


def prune_scope() -> keras.saving.CustomObjectScope:
    """tfmot's `prune_scope()`: a scope in which pruned models deserialize.

    keras_prune's classes are registered Keras serializables, so
    `keras.saving.load_model` needs no scope; this exists so that tfmot code
    runs unchanged. Inside it the bare class names (`"PruneLowMagnitude"`,
    `"ConstantSparsity"`, `"PolynomialDecay"`) resolve too, as in tfmot.

    Example:

    >>> with keras_prune.prune_scope():
    ...     model = keras.saving.load_model("pruned.keras")
    """
    return keras.saving.CustomObjectScope(
        {cls.__name__: cls for cls in (PruneLowMagnitude, ConstantSparsity, PolynomialDecay)}
    )


def load_model(filepath: str | os.PathLike, **kwargs: Any) -> keras.Model:
    """Loads a `.keras` model, pruned or not, checking the file first.

    A model without pruning wrappers (e.g. a stripped one) loads as the plain
    Keras model it is. `kwargs` go to `keras.saving.load_model`.

    Raises:
        FileNotFoundError: if `filepath` does not exist.
        ValueError: if the file is not a `.keras` archive, or is truncated
            or corrupt.

    Example:

    >>> model = keras_prune.load_model("pruned.keras")
    """
    path = os.fspath(filepath)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"`filepath` {path!r} does not exist.")
    problem = _archive_problem(path)
    if problem:
        raise ValueError(f"`filepath` {path!r} is not a loadable .keras model: {problem}.")
    return keras.saving.load_model(path, **kwargs)


def _archive_problem(path: str) -> str | None:
    if not zipfile.is_zipfile(path):
        return "it is not a zip archive (a .keras file is one); truncated, or another format"
    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
            if "config.json" not in names:
                return "it has no config.json, so it is not a Keras 3 .keras archive"
            broken = archive.testzip()
            if broken is not None:
                return f"member {broken!r} is corrupt (CRC mismatch)"
    except (zipfile.BadZipFile, OSError, EOFError) as error:
        return f"the archive is damaged ({error})"
    return None

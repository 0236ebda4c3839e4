"""The `.kps` file: a pruned model in keras_prune's own compact sparse format.

`export(model, path)` writes a stripped pruned model to a compact sparse file
and `load(path)` rebuilds it as a plain Keras model, without keras_prune's
layers. The file format, version 2 (all integers little-endian):

    offset  size  field
    0       8     magic b"\\x89KPS\\r\\n\\x1a\\n"
    8       2     format version, uint16 (2; version 1 files, without
                  "assets", are read too)
    10      8     payload length in bytes, uint64
    18      32    SHA-256 of the payload
    50      ...   payload: one zstd frame

The decompressed payload is a uint32 manifest length, the manifest (UTF-8
JSON: "model", the Keras config of `model.to_json()`; "weights", one entry
per `model.weights` with path, dtype, shape, position code, value code and
section lengths; "assets", only where a layer keeps state outside its
weights and config (an adapted lookup layer's vocabulary): per such layer
its index among the model's layers at any depth, its name, and the files
its `save_assets` writes, base64), then for each weight in order its sections:

* positions: "dense" (none, every entry is stored), "bitmask" (one bit per
  entry in C order, `numpy.packbits(..., bitorder="little")`) or "gaps"
  (per kept entry the number of zeros before it since the previous kept
  entry, unsigned LEB128). The writer keeps the smallest after zstd.
* values: the kept entries in C order as byte planes, byte 0 of every
  little-endian value, then byte 1, ... ("raw"), or int8 ("int8").
* scales ("int8" only): float32 per slice along the last axis (the output
  channel of Dense and Conv kernels); a weight is `int8 * scale`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import os
import struct
from typing import Any

import keras
import numpy as np
import zstandard

from keras_prune import _files, _keras
from keras_prune._layer_copy import asset_files, load_asset_files
from keras_prune.prune import pruned_layers, strip_pruning

MAGIC = b"\x89KPS\r\n\x1a\n"
FORMAT_VERSION = 2
_READABLE = (1, 2)  # 1: before "assets"
_HEADER = struct.Struct("<8sHQ32s")
_MANIFEST_LENGTH = struct.Struct("<I")
_LEVEL = 19  # zstd level of the payload; 20-22 gain nothing measurable here.
_QUANTIZE = (None, "int8")
_INT8_MAX = 127


def export(model: keras.Model, path: str | os.PathLike, quantize: str | None = None) -> int:
    """Writes `model`, stripped of pruning wrappers, to a compact sparse file.

    Zero weights cost about H(sparsity) bits each (their positions,
    entropy-coded), kept weights their value bits: at 87.5 % sparsity about
    0.54 bits per weight plus 32 per kept float32 value. `load(path)` rebuilds
    a plain Keras model that predicts exactly what the stripped model
    predicts. With `quantize="int8"` the kernels (weights of 2 or more
    dimensions) are quantized symmetrically per output channel (last axis)
    on their kept entries, so zeros stay exact zeros and `load` returns the
    dequantized float model; biases and other 1-D weights stay lossless.
    The file is written to a temporary name and renamed, so `path` never
    holds a partial file.

    Args:
        model: a built Sequential or Functional model, pruned or not.
        path: the file to write (by convention `.kps`).
        quantize: None (lossless) or "int8".

    Returns:
        The number of bytes written.

    Example:

    >>> keras_prune.export(pruned, "model.kps", quantize="int8")
    >>> model = keras_prune.load("model.kps")
    """
    if not isinstance(model, keras.Model):
        raise TypeError(f"`model` must be a keras.Model; got {type(model).__name__}.")
    if quantize not in _QUANTIZE:
        raise ValueError(f"`quantize` must be one of {_QUANTIZE}; got {quantize!r}.")
    path = _check_path(path)
    if os.path.isdir(path):
        raise ValueError(f"`path` must be a file name; {path!r} is a directory.")
    if not model.built:
        raise ValueError("`model` must be built (call it on data or give it an Input) to export.")
    if any(True for _ in pruned_layers(model)):
        model = strip_pruning(model)
    try:
        config = json.loads(model.to_json())
    except NotImplementedError as error:
        raise ValueError(
            f"`model` ({type(model).__name__}) has no Keras config to rebuild it from; "
            "implement get_config or export a Sequential/Functional model."
        ) from error

    entries, sections = [], []
    for variable, weight in zip(model.weights, model.get_weights()):
        entry, parts = _encode_weight(weight, quantize)
        entries.append({"path": variable.path, **entry})
        sections.extend(parts)
    contents = {"keras_version": keras.__version__, "model": config, "weights": entries}
    assets = _saved_assets(model)
    if assets:
        contents["assets"] = assets
    manifest = json.dumps(contents, separators=(",", ":")).encode("utf-8")
    raw = b"".join([_MANIFEST_LENGTH.pack(len(manifest)), manifest, *sections])
    payload = zstandard.ZstdCompressor(level=_LEVEL).compress(raw)
    header = _HEADER.pack(MAGIC, FORMAT_VERSION, len(payload), hashlib.sha256(payload).digest())
    _files.write_bytes(path, header + payload)
    return len(header) + len(payload)


def load(path: str | os.PathLike, custom_objects: dict[str, Any] | None = None) -> keras.Model:
    """Rebuilds the plain Keras model written by `export`.

    The model is rebuilt from its Keras config (pass `custom_objects` for
    your own layers, as to `keras.saving.load_model`) and gets the exported
    weights; it is not compiled unless the exported model was. A file that
    is truncated, corrupted (SHA-256 mismatch), not an export, or of another
    format version raises ValueError; nothing is loaded from it.

    Example:

    >>> model = keras_prune.load("model.kps")
    >>> model.predict(x)
    """
    path = _check_path(path)
    if custom_objects is not None and not isinstance(custom_objects, dict):
        raise TypeError(
            f"`custom_objects` must be a dict or None; got {type(custom_objects).__name__}."
        )
    with open(path, "rb") as handle:
        data = handle.read()
    manifest, sections = _read_payload(data, path)
    try:
        model = keras.models.model_from_json(
            json.dumps(manifest["model"]), custom_objects=custom_objects
        )
    except (TypeError, ValueError, KeyError) as error:
        raise ValueError(f"{path!r}: cannot rebuild the model from its config: {error}") from error
    entries = manifest["weights"]
    if len(entries) != len(model.weights):
        raise ValueError(
            f"{path!r} holds {len(entries)} weights but the rebuilt model has "
            f"{len(model.weights)}; was it written by a different model class?"
        )
    weights, offset = [], 0
    for entry, variable in zip(entries, model.weights):
        if tuple(entry["shape"]) != tuple(variable.shape):
            raise ValueError(
                f"{path!r}: weight {entry['path']!r} has shape {tuple(entry['shape'])} "
                f"but the rebuilt model expects {tuple(variable.shape)}."
            )
        weight, offset = _decode_weight(entry, sections, offset, path)
        weights.append(weight)
    if offset != len(sections):
        raise ValueError(f"{path!r}: {len(sections) - offset} bytes after the last weight.")
    model.set_weights(weights)
    _load_assets(model, manifest.get("assets", []), path)
    return model


def _saved_assets(model: keras.Model) -> list[dict[str, Any]]:
    """The files each layer's `save_assets` writes, as the manifest's "assets"."""
    assets = []
    for index, layer in enumerate(_keras.flatten_layers(model)):
        files = asset_files(layer)
        if files:
            encoded = {name: base64.b64encode(data).decode("ascii") for name, data in files.items()}
            assets.append({"index": index, "name": layer.name, "files": encoded})
    return assets


def _load_assets(model: keras.Model, assets: Any, path: str) -> None:
    """Gives the rebuilt `model`'s layers the files of the manifest's "assets"."""
    layers = _keras.flatten_layers(model)
    for asset in assets:
        try:
            layer = layers[asset["index"]]
            if layer.name != asset["name"] or not hasattr(layer, "load_assets"):
                raise ValueError(f"layer {asset['index']} is {layer.name!r}")
            files = {
                name: base64.b64decode(text, validate=True) for name, text in asset["files"].items()
            }
        except (KeyError, IndexError, TypeError, ValueError, binascii.Error) as error:
            raise ValueError(f"{path!r} has a malformed assets entry: {error}") from error
        try:
            load_asset_files(layer, files)
        except ValueError as error:
            raise ValueError(f"{path!r} has a malformed assets entry: {error}") from error


def _check_path(path: Any) -> str:
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"`path` must be a str or os.PathLike; got {type(path).__name__}.")
    return os.fspath(path)


def _hint(path: str) -> str:
    """What reads the file `path` if its suffix names another format, for the error."""
    suffix = os.path.splitext(path)[1].lower()
    if suffix in (".tflite", ".onnx"):
        return f" A {suffix} file runs in its own runtime: keras_prune.runtimes.run(path, inputs)."
    if suffix in (".keras", ".h5"):
        return f" Load a {suffix} file with keras.saving.load_model(path)."
    return ""


def _read_payload(data: bytes, path: str) -> tuple[dict[str, Any], memoryview]:
    if len(data) < len(MAGIC) or data[: len(MAGIC)] != MAGIC:
        raise ValueError(f"{path!r} is not a keras_prune export (wrong magic bytes).{_hint(path)}")
    if len(data) < _HEADER.size:
        raise ValueError(f"{path!r} is truncated: {len(data)} bytes, shorter than the header.")
    _, version, length, digest = _HEADER.unpack_from(data)
    if version not in _READABLE:
        raise ValueError(
            f"{path!r} has format version {version}; this keras_prune reads versions "
            f"{', '.join(map(str, _READABLE))}. Upgrade keras_prune or re-export the model."
        )
    payload = data[_HEADER.size :]
    if len(payload) != length:
        raise ValueError(
            f"{path!r} is truncated or has trailing bytes: the header announces a "
            f"{length}-byte payload, the file holds {len(payload)}."
        )
    if hashlib.sha256(payload).digest() != digest:
        raise ValueError(f"{path!r} is corrupted: the payload's SHA-256 does not match.")
    try:
        raw = zstandard.ZstdDecompressor().decompress(payload)
        (size,) = _MANIFEST_LENGTH.unpack_from(raw)
        manifest = json.loads(raw[_MANIFEST_LENGTH.size : _MANIFEST_LENGTH.size + size])
    except (zstandard.ZstdError, struct.error, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path!r} has a malformed payload: {error}") from error
    return manifest, memoryview(raw)[_MANIFEST_LENGTH.size + size :]


def _encode_weight(weight: np.ndarray, quantize: str | None) -> tuple[dict[str, Any], list[bytes]]:
    """Returns the manifest entry and the sections of one weight."""
    entry: dict[str, Any] = {"dtype": weight.dtype.str, "shape": list(weight.shape)}
    scales = b""
    values = weight
    if quantize == "int8" and weight.ndim >= 2 and np.issubdtype(weight.dtype, np.floating):
        values, channel_scales = _quantize_int8(weight)
        scales = channel_scales.astype("<f4").tobytes()
        entry["values"] = "int8"
    else:
        entry["values"] = "raw"
    mask = values != 0
    kept = values[mask]
    candidates = {"dense": (b"", _byte_planes(values.ravel()))}
    if not mask.all():
        planes = _byte_planes(kept)
        candidates["bitmask"] = (np.packbits(mask.ravel(), bitorder="little").tobytes(), planes)
        candidates["gaps"] = (_varint_encode(_gaps(mask.ravel())), planes)
    compressor = zstandard.ZstdCompressor(level=3)
    code = min(candidates, key=lambda c: len(compressor.compress(b"".join(candidates[c]))))
    positions, stored = candidates[code]
    entry.update(positions=code, kept=int(kept.size if code != "dense" else values.size))
    entry["sections"] = [len(positions), len(stored), len(scales)]
    return entry, [positions, stored, scales]


def _decode_weight(
    entry: dict[str, Any], sections: memoryview, offset: int, path: str
) -> tuple[np.ndarray, int]:
    """Returns one weight and the offset of the next one's sections."""
    try:
        dtype, shape = np.dtype(entry["dtype"]), tuple(entry["shape"])
        code, value_code, kept = entry["positions"], entry["values"], int(entry["kept"])
        lengths = [int(n) for n in entry["sections"]]
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(f"{path!r} has a malformed weight entry {entry!r}.") from error
    if offset + sum(lengths) > len(sections):
        raise ValueError(f"{path!r}: weight {entry.get('path')!r} runs past the payload.")
    parts, start = [], offset
    for length in lengths:
        parts.append(bytes(sections[start : start + length]))
        start += length
    positions, stored, scales = parts
    size = math.prod(shape)
    value_dtype = np.dtype("i1") if value_code == "int8" else dtype
    values = _from_byte_planes(stored, value_dtype, kept, entry, path)
    if code == "dense":
        flat = values
    elif code in ("bitmask", "gaps"):
        if code == "bitmask":
            mask = np.unpackbits(
                np.frombuffer(positions, np.uint8), count=size, bitorder="little"
            ).astype(bool)
            where = np.flatnonzero(mask)
        else:
            where = np.cumsum(_varint_decode(positions, path) + 1) - 1
        if where.size != kept or (where.size and where[-1] >= size):
            raise ValueError(f"{path!r}: positions of {entry.get('path')!r} do not match.")
        flat = np.zeros(size, value_dtype)
        flat[where] = values
    else:
        raise ValueError(f"{path!r}: unknown position code {code!r}.")
    if flat.size != size:
        raise ValueError(f"{path!r}: {entry.get('path')!r} holds {flat.size} of {size} values.")
    weight = flat.reshape(shape)
    if value_code == "int8":
        channel_scales = np.frombuffer(scales, "<f4")
        if not shape or channel_scales.size != shape[-1]:
            raise ValueError(f"{path!r}: scales of {entry.get('path')!r} do not match.")
        weight = (weight.astype(np.float32) * channel_scales).astype(dtype)
    elif value_code != "raw":
        raise ValueError(f"{path!r}: unknown value code {value_code!r}.")
    return weight, start


def _quantize_int8(weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 per slice along the last axis; zeros map to zero."""
    amax = np.max(np.abs(weight.reshape(-1, weight.shape[-1])), axis=0).astype(np.float32)
    scales = np.where(amax > 0, amax / _INT8_MAX, 1.0).astype(np.float32)
    quantized = np.clip(np.round(weight / scales), -_INT8_MAX, _INT8_MAX).astype(np.int8)
    return quantized, scales


def _byte_planes(values: np.ndarray) -> bytes:
    """Byte i of every little-endian value, for i = 0, 1, ...: exponents compress."""
    little = values.astype(values.dtype.newbyteorder("<"), copy=False)
    return (
        np.ascontiguousarray(little).view(np.uint8).reshape(-1, values.dtype.itemsize).T.tobytes()
    )


def _from_byte_planes(
    stored: bytes, dtype: np.dtype, count: int, entry: dict[str, Any], path: str
) -> np.ndarray:
    if len(stored) != count * dtype.itemsize:
        raise ValueError(f"{path!r}: values of {entry.get('path')!r} have the wrong length.")
    planes = np.frombuffer(stored, np.uint8).reshape(dtype.itemsize, count)
    return np.ascontiguousarray(planes.T).view(dtype.newbyteorder("<")).reshape(count).astype(dtype)


def _gaps(mask: np.ndarray) -> np.ndarray:
    """Zeros before each kept entry since the previous kept entry."""
    where = np.flatnonzero(mask)
    return np.diff(where, prepend=-1) - 1


def _varint_encode(values: np.ndarray) -> bytes:
    """Unsigned LEB128 of non-negative integers, 7 bits per byte, low first."""
    values = values.astype(np.uint64)
    groups = np.ones(values.size, np.int64)
    rest = values >> np.uint64(7)
    while rest.any():
        groups += rest > 0
        rest >>= np.uint64(7)
    starts = np.cumsum(groups) - groups
    out = np.empty(int(groups.sum()), np.uint8)
    for g in range(int(groups.max(initial=0))):
        has = groups > g
        low = (values[has] >> np.uint64(7 * g)) & np.uint64(0x7F)
        more = (groups[has] > g + 1).astype(np.uint64) << np.uint64(7)
        out[starts[has] + g] = (low | more).astype(np.uint8)
    return out.tobytes()


def _varint_decode(data: bytes, path: str) -> np.ndarray:
    raw = np.frombuffer(data, np.uint8)
    if raw.size and raw[-1] & 0x80:
        raise ValueError(f"{path!r}: a run-length code ends mid-number.")
    last = (raw & 0x80) == 0
    index = np.cumsum(last) - last  # which number each byte belongs to
    starts = np.flatnonzero(np.concatenate([[True], last[:-1]])) if raw.size else raw
    shift = (np.arange(raw.size) - starts[index]) * 7
    if shift.size and shift.max() > 56:
        raise ValueError(f"{path!r}: a run-length code number is too large.")
    out = np.zeros(int(last.sum()), np.uint64)
    np.add.at(out, index, (raw & 0x7F).astype(np.uint64) << shift.astype(np.uint64))
    return out.astype(np.int64)

"""Tests of keras_prune.kps (keras_prune.export and load): the sparse file format, its bounds and its errors."""

import hashlib
import json
import math
import os
import re
import struct
import zipfile

import keras
import numpy as np
import pytest
import zstandard
from conftest import BACKEND, small_images

import keras_prune
from keras_prune.kps import (
    FORMAT_VERSION,
    MAGIC,
    _encode_weight,
    _varint_decode,
    _varint_encode,
)

HEADER = struct.Struct("<8sHQ32s")


def tiny_model():
    return keras.Sequential(
        [
            keras.Input((12, 12, 1)),
            keras.layers.Conv2D(8, 3, activation="relu"),
            keras.layers.MaxPooling2D(2),
            keras.layers.Flatten(),
            keras.layers.Dense(64, activation="relu"),
            keras.layers.Dense(4, activation="softmax"),
        ]
    )


@pytest.fixture(scope="module")
def trained():
    """A tiny CNN pruned to 75 % and trained on learnable toy images: (pruned, x, y)."""
    keras.utils.set_random_seed(7)
    x, y = small_images(n=256)
    schedule = keras_prune.ConstantSparsity(0.75, begin_step=0, frequency=4)
    pruned = keras_prune.prune_low_magnitude(tiny_model(), pruning_schedule=schedule)
    pruned.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    history = pruned.fit(x, y, batch_size=32, epochs=4, verbose=0)
    assert history.history["accuracy"][-1] > 0.6, "the toy task must be learned"
    return pruned, x, y


def entropy_bytes(weights, value_bits):
    """The information bound: H(kept fraction) bits per entry plus bits per kept value.

    Kernels (2+ dimensions) take `value_bits` per kept value, plus, below 32
    bits, one float32 scale per output channel; 1-D weights stay float32.
    """
    bits = 0.0
    for weight in weights:
        n, kept = weight.size, int(np.count_nonzero(weight))
        p = kept / n
        if 0 < p < 1:
            bits += -n * (p * math.log2(p) + (1 - p) * math.log2(1 - p))
        if weight.ndim >= 2:
            bits += kept * value_bits + (32 * weight.shape[-1] if value_bits < 32 else 0)
        else:
            bits += kept * 32
    return bits / 8


def manifest_overhead(path):
    """Bytes the header and the compressed manifest (config + weight entries) take."""
    with open(path, "rb") as handle:
        data = handle.read()
    raw = zstandard.ZstdDecompressor().decompress(data[HEADER.size :])
    (length,) = struct.unpack_from("<I", raw)
    manifest = raw[4 : 4 + length]
    return HEADER.size + len(zstandard.ZstdCompressor(level=19).compress(manifest))


@pytest.mark.slow
def test_round_trip_predicts_exactly_what_the_stripped_model_predicts(trained, tmp_path):
    pruned, x, _ = trained
    stripped = keras_prune.strip_pruning(pruned)
    path = tmp_path / "model.kps"
    written = keras_prune.export(pruned, path)
    assert written == os.path.getsize(path)
    loaded = keras_prune.load(path)
    assert not any(isinstance(layer, keras_prune.PruneLowMagnitude) for layer in loaded.layers)
    assert [type(layer) for layer in loaded.layers] == [type(layer) for layer in stripped.layers]
    for expected, actual in zip(stripped.get_weights(), loaded.get_weights()):
        assert actual.dtype == expected.dtype
        np.testing.assert_array_equal(actual, expected)
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), stripped.predict(x, verbose=0))


def test_round_trip_of_functional_model_with_non_trainable_and_unpruned_weights(tmp_path):
    inputs = keras.Input((6,))
    hidden = keras.layers.Dense(32, name="hidden")(inputs)
    hidden = keras.layers.BatchNormalization(name="norm")(hidden)
    outputs = keras.layers.Dense(3, name="out")(hidden)
    model = keras.Model(inputs, outputs)
    rng = np.random.default_rng(0)
    kernel = rng.standard_normal((6, 32)).astype("float32")
    kernel[rng.random(kernel.shape) < 0.999] = 0.0  # almost empty: a run-length code
    kernel[0, 0] = 1.5
    norm = model.get_layer("norm")
    norm.set_weights([rng.random(32).astype("float32") + 0.5 for _ in range(4)])
    model.get_layer("hidden").set_weights([kernel, rng.standard_normal(32).astype("float32")])
    keras_prune.export(model, tmp_path / "f.kps")
    loaded = keras_prune.load(tmp_path / "f.kps")
    for expected, actual in zip(model.get_weights(), loaded.get_weights()):
        np.testing.assert_array_equal(actual, expected)
    x = rng.standard_normal((5, 6)).astype("float32")
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))


@pytest.mark.parametrize("sparsity, code", [(0.0, "dense"), (0.5, "bitmask"), (0.999, "gaps")])
def test_position_code_is_the_smallest_for_the_sparsity(sparsity, code):
    rng = np.random.default_rng(1)
    weight = rng.standard_normal((200, 100)).astype("float32")
    weight[rng.random(weight.shape) < sparsity] = 0.0
    entry, _ = _encode_weight(weight, None)
    assert entry["positions"] == code


def test_varint_round_trip_of_small_and_huge_gaps():
    values = np.array([0, 1, 127, 128, 300, 16383, 16384, 2**35 + 7, 0], np.int64)
    encoded = _varint_encode(values)
    assert len(encoded) == 1 + 1 + 1 + 2 + 2 + 2 + 3 + 6 + 1
    np.testing.assert_array_equal(_varint_decode(encoded, "x"), values)


def test_float32_size_is_within_zstd_overhead_of_the_information_bound(trained, tmp_path):
    pruned, _, _ = trained
    stripped = keras_prune.strip_pruning(pruned)
    path = tmp_path / "model.kps"
    size = keras_prune.export(stripped, path)
    bound = entropy_bytes(stripped.get_weights(), 32)
    # zstd's Huffman literals come within a few % of the order-0 entropy;
    # float32 mantissas are incompressible, so the bound is nearly tight.
    assert size <= manifest_overhead(path) + 1.05 * bound
    assert size < 0.75 * keras_prune.gzipped_model_size(stripped, "h5")


def test_int8_zeros_stay_exact_and_values_within_half_a_step(trained, tmp_path):
    pruned, x, y = trained
    stripped = keras_prune.strip_pruning(pruned)
    path = tmp_path / "int8.kps"
    size = keras_prune.export(pruned, path, quantize="int8")
    loaded = keras_prune.load(path)
    for expected, actual in zip(stripped.get_weights(), loaded.get_weights()):
        assert actual.dtype == np.float32
        if expected.ndim == 1:
            np.testing.assert_array_equal(actual, expected)  # biases stay lossless
            continue
        assert np.all(actual[expected == 0] == 0.0)
        step = np.max(np.abs(expected.reshape(-1, expected.shape[-1])), axis=0) / 127
        assert np.all(np.abs(actual - expected) <= step / 2 * (1 + 1e-6))
        levels = actual / np.where(step > 0, step, 1)
        np.testing.assert_allclose(levels, np.round(levels), atol=1e-3)  # int8 * scale
    assert size <= manifest_overhead(path) + 1.05 * entropy_bytes(stripped.get_weights(), 8)
    keras_prune.export(pruned, tmp_path / "float.kps")
    assert size < os.path.getsize(tmp_path / "float.kps") / 2
    agree = np.mean(
        np.argmax(loaded.predict(x, verbose=0), -1) == np.argmax(stripped.predict(x, verbose=0), -1)
    )
    assert agree >= 0.98


def test_keras_quantize_int8_keeps_the_pruned_zeros(trained):
    pruned, x, _ = trained
    stripped = keras_prune.strip_pruning(pruned)
    float_kernel = stripped.layers[-2].get_weights()[0]
    float_out = stripped.predict(x, verbose=0)
    stripped.quantize("int8")  # Keras quantizes Dense (not Conv2D) in 3.x
    dense = stripped.layers[-2]
    assert dense.dtype_policy.name == "int8_from_float32"
    kernel = {v.path.split("/")[-1]: keras.ops.convert_to_numpy(v) for v in dense.weights}["kernel"]
    assert kernel.dtype == np.int8
    assert np.all(kernel[float_kernel == 0] == 0)
    assert (
        np.mean(np.argmax(stripped.predict(x, verbose=0), -1) == np.argmax(float_out, -1)) >= 0.95
    )


@pytest.mark.skipif(BACKEND == "torch", reason="Keras' tf_saved_model export fails on torch")
def test_keras_export_tf_saved_model_of_a_stripped_model(trained, tmp_path):
    import tensorflow as tf  # the test checks the SavedModel with TensorFlow itself

    pruned, x, _ = trained
    stripped = keras_prune.strip_pruning(pruned)
    stripped(x[:1])
    stripped.export(str(tmp_path / "saved"), format="tf_saved_model", verbose=False)
    served = tf.saved_model.load(str(tmp_path / "saved"))
    np.testing.assert_allclose(
        np.asarray(served.serve(x)), stripped.predict(x, verbose=0), rtol=1e-5, atol=1e-6
    )


def write_variant(tmp_path, data, name):
    path = tmp_path / name
    path.write_bytes(data)
    return path


@pytest.fixture
def good_file(tmp_path):
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    path = tmp_path / "good.kps"
    keras_prune.export(model, path)
    return path.read_bytes()


@pytest.mark.parametrize("keep", [0, 5, HEADER.size - 1, HEADER.size + 3, -1])
def test_truncated_file_is_rejected(good_file, tmp_path, keep):
    data = good_file[: keep if keep >= 0 else len(good_file) + keep]
    with pytest.raises(ValueError, match="truncated|magic"):
        keras_prune.load(write_variant(tmp_path, data, "cut.kps"))


def test_trailing_bytes_are_rejected(good_file, tmp_path):
    with pytest.raises(ValueError, match="trailing"):
        keras_prune.load(write_variant(tmp_path, good_file + b"\0", "long.kps"))


@pytest.mark.parametrize("where", [HEADER.size, -1, -20])
def test_flipped_payload_byte_fails_the_checksum(good_file, tmp_path, where):
    data = bytearray(good_file)
    data[where] ^= 0x01
    with pytest.raises(ValueError, match="corrupted.*SHA-256"):
        keras_prune.load(write_variant(tmp_path, bytes(data), "flip.kps"))


def test_flipped_checksum_byte_is_rejected(good_file, tmp_path):
    data = bytearray(good_file)
    data[HEADER.size - 1] ^= 0x80
    with pytest.raises(ValueError, match="corrupted"):
        keras_prune.load(write_variant(tmp_path, bytes(data), "sum.kps"))


def test_wrong_magic_is_rejected(good_file, tmp_path):
    with pytest.raises(ValueError, match="not a keras_prune export"):
        keras_prune.load(write_variant(tmp_path, b"PK\x03\x04" + good_file[4:], "zip.kps"))


def test_other_format_version_is_rejected(good_file, tmp_path):
    _, _, length, digest = HEADER.unpack_from(good_file)
    data = HEADER.pack(MAGIC, FORMAT_VERSION + 1, length, digest) + good_file[HEADER.size :]
    with pytest.raises(ValueError, match=f"version {FORMAT_VERSION + 1}.*reads versions 1, 2"):
        keras_prune.load(write_variant(tmp_path, data, "v3.kps"))


def test_a_version_1_file_without_assets_loads(good_file, tmp_path):
    _, _, length, digest = HEADER.unpack_from(good_file)
    data = HEADER.pack(MAGIC, 1, length, digest) + good_file[HEADER.size :]
    model = keras_prune.load(write_variant(tmp_path, data, "v1.kps"))
    assert [tuple(w.shape) for w in model.weights] == [(4, 3), (3,)]


def lookup_model():
    lookup = keras.layers.IntegerLookup(name="ids")
    lookup.adapt(np.array([7, 7, 7, 3, 3, 11]))  # a vocabulary outside weights and config
    inputs = keras.Input((2,), dtype="int64")
    hidden = keras.layers.Flatten()(keras.layers.Embedding(5, 4)(lookup(inputs)))
    return keras.Model(inputs, keras.layers.Dense(2)(hidden))


def test_an_adapted_lookup_layer_keeps_its_vocabulary_in_the_file(tmp_path):
    model = lookup_model()
    pruned = keras_prune.prune_low_magnitude(model, keras_prune.ConstantSparsity(0.5, 0))
    keras_prune.export(pruned, tmp_path / "lookup.kps")
    loaded = keras_prune.load(tmp_path / "lookup.kps")
    assert loaded.get_layer("ids").get_vocabulary() == [-1, 7, 3, 11]
    probe = np.array([[7, 3], [11, 5]])  # 5 is out of vocabulary
    np.testing.assert_allclose(loaded.predict(probe, verbose=0), model.predict(probe, verbose=0))


def rename_asset(asset):
    asset["name"] = "other"


def move_asset_file_up(asset):
    asset["files"] = {f"../{name}": text for name, text in asset["files"].items()}


@pytest.mark.parametrize(
    "edit, match",
    [
        (rename_asset, "layer 1 is 'ids'"),
        (move_asset_file_up, "An asset file name must not hold a path; got '../"),
    ],
)
def test_a_malformed_assets_entry_is_rejected(tmp_path, edit, match):
    keras_prune.export(lookup_model(), tmp_path / "lookup.kps")
    raw = zstandard.ZstdDecompressor().decompress((tmp_path / "lookup.kps").read_bytes()[50:])
    (size,) = struct.unpack_from("<I", raw)
    manifest = json.loads(raw[4 : 4 + size])
    edit(manifest["assets"][0])
    text = json.dumps(manifest).encode()
    payload = zstandard.ZstdCompressor().compress(
        struct.pack("<I", len(text)) + text + raw[4 + size :]
    )
    header = HEADER.pack(MAGIC, FORMAT_VERSION, len(payload), hashlib.sha256(payload).digest())
    with pytest.raises(ValueError, match=f"malformed assets entry: {re.escape(match)}"):
        keras_prune.load(write_variant(tmp_path, header + payload, "edited.kps"))


def test_valid_checksum_over_an_inconsistent_manifest_is_rejected(good_file, tmp_path):
    raw = zstandard.ZstdDecompressor().decompress(good_file[HEADER.size :])
    raw = raw[:-4]  # drop the last bias value, keep the rest consistent
    payload = zstandard.ZstdCompressor().compress(raw)
    header = HEADER.pack(MAGIC, FORMAT_VERSION, len(payload), hashlib.sha256(payload).digest())
    with pytest.raises(ValueError, match="runs past|wrong length"):
        keras_prune.load(write_variant(tmp_path, header + payload, "short.kps"))


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(trained, tmp_path, monkeypatch):
    pruned, _, _ = trained
    path = tmp_path / "model.kps"
    path.write_bytes(b"old")

    def broken_fsync(fd):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="disk full"):
        keras_prune.export(pruned, path)
    assert path.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["model.kps"]


def test_bad_arguments_name_the_argument(tmp_path):
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    with pytest.raises(TypeError, match="`model`"):
        keras_prune.export("model", tmp_path / "m.kps")
    with pytest.raises(ValueError, match="`quantize`.*int8"):
        keras_prune.export(model, tmp_path / "m.kps", quantize="int4")
    with pytest.raises(TypeError, match="`path`"):
        keras_prune.export(model, 3)
    with pytest.raises(ValueError, match="`path`.*directory"):
        keras_prune.export(model, tmp_path)
    with pytest.raises(ValueError, match="`model` must be built"):
        keras_prune.export(keras.Sequential([keras.layers.Dense(3)]), tmp_path / "m.kps")
    with pytest.raises(TypeError, match="`path`"):
        keras_prune.load(None)
    keras_prune.export(model, tmp_path / "m.kps")
    with pytest.raises(TypeError, match="`custom_objects`"):
        keras_prune.load(tmp_path / "m.kps", custom_objects=["Dense"])


def test_keras_file_is_not_mistaken_for_an_export(tmp_path):
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    model.save(tmp_path / "m.keras")
    assert zipfile.is_zipfile(tmp_path / "m.keras")
    with pytest.raises(ValueError, match=r"not a keras_prune export.*keras.saving.load_model"):
        keras_prune.load(tmp_path / "m.keras")
    # A file from the other formats `export` writes names what runs it.
    (tmp_path / "m.tflite").write_bytes(b"\x1c\x00\x00\x00TFL3" + bytes(24))
    with pytest.raises(ValueError, match=r"export.*\.tflite file runs.*runtimes\.run\(path"):
        keras_prune.load(tmp_path / "m.tflite")

"""Tests for keras_prune.structured.blocks: the feed-forward units of KerasHub blocks.

The reference for a shrunk block is the original model with the removed
units' first-kernel columns and biases set to zero by hand here, the units
found by a full sort of numpy norms (column of the first kernel and row of
the second).
"""

from __future__ import annotations

import json
import zipfile

import keras
import numpy as np
import pytest

import keras_prune
from keras_prune.structured import blocks
from keras_prune.structured.channel_mask import FeedForwardMask

hub = pytest.importorskip("keras_hub", reason="tools/setup installs keras-hub")
# Not exported by keras_hub: its blocks are built by Gemma3Backbone.
from keras_hub.src.models.gemma3.gemma3_decoder_block import Gemma3DecoderBlock  # noqa: E402

# A KerasHub backbone's config at a test's size: 2 blocks, 16 wide, 32 FFN units.
SMALL = {
    "vocabulary_size": 50,
    "num_layers": 2,
    "num_heads": 2,
    "hidden_dim": 16,
    "intermediate_dim": 32,
    "max_sequence_length": 8,
}


def _numpy(variable):
    return keras.ops.convert_to_numpy(variable)


def _encoder_model(seed=0):
    """Two KerasHub encoder blocks (16 wide, 32 feed-forward units) and a classifier."""
    keras.utils.set_random_seed(seed)
    x = keras.Input((6, 16))
    h = x
    for i in range(2):
        h = hub.layers.TransformerEncoder(
            intermediate_dim=32, num_heads=2, activation="gelu", name=f"block_{i}"
        )(h)
    y = keras.layers.Dense(3, name="out")(keras.layers.GlobalAveragePooling1D()(h))
    model = keras.Model(x, y)
    rng = np.random.RandomState(seed)
    for variable in model.weights:  # nonzero biases, so that a unit's bias must go too
        if variable.path.endswith("bias"):
            variable.assign(rng.normal(0, 0.5, variable.shape).astype("float32"))
    return model


def _norms(block):
    """Each unit's L2 norm: its columns of the first kernels and row of the last."""
    found = blocks.feed_forward(block)
    squares = sum((_numpy(d.kernel).astype("float64") ** 2).sum(axis=0) for d in found.inner)
    return np.sqrt(squares + (_numpy(found.outer.kernel).astype("float64") ** 2).sum(axis=1))


def _removed(block, count):
    """The `count` units of lowest norm, by a full sort."""
    return np.sort(np.argsort(_norms(block), kind="stable")[:count])


def _zero_units(block, removed):
    """Sets the first kernels' columns and biases of the `removed` units of `block` to 0."""
    for dense in blocks.feed_forward(block).inner:
        for variable, axis in ((dense.kernel, 1), (getattr(dense, "bias", None), 0)):
            if variable is not None:
                value = _numpy(variable).copy()
                np.moveaxis(value, axis, 0)[removed] = 0
                variable.assign(value)


def _x(n=8, seed=1):
    return np.random.RandomState(seed).normal(size=(n, 6, 16)).astype("float32")


def test_the_feed_forward_layers_of_kerashub_blocks_are_found_and_others_are_not():
    model = _encoder_model()
    found = blocks.feed_forward(model.get_layer("block_0"))
    assert [d.name for d in found.inner] == ["feedforward_intermediate_dense"]
    assert (found.units, found.key, found.outer.kernel.shape) == (32, "intermediate_dim", (32, 16))
    decoder = hub.layers.TransformerDecoder(intermediate_dim=8, num_heads=2)
    decoder.build((None, 4, 6))
    assert blocks.feed_forward(decoder).units == 8

    # Gemma 3's config says how many config units make one unit (`gate_dim_reduction`).
    gemma3 = Gemma3DecoderBlock(
        8, 16, head_dim=4, num_query_heads=2, num_key_value_heads=1, gate_dim_reduction=2
    )
    gemma3.build((None, 4, 8))
    found = blocks.feed_forward(gemma3)
    assert (found.units, found.config_value(3), blocks.configured_units(gemma3)) == (8, 6, 8)

    class Custom(hub.layers.TransformerEncoder):  # may compute something else in `call`
        pass

    custom = Custom(intermediate_dim=8, num_heads=2)
    custom.build((None, 4, 6))
    assert blocks.feed_forward(custom) is None
    assert blocks.feed_forward(hub.layers.TransformerEncoder(8, 2)) is None  # not built
    with pytest.raises(ValueError, match="`layer` 'dense'.*not a transformer block"):
        blocks.configured_units(keras.layers.Dense(4, name="dense"))


def test_channel_groups_hold_each_blocks_units_and_nothing_else_of_it():
    groups = {g.producers: g for g in keras_prune.channel_groups(_encoder_model())}
    assert groups[("block_0",)].size == 32 and groups[("block_0",)].removable
    assert groups[("block_1",)].size == 32 and groups[("block_1",)].removable
    assert not groups[("out",)].removable  # the model's output


def test_shrink_removes_the_units_of_lowest_norm_and_predicts_as_the_zeroed_original():
    model = _encoder_model()
    small = keras_prune.shrink(model, 0.5)
    reference = keras.models.clone_model(model)
    reference.set_weights(model.get_weights())
    for name in ("block_0", "block_1"):
        _zero_units(reference.get_layer(name), _removed(model.get_layer(name), 16))
        block = small.get_layer(name)
        assert block.intermediate_dim == 16
        assert tuple(blocks.feed_forward(block).outer.kernel.shape) == (16, 16)
    # The attention and normalisation weights stay: 2 x (4*(16*16+16) + 2*2*16 ...) less half the FFN.
    assert model.count_params() - small.count_params() == 2 * (16 * 16 + 16 + 16 * 16)
    x = _x()
    np.testing.assert_allclose(_numpy(small(x)), _numpy(reference(x)), rtol=1e-4, atol=1e-5)


@pytest.mark.slow  # trains
def test_prune_channels_trains_resumes_from_a_file_and_shrinks_a_kerashub_encoder(tmp_path):
    model = _encoder_model()
    x, y = _x(32), np.random.RandomState(2).randint(0, 3, 32)
    schedule = keras_prune.PolynomialDecay(0.0, 0.5, 0, 4, frequency=2)
    masked = keras_prune.prune_channels(model, schedule, round_to=4)
    wrapped = [layer for layer in masked.layers if isinstance(layer, FeedForwardMask)]
    assert [layer.name for layer in wrapped] == [
        "block_0_feed_forward_mask",
        "block_1_feed_forward_mask",
    ]
    masked.compile("adam", "sparse_categorical_crossentropy")
    masked.fit(x, y, batch_size=16, epochs=1, verbose=0)  # steps 1, 2: the first update
    # 43.75 % at step 2 (cubic decay): 14 of 32 go, the 18 kept rounded up to 20.
    first = [_numpy(m.mask) for m in wrapped]
    assert [m.sum() for m in first] == [20, 20]
    masked.save(tmp_path / "masked.keras")
    masked = keras.saving.load_model(tmp_path / "masked.keras")
    callbacks = [keras_prune.UpdatePruningStep()]
    masked.fit(x, y, batch_size=16, epochs=1, verbose=0, callbacks=callbacks)
    masks = [_numpy(m.mask) for m in masked.layers if isinstance(m, FeedForwardMask)]
    assert [m.sum() for m in masks] == [16, 16]
    for mask, before in zip(masks, first):  # a removed unit stays removed
        assert np.all(before[mask == 1] == 1)
    report = keras_prune.sparsity_report(masked)
    notes = [row.note for row in report if row.weight == "kernel" and "block_0" in row.layer]
    assert notes == ["16 of 32 feed-forward units removed by its FeedForwardMask"] * 2
    small = keras_prune.shrink(masked)
    assert [small.get_layer(n).intermediate_dim for n in ("block_0", "block_1")] == [16, 16]
    np.testing.assert_allclose(
        _numpy(small(x)), _numpy(masked(x, training=False)), rtol=1e-4, atol=1e-5
    )
    small.save(tmp_path / "small.keras")
    with zipfile.ZipFile(tmp_path / "small.keras") as archive:
        config = json.loads(archive.read("config.json"))
    assert "keras_prune" not in json.dumps(config)  # loads where keras_prune is not installed
    loaded = keras.saving.load_model(tmp_path / "small.keras")
    np.testing.assert_allclose(_numpy(loaded(x)), _numpy(small(x)), rtol=1e-6, atol=1e-6)


def _backbones():
    """KerasHub backbones built of each known block: (class name, config, feed-forward units)."""
    base = {k: v for k, v in SMALL.items() if k not in ("num_heads", "max_sequence_length")}
    decoder = {**base, "num_query_heads": 2, "num_key_value_heads": 1}
    return [
        ("BertBackbone", SMALL, 32),
        ("GPT2Backbone", SMALL, 32),
        ("GemmaBackbone", {**decoder, "intermediate_dim": 64, "head_dim": 8}, 32),  # 64 // 2
        ("Gemma3Backbone", {**decoder, "head_dim": 8, "image_size": 16}, 32),
        ("MistralBackbone", decoder, 32),
        ("QwenBackbone", decoder, 32),
        ("Phi3Backbone", decoder, 32),
        ("FalconBackbone", {**base, "num_attention_heads": 2}, 32),
    ]


@pytest.mark.slow  # eight backbones, traced on JAX
@pytest.mark.parametrize("name, config, units", _backbones(), ids=[b[0] for b in _backbones()])
def test_a_kerashub_backbone_shrinks_to_its_class_with_half_the_units(name, config, units):
    keras.utils.set_random_seed(0)
    backbone = getattr(hub.models, name)(**config)
    rng = np.random.RandomState(0)
    for variable in backbone.weights:  # KerasHub starts biases at 0; a unit's must go too
        if variable.path.endswith("/bias"):
            variable.assign(rng.normal(0, 0.5, variable.shape).astype("float32"))
    x = {"token_ids": rng.randint(0, 50, (4, 8)), "padding_mask": np.ones((4, 8), "bool")}
    if name == "BertBackbone":
        x["segment_ids"] = np.zeros((4, 8), "int32")
    small = keras_prune.shrink(backbone, 0.5)
    assert type(small) is type(backbone)  # its config says the smaller intermediate_dim
    assert small.get_config()["intermediate_dim"] == config["intermediate_dim"] // 2
    reference = keras.models.clone_model(backbone)
    reference.set_weights(backbone.get_weights())
    found = []
    for layer in backbone.layers:
        if blocks.feed_forward(layer) is not None:
            found.append(blocks.feed_forward(small.get_layer(layer.name)).units)
            _zero_units(reference.get_layer(layer.name), _removed(layer, units // 2))
    assert found == [units // 2] * 2
    expected, got = reference(x), small(x)
    for a, b in zip(keras.tree.flatten(got), keras.tree.flatten(expected), strict=True):
        np.testing.assert_allclose(_numpy(a), _numpy(b), rtol=1e-4, atol=1e-5)


def test_a_feed_forward_mask_refuses_a_layer_it_does_not_know():
    schedule = keras_prune.ConstantSparsity(0.5, 0)
    segments = [{"group": "g", "size": 4, "producers": [["d", 0]]}]
    with pytest.raises(ValueError, match="`layer` 'd' \\(Dense\\) is not a transformer block"):
        FeedForwardMask(keras.layers.Dense(4, name="d"), schedule, segments=segments)
    with pytest.raises(ValueError, match="`segments` hold 4 channels but `b` has 8"):
        FeedForwardMask(hub.layers.TransformerEncoder(8, 2, name="b"), schedule, segments=segments)


def _gpt2_lm():
    backbone = hub.models.GPT2Backbone(**SMALL)
    return hub.models.GPT2CausalLM(backbone, preprocessor=None)


@pytest.mark.slow  # trains a causal LM
def test_a_gpt2_causal_lm_shrinks_to_a_smaller_gpt2_causal_lm_that_generates(tmp_path):
    rng = np.random.RandomState(0)
    x = {"token_ids": rng.randint(0, 50, (8, 8)), "padding_mask": np.ones((8, 8), "bool")}
    y = rng.randint(0, 50, (8, 8))
    masked = keras_prune.prune_channels(
        _gpt2_lm(), keras_prune.ConstantSparsity(0.5, 0, frequency=1)
    )
    masked.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    masked.fit(x, y, batch_size=4, epochs=1, verbose=0)
    masked.save(tmp_path / "masked.keras")
    masked = keras.saving.load_model(tmp_path / "masked.keras")
    masked.fit(x, y, batch_size=4, epochs=1, verbose=0, callbacks=[keras_prune.UpdatePruningStep()])
    small = keras_prune.shrink(masked)
    assert type(small) is hub.models.GPT2CausalLM
    assert small.backbone.get_config()["intermediate_dim"] == 16
    np.testing.assert_allclose(
        _numpy(small(x)), _numpy(masked(x, training=False)), rtol=1e-4, atol=1e-5
    )
    prompt = {"token_ids": np.array([[5, 6, 7, 0, 0, 0]]), "padding_mask": (np.arange(6) < 3)[None]}
    generated = small.generate(prompt, max_length=6, stop_token_ids=None)
    np.testing.assert_array_equal(generated["token_ids"][0, :3], [5, 6, 7])
    assert generated["padding_mask"].all()


def test_a_task_whose_config_cannot_say_what_shrink_removed_comes_back_as_a_graph_with_a_warning():
    backbone = hub.models.BertBackbone(**{**SMALL, "num_layers": 1})
    classifier = hub.models.BertTextClassifier(backbone, num_classes=2, preprocessor=None)
    # The pooler's units (read by the logits) shrink too, but its width is the backbone's.
    with pytest.warns(
        UserWarning,
        match=r"shrink returns a plain graph model: a BertTextClassifier .*"
        r"\(pooled_dense/kernel \(16, 8\) against \(16, 16\)\)",
    ):
        small = keras_prune.shrink(classifier, 0.5)
    assert type(small) is keras.Model or type(small).__name__ == "Functional"
    assert small.get_layer("pooled_dense").units == 8


def test_select_picks_blocks_by_name_or_class_and_global_pruning_spreads_over_them():
    model = _encoder_model()
    schedule = keras_prune.ConstantSparsity(0.5, 0)
    masked = keras_prune.prune_channels(model, schedule, select="block_1")
    assert [m.source for m in masked.layers if isinstance(m, FeedForwardMask)] == ["block_1"]
    masked = keras_prune.prune_channels(model, schedule, select=hub.layers.TransformerEncoder)
    assert len([m for m in masked.layers if isinstance(m, FeedForwardMask)]) == 2
    # One threshold over both blocks' units, each divided by its block's mean
    # score: the 32 lowest of the 64 normalised norms go, by a full sort.
    normalised = []
    for name in ("block_0", "block_1"):
        norms = _norms(model.get_layer(name))
        normalised.append(norms / norms.mean())
    threshold = np.sort(np.concatenate(normalised))[31]
    expected = [int((n > threshold).sum()) for n in normalised]
    small = keras_prune.shrink(model, 0.5, global_pruning=True)
    assert [small.get_layer(n).intermediate_dim for n in ("block_0", "block_1")] == expected


def _causal_lms():
    """Causal LMs whose backbones are built of known blocks: (name, a function making one)."""
    base = {k: v for k, v in SMALL.items() if k not in ("num_heads", "max_sequence_length")}
    heads = {"num_query_heads": 2, "num_key_value_heads": 1}
    m = hub.models
    return [
        # Gemma3CausalLM calls its backbone as `backbone(inputs={...})`.
        ("Gemma3CausalLM", lambda: m.Gemma3Backbone(**base, **heads, head_dim=8, image_size=16)),
        ("MistralCausalLM", lambda: m.MistralBackbone(**base, **heads)),
        ("Phi3CausalLM", lambda: m.Phi3Backbone(**base, **heads)),
        ("FalconCausalLM", lambda: m.FalconBackbone(**base, num_attention_heads=2)),
    ]


@pytest.mark.slow  # four causal LMs, traced on JAX
@pytest.mark.parametrize("name, backbone", _causal_lms(), ids=[c[0] for c in _causal_lms()])
def test_a_causal_lm_is_masked_as_it_computes_and_shrinks_to_its_class(name, backbone):
    keras.utils.set_random_seed(0)
    model = getattr(hub.models, name)(backbone=backbone(), preprocessor=None)
    rng = np.random.RandomState(0)
    x = {"token_ids": rng.randint(0, 50, (4, 8)), "padding_mask": np.ones((4, 8), "bool")}
    # Before any unit is removed, the masked graph computes what the model does.
    untouched = keras_prune.prune_channels(model, keras_prune.ConstantSparsity(0.0, 0))
    np.testing.assert_array_equal(_numpy(untouched(x)), _numpy(model(x)))
    masked = keras_prune.prune_channels(model, keras_prune.ConstantSparsity(0.5, 0, frequency=1))
    masked(x, training=True)  # step 1: half of each block's units go
    kept = [_numpy(m.mask).sum() for m in masked.layers if isinstance(m, FeedForwardMask)]
    assert kept == [16, 16]
    small = keras_prune.shrink(masked)
    assert type(small) is type(model)
    assert small.backbone.get_config()["intermediate_dim"] == 16
    np.testing.assert_allclose(
        _numpy(small(x)), _numpy(masked(x, training=False)), rtol=1e-4, atol=1e-5
    )

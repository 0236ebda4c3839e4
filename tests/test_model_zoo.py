"""One model per family through `tools/model_zoo.check`, on the backend under test.

The whole zoo (every keras.applications model, the KerasHub backbones and
tasks) is `tools/model_zoo.py`, which writes docs/models.md; these are the
families CI keeps working, with small inputs and configs.
"""

import keras
import numpy as np
import pytest

from tools import model_zoo

pytestmark = pytest.mark.slow


def _check(model, x, tmp_path, *target):
    result = model_zoo.check(model, x, str(tmp_path), *target)
    assert result["sparsity"] == pytest.approx(model_zoo.SPARSITY, abs=0.01)
    assert result["max_difference"] <= 1e-5
    return result


def test_keras_applications_mobilenet_v3_with_graph_ops(tmp_path):
    # MobileNetV3 builds `x + y` and `x * y` as ops, not layers, in its graph.
    model = keras.applications.MobileNetV3Small(
        weights=None, input_shape=(32, 32, 3), classes=3, include_preprocessing=False
    )
    result = _check(model, np.random.default_rng(0).uniform(size=(4, 32, 32, 3)), tmp_path)
    assert result["left_dense"] == [] and result["pruned_weights"] > 40


def test_a_model_that_predicts_nan_unpruned_too_is_not_blamed_on_pruning(tmp_path):
    # A negative moving variance: training (batch statistics) is finite, inference is NaN.
    inputs = keras.Input((4,))
    negative = keras.initializers.Constant(-1.0)
    h = keras.layers.BatchNormalization(moving_variance_initializer=negative)(
        keras.layers.Dense(8)(inputs)
    )
    model = keras.Model(inputs, keras.layers.Dense(2)(h))
    x = np.random.default_rng(0).uniform(size=(8, 4)).astype("float32")
    with pytest.raises(AssertionError, match="predicts NaN or inf, unpruned too"):
        model_zoo.check(model, x, str(tmp_path), np.zeros((8, 2), "float32"))


@pytest.fixture
def hub():
    return pytest.importorskip("keras_hub", reason="tools/setup installs keras-hub").models


def test_kerashub_bert_encoder(hub, tmp_path):
    model, x = model_zoo.kerashub()["BertBackbone"]()
    result = _check(model, x, tmp_path)
    # 2 blocks x (q, k, v, output, 2 FFN kernels) + token/segment embeddings + pooler.
    assert result["pruned_weights"] == 15
    assert result["left_dense"] == ["PositionEmbedding"]


def test_kerashub_gemma_decoder(hub, tmp_path):
    model, x = model_zoo.kerashub()["GemmaBackbone"]()
    result = _check(model, x, tmp_path)
    assert result["pruned_weights"] == 2 * 7 + 1  # q, k, v, o, gate, up, down; embeddings


def test_kerashub_causal_lm_strips_to_its_task_and_generates(hub, tmp_path):
    # The task's output reuses the backbone's (tied) embedding; the stripped
    # model is a GPT2CausalLM again, so its .keras file loads and it generates.
    model, x, *target = model_zoo.kerashub()["GPT2CausalLM"]()
    result = _check(model, x, tmp_path, *target)
    assert result["stripped_class"] == "GPT2CausalLM"
    loaded = keras.saving.load_model(str(tmp_path / "model.keras"))
    prompt = {"token_ids": np.array([[5, 6, 7, 0, 0, 0]]), "padding_mask": np.arange(6) < 3}
    prompt["padding_mask"] = prompt["padding_mask"][None]
    generated = loaded.generate(prompt, max_length=6, stop_token_ids=None)
    assert generated["token_ids"].shape == (1, 6)
    np.testing.assert_array_equal(generated["token_ids"][0, :3], [5, 6, 7])
    assert generated["padding_mask"].all()

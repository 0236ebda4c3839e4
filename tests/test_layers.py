"""Every built-in Keras 3 layer with weights worth pruning, trained a few steps in a tiny model.

For each layer: the wrapper prunes exactly the registered weights, each of
them to exactly k = max(round(n·(1 − s)), 1) kept entries, the other weights
(biases, depthwise kernels of separable convolutions) are not masked, and
`strip_pruning` predicts what the pruned model predicts. Normalisation
layers are left unwrapped and train as usual.
"""

import math

import keras
import numpy as np
import pytest
from keras import ops

import keras_prune as kp

SPARSITY = 0.5
BATCHES, BATCH_SIZE = 3, 4
L = keras.layers
ONES = {"bias_initializer": "ones"}  # a bias that stays non-zero unless something zeros it


def conv(cls, *args, **kwargs):
    return lambda: cls(*args, **ONES, **kwargs)


RNN_WEIGHTS = ("cell.kernel", "cell.recurrent_kernel")

# name: (make the layer, input shape, integer inputs?, attribute paths of the weights to prune)
LAYERS = {
    "dense": (conv(L.Dense, 8), (6,), False, ("kernel",)),
    "einsum_dense": (
        conv(L.EinsumDense, "ab,bc->ac", output_shape=8, bias_axes="c"),
        (6,),
        False,
        ("kernel",),
    ),
    "conv1d": (conv(L.Conv1D, 4, 3), (8, 3), False, ("kernel",)),
    "conv2d": (conv(L.Conv2D, 4, 3), (6, 6, 2), False, ("kernel",)),
    "conv3d": (conv(L.Conv3D, 4, 2), (4, 4, 4, 2), False, ("kernel",)),
    "conv1d_transpose": (conv(L.Conv1DTranspose, 4, 3), (8, 3), False, ("kernel",)),
    "conv2d_transpose": (conv(L.Conv2DTranspose, 4, 3), (5, 5, 2), False, ("kernel",)),
    "conv3d_transpose": (conv(L.Conv3DTranspose, 3, 2), (3, 3, 3, 2), False, ("kernel",)),
    "depthwise_conv1d": (
        conv(L.DepthwiseConv1D, 3, depth_multiplier=2),
        (8, 3),
        False,
        ("kernel",),
    ),
    "depthwise_conv2d": (
        conv(L.DepthwiseConv2D, 3, depth_multiplier=2),
        (6, 6, 3),
        False,
        ("kernel",),
    ),
    "separable_conv1d": (conv(L.SeparableConv1D, 6, 3), (8, 3), False, ("pointwise_kernel",)),
    "separable_conv2d": (conv(L.SeparableConv2D, 6, 3), (6, 6, 3), False, ("pointwise_kernel",)),
    "embedding": (lambda: L.Embedding(20, 8), (5,), True, ("embeddings",)),
    "multi_head_attention": (
        conv(L.MultiHeadAttention, 2, 4),
        (5, 6),
        False,
        tuple(f"_{p}_dense.kernel" for p in ("query", "key", "value", "output")),
    ),
    "gated_multi_head_attention": (  # the gate projection is a kernel like the others
        conv(L.MultiHeadAttention, 2, 4, use_gate=True),
        (5, 6),
        False,
        tuple(f"_{p}_dense.kernel" for p in ("query", "key", "value", "output", "gate")),
    ),
    "group_query_attention": (
        conv(L.GroupQueryAttention, 3, num_query_heads=4, num_key_value_heads=2),
        (5, 6),
        False,
        tuple(f"_{p}_dense.kernel" for p in ("query", "key", "value", "output")),
    ),
    "simple_rnn": (conv(L.SimpleRNN, 6), (5, 4), False, RNN_WEIGHTS),
    "lstm": (conv(L.LSTM, 6, unit_forget_bias=False), (5, 4), False, RNN_WEIGHTS),
    "gru": (conv(L.GRU, 6), (5, 4), False, RNN_WEIGHTS),
    "conv_lstm1d": (conv(L.ConvLSTM1D, 3, 3), (4, 6, 2), False, RNN_WEIGHTS),
    "spectral_normalization": (
        lambda: L.SpectralNormalization(L.Dense(8, **ONES)),
        (6,),
        False,
        ("layer.kernel",),
    ),
}


def resolve(layer, path):
    for part in path.split("."):
        layer = getattr(layer, part)
    return layer


def data(shape, integer, n=BATCHES * BATCH_SIZE):
    rng = np.random.RandomState(0)
    x = (
        rng.randint(0, 20, (n, *shape)).astype("int32")
        if integer
        else rng.rand(n, *shape).astype("float32")
    )
    return x, rng.rand(n, 1).astype("float32")


def train(model, x, y):
    model.compile(keras.optimizers.SGD(0.05), "mse")
    model.fit(x, y, batch_size=BATCH_SIZE, epochs=1, verbose=0, shuffle=False)


def numpy(value):
    return ops.convert_to_numpy(value)


def assert_strip_predicts_the_same(pruned, x):
    stripped = kp.strip_pruning(pruned)
    assert not list(kp.pruned_layers(stripped))
    np.testing.assert_allclose(numpy(stripped(x)), numpy(pruned(x)), rtol=1e-5, atol=1e-6)
    return stripped


@pytest.mark.slow
@pytest.mark.parametrize("kind", LAYERS)
def test_layer_trains_to_exactly_the_scheduled_sparsity(kind):
    make, shape, integer, weight_paths = LAYERS[kind]
    inputs = keras.Input(shape, dtype="int32" if integer else "float32")
    layer = make()
    attention = isinstance(layer, (L.MultiHeadAttention, L.GroupQueryAttention))
    hidden = layer(inputs, inputs, inputs) if attention else layer(inputs)
    model = keras.Model(inputs, L.Dense(1, name="head")(L.Flatten()(hidden)))
    pruned = kp.prune_low_magnitude(
        model, kp.ConstantSparsity(SPARSITY, begin_step=0, frequency=1), select=layer.name
    )
    x, y = data(shape, integer)
    train(pruned, x, y)

    (wrapper,) = kp.pruned_layers(pruned)
    assert int(numpy(wrapper.pruning_step.value)) == BATCHES
    expected = [resolve(wrapper.layer, path) for path in weight_paths]
    assert [id(w) for w, _, _ in wrapper.pruning_vars] == [id(w) for w in expected]
    for weight, mask, _ in wrapper.pruning_vars:
        size = math.prod(weight.shape)
        kept = max(round(size * (1 - SPARSITY)), 1)
        mask = numpy(mask.value)
        assert set(np.unique(mask)) <= {0.0, 1.0}
        assert int(mask.sum()) == kept, weight.path
        assert np.count_nonzero(numpy(weight.value) * mask) == kept, weight.path
    pruned_ids = {id(w) for w in expected}
    others = [v for v in wrapper.layer.weights if id(v) not in pruned_ids]
    assert len(others) == {
        "embedding": 0,
        "separable_conv1d": 2,
        "separable_conv2d": 2,
        "multi_head_attention": 4,
        "gated_multi_head_attention": 5,
        "group_query_attention": 4,
        "spectral_normalization": 2,
    }.get(kind, 1)
    for variable in others:  # biases (initialised to ones), depthwise kernels, power iteration
        assert np.count_nonzero(numpy(variable.value)) == math.prod(variable.shape), variable.path

    stripped = assert_strip_predicts_the_same(pruned, x)
    rows = [r for r in kp.sparsity_report(stripped) if r.layer == layer.name]
    assert [r.zeros for r in rows] == [
        math.prod(w.shape) - max(round(math.prod(w.shape) * (1 - SPARSITY)), 1) for w in expected
    ]


def test_spectral_normalization_stores_its_rescaled_pruned_kernel_as_without_pruning():
    # SpectralNormalization divides its kernel by the kernel's largest
    # singular value in each training call and stores the result (on
    # TensorFlow and torch; Keras's JAX trainer keeps a trainable variable's
    # value from the optimizer only). The pruned kernel must end up as
    # rescaled as the unpruned model's, on each backend.
    def model():
        keras.utils.set_random_seed(0)
        inputs = keras.Input((6,))
        hidden = L.SpectralNormalization(L.Dense(8), name="sn")(inputs)
        return keras.Model(inputs, L.Dense(1)(hidden))

    def top_singular_value(model):
        return np.linalg.svd(numpy(model.get_layer("sn").layer.kernel.value))[1][0]

    x, y = data((6,), False, n=32)
    plain = model()
    plain.compile(keras.optimizers.SGD(0.01), "mse")
    plain.fit(x, y, batch_size=BATCH_SIZE, epochs=4, verbose=0, shuffle=False)
    pruned = kp.prune_low_magnitude(model(), kp.ConstantSparsity(SPARSITY, 0, frequency=1))
    pruned.compile(keras.optimizers.SGD(0.01), "mse")
    pruned.fit(x, y, batch_size=BATCH_SIZE, epochs=4, verbose=0, shuffle=False,
               callbacks=[kp.UpdatePruningStep()])  # fmt: skip
    stripped = assert_strip_predicts_the_same(pruned, x)

    initial = top_singular_value(model())
    assert abs(top_singular_value(stripped) - top_singular_value(plain)) < 0.1
    if keras.backend.backend() != "jax":
        assert abs(top_singular_value(plain) - 1.0) < 0.05 < abs(initial - 1.0)
    kernel = numpy(stripped.get_layer("sn").layer.kernel.value)
    assert np.count_nonzero(kernel) == kernel.size // 2


@pytest.mark.parametrize("norm", [L.BatchNormalization, L.LayerNormalization])
def test_normalization_layers_are_left_alone(norm):
    inputs = keras.Input((6,))
    model = keras.Model(inputs, L.Dense(1)(norm()(L.Dense(8, **ONES)(inputs))))
    pruned = kp.prune_low_magnitude(model, kp.ConstantSparsity(SPARSITY, 0, frequency=1))
    (norm_layer,) = [layer for layer in pruned.layers if isinstance(layer, norm)]
    assert not isinstance(norm_layer, kp.PruneLowMagnitude)
    assert len(list(kp.pruned_layers(pruned))) == 2
    before = [numpy(v.value) for v in norm_layer.weights]
    x, y = data((6,), False)
    train(pruned, x, y)
    after = [numpy(v.value) for v in norm_layer.weights]
    # Scale and shift trained (and, for BatchNormalization, the moving statistics
    # updated); no mask refers to them.
    assert all(not np.array_equal(a, b) for a, b in zip(after, before))
    masked = {id(w) for wrapper in kp.pruned_layers(pruned) for w, _, _ in wrapper.pruning_vars}
    assert not masked & {id(v) for v in norm_layer.weights}
    assert [s for w in kp.pruned_layers(pruned) for _, s in w.mask_sparsity()] == [
        SPARSITY,
        SPARSITY,
    ]
    assert_strip_predicts_the_same(pruned, x)


@pytest.mark.slow
def test_hand_wrapped_multi_input_layer_builds_through_the_wrapper():
    # tfmot style: layers wrapped inside the model definition; MultiHeadAttention
    # receives query, value and key through the wrapper, which builds it on them.
    tokens = keras.Input((5,), dtype="int32")
    schedule = kp.ConstantSparsity(0.75, 0, frequency=1)
    embedded = kp.prune_low_magnitude(L.Embedding(20, 8), schedule)(tokens)
    mha = kp.prune_low_magnitude(L.MultiHeadAttention(2, 4), schedule)
    model = keras.Model(tokens, L.Dense(1)(L.Flatten()(mha(embedded, embedded, embedded))))
    x, y = data((5,), True)
    train(model, x, y)
    assert len(mha.pruning_vars) == 4  # query, key, value, output projections
    sizes = [
        math.prod(w.shape)
        for wrapper in kp.pruned_layers(model)
        for w, _, _ in wrapper.pruning_vars
    ]
    kept = [
        int(numpy(m.value).sum())
        for wrapper in kp.pruned_layers(model)
        for _, m, _ in wrapper.pruning_vars
    ]
    assert kept == [round(n * 0.25) for n in sizes]


@pytest.mark.parametrize("ids_dtype", ["int32", "float32"])
def test_pruned_embedding_masks_only_the_rows_it_looks_up(ids_dtype):
    # A plain Embedding is masked row by row (take(w) * take(m)); its output and
    # its training step must be those of take(w * m), computed here in numpy.
    tokens = keras.Input((6,), dtype=ids_dtype)
    embedding = L.Embedding(30, 4, name="embed")
    model = keras.Model(tokens, L.Dense(1, name="head")(L.Flatten()(embedding(tokens))))
    pruned = kp.prune_low_magnitude(
        model, kp.ConstantSparsity(0.5, begin_step=0, frequency=1), select="embed"
    )
    (wrapper,) = kp.pruned_layers(pruned)
    assert wrapper._plain_embedding()  # the row-by-row path
    ((weight, mask, _),) = wrapper.pruning_vars
    ids = np.random.RandomState(0).randint(0, 20, (8, 6))  # rows 20..29 are never looked up
    initial = numpy(weight.value).copy()
    pruned.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    pruned.fit(ids.astype(ids_dtype), np.ones((8, 1)), batch_size=8, epochs=2, verbose=0)
    w, m = numpy(weight.value), numpy(mask.value)
    assert int(m.sum()) == 60
    extractor = keras.Model(pruned.input, wrapper.output)
    np.testing.assert_allclose(
        numpy(extractor(ids.astype(ids_dtype))), (w * m)[ids], rtol=1e-6, atol=1e-7
    )
    # Rows nobody looked up got no gradient; looked-up rows trained.
    np.testing.assert_array_equal(w[20:], initial[20:])
    assert not np.allclose(w[:20] * m[:20], initial[:20] * m[:20])

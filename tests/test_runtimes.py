"""`keras_prune.export` to LiteRT and ONNX files, checked here with the runtimes themselves.

On JAX and torch the conversion runs in a TensorFlow-backend child process
(about 10 s each), so those backends export fewer files here.
"""

import os
import re

import keras
import numpy as np
import pytest

import keras_prune
from keras_prune import runtimes
from keras_prune.compare.datasets import load_dataset
from keras_prune.compare.experiment import seed_model

pytest.importorskip("ai_edge_litert")
pytest.importorskip("onnxruntime")
pytest.importorskip("tensorflow")

import onnxruntime  # noqa: E402
from ai_edge_litert.interpreter import Interpreter, OpResolverType  # noqa: E402

ON_TENSORFLOW = keras.backend.backend() == "tensorflow"


def run_litert(path, x):
    """The file's predictions by LiteRT's builtin kernels (which run every file written here)."""
    interpreter = Interpreter(
        model_path=str(path),
        experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
    )
    runner = interpreter.get_signature_runner()
    (name,) = runner.get_input_details()
    return runner(**{name: x})["output_0"]


def run_onnx(path, x):
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


@pytest.fixture(scope="module")
def pruned_cnn():
    """A small CNN pruned to 75 % by training, its pruned (masked) model and inputs."""
    keras.utils.set_random_seed(3)
    model = keras.Sequential(
        [
            keras.Input((12, 12, 1)),
            keras.layers.Conv2D(8, 3, activation="relu"),
            keras.layers.MaxPooling2D(),
            keras.layers.Flatten(),
            # Exact GELU (BERT's, ViT's) is TensorFlow's Erfc op, which tf2onnx lacks.
            keras.layers.Dense(16, activation="gelu"),
            keras.layers.Dense(4),
        ]
    )
    schedule = keras_prune.ConstantSparsity(0.75, begin_step=0, frequency=2)
    pruned = keras_prune.prune_low_magnitude(model, schedule)
    pruned.compile("adam", "mse")
    rng = np.random.default_rng(0)
    x = rng.random((64, 12, 12, 1), dtype=np.float32)
    y = rng.random((64, 4), dtype=np.float32)
    callbacks = [keras_prune.UpdatePruningStep()]
    pruned.fit(x, y, batch_size=16, epochs=2, verbose=0, callbacks=callbacks)
    assert keras_prune.sparsity_report(pruned).total_sparsity == pytest.approx(0.75, abs=0.01)
    return pruned, x[:8]


FORMATS = [("m.tflite", None, 1e-5), ("m.onnx", None, 1e-5)]
if ON_TENSORFLOW:  # in-process conversion: every format and quantization
    FORMATS += [("m8.tflite", "int8", 0.05), ("m16.tflite", "float16", 0.01)]


@pytest.mark.slow
@pytest.mark.parametrize("name, quantize, tolerance", FORMATS, ids=[f[0] for f in FORMATS])
def test_file_predicts_what_the_pruned_model_predicts(
    pruned_cnn, tmp_path, name, quantize, tolerance
):
    pruned, x = pruned_cnn
    path = tmp_path / name
    size = keras_prune.export(pruned, path, quantize=quantize)
    assert size == os.path.getsize(path)
    assert os.listdir(tmp_path) == [name]  # no temporary left beside it
    expected = keras.ops.convert_to_numpy(pruned(x, training=False))  # masked, not stripped
    run = run_onnx if name.endswith(".onnx") else run_litert
    got = run(path, x)
    assert np.max(np.abs(got - expected)) <= tolerance * np.max(np.abs(expected))


@pytest.mark.slow
def test_seed_cnn_files_are_small_and_int8_keeps_its_accuracy(tmp_path):
    """The issue's sizes for the seed CNN at 87.5 %, and int8 accuracy within 0.3 points."""
    (x_train, y_train), (x_test, y_test) = load_dataset("mnist10k")
    keras.utils.set_random_seed(0)
    schedule = keras_prune.PolynomialDecay(0.5, 0.875, begin_step=0, end_step=150, frequency=50)
    pruned = keras_prune.prune_low_magnitude(seed_model(), schedule)
    pruned.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    pruned.fit(
        x_train[:6400],
        y_train[:6400],
        batch_size=64,
        epochs=2,
        verbose=0,
        callbacks=[keras_prune.UpdatePruningStep()],
    )
    float_size = keras_prune.export(pruned, tmp_path / "m.tflite")
    with pytest.warns(UserWarning, match="XNNPack"):  # sparse int8 needs the builtin kernels
        int8_size = keras_prune.export(pruned, tmp_path / "m8.tflite", quantize="int8")
    assert float_size <= 340_000
    assert int8_size <= 180_000
    x, y = x_test[:1000], y_test[:1000]
    float_accuracy = np.mean(np.argmax(run_litert(tmp_path / "m.tflite", x), -1) == y)
    int8_accuracy = np.mean(np.argmax(run_litert(tmp_path / "m8.tflite", x), -1) == y)
    assert float_accuracy > 0.9
    assert abs(float_accuracy - int8_accuracy) <= 0.003


def test_a_channel_pruned_model_is_written_without_its_removed_channels(tmp_path):
    keras.utils.set_random_seed(0)
    model = seed_model()
    masked = keras_prune.prune_channels(model, keras_prune.ConstantSparsity(0.5, 0, frequency=1))
    masked.compile("adam", "categorical_crossentropy")
    x = np.random.default_rng(0).random((8, 28, 28, 1), dtype=np.float32)
    masked.fit(x, np.eye(10)[np.arange(8)], verbose=0, callbacks=[keras_prune.UpdatePruningStep()])
    expected = masked.predict(x, verbose=0)  # the masked model, the independent reference
    keras_prune.export(masked, tmp_path / "m.kps")
    loaded = keras_prune.load(tmp_path / "m.kps")
    assert [layer.filters for layer in loaded.layers if hasattr(layer, "filters")] == [16, 32]
    assert loaded.get_layer("dense1").units == 128
    np.testing.assert_allclose(loaded.predict(x, verbose=0), expected, rtol=1e-4, atol=1e-6)
    if ON_TENSORFLOW:  # in-process conversion keeps this quick
        keras_prune.export(masked, tmp_path / "m.tflite")
        np.testing.assert_allclose(run_litert(tmp_path / "m.tflite", x), expected, atol=1e-5)
        assert os.path.getsize(tmp_path / "m.tflite") < 0.3 * 4 * model.count_params()


def _several_inputs():
    """Inputs of three widths, named out of order and unnamed (LiteRT orders a file's
    inputs as it likes), and a dict-input model with dict outputs (KerasHub's form)
    and a constant tensor in its graph (Gemma's `x * sqrt(d)`: Keras's ONNX export
    makes it a file input)."""
    zeta, alpha, unnamed = (
        keras.Input((4,), name="zeta"),
        keras.Input((3,), name="alpha"),
        keras.Input((2,)),
    )
    joined = keras.layers.Concatenate()(
        [keras.layers.Dense(5)(zeta), keras.layers.Dense(5)(alpha), unnamed]
    )
    listed = keras.Model(
        [zeta, alpha, unnamed], [keras.layers.Dense(2)(joined), keras.layers.Dense(1)(joined)]
    )
    keyed = keras.Model(
        {"zeta": zeta, "alpha": alpha},
        {
            "z": keras.layers.Dense(2)(keras.layers.Concatenate()([zeta, alpha]))
            * keras.ops.sqrt(keras.ops.convert_to_tensor(4.0)),
            "a": keras.layers.Dense(3)(alpha),
        },
    )
    return listed, keyed


@pytest.mark.slow
def test_a_model_with_several_inputs_is_fed_by_name(tmp_path):
    keras.utils.set_random_seed(0)
    listed, keyed = _several_inputs()
    rng = np.random.default_rng(0)
    x = [rng.random((3, n), dtype=np.float32) for n in (4, 3, 2)]
    # On JAX and torch each file costs a TensorFlow process: one of each model.
    listed_formats = (".tflite", ".onnx") if ON_TENSORFLOW else (".tflite",)
    keyed_formats = (".tflite", ".onnx") if ON_TENSORFLOW else (".onnx",)
    names = [spec.name for spec in listed.inputs]
    if not ON_TENSORFLOW:  # the converting process names an unnamed input by its layer
        (names[2],) = [
            layer.name
            for layer in listed.layers
            if isinstance(layer, keras.layers.InputLayer) and layer.name not in names
        ]
    for suffix in listed_formats:
        keras_prune.export(listed, tmp_path / f"listed{suffix}", check_inputs=x)
        got = runtimes.run(tmp_path / f"listed{suffix}", dict(zip(names, x)))
        for mine, theirs in zip(got, listed.predict(x, verbose=0)):
            np.testing.assert_allclose(mine, theirs, atol=1e-5)
        with pytest.raises(ValueError, match="`inputs` must be a dict for a file with several"):
            runtimes.run(tmp_path / f"listed{suffix}", x)
        # float64 arrays are cast, as `predict` casts them; a wrong shape is named.
        wide = {name: array.astype("float64") for name, array in zip(names, x)}
        for mine, theirs in zip(runtimes.run(tmp_path / f"listed{suffix}", wide), got):
            np.testing.assert_array_equal(mine, theirs)
        wrong = dict(wide, **{names[1]: np.zeros((3, 4))})
        message = rf"`inputs\['{names[1]}'\]` has shape \(3, 4\); the file takes \(any, 3\)"
        with pytest.raises(ValueError, match=message):
            runtimes.run(tmp_path / f"listed{suffix}", wrong)
    with pytest.raises(FileNotFoundError, match="`path` .*missing.onnx' is not a file"):
        runtimes.run(tmp_path / "missing.onnx", x[0])
    keyed_x = {"zeta": x[0], "alpha": x[1]}  # as `predict` takes them
    expected = keyed.predict(keyed_x, verbose=0)  # {"a", "z"}: sorted, as the file's
    for suffix in keyed_formats:
        assert keras_prune.export(keyed, tmp_path / f"keyed{suffix}", check_inputs=keyed_x) > 0
        got = runtimes.run(tmp_path / f"keyed{suffix}", keyed_x)
        for mine, theirs in zip(got, [expected["a"], expected["z"]]):
            np.testing.assert_allclose(mine, theirs, atol=1e-5)
    with pytest.raises(ValueError, match=r"must have the model's input names \['alpha', 'zeta'\]"):
        keras_prune.export(keyed, tmp_path / "bad.onnx", check_inputs={"zeta": x[0]})


@pytest.mark.skipif(not ON_TENSORFLOW, reason="int8 .tflite files are written on TensorFlow here")
def test_int8_names_the_kernels_that_litert_keeps_in_float32(tmp_path):
    small, large = runtimes.LITERT_INT8_MIN_ENTRIES - 32, runtimes.LITERT_INT8_MIN_ENTRIES + 30
    model = keras.Sequential(
        [
            keras.Input((32,)),
            keras.layers.Dense(small // 32, name="small"),  # 31 x 32 = 992 entries
            keras.layers.Dense(large // 31, name="large"),  # 34 x 31 = 1054 entries
        ]
    )
    with pytest.warns(UserWarning) as caught:
        keras_prune.export(model, tmp_path / "m8.tflite", quantize="int8")
    (message,) = [str(w.message) for w in caught if "stores only weights" in str(w.message)]
    assert message == (
        "m8.tflite: LiteRT's converter stores only weights of 1024 entries or more as int8, "
        "so 1 of its 2 kernels stay float32: small/kernel (992)."
    )
    interpreter = Interpreter(model_path=str(tmp_path / "m8.tflite"))
    stored = {
        tuple(d["shape"]): d["dtype"]
        for d in interpreter.get_tensor_details()
        if len(d["shape"]) == 2
    }
    assert stored[(34, 31)] == np.int8 and stored[(31, 32)] == np.float32  # LiteRT's own record


def test_bad_arguments_name_the_argument(tmp_path):
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    with pytest.raises(ValueError, match="`path` must end in one of.*got '.*m.h5'"):
        keras_prune.export(model, tmp_path / "m.h5")
    with pytest.raises(ValueError, match="`path` must end in one of"):
        keras_prune.export(model, tmp_path / "model")
    with pytest.raises(ValueError, match=r"`quantize` for a .onnx file must be one of \(None,\)"):
        keras_prune.export(model, tmp_path / "m.onnx", quantize="int8")
    with pytest.raises(ValueError, match="`quantize` for a .kps file"):
        keras_prune.export(model, tmp_path / "m.kps", quantize="float16")
    with pytest.raises(ValueError, match="`quantize` for a .tflite file"):
        keras_prune.export(model, tmp_path / "m.tflite", quantize="int4")
    with pytest.raises(ValueError, match="`path`.*not a writable directory"):
        keras_prune.export(model, tmp_path / "missing" / "m.tflite")
    with pytest.raises(ValueError, match="`check_inputs` must give one array per model input"):
        keras_prune.export(model, tmp_path / "m.tflite", check_inputs=[np.zeros((2, 4))] * 2)
    with pytest.raises(ValueError, match="`check_inputs` applies to .tflite"):
        keras_prune.export(model, tmp_path / "m.kps", check_inputs=np.zeros((2, 4)))
    ragged = keras.Sequential([keras.Input((None, 4)), keras.layers.Dense(3)])
    with pytest.raises(ValueError, match="`check_inputs`: the model input .* unknown dimensions"):
        keras_prune.export(ragged, tmp_path / "m.onnx")
    assert os.listdir(tmp_path) == []


def test_a_missing_runtime_is_named_before_any_work(tmp_path, monkeypatch):
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    real = runtimes.importlib.util.find_spec
    for module in ("onnxruntime", "tf2onnx"):
        monkeypatch.setattr(
            runtimes.importlib.util,
            "find_spec",
            lambda name, module=module: None if name == module else real(name),
        )
        with pytest.raises(ImportError, match=f"`{module}`: pip install {module}$"):
            keras_prune.export(model, tmp_path / "m.onnx")
    assert os.listdir(tmp_path) == []


def test_a_channel_pruned_model_is_not_shrunk_before_the_path_is_checked(tmp_path, monkeypatch):
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8), keras.layers.Dense(3)])
    masked = keras_prune.prune_channels(model, keras_prune.ConstantSparsity(0.5, 0, frequency=1))
    monkeypatch.setattr(runtimes, "shrink", lambda _: pytest.fail("shrank before the checks"))
    with pytest.raises(ValueError, match="`path`.*not a writable directory"):
        keras_prune.export(masked, tmp_path / "missing" / "m.onnx")


@pytest.mark.slow
@pytest.mark.skipif(not ON_TENSORFLOW, reason="in-process conversion; the child is tested above")
def test_a_file_that_predicts_otherwise_is_not_written(tmp_path, monkeypatch):
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    path = tmp_path / "m.tflite"
    path.write_bytes(b"old")
    run = runtimes._run
    monkeypatch.setattr(runtimes, "_run", lambda *args: [y + 1.0 for y in run(*args)])
    with pytest.raises(ValueError, match="predicts output 0 differently.*nothing was written"):
        keras_prune.export(model, path)
    assert path.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["m.tflite"]


@pytest.mark.slow
@pytest.mark.skipif(not ON_TENSORFLOW, reason="in-process conversion keeps this test quick")
def test_a_layer_litert_cannot_convert_is_named(tmp_path):
    inputs = keras.Input((4,))
    odd = keras.layers.Lambda(keras.ops.erfinv, name="odd_layer")(keras.layers.Dense(4)(inputs))
    with pytest.raises(
        ValueError, match=r"could not convert .* \(layers named in the error: odd_layer\)"
    ):
        keras_prune.export(keras.Model(inputs, odd), tmp_path / "m.tflite")
    assert os.listdir(tmp_path) == []


def test_a_looping_recurrent_layer_is_named_with_what_runs_in_litert(tmp_path):
    # TensorFlow's converter keeps an LSTM's loop as TensorFlow (Flex) ops,
    # which LiteRT's builtin interpreter lacks; unrolled, it converts.
    def model(unroll):
        lstm = keras.layers.LSTM(3, unroll=unroll, name="lstm")
        return keras.Sequential([keras.Input((4, 2)), lstm, keras.layers.Dense(2)])

    with pytest.raises(ValueError, match=r"does not run in ai-edge-litert .* loop: lstm \(LSTM\); "
                       r"build them with `unroll=True`"):  # fmt: skip
        keras_prune.export(model(unroll=False), tmp_path / "loop.tflite")
    assert os.listdir(tmp_path) == []
    assert keras_prune.export(model(unroll=True), tmp_path / "unrolled.tflite") > 0


@pytest.mark.slow
@pytest.mark.skipif(not ON_TENSORFLOW, reason="in-process conversion keeps this test quick")
def test_tensorflow_ops_left_in_a_litert_file_are_named_with_their_layers(tmp_path):
    # keras.io's U-Net upsamples twice; TensorFlow's converter keeps the 1x1
    # convolution after the second nearest UpSampling2D as a TensorFlow op.
    L = keras.layers
    inputs = keras.Input((8, 8, 3))
    x = previous = L.Conv2D(4, 1)(inputs)
    for i in range(2):
        x = L.UpSampling2D(2)(L.Conv2D(4, 3, padding="same")(x))
        skip = L.Conv2D(4, 1, name=f"skip_{i}")(L.UpSampling2D(2, name=f"up_{i}")(previous))
        x = previous = L.add([x, skip])
    model = keras.Model(inputs, L.Conv2D(2, 1)(x))
    with pytest.raises(ValueError) as raised:
        keras_prune.export(model, tmp_path / "m.tflite")
    assert "(layers named in the error: skip_1)" in str(raised.value)
    assert re.search(
        r"The converter kept TensorFlow ops that LiteRT's builtin kernels lack \(Conv2D\) in the "
        r"layers named\. A convolution after a nearest UpSampling2D \((up_\w+, ){2}up_\w+\) "
        r"can be one: the converter does not know the height of its output \(bilinear "
        r"converts\)\. Export to \.onnx, or change those layers\.$",
        str(raised.value),
    )
    assert os.listdir(tmp_path) == []
    keras_prune.export(model, tmp_path / "m.onnx")  # checked by ONNX Runtime
    x = np.random.default_rng(0).random((2, 8, 8, 3), dtype=np.float32)
    np.testing.assert_allclose(
        run_onnx(tmp_path / "m.onnx", x), model.predict(x, verbose=0), atol=1e-5
    )


@pytest.mark.slow
@pytest.mark.skipif(not ON_TENSORFLOW, reason="in-process conversion keeps this test quick")
def test_random_augmentation_layers_export_as_what_they_do_at_inference(tmp_path, caplog):
    # keras.io's "image classification from scratch" puts them in a Sequential of their
    # own; through Keras's own ONNX export, ONNX Runtime refused their random ops.
    augment = keras.Sequential(
        [keras.layers.RandomFlip(name="flip"), keras.layers.RandomRotation(0.1, name="turn")],
        name="augment",
    )
    inputs = keras.Input((6, 6, 1))
    model = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.Flatten()(augment(inputs))))
    x = np.random.default_rng(0).random((4, 6, 6, 1), dtype=np.float32)
    keras_prune.export(model, tmp_path / "m.onnx", check_inputs=x)
    np.testing.assert_allclose(
        run_onnx(tmp_path / "m.onnx", x), model.predict(x, verbose=0), atol=1e-5
    )
    # tf2onnx's freezing logs TensorFlow 1 deprecations; the user is not told of them.
    assert [r.getMessage() for r in caplog.records if "deprecated" in r.getMessage()] == []


LAYERS_MODULE = """
import keras


@keras.saving.register_keras_serializable("{name}")
class Block(keras.layers.Layer):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.dense = keras.layers.Dense(4, activation="relu")

    def call(self, x):
        return self.dense(x) * 2.0


@keras.saving.register_keras_serializable("{name}")
class Net(keras.Model):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.hidden = keras.layers.Dense(8, activation="relu")
        self.out = keras.layers.Dense(2)

    def call(self, x, training=None):
        return self.out(self.hidden(x))
"""


@pytest.mark.slow
def test_a_model_with_your_own_layers_exports_from_any_backend(tmp_path, monkeypatch):
    # On JAX and torch the converting process imports the module of each of
    # the model's own layer classes; a class in `__main__` it cannot import.
    name = f"user_layers_{os.getpid()}"
    (tmp_path / f"{name}.py").write_text(LAYERS_MODULE.format(name=name))
    monkeypatch.syspath_prepend(str(tmp_path))
    block = __import__(name).Block
    inputs = keras.Input((3,))
    model = keras.Model(inputs, keras.layers.Dense(2)(block()(inputs)))
    pruned = keras_prune.prune_low_magnitude(model, keras_prune.ConstantSparsity(0.5, 0))
    assert keras_prune.export(pruned, tmp_path / "own.onnx") > 0  # it checks the predictions
    x = np.random.default_rng(0).random((4, 3)).astype("float32")
    np.testing.assert_allclose(
        run_onnx(tmp_path / "own.onnx", x), model.predict(x, verbose=0), atol=1e-5
    )
    # A subclassed model has no symbolic inputs: it is exported with the input it was
    # built on, or with `check_inputs`' shape and dtype.
    net = __import__(name).Net()
    net(x)
    pruned = keras_prune.prune_low_magnitude(net, keras_prune.ConstantSparsity(0.5, 0))
    for check_inputs in (None, x) if ON_TENSORFLOW else (x,):
        keras_prune.export(pruned, tmp_path / "net.tflite", check_inputs=check_inputs)
        np.testing.assert_allclose(
            run_litert(tmp_path / "net.tflite", x), pruned.predict(x, verbose=0), atol=1e-5
        )
    with pytest.raises(ValueError, match=r"`check_inputs` for a subclassed model \(Net\) must"):
        keras_prune.export(pruned, tmp_path / "net.onnx", check_inputs=[x, x])
    if ON_TENSORFLOW:
        return

    class InMain(block):  # as if defined in the script being run
        pass

    InMain.__module__ = "__main__"
    model = keras.Model(inputs, InMain(name="in_main")(inputs))
    with pytest.raises(ValueError, match="defined in `__main__` .*: InMain. On (jax|torch) a"):
        keras_prune.export(model, tmp_path / "main.onnx")


def test_inputs_are_cast_as_predict_casts_them_unless_a_cast_would_change_them():
    takes = {"ids": (np.dtype("int32"), ["batch", 3])}  # as onnxruntime describes an input
    fed = runtimes._conformed({"ids": np.array([[1.0, 2.0, 3.0]])}, takes)["ids"]
    assert fed.dtype == np.int32 and fed.tolist() == [[1, 2, 3]]
    # A fraction into an integer input (a quantized image as floats in [0, 1]).
    with pytest.raises(TypeError, match=r"`inputs\['ids'\]` holds float64; the file takes int32"):
        runtimes._conformed({"ids": np.array([[0.5, 1.0, 2.0]])}, takes)
    with pytest.raises(TypeError, match="holds <U1"):
        runtimes._conformed({"ids": np.array([["a", "b", "c"]])}, takes)

"""Files that devices run: LiteRT (`.tflite`) and ONNX (`.onnx`), checked by their own runtimes.

`export(model, path)` picks the format from `path`'s suffix:

| suffix | format | `quantize` |
|---|---|---|
| `.kps` | keras_prune's compact sparse file (`kps.export`) | None, "int8" |
| `.tflite` | LiteRT, zeros stored sparse (`EXPERIMENTAL_SPARSITY`) | None, "float16", "int8" |
| `.onnx` | ONNX (dense: ONNX has no sparse weight encoding) | None |

The model is stripped of its pruning wrappers first. TensorFlow converts
both formats (`keras.Model.export`), in this process on the TensorFlow
backend and in a TensorFlow-backend child process on JAX and torch, so a
model trained on any backend exports. The file is written under a
temporary name, then run by its runtime (`ai-edge-litert`, `onnxruntime`)
on a few inputs; only if its predictions match the Keras model's (within
`TOLERANCE` of the largest output) is it renamed to `path`. Otherwise,
or if anything fails, no file is left.

Example:

>>> keras_prune.export(pruned, "model.tflite", quantize="int8")
174360
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import math
import os
import re
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Sequence
from typing import Any

import keras
import numpy as np

from keras_prune import _backend, _files, _keras, _validation, kps
from keras_prune.prune import pruned_layers, strip_pruning
from keras_prune.structured.channel_mask import channel_masks
from keras_prune.structured.shrink import shrink

QUANTIZE = {".kps": (None, "int8"), ".tflite": (None, "float16", "int8"), ".onnx": (None,)}

# Largest allowed |runtime - Keras| as a fraction of the largest |Keras output|:
# float32 differs by the order of operations only; float16 weights keep 11
# bits; int8 weights with int8 activations quantized on the fly (LiteRT's
# dynamic-range kernels) lose most.
TOLERANCE = {None: 1e-4, "float16": 1e-2, "int8": 5e-2}

# LiteRT's converter stores a weight as int8 only from this many entries on
# (its dynamic-range quantizer's default minimum, not settable from Python).
LITERT_INT8_MIN_ENTRIES = 1024
_RUNTIME = {".tflite": "ai_edge_litert", ".onnx": "onnxruntime"}
# What writing each format needs: its runtime, TensorFlow (the converter) and,
# for ONNX, the dependencies of Keras's ONNX exporter.
_NEEDS = {
    ".tflite": ("ai_edge_litert", "tensorflow"),
    ".onnx": ("onnxruntime", "tensorflow", "tf2onnx", "onnx"),
}
_PIP = {
    "ai_edge_litert": "ai-edge-litert",
    "onnxruntime": "onnxruntime",
    "tensorflow": "tensorflow-cpu",
    "tf2onnx": "tf2onnx",
    "onnx": "onnx",
}
_CHECK_BATCH = 4


def export(
    model: keras.Model,
    path: str | os.PathLike,
    quantize: str | None = None,
    check_inputs: Any = None,
) -> int:
    """Writes `model`, stripped of pruning, as the file `path`'s suffix names; returns its size.

    A model from `prune_channels` is written shrunk (`shrink(model)`): its
    removed channels are not in the file.

    Args:
        model: a built model, pruned or not. A subclassed model (whose
            config re-creates it) becomes a `.tflite` or `.onnx` file of one
            input, shaped as `check_inputs` or as the input it was built on.
        path: the file to write: `.kps`, `.tflite` or `.onnx`.
        quantize: None, or "int8" (`.kps`, `.tflite`) or "float16"
            (`.tflite`): the weights' storage. Zeros stay exact zeros.
        check_inputs: inputs (an array; for several model inputs a list in
            their order or a dict by input name, as `predict` takes them)
            on which a `.tflite` or `.onnx` file must predict what the Keras
            model predicts. Default: 4 samples drawn uniformly from [0, 1)
            (0 or 1 for integer inputs), which needs every input dimension
            but the batch to be known.

    Returns:
        The number of bytes written.

    Example:

    >>> keras_prune.export(pruned, "model.tflite")       # float32, sparse-encoded
    >>> keras_prune.export(pruned, "model_int8.tflite", quantize="int8")
    >>> keras_prune.export(pruned, "model.onnx")
    """
    if not isinstance(model, keras.Model):
        raise TypeError(f"`model` must be a keras.Model; got {type(model).__name__}.")
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"`path` must be a str or os.PathLike; got {type(path).__name__}.")
    path = os.fspath(path)
    if os.path.isdir(path):
        raise ValueError(f"`path` must be a file name; {path!r} is a directory.")
    suffix = os.path.splitext(path)[1].lower()
    if suffix not in QUANTIZE:
        raise ValueError(
            f"`path` must end in one of {sorted(QUANTIZE)} (the format); got {path!r}."
        )
    if quantize not in QUANTIZE[suffix]:
        raise ValueError(
            f"`quantize` for a {suffix} file must be one of {QUANTIZE[suffix]}; got {quantize!r}."
        )
    if suffix == ".kps" and check_inputs is not None:
        raise ValueError("`check_inputs` applies to .tflite and .onnx files; .kps is exact.")
    if not model.built:
        raise ValueError("`model` must be built (call it on data or give it an Input) to export.")
    if suffix != ".kps":  # kps.export checks its own path
        directory = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(directory) or not os.access(directory, os.W_OK):
            raise ValueError(f"`path`: {directory!r} is not a writable directory.")
        lacking = missing(suffix)
        if lacking:
            raise ImportError(f"Writing a {suffix} file needs {lacking}")
        if keras.backend.backend() != "tensorflow":
            _check_importable(model)
    if channel_masks(model):  # from prune_channels: the file holds the smaller layers
        model = shrink(model)
    if suffix == ".kps":
        return kps.export(model, path, quantize)
    if any(True for _ in pruned_layers(model)):
        model = strip_pruning(model)
    if not _keras.has_graph(model):  # a subclassed model: the converters need its inputs
        model = _with_inputs(model, check_inputs)
    inputs = _inputs(model, check_inputs)
    outputs = model(_backend.packed_inputs(model, inputs), training=False)
    expected = [keras.ops.convert_to_numpy(y) for y in keras.tree.flatten(outputs)]
    with tempfile.TemporaryDirectory() as scratch, _files.atomic_path(path, suffix) as temporary:
        _convert(model, temporary, suffix, quantize, inputs, scratch)
        try:
            outputs = _run(temporary, suffix, inputs, os.path.basename(path), _input_names(model))
        except Exception as error:  # the runtime refused the file (ONNX Runtime's own classes)
            flex = _flex_ops(temporary) if "Select TensorFlow op" in str(error) else []
            located = str(error) + "".join(f" {name}/" for _, name in flex)
            raise ValueError(
                f"the written {suffix} file does not run in {_PIP[_RUNTIME[suffix]]} "
                f"({_named_layers(model, located)}): {_first_line(error)}; nothing was "
                f"written.{_flex_hint(model, flex)}"
            ) from error
        _compare(expected, outputs, quantize, suffix)
    if suffix == ".tflite" and quantize == "int8":
        _warn_left_float(model, os.path.basename(path))
    return os.path.getsize(path)


def _warn_left_float(model: keras.Model, name: str) -> None:
    """Warns that LiteRT's int8 conversion kept the model's smaller kernels in float32."""
    kernels = [w for w in model.weights if len(w.shape) >= 2]
    small = [w for w in kernels if math.prod(w.shape) < LITERT_INT8_MIN_ENTRIES]
    if not small:
        return
    prefix = f"{model.name}/"
    listed = _validation.first_few(
        [f"{w.path.removeprefix(prefix)} ({math.prod(w.shape)})" for w in small], shown=4
    )
    stored = (
        "none of its kernels is int8: the file is as large as a float32 one"
        if len(small) == len(kernels)
        else f"{len(small)} of its {len(kernels)} kernels stay float32"
    )
    warnings.warn(
        f"{name}: LiteRT's converter stores only weights of {LITERT_INT8_MIN_ENTRIES} entries "
        f"or more as int8, so {stored}: {listed}.",
        stacklevel=3,
    )


def missing(suffix: str) -> str | None:
    """What writing a `suffix` (".tflite", ".onnx") file lacks here, as a pip line;
    None if nothing."""
    for module in _NEEDS[suffix]:
        if importlib.util.find_spec(module) is None:
            return f"`{module}`: pip install {_PIP[module]}"
    return None


def run(path: str | os.PathLike, inputs: Any) -> list[np.ndarray]:
    """The outputs of the `.tflite` or `.onnx` file `path` on `inputs`, by its own runtime.

    `inputs` is an array, or for a file with several inputs a dict of
    arrays by its input names (the Keras model's input names; files do not
    keep the order of the model's inputs). Numbers are cast to the type
    the file takes, as Keras casts what `predict` gets (float64 to
    float32); an array of another shape than the file's input is refused,
    naming it. LiteRT runs the file with its builtin kernels, which run every file
    `export` writes (XNNPack refuses sparse int8 ones).

    Example:

    >>> probabilities, = keras_prune.runtimes.run("model.tflite", x_test)
    """
    path = os.fspath(_validation.instance(path, "path", (str, os.PathLike), "a str or os.PathLike"))
    suffix = os.path.splitext(path)[1].lower()
    if suffix not in _RUNTIME:
        raise ValueError(f"`path` must end in .tflite or .onnx; got {path!r}.")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"`path` {path!r} is not a file.")
    if isinstance(inputs, dict):
        arrays: list[np.ndarray] | dict[str, np.ndarray] = {
            str(k): np.asarray(x) for k, x in inputs.items()
        }
    else:
        arrays = list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]
        arrays = [np.asarray(x) for x in arrays]
    if suffix == ".onnx":
        return _run(path, suffix, arrays, os.path.basename(path))
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    return _run_litert(
        Interpreter(
            model_path=path,
            experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
        ),
        arrays,
    )


def _with_inputs(model: keras.Model, check_inputs: Any) -> keras.Model:
    """A subclassed `model` as a Functional model of one input, shaped as `check_inputs`
    or, without them, as the input `model` was built on (in its input dtype)."""
    if check_inputs is not None:
        if not hasattr(check_inputs, "shape"):
            raise ValueError(
                f"`check_inputs` for a subclassed model ({type(model).__name__}) must be one "
                "array; for several inputs, export a Functional model that calls it."
            )
        array = np.asarray(check_inputs)
        inputs = keras.Input(shape=array.shape[1:], dtype=str(array.dtype))
    else:
        shape = (model.get_build_config() or {}).get("input_shape")
        if not (
            isinstance(shape, (tuple, list))
            and all(isinstance(d, (int, type(None))) for d in shape)
        ):
            raise ValueError(
                f"`model` ({type(model).__name__}) is a subclassed model with no single input "
                "shape to export it with: pass `check_inputs` (one array), or export a "
                "Functional model that calls it (`keras.Model(inputs, model(inputs))`)."
            )
        inputs = keras.Input(shape=tuple(shape[1:]), dtype=model.input_dtype)
    return keras.Model(inputs, model(inputs), name=model.name)


def _inputs(model: keras.Model, check_inputs: Any) -> list[np.ndarray]:
    """The check's inputs, one array per model input, in the model's input dtypes."""
    specs = model.inputs
    if check_inputs is None:
        rng = np.random.default_rng(0)
        arrays = []
        for spec in specs:
            if any(d is None for d in spec.shape[1:]):
                raise ValueError(
                    f"`check_inputs`: the model input {spec.name!r} has shape {spec.shape}, "
                    "with unknown dimensions besides the batch; pass inputs to check with."
                )
            shape = (_CHECK_BATCH, *spec.shape[1:])
            if "int" in str(spec.dtype):
                arrays.append(rng.integers(0, 2, shape).astype(spec.dtype))
            else:
                arrays.append(rng.random(shape).astype(spec.dtype))
        return arrays
    if isinstance(check_inputs, dict):  # as `predict` takes them: by input name
        names = [spec.name for spec in specs]
        if sorted(check_inputs) != sorted(names):
            raise ValueError(
                f"`check_inputs` as a dict must have the model's input names {sorted(names)} "
                f"as keys; got {sorted(map(str, check_inputs))}."
            )
        check_inputs = [check_inputs[name] for name in names]
    given = list(check_inputs) if isinstance(check_inputs, (list, tuple)) else [check_inputs]
    if len(given) != len(specs):
        raise ValueError(
            f"`check_inputs` must give one array per model input ({len(specs)}); got {len(given)}."
        )
    return [np.asarray(x, dtype=spec.dtype) for x, spec in zip(given, specs)]


def _convert(
    model: keras.Model,
    path: str,
    suffix: str,
    quantize: str | None,
    inputs: list[np.ndarray],
    scratch: str,
) -> None:
    """Writes the file with TensorFlow's converter, in a TensorFlow-backend process."""
    fmt = suffix[1:]
    if keras.backend.backend() == "tensorflow":
        try:
            if fmt == "onnx":
                _keras.patch_tf2onnx()
            _backend.convert_for_runtime(model, path, fmt, quantize)
        except Exception as error:  # the converters raise their own types (ConverterError, ...)
            raise ValueError(
                f"TensorFlow could not convert the model to {suffix} "
                f"({_named_layers(model, str(error))}): {_first_line(error)}"
            ) from error
        return
    saved, arrays = os.path.join(scratch, "model.keras"), os.path.join(scratch, "inputs.npz")
    model.save(saved)
    np.savez(arrays, *inputs)
    # Keras finds a custom class only once its module is imported: the child
    # imports the modules of the model's layers, from this process's path
    # (which holds $PYTHONPATH's entries already).
    paths = [entry for entry in sys.path if entry and os.path.isdir(entry)]
    env = dict(
        os.environ,
        KERAS_BACKEND="tensorflow",
        TF_CPP_MIN_LOG_LEVEL="3",
        PYTHONPATH=os.pathsep.join(paths),
    )
    command = [
        sys.executable,
        "-m",
        "keras_prune.runtimes",
        saved,
        arrays,
        path,
        fmt,
        str(quantize),
        *_layer_modules(model),
    ]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode:
        lines = [line.strip() for line in done.stderr.splitlines() if line.strip()]
        # The child's exception, from its "SomeError: ..." line (Keras's run over several).
        raised = [i for i, line in enumerate(lines) if re.match(r"[\w.]+(Error|Exception): ", line)]
        shown = lines[raised[-1] : raised[-1] + 3] if raised else lines[-3:]
        raise ValueError(
            f"TensorFlow could not convert the model to {suffix} "
            f"({_named_layers(model, done.stderr)}): {' | '.join(shown)}"
            f"{_unimportable_hint(done.stderr)}"
        )


def _layer_modules(model: keras.Model) -> list[str]:
    """The modules that define `model`'s own layer classes (not Keras's or KerasHub's,
    which Keras imports itself), for the converting process to import."""
    modules = {type(layer).__module__ for layer in _keras.flatten_layers(model, include_self=True)}
    return sorted(
        module
        for module in modules
        if module.split(".")[0] not in ("keras", "keras_hub", "keras_prune", "__main__")
    )


def _check_importable(model: keras.Model) -> None:
    """Refuses layer classes that the TensorFlow process converting the model cannot
    import: those defined in `__main__` (the script being run, a notebook)."""
    local = sorted(
        {
            type(layer).__name__
            for layer in _keras.flatten_layers(model, include_self=True)
            if type(layer).__module__ == "__main__"
        }
    )
    if local:
        raise ValueError(
            f"`model` has layers whose classes are defined in `__main__` (the script or "
            f"notebook you run): {', '.join(local)}. On {keras.backend.backend()} a TensorFlow "
            "process converts the model and cannot import them: define them in a module it "
            "can import, registered with keras.saving.register_keras_serializable, or export "
            "on the TensorFlow backend."
        )


def _unimportable_hint(message: str) -> str:
    """What to do when the converting process could not find a custom class."""
    found = re.search(r"Could not locate class '([^']+)'", message)
    if not found:
        return ""
    return (
        f" The TensorFlow process that converts the model could not find `{found.group(1)}`: "
        "define your layers in a module it can import (not in the script you run, "
        "`__main__`), registered with keras.saving.register_keras_serializable, or export "
        "on the TensorFlow backend."
    )


def _flex_ops(path: str) -> list[tuple[str, str]]:
    """The TensorFlow ops (Flex) that the converter left in the `.tflite` file `path`:
    each op's name ("Conv2D") and its first output's tensor name ("model/layer/op")."""
    from ai_edge_litert import schema_py_generated as schema  # LiteRT's flatbuffer schema

    with open(path, "rb") as handle:
        model = schema.Model.GetRootAsModel(handle.read(), 0)
    codes = [model.OperatorCodes(i).CustomCode() or b"" for i in range(model.OperatorCodesLength())]
    found = []
    for g in range(model.SubgraphsLength()):
        graph = model.Subgraphs(g)
        for i in range(graph.OperatorsLength()):
            operator = graph.Operators(i)
            code = codes[operator.OpcodeIndex()].decode("utf-8", "replace")
            if code.startswith("Flex") and operator.OutputsLength():
                tensor = graph.Tensors(operator.Outputs(0)).Name() or b""
                found.append((code.removeprefix("Flex"), tensor.decode("utf-8", "replace")))
    return found


def _flex_hint(model: keras.Model, flex: list[tuple[str, str]]) -> str:
    """What to do when TensorFlow's converter fell back to the TensorFlow ops `flex`,
    which LiteRT's builtin interpreter does not have: a recurrent layer's loop, most often."""
    if not flex:
        return ""
    kinds = ", ".join(sorted({kind for kind, _ in flex}))
    recurrent = [
        f"{layer.name} ({type(layer).__name__})"
        for layer in _keras.flatten_layers(model)
        if isinstance(layer, keras.layers.RNN) and not layer.unroll
    ]
    if recurrent:
        return (
            f" The converter kept TensorFlow ops that LiteRT's builtin kernels lack ({kinds})."
            f" Recurrent layers that loop: {', '.join(recurrent)}; build them with "
            "`unroll=True` (a fixed sequence length), or export to .onnx."
        )
    upsampling = [
        layer.name
        for layer in _keras.flatten_layers(model)
        if isinstance(layer, keras.layers.UpSampling2D) and layer.interpolation == "nearest"
    ]
    cause = (
        f" A convolution after a nearest UpSampling2D ({', '.join(upsampling[:3])}) can be "
        "one: the converter does not know the height of its output (bilinear converts)."
        if upsampling
        else ""
    )
    return (
        f" The converter kept TensorFlow ops that LiteRT's builtin kernels lack ({kinds}) "
        f"in the layers named.{cause} Export to .onnx, or change those layers."
    )


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0][:300]


def _named_layers(model: keras.Model, message: str) -> str:
    """The model's layers that the converter's op locations name ("model/layer_1/op")."""
    names = [layer.name for layer in model.layers if _named_in(layer, message)]
    return "layers named in the error: " + ", ".join(names) if names else "no layer named"


def _named_in(layer: keras.layers.Layer, message: str) -> bool:
    """Whether a converter's op location in `message` ("model/layer_1/op") names `layer`."""
    return re.search(rf"(^|[/\"' ]){re.escape(layer.name)}(_\d+)?/", message) is not None


Inputs = list[np.ndarray] | dict[str, np.ndarray]


def _input_names(model: keras.Model) -> list[list[str]]:
    """The names a file written from `model` may give its inputs, in the model's order:
    its input tensors' (converted here), or its input layers' (converted in a
    TensorFlow process that loaded the model: an unnamed `keras.Input` is
    "keras_tensor_3" here, "input_layer_3" there)."""
    tensors = [spec.name for spec in model.inputs]
    layers = {
        id(layer.output): layer.name
        for layer in model.layers
        if isinstance(layer, keras.layers.InputLayer)
    }
    return [tensors, [layers.get(id(spec), spec.name) for spec in model.inputs]]


def _feed(
    names: list[str], inputs: Inputs, candidates: Sequence[list[str]] = ()
) -> dict[str, np.ndarray]:
    """`inputs` by the file's input `names`: a dict by its keys; a list by the first of
    `candidates` (the model's input names, in the model's order) that the file has,
    else in the file's order. A file orders its inputs as it likes (LiteRT: not as
    the model), so only names pair several inputs safely."""
    if not isinstance(inputs, dict):
        for candidate in candidates:
            if sorted(candidate) == sorted(names) and len(set(candidate)) == len(candidate):
                return dict(zip(candidate, inputs))
        if len(names) > 1 and not candidates:
            raise ValueError(
                f"`inputs` must be a dict for a file with several inputs, by their names "
                f"{sorted(names)}: a file does not keep the order of the model's inputs."
            )
        if len(inputs) != len(names) and candidates:  # from `export`
            known = {name for candidate in candidates for name in candidate}
            extra = ", ".join(name for name in names if name not in known)
            raise ValueError(
                f"the file has {len(names)} inputs, the model {len(inputs)}: the converter "
                f"made inputs of values it did not fold into constants ({extra})"
            )
        if len(inputs) != len(names):
            raise ValueError(f"`inputs` must give {len(names)} arrays; got {len(inputs)}.")
        return dict(zip(names, inputs))
    if sorted(inputs) != sorted(names):
        raise ValueError(
            f"`inputs` as a dict must have the file's input names {sorted(names)} as keys; "
            f"got {sorted(inputs)}."
        )
    return inputs


def _run(
    path: str, suffix: str, inputs: Inputs, name: str, candidates: Sequence[list[str]] = ()
) -> list[np.ndarray]:
    """The file's predictions on `inputs`, by its own runtime (see `_feed`)."""
    if suffix == ".onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
        takes = {node.name: (_onnx_dtype(node.type), node.shape) for node in session.get_inputs()}
        feed = _conformed(_feed(list(takes), inputs, candidates), takes)
        return list(session.run(None, feed))
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    try:
        return _run_litert(Interpreter(model_path=path), inputs, candidates)
    except RuntimeError as error:  # XNNPack, LiteRT's default CPU delegate, refused a kernel
        outputs = _run_litert(
            Interpreter(
                model_path=path,
                experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
            ),
            inputs,
            candidates,
        )
        warnings.warn(
            f"{name}: LiteRT's default XNNPack delegate cannot run this file "
            f"({str(error).splitlines()[0][:120]}); it runs with LiteRT's builtin kernels: "
            "Interpreter(..., experimental_op_resolver_type="
            "OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES). Sparse int8 weights do this.",
            stacklevel=3,
        )
        return outputs


def _run_litert(
    interpreter: Any, inputs: Inputs, candidates: Sequence[list[str]] = ()
) -> list[np.ndarray]:
    runner = interpreter.get_signature_runner()
    # The signature's inputs by name, in the order of the graph's inputs.
    order = [detail["index"] for detail in interpreter.get_input_details()]
    details = runner.get_input_details()
    names = sorted(details, key=lambda name: order.index(details[name]["index"]))
    takes = {name: (details[name]["dtype"], details[name]["shape_signature"]) for name in names}
    outputs = runner(**_conformed(_feed(names, inputs, candidates), takes))
    return [outputs[name] for name in sorted(outputs, key=_output_order)]


def _onnx_dtype(kind: str) -> Any:
    """The numpy type of an ONNX input type ("tensor(float)"), or None if numpy has none."""
    name = kind.removeprefix("tensor(").removesuffix(")")
    try:
        return np.dtype({"float": "float32", "double": "float64"}.get(name, name))
    except TypeError:
        return None


def _conformed(feed: dict[str, Any], takes: dict[str, tuple[Any, Any]]) -> dict[str, np.ndarray]:
    """`feed`'s arrays cast to the type each input of the file takes (numbers only), each
    checked against its shape (`takes`: name -> (numpy type, shape with None, -1 or a
    name where any size goes))."""
    result = {}
    for name, array in feed.items():
        array = np.asarray(array)
        dtype, shape = takes[name]
        fixed = [
            int(size) if isinstance(size, (int, np.integer)) and size >= 0 else None
            for size in shape
        ]
        if array.ndim != len(fixed) or any(
            want is not None and got != want for got, want in zip(array.shape, fixed)
        ):
            wanted = ", ".join("any" if size is None else str(size) for size in fixed)
            raise ValueError(
                f"`inputs[{name!r}]` has shape {array.shape}; the file takes ({wanted})."
            )
        if dtype is not None and array.dtype != dtype:
            kind = np.dtype(dtype).kind
            # Floats become integers only where they are whole numbers (token ids):
            # a quantized input takes its own scale, which a cast does not apply.
            if (
                array.dtype.kind not in "biuf"
                or kind not in "biuf"
                or (
                    array.dtype.kind == "f" and kind != "f" and not np.all(array == np.round(array))
                )
            ):
                raise TypeError(
                    f"`inputs[{name!r}]` holds {array.dtype}; the file takes {np.dtype(dtype)}."
                )
            array = array.astype(dtype)
        result[name] = array
    return result


def _output_order(name: str) -> tuple[int, str]:
    """Keras names a model's outputs output_0, output_1, ... (in the model's order), or
    by the keys of a dict of outputs (KerasHub's), which `keras.tree` flattens sorted."""
    number = name.removeprefix("output_")
    return (int(number), "") if number.isdigit() else (-1, name)


def _compare(
    expected: list[np.ndarray], outputs: list[np.ndarray], quantize: str | None, suffix: str
) -> None:
    if len(outputs) != len(expected):
        raise ValueError(
            f"the {suffix} file has {len(outputs)} outputs, the model {len(expected)}; "
            "nothing was written."
        )
    for index, (want, got) in enumerate(zip(expected, outputs)):
        if got.shape != want.shape:
            raise ValueError(
                f"the {suffix} file's output {index} has shape {got.shape}, the Keras "
                f"model's {want.shape}; nothing was written."
            )
        scale = float(np.max(np.abs(want))) if want.size else 0.0
        allowed = TOLERANCE[quantize] * max(scale, 1e-6)
        error = float(np.max(np.abs(np.asarray(got, "float64") - want))) if want.size else 0.0
        if not error <= allowed:
            raise ValueError(
                f"the {suffix} file (quantize={quantize!r}) predicts output {index} differently "
                f"from the Keras model: max |difference| {error:.3g}, allowed {allowed:.3g} "
                f"({TOLERANCE[quantize]} of the largest output); nothing was written."
            )


def _main(argv: list[str]) -> None:
    """The child process of `_convert`: converts a saved model on the TensorFlow backend."""
    saved, arrays, path, fmt, quantize, *modules = argv
    for module in modules:  # the model's own layers, registered as they are imported
        importlib.import_module(module)
    model = keras.saving.load_model(saved, compile=False)
    with np.load(arrays) as data:
        inputs = [data[f"arr_{i}"] for i in range(len(data.files))]
    model(_backend.packed_inputs(model, inputs))  # Keras exports called models only
    if fmt == "onnx":
        _keras.patch_tf2onnx()
    with contextlib.redirect_stdout(sys.stderr):
        _backend.convert_for_runtime(model, path, fmt, None if quantize == "None" else quantize)


if __name__ == "__main__":
    _main(sys.argv[1:])

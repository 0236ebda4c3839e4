"""The one module that uses TensorFlow, JAX or torch directly.

Everything else in keras_prune is `keras.ops`. Three things are not in it:

* Whether a value is concrete (readable now) or symbolic (being traced
  into a graph). Eager torch can then skip the mask work of the 99 % of
  steps that do not prune, instead of running an `ops.cond` whose other
  branch copies every mask onto itself.
* A selection primitive. `keras.ops` can only sort (`ops.top_k`,
  `ops.sort`: O(n log n)). For a weight in host memory in eager code
  (torch's default, `run_eagerly=True` on TensorFlow and JAX), the whole
  mask is computed with numpy on the tensor's memory: `numpy.partition`
  (introselect, linear) is 3–5x faster than the `keras.ops` radix select,
  which eager code runs as dozens of separate weight-sized kernels (eager
  JAX compiles each on first use), and numpy's temporaries avoid torch's
  page faults. On eager torch the mask is even rewritten in place. A
  plain TensorFlow graph on a CPU calls numpy too (`tf.numpy_function`).
* Keeping the mask update out of `torch.compile` (`eager`).
* The LiteRT converter's options (`tf.lite.Optimize`), for
  `convert_for_runtime`: Keras's `model.export` takes them as they are.
  The ONNX file is written with tf2onnx here, not through `model.export`,
  whose tf2onnx call turns a model's constant tensors into file inputs;
  with a tf2onnx handler for one TensorFlow op it lacks (`Erfc`, GELU's).
* Fusion. Keras compiles a TensorFlow train step on a CPU as a plain graph
  (`jit_compile="auto"` means no XLA there), which runs every op of the
  radix select as its own weight-sized kernel. Compiling just the mask
  computation with XLA is what Keras itself does for ops that need it
  (grouped convolutions on CPU, `keras/src/backend/tensorflow/nn.py`).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import keras
import numpy as np


def is_concrete(x: Any) -> bool:
    """True if `x` holds a value now, False if it is traced into a graph."""
    backend = keras.backend.backend()
    if backend == "torch":
        import torch

        return not torch.compiler.is_compiling()
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.executing_eagerly()
    if backend == "jax":
        import jax

        return not isinstance(x, jax.core.Tracer)
    return False


def host_selectable(flat: Any) -> bool:
    """True if `top_k_mask_on_host` should select in `flat`: a concrete tensor on a CPU."""
    if not is_concrete(flat):
        return False
    backend = keras.backend.backend()
    if backend == "torch":
        return flat.device.type == "cpu"
    if backend == "jax":
        return all(device.platform == "cpu" for device in flat.devices())
    if backend == "tensorflow":
        return "CPU" in flat.device
    return False


def known_false(pred: Any) -> bool:
    """True if `pred` is concrete and false, so the work it guards can be skipped."""
    return is_concrete(pred) and not bool(keras.ops.convert_to_numpy(pred))


def cond(pred: Any, true_fn: Callable[[], Any], false_fn: Callable[[], Any]) -> Any:
    """`keras.ops.cond`, except that a concrete `pred` just calls its branch.

    Eager torch would otherwise run `ops.cond` on every step, and a traced
    `pred` still needs the graph's conditional.
    """
    if is_concrete(pred):
        return true_fn() if bool(keras.ops.convert_to_numpy(pred)) else false_fn()
    return keras.ops.cond(pred, true_fn, false_fn)


def host_updatable(weight: keras.Variable, mask: keras.Variable) -> bool:
    """True if `update_mask_on_host` may rewrite the variable `mask` from `weight` in place.

    Eager torch, float32 contiguous tensors on the CPU. The values are read
    only on eager torch, so a traced step gets no extra variable reads. (The
    caller also makes sure the values are the variables' storage, not those
    of a `keras.StatelessScope`.)
    """
    if keras.backend.backend() != "torch":
        return False
    import torch

    if torch.compiler.is_compiling():
        return False
    return all(
        t.device.type == "cpu" and str(t.dtype) == "torch.float32" and t.is_contiguous()
        for t in (weight.value, mask.value)
    )


def update_mask_on_host(weight: Any, mask: Any, k: int) -> float:
    """Rewrites `mask` in place with the top-k mask of |weight * mask|; returns the threshold.

    The mask `masks.top_k_mask` computes (k kept, ties by flat index), by
    `numpy.partition`, for tensors `host_updatable` accepts. Everything runs
    on numpy views of the two tensors' storage: no torch tensor is made
    (torch's CPU allocator maps and page-faults each fresh weight-sized
    tensor anew, ~40 ms per 64 MB, while numpy's large arrays sit on
    transparent huge pages) and the mask is not copied into its variable.
    """
    w = weight.detach().numpy().reshape(-1)  # views: shares memory with the tensors
    m = mask.detach().numpy().reshape(-1)
    scratch = np.empty(w.shape, np.float32)
    bits = scratch.view(np.int32)

    def magnitude_bits() -> np.ndarray:
        np.multiply(w, m, out=scratch)
        return np.bitwise_and(bits, 0x7FFFFFFF, out=bits)

    threshold = _select_top_k(magnitude_bits, k, m)
    return float(np.int32(threshold).view(np.float32))


def top_k_mask_on_host(flat: Any, k: Any, dtype: str) -> tuple[Any, Any]:
    """`masks.top_k_mask` of a concrete CPU tensor (`host_selectable`), by `numpy.partition`.

    `flat` is 1-D float32. Returns the mask (in `dtype` where numpy has it,
    else bool) and the k-th largest magnitude's int32 bit pattern, as
    tensors. Every temporary is a numpy array: numpy puts large arrays on
    transparent huge pages, while torch's CPU allocator maps and
    page-faults each fresh weight-sized tensor anew (~40 ms per 64 MB).
    """
    values = keras.ops.convert_to_numpy(flat)  # no copy on torch and JAX
    keep, threshold = _top_k_mask_numpy(values, int(k), _mask_dtype(dtype))
    return keras.ops.convert_to_tensor(keep), keras.ops.convert_to_tensor(threshold)


# Measured inside model.fit (benchmarks/mask_update_in_fit.py): from 2**24
# entries on, TensorFlow's XLA radix select beat the callback (2.0x against
# 2.2-2.3x numpy.partition's time); below, the callback won (1.2-1.8x
# against 1.7-2.5x).
_CALLBACK_MAX_SIZE = 2**24


def host_callable(x: Any) -> bool:
    """True if a traced step selects in `x` with numpy, by `kth_largest_by_callback`.

    TensorFlow in a plain graph (Keras's default on a CPU) on a machine
    with CPUs only, for weights under `_CALLBACK_MAX_SIZE` entries. XLA
    cannot compile a `tf.numpy_function`, so a step compiled with
    `jit_compile=True` keeps the radix select, as do accelerators. JAX
    keeps it too: under `jax.jit` the radix select was faster than a
    `jax.pure_callback` at every size measured (1.3x against 2.3x
    numpy.partition's time at 1 M entries, 2.2x against 2.7x at 16.8 M),
    since XLA copies the callback's operand and its CPU backend page-faults
    each fresh weight-sized buffer.
    """
    if keras.backend.backend() != "tensorflow" or is_concrete(x):
        return False
    import tensorflow as tf

    # `get_enclosing_xla_context` is TensorFlow's own way to ask whether the
    # graph being traced will be XLA-compiled (exported as
    # `tf.__internal__`, which Keras 2 used for the same question).
    return (
        math.prod(x.shape) < _CALLBACK_MAX_SIZE
        and tf.__internal__.get_enclosing_xla_context() is None
        and all(device.device_type == "CPU" for device in tf.config.list_logical_devices())
    )


def kth_largest_by_callback(flat: Any, k: Any) -> tuple[Any, Any]:
    """The k-th largest magnitude's bit pattern in a traced `flat` (`host_callable`), by numpy.

    Also returns `cut`, the flat index of the first entry equal to the
    threshold that does not fit among the k kept (the size of `flat` when
    all do): the mask is `magnitude >= threshold` before `cut` and `>`
    from it on. The graph hands the 1-D float32 `flat` to numpy
    (`tf.numpy_function`) and gets two integers back: one introselect
    pass, where a plain graph would launch the radix select as an XLA
    program (`fused`), and no weight-sized result to copy back.
    """
    import tensorflow as tf

    def host(values: np.ndarray, kept: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        threshold, cut = _threshold_and_cut(values, int(kept))
        return np.asarray(threshold, np.int32), np.asarray(cut, np.int32)

    k = keras.ops.convert_to_tensor(k, "int32")
    threshold, cut = tf.numpy_function(host, [flat, k], [tf.int32, tf.int32], stateful=False)
    threshold.set_shape(())
    cut.set_shape(())
    return threshold, cut


def _threshold_and_cut(values: np.ndarray, kept: int) -> tuple[int, int]:
    """`kth_largest_by_callback` of the 1-D float32 `values`, in numpy."""
    source = values.view(np.int32)
    bits = np.bitwise_and(source, 0x7FFFFFFF)
    threshold, at_least = _kth_largest_pattern(bits, kept)
    if at_least == kept:
        return threshold, source.size
    ties = np.flatnonzero(np.bitwise_and(source, 0x7FFFFFFF, out=bits) == threshold)
    return threshold, int(ties[kept - at_least + ties.size])


def _mask_dtype(dtype: str) -> np.dtype:
    """The mask's numpy dtype: `dtype` where numpy has it, else bool (for the caller to cast)."""
    return np.dtype(dtype) if dtype in ("float16", "float32", "float64", "bool") else np.dtype(bool)


def _top_k_mask_numpy(values: np.ndarray, kept: int, dtype: np.dtype) -> tuple[Any, Any]:
    """Mask (in `dtype`) of the `kept` largest |values| (1-D float32), and the
    threshold's pattern."""
    source = values.view(np.int32)
    bits = np.empty(source.shape, np.int32)

    def magnitude_bits() -> np.ndarray:  # magnitudes, ordered as ints
        return np.bitwise_and(source, 0x7FFFFFFF, out=bits)

    # The mask goes straight into its final dtype, with no bool temporary.
    keep = np.empty(source.shape, dtype)
    return keep, np.asarray(_select_top_k(magnitude_bits, kept, keep), np.int32)


def _select_top_k(magnitude_bits: Callable[[], np.ndarray], kept: int, out: np.ndarray) -> int:
    """Writes into `out` the mask of the `kept` largest of `magnitude_bits()`; returns the k-th.

    `magnitude_bits` computes the int32 magnitude patterns afresh (the
    selection reorders them). Ties at the threshold: the first ones by flat
    index are kept, so exactly `kept` entries are.
    """
    threshold, at_least = _kth_largest_pattern(magnitude_bits(), kept)
    bits = magnitude_bits()
    np.greater_equal(bits, threshold, out=out)
    if at_least > kept:
        ties = np.flatnonzero(bits == threshold)
        out[ties[kept - at_least + ties.size :]] = 0
    return threshold


def _kth_largest_pattern(bits: np.ndarray, kept: int) -> tuple[int, int]:
    """The `kept`-th largest of the int32 `bits` and how many are >= it.

    Reorders `bits` in place (introselect, linear time).
    """
    n = bits.size
    nonzero = int(np.count_nonzero(bits))
    if kept > nonzero:  # the k-th largest magnitude is 0: every entry is >= it
        return 0, n
    if nonzero < n:
        # A masked weight is mostly exact zeros; numpy's introselect is ~10x
        # slower on such a run of ties, so select among the nonzero ones.
        bits = bits[bits != 0]
    rank = bits.size - kept
    bits.partition(rank)
    threshold = int(bits[rank])
    return threshold, kept + int(np.count_nonzero(bits[:rank] == threshold))


def eager(fn: Callable[..., Any]) -> Callable[..., Any]:
    """`fn`, run eagerly even inside `torch.compile` (Keras's `jit_compile=True` on torch).

    Dynamo would otherwise trace the mask update into the compiled train
    step: its radix select and conditionals take minutes to compile for a
    small CNN, where eager torch selects with numpy in milliseconds. Other
    backends trace `fn` into their compiled step as usual.
    """
    if keras.backend.backend() != "torch":
        return fn
    import torch

    return torch.compiler.disable(fn)


def fused(fn: Callable[..., Any], min_size: int = 2**16) -> Callable[..., Any]:
    """`fn` compiled as one XLA program on TensorFlow; `fn` itself elsewhere.

    Only calls whose first argument has at least `min_size` entries are
    compiled: XLA takes about a second per new shape on a CPU, more than the
    plain graph's separate kernels cost for a small weight. Nor are calls
    in a graph that may call numpy (`host_callable`), where the selection
    is numpy's and XLA could not compile it. Tensor arguments
    are traced; Python arguments (tuples, strings) select one compiled
    program per value. Inside a train step that is already XLA-compiled the
    program is inlined.
    """
    if keras.backend.backend() != "tensorflow":
        return fn
    import tensorflow as tf

    compiled = tf.function(fn, jit_compile=True)

    @functools.wraps(fn)
    def call(x: Any, *args: Any, **kwargs: Any) -> Any:
        if math.prod(x.shape) >= min_size and not host_callable(x):
            return compiled(x, *args, **kwargs)
        return fn(x, *args, **kwargs)

    return call


def convert_for_runtime(model: keras.Model, path: str, fmt: str, quantize: str | None) -> None:
    """Writes `model` as a LiteRT ("tflite") or ONNX ("onnx") file; TensorFlow backend only.

    LiteRT goes through `keras.Model.export`, with the converter's options
    by name (`tf.lite.Optimize`, the one part not in Keras): sparse weight
    encoding always, plus int8 weights (dynamic-range quantization) or
    float16 weights. ONNX: `_write_onnx` (tf2onnx must be patched for NumPy
    2 first, as Keras does: `_keras.patch_tf2onnx`).
    """
    if fmt == "onnx":
        _write_onnx(model, path)
        return
    import tensorflow as tf

    optimizations = [tf.lite.Optimize.EXPERIMENTAL_SPARSITY]
    options: dict[str, Any] = {}
    if quantize in ("int8", "float16"):
        optimizations.insert(0, tf.lite.Optimize.DEFAULT)
    if quantize == "float16":
        options["target_spec"] = {"supported_types": [tf.float16]}
    model.export(path, format="litert", verbose=False, optimizations=optimizations, **options)


def packed_inputs(model: keras.Model, inputs: list[Any]) -> Any:
    """`inputs`, one tensor per model input, as the model takes them: a list, or a dict
    by input name (KerasHub's); `model.input` exists on a Sequential once called."""
    return inputs[0] if len(inputs) == 1 else keras.tree.pack_sequence_as(model.input, inputs)


def _write_onnx(model: keras.Model, path: str) -> None:
    """Writes `model` as an ONNX file with tf2onnx, inputs named as the model's.

    As `keras.Model.export(format="onnx")` does, but tf2onnx's
    `from_function` (1.17), which Keras calls, takes every input of the
    traced function for a model input, also the constant tensors the
    model captures (`x * ops.sqrt(d)` in a functional graph, KerasHub's
    Gemma and ViT): the file then asks for them as inputs. Here only the
    model's own inputs are; the captured tensors are frozen as constants.
    """
    import tensorflow as tf
    import tf2onnx
    from tf2onnx import tf_loader

    _register_erfc()
    specs = [tf.TensorSpec(spec.shape, spec.dtype, name=spec.name) for spec in model.inputs]

    def serve(*arrays: Any) -> Any:
        return model(packed_inputs(model, list(arrays)), training=False)

    function = tf.function(serve).get_concrete_function(*specs)
    own = len(function.inputs) - len(function.captured_inputs)  # captures come last
    inputs = [tensor.name for tensor in function.inputs[:own]]
    outputs = [tensor.name for tensor in function.outputs]
    logger = tf.get_logger()
    level = logger.level
    logger.setLevel("ERROR")  # tf2onnx's freezing logs TF1 deprecations for the user
    try:
        with tf.device("/cpu:0"):
            frozen = tf_loader.from_function(function, inputs, outputs)
            tf2onnx.convert.from_graph_def(
                frozen,
                input_names=inputs,
                output_names=outputs,
                tensors_to_rename={tensor: spec.name for tensor, spec in zip(inputs, specs)},
                output_path=path,
            )
    finally:
        logger.setLevel(level)


def _register_erfc() -> None:
    """Teaches tf2onnx TensorFlow's `Erfc`, which Keras's exact GELU (`gelu`'s
    default, `approximate=False`: BERT, ViT) computes with on TensorFlow.

    tf2onnx 1.17 has no handler for it and writes the op as it is, which is
    no ONNX op: ONNX Runtime refuses the file ("No Op registered for Erfc").
    As ONNX's `Erf` then `1 - erf(x)`; registering again replaces the handler.
    """
    from tf2onnx import utils
    from tf2onnx.handler import tf_op

    @tf_op("Erfc")
    class Erfc:
        @classmethod
        def version_9(cls, ctx: Any, node: Any, **kwargs: Any) -> None:  # Erf: opset 9
            node.type = "Erf"
            dtype = utils.map_onnx_to_numpy_type(ctx.get_dtype(node.input[0]))
            one = ctx.make_const(utils.make_name(f"{node.name}_one"), np.array(1, dtype))
            ctx.insert_new_node_on_output(
                "Sub",
                node.output[0],
                inputs=[one.output[0], node.output[0]],
                name=utils.make_name(f"{node.name}_erfc"),
            )

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
  page faults. On eager torch the mask is even rewritten in place.
* Keeping the mask update out of `torch.compile` (`eager`).
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

    threshold, at_least = _kth_largest_pattern(magnitude_bits(), k)
    magnitude_bits()  # again: the selection reordered them
    np.greater_equal(bits, threshold, out=m)
    if at_least > k:  # ties at the threshold: keep the first ones by flat index
        ties = np.flatnonzero(bits == threshold)
        m[ties[k - at_least + ties.size :]] = 0
    return float(np.int32(threshold).view(np.float32))


def top_k_mask_on_host(flat: Any, k: Any, dtype: str) -> tuple[Any, Any]:
    """`masks.top_k_mask` of a concrete CPU tensor (`host_selectable`), by `numpy.partition`.

    `flat` is 1-D float32. Returns the mask (in `dtype` where numpy has it,
    else bool) and the k-th largest magnitude's int32 bit pattern, as
    tensors. Every temporary is a numpy array: numpy puts large arrays on
    transparent huge pages, while torch's CPU allocator maps and
    page-faults each fresh weight-sized tensor anew (~40 ms per 64 MB).
    """
    values = keras.ops.convert_to_numpy(flat).view(np.int32)  # no copy on torch and JAX
    bits = np.bitwise_and(values, 0x7FFFFFFF)  # magnitudes, ordered as ints
    kept = int(k)
    threshold, at_least = _kth_largest_pattern(bits, kept)
    np.bitwise_and(values, 0x7FFFFFFF, out=bits)  # again: the selection reordered them
    # The mask goes straight into its final dtype, with no bool temporary.
    out_dtype = np.dtype(dtype) if dtype in ("float16", "float32", "float64", "bool") else np.bool_
    keep = np.greater_equal(bits, threshold, out=np.empty(bits.shape, out_dtype))
    if at_least > kept:  # ties at the threshold: keep the first ones by flat index
        ties = np.flatnonzero(bits == threshold)
        keep[ties[kept - at_least + ties.size :]] = 0
    return keras.ops.convert_to_tensor(keep), keras.ops.convert_to_tensor(np.int32(threshold))


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
    plain graph's separate kernels cost for a small weight. Tensor arguments
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
        return (compiled if math.prod(x.shape) >= min_size else fn)(x, *args, **kwargs)

    return call

"""Mask computation: which weights magnitude pruning keeps.

All functions are written with `keras.ops` and run inside a compiled train
step on every backend. A mask keeps exactly `k = max(round(n·(1 − s)), 1)`
entries (n weights, sparsity s), chosen by magnitude; among equal magnitudes
the entry with the lower flat index is kept, so the result is deterministic
and identical to a stable full sort (tfmot keeps every tie instead, so it can
keep more than k).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from typing import Any

import keras
from keras import ops

from keras_prune import _backend, _keras, _validation

POOLING_TYPES = ("AVG", "MAX")


def keep_count(size: int, sparsity: Any) -> Any:
    """Number of weights kept: max(round(size·(1 − sparsity)), 1), as int32.

    Computed in float32 with round-half-to-even, as tfmot does. `sparsity`
    may be a tensor; it is clipped to [0, 1] and NaN counts as 0, so a faulty
    custom schedule cannot produce an undefined count.
    """
    sparsity = ops.convert_to_tensor(sparsity, "float32")
    sparsity = ops.where(ops.isnan(sparsity), 0.0, ops.clip(sparsity, 0.0, 1.0))
    kept = ops.round(ops.multiply(float(size), 1.0 - sparsity))
    return ops.cast(ops.clip(kept, 1.0, float(size)), "int32")


def _histogram(ids: Any, bins: int) -> Any:
    """Counts of each value of the int32 tensor `ids` in [0, bins); -1 is not counted."""
    if keras.backend.backend() == "torch":
        # Measured: torch's segment_sum is ~10x slower than its bincount,
        # which takes no negative values.
        return ops.bincount(ids + 1, minlength=bins + 1)[1:]
    # `ops.bincount` needs a static length under jax.jit and does not
    # compile with XLA on TensorFlow; a segment sum compiles to a scatter-add,
    # which skips negative ids (faster than adding them to a spare bin).
    return ops.segment_sum(ops.ones_like(ids), ids, num_segments=bins)


def _descend(counts: Any, rank: Any) -> tuple[Any, Any]:
    """Bin holding the `rank`-th largest value, and how many values are above that bin.

    `counts` is a histogram over bins in increasing value order; `rank` is
    1-based and at most `sum(counts)`.
    """
    running = ops.cumsum(counts)
    from_top = running[-1] - running + counts  # values in bins >= i
    bin_index = ops.sum(ops.cast(from_top >= rank, "int32")) - 1
    above = ops.take(from_top, bin_index) - ops.take(counts, bin_index)
    return bin_index, above


def _magnitude_bits(flat: Any) -> Any:
    """Bit patterns of |flat| (float32) as int32, ordered as the magnitudes are.

    Integer work, so subnormals and -0.0 rank as IEEE says even where the
    compiler flushes subnormal floats to zero.
    """
    return ops.bitwise_and(ops.view(flat, "int32"), 0x7FFFFFFF)


# The passes over a weight run in chunks of this many entries, so that their
# temporaries (bit patterns, bin ids, ones to add, running counts) are a
# chunk's size rather than the weight's (under XLA they were 3x the weight).
_CHUNK = 2**18


def _fold_chunks(flat: Any, fn: Callable[[Any, Any, Any], Any], carry: Any) -> Any:
    """`carry = fn(carry, chunk, offset)` over the 1-D `flat`, chunk by chunk."""
    size = flat.shape[0]
    full = size // _CHUNK
    if full:

        def body(i: Any, carry: Any) -> Any:
            return fn(carry, ops.slice(flat, (i * _CHUNK,), (_CHUNK,)), i * _CHUNK)

        carry = ops.fori_loop(0, full, body, carry)
    if size % _CHUNK:
        carry = fn(carry, flat[full * _CHUNK :], full * _CHUNK)
    return carry


def _chunked_histogram(flat: Any, bin_of: Callable[[Any], Any], bins: int) -> Any:
    """Histogram of `bin_of(bit patterns)` over the 1-D float32 `flat`."""

    def add(counts: Any, part: Any, offset: Any) -> Any:
        return counts + _histogram(bin_of(_magnitude_bits(part)), bins)

    return _fold_chunks(flat, add, ops.zeros((bins,), "int32"))


def kth_largest(flat: Any, k: Any) -> tuple[Any, Any]:
    """Bit pattern of the k-th largest magnitude in `flat`, and how many are >= it.

    `flat` is 1-D float32, `k` in [1, n]. Linear time: an exact radix
    select with two histogram passes over 16-bit digits of the magnitudes'
    bit patterns — the high half of every pattern, then the low half of the
    patterns in the high bin that holds the k-th largest — instead of a sort.
    Each pass runs chunk by chunk (`_CHUNK`), so the extra memory is the
    histograms and one chunk's temporaries.
    """
    high_counts = _chunked_histogram(flat, lambda bits: ops.right_shift(bits, 16), 2**15)
    high_bin, above_bin = _descend(high_counts, k)

    def low_digit(bits: Any) -> Any:  # of the patterns in `high_bin`; -1 for the others
        in_bin = ops.equal(ops.right_shift(bits, 16), high_bin)
        return ops.where(in_bin, ops.bitwise_and(bits, 2**16 - 1), -1)

    low_counts = _chunked_histogram(flat, low_digit, 2**16)
    low_bin, above_low = _descend(low_counts, k - above_bin)
    at_least = above_bin + above_low + ops.take(low_counts, low_bin)
    return high_bin * 2**16 + low_bin, at_least


def top_k_mask(scores: Any, k: Any, dtype: str = "bool") -> tuple[Any, Any]:
    """Mask (in `dtype`) of the k largest `scores` (any shape), and the threshold.

    `scores` are magnitudes: their float32 absolute values are ranked (see
    `_magnitude_bits`). Ties at the threshold are broken by flat index,
    lower index first, so exactly k entries are kept, as by a stable sort by
    descending score. The threshold is the k-th largest score. On a CPU,
    eager code and (through a host callback) TensorFlow's plain-graph steps
    compute the same mask with `numpy.partition` (see `_backend`); XLA
    steps (every JAX step, TensorFlow's `jit_compile=True`) and
    accelerators use the radix select.
    """
    flat = ops.cast(ops.reshape(scores, (-1,)), "float32")
    if _backend.host_selectable(flat) and _backend.is_concrete(k):
        keep, threshold = _backend.top_k_mask_on_host(flat, k, dtype)
    elif _backend.host_callable(flat):
        threshold, cut = _backend.kth_largest_by_callback(flat, k)
        bits = _magnitude_bits(flat)
        keep = ops.cond(
            ops.greater_equal(cut, flat.shape[0]),
            lambda: ops.greater_equal(bits, threshold),
            lambda: _keep_before_cut(bits, threshold, cut),
        )
    else:
        keep, threshold = _radix_top_k(flat, k)
    threshold = ops.view(ops.reshape(threshold, (1,)), "float32")[0]
    return ops.reshape(ops.cast(keep, dtype), ops.shape(scores)), threshold


def _keep_before_cut(bits: Any, threshold: Any, cut: Any) -> Any:
    """Magnitude patterns `bits` >= `threshold` before the flat index `cut`, > it from there on."""
    first = ops.arange(bits.shape[0], dtype="int32") < cut
    return ops.where(first, ops.greater_equal(bits, threshold), ops.greater(bits, threshold))


def _radix_top_k(flat: Any, k: Any) -> tuple[Any, Any]:
    """Boolean `top_k_mask` of the 1-D float32 `flat`, and the threshold's bit pattern."""
    threshold, at_least = kth_largest(flat, k)

    def without_ties() -> Any:
        return ops.greater_equal(_magnitude_bits(flat), threshold)

    def break_ties() -> Any:
        # Rare (more entries equal the threshold than fit): keep the first
        # ones by flat index, those before `cut`, the index after the last
        # tie that fits. Found chunk by chunk, like the histograms.
        zero = ops.convert_to_tensor(0, "int32")

        def count_above(total: Any, part: Any, offset: Any) -> Any:
            return total + ops.sum(ops.cast(ops.greater(_magnitude_bits(part), threshold), "int32"))

        room = k - _fold_chunks(flat, count_above, zero)

        def find_cut(state: Any, part: Any, offset: Any) -> Any:
            seen, cut = state
            at = ops.cast(ops.equal(_magnitude_bits(part), threshold), "int32")
            ties = ops.cumsum(at) + seen  # ties up to and including each entry
            here = ops.logical_and(seen < room, ties[-1] >= room)
            position = offset + ops.sum(ops.cast(ties < room, "int32")) + 1
            return ties[-1], ops.where(here, position, cut)

        _, cut = _fold_chunks(flat, find_cut, (zero, zero))
        return _keep_before_cut(_magnitude_bits(flat), threshold, cut)

    return ops.cond(ops.equal(at_least, k), without_ties, break_ties), threshold


def _pool_blocks(scores: Any, block_size: tuple[int, int], pooling: str) -> Any:
    """Pools a 2-D score matrix over (h, w) blocks; edge blocks may be partial."""
    rows, cols = scores.shape
    bh, bw = block_size
    pad_r, pad_c = -rows % bh, -cols % bw
    padded = ops.pad(scores, ((0, pad_r), (0, pad_c)))
    blocks = ops.reshape(padded, ((rows + pad_r) // bh, bh, (cols + pad_c) // bw, bw))
    if pooling == "MAX":
        return ops.max(blocks, axis=(1, 3))
    ones = ops.pad(ops.ones_like(scores), ((0, pad_r), (0, pad_c)))
    counts = ops.sum(ops.reshape(ones, blocks.shape), axis=(1, 3))
    return ops.sum(blocks, axis=(1, 3)) / counts


def _expand_blocks(block_mask: Any, shape: tuple[int, int], block_size: tuple[int, int]) -> Any:
    expanded = ops.repeat(ops.repeat(block_mask, block_size[0], axis=0), block_size[1], axis=1)
    return expanded[: shape[0], : shape[1]]


def _m_by_n_keep(scores: Any, m: int, n: int) -> Any:
    """Zeros the m smallest of every n consecutive entries along axis -2."""
    moved = ops.moveaxis(scores, -2, -1)
    groups = ops.reshape(moved, (-1, n))
    # Rank within each group by pairwise comparison: n is small (4, 8, 16).
    a = ops.expand_dims(groups, 2)  # entry i
    b = ops.expand_dims(groups, 1)  # entry j
    index = ops.arange(n)
    earlier = ops.expand_dims(index, 0) < ops.expand_dims(index, 1)  # j < i
    beats = ops.logical_or(b > a, ops.logical_and(b == a, earlier))
    rank = ops.sum(ops.cast(beats, "int32"), axis=2)
    keep = ops.reshape(rank < n - m, moved.shape)
    return ops.moveaxis(keep, -1, -2)


@_backend.fused
def compute_mask(
    weight: Any,
    sparsity: Any,
    block_size: tuple[int, int] = (1, 1),
    block_pooling_type: str = "AVG",
    sparsity_m_by_n: tuple[int, int] | None = None,
) -> tuple[Any, Any]:
    """Mask (in `weight`'s dtype) and threshold for one weight; no validation.

    This is the graph-side entry point used by the wrapper; arguments are
    validated once when the wrapper is created. `weight` should already be
    multiplied by its current mask so that pruned weights stay pruned. On
    TensorFlow it runs as one XLA program per weight shape and options,
    compiled on first use (see `_backend.fused`).
    """
    if sparsity_m_by_n is not None:
        keep = _m_by_n_keep(ops.abs(weight), *sparsity_m_by_n)
        threshold = ops.convert_to_tensor(0.0, weight.dtype)
    elif tuple(block_size) != (1, 1):
        pooled = _pool_blocks(ops.abs(weight), block_size, block_pooling_type)
        keep_blocks, threshold = top_k_mask(pooled, keep_count(math.prod(pooled.shape), sparsity))
        keep = _expand_blocks(keep_blocks, weight.shape, block_size)
    else:  # top_k_mask takes the magnitude itself, without a temporary
        k = keep_count(math.prod(weight.shape), sparsity)
        keep, threshold = top_k_mask(weight, k, keras.backend.standardize_dtype(weight.dtype))
    return ops.cast(keep, weight.dtype), ops.cast(threshold, weight.dtype)


def update(
    weight: keras.Variable,
    mask: keras.Variable,
    threshold: keras.Variable,
    should_prune: Any,
    sparsity: Any,
    block_size: tuple[int, int] = (1, 1),
    block_pooling_type: str = "AVG",
    sparsity_m_by_n: tuple[int, int] | None = None,
) -> None:
    """Recomputes `mask` and `threshold` from the masked `weight` if `should_prune`.

    The wrapper's pruning step for one weight: `compute_mask` of
    `weight * mask` (so pruned weights stay pruned) under the graph's
    conditional. An unstructured mask of a float32 weight in eager torch on
    a CPU is rewritten in place by numpy instead (`_backend.update_mask_on_host`,
    the same mask), which saves a weight-sized product and a copy.
    """
    unstructured = sparsity_m_by_n is None and tuple(block_size) == (1, 1)
    if (
        unstructured
        and _keras.current_stateless_scope() is None
        and _backend.host_updatable(weight, mask)
    ):
        if bool(ops.convert_to_numpy(should_prune)):
            k = int(ops.convert_to_numpy(keep_count(math.prod(weight.shape), sparsity)))
            threshold.assign(_backend.update_mask_on_host(weight.value, mask.value, k))
        return

    def prune() -> tuple[Any, Any]:
        masked = ops.stop_gradient(ops.multiply(weight.value, mask.value))
        return compute_mask(masked, sparsity, block_size, block_pooling_type, sparsity_m_by_n)

    new_mask, new_threshold = _backend.cond(
        should_prune, prune, lambda: (mask.value, threshold.value)
    )
    mask.assign(new_mask)
    threshold.assign(new_threshold)


def normalize_options(
    block_size: Any, block_pooling_type: Any, sparsity_m_by_n: Any
) -> tuple[tuple[int, int], str, tuple[int, int] | None]:
    """Validates the shape-independent mask options; returns them normalised."""
    block_size = _validation.int_pair(block_size, "block_size")
    if not isinstance(block_pooling_type, str) or block_pooling_type.upper() not in POOLING_TYPES:
        raise ValueError(
            f"`block_pooling_type` must be one of {POOLING_TYPES}; got {block_pooling_type!r}."
        )
    if sparsity_m_by_n is not None:
        m, n = _validation.int_pair(sparsity_m_by_n, "sparsity_m_by_n")
        if m >= n:
            raise ValueError(
                f"`sparsity_m_by_n` must be (m, n) with 1 <= m < n, e.g. (2, 4); "
                f"got {sparsity_m_by_n!r}."
            )
        if block_size != (1, 1):
            raise ValueError("`sparsity_m_by_n` cannot be combined with `block_size`.")
        sparsity_m_by_n = (m, n)
    return block_size, block_pooling_type.upper(), sparsity_m_by_n


def check_shape(
    shape: tuple[int, ...],
    block_size: tuple[int, int],
    sparsity_m_by_n: tuple[int, int] | None,
    name: str = "weight",
) -> None:
    """Raises ValueError if normalised options do not fit a weight of `shape`."""
    if block_size != (1, 1) and len(shape) != 2:
        raise ValueError(
            f"`block_size` {block_size} needs a 2-D weight, but {name} has shape "
            f"{tuple(shape)}. Use block_size=(1, 1) for this layer (with a model: leave it "
            "out with `select=`)."
        )
    if sparsity_m_by_n is not None:
        n = sparsity_m_by_n[1]
        if len(shape) < 2 or shape[-2] % n:
            raise ValueError(
                f"`sparsity_m_by_n` {sparsity_m_by_n} groups the input-channel axis "
                f"(axis -2) in groups of {n}, which must divide it; {name} has shape "
                f"{tuple(shape)}."
            )


def magnitude_mask(
    weight: Any,
    sparsity: float,
    block_size: tuple[int, int] = (1, 1),
    block_pooling_type: str = "AVG",
    sparsity_m_by_n: tuple[int, int] | None = None,
) -> Any:
    """The magnitude-pruning mask of `weight` at `sparsity`.

    Args:
        weight: array or tensor to prune.
        sparsity: fraction of weights to zero, in [0, 1). Ignored when
            `sparsity_m_by_n` is given.
        block_size: `(h, w)` blocks of a 2-D weight pruned together, ranked by
            the block's pooled magnitude.
        block_pooling_type: "AVG" or "MAX" pooling of the block magnitudes.
        sparsity_m_by_n: `(m, n)` zeros the m smallest of every n consecutive
            weights along the input-channel axis (axis -2), e.g. (2, 4), as
            in tfmot.

    Returns:
        A tensor of 0s and 1s with `weight`'s shape and dtype.

    Example:

    >>> w = np.array([[0.1, -3.0], [2.0, 0.5]], "float32")
    >>> keras.ops.convert_to_numpy(magnitude_mask(w, 0.5))
    array([[0., 1.],
           [1., 0.]], dtype=float32)
    """
    weight = ops.convert_to_tensor(weight)
    if not isinstance(sparsity, numbers.Real) or isinstance(sparsity, bool):
        raise TypeError(f"`sparsity` must be a float in [0, 1); got {sparsity!r}.")
    sparsity = _validation.sparsity(sparsity, "sparsity")
    options = normalize_options(block_size, block_pooling_type, sparsity_m_by_n)
    check_shape(tuple(weight.shape), options[0], options[2])
    return compute_mask(weight, ops.convert_to_tensor(sparsity, "float32"), *options)[0]

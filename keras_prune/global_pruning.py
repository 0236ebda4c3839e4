"""Global magnitude pruning: one threshold across many layers.

With `prune_low_magnitude(model, ..., global_pruning=True)` every selected
wrapper gets the same `global_group` name. Layer-wise pruning removes the
same fraction from every weight; global pruning ranks the magnitudes of all
the group's weights together and keeps exactly
`k = max(round(N·(1 − s)), 1)` of the N weights, so layers with many small
weights lose more of them than layers with few large ones.

There is no coordinator object to save: the group is its name. In each
training forward pass the first group member that runs (see
`keras_prune._forward_pass`) finds the other members, wrappers with the same
`global_group` in the same model, applies the shared schedule to its own
step, and writes every member's mask and the common threshold. So a saved
and loaded model is a working group again without extra state.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from keras import ops

from keras_prune import _backend, _forward_pass, _keras, masks

if TYPE_CHECKING:
    from keras_prune.wrapper import PruneLowMagnitude


def link(wrappers: Iterable[PruneLowMagnitude]) -> None:
    """Tells each of `wrappers` (the pruning wrappers of one model) its group's members.

    `prune_low_magnitude` links the model it returns; `UpdatePruningStep`
    and `PruningSummaries` link the model they train (a loaded model, say).
    """
    groups: dict[str, list[Any]] = {}
    for wrapper in wrappers:
        if wrapper.global_group is not None:
            groups.setdefault(wrapper.global_group, []).append(wrapper)
    for members in groups.values():
        schedules = {repr(m.pruning_schedule) for m in members}
        if len(schedules) > 1:
            raise ValueError(
                f"Global pruning group {members[0].global_group!r} mixes schedules "
                f"{sorted(schedules)}; a group prunes with one schedule."
            )
        for member in members:
            # Plain attribute, not tracked: the members are layers of the model.
            object.__setattr__(member, "_group_members", tuple(members))


def group_members(wrapper: PruneLowMagnitude) -> list[PruneLowMagnitude]:
    """The wrappers in `wrapper`'s global group (linked by `link`)."""
    members = getattr(wrapper, "_group_members", None)
    if members is None:
        root = _forward_pass.outer_layer(
            wrapper,
            f"is in the global pruning group {wrapper.global_group!r} but does not know its "
            "other members (a loaded model?). Train with keras_prune.UpdatePruningStep() "
            "among the callbacks.",
        )
        # The wrapper's own class finds its kind in the model, without an
        # import of the wrapper module (which imports this one).
        link(layer for layer in _keras.flatten_layers(root) if isinstance(layer, type(wrapper)))
        members = wrapper._group_members
    return members


# The concatenated scores of a group are large: one XLA program on TensorFlow.
_top_k_mask = _backend.fused(masks.top_k_mask)


def update_group(wrapper: PruneLowMagnitude, step: Any) -> None:
    """Recomputes the masks of `wrapper`'s whole group at `step`, once per pass."""
    if not _forward_pass.first_call(wrapper, ("group", wrapper.global_group)):
        return
    triples = [t for member in group_members(wrapper) for t in member.pruning_vars]
    should_prune, sparsity = wrapper.pruning_schedule(step)
    should_prune = ops.convert_to_tensor(should_prune, "bool")
    sparsity = ops.convert_to_tensor(sparsity, "float32")
    if _backend.known_false(should_prune):  # eager torch: most steps cost nothing more
        return
    sizes = [math.prod(weight.shape) for weight, _, _ in triples]

    def prune():
        scores = ops.concatenate(
            [
                ops.reshape(ops.abs(ops.cast(ops.multiply(w.value, m.value), "float32")), (-1,))
                for w, m, _ in triples
            ]
        )
        return _top_k_mask(ops.stop_gradient(scores), masks.keep_count(sum(sizes), sparsity))

    def keep():
        flat = ops.concatenate([ops.reshape(m.value > 0, (-1,)) for _, m, _ in triples])
        return flat, ops.cast(triples[0][2].value, "float32")

    flat_keep, threshold = _backend.cond(should_prune, prune, keep)
    offset = 0
    for (weight, mask, thresh), size in zip(triples, sizes):
        part = ops.reshape(flat_keep[offset : offset + size], weight.shape)
        mask.assign(ops.cast(part, mask.dtype))
        thresh.assign(ops.cast(threshold, thresh.dtype))
        offset += size

"""`select=`: which layers of a model an operation picks.

`prune_low_magnitude`, `prune_channels`, `shrink` and `sensitivity` take the
same `select`: None (every layer the operation applies to), a layer
instance, a layer name, a layer class, a predicate `f(layer) -> bool`, or a
list of these (a layer is picked if any item matches). Instances, names and
classes that match no layer of the model raise (`check_all_used`), so a
typo does not silently select nothing.

Example:

```python
selection = Selection(["conv1", keras.layers.Dense])
[layer.name for layer in model.layers if selection(layer)]   # ['conv1', 'dense', 'dense_1']
selection.check_all_used()
```
"""

from __future__ import annotations

from typing import Any

import keras


class Selection:
    """Which layers `select` picks: instances, names, classes, predicates."""

    def __init__(self, select: Any):
        self.everything = select is None
        items = (
            [] if select is None else select if isinstance(select, (list, tuple, set)) else [select]
        )
        for item in items:
            if not (
                isinstance(item, (keras.layers.Layer, str))
                or (isinstance(item, type) and issubclass(item, keras.layers.Layer))
                or callable(item)
            ):
                raise TypeError(
                    "`select` must be None, a layer, a layer name, a layer class, a "
                    "predicate `f(layer) -> bool`, or a list of these; got "
                    f"{item!r} of type {type(item).__name__}."
                )
        self.items = list(items)
        self.used: set[int] = set()

    def __call__(self, layer: keras.layers.Layer) -> bool:
        if self.everything:
            return True
        hit = False
        for i, item in enumerate(self.items):
            if isinstance(item, keras.layers.Layer):
                match = item is layer
            elif isinstance(item, str):
                match = item == layer.name
            elif isinstance(item, type):
                match = isinstance(layer, item)
            else:
                match = bool(item(layer))
            if match:
                self.used.add(i)
                hit = True
        return hit

    def explicit(self, layer: keras.layers.Layer) -> bool:
        """Whether a layer instance, name or class in `select` (not a predicate) picks `layer`."""
        return any(
            item is layer
            or (isinstance(item, str) and item == layer.name)
            or (isinstance(item, type) and isinstance(layer, item))
            for item in self.items
        )

    def check_all_used(self, argument: str = "to_prune") -> None:
        """Raises ValueError naming the instances, names and classes that picked no
        layer of the model passed as `argument`."""
        unused = [self.items[i] for i in range(len(self.items)) if i not in self.used]
        unused = [u for u in unused if not callable(u) or isinstance(u, type)]
        if unused:
            names = [u.name if isinstance(u, keras.layers.Layer) else u for u in unused]
            raise ValueError(
                f"`select` names layers that are not in the model: {names!r}. "
                f"Select layers of the model passed as `{argument}`, by instance, name or class."
            )


def by_name(select: Any, layers: list[keras.layers.Layer]) -> Any:
    """`select` with the instances among `layers` replaced by their names, for a copy
    of the model whose layers have the same names (`structured.flatten`)."""
    ids = {id(layer) for layer in layers}

    def one(item: Any) -> Any:
        return item.name if isinstance(item, keras.layers.Layer) and id(item) in ids else item

    return [one(item) for item in select] if isinstance(select, (list, tuple, set)) else one(select)

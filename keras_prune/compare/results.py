"""What a comparison records: one `RunResult` per run, and `results.json`'s format.

`results.json` carries `"format": FORMAT`. Version 1 (keras-prune 0.1.0)
had no such key; its runs have the same fields, so it is still read and
resumed. A field added to `RunResult` later must have a default, which the
runs of older files take (`RunResult.from_dict`); a file of a newer format
than this code knows is refused with a message saying so.

Example:

```python
run = RunResult.from_dict(json.load(open("out/results.json"))["runs"][0])
label(run.schedule, run.sparsity, several=True)   # 'constant@0.875'
label("constant", 0.95, several=True, distribution="erk")   # 'constant/erk@0.95'
```
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

#: The version of `results.json` this code writes (3: sparsity distributions;
#: 4: your own model and data, `metric` and `test_metrics`; 5: channel
#: pruning, `parameters`, `flops` and `predict_ms`; 6: `end_fraction`).
FORMAT = 6
BASELINE = "baseline"
#: The `distribution` of runs that remove whole channels (`prune_channels`,
#: then `shrink`) instead of single weights.
CHANNELS = "channels"
STRUCTURES = ("weights", CHANNELS)


@dataclasses.dataclass
class RunResult:
    """What one training run measured (add new fields with a default).

    `test_accuracy`, `int8_test_accuracy`, `tflite_int8_test_accuracy` and
    `val_accuracy` hold the comparison's metric (`results.json`'s `metric`):
    accuracy for the seed's ConvNet, a model file's first compiled metric
    (or its loss, if it has none) for `--model`. `test_metrics` holds every
    compiled metric and the loss on the test set.
    """

    schedule: str
    sparsity: float
    seed: int
    test_accuracy: float
    test_loss: float
    int8_test_accuracy: float
    layer_sparsity: dict[str, float]
    total_sparsity: float
    gzip_h5_bytes: int
    gzip_keras_bytes: int
    export_float32_bytes: int
    export_int8_bytes: int
    seconds_per_epoch: float
    val_accuracy: list[float]
    warnings: list[str]
    # Sparse .tflite files (None: not measured, e.g. without TensorFlow or LiteRT).
    tflite_float32_bytes: int | None = None
    tflite_int8_bytes: int | None = None
    tflite_int8_test_accuracy: float | None = None
    # How the sparsity was spread over the layers (keras_prune.sparsity_distribution),
    # or "channels": whole channels removed (prune_channels, then shrink).
    distribution: str = "uniform"
    test_metrics: dict[str, float] = dataclasses.field(default_factory=dict)
    # The model as shipped (stripped, or shrunk): its parameters, FLOPs per
    # sample (keras_prune.flops) and milliseconds of Keras `predict` on one
    # batch of test samples (median of repeats).
    parameters: int | None = None
    flops: int | None = None
    predict_ms: float | None = None

    @classmethod
    def from_dict(cls, run: Mapping[str, Any]) -> RunResult:
        """The run saved as `run` in a `results.json` of any format up to `FORMAT`.

        Fields the file lacks take their defaults; keys this code does not
        know are ignored. A required field that is missing raises ValueError.
        """
        if not isinstance(run, Mapping):
            raise ValueError(f"a run must be a JSON object; got {type(run).__name__}.")
        fields = dataclasses.fields(cls)
        missing = [
            f.name
            for f in fields
            if f.name not in run
            and f.default is dataclasses.MISSING
            and f.default_factory is dataclasses.MISSING
        ]
        if missing:
            raise ValueError(f"a saved run lacks {', '.join(missing)}.")
        return cls(**{f.name: run[f.name] for f in fields if f.name in run})


def check_format(results: Mapping[str, Any]) -> int:
    """The format version of loaded `results.json` contents; raises if this code cannot read it."""
    version = results.get("format", 1)
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ValueError(f"results.json has an invalid format version {version!r}.")
    if version > FORMAT:
        raise ValueError(
            f"results.json has format {version}, written by a newer keras-prune; this one "
            f"reads formats 1 to {FORMAT}. Upgrade keras-prune to resume it."
        )
    return version


def label(schedule: str, sparsity: float, several: bool, distribution: str | None = None) -> str:
    """A run's column name: "constant"; "constant@0.875" when `several` sparsities are
    compared; "constant/erk" or "constant/erk@0.875" when `distribution` is given."""
    if schedule == BASELINE:
        return schedule
    name = schedule if distribution is None else f"{schedule}/{distribution}"
    return f"{name}@{sparsity:g}" if several else name


def run_distributions(config: Mapping[str, Any]) -> list[str]:
    """The `distribution` values of a comparison's pruned runs: its sparsity
    distributions when it prunes weights, then "channels" when it prunes channels.

    `config` is an `ExperimentConfig` as a dict (files of format 4 and older
    pruned weights only; of format 2 and older, uniformly only).
    """
    structures = config.get("structures", ["weights"])
    weights = list(config.get("distributions", ["uniform"])) if "weights" in structures else []
    return weights + ([CHANNELS] if CHANNELS in structures else [])


def shown_distribution(distributions: Sequence[str], distribution: str) -> str | None:
    """`distribution` if a comparison of `distributions` names it in labels, else None:
    a comparison of the uniform distribution alone (the seed's) does not."""
    return None if list(distributions) == ["uniform"] else distribution

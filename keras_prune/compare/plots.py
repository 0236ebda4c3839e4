"""PNG plots of a schedule comparison, drawn from its `results.json` dict.

Matplotlib (the `compare` extra) is imported only when a plot is drawn, with
the non-interactive Agg backend, so the library does not need it otherwise.

- `schedules.png`: the sparsity each schedule prescribes over the training
  steps, a marker at every step where pruning happens;
- `val_accuracy.png`: validation accuracy per epoch per schedule (mean over
  seeds, the band one standard deviation when seeds > 1);
- `accuracy_vs_sparsity.png` (only when several sparsities were run): test
  accuracy against target sparsity, mean ± std, the dense baseline dashed;
- `accuracy_vs_latency.png` (only when channels were pruned,
  `--structure channels`): test accuracy against the time of Keras
  `predict` on one batch, one point per sparsity, the dense baseline a star.

"accuracy" in the names and labels is the comparison's metric (`results.json`'s
`metric`): `val_mae.png` and `mae_vs_sparsity.png` for a model compiled with
"mae" as its first metric.

Example:

>>> with open("out/results.json") as f:
...     write_plots(json.load(f), "out")
['out/schedules.png', 'out/val_accuracy.png']
"""

from __future__ import annotations

import os
import re
from typing import Any

import numpy as np

from keras_prune.compare.results import CHANNELS, run_distributions, shown_distribution
from keras_prune.compare.results import label as run_label

__all__ = ["require_matplotlib", "write_plots"]

_REQUIRED = ("schedule_points", "steps", "summary", "runs", "config")


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise ImportError("plots need matplotlib: pip install 'keras-prune[compare]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def require_matplotlib() -> None:
    """Raises ImportError, saying what to install, when matplotlib is missing
    (so that `keras-prune compare --out` can say so before it trains)."""
    _pyplot()


def _plot_schedules(plt: Any, results: dict[str, Any], path: str) -> None:
    steps = results["steps"]
    end_step = steps["end_step"]
    figure, axes = plt.subplots(figsize=(7, 4))
    for label, points in results["schedule_points"].items():
        xs = [0] + [step for step, _ in points] + [end_step]
        ys = [0.0] + [sparsity for _, sparsity in points]
        ys.append(ys[-1])
        (line,) = axes.step(xs, ys, where="post", label=f"{label} ({len(points)} pruning steps)")
        axes.plot(xs[1:-1], ys[1:-1], "o", markersize=3, color=line.get_color())
    for step, name in ((steps["begin_step"], "begin_step"), (end_step, "end_step")):
        axes.axvline(step, color="grey", linestyle=":", linewidth=1)
        axes.annotate(name, (step, 0.02), rotation=90, fontsize=8, color="grey")
    axes.set(
        xlabel=f"training step (batch; {steps['per_epoch']} per epoch)",
        ylabel="sparsity of the pruned weights",
        ylim=(0, 1),
        xlim=(0, end_step * 1.02),
        title="Sparsity prescribed per step; markers: pruning steps",
    )
    axes.legend(loc="upper left", fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def _key(entry: dict[str, Any]) -> tuple[str, str, float]:
    # Files of format 2 and older ran the uniform distribution only.
    return entry["schedule"], entry.get("distribution", "uniform"), entry["sparsity"]


def _label(row: dict[str, Any], config: dict[str, Any], sparsity: bool) -> str:
    schedule, distribution, value = _key(row)
    shown = shown_distribution(run_distributions(config), distribution)
    return run_label(schedule, value, sparsity, shown)


def _metric(results: dict[str, Any]) -> str:
    """The compared metric's name, safe in a file name (format 3 and older: accuracy)."""
    return re.sub(r"[^\w.-]", "_", results.get("metric", "accuracy"))


def _plot_val_accuracy(plt: Any, results: dict[str, Any], path: str) -> None:
    config, metric = results["config"], _metric(results)
    several = len(config["sparsities"]) > 1
    figure, axes = plt.subplots(figsize=(7, 4))
    for row in results["summary"]:
        curves = np.array(
            [run["val_accuracy"] for run in results["runs"] if _key(run) == _key(row)]
        )
        epochs = np.arange(1, curves.shape[1] + 1)
        mean = curves.mean(axis=0)
        (line,) = axes.plot(epochs, mean, marker=".", label=_label(row, config, several))
        if len(curves) > 1:
            std = curves.std(axis=0, ddof=1)
            axes.fill_between(epochs, mean - std, mean + std, color=line.get_color(), alpha=0.2)
    axes.set(xlabel="epoch", ylabel=f"validation {metric}", title=f"Validation {metric} per epoch")
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def _pruned_series(results: dict[str, Any]) -> list[list[dict[str, Any]]]:
    """The summary rows of each pruned (schedule, distribution), by sparsity."""
    pairs = dict.fromkeys(_key(r)[:2] for r in results["summary"] if r["schedule"] != "baseline")
    return [
        sorted((r for r in results["summary"] if _key(r)[:2] == pair), key=lambda r: r["sparsity"])
        for pair in pairs
    ]


def _plot_accuracy_vs_sparsity(plt: Any, results: dict[str, Any], path: str) -> None:
    config, metric = results["config"], _metric(results)
    figure, axes = plt.subplots(figsize=(7, 4))
    for rows in _pruned_series(results):
        axes.errorbar(
            [r["sparsity"] for r in rows],
            [r["test_accuracy"][0] for r in rows],
            yerr=[r["test_accuracy"][1] for r in rows],
            marker="o",
            capsize=3,
            label=_label(rows[0], config, False),
        )
    for row in results["summary"]:
        if row["schedule"] == "baseline":
            axes.axhline(
                row["test_accuracy"][0], color="black", linestyle="--", label="dense baseline"
            )
    axes.set(
        xlabel="target sparsity",
        ylabel=f"test {metric}",
        title=f"Test {metric} against sparsity",
    )
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def _plot_accuracy_vs_latency(plt: Any, results: dict[str, Any], path: str) -> None:
    config, metric = results["config"], _metric(results)
    figure, axes = plt.subplots(figsize=(7, 4))
    for rows in _pruned_series(results):
        axes.errorbar(
            [r["predict_ms"][0] for r in rows],
            [r["test_accuracy"][0] for r in rows],
            xerr=[r["predict_ms"][1] for r in rows],
            yerr=[r["test_accuracy"][1] for r in rows],
            marker="o",
            capsize=3,
            label=_label(rows[0], config, False),
        )
        for row in rows:
            axes.annotate(f"{row['sparsity']:g}", (row["predict_ms"][0], row["test_accuracy"][0]))
    for row in results["summary"]:
        if row["schedule"] == "baseline":
            axes.plot(
                row["predict_ms"][0], row["test_accuracy"][0], "k*", ms=12, label="dense baseline"
            )
    axes.set(
        xlabel=f"Keras predict, ms per batch of {config['batch_size']}",
        ylabel=f"test {metric}",
        title=f"Test {metric} against inference time (labels: target sparsity)",
    )
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def write_plots(results: dict[str, Any], directory: str | os.PathLike[str]) -> list[str]:
    """Draws the comparison `results` (the `results.json` dict) into PNGs in
    `directory`; returns their paths."""
    if not isinstance(results, dict) or any(key not in results for key in _REQUIRED):
        raise ValueError(f"`results` must be a results.json dict with keys {', '.join(_REQUIRED)}.")
    if not results["runs"]:
        raise ValueError("`results` holds no runs to plot.")
    if not isinstance(directory, (str, os.PathLike)):
        raise TypeError(
            f"`directory` must be a str or os.PathLike; got {type(directory).__name__}."
        )
    plt = _pyplot()
    os.makedirs(directory, exist_ok=True)
    metric = _metric(results)
    drawings = [("schedules.png", _plot_schedules), (f"val_{metric}.png", _plot_val_accuracy)]
    if len(results["config"]["sparsities"]) > 1:
        drawings.append((f"{metric}_vs_sparsity.png", _plot_accuracy_vs_sparsity))
    if CHANNELS in results["config"].get("structures", ()) and all(
        row.get("predict_ms") for row in results["summary"]
    ):
        drawings.append((f"{metric}_vs_latency.png", _plot_accuracy_vs_latency))
    paths = []
    for name, draw in drawings:
        path = os.path.join(directory, name)
        draw(plt, results, path)
        paths.append(path)
    return paths

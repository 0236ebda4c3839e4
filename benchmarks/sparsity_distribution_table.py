"""The tables and plot of BENCHMARKS.md's sparsity-distribution section.

Reads the six comparisons `benchmarks/sparsity_distribution.sh` writes and
prints, per dataset and sparsity, each distribution's test accuracy (mean ±
std over seeds) beside the dense model's, the gap to it, the per-layer
sparsities reached, and Welch's t-tests; at 87.5 % also ConstantSparsity
against PolynomialDecay under each distribution (two comparisons, so the
test is computed here). Draws accuracy against sparsity per distribution.

    python benchmarks/sparsity_distribution_table.py [DIR]   # default benchmarks/results/sparsity_distribution
"""

from __future__ import annotations

import json
import os
import sys

from keras_prune.compare import stats

DIR = sys.argv[1] if len(sys.argv) > 1 else "benchmarks/results/sparsity_distribution"
NAMES = ("uniform", "global", "erk")


def load(name: str) -> dict:
    with open(os.path.join(DIR, name, "results.json")) as handle:
        return json.load(handle)


def accuracies(results: dict, schedule: str, distribution: str) -> list[float]:
    return [
        r["test_accuracy"]
        for r in results["runs"]
        if r["schedule"] == schedule and r.get("distribution", "uniform") == distribution
    ]


def mean_std(values: list[float]) -> str:
    mean, std = stats.mean_std(values)
    return f"{mean:.4f} ± {std:.4f}"


def layer_sparsities(results: dict, schedule: str, distribution: str) -> str:
    row = next(
        r
        for r in results["summary"]
        if r["schedule"] == schedule and r["distribution"] == distribution
    )
    return " / ".join(f"{v:.1%}" for v in row["layer_sparsity"].values())


def section(name: str, schedule: str, points: dict) -> None:
    results = load(name)
    dense = accuracies(results, "baseline", "uniform")
    config = results["config"]
    print(f"\n### {name}: {config['dataset']}, {schedule}, sparsity {config['sparsities'][0]}")
    print(f"dense: {mean_std(dense)} ({len(dense)} seeds)\n")
    print("| distribution | test accuracy | vs dense (points) | conv1 / conv2 / dense1 / dense2 |")
    print("|---|---|---|---|")
    for distribution in NAMES:
        values = accuracies(results, schedule, distribution)
        gap = 100 * (stats.mean_std(values)[0] - stats.mean_std(dense)[0])
        sparsities = layer_sparsities(results, schedule, distribution)
        print(f"| {distribution} | {mean_std(values)} | {gap:+.2f} | {sparsities} |")
        points.setdefault((config["dataset"], distribution), []).append(
            (config["sparsities"][0], *stats.mean_std(values))
        )
    points.setdefault((config["dataset"], "dense"), []).append(
        (config["sparsities"][0], *stats.mean_std(dense))
    )
    print()
    for test in results["tests"]:
        print(
            f"- {test['first']} − {test['second']}: {100 * test['accuracy_difference']:+.2f} "
            f"points, p = {test['p_value']:.3g}"
        )


def main() -> None:
    points: dict = {}
    for name in ("digits_875_polynomial", "digits_95", "digits_98", "fashion_95", "fashion_98"):
        section(name, "polynomial", points)
    section("digits_875_constant", "constant", {})
    constant, polynomial = load("digits_875_constant"), load("digits_875_polynomial")
    print("\n### ConstantSparsity against PolynomialDecay at 87.5 %, digits\n")
    for distribution in NAMES:
        a = accuracies(constant, "constant", distribution)
        b = accuracies(polynomial, "polynomial", distribution)
        p = stats.welch_t_test(a, b)[2]
        diff = 100 * (stats.mean_std(b)[0] - stats.mean_std(a)[0])
        print(f"- {distribution}: polynomial − constant {diff:+.2f} points, p = {p:.3g}")
    plot(points)


def plot(points: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, dataset in zip(axes, ("mnist10k", "fashion_mnist")):
        for (name, distribution), values in sorted(points.items()):
            if name != dataset:
                continue
            values.sort()
            xs, means, stds = zip(*values)
            style = dict(color="black", linestyle="--") if distribution == "dense" else {}
            ax.errorbar(xs, means, yerr=stds, marker="o", capsize=3, label=distribution, **style)
        ax.set(xlabel="total sparsity (PolynomialDecay)", ylabel="test accuracy", title=dataset)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    figure.tight_layout()
    path = os.path.join(DIR, "accuracy_vs_sparsity.png")
    figure.savefig(path, dpi=100)
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()

#!/usr/bin/env python
"""The seed protocol with channel pruning, reusing an earlier comparison's dense runs.

    KERAS_BACKEND=tensorflow python benchmarks/channel_protocol.py \
        --earlier benchmarks/results/seed_fashion_mnist/results.json \
        --dataset fashion_mnist --sparsity 0.5 --seeds 5 \
        --out benchmarks/results/seed_fashion_mnist_channels

Trains what `keras-prune compare --schedules polynomial --structure channels
--sparsity S --seeds N --dataset D [--end-fraction F --frequency N]` trains, except that each seed's dense
baseline is taken from the `--earlier` comparison's `results.json` (same
dataset, split, epochs, batch size and seed) instead of being trained
again: on the full Fashion-MNIST protocol a run takes 11-15 minutes, and the
dense runs are half of them. Earlier files (format 4 and older) have no
parameters, FLOPs or `predict` time for the dense model: this script
measures them on the seed's dense model once all runs are done (latency
does not depend on the weights; `benchmarks/channel_speed.py` measures it
with interleaved repeats). Writes the results after every run, and the
table and plots at the end; run it again with the same arguments to
continue after an interruption.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # the checkout, not an installed copy

# The protocol's settings that must match for a dense run to be reused.
SAME = ("epochs", "batch_size", "validation_split", "dataset", "data_dir", "limit", "model")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--earlier", required=True, help="results.json holding the dense runs")
    parser.add_argument("--dataset", default="fashion_mnist")
    parser.add_argument("--sparsity", default="0.5", help="comma-separated, e.g. 0.25,0.5,0.75")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--end-fraction", type=float, default=1.0)
    parser.add_argument("--frequency", type=int, default=100)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    from keras_prune.compare import experiment, results

    config = experiment.ExperimentConfig(
        schedules=("polynomial",),
        structures=("channels",),
        sparsities=tuple(float(s) for s in args.sparsity.split(",")),
        seeds=args.seeds,
        dataset=args.dataset,
        end_fraction=args.end_fraction,
        frequency=args.frequency,
        verbose=2,
    )
    with open(args.earlier) as f:
        earlier = json.load(f)
    mine = {key: getattr(config, key) for key in SAME}
    theirs = {key: earlier["config"].get(key, getattr(config, key)) for key in SAME}
    if mine != theirs:
        raise SystemExit(f"--earlier ran another protocol: {theirs} vs {mine}")
    dense = {
        run["seed"]: results.RunResult.from_dict(run)
        for run in earlier["runs"]
        if run["schedule"] == experiment.BASELINE
    }
    comparison, task = experiment.prepare(config)
    for note in comparison.notes:
        print("warning:", note, flush=True)
    if earlier["data"] != comparison.data:
        raise SystemExit(f"--earlier used other data: {earlier['data']} vs {comparison.data}")
    done = os.path.join(args.out, "results.json")
    if os.path.exists(done):
        with open(done) as f:
            comparison.resume(json.load(f))
    for schedule, sparsity, seed, distribution in comparison.planned_runs()[len(comparison.runs) :]:
        start = time.perf_counter()
        if schedule == experiment.BASELINE and seed in dense:
            comparison.runs.append(dense[seed])
            print(f"seed {seed}: dense run reused from {args.earlier}", flush=True)
        else:
            comparison.runs.append(
                experiment.run_once(config, task, schedule, sparsity, seed, distribution)
            )
            run = comparison.runs[-1]
            print(
                f"seed {seed}: {schedule} {distribution} {sparsity:g}: test accuracy "
                f"{run.test_accuracy:.4f} in {time.perf_counter() - start:.0f} s",
                flush=True,
            )
        comparison.write(args.out)
    _measure_dense(comparison, task, config)
    from keras_prune.compare import plots
    from keras_prune.compare.cli import format_results

    results = comparison.to_dict()
    print(format_results(results), flush=True)
    print("wrote", ", ".join(comparison.write(args.out) + plots.write_plots(results, args.out)))


def _measure_dense(comparison, task, config) -> None:
    """Parameters, FLOPs and `predict` time of the dense runs that lack them."""
    import dataclasses

    import keras

    import keras_prune
    from keras_prune.compare import experiment

    for i, run in enumerate(comparison.runs):
        if run.schedule == experiment.BASELINE and run.predict_ms is None:
            keras.utils.set_random_seed(run.seed)
            model = task.build()
            comparison.runs[i] = dataclasses.replace(
                run,
                parameters=model.count_params(),
                flops=keras_prune.flops(model),
                predict_ms=experiment._predict_ms(model, task.x_test[: config.batch_size]),
            )


if __name__ == "__main__":
    main()

#!/usr/bin/env python
"""Seed CNN latency against the width of its first convolution: XLA:CPU's 16-channel threshold.

    KERAS_BACKEND=jax python benchmarks/conv_width.py [--widths 16,17,24,32] [--repeats 60] [--out FILE]

`keras_prune.shrink(seed_model(), 0.5, round_to=8)` leaves the seed CNN's
first convolution with 16 filters (1 input channel), its second with 32
and its hidden Dense layer with 128 units. On JAX's CPU backend XLA hands a
2D convolution to its YNNPACK kernels only when it has more than 16 input
or output channels (`IsConvolutionOpSupportedByYnn` in
xla/backends/cpu/ynn_support.cc, jaxlib 0.10); the others run on a generic
path. This script times `predict_on_batch` at batch 250 of the dense seed
CNN (32/64/256) and of its shrunk shape with the first convolution at each
of `--widths` filters (the second at 32, the Dense at 128), all arms
alternating call by call, the order rotating, after 3 warm-up calls.
Latency does not depend on weight values, so the models are built with
those widths directly. On JAX it also reports, from the compiled program,
whether each convolution went to YNNPACK (it then sits inside a
`__ynn_fusion`).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))  # the checkout, not an installed copy

import _common  # noqa: E402

BATCH = 250


def convolutions_in_ynnpack(model) -> str:
    """How many of the compiled forward pass's convolutions XLA gave to YNNPACK, e.g. "1 of 2"."""
    import jax  # a benchmark may look at the backend's compiled program

    trainable = [v.value for v in model.trainable_variables]
    other = [v.value for v in model.non_trainable_variables]
    x = jax.numpy.zeros((BATCH, 28, 28, 1))
    forward = jax.jit(lambda t, o, x: model.stateless_call(t, o, x)[0])
    text = forward.lower(trainable, other, x).compile().as_text()
    entry = text.index("ENTRY")  # fused computations are printed before the entry
    inside = text[:entry].count("convolution(")
    return f"{inside} of {inside + text[entry:].count('convolution(')}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--widths", default="16,17,24,32")
    parser.add_argument("--repeats", type=int, default=60)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    import keras
    import numpy as np

    from keras_prune.compare.task import seed_model

    backend = keras.backend.backend()
    out = args.out or os.path.join(HERE, "results", f"conv_width_{backend}.json")
    keras.utils.set_random_seed(0)
    arms = {"dense 32/64/256": seed_model()}
    for width in (int(w) for w in args.widths.split(",")):
        arms[f"shrunk {width}/32/128"] = seed_model(widths=(width, 32, 128))
    x = np.random.default_rng(0).random((BATCH, 28, 28, 1), dtype=np.float32)
    for model in arms.values():
        for _ in range(3):
            model.predict_on_batch(x)
    times: dict[str, list[float]] = {name: [] for name in arms}
    names = list(arms)
    for r in range(args.repeats):
        for i in range(len(names)):
            name = names[(i + r) % len(names)]
            start = time.perf_counter()
            arms[name].predict_on_batch(x)
            times[name].append(time.perf_counter() - start)
    dense = _common.stats(times[names[0]])
    results = {"machine": _common.machine_info(), "command": " ".join(sys.argv)}
    results |= {"backend": backend, "batch": BATCH, "runs": []}
    for name in names:
        s = _common.stats(times[name])
        run = {"arm": name, **s, "dense_over_arm": _common.ratio(dense, s)}
        if backend == "jax":
            run["convolutions_in_ynnpack"] = convolutions_in_ynnpack(arms[name])
        results["runs"].append(run)
        extra = f", YNNPACK convs {run['convolutions_in_ynnpack']}" if backend == "jax" else ""
        print(
            f"{backend:<10} {name:<18} {s['median_s'] * 1e3:6.2f} ms ({s['min_s'] * 1e3:.2f}-"
            f"{s['max_s'] * 1e3:.2f}), dense/arm {run['dense_over_arm']:.2f}x{extra}",
            flush=True,
        )
    _common.write_results(out, results)


if __name__ == "__main__":
    main()

#!/usr/bin/env python
"""Record real tfmot 0.8.1 pruning-schedule outputs as a JSON test fixture.

Runs inside the tfmot reference venv (see ``tfmot_env.py``):

    TF_USE_LEGACY_KERAS=1 benchmarks/.venv-tfmot/bin/python \
        benchmarks/tfmot_reference.py [--out tests/data/tfmot_schedules.json]

For every schedule in a grid of ``ConstantSparsity`` / ``PolynomialDecay``
configurations it evaluates ``schedule(step)`` the way ``PruneLowMagnitude``
does: ``step`` is an int64 scalar (the wrapper's ``pruning_step`` variable is
int64) and the call happens inside a ``tf.function`` (as in ``model.fit``).

Eager and graph results can differ in the last bits: grappler's constant
folding rewrites PolynomialDecay's ``x / (end_step - begin_step)`` into
``x * float32(1 / (end_step - begin_step))``. ``sparsity`` is the graph
(training-time) value; where eager differs, ``sparsity_eager`` and
``sparsity_eager_bits`` are stored too.

Per step it stores ``should_prune`` (bool), ``sparsity`` (the float32 value as
a JSON number, exact because every float32 is a float64; the string "NaN" /
"Infinity" / "-Infinity" for non-finite values) and ``sparsity_bits`` (the
float32 bit pattern as 8 hex digits) so tests can compare exactly.

Schedules marked ``"degenerate": true`` are ones where tfmot misbehaves
(PolynomialDecay with begin_step == end_step divides by zero); their recorded
values are what tfmot returns, not necessarily what keras-prune should return.

It also stores tfmot's ``get_config()`` output for one schedule of each class
and the ``ValueError`` messages of the constructor validation.
"""

import argparse
import json
import math
import os
import platform
import sys

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "-1")

from importlib.metadata import version  # noqa: E402

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tensorflow_model_optimization as tfmot  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_OUT = os.path.join(HERE, "..", "tests", "data", "tfmot_schedules.json")

sched = tfmot.sparsity.keras

N_STEPS = 40


def constant_grid():
    g = []
    for target, begin, end, freq in [
        (0.5, 0, -1, 100),  # tfmot default end_step/frequency
        (0.875, 0, -1, 1),
        (0.95, 3, -1, 7),
        (0.875, 0, 1000, 100),
        (0.875, 200, 1000, 100),  # seed protocol shape: begin = 0.2 * end
        (0.875, 200, 1000, 7),  # end - begin not a multiple of frequency
        (0.3, 0, 100, 1),
        (0.0, 0, 100, 10),  # zero sparsity
        (0.9, 10, 10, 1),  # begin == end: single pruning step
        (0.9, 10, 10, 100),
        (0.75, 5, 12, 100),  # frequency > end - begin
        (0.1, 1, 2, 1),
    ]:
        g.append(dict(target_sparsity=target, begin_step=begin, end_step=end, frequency=freq))
    return g


def polynomial_grid():
    g = []
    for power in (1, 2, 3):
        for freq in (1, 7, 100):
            for begin in (0, 250):
                g.append(
                    dict(
                        initial_sparsity=0.0,
                        final_sparsity=0.875,
                        begin_step=begin,
                        end_step=begin + 1000,
                        power=power,
                        frequency=freq,
                    )
                )
    for init, final, begin, end, power, freq in [
        (0.5, 0.9, 3, 17, 3, 7),
        (0.2, 0.8, 0, 1, 3, 1),  # end - begin == 1
        (0.9, 0.1, 10, 110, 2, 10),  # decreasing sparsity is accepted
        (0.1, 0.7, 0, 333, 3, 100),  # non-representable ratios
        (0.0, 0.875, 0, 1000, 0.5, 100),  # fractional power
        (0.0, 0.875, 188, 940, 3, 100),  # seed protocol, 10 epochs/48k/250
    ]:
        g.append(
            dict(
                initial_sparsity=init,
                final_sparsity=final,
                begin_step=begin,
                end_step=end,
                power=power,
                frequency=freq,
            )
        )
    return g


DEGENERATE_POLY = [
    dict(
        initial_sparsity=0.0, final_sparsity=0.875, begin_step=50, end_step=50, power=3, frequency=1
    ),
    dict(initial_sparsity=0.2, final_sparsity=0.8, begin_step=0, end_step=0, power=1, frequency=1),
]


def steps_for(begin, end, freq):
    """~N_STEPS steps: all boundary cases, then interior/after-end fillers."""
    e = end if end >= 0 else begin + 10 * freq  # end_step=-1: prune forever
    key = {
        -1,
        0,
        1,
        2,
        begin - 1,
        begin,
        begin + 1,
        begin + freq - 1,
        begin + freq,
        begin + freq + 1,
        begin + 2 * freq,
        (begin + e) // 2,
        e - freq,
        e - 1,
        e,
        e + 1,
        e + freq,
        2 * e + 1,
        10**6,
        10**9,
        2**31 + 5,
    }  # > int32 range on purpose
    key = {x for x in key if x >= -1}  # -1 is pruning_step's initial value
    span = max(e - begin, 1)
    fill = []
    for i in range(1, 16):
        x = begin + (span * i) // 16
        fill += [x, x - x % freq + begin % freq, x + 1]
    fill += [e + i * max(freq, 1) + i for i in range(2, 40)]
    out = set(key)
    for x in fill:
        if len(out) >= N_STEPS:
            break
        if x >= -1:
            out.add(x)
    return sorted(out)


def f32_record(x):
    x = np.float32(x)
    bits = "%08x" % int(np.asarray(x).view(np.uint32))
    if math.isnan(x):
        val = "NaN"
    elif math.isinf(x):
        val = "Infinity" if x > 0 else "-Infinity"
    else:
        val = float(x)
    return val, bits


def evaluate(cls, kwargs, degenerate=False):
    s = getattr(sched, cls)(**kwargs)
    fn = tf.function(lambda step: s(step), input_signature=[tf.TensorSpec([], tf.int64)])
    begin, end, freq = kwargs["begin_step"], kwargs["end_step"], kwargs["frequency"]
    rows = []
    for step in steps_for(begin, end, freq):
        t = tf.constant(step, tf.int64)
        gp, gs = fn(t)
        ep, es = s(t)
        gp, gs, ep, es = bool(gp.numpy()), gs.numpy(), bool(ep.numpy()), es.numpy()
        assert gs.dtype == np.float32, gs.dtype
        assert gp == ep, (cls, kwargs, step)
        val, bits = f32_record(gs)
        row = {"step": step, "should_prune": gp, "sparsity": val, "sparsity_bits": bits}
        if gs.tobytes() != es.tobytes():
            row["sparsity_eager"], row["sparsity_eager_bits"] = f32_record(es)
        rows.append(row)
    rec = {"class_name": cls, "kwargs": kwargs, "steps": rows}
    if degenerate:
        rec["degenerate"] = True
        rec["note"] = (
            "tfmot divides by (end_step - begin_step) == 0: "
            "0/0 -> NaN at step == begin_step, +-inf elsewhere "
            "(clamped by min/max); values recorded as tfmot returns them"
        )
    return rec


def validation_errors():
    cases = [
        ("ConstantSparsity", dict(target_sparsity=1.0, begin_step=0)),
        ("ConstantSparsity", dict(target_sparsity=-0.1, begin_step=0)),
        ("ConstantSparsity", dict(target_sparsity=0.5, begin_step=-1)),
        ("ConstantSparsity", dict(target_sparsity=0.5, begin_step=10, end_step=5)),
        ("ConstantSparsity", dict(target_sparsity=0.5, begin_step=0, end_step=-2)),
        ("ConstantSparsity", dict(target_sparsity=0.5, begin_step=0, frequency=0)),
        (
            "PolynomialDecay",
            dict(initial_sparsity=0.0, final_sparsity=0.5, begin_step=0, end_step=-1),
        ),
        (
            "PolynomialDecay",
            dict(initial_sparsity=0.0, final_sparsity=1.0, begin_step=0, end_step=10),
        ),
        (
            "PolynomialDecay",
            dict(initial_sparsity=1.0, final_sparsity=0.5, begin_step=0, end_step=10),
        ),
        (
            "PolynomialDecay",
            dict(initial_sparsity=0.0, final_sparsity=0.5, begin_step=20, end_step=10),
        ),
        (
            "PolynomialDecay",
            dict(initial_sparsity=0.0, final_sparsity=0.5, begin_step=0, end_step=10, frequency=-1),
        ),
    ]
    out = []
    for cls, kw in cases:
        try:
            getattr(sched, cls)(**kw)
            err = None
        except Exception as e:  # noqa: BLE001 - record whatever tfmot raises
            err = {"type": type(e).__name__, "message": str(e)}
        out.append({"class_name": cls, "kwargs": kw, "error": err})
    return out


def compact_dump(doc):
    """Indented JSON, but each step row on one line (keeps the file small)."""
    lines = []
    for sc in doc["schedules"]:
        head = {k: v for k, v in sc.items() if k != "steps"}
        h = json.dumps(head, separators=(", ", ": "))
        body = ",\n    ".join(json.dumps(r, separators=(",", ":")) for r in sc["steps"])
        lines.append(h[:-1] + ', "steps": [\n    ' + body + "]}")
    rest = {k: v for k, v in doc.items() if k != "schedules"}
    t = json.dumps(rest, indent=1)
    return t[:-2] + ',\n "schedules": [\n  ' + ",\n  ".join(lines) + "\n ]\n}\n"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=DEFAULT_OUT)
    args = ap.parse_args()

    schedules = []
    for kw in constant_grid():
        schedules.append(evaluate("ConstantSparsity", kw))
    for kw in polynomial_grid():
        schedules.append(evaluate("PolynomialDecay", kw))
    for kw in DEGENERATE_POLY:
        schedules.append(evaluate("PolynomialDecay", kw, degenerate=True))

    doc = {
        "generator": "benchmarks/tfmot_reference.py",
        "versions": {
            "tensorflow_model_optimization": version("tensorflow-model-optimization"),
            "tensorflow": tf.__version__,
            "tf_keras": version("tf-keras"),
            "numpy": np.__version__,
            "python": platform.python_version(),
        },
        "conventions": {
            "step_dtype": "int64 (PruneLowMagnitude.pruning_step)",
            "sparsity_source": "tf.function with default grappler, as in "
            "model.fit; grappler constant folding turns "
            "x / (end-begin) into x * f32(1/(end-begin)); "
            "sparsity_eager(_bits) present only where the "
            "eager value differs",
            "sparsity": "float32 value as JSON number, or 'NaN'/'Infinity'",
            "sparsity_bits": "float32 bit pattern, 8 lowercase hex digits",
        },
        "get_config": {
            "ConstantSparsity": sched.ConstantSparsity(
                0.875, begin_step=200, end_step=1000, frequency=100
            ).get_config(),
            "PolynomialDecay": sched.PolynomialDecay(
                initial_sparsity=0.0,
                final_sparsity=0.875,
                begin_step=200,
                end_step=1000,
                power=3,
                frequency=100,
            ).get_config(),
        },
        "validation_errors": validation_errors(),
        "schedules": schedules,
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        f.write(compact_dump(doc))
    n = sum(len(s["steps"]) for s in schedules)
    print(
        "wrote %s: %d schedules, %d steps, %d bytes"
        % (args.out, len(schedules), n, os.path.getsize(args.out))
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

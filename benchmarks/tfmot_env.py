#!/usr/bin/env python3
"""Create the reference virtual environment with tfmot 0.8.1 (stdlib only).

The reference side of the keras-prune vs tfmot comparison needs the original
``tensorflow_model_optimization`` 0.8.1, which only works with legacy
tf.keras 2 (the ``tf-keras`` package) selected via ``TF_USE_LEGACY_KERAS=1``.
It must not share an environment with keras-prune (Keras 3), so it lives in
``benchmarks/.venv-tfmot`` (gitignored).

Verified combination (Python 3.11, Linux x86-64):
    tensorflow-cpu 2.21.0, tf-keras 2.21.0,
    tensorflow-model-optimization 0.8.1, numpy 2.x

``tensorflow-cpu`` is used so pip never pulls CUDA wheels; nothing here
depends on torch. The script is idempotent: if the venv exists and the
verification import succeeds, nothing is installed. It prints the venv's
python path on the last line of stdout, so callers can do
``PY=$(python benchmarks/tfmot_env.py | tail -1)``.

Usage:
    python benchmarks/tfmot_env.py [--venv PATH] [--force]
"""

import argparse
import os
import subprocess
import sys
import venv

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_VENV = os.path.join(HERE, ".venv-tfmot")

TF_SERIES = "2.21"
REQUIREMENTS = [
    f"tensorflow-cpu=={TF_SERIES}.*",
    # tf-keras must match the TF minor version, otherwise tf_keras imports a
    # TF internals API that moved and fails at import time.
    f"tf-keras=={TF_SERIES}.*",
    "tensorflow-model-optimization==0.8.1",
    "numpy",
]

# Runs inside the venv: prune a tiny model with the real tfmot API and run
# one pruning step, so a broken install is caught here and not mid-benchmark.
VERIFY = r"""
import os, sys
assert os.environ.get("TF_USE_LEGACY_KERAS") == "1"
import numpy as np
import tensorflow as tf
import tf_keras
import tensorflow_model_optimization as tfmot
assert tf.keras.__name__.startswith("tf_keras"), tf.keras.__name__
from importlib.metadata import version
assert version("tensorflow-model-optimization") == "0.8.1"
sp = tfmot.sparsity.keras
m = tf.keras.Sequential([tf.keras.layers.Input((8,)), tf.keras.layers.Dense(16)])
pm = sp.prune_low_magnitude(
    m, pruning_schedule=sp.ConstantSparsity(0.5, begin_step=0, frequency=1))
pm.compile("sgd", "mse")
pm.fit(np.ones((4, 8), "float32"), np.ones((4, 16), "float32"), batch_size=4,
       epochs=1, verbose=0, callbacks=[sp.UpdatePruningStep()])
k = sp.strip_pruning(pm).layers[0].kernel.numpy()
assert abs((k == 0).mean() - 0.5) < 1e-6, (k == 0).mean()
print("tfmot-ok tf=%s tf_keras=%s tfmot=0.8.1 numpy=%s" % (
    tf.__version__, tf_keras.__version__, np.__version__))
"""


def venv_python(path):
    return os.path.join(path, "bin", "python")


def verify(py):
    env = dict(
        os.environ, TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="-1"
    )
    try:
        r = subprocess.run([py, "-c", VERIFY], env=env, capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as e:
        return False, str(e)
    ok_lines = [l for l in r.stdout.splitlines() if l.startswith("tfmot-ok")]
    if r.returncode == 0 and ok_lines:
        return True, ok_lines[-1]
    return False, (r.stdout + r.stderr)[-3000:]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--venv", default=DEFAULT_VENV)
    ap.add_argument(
        "--force",
        action="store_true",
        help="reinstall the requirements even if verification passes",
    )
    args = ap.parse_args()
    py = venv_python(args.venv)

    if os.path.exists(py) and not args.force:
        ok, out = verify(py)
        if ok:
            print(out, file=sys.stderr)
            print(py)
            return 0
        print("existing venv failed verification, (re)installing:\n" + out, file=sys.stderr)

    if not os.path.exists(py):
        print("creating venv " + args.venv, file=sys.stderr)
        venv.EnvBuilder(with_pip=True, clear=False).create(args.venv)

    cmd = [py, "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    cmd += REQUIREMENTS
    print("running: " + " ".join(cmd), file=sys.stderr)
    r = subprocess.run(cmd)
    if r.returncode != 0:
        print("pip install failed (rc=%d)" % r.returncode, file=sys.stderr)
        return r.returncode

    ok, out = verify(py)
    if not ok:
        print("tfmot verification failed:\n" + out, file=sys.stderr)
        return 1
    print(out, file=sys.stderr)
    print(py)
    return 0


if __name__ == "__main__":
    sys.exit(main())

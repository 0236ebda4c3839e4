#!/usr/bin/env bash
# Uniform, global and ERK sparsity distributions under the seed protocol
# (issue 17): PolynomialDecay at 95 % and 98 % on the embedded digits and on
# the first 8 000 training / 8 000 test Fashion-MNIST images, and both
# schedules at the article's 87.5 % on the digits; 5 seeds each. The six
# comparisons are independent and run side by side (one process each).
#
#   OUT=benchmarks/results/sparsity_distribution BACKEND=torch \
#       FASHION_DIR=/usr/share/datasets/fashion-mnist bash benchmarks/sparsity_distribution.sh
#
# Each comparison writes OUT/NAME/results.json (and .csv, PNGs) and OUT/NAME.log.
# SECONDS_LIMIT (default none) stops each comparison after that many seconds;
# results.json then holds its finished runs; RESUME=1 goes on from them.
set -uo pipefail
OUT=${OUT:-benchmarks/results/sparsity_distribution}
BACKEND=${BACKEND:-tensorflow}
FASHION_DIR=${FASHION_DIR:-/usr/share/datasets/fashion-mnist}
PYTHON=${PYTHON:-python3}
LIMIT=${SECONDS_LIMIT:+timeout $SECONDS_LIMIT}
mkdir -p "$OUT"
run() {
    local name=$1; shift
    $LIMIT $PYTHON -m keras_prune compare --backend "$BACKEND" --seeds 5 --no-tflite --quiet \
        --out "$OUT/$name" ${RESUME:+--resume} "$@" >>"$OUT/$name.log" 2>&1
    echo "$name: exit $?"
}
SPREAD=(--distribution uniform,global,erk)
run digits_95 --schedules polynomial "${SPREAD[@]}" --sparsity 0.95 &
run digits_98 --schedules polynomial "${SPREAD[@]}" --sparsity 0.98 &
run fashion_95 --schedules polynomial "${SPREAD[@]}" --sparsity 0.95 \
    --dataset fashion_mnist --data-dir "$FASHION_DIR" --limit 8000 &
run fashion_98 --schedules polynomial "${SPREAD[@]}" --sparsity 0.98 \
    --dataset fashion_mnist --data-dir "$FASHION_DIR" --limit 8000 &
run digits_875_constant --schedules constant "${SPREAD[@]}" &
run digits_875_polynomial --schedules polynomial "${SPREAD[@]}" &
wait

#!/usr/bin/env bash
# The synthetic benchmark's goals over 3 seeds: run examples/synthetic.sh per seed (data, training and
# evaluation all seeded), time each run, then print mean and spread of every stage's target mIoU.
#   benchmarks/synthetic_seeds.sh OUT [SEEDS...]
set -euo pipefail
OUT=${1:-bench_out}
shift || true
SEEDS=${*:-0 1 2}
HERE=$(cd "$(dirname "$0")" && pwd)
PY=${PYTHON:-python}
mkdir -p "$OUT"
for seed in $SEEDS; do
    start=$(date +%s)
    SEED=$seed SEGADAPT_QUIET=1 bash "$HERE/../examples/synthetic.sh" "$OUT/seed$seed" 2> "$OUT/seed$seed.log"
    echo "seed $seed: $(( $(date +%s) - start )) s" | tee -a "$OUT/times.txt"
done
runs=()
for seed in $SEEDS; do runs+=("$OUT/seed$seed"); done
$PY "$HERE/summarize.py" "${runs[@]}" | tee "$OUT/summary.txt"

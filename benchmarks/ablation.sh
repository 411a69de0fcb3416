#!/usr/bin/env bash
# DiGA's ablation rows on a finished examples/synthetic.sh run (one seed; summarise several with
# benchmarks/summarize.py OUT_0 OUT_1 ...). Reused from the example run:
#   source_only     source-only
#   warmup          + SKD + CDMix (the full warm-up)
#   self_train_1    + self-training keeping every pseudo-label (selection: none, our synthetic default)
# Added here:
#   a_skd           + SKD only (warm-up with the photometric view, diga.cdmix=false)
#   a_st_threshold  + self-training with a fixed confidence threshold of 0.9 (diga.selection=threshold)
#   a_st_dps        + self-training with dynamic pseudo-label selection (diga.selection=dps, the paper's)
# The self-training rows are one round from the full warm-up and its pseudo-labels (OUT/pl_1).
#   benchmarks/ablation.sh OUT [synthetic|camvid_day2dusk]
set -euo pipefail
OUT=${1:?usage: benchmarks/ablation.sh OUT [synthetic|camvid_day2dusk]}
BENCH=${2:-synthetic}
source "$(dirname "$0")/common.sh"
bench_setup "$OUT" "$BENCH"

$SEGADAPT warmup -c $BENCH/diga_warmup --source "$SRC" --target "$TGT" --out "$OUT/a_skd" \
    --set diga.cdmix=false "${S[@]}" > /dev/null
for sel in threshold dps; do
    $SEGADAPT self-train -c $BENCH/diga_self_train --ckpt "$OUT/warmup/last.pt" --pseudo-labels "$OUT/pl_1" \
        --source "$SRC" --target "$TGT" --out "$OUT/a_st_$sel" --set diga.selection=$sel "${S[@]}" > /dev/null
done
evaluate_stages a_skd a_st_threshold a_st_dps

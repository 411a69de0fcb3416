#!/usr/bin/env bash
# DiGA's ablation rows on a finished examples/synthetic.sh or examples/camvid_day2dusk.sh run (one seed;
# summarise several with benchmarks/summarize.py OUT_0 OUT_1 ...). Reused from the example run:
#   source_only     source-only
#   warmup          + SKD + CDMix (the full warm-up)
#   self_train_1    + self-training with the config's own selection (synthetic: none; CamVid pretrained: dps)
# Added here:
#   a_skd           + SKD only (warm-up with the photometric view, diga.cdmix=false)
#   a_st_threshold  + self-training with a fixed confidence threshold of 0.9 (diga.selection=threshold)
#   a_st_dps        + self-training with dynamic pseudo-label selection (diga.selection=dps, the paper's)
#   a_st_none       + self-training keeping every pseudo-label (diga.selection=none)
# The self-training rows are one round from the full warm-up and its pseudo-labels (OUT/pl_1); the row
# whose selection self_train_1 already used is its evaluation, copied (same config, same seed).
#   benchmarks/ablation.sh OUT [synthetic|camvid_day2dusk]     # PRETRAINED=1: the *_pretrained configs
set -euo pipefail
OUT=${1:?usage: benchmarks/ablation.sh OUT [synthetic|camvid_day2dusk]}
BENCH=${2:-synthetic}
source "$(dirname "$0")/common.sh"
bench_setup "$OUT" "$BENCH"
P=$([ "${PRETRAINED:-0}" = 1 ] && echo _pretrained || true)

$SEGADAPT warmup -c $BENCH/diga_warmup$P --source "$SRC" --target "$TGT" --out "$OUT/a_skd" \
    --set diga.cdmix=false "${S[@]}" > /dev/null
evaluate_stages a_skd
own=$(sed -n 's/^  selection: *\([a-z]*\).*/\1/p' "$OUT/self_train_1/config.yaml" | head -1)
for sel in threshold dps none; do
    if [ "$sel" = "$own" ]; then
        cp "$OUT/eval/self_train_1.json" "$OUT/eval/a_st_$sel.json"
        continue
    fi
    $SEGADAPT self-train -c $BENCH/diga_self_train$P --ckpt "$OUT/warmup/last.pt" --pseudo-labels "$OUT/pl_1" \
        --source "$SRC" --target "$TGT" --out "$OUT/a_st_$sel" --set diga.selection=$sel "${S[@]}" > /dev/null
    evaluate_stages a_st_$sel
done

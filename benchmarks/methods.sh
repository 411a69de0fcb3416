#!/usr/bin/env bash
# Every method and baseline side by side, on the data, model and schedule of a finished example run:
#   benchmarks/methods.sh OUT [synthetic|camvid_day2dusk]
# OUT is the folder of examples/synthetic.sh (or examples/camvid_day2dusk.sh) for one seed; its
# source-only, DiGA warm-up, self-training and oracle runs are reused, and these are added:
#   m_plca, m_dacs                 warm-up methods trained from scratch like source-only
#   m_st_t2s, m_st_threshold, m_st_dacs
#                                  self-training methods, one round from the DiGA warm-up and its
#                                  pseudo-labels (OUT/pl_1), like OUT/self_train_1 (DiGA)
# Evaluations go to OUT/eval/m_*.json; summarise seeds with benchmarks/summarize.py OUT_0 OUT_1 ...
set -euo pipefail
OUT=${1:?usage: benchmarks/methods.sh OUT [synthetic|camvid_day2dusk]}
BENCH=${2:-synthetic}
source "$(dirname "$0")/common.sh"
bench_setup "$OUT" "$BENCH"

for m in plca dacs; do
    $SEGADAPT warmup -c $BENCH/$m --source "$SRC" --target "$TGT" --out "$OUT/m_$m" "${S[@]}" > /dev/null
done
# the self-training rows share DiGA's self-training schedule (iterations and learning rate)
ITERS=$(sed -n 's/^  iters: *\([^ #]*\).*/\1/p' "$OUT/self_train_1/config.yaml" | head -1)  # comments cut
LR=$(sed -n 's/^  lr: *\([^ #]*\).*/\1/p' "$OUT/self_train_1/config.yaml" | head -1)
for m in t2s threshold dacs; do
    $SEGADAPT self-train -c $BENCH/$m --method $m --ckpt "$OUT/warmup/last.pt" --pseudo-labels "$OUT/pl_1" \
        --source "$SRC" --target "$TGT" --out "$OUT/m_st_$m" "${S[@]}" --iters "$ITERS" --set "optim.lr=$LR" > /dev/null
done
evaluate_stages m_plca m_dacs m_st_t2s m_st_threshold m_st_dacs

#!/usr/bin/env bash
# The whole DiGA pipeline on the embedded synthetic benchmark (source: GTA5-layout scenes, target:
# Cityscapes-layout scenes with another look), plus the source-only baseline and a target oracle.
#
#   examples/synthetic.sh OUT            # SEED=1 examples/synthetic.sh OUT for another seed
#
# Every stage is resumable: re-running the script skips finished work and continues killed stages.
# Each stage's evaluation lands in OUT/eval/<stage>.json.
set -euo pipefail
OUT=${1:?usage: examples/synthetic.sh OUT}
SEED=${SEED:-0}
SEGADAPT=${SEGADAPT:-segadapt}
DATA=$OUT/data
S=(--set "seed=$SEED")

$SEGADAPT prepare-data synthetic --out "$DATA" --seed "$SEED"

# stage 1: source-only baseline and DiGA warm-up (SKD + CDMix with FDA)
$SEGADAPT warmup -c synthetic/source_only --source "$DATA/source" --out "$OUT/source_only" --resume "${S[@]}"
$SEGADAPT warmup -c synthetic/diga_warmup --source "$DATA/source" --target "$DATA/target" --out "$OUT/warmup" \
    --resume "${S[@]}"

# stage 2: two rounds of pseudo-labelling and self-training (pseudo-label selection: see the config)
prev=$OUT/warmup
for round in 1 2; do
    $SEGADAPT pseudo-label --ckpt "$prev/last.pt" --data "$DATA/target" --split train --out "$OUT/pl_$round"
    $SEGADAPT self-train -c synthetic/diga_self_train --ckpt "$prev/last.pt" --pseudo-labels "$OUT/pl_$round" \
        --source "$DATA/source" --target "$DATA/target" --out "$OUT/self_train_$round" --resume "${S[@]}"
    prev=$OUT/self_train_$round
done

# reference: the target oracle, trained on the target's own labels
$SEGADAPT warmup -c synthetic/source_only --source "$DATA/target" --out "$OUT/oracle" --resume "${S[@]}"

mkdir -p "$OUT/eval"
for stage in source_only warmup self_train_1 self_train_2 oracle; do
    $SEGADAPT evaluate --ckpt "$OUT/$stage/last.pt" --data "$DATA/target" --split val --json > "$OUT/eval/$stage.json.tmp"
    mv "$OUT/eval/$stage.json.tmp" "$OUT/eval/$stage.json"
done

$SEGADAPT visualize panels --ckpt "$OUT/self_train_2/last.pt" --data "$DATA/target" --split val --n 6 \
    --out "$OUT/vis/self_train_2" > /dev/null
$SEGADAPT visualize panels --ckpt "$OUT/source_only/last.pt" --data "$DATA/target" --split val --n 6 \
    --out "$OUT/vis/source_only" > /dev/null
$SEGADAPT visualize panels --pseudo-labels "$OUT/pl_1" --data "$DATA/target" --split train --n 6 \
    --out "$OUT/vis/pseudo_labels_1" > /dev/null
$SEGADAPT visualize curves "$OUT/source_only" "$OUT/warmup" "$OUT/self_train_1" "$OUT/self_train_2" "$OUT/oracle" \
    --out "$OUT/vis/curves.png" > /dev/null
echo "done: evaluations in $OUT/eval, pictures in $OUT/vis" >&2

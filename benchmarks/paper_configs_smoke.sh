#!/usr/bin/env bash
# Every paper-scale config starts and runs its first iterations (CPU here, GPU when there is one):
# small raw GTA5/Cityscapes-layout sets from the synthetic generator, upscaled by the configs'
# source_resize/target_resize to paper resolution, paper crops and models (ImageNet weights replaced by
# random init: no network). Prints seconds per stage.
#   benchmarks/paper_configs_smoke.sh OUT [ITERS]
# SMALL=1 keeps every model and setting but trains 128x128 crops of 256x128 images (a CPU check that
# every config builds and steps); without it crops and image sizes are the papers'.
set -euo pipefail
OUT=${1:?usage: benchmarks/paper_configs_smoke.sh OUT [ITERS]}
ITERS=${2:-2}
SEGADAPT=${SEGADAPT:-segadapt}
export SEGADAPT_QUIET=1
DATA=$OUT/data
$SEGADAPT prepare-data synthetic --out "$DATA" --n-source 4 --n-target-train 4 --n-target-val 2 --image-size 128x256 > /dev/null
NOW=(--set model.pretrained=null --set data.workers=0 --set train.ckpt_every=1 --iters "$ITERS" --force)
if [ "${SMALL:-0}" = 1 ]; then
    NOW+=(--set "data.crop=[128,128]" --set "data.source_resize=[128,256]" --set "data.target_resize=[128,256]")
fi

run() {  # name, then the command
    local name=$1; shift
    local t0=$(date +%s)
    "$@" > "$OUT/$name.json"
    echo "$name: $(( $(date +%s) - t0 )) s"
}

for bench in gta5_cityscapes synthia_cityscapes; do
    for cfg in source_only diga_warmup diga_warmup_daformer plca dacs oracle; do
        # the oracle trains on target labels: its --source is the target
        [ -f "segadapt/configs/$bench/$cfg.yaml" ] || continue
        src=$DATA/source; [ $cfg = oracle ] && src=$DATA/target
        run "$bench-$cfg" $SEGADAPT warmup -c $bench/$cfg --source "$src" --target "$DATA/target" \
            --out "$OUT/$bench-$cfg" "${NOW[@]}"
    done
    # self-training from the warm-up of the same model (DeepLab-v2, or MiT-B5 for the _daformer configs)
    for model in "" _daformer; do
        [ -f "$OUT/$bench-diga_warmup$model/last.pt" ] || continue
        run "$bench-pl$model" $SEGADAPT pseudo-label --ckpt "$OUT/$bench-diga_warmup$model/last.pt" \
            --data "$DATA/target" --split train --out "$OUT/$bench-pl$model" --force
        for cfg in diga_self_train$model t2s$model threshold$model; do
            [ -f "segadapt/configs/$bench/$cfg.yaml" ] || continue
            run "$bench-$cfg" $SEGADAPT self-train -c $bench/$cfg --ckpt "$OUT/$bench-diga_warmup$model/last.pt" \
                --pseudo-labels "$OUT/$bench-pl$model" --source "$DATA/source" --target "$DATA/target" \
                --out "$OUT/$bench-$cfg" "${NOW[@]}"
        done
    done
done

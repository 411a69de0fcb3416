#!/usr/bin/env bash
# A behaviour fingerprint: every method for a few iterations on a small synthetic benchmark (seed 0),
# printing each stage's target mIoU to the last digit and its last logged losses. Run it before and
# after a change that must not change behaviour (a refactor) and diff the two outputs:
#   benchmarks/fingerprint.sh OUT > before.txt   ...   benchmarks/fingerprint.sh OUT2 > after.txt
# About 6 minutes on 2 idle CPU cores.
set -euo pipefail
OUT=${1:?usage: benchmarks/fingerprint.sh OUT}
SEGADAPT=${SEGADAPT:-segadapt}
export SEGADAPT_QUIET=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
D=$OUT/data
SMALL=(--set data.batch_size=4 --set train.log_every=5)
$SEGADAPT prepare-data synthetic --out "$D" --seed 0 --n-source 40 --n-target-train 24 --n-target-val 12 \
    --workers 0 > /dev/null
for m in source-only diga plca dacs; do
    $SEGADAPT warmup -c synthetic/$([ $m = source-only ] && echo source_only || { [ $m = diga ] && echo diga_warmup || echo $m; }) \
        --source "$D/source" --target "$D/target" --out "$OUT/w_$m" --iters 15 "${SMALL[@]}" > /dev/null
done
$SEGADAPT warmup -c synthetic/oracle --source "$D/target" --out "$OUT/w_oracle" --iters 10 "${SMALL[@]}" > /dev/null
$SEGADAPT pseudo-label --ckpt "$OUT/w_diga/last.pt" --data "$D/target" --split train --out "$OUT/pl" > /dev/null
st() {  # name config method extra...
    local name=$1 cfg=$2 m=$3; shift 3
    $SEGADAPT self-train -c synthetic/$cfg --method "$m" --ckpt "$OUT/w_diga/last.pt" --pseudo-labels "$OUT/pl" \
        --source "$D/source" --target "$D/target" --out "$OUT/s_$name" --iters 12 "${SMALL[@]}" "$@" > /dev/null
}
st diga diga_self_train diga
st diga_dps diga_self_train diga --set diga.selection=dps
st diga_thr diga_self_train diga --set diga.selection=threshold
st t2s t2s t2s
st threshold threshold threshold
st dacs dacs dacs
$SEGADAPT train-translator -c synthetic/translator --source "$D/source" --target "$D/target" --out "$OUT/translator" \
    --iters 6 > /dev/null 2>&1 || echo "translator: failed"
for run in w_source-only w_diga w_plca w_dacs w_oracle s_diga s_diga_dps s_diga_thr s_t2s s_threshold s_dacs; do
    miou=$($SEGADAPT evaluate --ckpt "$OUT/$run/last.pt" --data "$D/target" --split val --json |
           python3 -c 'import json,sys; print(repr(json.load(sys.stdin)["miou"]))')
    last=$(tail -1 "$OUT/$run/metrics.jsonl" | python3 -c '
import json, sys
r = json.load(sys.stdin)
print(" ".join(f"{k}={v!r}" for k, v in sorted(r.items()) if k.startswith("loss")))')
    echo "$run miou=$miou $last"
done
if [ -f "$OUT/translator/metrics.jsonl" ]; then
    echo "translator $(tail -1 "$OUT/translator/metrics.jsonl" | python3 -c '
import json, sys
r = json.load(sys.stdin)
print(" ".join(f"{k}={v!r}" for k, v in sorted(r.items()) if k.startswith("loss")))')"
fi

# Shared by methods.sh and ablation.sh (source it): the benchmark's folders from a finished example run,
# and the evaluation of added stages into OUT/eval/<stage>.json.
#   source "$(dirname "$0")/common.sh"; bench_setup OUT BENCH
# sets SEGADAPT, SEED, S (seed + resume flags), SRC, TGT and EVAL (the evaluate flags).
bench_setup() {
    OUT=$1 BENCH=$2
    SEGADAPT=${SEGADAPT:-segadapt}
    export SEGADAPT_QUIET=1
    SEED=$(sed -n 's/^seed: *\([^ #]*\).*/\1/p' "$OUT/warmup/config.yaml" | head -1)
    S=(--set "seed=$SEED" --resume)
    case $BENCH in
        synthetic) SRC=$OUT/data/source TGT=$OUT/data/target EVAL=(--data "$OUT/data/target" --split val) ;;
        camvid_day2dusk) SRC=$OUT/data/day TGT=$OUT/data/dusk EVAL=(--data "$OUT/data/dusk" --split train --input-size 180x240) ;;
        *) echo "unknown benchmark $BENCH" >&2; exit 2 ;;
    esac
}

evaluate_stages() {  # stage folder names under OUT; each result is written atomically
    mkdir -p "$OUT/eval"
    local stage
    for stage in "$@"; do
        $SEGADAPT evaluate --ckpt "$OUT/$stage/last.pt" "${EVAL[@]}" --json > "$OUT/eval/$stage.json.tmp"
        mv "$OUT/eval/$stage.json.tmp" "$OUT/eval/$stage.json"
    done
    echo "done: $OUT/eval" >&2
}

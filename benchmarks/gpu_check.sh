#!/usr/bin/env bash
# The one prepared GPU check: from a fresh checkout on a bare GPU machine (no dataset, no weights, no
# network: it generates its inputs), measure the CUDA paths and print one table.
#
#   benchmarks/gpu_check.sh OUT                  # on a CUDA machine (about 8 minutes on one H100)
#   DEVICE=cpu TINY=1 benchmarks/gpu_check.sh OUT   # CPU dry run of every step at toy sizes (the test suite runs it)
#
# Steps (each a separate process, its log in OUT/logs/, its failure named; any failure or CUDA error
# ends the script with exit 1 after the remaining steps ran):
#   1. training step time, images/s and peak memory of DiGA warm-up, DiGA self-training, PLCA and T2S-DA
#      on DeepLab-v2 R101 at 512x896, batch 2 (DiGA's setting), and on DAFormer MiT-B5 at 512x512,
#      in fp32, AMP bf16, bf16 + channels_last, and bf16 + channels_last + torch.compile;
#   2. pseudo-label and evaluate throughput at 2048x1024 (Cityscapes frames);
#   3. with 2 or more GPUs: a 2-process torchrun (NCCL) evaluation equal to one process, and 4 training
#      steps; skipped on one GPU.
# Environment: PYTHON (default python3), STEP_TIMEOUT seconds per step (default 420),
# COMPILE_METHODS (methods timed with torch.compile; compiling costs about a minute each).
set -uo pipefail
OUT=${1:?usage: benchmarks/gpu_check.sh OUT   (DEVICE=cpu TINY=1 for the CPU dry run)}
HERE=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda}
TINY=${TINY:-0}
STEP_TIMEOUT=${STEP_TIMEOUT:-420}
# the checkout itself is the package: a bare GPU machine has torch but no segadapt install
export PYTHONPATH="$HERE${PYTHONPATH:+:$PYTHONPATH}" SEGADAPT_QUIET=1 PYTHONUNBUFFERED=1

if ! "$PY" -c "import torch, typer, yaml, cv2" 2>/dev/null; then
  echo "gpu_check: $PY lacks torch, typer, pyyaml or opencv; set PYTHON to an environment with segadapt's dependencies" >&2
  exit 2
fi
case "$DEVICE" in
  cuda) if ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
          echo "gpu_check: no CUDA GPU is visible here; run it on a GPU machine, or DEVICE=cpu TINY=1 for the CPU dry run" >&2
          exit 2
        fi ;;
  cpu) ;;
  *) echo "gpu_check: DEVICE must be cuda or cpu, got '$DEVICE'" >&2; exit 2 ;;
esac
mkdir -p "$OUT/logs" || exit 1
: > "$OUT/steps.jsonl"
rm -f "$OUT/infer.json" "$OUT/torchrun.txt"

FAILED=()
step() {  # step NAME CMD...: CMD's output to OUT/logs/NAME.log; a non-zero exit or a CUDA error fails it
  local name=$1; shift
  local t0=$SECONDS rc
  timeout "$STEP_TIMEOUT" "$@" > "$OUT/logs/$name.log" 2>&1
  rc=$?
  if [ $rc -eq 0 ] && grep -q -E "CUDA error|CUBLAS_STATUS|CUDNN_STATUS|cuDNN error|illegal memory access|device-side assert|NCCL error" "$OUT/logs/$name.log"; then
    rc=99
  fi
  if [ $rc -ne 0 ]; then
    [ $rc -eq 124 ] && echo "gpu_check: step '$name' timed out after ${STEP_TIMEOUT}s" >&2
    echo "gpu_check: FAILED (exit $rc): $*" >&2
    tail -n 5 "$OUT/logs/$name.log" | sed 's/^/    /' >&2
    FAILED+=("$name")
    return 1
  fi
  echo "gpu_check: $name ok ($((SECONDS - t0)) s)" >&2
}

"$PY" - <<'PY' >&2
import torch
dev = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA"
print(f"gpu_check: torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.device_count()} GPU(s): {dev}")
PY

# -- 1. training step time ------------------------------------------------------------------------------
if [ "$TINY" = 1 ]; then
  MODELS=("--arch deeplabv2 --backbone tiny --crop 64x64 --batch 2"
          "--arch segformer --backbone mit_b0 --head daformer --crop 64x64 --batch 2")
  ROUNDS=1
  MODEL_METHODS=(warmup:diga,self-train:diga,warmup:plca,self-train:t2s warmup:diga)  # dry run: keep it short
  # dry run: bf16 is exercised with channels_last, and SegFormer only in fp32 and bf16 + channels_last
  # (its aot_eager compile alone takes ~45 s on a CPU; model 1's compiled row covers that path)
  SKIP_VARIANTS=("bf16" "bf16|bf16 --channels-last --compile")
  COMPILE_METHODS=${COMPILE_METHODS:-warmup:diga}
  COMPILE_BACKEND=aot_eager  # inductor's C++ build takes minutes on a CPU; the capture path is the same
else
  MODELS=("--arch deeplabv2 --backbone resnet101 --crop 512x896 --batch 2"
          "--arch segformer --backbone mit_b5 --head daformer --crop 512x512 --batch 2")
  ROUNDS=3
  MODEL_METHODS=(warmup:diga,self-train:diga,warmup:plca,self-train:t2s warmup:diga,self-train:diga,warmup:plca,self-train:t2s)
  SKIP_VARIANTS=("" "")
  COMPILE_METHODS=${COMPILE_METHODS:-warmup:diga,self-train:diga}
  COMPILE_BACKEND=inductor
fi
i=0
for model in "${MODELS[@]}"; do
  i=$((i + 1))
  for variant in "off" "bf16" "bf16 --channels-last" "bf16 --channels-last --compile"; do
    [[ "|${SKIP_VARIANTS[$((i - 1))]}|" == *"|$variant|"* ]] && continue
    set -- $variant
    amp=$1; shift
    methods=${MODEL_METHODS[$((i - 1))]}
    extra=("$@")
    if [[ " $variant " == *" --compile "* ]]; then
      methods=$COMPILE_METHODS
      extra+=(--compile-backend "$COMPILE_BACKEND")
    fi
    name="step_m${i}_${amp}$( [[ " $variant " == *channels* ]] && echo _cl)$( [[ " $variant " == *compile* ]] && echo _compile)"
    # shellcheck disable=SC2086
    step "$name" "$PY" "$HERE/benchmarks/step_time.py" $model --device "$DEVICE" --rounds "$ROUNDS" \
      --methods "$methods" --amp "$amp" "${extra[@]}" --json \
      && grep '^{' "$OUT/logs/$name.log" >> "$OUT/steps.jsonl"
  done
done

# -- 2. pseudo-label and evaluate throughput -------------------------------------------------------------
DATA="$OUT/data"
if [ "$TINY" = 1 ]; then
  SIZE=(256 128); N=4; CFG=synthetic/source_only; MODEL_SET=(--set data.crop=[64,64])
else
  SIZE=(2048 1024); N=24; CFG=gta5_cityscapes/source_only
  MODEL_SET=(--set model.pretrained=null --set data.crop=[512,896] --set data.source_resize=null)
fi
rm -rf "$DATA" "$OUT/run"
step inputs "$PY" -c "
from segadapt.data.prepare.synthetic import prepare_synthetic
prepare_synthetic('$DATA', seed=0, n_source=4, n_target_train=$N, n_target_val=$N, width=${SIZE[0]}, height=${SIZE[1]}, workers=8)
" && step checkpoint "$PY" -m segadapt warmup -c "$CFG" --source "$DATA/source" --out "$OUT/run" --iters 2 \
    --set data.batch_size=2 --set train.device="$DEVICE" --set data.workers=0 "${MODEL_SET[@]}" \
  && step infer "$PY" "$HERE/benchmarks/infer_throughput.py" --ckpt "$OUT/run/last.pt" --data "$DATA/target" \
    --device "$DEVICE" \
  && grep '^{' "$OUT/logs/infer.log" | tail -n 1 > "$OUT/infer.json"

# -- 3. two processes (NCCL) --------------------------------------------------------------------------
NGPU=$("$PY" -c "import torch; print(torch.cuda.device_count())")
if [ "$DEVICE" = cuda ] && [ "$NGPU" -ge 2 ] && [ -f "$OUT/run/last.pt" ]; then
  step eval_1proc "$PY" -m segadapt evaluate --ckpt "$OUT/run/last.pt" --data "$DATA/target" --split val --json \
  && step eval_2proc "$PY" -m torch.distributed.run --standalone --nproc_per_node=2 -m segadapt evaluate \
       --ckpt "$OUT/run/last.pt" --data "$DATA/target" --split val --json \
  && step train_2proc "$PY" -m torch.distributed.run --standalone --nproc_per_node=2 -m segadapt warmup -c "$CFG" \
       --source "$DATA/source" --out "$OUT/run2" --iters 4 --set data.batch_size=2 "${MODEL_SET[@]}" --force \
  && "$PY" - "$OUT" <<'PY' || FAILED+=(torchrun_compare)
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
one, two = (json.loads([l for l in (out / "logs" / f).read_text().splitlines() if l.startswith("{")][-1])
            for f in ("eval_1proc.log", "eval_2proc.log"))
same = abs(one["miou"] - two["miou"]) < 1e-9
(out / "torchrun.txt").write_text(f"torchrun 2 processes (NCCL): evaluate mIoU {two['miou']:.6f} vs one process "
                                  f"{one['miou']:.6f} ({'equal' if same else 'DIFFERENT'}); 4 training steps ran\n")
sys.exit(0 if same else 1)
PY
else
  echo "torchrun 2 processes (NCCL): skipped ($NGPU GPU(s) on $DEVICE)" > "$OUT/torchrun.txt"
fi

"$PY" "$HERE/benchmarks/gpu_summary.py" "$OUT"
if [ ${#FAILED[@]} -gt 0 ]; then
  echo "gpu_check: ${#FAILED[@]} step(s) failed: ${FAILED[*]} (logs in $OUT/logs)" >&2
  exit 1
fi
echo "gpu_check: all steps passed" >&2

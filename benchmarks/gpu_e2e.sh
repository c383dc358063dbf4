#!/usr/bin/env bash
# End-to-end check of run_glue_peft.py on a GPU under mixed precision: every method x precision runs a short
# training (GLoRA reallocates on the way, so the resize + optimizer rebuild runs under autocast and, for fp16, under
# the GradScaler), evaluates and writes all_results.json; benchmarks/e2e_check.py then checks finite losses, the
# rank budget, GLoRA's reallocation and that the saved adapter reloads with the same ranks. One line per run.
#
#   bash benchmarks/gpu_e2e.sh MODEL DATA_DIR [TASK] [flags for run_glue_peft.py ...]
#   e.g. bash benchmarks/gpu_e2e.sh microsoft/deberta-v3-base ../shared/data/glue sst2 --max_train_samples 2000
#
# Env: PYTHON (the interpreter, default python3), E2E_ROOT (outputs, default outputs/gpu_e2e), E2E_PRECISIONS
# ("bf16 fp16"; "fp32" = neither flag), E2E_STEPS (60), E2E_DEVICE_ARGS (extra device flags, e.g. "--use_cpu True"
# to dry-run it on a CPU), E2E_TIMEOUT (seconds per run, default none), E2E_PARALLEL=1 (the precisions run side by
# side, each its methods in turn: most of a short run is start-up, not GPU work), E2E_ADALORA_ARGS and
# E2E_GLORA_ARGS (flags for that method only: run_glue_peft.py refuses another method's flags, e.g. "--tinit 10
# --tfinal 20" and "--glora_warmup_steps 20"). Exits 1 if any run failed.
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=$1 DATA=$2 TASK=${3:-sst2}
shift $(( $# < 3 ? $# : 3 ))
PYTHON=${PYTHON:-python3}
ROOT=${E2E_ROOT:-outputs/gpu_e2e}
read -r -a PRECISIONS <<< "${E2E_PRECISIONS:-bf16 fp16}"
read -r -a DEVICE_ARGS <<< "${E2E_DEVICE_ARGS:-}"
LIMIT=()
[ -n "${E2E_TIMEOUT:-}" ] && LIMIT=(timeout -k 10 "$E2E_TIMEOUT")
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1} WANDB_MODE=${WANDB_MODE:-offline} TOKENIZERS_PARALLELISM=false
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
mkdir -p "$ROOT/$TASK"

run_precision() {  # every method under one precision; returns 1 if any failed
  local precision=$1 status=0 rc amp out own
  shift
  case $precision in bf16) amp=(--bf16 True) ;; fp16) amp=(--fp16 True) ;; fp32) amp=() ;;
    *) echo "unknown precision $precision (bf16, fp16, fp32)"; return 2 ;; esac
  for method in lora adalora glora; do
    out="$ROOT/$TASK/${method}_$precision"
    own="E2E_${method^^}_ARGS"
    read -r -a own <<< "${!own:-}"
    rc=0
    "${LIMIT[@]}" "$PYTHON" run_glue_peft.py --model_name_or_path "$MODEL" --dataset_dir "$DATA" --task "$TASK" \
        --method "$method" --output_dir "$out" --overwrite_output_dir True --max_steps "${E2E_STEPS:-60}" \
        --per_device_train_batch_size 32 --learning_rate 5e-4 --warmup_steps 0 --eval_strategy no \
        --save_strategy no --logging_steps 10 --report_to none --seed 1 "${amp[@]}" "${DEVICE_ARGS[@]}" "${own[@]}" "$@" \
        > "$out.log" 2>&1 || rc=$?
    if [ $rc != 0 ]; then  # 124: its E2E_TIMEOUT ran out
      echo "$TASK $method $precision: FAILED, rc $rc (see $out.log)"; tail -5 "$out.log"; status=1; continue
    fi
    "${LIMIT[@]}" "$PYTHON" -m benchmarks.e2e_check "$out" "$MODEL" "$precision" || status=1
  done
  return $status
}

status=0 pids=()
for precision in "${PRECISIONS[@]}"; do
  if [ "${E2E_PARALLEL:-0}" = 1 ]; then run_precision "$precision" "$@" & pids+=($!)
  else run_precision "$precision" "$@" || status=1; fi
done
for pid in "${pids[@]}"; do wait "$pid" || status=1; done
exit $status

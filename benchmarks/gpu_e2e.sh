#!/usr/bin/env bash
# End-to-end check of run_glue_peft.py on a GPU under mixed precision: every method x precision runs a short
# training (GLoRA reallocates half-way, so the resize + optimizer rebuild runs under autocast and, for fp16, under
# the GradScaler), evaluates, and must write all_results.json. Prints one line per run.
#
#   bash benchmarks/gpu_e2e.sh MODEL DATA_DIR [TASK] [flags for run_glue_peft.py ...]
#   e.g. bash benchmarks/gpu_e2e.sh microsoft/deberta-v3-base ../shared/data/glue sst2 --max_train_samples 2000
#
# Env: E2E_ROOT (outputs, default outputs/gpu_e2e), E2E_PRECISIONS ("bf16 fp16"; "fp32" = neither flag),
# E2E_STEPS (60), E2E_DEVICE_ARGS (extra device flags, e.g. "--use_cpu True" to dry-run it on a CPU).
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=$1 DATA=$2 TASK=${3:-sst2}
shift $(( $# < 3 ? $# : 3 ))
ROOT=${E2E_ROOT:-outputs/gpu_e2e}
read -r -a PRECISIONS <<< "${E2E_PRECISIONS:-bf16 fp16}"
read -r -a DEVICE_ARGS <<< "${E2E_DEVICE_ARGS:-}"
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1} WANDB_MODE=${WANDB_MODE:-offline} TOKENIZERS_PARALLELISM=false
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
mkdir -p "$ROOT/$TASK"
status=0
for precision in "${PRECISIONS[@]}"; do
  case $precision in bf16) amp=(--bf16 True) ;; fp16) amp=(--fp16 True) ;; fp32) amp=() ;;
    *) echo "unknown precision $precision (bf16, fp16, fp32)"; exit 2 ;; esac
  for method in lora adalora glora; do
    out="$ROOT/$TASK/${method}_$precision"
    python run_glue_peft.py --model_name_or_path "$MODEL" --dataset_dir "$DATA" --task "$TASK" --method "$method" \
      --output_dir "$out" --overwrite_output_dir True --max_steps "${E2E_STEPS:-60}" --per_device_train_batch_size 32 \
      --learning_rate 5e-4 --warmup_steps 0 --eval_strategy no --save_strategy no --logging_steps 10 \
      --report_to none --seed 1 "${amp[@]}" "${DEVICE_ARGS[@]}" "$@" > "$out.log" 2>&1 \
      || { echo "$TASK $method $precision: FAILED (see $out.log)"; tail -5 "$out.log"; status=1; continue; }
    python - "$out" "$precision" <<'EOF'
import json, sys
out, precision = sys.argv[1], sys.argv[2]
r = json.load(open(f"{out}/all_results.json"))
ranks = json.load(open(f"{out}/ranks.json"))
score = {k: round(v, 4) for k, v in r.items() if k.startswith("eval_") and any(m in k for m in ("accuracy", "f1", "matthews", "pearson"))}
final = [m["final_rank"] for m in ranks["modules"].values()]
moved = f", reallocated at step {ranks['glora']['reallocation_step']}" if "glora" in ranks else ""
print(f"{r['task']} {r['method']} {precision}: {score} train_loss {r['train_loss']:.4f}, total rank {sum(final)}"
      f"/{r['rank_budget']} (per matrix {min(final)}-{max(final)}{moved}), train {r['train_runtime']:.1f} s")
EOF
  done
done
exit $status

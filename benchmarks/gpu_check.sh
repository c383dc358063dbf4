#!/usr/bin/env bash
# GPU readiness in one command, within 8 minutes: environment, offline install of what is missing, step-time cost
# ratios on the DeBERTa-v3-base architecture (bf16, batch 32, lengths 128 and 256) and every method end to end
# under bf16 and fp16 (60 steps, real SST-2, a random DeBERTa-v3-base-shaped model built here). Every table and
# log goes to OUT; a part that fails does not stop the others; the exit status is 1 if any failed.
#
#   bash benchmarks/prepare_gpu_check.sh                 # once, on a machine with PyPI: fills benchmarks/gpu_kit
#   bash benchmarks/gpu_check.sh [OUT]                   # on the GPU machine (default OUT: outputs/gpu_check)
#   bash benchmarks/gpu_check.sh --dry-run [OUT]         # CPU, tiny sizes, bf16 only (fp16 needs CUDA), ~1 minute
#
# Env: PYTHON (python3: the interpreter holding torch; never a `python` wrapper), GPU_KIT (benchmarks/gpu_kit),
# GPU_CHECK_PARTS (a subset of "env install model step_time e2e"). Each part has its own time limit (LIMITS below,
# capped by what is left of 470 s), so one hang cannot eat the window. The limits are budgets, not measurements.
set -uo pipefail  # no -e: every part runs even when one fails; the summary and exit status collect the failures
cd "$(dirname "$0")/.."
DRY=0
[[ ${1:-} == --dry-run ]] && { DRY=1; shift; }
OUT=$(realpath -m "${1:-outputs/gpu_check}")
KIT=$(realpath -m "${GPU_KIT:-benchmarks/gpu_kit}")
PYTHON=$(command -v "${PYTHON:-python3}") || { echo "gpu_check: no ${PYTHON:-python3} on PATH"; exit 2; }
read -r -a PARTS <<< "${GPU_CHECK_PARTS:-env install model step_time e2e}"
declare -A LIMITS=([env]=20 [install]=40 [model]=40 [step_time]=150 [e2e]=220)  # seconds; sum 470
DEADLINE=$(( $(date +%s) + 470 ))
MODEL=$(mktemp -d)  # the random model: ~0.5 GB, built here, never in OUT (OUT is what comes back)
trap 'rm -rf "$MODEL"' EXIT
# Packages installed from the kit come first; the project's modules are found from the repository root.
export PYTHON PYTHONPATH="$OUT/site${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 \
  HF_DATASETS_CACHE="$OUT/datasets_cache" WANDB_MODE=offline TOKENIZERS_PARALLELISM=false
mkdir -p "$OUT"
exec > >(tee "$OUT/gpu_check.log") 2>&1

if [ $DRY = 1 ]; then
  TINY=(--tiny)
  STEP=(bash benchmarks/gpu.sh --tiny --signals lora_b delta --iters 2 --json_out "$OUT/step_time.json")
  E2E_ENV=(E2E_PRECISIONS=bf16 E2E_STEPS=6 "E2E_DEVICE_ARGS=--use_cpu True" OMP_NUM_THREADS=1
           "E2E_ADALORA_ARGS=--tinit 1 --tfinal 2" "E2E_GLORA_ARGS=--glora_warmup_steps 3")
  E2E_FLAGS=(--max_seq_length 32 --lora_r 4 --per_device_train_batch_size 8 --max_train_samples 64
             --max_eval_samples 32 --logging_steps 2)
else
  TINY=()
  STEP=(bash benchmarks/gpu.sh --signals lora_b delta --warmup_iters 5 --iters 30 --json_out "$OUT/step_time.json")
  E2E_ENV=(E2E_PRECISIONS="bf16 fp16" E2E_STEPS=60 E2E_PARALLEL=1 E2E_TIMEOUT=100
           "E2E_ADALORA_ARGS=--tinit 10 --tfinal 20" "E2E_GLORA_ARGS=--glora_warmup_steps 20")
  E2E_FLAGS=(--max_eval_samples 256)
fi

declare -A STATUS
part() {  # part NAME COMMAND...: under its own limit, output to the console and OUT/NAME.log
  local name=$1 left start rc
  shift
  left=$(( DEADLINE - $(date +%s) ))
  local limit=$(( LIMITS[$name] < left ? LIMITS[$name] : left ))
  if (( limit < 5 )); then STATUS[$name]="SKIPPED (no time left)"; return; fi
  echo "== $name (limit ${limit} s) $(date +%T) =="
  start=$(date +%s)
  timeout -k 10 "$limit" "$@" 2>&1 | tee "$OUT/$name.log"
  rc=${PIPESTATUS[0]}
  if [ "$rc" = 0 ]; then STATUS[$name]="ok"; elif [ "$rc" = 124 ]; then STATUS[$name]="FAILED (timed out)"
  else STATUS[$name]="FAILED (rc $rc)"; fi
  STATUS[$name]+=", $(( $(date +%s) - start )) s"
  echo "== $name: ${STATUS[$name]} =="
}

echo "gpu_check $([ $DRY = 1 ] && echo '--dry-run ')at $(date -Is): OUT $OUT, kit $KIT, interpreter $PYTHON"
for name in "${PARTS[@]}"; do
  case $name in
    env)  # before the install: what the machine has
      part env bash -c 'command -v nvidia-smi >/dev/null && nvidia-smi; "$PYTHON" benchmarks/gpu_kit.py env' ;;
    install)  # only what is missing or must match the pins, into OUT/site; then the versions in use
      part install bash -c '"$PYTHON" benchmarks/gpu_kit.py install "$1/wheels" "$2/site" && echo "-- in use:" &&
        "$PYTHON" benchmarks/gpu_kit.py env && "$PYTHON" -c "import datasets, run_glue_peft"' _ "$KIT" "$OUT" ;;
    model)
      part model "$PYTHON" -m benchmarks.make_random_model "$KIT/tokenizer" "$MODEL" "${TINY[@]}" ;;
    step_time)
      part step_time "${STEP[@]}" ;;
    e2e)
      part e2e env "${E2E_ENV[@]}" E2E_ROOT="$OUT/e2e" bash benchmarks/gpu_e2e.sh "$MODEL" "$KIT/data" sst2 \
        "${E2E_FLAGS[@]}" ;;
    *) STATUS[$name]="FAILED (unknown part; choose from ${!LIMITS[*]})" ;;
  esac
done

echo "== summary =="
failed=0
for name in "${PARTS[@]}"; do
  echo "$name: ${STATUS[$name]} (limit ${LIMITS[$name]:-?} s)"
  [[ ${STATUS[$name]} == ok* ]] || failed=1
done
grep -h -E "^(== |lora |adalora |glora_|goal )" "$OUT/step_time.log" 2>/dev/null  # the ratio tables
grep -h "^sst2 " "$OUT/e2e.log" 2>/dev/null  # one line per end-to-end run
echo "outputs in $OUT; gpu_check: $([ $failed = 0 ] && echo PASSED || echo FAILED)"
exit $failed

#!/usr/bin/env bash
# The pruner measurement's data (docs/hpo.md, "Which pruner"): for each of LoRA, AdaLoRA and GLoRA, one UNPRUNED
# study of the CPU check's space (MiniLM-L6, real SST-2, 2,000 training examples, 1 epoch, 8 trials, TPE sampler
# seed 1, one worker) in which every trial evaluates the tuning split 8 times, then the final runs (seeds 1 2 3)
# with its best values. The pruners are then replayed on these learning curves (python3 -m search.replay_pruners):
# with 8 trials all of TPE's draws are its random start-up ones, the same for every pruner, and a trial's values up
# to any evaluation do not depend on whether it would be stopped there.
#
#   launch/pruner_check.sh [DATA_DIR]      # default data/glue (the shipped SST-2 sample); all in outputs/pruner_check
#
#   PRUNER_FINAL="glora 0.000219 16" launch/pruner_check.sh [DATA_DIR]
#                                          # only final runs (seeds 1 2 3) of one method with these values, in
#                                          # $PRUNER_ROOT/final_other/sst2/<method>_lr<LR>_bs<BS>_seed<S>: the
#                                          # best trial a pruned study would have picked, when it is not the unpruned one
#
# Two studies at a time, one thread each. PRUNER_ROOT and PRUNER_EXTRA_ARGS (e.g. "--n_trials 2 --max_steps 2
# --final_seeds 1" for a dry run) override the settings below from outside.
set -euo pipefail
cd "$(dirname "$0")/.."

DATA=${1:-data/glue}
ROOT=${PRUNER_ROOT:-outputs/pruner_check}
read -r -a EXTRA <<< "${PRUNER_EXTRA_ARGS:-}"
. launch/cpu_check_run.sh  # MODEL, RUN
SEARCH=(--n_trials 8 --tuning_split_max 500 --final_seeds 1 2 3 --final_root "$ROOT/final" --pruner none
        --evaluations_per_trial 8 --sampler_seed 1)

mkdir -p "$ROOT"
if [ -n "${PRUNER_FINAL:-}" ]; then  # final runs of other values, as hpo.py makes them (same rows held out)
  read -r method lr bs <<< "$PRUNER_FINAL"
  for seed in 1 2 3; do
    out="$ROOT/final_other/sst2/${method}_lr${lr}_bs${bs}_seed$seed"
    mkdir -p "$(dirname "$out")"
    [ -f "$out/all_results.json" ] && { echo "$out: finished, kept"; continue; }
    python3 run_glue_peft.py "${RUN[@]}" --method "$method" --learning_rate "$lr" --per_device_train_batch_size "$bs" \
      --tuning_split_fraction 0.1 --tuning_split_max 500 --eval_split dev --seed "$seed" --output_dir "$out" \
      --overwrite_output_dir True "${EXTRA[@]}" > "$out.log" 2>&1
    echo "$out: $(python3 -c "import json, sys; print(json.load(open(sys.argv[1]))['eval_combined_score'])" "$out/all_results.json")"
  done
  exit 0
fi
exec > >(tee -a "$ROOT/pruner_check.log") 2>&1
echo "commit $(git rev-parse HEAD 2>/dev/null || echo unknown)"
start=$(date +%s)
pids=()
for method in lora glora adalora; do
  if [ "${#pids[@]}" -ge 2 ]; then wait "${pids[0]}"; pids=("${pids[@]:1}"); fi  # two studies at a time
  echo "$(date +%T) $method: unpruned study and final runs ($ROOT/sst2_$method.log)"
  python3 hpo.py configs/search/cpu_lr_batch.yaml --method "$method" --study_dir "$ROOT/sst2_$method" "${SEARCH[@]}" \
    "${RUN[@]}" "${EXTRA[@]}" > "$ROOT/sst2_$method.log" 2>&1 & pids+=($!)
done
for pid in "${pids[@]}"; do wait "$pid"; done
for method in lora glora adalora; do sed -n '/^== study/,$p' "$ROOT/sst2_$method.log"; done
echo "check wall-clock: $(( $(date +%s) - start )) s"

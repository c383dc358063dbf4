#!/usr/bin/env bash
# Every method x task x seed of the proposal, one after another. Edit the lists to change the sweep;
# extra flags go to every run (e.g. launch/sweep.sh --max_steps 2 --max_eval_samples 64 for a dry run).
# Runs already finished (all_results.json present) are skipped, so an interrupted sweep can be restarted.
# PYTHON (default python3) runs every step; `-m accelerate.commands.launch` is `accelerate launch` (your accelerate
# config, several GPUs) run by that interpreter, not by whichever `accelerate` is first on PATH.
set -euo pipefail
cd "$(dirname "$0")/.."

METHODS=(lora adalora glora)
TASKS=(rte sst2 mnli)
SEEDS=(42 43 44)
ROOT=${SWEEP_ROOT:-outputs/sweep}
PYTHON=${PYTHON:-python3}

for task in "${TASKS[@]}"; do
  for method in "${METHODS[@]}"; do
    for seed in "${SEEDS[@]}"; do
      out="$ROOT/$task/${method}_seed$seed"
      if [ -f "$out/all_results.json" ]; then echo "done already: $out"; continue; fi
      "$PYTHON" -m accelerate.commands.launch run_glue_peft.py "configs/${method}_${task}.yaml" --seed "$seed" --output_dir "$out" "$@"
    done
  done
done
"$PYTHON" compare_runs.py "$ROOT"

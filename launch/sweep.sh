#!/usr/bin/env bash
# Every method x task x seed of the proposal, one after another. Edit the lists to change the sweep;
# extra flags go to every run (e.g. launch/sweep.sh --max_steps 2 --max_eval_samples 64 for a dry run).
# Runs already finished (all_results.json present) are skipped, so an interrupted sweep can be restarted; each run's
# config (its sha256), seed and extra flags go to OUT.flags at its start, and a finished run made with others (a trial
# sweep's `--max_steps 2` runs, an edited config) is refused in one line before any run starts: move it aside to rerun.
# PYTHON (default python3) runs every step; `-m accelerate.commands.launch` is `accelerate launch` (your accelerate
# config, several GPUs) run by that interpreter, not by whichever `accelerate` is first on PATH.
set -euo pipefail
cd "$(dirname "$0")/.."
source launch/run_pool.sh  # finished_with_other_flags

METHODS=(lora adalora glora)
TASKS=(rte sst2 mnli)
SEEDS=(42 43 44)
ROOT=${SWEEP_ROOT:-outputs/sweep}
PYTHON=${PYTHON:-python3}

run_flags() {  # what makes run (method, task, seed) what it is: one line, as OUT.flags holds it
  local config="configs/${1}_${2}.yaml"
  echo "$config sha256 $(sha256sum "$config" | cut -c1-64) --seed $3 $EXTRA"
}
EXTRA="$*"
for stage in check run; do  # first every finished run against what is asked now, then the runs
  for task in "${TASKS[@]}"; do
    for method in "${METHODS[@]}"; do
      for seed in "${SEEDS[@]}"; do
        out="$ROOT/$task/${method}_seed$seed"
        if [ -f "$out/all_results.json" ]; then
          if finished_with_other_flags "$out" "$(run_flags "$method" "$task" "$seed")"; then
            echo "sweep.sh: $out finished with other flags or config than asked now (see $out.flags);" \
              "move it aside to rerun it" >&2
            exit 2
          fi
          [ $stage = run ] && echo "done already: $out"
          continue
        fi
        [ $stage = run ] || continue
        mkdir -p "$(dirname "$out")" && run_flags "$method" "$task" "$seed" > "$out.flags"
        "$PYTHON" -m accelerate.commands.launch run_glue_peft.py "configs/${method}_${task}.yaml" --seed "$seed" --output_dir "$out" "$@"
      done
    done
  done
done
"$PYTHON" compare_runs.py "$ROOT"

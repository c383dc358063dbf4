#!/usr/bin/env bash
# The hyper-parameter search's real check on CPU, offline (docs/hpo.md): MiniLM-L6 on real SST-2 (2,000 training
# examples, 1 epoch, length-grouped batches), learning rate and batch size searched for each of LoRA, AdaLoRA and
# GLoRA (configs/search/cpu_lr_batch.yaml: 8 trials each, hpo.py's default: no pruning, one evaluation per trial,
# scored at its end on a 500-example tuning split held out from the training data), then final runs with the best
# values for seeds 1 2 3, and compare_runs.py on them.
#
#   launch/hpo_cpu_check.sh [DATA_DIR]      # default data/glue (the shipped SST-2 sample); all in outputs/hpo_cpu
#
# Two worker processes per study (one thread each), then the final runs, two methods at a time. A killed check resumes
# where it stopped when started again (the studies are in outputs/hpo_cpu/sst2_<method>/study.journal; finished final
# runs are kept). HPO_ROOT, HPO_WORKERS (2) and HPO_EXTRA_ARGS (e.g. "--n_trials 2 --max_steps 2 --final_seeds 1"
# for a dry run) override the settings below from outside.
set -euo pipefail
cd "$(dirname "$0")/.."

DATA=${1:-data/glue}
ROOT=${HPO_ROOT:-outputs/hpo_cpu}
read -r -a EXTRA <<< "${HPO_EXTRA_ARGS:-}"
. launch/cpu_check_run.sh  # MODEL, RUN
SEARCH=(--n_trials 8 --tuning_split_max 500 --final_seeds 1 2 3 --final_root "$ROOT/final")

WORKERS=${HPO_WORKERS:-2}
mkdir -p "$ROOT"
exec > >(tee -a "$ROOT/hpo_cpu_check.log") 2>&1
start=$(date +%s)
for method in lora adalora glora; do  # the searches, one method at a time, WORKERS processes on its study
  study=(configs/search/cpu_lr_batch.yaml --method "$method" --study_dir "$ROOT/sst2_$method" "${SEARCH[@]}")
  echo "$(date +%T) $method: search, $WORKERS workers (their lines: $ROOT/sst2_${method}_worker<N>.log)"
  pids=()
  for worker in $(seq "$WORKERS"); do
    # One seed for all workers (a study refuses another): trial n draws from SeedSequence([1, n]), so they differ.
    python3 hpo.py "${study[@]}" --stage search --sampler_seed 1 "${RUN[@]}" "${EXTRA[@]}" \
      > "$ROOT/sst2_${method}_worker$worker.log" 2>&1 & pids+=($!)
  done
  for pid in "${pids[@]}"; do wait "$pid" || { echo "a $method worker failed"; exit 1; }; done
done
echo "$(date +%T) final runs, $WORKERS methods at a time (summaries: $ROOT/sst2_<method>_final.log)"
pids=()
for method in lora adalora glora; do
  if [ "${#pids[@]}" -ge "$WORKERS" ]; then wait "${pids[0]}"; pids=("${pids[@]:1}"); fi  # oldest first
  python3 hpo.py configs/search/cpu_lr_batch.yaml --method "$method" --study_dir "$ROOT/sst2_$method" "${SEARCH[@]}" \
    --stage final "${RUN[@]}" "${EXTRA[@]}" > "$ROOT/sst2_${method}_final.log" 2>&1 & pids+=($!)
done
for pid in "${pids[@]}"; do wait "$pid"; done
for method in lora adalora glora; do sed -n '/^== study/,$p' "$ROOT/sst2_${method}_final.log"; done
echo "check wall-clock: $(( $(date +%s) - start )) s"
python3 compare_runs.py "$ROOT/final" --out_dir "$ROOT/final/comparison"

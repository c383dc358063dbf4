#!/usr/bin/env bash
# Tables of issue 27's downstream study on real SST-2 (run from the main checkout: its compare_runs.py and
# launch/frontier.py, which adds the 2-SE column). The runs: /work/wt/real27 (pinned at 4a55c9a), outputs/real_sst2
# (launch/low_budget_study.sh, then chain8.sh: the widened grid, then chain9.sh: seeds 4-6). Writes docs/allocation/real_sst2/: each run's
# records (all_results.json, ranks.json, run_args.json, OUT.flags absent at 4a55c9a; tuning runs also eval_log.jsonl),
# the comparison, the frontier and the learning-rate curves, and the compute summary.
set -u
S=/work/wt/real27/outputs
D=docs/allocation/real_sst2
export OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 WANDB_MODE=offline
records() {  # records SOURCE_ROOT DEST: the small per-run files, paths kept
  (cd "$1" && find -L . \( -name all_results.json -o -name ranks.json -o -name run_args.json -o -name eval_log.jsonl \
     -o -name "chosen_rates*.json" -o -name tuning.md -o -name study.log -o -name chain8.out -o -name chain9.out \) -print0 | \
   while IFS= read -r -d '' f; do mkdir -p "$2/$(dirname "$f")"; cp -L "$f" "$2/$f"; done)
}
mkdir -p "$D"
records "$S/real_sst2" "$(pwd)/$D"

cp /work/wt/real27/outputs/chain8.sh /work/wt/real27/outputs/chain9.sh docs/allocation/real_sst2_scripts/
for c in comparison_grid3 comparison_seeds1-3; do
  [ -d "$S/real_sst2/$c" ] && mkdir -p "$D/$c" && cp "$S/real_sst2/$c/comparison.md" "$S/real_sst2/$c/comparison.csv" "$D/$c/"
done
python3 compare_runs.py "$S/real_sst2/final" --out_dir "$D/comparison" --no_learning_curves > "$D/compare_runs.log" 2>&1
python3 -m launch.frontier "$D/comparison/comparison.csv" --out_dir "$D/frontier" --metric accuracy \
  --tuning "$S/real_sst2" > "$D/frontier.log" 2>&1
python3 launch/study_compute.py "$S/real_sst2/study.log" > "$D/study_compute.md" 2>&1
git rev-parse HEAD > "$D/report_commit.txt"

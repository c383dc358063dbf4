#!/usr/bin/env bash
# Tables of issue 26's method arms from the chains' runs (run from the main checkout: its compare_runs.py etc.).
# Each planting's final runs from every study are gathered as links in outputs/arms/farm/<planting>/final; the
# tables go to docs/controls/identifiable/arms_<planting>/, with each run's records (all_results.json, ranks.json,
# run_args.json; tuning runs also eval_log.jsonl).
set -u
A=/work/wt/arms/outputs/arms
B=/work/wt/study3/outputs/binding
I=/work/wt/study3/outputs/ident
D=docs/controls/identifiable
export OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 WANDB_MODE=offline
farm() {  # farm NAME SOURCE_FINAL_DIR ...: copies of every finished run (rglob does not follow links)
  local name=$1; shift
  rm -rf "$A/farm/$name"; mkdir -p "$A/farm/$name/final"
  for src in "$@"; do for run in "$src"/*/; do
    [ -f "$run/all_results.json" ] && cp -rL "$run" "$A/farm/$name/final/$(basename "$run")"
  done; done
}
records() {  # records SOURCE_ROOT DEST: the small per-run files, paths kept
  (cd "$1" && find -L . \( -name all_results.json -o -name ranks.json -o -name run_args.json -o -name eval_log.jsonl \
     -o -name chosen_rates.json -o -name tuning.md -o -name study.log \) -print0 | \
   while IFS= read -r -d '' f; do mkdir -p "$2/$(dirname "$f")"; cp -L "$f" "$2/$f"; done)
}
report() {  # report NAME GROUND_TRUTH ARMS...
  local name=$1 truth=$2; shift 2
  local out=$D/arms_$name
  mkdir -p "$out"
  records "$A/farm/$name" "$(pwd)/$out"
  python3 compare_runs.py "$A/farm/$name/final" --out_dir "$out/comparison" --no_learning_curves > "$out/compare_runs.log" 2>&1
  python3 allocation_quality.py "$truth" "$A/farm/$name/final" --out_dir "$out/allocation" > /dev/null
  if [ -n "$*" ]; then python3 -m launch.oracle_share "$A/farm/$name/final" "$@" > "$out/oracle_share.txt" 2>&1; fi
}
farm s0 $B/s0/positive/final $A/s0/positive/final $A/s0un/positive/final $A/s0f/positive/final $A/s0eva1/positive/final
report s0 $I/s0/ground_truth.json glora_params glora_params_pru glora_cal glora_un adalora_params eva eva_rho1 lora_r1 lora_r3 lora_r4
for d in $A/s0 $A/s0un $A/s0f $A/s0ada $A/s0eva1; do [ -d "$d/positive/tuning" ] && records "$d/positive" "$(pwd)/$D/arms_s0/$(basename "$d")"; done
python3 -m launch.frontier $D/arms_s0/comparison/comparison.csv --out_dir $D/arms_s0/frontier \
  --tuning $B/s0/positive $A/s0/positive $A/s0un/positive $A/s0f/positive $A/s0eva1/positive > /dev/null
farm neg $A/neg/negative/final
report neg $I/neg/ground_truth.json
for p in s1 s2; do
  farm $p $B/$p/positive/final $A/$p/positive/final
  report $p $I/$p/ground_truth.json glora_params glora_params_pru adalora_params eva
done

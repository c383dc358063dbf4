#!/usr/bin/env bash
# The proposal's protocol for one task: 25 Optuna trials per method over the proposal's spaces (configs/search/
# {lora,adalora,glora}.yaml), each scored on a tuning split held out from the training data, then final runs with
# the best values for seeds 1 2 3 (W&B: add --report_to wandb; trials never log to W&B), then compare_runs.py.
#
#   launch/hpo_proposal.sh TASK [run flags...]       # e.g. launch/hpo_proposal.sh mnli
#   launch/hpo_proposal.sh rte --n_trials 2 --max_steps 2 --max_eval_samples 64   # trial mode, whole pipeline
#
# Runs start with `accelerate launch` (HPO_LAUNCHER overrides, e.g. "accelerate launch --num_processes 4").
# More workers on one study, on this or another machine (with --storage postgresql://... on all of them):
#   python3 hpo.py configs/search/glora.yaml --task mnli --stage search --storage URL
# A killed search resumes where it stopped when this script is started again. docs/hpo.md.
set -euo pipefail
cd "$(dirname "$0")/.."

TASK=${1:?usage: launch/hpo_proposal.sh TASK [run flags...]}
shift
ROOT=${HPO_ROOT:-outputs/hpo}
LAUNCHER=${HPO_LAUNCHER:-python3 -m accelerate.commands.launch}
for method in lora adalora glora; do
  python3 hpo.py "configs/search/$method.yaml" --task "$TASK" --study_dir "$ROOT/${TASK}_$method" \
    --final_root "$ROOT/final" --launcher "$LAUNCHER" "$@"
done
python3 compare_runs.py "$ROOT/final" --out_dir "$ROOT/final/comparison"

#!/usr/bin/env bash
# Issue 26's method arms on the identifiable plantings, from this worktree pinned at its commit.
set -u
cd /work/wt/arms
I=/work/wt/study3/outputs/ident
B=/work/wt/study3/outputs/binding
A=outputs/arms
echo "chain at commit $(git rev-parse HEAD), $(date -u +%FT%TZ)"
common() { env STUDY_TARGET=token_features STUDY_SEQ_LENGTH=64 STUDY_TRAIN_ROWS=2000 STUDY_EPOCHS=2 STUDY_SIGNALS="" \
  STUDY_WORKERS=2 "$@"; }
# 0. Does this commit reproduce the binding study's lora seed 1 (commit 89280dc)? Same data, flags, seed.
common STUDY_ROOT=$A/repro STUDY_DATA=$I/s0 STUDY_ARMS="lora" STUDY_SEEDS="1" \
  STUDY_RATES_FROM=$B/s0/positive/chosen_rates.json launch/control_study.sh positive
# 1. s0: the method arms, rates tuned per arm on the tuning split, seeds 1-3.
common STUDY_ROOT=$A/s0 STUDY_DATA=$I/s0 STUDY_GRID="1e-3 3e-3 1e-2" STUDY_SEEDS="1 2 3" \
  STUDY_ARMS="glora_params glora_params_pru adalora_params eva glora_cal" launch/control_study.sh positive
python3 -c "import json, sys; r = {**json.load(open(sys.argv[1])), **json.load(open(sys.argv[2]))}; \
json.dump(r, open(sys.argv[3], 'w'), indent=1)" $B/s0/positive/chosen_rates.json $A/s0/positive/chosen_rates.json $A/rates_s0.json
# 2. The negative control at s0's rates.
common STUDY_ROOT=$A/neg STUDY_DATA=$I/neg STUDY_SEEDS="1 2 3" STUDY_ARMS="lora glora_params adalora_params eva" \
  STUDY_RATES_FROM=$A/rates_s0.json launch/control_study.sh negative
# 3-4. s1 and s2 at s0's rates.
for p in s1 s2; do
  common STUDY_ROOT=$A/$p STUDY_DATA=$I/$p STUDY_SEEDS="1 2 3" STUDY_ARMS="glora_params glora_params_pru adalora_params eva" \
    STUDY_RATES_FROM=$A/rates_s0.json launch/control_study.sh positive
done
echo "chain done $(date -u +%FT%TZ)"

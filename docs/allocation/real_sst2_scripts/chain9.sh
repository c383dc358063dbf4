#!/usr/bin/env bash
# After chain8: seeds 4-6 of every arm at the chosen rates of the widened grid (finished runs are skipped).
set -u
cd /work/wt/real27
while pgrep -f chain8.sh >/dev/null; do sleep 10; done
cp -r outputs/real_sst2/comparison outputs/real_sst2/comparison_seeds1-3
STUDY_ROOT=outputs/real_sst2 STUDY_TASK=sst2 STUDY_TRAIN_ROWS=4000 STUDY_GRID="3e-4 1e-3 3e-3 1e-2" \
STUDY_SEEDS="1 2 3 4 5 6" STUDY_ARMS="lora lora_r1 lora_r3 lora_r4 adalora eva glora_rank glora_cal glora_pru glora_un" \
launch/low_budget_study.sh /work/shared/data/glue
echo "chain9 done $(date +%T)"

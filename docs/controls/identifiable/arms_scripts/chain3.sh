#!/usr/bin/env bash
# After chain.sh, from /work/wt/arms3 (pinned at its commit: the signal update_norm exists there):
# 1. s0: glora_un (GLoRA with update_norm), rate tuned on s0's tuning split, seeds 1-3.
# 2. s0: the uniform frontier (lora_r1, lora_r3, lora_r4), tuned per arm, seeds 1-3.
set -u
cd /work/wt/arms3
while pgrep -f "outputs/arms/chain.sh" > /dev/null; do sleep 20; done
I=/work/wt/study3/outputs/ident
B=/work/wt/study3/outputs/binding
A=/work/wt/arms/outputs/arms
echo "chain3 at commit $(git rev-parse HEAD), $(date -u +%FT%TZ)"
common() { env STUDY_TARGET=token_features STUDY_SEQ_LENGTH=64 STUDY_TRAIN_ROWS=2000 STUDY_EPOCHS=2 STUDY_SIGNALS="" \
  STUDY_WORKERS=2 STUDY_GRID="1e-3 3e-3 1e-2" "$@"; }
common STUDY_ROOT=$A/s0un STUDY_DATA=$I/s0 STUDY_SEEDS="1 2 3" STUDY_ARMS="glora_un" launch/control_study.sh positive
common STUDY_ROOT=$A/s0f STUDY_DATA=$I/s0 STUDY_SEEDS="1 2 3" STUDY_ARMS="lora_r1 lora_r3 lora_r4" \
  launch/control_study.sh positive
echo "chain3 done $(date -u +%FT%TZ)"

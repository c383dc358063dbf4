#!/usr/bin/env bash
# After chain3.sh, from /work/wt/arms4 (pinned): EVA's initialisation without redistribution (eva_rho1) on s0, rate
# tuned on s0's tuning split, seeds 1-3: does EVA's loss come from its initialisation or from its ranks?
set -u
cd /work/wt/arms4
while pgrep -f "outputs/arms/chain3.sh" > /dev/null; do sleep 10; done
I=/work/wt/study3/outputs/ident
A=/work/wt/arms/outputs/arms
echo "chain4 at commit $(git rev-parse HEAD), $(date -u +%FT%TZ)"
env STUDY_TARGET=token_features STUDY_SEQ_LENGTH=64 STUDY_TRAIN_ROWS=2000 STUDY_EPOCHS=2 STUDY_SIGNALS="" STUDY_WORKERS=2 \
  STUDY_GRID="1e-3 3e-3 1e-2" STUDY_ROOT=$A/s0eva1 STUDY_DATA=$I/s0 STUDY_SEEDS="1 2 3" STUDY_ARMS="eva_rho1" \
  launch/control_study.sh positive
echo "chain4 done $(date -u +%FT%TZ)"

#!/usr/bin/env bash
# After the 3-seed study (grid 1e-3 3e-3 1e-2): seven arms chose the grid's bottom (1e-3) and AdaLoRA its top (1e-2),
# so the grid is widened to 3e-4 for every arm and to 3e-2 for AdaLoRA, in the same root. The launcher skips a final
# run that finished, whatever its rate, so the finals of an arm whose chosen rate moved are first moved aside to
# final_superseded/ (kept), then the launcher reruns them at the new rate.
set -u
cd /work/wt/real27
R=outputs/real_sst2
ARMS="lora lora_r1 lora_r3 lora_r4 adalora eva glora_rank glora_cal glora_pru glora_un"
while pgrep -f "launch/low_budget_study.sh /work/shared/data/glue" >/dev/null; do sleep 20; done
cp -r $R/comparison $R/comparison_grid3; cp -r $R/frontier $R/frontier_grid3; cp $R/chosen_rates.json $R/chosen_rates_grid3.json
study() { STUDY_ROOT=$R STUDY_TASK=sst2 STUDY_TRAIN_ROWS=4000 STUDY_SEEDS="1 2 3" launch/low_budget_study.sh /work/shared/data/glue; }
STUDY_GRID="3e-2" STUDY_ARMS="adalora" study                      # AdaLoRA's extra rate (its finals are skipped here)
STUDY_GRID="3e-4 1e-3 3e-3 1e-2" STUDY_ARMS="$ARMS" study          # 3e-4 for all; the new chosen rates
mkdir -p $R/final_superseded
for arm in $ARMS; do
  moved=$(python3 -c "import json,sys; a=json.load(open('$R/chosen_rates_grid3.json')); b=json.load(open('$R/chosen_rates.json')); print(int(a[sys.argv[1]]!=b[sys.argv[1]]))" $arm)
  if [ "$moved" = 1 ]; then echo "rate moved: $arm"; mv $R/final/${arm}_seed* $R/final_superseded/; fi
done
STUDY_GRID="3e-4 1e-3 3e-3 1e-2" STUDY_ARMS="$ARMS" study          # the moved arms' finals at their new rates
echo "chain8 done $(date +%T)"

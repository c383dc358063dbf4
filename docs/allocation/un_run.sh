#!/bin/bash
# allocation_bench with update_norm, warm-up only, one planting at a time (commit in commit.txt).
cd /work/wt/sig2
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 HF_HUB_OFFLINE=1 WANDB_MODE=offline TOKENIZERS_PARALLELISM=false
SIGNALS="lora_b lora_b:per_rank_unit update_norm update_concentration weight_grad random shuffled"
git rev-parse HEAD > outputs/bench_un/commit.txt
run() {  # name planting-folder extra-flags...
  local name=$1 folder=$2; shift 2
  mkdir -p outputs/bench_un/$name
  /usr/bin/time -v python3 -m benchmarks.allocation_bench --planting $folder --out_dir outputs/bench_un/$name \
    --signals $SIGNALS --timings warmup "$@" > outputs/bench_un/$name/bench.log 2>&1
  echo "$name rc=$? $(date +%T)" >> outputs/bench_un/chain.log
}
for p in s0 s1 s2 neg; do run $p /work/wt/study3/outputs/ident/$p; done
for p in s0 s1; do run ${p}_w38_lr3e-3 /work/wt/study3/outputs/ident/$p --warmup_steps 38 --learning_rate 3e-3; done

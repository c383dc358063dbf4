#!/usr/bin/env bash
# Step-time ratios of LoRA / AdaLoRA / GLoRA on a GPU: the DeBERTa-v3-base architecture (random weights, nothing
# downloaded), bf16 autocast, batch 32, lengths 128 and 256. Needs only torch, transformers, peft, accelerate.
# PYTHON (default python3) is the interpreter that runs it.
# About 2-3 minutes on one H100-class GPU (budget: under 5).
#
#   bash benchmarks/gpu.sh                 # on the GPU machine, from anywhere
#   bash benchmarks/gpu.sh --tiny          # CPU smoke test of the same path: tiny DeBERTa, bf16 autocast on CPU
#   bash benchmarks/gpu.sh --json_out gpu.json   # further flags go to benchmarks.step_time (paths: your cwd)
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
if [[ "${1:-}" == "--tiny" ]]; then
  shift
  ARGS=(--model tiny-deberta --device cpu --bf16 --batch_size 4 --seq_len 32 64 --warmup_iters 2 --iters 3
        --lora_r 4 --threads 1)
else
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  ARGS=(--model deberta-v3-base --device cuda --bf16 --batch_size 32 --seq_len 128 256 --warmup_iters 5 --iters 60)
fi
start=$(date +%s)
# The script is a module of the repository (python3 -m benchmarks.step_time); its root goes first on the path.
PYTHONPATH="$(dirname "$HERE")${PYTHONPATH:+:$PYTHONPATH}" "${PYTHON:-python3}" -m benchmarks.step_time "${ARGS[@]}" "$@"
echo "gpu.sh: $(( $(date +%s) - start )) s"

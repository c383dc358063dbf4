#!/usr/bin/env bash
# lora on rte, the seed plan's settings (configs/lora_rte.yaml). Extra flags override it,
# e.g. launch/lora_rte.sh --seed 1 --max_steps 2
set -euo pipefail
cd "$(dirname "$0")/.."
accelerate launch run_glue_peft.py configs/lora_rte.yaml "$@"

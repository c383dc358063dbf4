#!/usr/bin/env bash
# lora on mnli, the seed plan's settings (configs/lora_mnli.yaml). Extra flags override it,
# e.g. launch/lora_mnli.sh --seed 1 --max_steps 2
set -euo pipefail
cd "$(dirname "$0")/.."
accelerate launch run_glue_peft.py configs/lora_mnli.yaml "$@"

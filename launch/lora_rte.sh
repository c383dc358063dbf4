#!/usr/bin/env bash
# lora on rte: configs/lora_rte.yaml (this project's equal-rank plan), or the preset PRESET names:
# PRESET=seed_plan (the seed's run files) or PRESET=equal_params (a budget in parameters). Extra flags override it,
# e.g. PRESET=seed_plan launch/lora_rte.sh --seed 1 --max_steps 2
set -euo pipefail
cd "$(dirname "$0")/.."
accelerate launch run_glue_peft.py "configs/${PRESET:+$PRESET/}lora_rte.yaml" "$@"

#!/usr/bin/env bash
# adalora on mnli, the seed plan's settings (configs/adalora_mnli.yaml). Extra flags override it,
# e.g. launch/adalora_mnli.sh --seed 1 --max_steps 2
set -euo pipefail
cd "$(dirname "$0")/.."
accelerate launch run_glue_peft.py configs/adalora_mnli.yaml "$@"

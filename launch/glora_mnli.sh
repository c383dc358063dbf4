#!/usr/bin/env bash
# glora on mnli, the seed plan's settings (configs/glora_mnli.yaml). Extra flags override it,
# e.g. launch/glora_mnli.sh --seed 1 --max_steps 2
set -euo pipefail
cd "$(dirname "$0")/.."
accelerate launch run_glue_peft.py configs/glora_mnli.yaml "$@"

#!/usr/bin/env bash
# glora on rte, the seed plan's settings (configs/glora_rte.yaml). Extra flags override it,
# e.g. launch/glora_rte.sh --seed 1 --max_steps 2
set -euo pipefail
cd "$(dirname "$0")/.."
accelerate launch run_glue_peft.py configs/glora_rte.yaml "$@"

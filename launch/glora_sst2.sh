#!/usr/bin/env bash
# glora on sst2, the seed plan's settings (configs/glora_sst2.yaml). Extra flags override it,
# e.g. launch/glora_sst2.sh --seed 1 --max_steps 2
set -euo pipefail
cd "$(dirname "$0")/.."
accelerate launch run_glue_peft.py configs/glora_sst2.yaml "$@"

#!/usr/bin/env bash
# adalora on sst2, the seed plan's settings (configs/adalora_sst2.yaml). Extra flags override it,
# e.g. launch/adalora_sst2.sh --seed 1 --max_steps 2
set -euo pipefail
cd "$(dirname "$0")/.."
accelerate launch run_glue_peft.py configs/adalora_sst2.yaml "$@"

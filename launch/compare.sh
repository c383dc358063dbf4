#!/usr/bin/env bash
# Compare finished runs: bash launch/compare.sh outputs/sweep [--out_dir DIR] [--alpha 0.05] ...
set -euo pipefail
cd "$(dirname "$0")/.."
"${PYTHON:-python3}" compare_runs.py "$@"

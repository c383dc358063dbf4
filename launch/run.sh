#!/usr/bin/env bash
# One run of a preset: configs/<METHOD>_<TASK>.yaml (this project's equal-rank plan), or, with PRESET set, the file of
# that preset: PRESET=proposal (the proposal's run files) or PRESET=equal_params (a budget in parameters). Flags after
# TASK override the file's values. PYTHON (default python3) runs `accelerate launch` (`-m accelerate.commands.launch`:
# your accelerate config, several GPUs).
#
#   launch/run.sh METHOD TASK [run flags...]        # METHOD lora|adalora|glora|eva, TASK mnli|sst2|rte
#   PRESET=proposal launch/run.sh glora mnli --seed 1 --max_steps 2
set -euo pipefail
cd "$(dirname "$0")/.."

USAGE="usage: launch/run.sh METHOD TASK [run flags...] (METHOD lora|adalora|glora|eva, TASK mnli|sst2|rte;"
USAGE+=" PRESET unset, proposal or equal_params)"
[ $# -ge 2 ] || { echo "$USAGE" >&2; exit 2; }
CONFIG="configs/${PRESET:+$PRESET/}$1_$2.yaml"
[ -f "$CONFIG" ] || { echo "launch/run.sh: no preset $CONFIG (METHOD $1, TASK $2, PRESET '${PRESET:-}'); $USAGE" >&2
                      exit 2; }
shift 2
exec "${PYTHON:-python3}" -m accelerate.commands.launch run_glue_peft.py "$CONFIG" "$@"

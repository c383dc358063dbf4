# Sourced by the study launchers (cpu_study.sh, low_budget_study.sh, control_study.sh): a pool of workers over a list
# of runs, and the arms the launchers share.
#
#   run_pool "OUT_DIR|run flags" ...
#
# ${STUDY_WORKERS:-2} workers take the runs in the order given; each claims a run with an atomic mkdir, so no two
# take the same one, and skips a run that already finished (OUT_DIR/all_results.json), so an interrupted study can
# be restarted. A run is `"$PYTHON" run_glue_peft.py "${COMMON[@]}" <run flags> "${EXTRA[@]}" --output_dir OUT_DIR`,
# logged to OUT_DIR.log, its flags written to OUT_DIR.flags at its start. A finished run whose OUT_DIR.flags differ
# from the flags asked now (a study restarted with another chosen rate, model or data) is refused in one line before
# any run starts (exit 2): move it aside to rerun it (a run finished before OUT_DIR.flags existed is not checked).
# The "start" and "done" lines it prints are what launch/study_compute.py reads back. Returns non-zero if any run
# failed; finished runs are kept.

run_pool() {
  local claims status=0 pids=() spec out flags
  for spec in "$@"; do  # finished runs made with other flags would be kept as if they were these
    out=${spec%%|*}
    read -r -a flags <<< "${spec#*|}"
    if finished_with_other_flags "$out" "$(_pool_flags)"; then
      echo "run_pool: $out finished with other flags than asked now (see $out.flags); move it aside to rerun it" >&2
      return 2
    fi
  done
  claims=$(mktemp -d)
  for _ in $(seq "${STUDY_WORKERS:-2}"); do _pool_worker "$claims" "$@" & pids+=($!); done
  for pid in "${pids[@]}"; do wait "$pid" || status=1; done
  rm -rf "$claims"
  return $status
}

_pool_worker() {
  local claims=$1 spec out flags
  shift
  for spec in "$@"; do
    out=${spec%%|*}
    read -r -a flags <<< "${spec#*|}"
    [ -f "$out/all_results.json" ] && continue
    mkdir "$claims/$(echo "$out" | tr / _)" 2>/dev/null || continue
    mkdir -p "$(dirname "$out")"
    echo "$(date +%T) start $out"
    _pool_flags > "$out.flags"
    "$PYTHON" run_glue_peft.py "${COMMON[@]}" "${flags[@]}" "${EXTRA[@]}" --output_dir "$out" \
      --overwrite_output_dir True > "$out.log" 2>&1 || { echo "FAILED: $out (see $out.log)"; return 1; }
    echo "$(date +%T) done  $out ($("$PYTHON" -c "import json, sys; r = json.load(open(sys.argv[1])); \
k = 'eval_combined_score' if 'eval_combined_score' in r else 'eval_tuning_combined_score'; \
print(f\"{k} {r[k]:.4f}, train {r['train_runtime']:.0f} s\")" "$out/all_results.json"))"
  done
}

# True if run OUT finished (OUT/all_results.json) and its OUT.flags differ from FLAGS (one line); a run without
# OUT.flags (made before they were written) is not checked. Also used by launch/sweep.sh.
finished_with_other_flags() {
  [ -f "$1/all_results.json" ] && [ -f "$1.flags" ] && [ "$(cat "$1.flags")" != "$2" ]
}

# The flags of the run in $flags: one line, as run_pool compares them.
_pool_flags() { printf '%s\n' "${COMMON[*]} ${flags[*]} ${EXTRA[*]}"; }

# The arms both control_study.sh and low_budget_study.sh offer (issue 27), added to the caller's ARM_FLAGS: uniform LoRA
# at ranks 1, 3 and 4 (the accuracy-cost frontier; alpha 2r keeps LoRA's scaling 2), GLoRA's signal over 8 batches
# before training (glora_cal) and GLoRA with the signal update_norm (glora_un).
add_shared_arms() {
  local r
  for r in 1 3 4; do ARM_FLAGS[lora_r$r]="--method lora --lora_r $r --lora_alpha $((2 * r)) --arm lora_r$r"; done
  ARM_FLAGS[glora_cal]="--method glora --glora_calibration_steps 8 --arm glora_cal"
  ARM_FLAGS[glora_un]="--method glora --glora_warmup_fraction 0.3333 --glora_signal update_norm --arm glora_un"
}

# Exit 2 with one line, naming LAUNCHER, at the first of the caller's ARMS that ARM_FLAGS does not hold.
require_known_arms() {
  local launcher=$1 arm
  for arm in "${ARMS[@]}"; do
    [ -n "${ARM_FLAGS[$arm]+set}" ] || { echo "$launcher: STUDY_ARMS: unknown arm '$arm'; choose from \
${!ARM_FLAGS[*]}" >&2; exit 2; }
  done
}

# Sourced by the study launchers (cpu_study.sh, low_budget_study.sh): a pool of workers over a list of runs.
#
#   run_pool "OUT_DIR|run flags" ...
#
# ${STUDY_WORKERS:-2} workers take the runs in the order given; each claims a run with an atomic mkdir, so no two
# take the same one, and skips a run that already finished (OUT_DIR/all_results.json), so an interrupted study can
# be restarted. A run is `"$PYTHON" run_glue_peft.py "${COMMON[@]}" <run flags> "${EXTRA[@]}" --output_dir OUT_DIR`,
# logged to OUT_DIR.log. The "start" and "done" lines it prints are what launch/study_compute.py reads back.
# Returns non-zero if any run failed; finished runs are kept.

run_pool() {
  local claims status=0 pids=()
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
    "$PYTHON" run_glue_peft.py "${COMMON[@]}" "${flags[@]}" "${EXTRA[@]}" --output_dir "$out" \
      --overwrite_output_dir True > "$out.log" 2>&1 || { echo "FAILED: $out (see $out.log)"; return 1; }
    echo "$(date +%T) done  $out ($("$PYTHON" -c "import json, sys; r = json.load(open(sys.argv[1])); \
k = 'eval_combined_score' if 'eval_combined_score' in r else 'eval_tuning_combined_score'; \
print(f\"{k} {r[k]:.4f}, train {r['train_runtime']:.0f} s\")" "$out/all_results.json"))"
  done
}

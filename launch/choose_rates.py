"""The learning rate chosen per arm by a study's tuning runs: the best score on the held-out tuning split at the end
of training (ties: the lower rate). Reads ROOT/tuning/<arm>/lr<rate>/eval_log.jsonl; writes ROOT/chosen_rates.json
and ROOT/tuning.md (every rate's score and the choice) and prints the table.

    python -m launch.choose_rates ROOT METRIC ARM [ARM ...]       # from the repo root; METRIC: accuracy, pearson
"""

import json
import sys
from pathlib import Path

from harness.records import read_eval_log


def tuning_scores(root, arm, metric) -> list:
    """[(learning rate, the tuning-split metric at the end of training)] of ROOT/tuning/ARM/lr*/, by rate."""
    scores = []
    for run in sorted((Path(root) / "tuning" / arm).glob("lr*/")):
        last = read_eval_log(run)[-1]
        if last["step"] != last["max_steps"]:
            raise SystemExit(f"{run}: the last tuning evaluation is at step {last['step']}, not at the end "
                             f"({last['max_steps']}); the run did not finish.")
        scores.append((float(run.name[2:]), last["metrics"][metric]))
    if not scores:
        raise SystemExit(f"{Path(root) / 'tuning' / arm}: no tuning runs.")
    return sorted(scores)


def main(root, metric, arms):
    root = Path(root)
    chosen, lines = {}, [f"| arm | learning rate | tuning-split {metric} |", "| --- | --- | --- |"]
    for arm in arms:
        scores = tuning_scores(root, arm, metric)
        for lr, score in scores:
            lines.append(f"| {arm} | {lr:g} | {score:.4f} |")
        chosen[arm] = max(scores, key=lambda s: (s[1], -s[0]))[0]
    (root / "chosen_rates.json").write_text(json.dumps(chosen, indent=1) + "\n")
    lines += ["", "chosen: " + ", ".join(f"{arm} {lr:g}" for arm, lr in chosen.items())]
    (root / "tuning.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3:])

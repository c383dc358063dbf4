"""Compute used by a launch/cpu_study.sh run, from the log it printed: per-run wall-clock (each run one thread, so
wall seconds = CPU-core seconds) summed per task and method, and in total. Prints a markdown table.

    python launch/study_compute.py outputs/cpu_study.out
"""

import re
import sys
from collections import defaultdict
from datetime import datetime

LINE = re.compile(r"^(\d\d:\d\d:\d\d) (start|done) +(\S+)")


def main(log_path):
    started, by_cell = {}, defaultdict(list)  # (task, method) -> per-run seconds
    for line in open(log_path):
        match = LINE.match(line)
        if not match:
            continue
        clock, event, run = match.groups()
        at = datetime.strptime(clock, "%H:%M:%S")
        if event == "start":
            started[run] = at
        elif run in started:
            # A run over midnight would come out negative; add a day then.
            task, name = run.split("/")[-2:]
            by_cell[(task, name.split("_seed")[0])].append((at - started.pop(run)).total_seconds() % 86400)
    print("| task | method | runs | wall per run, mean (s) | total (core-min) |")
    print("|---|---|---|---|---|")
    for (task, method), values in sorted(by_cell.items()):
        print(f"| {task} | {method} | {len(values)} | {sum(values) / len(values):.0f} | {sum(values) / 60:.1f} |")
    total = sum(sum(v) for v in by_cell.values())
    print(f"| all | | {sum(len(v) for v in by_cell.values())} | | **{total / 60:.1f}** ({total / 3600:.2f} core-hours) |")
    if started:
        print(f"\nunfinished runs (started, no 'done' line): {', '.join(sorted(started))}")


if __name__ == "__main__":
    main(sys.argv[1])

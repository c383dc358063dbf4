#!/usr/bin/env python
"""Allocation quality of finished runs against a planted ground truth (data/make_planted.py).

    python allocation_quality.py OUT/ground_truth.json RUN_DIR [RUN_DIR ...] [--out_dir DIR]

Per run: the share of its rank and of its adapter parameters on the planted matrices beside the oracle pattern's and
uniform LoRA's, and recall at k (k = planted matrices) of the planted matrices in its final-rank order and, for
GLoRA, in its score order (analysis/allocation.py); then per arm, their means over its runs. Writes
allocation_quality.md/.csv and allocation_by_arm.csv in --out_dir and prints the Markdown tables.

Only runs trained on the ground truth's own data are scored: the data content each run recorded (run_args.json's
data_fingerprint) must equal that of the ground truth's folder under the run's row selection (its data flags). A run
trained on other data (another planting written to the same path, say) is refused in one line; so is a run recorded
before the fingerprint existed, unless --allow_unfingerprinted scores it with a note.
"""

import argparse
import dataclasses
import json
from pathlib import Path

from analysis.allocation import GroundTruth, arm_summary, quality_table, to_markdown
from harness.arguments import DataArguments
from harness.glue_data import data_fingerprint, load_glue_data
from harness.records import RANKS_FILE, RUN_ARGS_FILE, RunArgs


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("ground_truth", help="ground_truth.json written by data/make_planted.py.")
    p.add_argument("runs", nargs="+", help="Run directories (each with ranks.json), or folders holding them.")
    p.add_argument("--oracle_pattern", help="The oracle's rank pattern (default: oracle_pattern.json beside the ground truth).")
    p.add_argument("--out_dir", help="Write allocation_quality.md and .csv here.")
    p.add_argument("--allow_unfingerprinted", action="store_true",
                   help="Score runs recorded before data fingerprints existed (their data cannot be checked), each "
                        "with a note; without it they are refused.")
    args = p.parse_args(argv)
    truth = GroundTruth.read(args.ground_truth, args.oracle_pattern)
    run_dirs = []
    for path in map(Path, args.runs):
        found = [path] if (path / RANKS_FILE).is_file() else sorted(q.parent for q in path.rglob(RANKS_FILE))
        if not found:
            raise SystemExit(f"{path}: no {RANKS_FILE} at or below it (not a finished run).")
        run_dirs += found
    check_data(run_dirs, Path(args.ground_truth).parent, args.allow_unfingerprinted)
    table = quality_table(run_dirs, truth)
    summary = arm_summary(table)
    markdown = to_markdown(table) + "\nMeans per arm:\n\n" + to_markdown(summary, [
        "arm", "runs", "rank_share", "oracle_rank_share", "uniform_rank_share", "param_share", "recall_at_k_rank",
        "recall_at_k_score"])
    if args.out_dir:
        Path(args.out_dir).mkdir(parents=True, exist_ok=True)
        Path(args.out_dir, "allocation_quality.md").write_text(markdown)
        table.to_csv(Path(args.out_dir, "allocation_quality.csv"), index=False)
        summary.to_csv(Path(args.out_dir, "allocation_by_arm.csv"), index=False)
    print(markdown, end="")
    return table


def check_data(run_dirs, truth_dir: Path, allow_unfingerprinted: bool):
    """Refuse (SystemExit, one line) a run whose recorded data content is not that of the ground truth's folder
    under the run's own row selection; a run without a recorded fingerprint is refused or, allowed, noted."""
    expected = {}  # the folder's fingerprint per row selection (the runs' data flags)
    for run_dir in run_dirs:
        try:
            run_args = RunArgs.read(run_dir)
        except FileNotFoundError:
            run_args = RunArgs()
        except (OSError, ValueError) as error:
            raise SystemExit(f"{run_dir}: its {RUN_ARGS_FILE} cannot be read ({error}): cannot tell which data it "
                             "trained on.") from None
        recorded = run_args.data_fingerprint
        if recorded is None:
            if not allow_unfingerprinted:
                raise SystemExit(f"{run_dir} records no data fingerprint (no {RUN_ARGS_FILE}, or one made before it "
                                 f"was recorded), so it cannot be checked to have trained on {truth_dir}'s data; pass "
                                 "--allow_unfingerprinted to score it anyway.")
            print(f"note: {run_dir} records no data fingerprint: scored without checking its data", flush=True)
            continue
        selection = json.dumps(run_args.data, sort_keys=True, default=str)
        if selection not in expected:
            expected[selection] = truth_fingerprint(truth_dir, run_args.data)
        differs = sorted(split for split in set(recorded) | set(expected[selection])
                         if recorded.get(split) != expected[selection].get(split))
        if differs:
            raise SystemExit(f"{run_dir} trained on other data than {truth_dir} holds ({', '.join(differs)} differ "
                             "under its own data flags): it is not a run of this ground truth; score it against the "
                             "ground truth of the data it trained on.")


def truth_fingerprint(truth_dir: Path, data: dict) -> dict:
    """glue_data.data_fingerprint of the ground truth folder's task data, rows selected as the run's data flags
    selected them (--dataset_dir replaced by the folder)."""
    known = {f.name for f in dataclasses.fields(DataArguments)}
    flags = {key: value for key, value in data.items() if key in known}
    flags.update(dataset_dir=str(truth_dir), train_file=None, validation_file=None, validation_mismatched_file=None)
    task = flags.get("task")
    if not Path(truth_dir, str(task)).is_dir():
        raise SystemExit(f"{truth_dir} holds no {task}/ folder: the runs are of task {task}, not of this ground "
                         "truth's data.")
    try:
        return data_fingerprint(load_glue_data(DataArguments(**flags)), task)
    except (OSError, ValueError) as error:
        raise SystemExit(f"{truth_dir}/{task}: cannot be read as the runs read their data ({error}).") from None


if __name__ == "__main__":
    main()

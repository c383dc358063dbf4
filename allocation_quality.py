#!/usr/bin/env python
"""Allocation quality of finished runs against a planted ground truth (data/make_planted.py).

    python allocation_quality.py OUT/ground_truth.json RUN_DIR [RUN_DIR ...] [--out_dir DIR]

Per run: the share of its rank and of its adapter parameters on the planted matrices beside the oracle pattern's and
uniform LoRA's, and recall at k (k = planted matrices) of the planted matrices in its final-rank order and, for
GLoRA, in its score order (analysis/allocation.py). Writes allocation_quality.md/.csv in --out_dir and prints the
Markdown table.
"""

import argparse
from pathlib import Path

from analysis.allocation import GroundTruth, quality_table, to_markdown
from records import RANKS_FILE


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("ground_truth", help="ground_truth.json written by data/make_planted.py.")
    p.add_argument("runs", nargs="+", help="Run directories (each with ranks.json), or folders holding them.")
    p.add_argument("--oracle_pattern", help="The oracle's rank pattern (default: oracle_pattern.json beside the ground truth).")
    p.add_argument("--out_dir", help="Write allocation_quality.md and .csv here.")
    args = p.parse_args(argv)
    truth = GroundTruth.read(args.ground_truth, args.oracle_pattern)
    run_dirs = []
    for path in map(Path, args.runs):
        found = [path] if (path / RANKS_FILE).is_file() else sorted(q.parent for q in path.rglob(RANKS_FILE))
        if not found:
            raise SystemExit(f"{path}: no {RANKS_FILE} at or below it (not a finished run).")
        run_dirs += found
    table = quality_table(run_dirs, truth)
    markdown = to_markdown(table)
    if args.out_dir:
        Path(args.out_dir).mkdir(parents=True, exist_ok=True)
        Path(args.out_dir, "allocation_quality.md").write_text(markdown)
        table.to_csv(Path(args.out_dir, "allocation_quality.csv"), index=False)
    print(markdown, end="")
    return table


if __name__ == "__main__":
    main()

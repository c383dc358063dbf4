"""
Turn a folder of finished GLUE runs (LoRA / AdaLoRA / GLoRA) into one comparison:
a table with honest statistics and paper figures. The question it answers:

    does GLoRA get most of AdaLoRA's gain at LoRA's cost?
    share of gain = (GLoRA - LoRA) / (AdaLoRA - LoRA)   on the task score

Rows are arms (a run's `arm` label: glora and glora_params are two rows), and only runs that are comparable are
compared or pooled as seeds: same task, R_total, model, data selection, dev rows scored, trial mode and training
length (analysis/comparable.py). What it sets aside, and why, it prints and writes with the tables.

The task score is the mean of the task's main metrics (docs/outputs.md), e.g. MNLI
(acc + acc_mm) / 2, STS-B (pearson + spearman) / 2, MRPC/QQP (f1 + acc) / 2, CoLA MCC.
Run layout: docs/outputs.md; the work is done by the `analysis` package. Usage:

    python compare_runs.py outputs/sweep [more run dirs or roots] [--out_dir DIR] [--alpha 0.05]
"""
import argparse
import dataclasses
import json
import sys
from pathlib import Path

import pandas as pd

from analysis.fairness import tuning_warnings
from analysis.figures import figures
from analysis.runs import aggregate, bootstrap_set_aside, load_runs, note, place
from analysis.stats import significance
from analysis.tables import (
    comparability_notes,
    comparability_section,
    comparable_groups,
    make_table,
    render_markdown,
    to_json,
)
from search.pruning import PRUNING_RATE_MARGIN


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="Compare finished LoRA / AdaLoRA / GLoRA GLUE runs: table, statistics, figures.")
    p.add_argument("inputs", nargs="+", help="run directories or sweep roots (searched recursively for dirs with run_args.json)")
    p.add_argument("--out_dir", default=None, help="where to write tables and figures (default: <first input>/comparison)")
    p.add_argument("--alpha", type=float, default=0.05, help="significance threshold; CIs are at level 1 - alpha (default 0.05)")
    p.add_argument("--n_bootstrap", type=int, default=2000, help="bootstrap resamples for p-values and CIs (default 2000)")
    p.add_argument("--bootstrap_seed", type=int, default=0, help="RNG seed of every bootstrap, for reproducible numbers (default 0)")
    p.add_argument("--pruning_rate_margin", type=float, default=PRUNING_RATE_MARGIN,
                   help="warn when the arms' hyper-parameter searches pruned shares of their trials further apart than "
                        f"this (default {PRUNING_RATE_MARGIN})")
    p.add_argument("--no_figures", action="store_true", help="write the tables only")
    p.add_argument("--no_learning_curves", action="store_true", help="skip the per-run learning-curve figures (one per run)")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    for p in args.inputs:
        if not Path(p).is_dir():
            print(f"error: {p} is not a directory", file=sys.stderr)
            return 2
    out_dir = Path(args.out_dir) if args.out_dir else Path(args.inputs[0]) / "comparison"
    runs, skipped = load_runs(args.inputs)
    for path, reason in skipped:
        note(f"skipped {path}: {reason}")
    if not runs:
        print(f"error: no finished runs under {', '.join(args.inputs)}", file=sys.stderr)
        return 1
    out_dir.mkdir(parents=True, exist_ok=True)
    kw = {"n_bootstrap": args.n_bootstrap, "seed": args.bootstrap_seed, "alpha": args.alpha}
    groups = aggregate(runs)
    split = comparable_groups(groups)
    for c in split:
        note(f"{place(c['task'], c['group'])}, R_total = {c['budget']}: compared on its own ({c['differs']})")
    notes = comparability_notes(groups) + [f"`{p}`: {why}" for p, why in bootstrap_set_aside(runs)]
    for n in notes:
        note(n)
    comparisons = significance(groups, **kw)
    rows = make_table(groups, comparisons, **kw)
    warn = [w for r in runs for w in r.warnings]
    tuning_warn = tuning_warnings(groups, args.pruning_rate_margin)
    for w in tuning_warn:
        print(f"warning: {w}", file=sys.stderr)
    md = render_markdown(rows, comparisons, skipped, warn, args.alpha, args.n_bootstrap, args.bootstrap_seed, tuning_warn,
                         comparability_section(split, notes))
    print(md)
    (out_dir / "comparison.md").write_text(md + "\n")
    pd.DataFrame(rows).to_csv(out_dir / "comparison.csv", index=False)
    sig = [dataclasses.asdict(c) for c in comparisons]
    pd.DataFrame([{k: (" ".join(map(str, v)) if isinstance(v, list) else v) for k, v in s.items() if k != "n_examples"}
                  for s in sig]).to_csv(out_dir / "comparison_significance.csv", index=False)
    settings = {"inputs": args.inputs, "alpha": args.alpha, "n_bootstrap": args.n_bootstrap,
                "bootstrap_seed": args.bootstrap_seed, "ci_level": 1 - args.alpha,
                "runs": [str(r.path) for r in runs]}
    with open(out_dir / "comparison.json", "w") as f:
        json.dump(to_json({"settings": settings, "table": rows, "significance": sig,
                           "skipped": [{"path": p, "reason": r} for p, r in skipped], "warnings": warn,
                           "tuning_warnings": tuning_warn, "comparable_groups": split, "notes": notes}), f, indent=2)
    if not args.no_figures:
        written = figures(runs, groups, rows, out_dir, learning_curves=not args.no_learning_curves)
        note(f"{len(written)} figure files written to {out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

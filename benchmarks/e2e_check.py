#!/usr/bin/env python3
"""Checks one finished run of run_glue_peft.py (benchmarks/gpu_e2e.sh calls it after each run) and prints one line:

  - the training losses logged in trainer_state.json and train_loss are finite;
  - the final ranks keep the run's budget: under --budget_unit rank they sum to R_total; under params GLoRA and LoRA
    spend at most the parameter budget (GLoRA less than one rank unit below it) and AdaLoRA's ranks sum to its target
    rank x matrices; and GLoRA really reallocated;
  - the saved adapter reloads onto the base model (peft.PeftModel.from_pretrained) with the same rank per matrix.

    python3 -m benchmarks.e2e_check OUTPUT_DIR MODEL LABEL        # exit 1 and "CHECK FAILED: ..." if one fails
"""

import json
import math
import sys
from pathlib import Path

from benchmarks import common  # noqa: F401  (offline hub: the model is a local folder)
from harness.adapters import current_ranks
from harness.glue_tasks import GLUE_TASKS
from harness.records import RankRecord, Results, RunArgs

METRICS = ("accuracy", "f1", "matthews", "pearson")


def check(out: Path, model: str):
    """(summary dict, [failures])."""
    results, ranks, run_args = Results.read(out), RankRecord.read(out), RunArgs.read(out)
    state = json.loads((out / "trainer_state.json").read_text())
    failures = []
    losses = [e["loss"] for e in state["log_history"] if "loss" in e] + [results.metrics["train_loss"]]
    if not all(math.isfinite(x) for x in losses):
        failures.append(f"non-finite loss in {losses}")
    final = {name: m.final_rank for name, m in ranks.modules.items()}
    failures += budget_failures(results, ranks, run_args)
    realloc = None
    if results.method == "glora":
        realloc = (ranks.glora or {}).get("reallocation_step")
        if realloc is None:
            failures.append("GLoRA did not reallocate")
    reloaded = reload_ranks(out, model, GLUE_TASKS[results.task].num_labels)
    differ = {k: (final.get(k), reloaded.get(k)) for k in final.keys() | reloaded.keys() if final.get(k) != reloaded.get(k)}
    if differ:
        failures.append(f"reloaded ranks differ (ranks.json, reloaded): {dict(list(differ.items())[:5])}")
    summary = {"results": results, "final": final, "losses": losses, "realloc": realloc}
    return summary, failures


def budget_failures(results, ranks, run_args) -> list:
    """What breaks the run's budget (the module docstring's rule for its unit)."""
    total = ranks.final_rank_total
    if results.budget_unit != "params":
        return [] if total == results.rank_budget else [f"final ranks sum to {total}, budget {results.rank_budget}"]
    if results.method == "adalora":
        target = run_args.resolved["adalora"]["target_r"] * len(ranks.modules)
        return [] if total == target else [f"final ranks sum to {total}, AdaLoRA's target rank x matrices {target}"]
    spent, budget = ranks.adapter_params("final_rank"), results.param_budget
    floor = budget - max(m.unit_cost for m in ranks.modules.values()) if results.method == "glora" else -math.inf
    return [] if floor < spent <= budget else [f"adapter parameters {spent}, parameter budget {budget}"]


def reload_ranks(out: Path, model: str, num_labels: int) -> dict:
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # the fresh head is reported as newly initialised: the adapter file holds it
    base = AutoModelForSequenceClassification.from_pretrained(model, num_labels=num_labels)
    return current_ranks(PeftModel.from_pretrained(base, str(out)), count_masked=True)


def main(argv=None):
    out, model, label = (argv or sys.argv[1:])[:3]
    summary, failures = check(Path(out), model)
    r, final = summary["results"], list(summary["final"].values())
    score = {k: round(v, 4) for k, v in r.metrics.items() if k.startswith("eval_") and any(m in k for m in METRICS)}
    moved = f", reallocated at step {summary['realloc']}" if summary["realloc"] is not None else ""
    reload = "DIFFERS" if any(f.startswith("reloaded") for f in failures) else "same ranks"
    print(f"{r.task} {r.method} {label}: {score} train_loss {r.metrics['train_loss']:.4f} "
          f"({len(summary['losses']) - 1} losses logged), total rank {sum(final)}/{r.rank_budget} (per matrix {min(final)}-{max(final)}{moved}), "
          f"reload: {reload}, train {r.train_runtime:.1f} s")
    for failure in failures:
        print(f"{r.task} {r.method} {label}: CHECK FAILED: {failure}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

"""The sweeps on which compare_runs.py's tables must not change when the records' code does (tests/test_records.py):
each is written with the tests' own run writers (tests/test_compare_runs.py, tests/test_analysis_*.py) and compared
with --no_figures into TABLES/<sweep>/, with relative paths so that the tables do not depend on where they were made.

    python -m tests.table_sweeps OUT      # OUT/<sweep>/ (the runs) and OUT/tables/<sweep>/ (the tables)

The expected tables in tests/data/compare_tables/ were made so at the commit before records.py (a15be9c), with the
same sweeps (OLD_RUNS: run folders a real run wrote at that commit, tests/data/old_runs/). comparison.csv and
comparison.json were made again when the method overhead got one name (hook_seconds_mean became
method_overhead_seconds_mean, beside its signal/resize/grown_slice parts); with that column renamed back and the
parts dropped they were checked equal to a15be9c's. comparison.md and comparison_significance.csv are a15be9c's.
All four were made again when the seed-paired t-test was added (issue 26): with its columns dropped (n_paired_t,
t_paired_t, p_paired_t, sig_paired_t; the table's p_paired_t_vs_lora, n_paired_t_vs_lora), comparison.md's
"p paired t (seeds)" column and its header sentence removed, they were checked equal to the files before.
comparison.md, .csv and .json were made again when CPU time was shown beside wall-clock (issue 28): with the columns
train_cpu_time_mean, train_cpu_time_std, cpu_overhead_vs_lora_pct dropped, comparison.md's "CPU time (s)" and "CPU
overhead vs LoRA" columns and its note under the Results table removed, and its headline's "Wall-clock overhead vs
LoRA (noise-bound: runs not measured side by side)" read back as "Training-time overhead vs LoRA", they were checked
equal to the files before (comparison_significance.csv unchanged).
"""

import contextlib
import os
import shutil
import sys
from pathlib import Path

import compare_runs as cr
from tests import test_analysis_comparable as comparable
from tests import test_analysis_fairness as fairness
from tests import test_analysis_verdict as verdict
from tests.test_compare_runs import make_sweep

OLD_RUNS = Path(__file__).resolve().parent / "data" / "old_runs"
TABLE_FILES = ("comparison.md", "comparison.json", "comparison.csv", "comparison_significance.csv")


def arms_sweep(root):
    """Two arms of one method, a rank-pattern arm, trial runs beside full ones (two comparable groups)."""
    comparable.default_arms(root)
    comparable.arm_runs(root, "glora", [0.74, 0.75, 0.76], arm="glora_params", budget_unit="params")
    pattern = {"path": "oracle.json", "sha256": "1a2b3c4d" + "0" * 56, "source": "mapping"}
    comparable.arm_runs(root, "lora", [0.75, 0.76, 0.77], arm="lora_pattern-1a2b3c4d", results={"rank_pattern": pattern})
    for method in ("lora", "glora"):
        comparable.arm_runs(root, method, [0.51, 0.52], seeds=(4, 5), arm=method, prefix="trial_",
                            training={"max_steps": 2}, resolved={"total_steps": 2})


def groups_sweep(root):
    """A task split into groups left out of the GLUE average, an arm over two budget units set aside, runs without
    an arm label, truncated predictions left out of the bootstrap."""
    comparable.default_arms(root)
    comparable.arm_runs(root, "lora", [0.5], seeds=(9,), arm="lora", prefix="trial_", training={"max_steps": 2})
    comparable.arm_runs(root, "glora", [0.74, 0.75], seeds=(4, 5), arm="glora", budget_unit="params", prefix="params_")
    for task in ("rte", "qnli"):
        for method, accs in comparable.ACC.items():
            args, res = comparable.recorded(data={"task": task})  # no arm recorded: derived from the method
            for seed, acc in zip((1, 2, 3), accs):
                comparable.write_run(root, f"{task}_{method}_s{seed}", task, method, seed, comparable.sst2_metrics(acc),
                                     100.0 + seed, {"validation": comparable.predictions(acc)}, log=False, args=args,
                                     results=res)
    cut = root / "lora_s2" / "predictions_validation.csv"
    cut.write_text("\n".join(cut.read_text().splitlines()[: comparable.N // 2 + 1]) + "\n")


def labels_sweep(root):
    """Several uniform LoRA arms and none labelled lora: no reference, a note says how to label it."""
    for label, accs in zip(("lora_a", "lora_b"), (comparable.ACC["lora"], [0.60, 0.61, 0.62])):
        comparable.arm_runs(root, "lora", accs, arm=label)
    comparable.arm_runs(root, "glora", comparable.ACC["glora"], arm="glora")


def fairness_sweep(root):
    """Unequal tuning effort, an effective-parameter count recorded by GLoRA, AdaLoRA wider in ranks.json."""
    hpo = {"lora": fairness.hpo_block(20), "adalora": fairness.hpo_block(20), "glora": fairness.hpo_block(50)}
    fairness.sweep(root, hpo=hpo, glora_effective=50000, adalora_from_ranks_din=800)


def verdict_sweep(root):
    verdict.sweep(root, {"lora": 0.70, "adalora": 0.80, "glora": 0.795}, n_seeds=3)


def few_seeds_sweep(root):
    verdict.sweep(root, {"lora": 0.70, "adalora": 0.80, "glora": 0.79}, n_seeds=2)


def old_runs(root):
    shutil.copytree(OLD_RUNS, root)


SWEEPS = {"main": (make_sweep, 300), "arms": (arms_sweep, 200), "groups": (groups_sweep, 200),
          "labels": (labels_sweep, 100), "fairness": (fairness_sweep, 100), "verdict": (verdict_sweep, 200),
          "few_seeds": (few_seeds_sweep, 100), "old_runs": (old_runs, 200)}


@contextlib.contextmanager
def working_dir(path):
    before = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)


def write_tables(out) -> dict:
    """Write every sweep under out/<name> and compare it into out/tables/<name>; {name: that folder}."""
    out = Path(out).resolve()
    written = {}
    for name, (write, n_bootstrap) in SWEEPS.items():
        runs = out / name
        if write is not old_runs:
            runs.mkdir(parents=True)
        result = write(runs)
        if write is make_sweep:
            assert result == runs
        with working_dir(out), open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
            code = cr.main([name, "--n_bootstrap", str(n_bootstrap), "--no_figures", "--out_dir", f"tables/{name}"])
        assert code == 0, name
        written[name] = out / "tables" / name
    return written


if __name__ == "__main__":
    write_tables(sys.argv[1])

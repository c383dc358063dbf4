"""The run's records (records.py): what a run writes is what compare_runs.py reads, folders written before
records.py still load, and compare_runs' tables on the test sweeps are byte for byte those of the commit before it."""

import json
from pathlib import Path

import pytest
from conftest import trial_args

import run_glue_peft
from analysis.runs import load_run
from gradnorm_rank import MethodOverhead
from harness.glue_tasks import GLUE_TASKS
from harness.records import RESULTS_FILE, ModuleRanks, RankRecord, RecordError, Results, RunArgs
from tests.table_sweeps import OLD_RUNS, SWEEPS, TABLE_FILES, write_tables
from tests.test_compare_runs import predictions, sst2_metrics, write_run

EXPECTED = Path(__file__).resolve().parent / "data" / "compare_tables"
# What ranks.json repeated of all_results.json until records.py (and its glora block of its own totals).
REPEATED_IN_RANKS = {"method", "arm", "rank_pattern", "budget_unit", "rank_budget", "param_budget",
                     "num_adapted_matrices", "adapter_params_start", "adapter_params_after_allocation",
                     "adapter_params_effective"}


def test_compare_runs_tables_are_byte_identical_to_the_commit_before_records(tmp_path):
    """Each sweep of tests/table_sweeps.py (the tests' run writers, and real run folders of that commit) gives the
    tables stored from commit a15be9c, byte for byte."""
    written = write_tables(tmp_path)
    assert set(written) == set(SWEEPS)
    for name, folder in written.items():
        for file in TABLE_FILES:
            assert (folder / file).read_bytes() == (EXPECTED / name / file).read_bytes(), f"{name}/{file}"


@pytest.mark.parametrize("run", sorted(p.name for p in OLD_RUNS.iterdir()))
def test_run_folders_written_before_records_load_and_read_back_unchanged(run):
    folder = OLD_RUNS / run
    raw = {name: json.loads((folder / name).read_text()) for name in ("run_args.json", "ranks.json", RESULTS_FILE)}
    run_args, ranks, results = RunArgs.read(folder), RankRecord.read(folder), Results.read(folder)
    # Nothing is lost on the way: each record writes back what it read.
    assert run_args.to_json() == raw["run_args.json"]
    assert ranks.to_json() == raw["ranks.json"] and results.to_json() == raw[RESULTS_FILE]
    # The keys ranks.json repeated are no fields now: kept as read, not used.
    assert set(ranks.other) == REPEATED_IN_RANKS
    old = raw["ranks.json"]
    assert (ranks.final_rank_total, ranks.adapter_params("initial_rank"), ranks.adapter_params("final_rank"),
            ranks.adapter_params("effective_rank")) == (
        results.final_rank_total, results.adapter_params_start, results.adapter_params_after_allocation,
        results.adapter_params_effective) == (
        sum(m["final_rank"] for m in old["modules"].values()), old["adapter_params_start"],
        old["adapter_params_after_allocation"], old["adapter_params_effective"])
    if results.method == "glora":
        assert ranks.glora["adapter_params_before_resize"] == results.adapter_params_start
        assert ranks.glora["adapter_params_after_resize"] == results.adapter_params_after_allocation
    assert results.arm == run_args.resolved["arm"] == run.rsplit("_seed", 1)[0]
    assert results.score(GLUE_TASKS["sst2"]) == raw[RESULTS_FILE]["eval_combined_score"]


def test_a_run_records_each_fact_once_and_compare_runs_reads_it(tiny_bert, glue_dir, tmp_path):
    out = tmp_path / "glora_params"
    returned = run_glue_peft.main(trial_args(tiny_bert, glue_dir("sst2"), "sst2", "glora", out, "--max_steps", "6",
                                             "--budget_unit", "params"))
    written = {name: json.loads((out / name).read_text()) for name in ("run_args.json", "ranks.json", RESULTS_FILE)}
    assert returned == written[RESULTS_FILE]
    assert set(written["ranks.json"]) == {"initial_scaling", "modules", "glora"}  # no identity, no totals
    assert "num_adapted_matrices" not in written[RESULTS_FILE]
    assert set(written["ranks.json"]["glora"]) == {"signal", "score_norm", "beta", "warmup_steps", "warmup_fraction",
                                                   "calibration_steps", "signal_seed", "shuffle_base",
                                                   "signal_damping", "top_r", "max_rank", "rank_cap", "warn_share", "reallocated",
                                                   "reallocation_step", *MethodOverhead().record()}
    ranks, results = RankRecord.read(out), Results.read(out)
    assert ranks.other == {} and results.arm == "glora_params" and results.budget_unit == "params"
    modules = written["ranks.json"]["modules"].values()
    assert results.final_rank_total == sum(m["final_rank"] for m in modules)
    assert results.adapter_params_start == results.param_budget == sum(m["initial_rank"] * (m["d_in"] + m["d_out"])
                                                                       for m in modules)
    assert results.adapter_params_after_allocation == sum(m["final_rank"] * (m["d_in"] + m["d_out"]) for m in modules)
    run, reason = load_run(out)
    assert reason is None
    assert run.score == results.metrics["eval_combined_score"] and run.total_rank == results.final_rank_total
    assert run.adapter_params_effective == results.adapter_params_effective


def test_compare_runs_reads_the_recorded_score_and_totals(tmp_path):
    """A run's recorded task score, total rank and effective adapter parameters are what compare_runs uses, also
    without ranks.json; a run that did not record them gets them computed."""
    d = write_run(tmp_path, "recorded", "sst2", "glora", 1, {**sst2_metrics(0.80), "combined_score": 0.8125}, 10.0,
                  {"validation": predictions(0.80)}, log=False,
                  results={"final_rank_total": 31, "adapter_params_effective": 1000})
    (d / "ranks.json").unlink()
    run, _ = load_run(d)
    assert (run.score, run.total_rank, run.adapter_params_effective) == (0.8125, 31.0, 1000.0)
    older = write_run(tmp_path, "older", "sst2", "glora", 2, {"accuracy": 0.80}, 10.0, {}, log=False,
                      results={"final_rank_total": None})
    run, _ = load_run(older)
    assert (run.score, run.total_rank, run.adapter_params_effective) == (0.80, 32.0, 32 * 1536.0)


def test_the_task_score_is_the_mean_of_each_dev_splits_recorded_combined_score():
    results = Results(task="mnli", method="lora", seed=1, rank_budget=8, train_runtime=1.0, trainable_params=1,
                      metrics={"eval_combined_score": 0.7, "eval_combined_score_mm": 0.8})
    assert results.score(GLUE_TASKS["mnli"]) == pytest.approx(0.75)
    assert results.score(GLUE_TASKS["sst2"]) == 0.7
    del results.metrics["eval_combined_score_mm"]
    assert results.score(GLUE_TASKS["mnli"]) is None  # not recorded for every split: computed by the reader


def test_records_round_trip_and_bad_records_are_named(tmp_path):
    ranks = RankRecord(modules={"m": ModuleRanks(layer=0, matrix="query", d_in=4, d_out=6, initial_rank=2,
                                                 final_rank=3, effective_rank=3, score=0.5)},
                       initial_scaling=2.0, glora={"reallocation_step": 5})
    results = Results(task="sst2", method="glora", seed=1, rank_budget=2, train_runtime=1.5, trainable_params=30,
                      arm="glora", final_rank_total=3, metrics={"eval_accuracy": 0.5})
    args = RunArgs(model={"model_name_or_path": "m"}, resolved={"arm": "glora"}, world_size=1)
    for record in (ranks, results, args):
        record.write(tmp_path)
        assert type(record).read(tmp_path) == record
    assert ranks.adapter_params("initial_rank") == 20 and ranks.adapter_params() == 30
    with pytest.raises(RecordError, match=r"missing keys in all_results.json: seed, train_runtime"):
        Results.from_json({"task": "sst2", "method": "lora", "rank_budget": 8, "trainable_params": 1})
    with pytest.raises(RecordError, match=r"non-numeric value in all_results.json \(seed: "):
        Results.from_json({**results.to_json(), "seed": "one"})
    with pytest.raises(RecordError, match="ranks.json: module m lacks final_rank"):
        RankRecord.from_json({"modules": {"m": {"layer": 0, "matrix": "query", "d_in": 4, "d_out": 6,
                                                "initial_rank": 2}}})
    with pytest.raises(RecordError, match="run_args.json: resolved is not a JSON object"):
        RunArgs.from_json({"resolved": [1]})
    (tmp_path / RESULTS_FILE).write_text("[1, 2]")
    with pytest.raises(RecordError, match="all_results.json is not a JSON object"):
        Results.read(tmp_path)

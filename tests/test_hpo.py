"""hpo.py: search spaces, pruning, kill and resume, two workers on one study, final runs, the tuning split.

Most tests start tests/fake_run.py in place of run_glue_peft.py (same flags, same eval_log.jsonl, no model); one
runs the whole pipeline with a tiny model."""

import hashlib
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import matplotlib.image
import numpy as np
import optuna
import pandas as pd
import pytest
import yaml
from conftest import ROOT, trial_args
from optuna.trial import TrialState

import hpo
import run_glue_peft
from harness.arguments import DataArguments, check_args, config_to_flags, parse_args
from harness.glue_data import load_glue_data
from harness.records import read_eval_log
from search.report import FIGURES, intermediate_curves, plot_intermediate_values, write_figures
from search.sampler import make_sampler, sampler_record
from search.space import load_search_config, sample
from search.study import counted_trials, make_storage, surplus

FAKE_RUN = str(ROOT / "tests" / "fake_run.py")
HPO_BLOCK_KEYS = {"study_name", "storage", "n_trials", "n_complete", "n_pruned", "best_params", "tuned_on", "study_uid",
                  "arm", "run_flags", "search_settings"}


def write_space(tmp_path, space, run=None, n_trials=4) -> Path:
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump({"run": run or {"method": "lora"},
                                    "optuna": {"n_trials": n_trials, "direction": "maximize", "search_space": space}}))
    return path


def fake_hpo_args(space_file, study_dir, *extra):
    return [str(space_file), "--task", "sst2", "--study_dir", str(study_dir), "--final_root", str(study_dir / "final"),
            "--run_script", FAKE_RUN, "--poll_seconds", "0.1", "--max_steps", "8", *extra]


def journal(study_dir):
    """The storage hpo.py uses by default: the journal file STUDY_DIR/study.journal."""
    return make_storage(str(study_dir / "study.journal"))


def load_study(study_dir, name="sst2_lora"):
    return optuna.load_study(study_name=name, storage=journal(study_dir))


def trials_so_far(study_dir) -> list:
    if not (study_dir / "study.journal").exists():
        return []
    try:
        return load_study(study_dir).get_trials()
    except KeyError:  # the worker has not created the study yet
        return []


LR_SPACE = {"learning_rate": {"type": "loguniform", "low": 1.0e-4, "high": 1.0e-2}}


def test_each_space_type_samples_within_bounds_and_reaches_the_run_as_its_flag(tmp_path):
    space_file = write_space(tmp_path, {
        "learning_rate": {"type": "loguniform", "low": "1e-4", "high": "5e-4"},  # PyYAML reads 1e-4 as text
        "glora_beta": {"type": "uniform", "low": 0.8, "high": 0.99},
        "tinit": {"type": "int", "low": 500, "high": 1500},
        "per_device_train_batch_size": {"type": "categorical", "choices": [16, 32, 64]},
    }, run={"method": "glora"})
    space = load_search_config(space_file).space
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(40):
        params = sample(study.ask(), space)
        assert 1e-4 <= params["learning_rate"] <= 5e-4 and 0.8 <= params["glora_beta"] <= 0.99
        assert isinstance(params["tinit"], int) and 500 <= params["tinit"] <= 1500
        assert params["per_device_train_batch_size"] in (16, 32, 64)
        args = parse_args(["--task", "rte"] + config_to_flags(params))
        assert args.training.learning_rate == params["learning_rate"]
        assert args.peft.glora_beta == params["glora_beta"] and args.peft.tinit == params["tinit"]
        assert args.training.per_device_train_batch_size == params["per_device_train_batch_size"]


def test_space_files_of_the_repository_load_and_bad_ones_are_refused(tmp_path):
    for path in sorted((ROOT / "configs" / "search").glob("*.yaml")):
        config = load_search_config(path)
        assert config.space and config.direction == "maximize"
    with pytest.raises(ValueError, match="not run_glue_peft.py flags"):
        load_search_config(write_space(tmp_path, {"lr": {"type": "uniform", "low": 0, "high": 1}}))
    with pytest.raises(ValueError, match="type must be one of"):
        load_search_config(write_space(tmp_path, {"learning_rate": {"type": "normal", "low": 0, "high": 1}}))
    with pytest.raises(ValueError, match="low < high"):
        load_search_config(write_space(tmp_path, {"learning_rate": {"type": "loguniform", "low": 0, "high": 1}}))


def test_the_pruner_stops_a_poor_trial_and_its_process(tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_STEP_SECONDS", "0.3")
    study_dir = tmp_path / "study"
    study_dir.mkdir()
    study = optuna.create_study(study_name="sst2_lora", storage=journal(study_dir), direction="maximize")
    study.enqueue_trial({"learning_rate": 9e-3})  # good: completes
    study.enqueue_trial({"learning_rate": 1e-4})  # poor: below the median at its first evaluation
    hpo.main(fake_hpo_args(write_space(tmp_path, LR_SPACE), study_dir, "--n_trials", "2", "--stage", "search",
                           "--pruner", "median", "--evaluations_per_trial", "4", "--pruner_startup_trials", "1",
                           "--pruner_warmup_fraction", "0"))
    good, poor = load_study(study_dir).get_trials()
    assert good.state == TrialState.COMPLETE and good.user_attrs["steps_trained"] == 8
    assert poor.state == TrialState.PRUNED and poor.user_attrs["steps_trained"] == 2  # first of 4 evaluations
    time.sleep(1)  # a run left alive would go on logging every 2 steps
    lines = (study_dir / "trials" / "trial_0001" / "eval_log.jsonl").read_text().splitlines()
    assert len(lines) <= 2 and not (study_dir / "trials" / "trial_0001" / "all_results.json").exists()


def pruned_at(tmp_path, method, *flags, space=LR_SPACE) -> list:
    """A good then a poor trial of `method` (8 steps, the fake run's structure steps); (state, steps) of each."""
    study_dir = tmp_path / f"study_{method}"
    study_dir.mkdir()
    name = f"sst2_{method}"
    study = optuna.create_study(study_name=name, storage=journal(study_dir), direction="maximize")
    study.enqueue_trial({"learning_rate": 9e-3})
    study.enqueue_trial({"learning_rate": 1e-4})
    hpo.main(fake_hpo_args(write_space(tmp_path, space, run={"method": method}), study_dir, "--n_trials", "2",
                           "--stage", "search", "--pruner_startup_trials", "1", *flags))
    trials = optuna.load_study(study_name=name, storage=journal(study_dir)).get_trials()
    return [(t.state, t.user_attrs["steps_trained"]) for t in trials]


@pytest.mark.parametrize("method, settled", [("lora", 0), ("glora", 3), ("adalora", 6)])
def test_no_trial_is_pruned_before_its_methods_last_structural_change(tmp_path, method, settled):
    # 8 evaluations of 8 steps, no common warm-up: the poor trial is stopped at its first evaluation after the last
    # structural change (GLoRA reallocates at step round(8/3) = 3; AdaLoRA's ranks are final at 8 - round(0.2 x 8) = 6).
    trials = pruned_at(tmp_path, method, "--pruner", "median", "--evaluations_per_trial", "8",
                       "--pruner_warmup_fraction", "0")
    assert trials == [(TrialState.COMPLETE, 8), (TrialState.PRUNED, settled + 1)]


def test_no_trial_of_any_method_is_pruned_before_the_common_warmup_fraction(tmp_path):
    # Warm-up 0.5 of 8 evaluations: k >= 4, i.e. step 4 at the earliest; GLoRA (settled at 3) waits for it too.
    for method, step in (("lora", 4), ("glora", 4), ("adalora", 7)):
        trials = pruned_at(tmp_path, method, "--pruner", "median", "--evaluations_per_trial", "8",
                           "--pruner_warmup_fraction", "0.5")
        assert trials == [(TrialState.COMPLETE, 8), (TrialState.PRUNED, step)], method


@pytest.mark.parametrize("pruner", ["median", "successive_halving", "hyperband", "none"])
def test_each_pruner_option_runs_and_stops_the_poor_trial_unless_none(tmp_path, pruner):
    trials = pruned_at(tmp_path, "lora", "--pruner", pruner, "--evaluations_per_trial", "4",
                       "--pruner_warmup_fraction", "0.25", "--pruner_reduction_factor", "2")
    stopped = (TrialState.COMPLETE, 8) if pruner == "none" else (TrialState.PRUNED, 2)
    assert trials == [(TrialState.COMPLETE, 8), stopped]


@pytest.mark.parametrize("flag, value, line", [
    ("--pruner_warmup_fraction", "1", "--pruner_warmup_fraction must be in [0, 1)"),
    ("--evaluations_per_trial", "0", "--evaluations_per_trial must be >= 1"),
    ("--pruner_reduction_factor", "1", "--pruner_reduction_factor must be >= 2"),
    ("--pruner", "median", "--pruner median could never act: with --evaluations_per_trial 1 and "
                           "--pruner_warmup_fraction 0.8 its first decision would be at evaluation 1 of 1"),
])
def test_bad_pruner_settings_are_refused_before_the_study_opens(tmp_path, flag, value, line):
    with pytest.raises(SystemExit, match=re.escape(line)):
        hpo.main(fake_hpo_args(write_space(tmp_path, LR_SPACE), tmp_path / "study", flag, value))
    assert not (tmp_path / "study").exists()


REPLAY_RATES = [2e-3, 9e-3, 1e-4, 5e-3, 3e-4, 8e-3]  # enqueued in this order in every study of the replay test


def enqueued_study(study_dir, space_file, *flags) -> Path:
    """A fake-run study of the REPLAY_RATES trials, searched then tabulated (trials.csv) without final runs."""
    study_dir.mkdir(parents=True)
    created = optuna.create_study(study_name="sst2_lora", storage=journal(study_dir),
                                  direction="maximize")
    for lr in REPLAY_RATES:
        created.enqueue_trial({"learning_rate": lr})
    hpo.main(fake_hpo_args(space_file, study_dir, "--n_trials", str(len(REPLAY_RATES)), "--final_seeds",
                           "--pruner_startup_trials", "1", "--pruner_reduction_factor", "2", *flags))
    return study_dir


@pytest.fixture(scope="module")
def unpruned_study(tmp_path_factory):
    root = tmp_path_factory.mktemp("replay")
    return enqueued_study(root / "unpruned", write_space(root, LR_SPACE), "--pruner", "none",
                          "--evaluations_per_trial", "8")


@pytest.mark.parametrize("pruner", ["median", "successive_halving", "hyperband"])
def test_a_replayed_pruner_stops_the_trials_a_live_pruned_study_stops(tmp_path, unpruned_study, pruner):
    from search.replay_pruners import load_curves, replay

    flags = ("--pruner", pruner, "--evaluations_per_trial", "4", "--pruner_warmup_fraction", "0.25")
    live = enqueued_study(tmp_path / "live", write_space(tmp_path, LR_SPACE), *flags)
    settings = hpo.pruning_settings(hpo.parse_hpo_args(["space.yaml", *flags, "--pruner_startup_trials", "1",
                                                        "--pruner_reduction_factor", "2"])[0])
    replayed = replay("sst2_lora", load_curves(unpruned_study), settings)
    lived = [(t.state.name, t.user_attrs["steps_trained"]) for t in load_study(live).get_trials()]
    assert list(zip(replayed.state, replayed.steps)) == lived
    assert "PRUNED" in replayed.state.values  # the case is one where pruning happens


def test_by_default_no_pruner_and_one_evaluation_at_the_end_of_each_trial(tmp_path):
    study_dir = tmp_path / "study"
    hpo.main(fake_hpo_args(write_space(tmp_path, LR_SPACE), study_dir, "--n_trials", "2", "--stage", "search"))
    for trial in load_study(study_dir).get_trials():
        assert trial.state == TrialState.COMPLETE
        log = read_eval_log(Path(trial.user_attrs["trial_dir"]))
        assert [(r["step"], r["max_steps"]) for r in log] == [(8, 8)]


def test_pruner_none_lets_the_poor_trial_finish(tmp_path):
    study_dir = tmp_path / "study"
    study_dir.mkdir()
    study = optuna.create_study(study_name="sst2_lora", storage=journal(study_dir), direction="maximize")
    study.enqueue_trial({"learning_rate": 9e-3})
    study.enqueue_trial({"learning_rate": 1e-4})
    hpo.main(fake_hpo_args(write_space(tmp_path, LR_SPACE), study_dir, "--n_trials", "2", "--stage", "search",
                           "--pruner_startup_trials", "1", "--pruner", "none"))
    assert [t.state for t in load_study(study_dir).get_trials()] == [TrialState.COMPLETE] * 2


def test_a_failing_trial_is_recorded_with_its_reason_and_the_study_goes_on(tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_RUN_FAILS", "1")
    study_dir = tmp_path / "study"
    hpo.main(fake_hpo_args(write_space(tmp_path, LR_SPACE), study_dir, "--n_trials", "2", "--stage", "search"))
    trials = load_study(study_dir).get_trials()
    assert [t.state for t in trials] == [TrialState.FAIL] * 2
    assert all("exited with code 1: RuntimeError: fake run failed on purpose" in t.user_attrs["fail_reason"]
               for t in trials)


def start_worker(space_file, study_dir, *extra):
    command = [sys.executable, str(ROOT / "hpo.py")] + fake_hpo_args(space_file, study_dir, *extra)
    return subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def test_a_killed_search_resumes_without_losing_or_repeating_a_trial(tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_STEP_SECONDS", "0.15")
    study_dir = tmp_path / "study"
    flags = ("--n_trials", "3", "--stage", "search", "--heartbeat_interval", "1", "--grace_period", "2",
             "--pruner", "none", "--evaluations_per_trial", "4")  # an eval log from the first quarter: mid-trial
    worker = start_worker(write_space(tmp_path, LR_SPACE), study_dir, *flags)
    deadline = time.time() + 60
    while time.time() < deadline:  # kill it while its second trial runs
        trials = trials_so_far(study_dir)
        if [t.state for t in trials] == [TrialState.COMPLETE, TrialState.RUNNING] and \
                (study_dir / "trials" / "trial_0001" / "eval_log.jsonl").exists():
            break
        time.sleep(0.1)
    else:
        pytest.fail(f"the worker never reached its second trial: {worker.communicate()[0] if worker.poll() is not None else ''}")
    os.killpg(worker.pid, signal.SIGKILL)
    worker.wait()
    before = load_study(study_dir).get_trials()

    hpo.main(fake_hpo_args(write_space(tmp_path, LR_SPACE), study_dir, *flags))
    after = load_study(study_dir).get_trials()
    assert after[0].state == TrialState.COMPLETE and after[0].datetime_complete == before[0].datetime_complete
    assert after[1].state == TrialState.FAIL  # the interrupted trial...
    rerun = [t for t in after if t.system_attrs.get("failed_trial") == 1]
    assert len(rerun) == 1 and rerun[0].params == after[1].params and rerun[0].state == TrialState.COMPLETE  # ...rerun
    assert len(counted_trials(load_study(study_dir))) == 3 and len(after) == 4
    # The killed search's training process died with it: the interrupted trial's log stopped growing.
    assert not (study_dir / "trials" / "trial_0001" / "all_results.json").exists()


def test_two_workers_share_one_study(tmp_path, monkeypatch, capsys):
    """A worker process started on its own, and this test's process as the second worker, on one journal study."""
    monkeypatch.setenv("FAKE_STEP_SECONDS", "0.1")
    study_dir = tmp_path / "study"
    space_file = write_space(tmp_path, LR_SPACE)
    flags = ("--n_trials", "8", "--stage", "search", "--pruner", "none")
    other = start_worker(space_file, study_dir, *flags)
    deadline = time.time() + 60
    while not (study_dir / "trials").exists() and time.time() < deadline:  # join once the other worker has begun
        time.sleep(0.1)
    hpo.main(fake_hpo_args(space_file, study_dir, *flags))
    other_output = other.communicate(timeout=60)[0]
    assert other.returncode == 0, other_output
    trials = load_study(study_dir).get_trials()
    unrun = [t for t in trials if surplus(t)]  # asked for by both workers at once for the last place: given up
    assert all(t.state == TrialState.FAIL and not t.params and "trial_dir" not in t.user_attrs for t in unrun)
    trials = [t for t in trials if not surplus(t)]
    assert len(trials) == 8 and all(t.state == TrialState.COMPLETE for t in trials)
    assert len({t.user_attrs["trial_dir"] for t in trials}) == len(trials)
    assert "trial " in other_output and "trial " in capsys.readouterr().out  # both workers ran trials


def test_n_trials_0_runs_the_final_runs_with_the_config_values(tmp_path):
    with pytest.raises(SystemExit, match="searched"):  # a searched flag given on the command line too
        hpo.main(fake_hpo_args(write_space(tmp_path, LR_SPACE), tmp_path / "study", "--learning_rate", "1e-3"))
    space_file = write_space(tmp_path, {"per_device_train_batch_size": {"type": "categorical", "choices": [4, 8]}},
                             run={"method": "lora", "learning_rate": 3e-3})
    hpo.main(fake_hpo_args(space_file, tmp_path / "study", "--n_trials", "0", "--final_seeds", "5", "7"))
    for seed in (5, 7):
        run_args = json.loads((tmp_path / "study" / "final" / "sst2" / f"lora_seed{seed}" / "run_args.json").read_text())
        parsed = parse_args(run_args["argv"])  # as run_glue_peft.py would read its command line
        assert parsed.training.learning_rate == 3e-3 and parsed.training.seed == seed
        assert parsed.training.per_device_train_batch_size == 32  # the run's default: nothing searched
        assert run_args["hpo"]["n_trials"] == 0 and run_args["hpo"]["best_params"] == {}


BAD_SPACE_FILES = {  # file text -> what its one line must say (besides the file's name)
    "": "the file is empty",
    "optna:\n  n_trials: 2\n": "unknown section 'optna' (did you mean 'optuna'?)",
    "optuna:\n  n_trials: 2\n  search_spaces: {learning_rate: {type: uniform, low: 0.1, high: 0.2}}\n":
        "unknown key in optuna: 'search_spaces' (did you mean 'search_space'?)",
    "optuna:\n  n_trials: 2\n  search_space: {learning_rate: {type: loguniform, low: 1.0e-4}}\n":
        "search_space.learning_rate: loguniform needs low and high; high is missing",
    "- learning_rate\n- per_device_train_batch_size\n": "expected a mapping with `run:` and `optuna:` sections, got a list",
    "optuna:\n  search_space: {learning_rate: {type: uniform, low: 0.1, high: 0.2}}\n":
        "optuna.n_trials must be an integer >= 1, got None (for final runs without a search, pass hpo.py --n_trials 0)",
    "optuna:\n  n_trials: 3\n": "optuna.search_space is missing (or empty)",
    "optuna:\n  n_trials: 3\n  search_space: {learning_rate: {type: uniform, low: x, high: 0.2}}\n":
        "search_space.learning_rate: low 'x' is not a number",
}


@pytest.mark.parametrize("text", list(BAD_SPACE_FILES), ids=range(len(BAD_SPACE_FILES)))
def test_each_bad_space_file_gets_one_line_naming_the_file_and_key(tmp_path, text):
    path = tmp_path / "space.yaml"
    path.write_text(text)
    with pytest.raises(ValueError) as refused:
        load_search_config(path)
    message = str(refused.value)
    assert message.startswith(f"{path}: ") and BAD_SPACE_FILES[text] in message and "\n" not in message


def test_a_search_that_yields_no_trial_never_reaches_the_final_runs(tmp_path, monkeypatch):
    no_n_trials = tmp_path / "space.yaml"
    no_n_trials.write_text(yaml.safe_dump({"optuna": {"search_space": LR_SPACE}}))
    with pytest.raises(ValueError, match="optuna.n_trials must be an integer >= 1"):
        hpo.main(fake_hpo_args(no_n_trials, tmp_path / "study"))
    monkeypatch.setenv("FAKE_RUN_FAILS", "1")  # every trial fails: no best parameters
    with pytest.raises(SystemExit, match="no trial completed .*--n_trials 0 makes final runs"):
        hpo.main(fake_hpo_args(write_space(tmp_path, LR_SPACE), tmp_path / "study", "--n_trials", "2"))
    assert len(load_study(tmp_path / "study").get_trials()) == 2
    assert not (tmp_path / "study" / "final").exists()


def test_a_study_reopened_with_other_fixed_flags_is_refused(tmp_path):
    study_dir, space_file = tmp_path / "study", write_space(tmp_path, LR_SPACE)
    hpo.main(fake_hpo_args(space_file, study_dir, "--n_trials", "1", "--stage", "search", "--lora_alpha", "8"))
    recorded = load_study(study_dir).user_attrs
    assert recorded["arm"] == "lora" and len(recorded["study_uid"]) == 32
    assert recorded["run_flags"]["max_steps"] == 8 and recorded["run_flags"]["lora_alpha"] == 8.0
    assert "learning_rate" not in recorded["run_flags"] and "output_dir" not in recorded["run_flags"]  # searched, set
    with pytest.raises(SystemExit, match=r"^study sst2_lora was created with other run flags \(lora_alpha 8.0 there, "
                                         r"16 now; max_steps 8 there, 4 now\)"):
        hpo.main(fake_hpo_args(space_file, study_dir, "--n_trials", "2", "--stage", "search", "--max_steps", "4"))
    with pytest.raises(SystemExit, match=r"arm 'lora' there, 'lora_small' now"):
        hpo.main(fake_hpo_args(space_file, study_dir, "--n_trials", "2", "--lora_alpha", "8", "--arm", "lora_small",
                               "--study_name", "sst2_lora"))
    assert len(load_study(study_dir).get_trials()) == 1  # neither refused worker ran a trial
    # The same flags, spelt otherwise, with another logging cadence and evaluation batch size (flags a resume may
    # change: arguments.STUDY_MAY_DIFFER), resume the study.
    hpo.main(fake_hpo_args(space_file, study_dir, "--n_trials", "2", "--stage", "search", "--lora_alpha=8.0",
                           "--logging_steps", "3", "--per_device_eval_batch_size", "32"))
    assert len(load_study(study_dir).get_trials()) == 2


def test_study_flags_are_those_of_a_run_less_the_ones_its_runs_may_differ_in():
    """One declaration: a study ignores every flag a resume may change plus those hpo.py sets per run. A flag that an
    older harness recorded but that no longer defines a study is not compared on a reopen; a fixed flag still is."""
    from harness.arguments import RESUME_MAY_CHANGE, STUDY_MAY_DIFFER, flag_fields
    from search.identity import fixed_run_flags, pin_study

    assert RESUME_MAY_CHANGE < STUDY_MAY_DIFFER < set(flag_fields())  # no misspelt name
    args = parse_args(["--task", "sst2", "--method", "lora", "--max_steps", "8"])
    flags = fixed_run_flags(args, searched=("learning_rate",))
    assert set(flags) == set(flag_fields()) - STUDY_MAY_DIFFER - {"learning_rate", "arm"}
    study = optuna.create_study()
    study.set_user_attr("run_flags", {**flags, "per_device_eval_batch_size": 64})  # as hpo.py recorded it before
    study.set_user_attr("arm", "lora")
    assert pin_study(study, flags, "lora") is None
    study.set_user_attr("run_flags", {**flags, "lora_alpha": 99.0})
    with pytest.raises(SystemExit, match=r"other run flags \(lora_alpha 99\.0 there, 16 now\)"):
        pin_study(study, flags, "lora")


def test_a_worker_opening_the_study_while_another_records_it_joins_at_every_point():
    """Two workers started together: after each attribute the first records, a second opens the same study. It must
    join every time (same flags, same arm); a reader that finds the run flags finds the arm with them (two workers of
    the journal study once refused each other: 'arm None there, 'lora' now')."""
    from search.identity import fixed_run_flags, pin_study

    flags = fixed_run_flags(parse_args(["--task", "sst2", "--method", "lora", "--max_steps", "8"]), searched=())
    study = optuna.create_study()
    record = study.set_user_attr
    outcomes = []

    def second_worker_after(key, value):
        record(key, value)
        study.set_user_attr = record  # the second worker's own writes (it records too while it finds no run flags)
        try:
            pin_study(study, flags, "lora")
            outcomes.append((key, "joined"))
        except SystemExit as refused:
            outcomes.append((key, str(refused)))
        finally:
            study.set_user_attr = second_worker_after

    study.set_user_attr = second_worker_after
    pin_study(study, flags, "lora")
    study.set_user_attr = record
    assert outcomes and all(outcome == "joined" for _, outcome in outcomes), outcomes
    assert study.user_attrs["arm"] == "lora" and study.user_attrs["run_flags"] == flags


SEED_SPACE = {**LR_SPACE, "per_device_train_batch_size": {"type": "categorical", "choices": [4, 8, 16, 32]}}


def searched_params(tmp_path, name, *flags) -> list:
    """The parameters of each trial of a one-worker search (no pruning) in tmp_path/name, in trial order."""
    study_dir = tmp_path / name
    hpo.main(fake_hpo_args(write_space(tmp_path, SEED_SPACE), study_dir, "--stage", "search", "--pruner", "none", *flags))
    return [t.params for t in load_study(study_dir).get_trials()]


def test_one_sampler_seed_proposes_the_same_trials_and_a_continued_search_draws_them_too(tmp_path, capsys):
    first = searched_params(tmp_path, "a", "--n_trials", "3", "--sampler_seed", "7")
    assert len({p["learning_rate"] for p in first}) == 3  # three draws, not one repeated
    assert searched_params(tmp_path, "b", "--n_trials", "3", "--sampler_seed", "7") == first
    other = searched_params(tmp_path, "c", "--n_trials", "3", "--sampler_seed", "8")
    assert all(o["learning_rate"] != f["learning_rate"] for o, f in zip(other, first))
    # Two trials, then the search continued to three without --sampler_seed: the recorded seed, said in a line, and
    # the third trial is the one a single search of three drew.
    assert searched_params(tmp_path, "d", "--n_trials", "2", "--sampler_seed", "7") == first[:2]
    capsys.readouterr()
    assert searched_params(tmp_path, "d", "--n_trials", "3") == first
    assert ("study sst2_lora: sampler seed 7, recorded when it was created (--sampler_seed not given)"
            in capsys.readouterr().out.splitlines())
    assert load_study(tmp_path / "d").user_attrs["search_settings"]["sampler_seed"] == 7


def test_workers_of_one_study_with_one_seed_draw_different_trials_the_ones_one_worker_would():
    storage = optuna.storages.InMemoryStorage()
    one = optuna.create_study(study_name="s", storage=storage, sampler=make_sampler(7))
    two = optuna.load_study(study_name="s", storage=storage, sampler=make_sampler(7))
    a, b = one.ask(), two.ask()  # both started before either had a trial
    drawn = [a.suggest_float("x", 0, 1), b.suggest_float("x", 0, 1)]
    assert (a.number, b.number) == (0, 1) and drawn[0] != drawn[1]
    alone = optuna.create_study(sampler=make_sampler(7))
    assert [alone.ask().suggest_float("x", 0, 1) for _ in range(2)] == drawn  # whichever worker draws trial n


def test_a_study_reopened_with_other_search_settings_is_refused_before_any_trial(tmp_path):
    study_dir, space_file = tmp_path / "study", write_space(tmp_path, LR_SPACE)
    pruned = ("--pruner", "median", "--evaluations_per_trial", "4", "--pruner_warmup_fraction", "0.5")
    hpo.main(fake_hpo_args(space_file, study_dir, "--n_trials", "1", "--stage", "search", "--sampler_seed", "3",
                           *pruned))
    recorded = load_study(study_dir).user_attrs["search_settings"]
    assert recorded["sampler"] == sampler_record() and recorded["sampler"]["class"] == "TPESampler"
    assert recorded["sampler"]["n_startup_trials"] == 10 and recorded["sampler_seed"] == 3
    assert (recorded["pruning"]["pruner"], recorded["pruning"]["warmup_fraction"]) == ("median", 0.5)
    assert recorded["pruning"]["evaluations_per_trial"] == 4
    refused = {("--pruner", "hyperband"): "pruner 'median' there, 'hyperband' now",
               ("--pruner_warmup_fraction", "0.25"): "pruner_warmup_fraction 0.5 there, 0.25 now",
               ("--evaluations_per_trial", "8"): "evaluations_per_trial 4 there, 8 now",
               ("--sampler_seed", "4"): "sampler_seed 3 there, 4 now"}
    for flags, differs in refused.items():
        with pytest.raises(SystemExit, match=rf"^study sst2_lora was created with other search settings "
                                             rf"\({re.escape(differs)}\): give the same --pruner\*"):
            hpo.main(fake_hpo_args(space_file, study_dir, "--n_trials", "2", "--stage", "search", "--sampler_seed",
                                   "3", *pruned, *flags))
    assert len(load_study(study_dir).get_trials()) == 1 and not (study_dir / "trials" / "trial_0001").exists()
    with pytest.raises(SystemExit, match=r"\(pruner 'median' there, 'none' now; sampler_seed 3 there, 5 now\)"):
        hpo.main(fake_hpo_args(space_file, study_dir, "--n_trials", "2", *pruned, "--pruner", "none",
                               "--sampler_seed", "5"))
    unseeded = tmp_path / "unseeded"  # a study drawn without a seed never gets one later
    hpo.main(fake_hpo_args(space_file, unseeded, "--n_trials", "1", "--stage", "search"))
    with pytest.raises(SystemExit, match=r"\(sampler_seed None there, 3 now\)"):
        hpo.main(fake_hpo_args(space_file, unseeded, "--n_trials", "2", "--stage", "search", "--sampler_seed", "3"))
    hpo.main(fake_hpo_args(space_file, study_dir, "--n_trials", "2", "--stage", "search", *pruned))  # the same: resumes
    assert len(load_study(study_dir).get_trials()) == 2


def test_figures_are_written_and_show_where_the_pruned_trial_stopped(tmp_path, capsys):
    study_dir = tmp_path / "study"
    study_dir.mkdir()
    study = optuna.create_study(study_name="sst2_lora", storage=journal(study_dir), direction="maximize")
    study.enqueue_trial({"learning_rate": 9e-3})  # good: completes
    study.enqueue_trial({"learning_rate": 1e-4})  # poor: stopped at its first evaluation, a quarter of its run
    hpo.main(fake_hpo_args(write_space(tmp_path, LR_SPACE), study_dir, "--n_trials", "2", "--pruner_startup_trials",
                           "1", "--pruner", "median", "--evaluations_per_trial", "4", "--pruner_warmup_fraction",
                           "0.25", "--final_seeds"))
    printed = capsys.readouterr().out
    study = load_study(study_dir)
    curves = intermediate_curves(study)
    assert [(c.number, c.state, c.fractions) for c in curves] == [
        (0, TrialState.COMPLETE, (0.25, 0.5, 0.75, 1.0)), (1, TrialState.PRUNED, (0.25,))]
    assert curves[0].values == pytest.approx((0.225, 0.45, 0.675, 0.9))  # the fake run's score: lr x 100 x progress
    assert curves[1].values == pytest.approx((0.0025,))
    for name in FIGURES:
        image = matplotlib.image.imread(study_dir / f"{name}.png")
        assert image.dtype == np.float32 and image.shape in ((450, 700, 3), (450, 700, 4)), name
        assert image.min() < image.max(), name  # something is drawn
    assert (f"outputs: {study_dir}/trials.csv, best_params.json, hpo_record.json, optimization_history.png, "
            "param_importances.png, parallel_coordinate.png, intermediate_values.png") in printed.splitlines()
    record = json.loads((study_dir / "hpo_record.json").read_text())
    assert record["search_settings"] == study.user_attrs["search_settings"] and record["search_settings"]["pruning"][
        "warmup_fraction"] == 0.25

    study.add_trial(optuna.trial.create_trial(  # a failed trial: counted in the title, not drawn
        state=TrialState.FAIL, params={"learning_rate": 5e-3}, intermediate_values={1: 0.1},
        distributions={"learning_rate": optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True)}))
    assert [c.number for c in intermediate_curves(study)] == [0, 1]
    ax = plot_intermediate_values(study, "combined_score").axes[0]
    assert ax.get_title() == "sst2_lora: 1 complete, 1 pruned, 1 failed (not drawn) trials"
    assert [text.get_text() for text in ax.get_legend().get_texts()] == [
        "complete (1)", "pruned (1), x where stopped", "median pruner warm-up (0.25): no stop before"]
    assert [(list(line.get_xdata()), line.get_linestyle()) for line in ax.get_lines()] == [
        ([0.25, 0.5, 0.75, 1.0], "-"), ([0.25], "--"), ([0.25], "None"), ([0.25, 0.25], ":")]  # x: the stop


def test_a_figure_that_cannot_be_drawn_is_a_note(tmp_path):
    study = optuna.create_study(study_name="old", direction="maximize")
    study.add_trial(optuna.trial.create_trial(state=TrialState.PRUNED, intermediate_values={1: 0.3, 2: 0.4}))
    notes = write_figures(study, tmp_path)  # no complete trial, no recorded search settings
    assert notes == ["optimization_history.png, param_importances.png, parallel_coordinate.png not drawn: no complete "
                     "trial", "intermediate_values.png not drawn: ValueError: the study's evaluations per trial are not "
                     "recorded (search settings missing)"]
    assert not list(tmp_path.glob("*.png"))
    study.set_user_attr("search_settings", {"pruning": {"pruner": "none", "evaluations_per_trial": 8}})
    assert write_figures(study, tmp_path)[1:] == []  # the learning curves need no complete trial
    assert [(c.fractions, c.state) for c in intermediate_curves(study)] == [((0.125, 0.25), TrialState.PRUNED)]
    assert sorted(p.name for p in tmp_path.glob("*.png")) == ["intermediate_values.png"]


def test_two_arms_of_one_method_get_separate_studies_and_final_folders(tmp_path):
    storage, final_root = f"sqlite:///{tmp_path / 'shared.db'}", tmp_path / "final"
    pattern = tmp_path / "pattern.json"
    pattern.write_text('{"bert.encoder.layer.0.attention.self.query": 2}')
    sha = hashlib.sha256(pattern.read_bytes()).hexdigest()[:8]
    arms = {"glora": ["--method", "glora"], "glora_params": ["--method", "glora", "--budget_unit", "params"],
            f"lora_pattern-{sha}": ["--method", "lora", "--rank_pattern", str(pattern)]}
    def search(arm, *flags):
        hpo.main([str(write_space(tmp_path, LR_SPACE, run={})), "--task", "sst2", "--study_dir", str(tmp_path / arm),
                  "--storage", storage, "--final_root", str(final_root), "--run_script", FAKE_RUN, "--poll_seconds",
                  "0.1", "--max_steps", "4", "--n_trials", "1", "--final_seeds", "1", *flags])

    for arm, flags in arms.items():
        search(arm, *flags)
    assert set(optuna.get_all_study_names(storage)) == {f"sst2_{arm}" for arm in arms}
    for arm in arms:
        assert optuna.load_study(study_name=f"sst2_{arm}", storage=storage).user_attrs["arm"] == arm
        block = json.loads((final_root / "sst2" / f"{arm}_seed1" / "run_args.json").read_text())["hpo"]
        assert (block["study_name"], block["arm"]) == (f"sst2_{arm}", arm)
    assert sorted(p.name for p in (final_root / "sst2").iterdir() if p.is_dir()) == sorted(f"{a}_seed1" for a in arms)
    pattern.write_text('{"bert.encoder.layer.0.attention.self.query": 3}')  # another pattern under the same name
    with pytest.raises(SystemExit, match=rf"rank_pattern .*'sha256': '{sha}.* there, .*'sha256': '(?!{sha})"):
        search(f"lora_pattern-{sha}", "--method", "lora", "--rank_pattern", str(pattern), "--arm", f"lora_pattern-{sha}")


def test_a_glora_signal_is_its_own_study_never_joined_by_a_worker_of_another_nor_searched(tmp_path):
    """--glora_signal defines the arm (arguments.ArmPart): by default another signal names another study; a worker
    that opens a study of one signal with another is refused, naming the arm and the flag, before any trial; and a
    space may not search it, since its final runs would then be of another arm than the study's."""
    space = write_space(tmp_path, LR_SPACE, run={"method": "glora"})

    def search(study_dir, *flags):
        hpo.main(fake_hpo_args(space, study_dir, "--n_trials", "1", "--stage", "search", *flags))

    search(tmp_path / "a", "--glora_signal", "sensitivity", "--glora_calibration_steps", "2")
    recorded = load_study(tmp_path / "a", "sst2_glora_sensitivity_cal2").user_attrs
    assert recorded["arm"] == "glora_sensitivity_cal2" and recorded["run_flags"]["glora_signal"] == "sensitivity"
    search(tmp_path / "b", "--glora_calibration_steps", "2")
    assert load_study(tmp_path / "b", "sst2_glora_lora_b_cal2").user_attrs["arm"] == "glora_lora_b_cal2"
    with pytest.raises(SystemExit, match=r"^study sst2_glora_sensitivity_cal2 was created with other run flags \(arm "
                                         r"'glora_sensitivity_cal2' there, 'glora_lora_b_cal2' now; glora_signal "
                                         r"'sensitivity' there, 'lora_b' now\)"):
        search(tmp_path / "a", "--glora_calibration_steps", "2", "--study_name", "sst2_glora_sensitivity_cal2")
    with pytest.raises(SystemExit, match=r"glora_signal 'sensitivity' there, 'lora_b' now"):  # one label by hand
        search(tmp_path / "a", "--glora_calibration_steps", "2", "--study_name", "sst2_glora_sensitivity_cal2",
               "--arm", "glora_sensitivity_cal2")
    assert len(load_study(tmp_path / "a", "sst2_glora_sensitivity_cal2").get_trials()) == 1
    searched = write_space(tmp_path, {"glora_signal": {"type": "categorical", "choices": ["lora_b", "sensitivity"]}},
                           run={"method": "glora"})
    with pytest.raises(SystemExit, match="search_space.glora_signal names the arm"):
        hpo.main(fake_hpo_args(searched, tmp_path / "c"))
    assert not (tmp_path / "c").exists()


def final_hpo_block(final_root, name="lora_seed1") -> dict:
    return json.loads((final_root / "sst2" / name / "run_args.json").read_text())["hpo"]


def test_a_final_run_of_another_study_is_refused_and_rerun_beside_it_on_request(tmp_path):
    space_file, final_root = write_space(tmp_path, LR_SPACE), tmp_path / "final"
    first = fake_hpo_args(space_file, tmp_path / "first") + ["--n_trials", "1", "--final_seeds", "1", "--final_root",
                                                             str(final_root)]
    hpo.main(first)
    made_by_first = final_hpo_block(final_root)
    second = fake_hpo_args(space_file, tmp_path / "second", "--max_steps", "4") + [
        "--n_trials", "1", "--final_seeds", "1", "--final_root", str(final_root)]
    folder = final_root / "sst2" / "lora_seed1"
    with pytest.raises(SystemExit, match=rf"^{re.escape(str(folder))} holds a finished final run that is not this "
                                         rf"study's: made by study sst2_lora in {re.escape(f'{tmp_path}/first/study.journal')}"
                                         ".*max_steps 8 there, 4 now.*Pass --rerun_stale_finals"):
        hpo.main(second)
    assert not (tmp_path / "second" / "trials").exists()  # refused before its search
    assert final_hpo_block(final_root) == made_by_first

    hpo.main(second + ["--rerun_stale_finals"])
    rerun = final_hpo_block(final_root)
    assert rerun["study_uid"] == load_study(tmp_path / "second").user_attrs["study_uid"] != made_by_first["study_uid"]
    assert rerun["run_flags"]["max_steps"] == 4
    (aside,) = (tmp_path / "final_stale" / "sst2").glob("lora_seed1-*/")  # the first study's run, kept
    assert json.loads((aside / "run_args.json").read_text())["hpo"] == made_by_first
    assert (aside / "all_results.json").is_file() and Path(f"{aside}.log").is_file()


def test_a_final_run_made_before_the_best_parameters_changed_is_refused(tmp_path, capsys):
    study_dir, final_root = tmp_path / "study", tmp_path / "study" / "final"
    space_file = write_space(tmp_path, LR_SPACE)
    args = fake_hpo_args(space_file, study_dir, "--final_seeds", "1", "--pruner", "none")
    study_dir.mkdir()
    study = optuna.create_study(study_name="sst2_lora", storage=journal(study_dir), direction="maximize")
    study.enqueue_trial({"learning_rate": 1e-3})
    hpo.main(args + ["--n_trials", "1"])
    results = final_root / "sst2" / "lora_seed1" / "all_results.json"
    before = results.read_text()
    hpo.main(args + ["--n_trials", "1"])  # the same study, the same best: kept, nothing trained
    assert "lora_seed1 is this study's, with these parameters: kept" in capsys.readouterr().out
    assert results.read_text() == before

    study.enqueue_trial({"learning_rate": 9e-3})  # the resumed search finds a better rate
    with pytest.raises(SystemExit, match=r"best learning_rate 0.001 there, 0.009 now\. Pass --rerun_stale_finals"):
        hpo.main(args + ["--n_trials", "2"])
    assert results.read_text() == before and final_hpo_block(final_root)["best_params"] == {"learning_rate": 1e-3}
    hpo.main(args + ["--n_trials", "2", "--stage", "final", "--rerun_stale_finals"])
    block = final_hpo_block(final_root)
    assert block["best_params"] == {"learning_rate": 9e-3} and block["n_trials"] == 2
    argv = json.loads((final_root / "sst2" / "lora_seed1" / "run_args.json").read_text())["argv"]
    assert parse_args(argv).training.learning_rate == 9e-3


def test_a_trial_evaluates_only_its_tuning_split(tiny_bert, glue_dir, tmp_path):
    """--eval_split tuning (every hpo.py trial): no dev metric, prediction or evaluation anywhere in its folder."""
    out = tmp_path / "trial"
    results = run_glue_peft.main(trial_args(tiny_bert, glue_dir("sst2", n_train=80), "sst2", "lora", out,
                                            "--tuning_split_fraction", "0.25", "--eval_split", "tuning",
                                            "--max_steps", "2", "--eval_strategy", "steps", "--eval_steps", "1"))
    saved = json.loads((out / "all_results.json").read_text())
    metrics = sorted(k for k in saved if k.startswith("eval_"))
    assert metrics and all(k.startswith("eval_tuning_") for k in metrics) and "eval_tuning_accuracy" in metrics
    assert results["eval_tuning_accuracy"] == saved["eval_tuning_accuracy"]
    assert sorted(p.name for p in out.glob("predictions_*.csv")) == ["predictions_tuning.csv"]
    written = pd.read_csv(out / "predictions_tuning.csv")
    assert len(written) == 20 and math.isclose(saved["eval_tuning_accuracy"],
                                               float((written["label"] == written["prediction"]).mean()))
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    assert not [k for entry in history for k in entry if k.startswith("eval_") and not k.startswith("eval_tuning_")]
    assert {r["split"] for r in read_eval_log(out)} == {"tuning"}


def without(flags, *names):
    """flags less each named flag and its value."""
    out = list(flags)
    for name in names:
        i = out.index(name)
        del out[i:i + 2]
    return out


def test_whole_pipeline_with_a_tiny_model(tiny_bert, glue_dir, tmp_path, capsys):
    """--n_trials 2 --max_steps 2: trials on the tuning split, final run with the best values, outputs, compare_runs."""
    study_dir, final_root = tmp_path / "study", tmp_path / "final"
    run_flags = without(trial_args(tiny_bert, glue_dir("sst2", n_train=80), "sst2", "glora", "unused"),
                        "--output_dir", "--learning_rate", "--per_device_train_batch_size")  # set or searched by hpo.py
    hpo.main([str(ROOT / "configs" / "search" / "cpu_lr_batch.yaml"), *run_flags, "--n_trials", "2", "--max_steps", "2",
              "--study_dir", str(study_dir), "--final_root", str(final_root), "--final_seeds", "1",
              "--tuning_split_fraction", "0.25", "--sampler_seed", "0"])
    printed = capsys.readouterr().out
    assert "trial   0 COMPLETE" in printed and "== study sst2_glora" in printed

    table = pd.read_csv(study_dir / "trials.csv")
    assert list(table["state"]) == ["COMPLETE", "COMPLETE"] and list(table["steps_trained"]) == [2, 2]
    assert {"value", "duration_s", "param_learning_rate", "param_per_device_train_batch_size"} <= set(table.columns)
    best = json.loads((study_dir / "best_params.json").read_text())
    assert best == load_study(study_dir, "sst2_glora").best_params
    assert (study_dir / "optimization_history.png").stat().st_size > 0

    trial_log = [json.loads(line) for line in (study_dir / "trials" / "trial_0000" / "eval_log.jsonl").read_text().splitlines()]
    assert {r["split"] for r in trial_log} == {"tuning"} and trial_log[-1]["step"] == 2
    for trial_dir in (study_dir / "trials").iterdir():  # trials never evaluate dev
        assert [p.name for p in trial_dir.glob("predictions_*.csv")] == ["predictions_tuning.csv"]
        assert "eval_accuracy" not in json.loads((trial_dir / "all_results.json").read_text())

    final = final_root / "sst2" / "glora_seed1"
    run_args = json.loads((final / "run_args.json").read_text())
    assert run_args["training"]["learning_rate"] == best["learning_rate"]
    assert run_args["training"]["per_device_train_batch_size"] == best["per_device_train_batch_size"]
    assert run_args["training"]["report_to"] == [] and run_args["data"]["eval_split"] == "dev"
    assert run_args["data"]["tuning_split_fraction"] == 0.25  # trained on the trials' rows
    assert set(run_args["hpo"]) == HPO_BLOCK_KEYS and run_args["hpo"]["tuned_on"] == "tuning_split"
    assert run_args["hpo"]["n_trials"] == 2 and run_args["hpo"]["best_params"] == best
    assert "eval_accuracy" in json.loads((final / "all_results.json").read_text())
    assert (final / "predictions_validation.csv").is_file()


def test_tuning_split_is_fixed_and_disjoint_from_the_training_rows(glue_dir):
    data_dir = glue_dir("sst2", n_train=200)
    plain = load_glue_data(DataArguments(task="sst2", dataset_dir=str(data_dir)))
    held = load_glue_data(DataArguments(task="sst2", dataset_dir=str(data_dir), tuning_split_fraction=0.1))
    again = load_glue_data(DataArguments(task="sst2", dataset_dir=str(data_dir), tuning_split_fraction=0.1,
                                         max_train_samples=50))
    train, tuning = set(held["train"]["idx"]), set(held["tuning"]["idx"])
    assert len(tuning) == 20 and not train & tuning and train | tuning == set(range(200))
    assert held["tuning"]["idx"] == again["tuning"]["idx"]  # the same rows whatever the rest of the flags
    assert set(again["train"]["idx"]) <= train and len(again["train"]) == 50  # --max_train_samples cuts what is left
    assert held["train"]["idx"] == sorted(train)  # the training rows keep their order
    assert held["validation"]["sentence"] == plain["validation"]["sentence"]  # dev unchanged
    capped = load_glue_data(DataArguments(task="sst2", dataset_dir=str(data_dir), tuning_split_fraction=0.5,
                                          tuning_split_max=7))
    assert len(capped["tuning"]) == 7 and set(capped["tuning"]["idx"]) <= set(range(200))
    args = parse_args(["--task", "sst2", "--eval_split", "tuning"])
    with pytest.raises(ValueError, match="needs a tuning split"):
        check_args(args)


def test_report_step_means_the_same_point_of_training_for_every_batch_size():
    from search.pruning import report_step

    for max_steps in (2, 32, 63, 125):
        interval = math.ceil(0.25 * max_steps)
        steps = sorted({s for s in range(interval, max_steps + 1, interval)} | {max_steps})
        keys = [report_step({"step": s, "max_steps": max_steps}, 4) for s in steps]
        assert keys == sorted(set(keys)) and keys[-1] == 4  # distinct, increasing, the end is always 4


def test_fail_reason_is_the_runs_exception_not_the_launchers(tmp_path):
    from search.trial import last_error_line

    log = tmp_path / "run.log"
    log.write_text("Traceback (most recent call last):\n    raise ValueError(f\"...\")\n"
                   "ValueError: AdaLoRA's schedule does not fit: tinit 1435 + tfinal 0 >= 2 optimizer steps.\n"
                   "Traceback (most recent call last):\n"
                   "subprocess.CalledProcessError: Command '['python3', 'run_glue_peft.py']' returned non-zero exit status 1.\n")
    assert last_error_line(log).startswith("ValueError: AdaLoRA's schedule does not fit")
    log.write_text("some output\nlast words\n")
    assert last_error_line(log) == "last words"


def test_the_summary_shows_each_arms_pruning_rate_and_warns_when_they_differ(tmp_path, capsys):
    final = tmp_path / "final"
    for arm, pruned in (("adalora", 6), ("glora", 2)):  # other arms' final runs, as hpo.py writes them
        (final / "sst2" / f"{arm}_seed1").mkdir(parents=True)
        block = {"arm": arm, "n_trials": 8, "n_pruned": pruned}
        (final / "sst2" / f"{arm}_seed1" / "run_args.json").write_text(json.dumps({"hpo": block}))
    study_dir = tmp_path / "study"
    hpo.main(fake_hpo_args(write_space(tmp_path, LR_SPACE), study_dir, "--n_trials", "2", "--final_seeds",
                           "--final_root", str(final), "--pruner", "none"))
    out = capsys.readouterr().out
    assert "pruning rates: lora 0/2, adalora 6/8, glora 2/8 (no pruner in this study)" in out
    assert "WARNING: pruning rates differ by more than 25% (lora 0/2 (0%), adalora 6/8 (75%), glora 2/8 (25%))" in out

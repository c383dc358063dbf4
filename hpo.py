#!/usr/bin/env python
"""Hyper-parameter search as the proposal lays it out: Optuna over a method's space, then final runs with the best
values.

    python hpo.py configs/search/glora.yaml --task mnli                      # 25 trials, then seeds 1 2 3
    python hpo.py configs/search/cpu_lr_batch.yaml --method lora --task sst2 --n_trials 2 --max_steps 2
    python hpo.py configs/search/glora.yaml --task mnli --stage search --storage postgresql://...   # another worker

Flags hpo.py does not know are run_glue_peft.py flags, given to every trial and final run (after the space file's
`run` block, so they override it). Each trial is an ordinary run in STUDY_DIR/trials/trial_NNNN, scored on a tuning
split held out from the training data, which is all it evaluates (`--tune_on dev`: the proposal's choice); W&B is
off for trials. The study lives in a storage (default the journal file STUDY_DIR/study.journal, which the processes of
one machine share; a PostgreSQL URL for workers on several machines), so a killed search resumes and several workers
can share it. A study is one arm under one set of fixed run flags and search settings (sampler, its seed, pruner),
recorded in it: reopening it with others is refused, and a finished final run is reused only if it is this study's
with the current best values. docs/hpo.md has the protocol, the budget mapping and a real check.
"""

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import yaml

from harness.arguments import check_args, config_to_flags, parse_args
from harness.records import RESULTS_FILE, RUN_ARGS_FILE, Results, RunArgs
from search.identity import (
    ARM_FLAGS,
    arm_of,
    final_run_mismatch,
    fixed_run_flags,
    pin_search,
    pin_study,
    shown,
    study_identity,
)
from search.pruning import PRUNERS, PRUNING_RATE_MARGIN, PruningSettings, judged_late, pruning_rate_gap
from search.report import progress_line, summary, write_outputs
from search.sampler import check_sampler_seed, make_sampler, sampler_record
from search.space import load_search_config, sample
from search.study import (
    check_study_has_its_trials,
    counted_trials,
    hpo_record,
    open_study,
    run_worker,
    shown_storage,
    storage_location,
)
from search.trial import TrialFailed, run_trial

SET_BY_HPO = ("output_dir", "tuning_split_fraction", "tuning_split_max", "eval_split", "hpo_record")


def parse_hpo_args(argv):
    """(hpo.py's own flags, the run_glue_peft.py flags)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                allow_abbrev=False)
    p.add_argument("config", help="Search space file (configs/search/*.yaml).")
    p.add_argument("--run_config", help="A run config (configs/*.yaml) whose flags come first, e.g. a proposal preset.")
    p.add_argument("--n_trials", type=int, help="Trials in the study, all workers together (default: the file's). "
                                                "0: no search; the final runs use the config's values.")
    p.add_argument("--stage", choices=("all", "search", "final"), default="all",
                   help="all: search, then final runs; search: only trials (an extra worker); final: only final runs.")
    p.add_argument("--study_name", help="Default <task>_<arm> (the run's --arm, or its default label: method, "
                                        "'_params' under --budget_unit params, the rank pattern's hash).")
    p.add_argument("--study_dir", help="Trials, database, tables and figures (default outputs/hpo/<study_name>).")
    p.add_argument("--storage", help="Where the study lives: an Optuna journal file, a path ending in .journal "
                                     "(default STUDY_DIR/study.journal: the processes of one machine), or an RDB URL "
                                     "(postgresql://user:password@host/db for workers on several machines; mysql://...; "
                                     "sqlite:///PATH for a study.db made by an older hpo.py).")
    p.add_argument("--pruner", choices=PRUNERS, default="none",
                   help="Optuna's pruner, its resource counted in evaluations of the tuning split. median: stop a trial "
                        "below the median of the completed trials at the same point; successive_halving: keep the top "
                        "1/--pruner_reduction_factor at each rung; hyperband: several such brackets; none (default, the "
                        "best measured: docs/hpo.md): no pruning.")
    p.add_argument("--pruner_warmup_fraction", type=float, default=0.8,
                   help="No trial is judged before this fraction of its run, whatever its method, and none on an "
                        "evaluation taken at or before its method's last structural change (GLoRA's reallocation, "
                        "AdaLoRA's total steps - tfinal). Default 0.8: where AdaLoRA's default schedule (tfinal 20 %%) "
                        "ends, so that every method is judged at the same points.")
    p.add_argument("--pruner_startup_trials", type=int, default=3,
                   help="median: completed trials before it acts.")
    p.add_argument("--pruner_reduction_factor", type=int, default=3,
                   help="successive_halving, hyperband: a rung keeps the top 1/this of its trials.")
    p.add_argument("--pruning_rate_margin", type=float, default=PRUNING_RATE_MARGIN,
                   help="The summary warns when this study and the other arms' studies with final runs under "
                        "FINAL_ROOT/<task> pruned shares of their trials further apart than this.")
    p.add_argument("--evaluations_per_trial", type=int, default=1,
                   help="Evaluations of the tuning split during each trial, evenly spaced, the last at the end: the "
                        "pruner's resource. Default 1 (at the end; no pruner). A pruner needs enough of them to act "
                        "after the warm-up: ceil(E x warm-up fraction) < E, e.g. 8 with the default 0.8.")
    p.add_argument("--tune_on", choices=("tuning_split", "dev"), default="tuning_split",
                   help="Score trials on a split held out from the training data, or on the dev set (the proposal's "
                        "choice; then the final dev numbers are optimistic).")
    p.add_argument("--tuning_split_fraction", type=float, default=0.1, help="Training data held out for tuning.")
    p.add_argument("--tuning_split_max", type=int, default=2000, help="At most this many examples held out.")
    p.add_argument("--final_seeds", type=int, nargs="*", default=[1, 2, 3], help="One final run per seed.")
    p.add_argument("--final_root", default="outputs/hpo/final",
                   help="Final runs go to FINAL_ROOT/<task>/<arm>_seed<seed> (python compare_runs.py FINAL_ROOT).")
    p.add_argument("--rerun_stale_finals", action="store_true",
                   help="A finished final run made by another study, other run flags or other best parameters is moved "
                        "to FINAL_ROOT_stale/<task>/ (kept) and run again; without this flag hpo.py refuses it.")
    p.add_argument("--launcher", default=f"{sys.executable}",
                   help="How each run is started, e.g. 'accelerate launch --num_processes 4' (default: this python).")
    p.add_argument("--run_script", default="run_glue_peft.py", help="The training script (tests use a stand-in).")
    p.add_argument("--sampler_seed", type=int,
                   help="Seed of the TPE sampler (>= 0), recorded in the study: trial n draws from SeedSequence([seed, "
                        "n]), so one worker replays the same trials and the workers of one study, all with this seed, "
                        "draw differently. Left out on a resumed study: its recorded seed. Default on a new study: "
                        "random."),
    p.add_argument("--heartbeat_interval", type=int, default=30, help="Seconds between a running trial's heartbeats.")
    p.add_argument("--grace_period", type=int, default=90,
                   help="A trial without heartbeat this long (longer than --heartbeat_interval) is taken as "
                        "interrupted: FAILED, and rerun.")
    p.add_argument("--poll_seconds", type=float, default=1.0, help="How often a running trial's eval log is read.")
    return p.parse_known_args(argv)


def main(argv=None):
    hpo, run_flags = parse_hpo_args(sys.argv[1:] if argv is None else argv)
    search = load_search_config(hpo.config)
    preset = config_to_flags(yaml.safe_load(Path(hpo.run_config).read_text()) or {}) if hpo.run_config else []
    fixed = preset + config_to_flags(search.run) + run_flags  # later flags win
    check_flags(run_flags, search, hpo)
    # The run flags are checked here, before any trial starts; with hpo.py's data flags, as the final runs get them.
    run_args = parse_args(fixed + data_flags(hpo, during_search=False))
    check_args(run_args)
    task, method, arm = run_args.data.task, run_args.peft.method, arm_of(run_args.peft)
    n_trials = search.n_trials if hpo.n_trials is None else hpo.n_trials

    name = hpo.study_name or f"{task}_{arm}"
    study_dir = Path(hpo.study_dir or f"outputs/hpo/{name}")
    study_dir.mkdir(parents=True, exist_ok=True)
    storage = storage_location(hpo.storage, study_dir)
    study = open_study(name, storage, search.direction, pruning_settings(hpo), hpo.heartbeat_interval, hpo.grace_period)
    check_study_has_its_trials(study, study_dir)
    flags = fixed_run_flags(run_args, search.space)
    note = pin_study(study, flags, arm)
    seed, search_note = pin_search(study, sampler_record(), hpo.sampler_seed, pruning_settings(hpo).record())
    study.sampler = make_sampler(seed)
    tuned_on = hpo.tune_on
    what = arm if arm == method else f"{arm} ({method})"
    print(f"study {name} in {safe_url(storage)}: {n_trials} trials of {what} on {task}, tuned on {tuned_on}, "
          f"space {hpo.config}", flush=True)
    for line in (note, search_note):
        if line:
            print(line, flush=True)
    identity = {"study_name": name, **study_identity(study)}
    if hpo.stage != "search":  # a finished final run of another study is refused before this one searches
        check_final_runs(hpo, task, arm, identity)

    if hpo.stage in ("all", "search"):
        objective = make_objective(hpo, search, fixed, study_dir)
        run_worker(study, n_trials, objective, on_trial_end=lambda s, t: print(progress_line(s, t), flush=True),
                   catch=(TrialFailed,), poll_seconds=hpo.poll_seconds)
    if hpo.stage == "search":
        return
    pin_study(study, flags, arm)  # again: a worker that created the study at the same moment with other flags
    pin_search(study, sampler_record(), hpo.sampler_seed, pruning_settings(hpo).record())
    record = {**hpo_record(study, safe_url(storage), tuned_on), **study_identity(study)}
    record_path = study_dir / "hpo_record.json"
    record_path.write_text(json.dumps(record, indent=2) + "\n")
    table, notes = write_outputs(study, study_dir, record["best_params"], search.metric)
    notes = pruning_notes(hpo, study, record, task, arm) + notes
    if n_trials and not record["n_complete"]:  # a search that found nothing must not end in final runs
        print(summary(study, record, table, notes, [], search.metric, study_dir), flush=True)
        raise SystemExit(f"study {name}: no trial completed ({record['n_trials']} finished, {record['n_pruned']} "
                         f"pruned, the rest failed): no best parameters to make final runs with. The reasons are in "
                         f"{study_dir / 'trials.csv'}; --n_trials 0 makes final runs with the config's values.")
    check_final_runs(hpo, task, arm, record)
    final = final_runs(hpo, fixed, record, record_path, task, arm, search.metric)
    print(summary(study, record, table, notes, final, search.metric, study_dir), flush=True)


def check_flags(run_flags, search, hpo):
    given = {flag[2:].split("=")[0] for flag in run_flags if flag.startswith("--")}
    clash = sorted(given & set(search.space))
    if clash:
        raise SystemExit(f"{clash} are searched ({hpo.config}); do not also pass them as flags.")
    managed = sorted(given & set(SET_BY_HPO))
    if managed:
        raise SystemExit(f"{managed} are set by hpo.py (see --tune_on, --tuning_split_*, --study_dir, --final_root).")
    defining = sorted(set(search.space) & set(ARM_FLAGS))
    if defining:
        raise SystemExit(f"{hpo.config}: search_space.{defining[0]} names the arm, which a study holds fixed (one study "
                         "per arm): set it under `run:` or on the command line.")
    try:
        pruning = pruning_settings(hpo)
        check_sampler_seed(hpo.sampler_seed)
    except ValueError as error:
        raise SystemExit(str(error)) from None
    if pruning.pruner != "none" and not pruning.can_act:
        raise SystemExit(f"--pruner {pruning.pruner} could never act: with --evaluations_per_trial "
                         f"{pruning.evaluations_per_trial} and --pruner_warmup_fraction {pruning.warmup_fraction:g} its "
                         f"first decision would be at evaluation {pruning.first_evaluation} of "
                         f"{pruning.evaluations_per_trial}, the end of the run; give more evaluations per trial (e.g. 8)"
                         " or an earlier warm-up.")
    if hpo.n_trials is not None and hpo.n_trials < 0:
        raise SystemExit(f"--n_trials must be >= 0 (0: no search, final runs with the config's values), got {hpo.n_trials}.")


def pruning_settings(hpo) -> PruningSettings:
    return PruningSettings(pruner=hpo.pruner, evaluations_per_trial=hpo.evaluations_per_trial,
                           warmup_fraction=hpo.pruner_warmup_fraction, startup_trials=hpo.pruner_startup_trials,
                           reduction_factor=hpo.pruner_reduction_factor)


def pruning_notes(hpo, study, record: dict, task: str, arm: str) -> list:
    """The pruning rate of this study beside those of the other arms' studies (read from their final runs' hpo
    blocks under FINAL_ROOT/<task>), a warning when they differ by more than --pruning_rate_margin, and the number
    of trials the pruner judged late because their structure settled after the common warm-up."""
    settings = pruning_settings(hpo)
    rates = {arm: (record["n_pruned"], record["n_trials"])}
    for run_args in sorted(Path(hpo.final_root, task).glob(f"*/{RUN_ARGS_FILE}")):
        try:
            block = RunArgs.read(run_args.parent).hpo or {}
            rates.setdefault(str(block["arm"]), (int(block["n_pruned"]), int(block["n_trials"])))
        except (OSError, ValueError, KeyError, TypeError):
            continue  # not a final run of hpo.py (compare_runs.py reports such folders)
    how = (f"pruner {settings.pruner}, judged from {settings.first_evaluation}/{settings.evaluations_per_trial} of "
           "each run" if settings.pruner != "none" else "no pruner in this study")
    lines = ["pruning rates: " + ", ".join(f"{a} {p}/{n}" for a, (p, n) in rates.items()) + f" ({how})"]
    gap = pruning_rate_gap(rates, hpo.pruning_rate_margin)
    if gap:
        lines.append(f"WARNING: {gap}")
    late = judged_late(counted_trials(study), settings)
    if late:
        lines.append(f"{late} trial(s) changed structure at or after the common warm-up point: judged later than the "
                     "others")
    return lines


def data_flags(hpo, during_search: bool) -> list:
    """Trials and final runs train on the same rows: the tuning split is held out from both. Trials evaluate on it."""
    if hpo.tune_on == "dev":
        return ["--eval_split", "dev"]
    held_out = ["--tuning_split_fraction", str(hpo.tuning_split_fraction), "--tuning_split_max", str(hpo.tuning_split_max)]
    return held_out + ["--eval_split", "tuning" if during_search else "dev"]


def make_objective(hpo, search, fixed, study_dir):
    env = {**os.environ, "WANDB_MODE": "disabled"}

    def objective(trial):
        params = sample(trial, search.space)
        trial_dir = study_dir / "trials" / f"trial_{trial.number:04d}"
        command = run_command(hpo, fixed + config_to_flags(params) + data_flags(hpo, during_search=True) + [
            "--output_dir", str(trial_dir), "--overwrite_output_dir", "True", "--report_to", "none",
            "--eval_strategy", "steps", "--eval_steps", eval_steps(hpo.evaluations_per_trial), "--save_strategy", "no"])
        try:
            return run_trial(trial, command, trial_dir, search.metric, pruning_settings(hpo), hpo.poll_seconds, env)
        except TrialFailed as failure:
            trial.set_user_attr("fail_reason", str(failure))
            raise

    return objective


def eval_steps(evaluations: int) -> str:
    """--eval_steps for E evaluations: the ratio 1/E of the run (< 1); for one evaluation an interval no run reaches,
    the evaluation at the last step being made by every run (eval_log.EvalLog). (--eval_steps 1.0 would mean every
    step.)"""
    return str(1 / evaluations) if evaluations > 1 else str(2**31 - 1)


def run_command(hpo, flags) -> list:
    return shlex.split(hpo.launcher) + [hpo.run_script] + flags


def final_dir(hpo, task, arm, seed) -> Path:
    return Path(hpo.final_root, task, f"{arm}_seed{seed}")


def check_final_runs(hpo, task, arm, expected: dict):
    """Refuse (one line) finished final runs that are not this study's with `expected` (its identity, and once known
    its best parameters), unless --rerun_stale_finals says to move them aside and run them again."""
    stale = stale_final_runs(hpo, task, arm, expected)
    if not stale or hpo.rerun_stale_finals:
        return
    (first, differs), *others = stale.items()
    also = f" (and {', '.join(str(out) for out in others)})" if others else ""
    raise SystemExit(f"{first}{also} holds a finished final run that is not this study's: {shown(differs)}. Pass "
                     f"--rerun_stale_finals to run it again (the old run is moved to {stale_root(hpo)}, not deleted), "
                     "or give another --final_root.")


def stale_final_runs(hpo, task, arm, expected: dict) -> dict:
    """{folder: what differs} for each seed's finished final run that `expected` does not match."""
    stale = {}
    for seed in hpo.final_seeds:
        out = final_dir(hpo, task, arm, seed)
        if not (out / RESULTS_FILE).exists():
            continue  # nothing to reuse: an unfinished run is started again
        try:
            block = RunArgs.read(out).hpo
        except (OSError, ValueError) as error:
            stale[out] = [f"its {RUN_ARGS_FILE} is unreadable ({type(error).__name__})"]
            continue
        differs = final_run_mismatch(block, expected)
        if differs:
            stale[out] = differs
    return stale


def stale_root(hpo) -> Path:
    root = Path(hpo.final_root)
    return root.with_name(root.name + "_stale")


def move_aside(hpo, out: Path, task) -> Path:
    """Move a stale final run (and its log) out of FINAL_ROOT, where compare_runs.py would pool it; nothing is
    deleted."""
    target = stale_root(hpo) / task / f"{out.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    n = 1
    while target.exists():
        target, n = target.with_name(f"{out.name}-{time.strftime('%Y%m%d-%H%M%S')}-{n}"), n + 1
    target.parent.mkdir(parents=True, exist_ok=True)
    out.rename(target)
    log = Path(f"{out}.log")
    if log.exists():
        log.rename(f"{target}.log")
    return target


def final_runs(hpo, fixed, record, record_path, task, arm, metric) -> list:
    """One run per seed with the best values, W&B as the run flags say. A finished run is kept when it is this
    study's with these values (check_final_runs refused any other, or --rerun_stale_finals moves it aside here)."""
    stale = stale_final_runs(hpo, task, arm, record)
    results = []
    for seed in hpo.final_seeds:
        out = final_dir(hpo, task, arm, seed)
        finished = out / RESULTS_FILE
        if out in stale:
            aside = move_aside(hpo, out, task)
            print(f"final run, seed {seed}: {out} was not this study's ({shown(stale[out])}); moved to {aside}, "
                  "running it again", flush=True)
        if finished.exists():
            print(f"final run, seed {seed}: {out} is this study's, with these parameters: kept", flush=True)
        else:
            out.mkdir(parents=True, exist_ok=True)
            command = run_command(hpo, fixed + config_to_flags(record["best_params"]) + data_flags(hpo, during_search=False) + [
                "--seed", str(seed), "--output_dir", str(out), "--overwrite_output_dir", "True",
                "--hpo_record", str(record_path)])
            print(f"final run, seed {seed}: {out} (log {out}.log)", flush=True)
            with open(f"{out}.log", "w") as log:
                code = subprocess.call(command, stdout=log, stderr=subprocess.STDOUT)
            if code != 0 or not finished.exists():
                results.append((seed, f"FAILED (exit {code}; see {out}.log)"))
                continue
        values = Results.read(out).metrics
        shown_values = {k: v for k, v in values.items() if k.startswith("eval_") and
                        k.split("eval_")[1].split("_mm")[0] in (metric, "accuracy", "combined_score")}
        results.append((seed, ", ".join(f"{k} {v:.4f}" for k, v in shown_values.items()) + f"  ({out})"))
    return results


def safe_url(url: str) -> str:
    """The storage without its password (an RDB URL's), for logs and run_args.json."""
    return shown_storage(url)


if __name__ == "__main__":
    main()

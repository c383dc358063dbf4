"""One trial: a run_glue_peft.py process in its own directory, watched while it trains.

Each evaluation the run appends to eval_log.jsonl is reported to Optuna at a step that means the same for every
trial whatever its batch size: k = floor(evaluations_per_trial x step / max_steps), i.e. "k quarters of training
done" with 4 evaluations. When the pruner says stop, the run's whole process group is terminated (so that a
multi-process `accelerate launch` stops too) and the trial ends PRUNED. A run that exits with an error, or logs no
evaluation, ends FAILED with its reason; the study goes on.
"""

import ctypes
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna

from harness.records import read_eval_log
from search.pruning import PruningSettings, may_prune, report_step
from search.study import TrialHeartbeat


class TrialFailed(Exception):
    """The run did not produce a result; the message says why."""


def run_trial(trial, command: list, trial_dir: Path, metric: str, pruning: PruningSettings, poll_seconds: float,
              env: dict) -> float:
    """The run's last evaluation of `metric`; intermediate ones go to the pruner. Writes trial_dir/run.log."""
    trial_dir.mkdir(parents=True, exist_ok=True)
    trial.set_user_attr("trial_dir", str(trial_dir))
    with open(trial_dir / "run.log", "w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
                                   preexec_fn=die_with_parent)
    reported = 0
    beat = TrialHeartbeat(trial)  # a journal study's heartbeat: a trial whose worker died is rerun (search/study.py)
    try:
        while True:
            beat()
            exited = process.poll() is not None  # read the log after the exit check: nothing is missed
            records = read_eval_log(trial_dir)
            for record in records[reported:]:
                record_progress(trial, record)
                trial.report(value_of(record, metric), report_step(record, pruning.evaluations_per_trial))
                if may_prune(record, pruning) and trial.should_prune():
                    stop(process)
                    raise optuna.TrialPruned(f"pruned at step {record['step']} of {record['max_steps']}")
            reported = len(records)
            if exited:
                break
            time.sleep(poll_seconds)
    finally:
        stop(process)
    if process.returncode != 0:
        raise TrialFailed(f"run exited with code {process.returncode}: {last_error_line(trial_dir / 'run.log')}")
    if not records:
        raise TrialFailed("the run logged no evaluation (is --eval_strategy 'no' among the run flags?)")
    return value_of(records[-1], metric)


def value_of(record: dict, metric: str) -> float:
    if metric not in record["metrics"]:
        raise TrialFailed(f"metric {metric!r} not among the evaluation's {sorted(record['metrics'])}")
    return float(record["metrics"][metric])


def record_progress(trial, record: dict):
    """What trials.csv reports as compute: steps trained (at the last evaluation) of the run's max_steps."""
    trial.set_user_attr("steps_trained", record["step"])
    trial.set_user_attr("max_steps", record["max_steps"])
    trial.set_user_attr("examples_per_step", record["examples_per_step"])
    trial.set_user_attr("structure_final_step", record.get("structure_final_step", 0))


def stop(process: subprocess.Popen, grace_seconds: float = 10):
    """Terminate the run's process group (SIGTERM, then SIGKILL after grace_seconds); no-op once it has exited."""
    if process.poll() is not None:
        return
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(grace_seconds)
            return
        except subprocess.TimeoutExpired:
            continue


def die_with_parent():
    """Linux: the run gets SIGTERM if hpo.py dies (even by SIGKILL), so a killed study leaves no orphan training."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG


EXCEPTION_LINE = re.compile(r"^[\w.]*(Error|Exception|Interrupt)\b.*:")
LAUNCHER_ERROR = "subprocess.CalledProcessError"  # accelerate launch's own report of a failed worker


def last_error_line(log_path: Path) -> str:
    """The run's exception (the last one that is not the launcher's), else its last line."""
    lines = [line.strip() for line in log_path.read_text(errors="replace").splitlines() if line.strip()]
    errors = [line for line in lines if EXCEPTION_LINE.match(line) and not line.startswith(LAUNCHER_ERROR)]
    return (errors or lines or ["(empty log)"])[-1][:300]

"""The Optuna study in a database, and the loop one worker runs on it.

Every trial is written to the storage as it starts and as it ends, so the study outlives any worker: a killed search
resumes from the database, and several workers (processes, machines) can share one study. A worker that dies leaves
its trial RUNNING; its heartbeat stops, and after the grace period the next worker marks it FAILED and enqueues the
same parameters again (RetryHeartbeatStaleTrialCallback), so the interrupted trial is rerun, not lost and not counted.
"""

import time
import warnings

import optuna
import sqlalchemy
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback, fail_stale_trials
from optuna.trial import TrialState

from search.pruning import PruningSettings, make_pruner

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


def open_study(name: str, storage_url: str, direction: str, pruning: PruningSettings, heartbeat_interval: int,
               grace_period: int) -> optuna.Study:
    """Create the study, or load it if it exists (same name, same storage). Its sampler is set by the caller once the
    study's recorded search settings are checked (search/identity.py pin_search, search/sampler.py make_sampler)."""
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # hpo.py prints its own line per trial, reasons included
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    engine_kwargs = {"connect_args": {"timeout": 60}} if storage_url.startswith("sqlite") else {}  # wait on a busy file
    for attempt in range(5):
        try:  # workers started together race to create the tables and the study; the losers find them made
            storage = RDBStorage(storage_url, engine_kwargs=engine_kwargs, heartbeat_interval=heartbeat_interval,
                                 grace_period=grace_period, heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback())
            study = optuna.create_study(study_name=name, storage=storage, direction=direction, load_if_exists=True,
                                        pruner=make_pruner(pruning))  # sampler: TPE
            break
        except sqlalchemy.exc.SQLAlchemyError:
            if attempt == 4:
                raise
            time.sleep(1 + attempt)
    return study


def retried_numbers(trials) -> set:
    """Trials that were interrupted and whose parameters were enqueued again."""
    return {RetryHeartbeatStaleTrialCallback.retried_trial_number(t) for t in trials} - {None}


def counted_trials(study) -> list:
    """Finished trials that count against --n_trials: complete, pruned, failed — not the interrupted ones rerun."""
    trials = study.get_trials(deepcopy=False)
    retried = retried_numbers(trials)
    return [t for t in trials if t.state in FINISHED and t.number not in retried]


def run_worker(study, n_trials: int, objective, on_trial_end, catch: tuple, poll_seconds: float):
    """Run trials one at a time until the study holds n_trials counted trials, then wait for the other workers'
    running trials to end (a stale one ends after the grace period, and its retry is taken here)."""
    while True:
        fail_stale_trials(study)
        trials = study.get_trials(deepcopy=False)
        running = [t for t in trials if t.state == TrialState.RUNNING]
        waiting = [t for t in trials if t.state == TrialState.WAITING]
        if waiting or len(counted_trials(study)) + len(running) < n_trials:
            study.optimize(objective, n_trials=1, catch=catch, callbacks=[on_trial_end])
        elif running:
            time.sleep(poll_seconds)
        else:
            return


def hpo_record(study, storage_display: str, tuned_on: str) -> dict:
    """The block a final run carries in run_args.json as "hpo" (compare_runs.py reads it)."""
    trials = counted_trials(study)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    return {
        "study_name": study.study_name,
        "storage": storage_display,
        "n_trials": len(trials),
        "n_complete": len(complete),
        "n_pruned": sum(t.state == TrialState.PRUNED for t in trials),
        "best_params": study.best_trial.params if complete else {},
        "tuned_on": tuned_on,
        "search_settings": study.user_attrs.get("search_settings"),  # sampler, its seed, pruner (search/identity.py)
    }


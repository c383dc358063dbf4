"""The Optuna study in its storage, and the loop one worker runs on it.

Every trial is written to the storage as it starts and as it ends, so the study outlives any worker: a killed search
resumes from the storage, and several workers can share one study. The storage is Optuna's JournalStorage, a file
(STUDY_DIR/study.journal by default) that several processes on one machine share; or an RDB URL (PostgreSQL, MySQL)
for workers on several machines, or SQLite (older studies).

A worker that dies leaves its trial RUNNING. Once its heartbeat has been silent for the grace period, the next worker
marks it FAILED and enqueues the same parameters again (RetryHeartbeatStaleTrialCallback, whose system attribute
"failed_trial" marks the retry), so the interrupted trial is rerun, not lost and not counted. The two storages beat
differently:
- RDB: Optuna's own heartbeat (a thread records it during the whole trial; fail_stale_trials). Both the beat and the
  check read the database server's clock, so the clocks of the worker machines need not agree.
- Journal: Optuna 5 has no heartbeat for JournalStorage, so the project beats itself: the worker's polling loop
  (search/trial.py) writes the trial's user attribute `heartbeat` (time.time()) every heartbeat_interval seconds,
  and each worker, before it takes a trial and while it waits, fails the RUNNING trials silent for longer than the
  grace period and enqueues their retry. Beat and check read the clock of the one machine that holds the file.
  The FAIL is a state update that Optuna refuses (UpdateFinishedTrialError) on a trial that is already finished, and
  the journal orders the updates, so of two workers that fail the same trial at once only the first enqueues it.

A worker checks that the study needs a trial and then asks for one; between the two, another worker may take the
last one (pop the waiting retry, or make the last new trial), and the ask then makes a new trial past --n_trials.
Such a trial is never run: the storage numbers trials in one order for every worker, and a trial that is not a retry
is the study's only while fewer than --n_trials such trials come before it (a retry takes its original's place), so
the worker marks it `surplus` (FAIL, never trained, not counted) and the study runs exactly --n_trials trials.
"""

import time
import warnings
from pathlib import Path

import optuna
import sqlalchemy
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback, fail_stale_trials
from optuna.storages.journal import JournalFileOpenLock, JournalStorage
from optuna.trial import TrialState
from sqlalchemy.engine import make_url

from search.journal import CheckedJournalFileBackend
from search.pruning import PruningSettings, make_pruner

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
JOURNAL_SUFFIX = ".journal"
HEARTBEAT = "heartbeat"  # a journal trial's user attribute: time.time() of its worker's last beat
SURPLUS = "surplus"  # a trial's system attribute: made past --n_trials by a worker that lost a race; never run


def storage_location(given: str | None, study_dir: Path) -> str:
    """The study's storage: --storage as given (an RDB URL, or a journal file ending in .journal), by default
    STUDY_DIR/study.journal. One line, and no study opened, for a value of neither kind, a journal file whose folder is
    missing, and a default STUDY_DIR that holds the SQLite study.db of an older hpo.py (whose default it was): a new
    journal beside it would silently start the search again."""
    if given is None:
        old = study_dir / "study.db"
        if old.exists():
            raise SystemExit(f"{old} holds a study made by an older hpo.py (SQLite, its default storage): pass "
                             f"--storage sqlite:///{old} to resume it (the default is now {study_dir / 'study.journal'}; "
                             "move study.db away to start a new study there).")
        return check_beside_trials(str(study_dir / f"study{JOURNAL_SUFFIX}"), study_dir)
    if is_journal(given):
        if not given.endswith(JOURNAL_SUFFIX):
            raise SystemExit(f"--storage takes an RDB URL (sqlite:///..., postgresql://..., mysql://...) or a journal "
                             f"file whose name ends in {JOURNAL_SUFFIX}, got {given!r}.")
        if not Path(given).parent.is_dir():
            raise SystemExit(f"--storage {given}: the folder {Path(given).parent} does not exist.")
        return check_beside_trials(given, study_dir)
    try:
        url = make_url(given)
    except (sqlalchemy.exc.ArgumentError, ValueError):  # the value may hold a password: not shown
        raise SystemExit("--storage: not an RDB URL of the form dialect://user:password@host:port/database "
                         "(sqlite:///..., postgresql://..., mysql://...).") from None
    try:
        url.get_dialect()
    except sqlalchemy.exc.NoSuchModuleError:
        raise SystemExit(f"--storage {shown_storage(given)}: {url.drivername!r} is no database SQLAlchemy knows "
                         "(sqlite, postgresql, mysql, ...).") from None
    return given


def trial_folders(study_dir: Path) -> list:
    """The trial folders a study's worker writes (hpo.py: STUDY_DIR/trials/trial_NNNN)."""
    return sorted(path for path in Path(study_dir, "trials").glob("trial_*") if path.is_dir())


def check_beside_trials(journal: str, study_dir: Path) -> str:
    """A journal file that is missing or empty while STUDY_DIR/trials holds trial folders is refused (one line): the
    study those trials belong to is not in it, and a new study would rerun its trial 0 into trial_0000 over the old
    one."""
    folders = trial_folders(study_dir)
    path = Path(journal)
    if folders and (not path.exists() or path.stat().st_size == 0):
        state = "empty" if path.exists() else "missing"
        raise SystemExit(f"{journal} is {state}, but {study_dir / 'trials'} holds {len(folders)} trial folder(s) "
                         f"({folders[0].name}...) of a study it no longer records: restore the journal (from a backup "
                         f"or copy), or move {study_dir / 'trials'} away to start a new study there.")
    return journal


def check_study_has_its_trials(study, study_dir: Path):
    """A study without a single trial beside trial folders in STUDY_DIR/trials (another --study_name, a new RDB
    study, a journal replaced since) is refused before its trial 0 replaces trial_0000."""
    folders = trial_folders(study_dir)
    if folders and not study.get_trials(deepcopy=False):
        raise SystemExit(f"study {study.study_name} holds no trial, but {study_dir / 'trials'} holds {len(folders)} "
                         f"trial folder(s) ({folders[0].name}...) of another study: give that study's --study_name and "
                         f"--storage to resume it, or another --study_dir (or move the trials away) for a new study.")


def is_journal(location: str) -> bool:
    """A location without a URL scheme is a journal file."""
    return "://" not in location


def shown_storage(location: str) -> str:
    """The storage as logs and run_args.json show it: a journal file's path, an RDB URL without its password."""
    return location if is_journal(location) else make_url(location).render_as_string(hide_password=True)


class HeartbeatJournalStorage(JournalStorage):
    """A JournalStorage on a file, carrying the settings of the project's heartbeat (as RDBStorage carries Optuna's)."""

    def __init__(self, path: str, heartbeat_interval: float, grace_period: float):
        # JournalFileOpenLock: the lock is a file created with O_CREAT | O_EXCL, atomic on every local file system and
        # on NFSv3 or later, with no need for symbolic links (which Optuna's tutorial notes Windows may refuse;
        # JournalFileSymlinkLock, Optuna's default, is only needed on NFS older than v3, which is no local disk).
        # Both break a lock left by a worker killed while it held it after their grace period (30 s).
        # CheckedJournalFileBackend (search/journal.py): Optuna's, but it never writes after a record it cannot parse.
        super().__init__(CheckedJournalFileBackend(path, lock_obj=JournalFileOpenLock(path)))
        self.heartbeat_interval = heartbeat_interval
        self.grace_period = grace_period


def make_storage(location: str, heartbeat_interval: float = 60, grace_period: float = 120) -> optuna.storages.BaseStorage:
    """The Optuna storage at `location` (see storage_location), with the heartbeat that fits it."""
    if is_journal(location):
        return HeartbeatJournalStorage(location, heartbeat_interval, grace_period)
    engine_kwargs = {"connect_args": {"timeout": 60}} if location.startswith("sqlite") else {}  # wait on a busy file
    return RDBStorage(location, engine_kwargs=engine_kwargs, heartbeat_interval=heartbeat_interval,
                      grace_period=grace_period, heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback())


def open_study(name: str, location: str, direction: str, pruning: PruningSettings, heartbeat_interval: int,
               grace_period: int) -> optuna.Study:
    """Create the study, or load it if it exists (same name, same storage at `location`, see storage_location). Its
    sampler is set by the caller once the study's recorded search settings are checked (search/identity.py
    pin_search, search/sampler.py make_sampler)."""
    if not 0 < heartbeat_interval < grace_period:
        raise SystemExit(f"--grace_period ({grace_period} s) must be longer than --heartbeat_interval "
                         f"({heartbeat_interval} s, > 0): a running trial would be taken as interrupted between beats.")
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # hpo.py prints its own line per trial, reasons included
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    for attempt in range(5):
        try:  # workers started together race to create the tables and the study; the losers find them made
            storage = make_storage(location, heartbeat_interval, grace_period)
            study = optuna.create_study(study_name=name, storage=storage, direction=direction, load_if_exists=True,
                                        pruner=make_pruner(pruning))  # sampler: TPE
            break
        except ImportError as error:  # the database's driver
            raise SystemExit(f"--storage {shown_storage(location)}: its driver is missing ({error}); pip install -r "
                             "requirements.txt installs PostgreSQL's (psycopg2-binary).") from None
        except sqlalchemy.exc.SQLAlchemyError as error:
            if attempt == 4:
                reason = str(error).strip().splitlines()[0]
                raise SystemExit(f"--storage {shown_storage(location)}: cannot open the study there "
                                 f"({type(error).__name__}: {reason}).") from None
            time.sleep(1 + attempt)
    return study


def retried_numbers(trials) -> set:
    """Trials that were interrupted and whose parameters were enqueued again: each retry's history, the original
    and the retries before it that were interrupted in their turn."""
    return {n for t in trials for n in RetryHeartbeatStaleTrialCallback.retry_history(t)}


def counted_trials(study) -> list:
    """Finished trials that count against --n_trials: complete, pruned, failed — not the interrupted ones rerun, nor
    the surplus ones never run."""
    trials = study.get_trials(deepcopy=False)
    retried = retried_numbers(trials)
    return [t for t in trials if t.state in FINISHED and t.number not in retried and not surplus(t)]


def surplus(trial) -> bool:
    """A trial made past --n_trials by a worker that another worker beat to the study's last trial (never run)."""
    return bool(trial.system_attrs.get(SURPLUS))


def beyond_n_trials(study, trial_id: int, n_trials: int) -> bool:
    """Whether a trial just taken is past the study's --n_trials: not a retry, with n_trials trials that are not
    retries (nor surplus) numbered before it. Every worker sees the same numbers, so they agree without a lock."""
    trials = study.get_trials(deepcopy=False)
    (trial,) = [t for t in trials if t._trial_id == trial_id]
    retry = RetryHeartbeatStaleTrialCallback.retried_trial_number
    earlier = [t for t in trials if t.number < trial.number and retry(t) is None and not surplus(t)]
    return retry(trial) is None and len(earlier) >= n_trials


class SurplusTrial(Exception):
    """The trial a worker was given is past --n_trials (beyond_n_trials): it ends FAILED, marked surplus, unrun."""


class TrialHeartbeat:
    """The project's heartbeat for one trial of a journal study, called by the trial's polling loop (search/trial.py):
    sets the trial's user attribute `heartbeat` to time.time() at the first call and then at most every
    heartbeat_interval seconds. A no-op on an RDB, where Optuna's own thread beats."""

    def __init__(self, trial):
        storage = trial.storage
        self.trial = trial
        self.interval = storage.heartbeat_interval if isinstance(storage, HeartbeatJournalStorage) else None
        self.last = None

    def __call__(self):
        if self.interval is None or (self.last is not None and time.monotonic() - self.last < self.interval):
            return
        self.trial.set_user_attr(HEARTBEAT, time.time())
        self.last = time.monotonic()


def fail_interrupted_trials(study):
    """Mark FAILED the RUNNING trials whose heartbeat has been silent for the grace period, and enqueue each one's
    parameters again (RetryHeartbeatStaleTrialCallback): Optuna's fail_stale_trials on an RDB, the project's own
    heartbeat on a journal."""
    storage = study._storage  # as Optuna's fail_stale_trials reads it
    if not isinstance(storage, HeartbeatJournalStorage):
        fail_stale_trials(study)
        return
    for trial in silent_trials(study, storage.grace_period):
        take_over(study, trial)


def silent_trials(study, grace_period: float) -> list:
    """The RUNNING trials of a journal study whose last beat is older than grace_period seconds; before its first beat
    a trial's start counts as one (a retry also inherits its original's old `heartbeat` attribute)."""
    now = time.time()
    return [t for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
            if now - max(t.user_attrs.get(HEARTBEAT, 0.0), t.datetime_start.timestamp()) > grace_period]


def take_over(study, trial) -> bool:
    """FAIL a silent trial and enqueue its retry, as Optuna's fail_stale_trials does. False, and nothing enqueued, when
    the trial was finished before this update in the journal's order: by its own worker, or by another worker's
    take_over (Optuna refuses a state update on a finished trial with UpdateFinishedTrialError)."""
    try:
        study._storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL)
    except UpdateFinishedTrialError:
        return False
    RetryHeartbeatStaleTrialCallback()(study, study._storage.get_trial(trial._trial_id))
    return True


def run_worker(study, n_trials: int, objective, on_trial_end, catch: tuple, poll_seconds: float):
    """Run trials one at a time until the study holds n_trials counted trials, then wait for the other workers'
    running trials to end (an interrupted one ends after the grace period, and its retry is taken here). A trial
    another worker's race made surplus (see the module docstring) is given up before `objective` runs."""

    def within_n_trials(trial):
        if beyond_n_trials(study, trial._trial_id, n_trials):
            study._storage.set_trial_system_attr(trial._trial_id, SURPLUS, True)
            trial.set_user_attr("fail_reason", f"not run: other workers took the study's {n_trials} trials first")
            raise SurplusTrial()
        return objective(trial)

    while True:
        fail_interrupted_trials(study)
        trials = study.get_trials(deepcopy=False)
        running = [t for t in trials if t.state == TrialState.RUNNING]
        waiting = [t for t in trials if t.state == TrialState.WAITING]
        if waiting or len(counted_trials(study)) + len(running) < n_trials:
            study.optimize(within_n_trials, n_trials=1, catch=catch + (SurplusTrial,), callbacks=[on_trial_end])
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


"""hpo.py's storages: the journal file (the default), RDB URLs (a real PostgreSQL server, started by the test), the
refusal of an older hpo.py's study.db, and a trial whose worker was killed, rerun once, not lost and not counted twice
(the project's heartbeat on the journal, Optuna's on the RDB).

The workers are hpo.py processes running tests/fake_run.py in place of run_glue_peft.py, as in tests/test_hpo.py."""

import os
import signal
import threading
import time
from pathlib import Path

import optuna
import pytest
import sqlalchemy
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState
from postgres import PASSWORD, postgres_server
from test_hpo import LR_SPACE, fake_hpo_args, load_study, start_worker, write_space

import hpo
from search.report import trials_table
from search.study import (
    TrialHeartbeat,
    counted_trials,
    fail_interrupted_trials,
    make_storage,
    retried_numbers,
    run_worker,
    silent_trials,
    surplus,
    take_over,
)

HEARTBEAT = ("--heartbeat_interval", "1", "--grace_period", "4")
WAIT = 600  # seconds: a bound for a loaded machine (unloaded, a test takes well under a minute); past it, a failure


@pytest.fixture(scope="module")
def postgres_url():
    with postgres_server() as url:
        yield url


@pytest.fixture(params=["journal", "postgresql"])
def storage_flags(request) -> list:
    """hpo.py's flags for each storage: none (the default journal), or --storage with the PostgreSQL URL."""
    return [] if request.param == "journal" else ["--storage", request.getfixturevalue("postgres_url")]


def open_when_made(location: str, deadline: float) -> optuna.Study:
    while time.time() < deadline:
        if "://" in location or Path(location).exists():  # the test must not create the journal file itself
            try:
                return optuna.load_study(study_name="sst2_lora", storage=make_storage(location))
            except (KeyError, sqlalchemy.exc.SQLAlchemyError):  # no worker has made the study (or its tables) yet
                pass
        time.sleep(0.2)
    pytest.fail("no worker created the study")


def run_of(trial) -> tuple:
    """(pid, parent pid) of the trial's fake run, once it has started; else None."""
    path = Path(trial.user_attrs.get("trial_dir", "/nonexistent")) / "fake_run.pid"
    text = path.read_text().split() if path.exists() else []
    return tuple(int(n) for n in text) if len(text) == 2 else None


def alive(pid: int) -> bool:
    """The process exists and is not a zombie (a reparented child may wait, dead, for a parent that never reaps)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (FileNotFoundError, ProcessLookupError):
        return False


def test_a_killed_workers_trial_is_rerun_once_by_the_other_workers(storage_flags, tmp_path, monkeypatch):
    """Two workers; one is SIGKILLed (it alone, not its trial's run) in the middle of a trial while both trials of the
    study are taken, so that no worker starts a third; a worker is started again. The study ends with its 2 trials
    counted, the interrupted one rerun once."""
    monkeypatch.setenv("FAKE_STEP_SECONDS", "1")  # a trial takes 8 s: the two workers start theirs side by side
    study_dir, space = tmp_path / "study", write_space(tmp_path, LR_SPACE)
    flags = ("--n_trials", "2", "--stage", "search", "--pruner", "none", "--evaluations_per_trial", "4", *HEARTBEAT,
             *storage_flags)  # 4 evaluations: the first tells that a trial is under way
    location = storage_flags[1] if storage_flags else str(study_dir / "study.journal")
    workers = {w.pid: w for w in (start_worker(space, study_dir, *flags) for _ in range(2))}
    try:
        deadline = time.time() + WAIT
        study = open_when_made(location, deadline)
        while time.time() < deadline:  # a worker's trial that has evaluated once, while both trials are taken
            trials = study.get_trials(deepcopy=False)
            running = [t for t in trials if t.state == TrialState.RUNNING]
            mid = [t for t in running if run_of(t) and run_of(t)[1] in workers and
                   (Path(t.user_attrs["trial_dir"]) / "eval_log.jsonl").exists()]
            if mid and len(counted_trials(study)) + len(running) == 2:
                break
            if any(w.poll() is not None for w in workers.values()):
                pytest.fail(f"a worker ended early: {[w.communicate()[0] for w in workers.values() if w.poll() is not None]}")
            time.sleep(0.1)
        else:
            pytest.fail("no worker was in the middle of a trial while both trials were taken")
        interrupted = mid[0]
        run_pid, victim_pid = run_of(interrupted)
        os.kill(victim_pid, signal.SIGKILL)  # the worker alone: its run must die with it
        workers.pop(victim_pid).wait()
        (survivor,) = workers.values()
        gone_by = time.time() + 30
        while alive(run_pid) and time.time() < gone_by:
            time.sleep(0.1)
        assert not alive(run_pid), "the killed worker's training process outlived it"

        resumed = start_worker(space, study_dir, *flags)  # the resumed worker, beside the surviving one
        workers[resumed.pid] = resumed
        outputs = [worker.communicate(timeout=WAIT)[0] for worker in (resumed, survivor)]
    finally:
        for worker in workers.values():
            if worker.poll() is None:
                os.killpg(worker.pid, signal.SIGKILL)
    assert resumed.returncode == 0 and survivor.returncode == 0, outputs

    trials = study.get_trials()
    unrun = [t for t in trials if surplus(t)]  # asked for by the two workers at once for the retry: given up
    assert all(t.state == TrialState.FAIL and not t.params and "trial_dir" not in t.user_attrs for t in unrun)
    trials = [t for t in trials if not surplus(t)]
    by_number = {t.number: t for t in trials}
    original = by_number[interrupted.number]
    retries = [t for t in trials if t.system_attrs.get("failed_trial") == original.number]
    assert original.state == TrialState.FAIL and retried_numbers(trials) == {original.number}
    assert len(retries) == 1 and retries[0].state == TrialState.COMPLETE  # enqueued (WAITING) once, then run
    assert retries[0].params == original.params and retries[0].system_attrs["retry_history"] == [original.number]
    counted = counted_trials(study)
    assert len(counted) == 2 and original.number not in {t.number for t in counted}  # none lost, none twice
    assert len(trials) == 3 and all(t.state in (TrialState.COMPLETE, TrialState.FAIL) for t in trials)
    interrupted_dir = Path(original.user_attrs["trial_dir"])
    assert not (interrupted_dir / "all_results.json").exists()  # the killed run never finished
    assert all("study sst2_lora in " in output and PASSWORD not in output for output in outputs)
    if storage_flags:
        assert all("study sst2_lora in postgresql+psycopg2://postgres:***@127.0.0.1" in output for output in outputs)


@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study.optimize")
@pytest.mark.parametrize("storage", ["journal", "sqlite"])
@pytest.mark.parametrize("taken_by", ["the retry", "a new trial"])
def test_a_worker_that_loses_the_last_trial_between_its_check_and_its_ask_runs_no_extra_trial(tmp_path, storage,
                                                                                                taken_by):
    """A study of 2 trials, one done. Worker B sees a trial to take (the retry of an interrupted trial waiting, or one
    trial short) and asks for it; between its check and its ask, worker A takes it (the interleaving of two workers
    polling at once, forced here). B's ask then makes a new trial past --n_trials: it is never run, not counted, and
    the study ends with its 2 trials."""
    location = str(tmp_path / "study.journal") if storage == "journal" else f"sqlite:///{tmp_path / 'study.db'}"
    a = optuna.create_study(study_name="s", storage=make_storage(location, 1, 2), direction="maximize")
    b = optuna.load_study(study_name="s", storage=make_storage(location, 1, 2))  # another process's handle
    lr = {"learning_rate": FloatDistribution(1e-4, 1e-2, log=True)}
    a.tell(a.ask(lr), 0.5)
    if taken_by == "the retry":
        take_over(a, a.ask(lr))  # its worker died: FAIL, and its retry WAITING
    pop = b._pop_waiting_trial_id

    def a_takes_it_first():  # what A does between B's check (run_worker) and B's ask (study.optimize)
        b._pop_waiting_trial_id = pop
        a.tell(a.ask(lr), 0.7)
        return pop()

    b._pop_waiting_trial_id = a_takes_it_first
    ran = []
    run_worker(b, 2, lambda trial: ran.append(trial.number) or 0.9, on_trial_end=lambda study, trial: None, catch=(),
               poll_seconds=0.1)
    trials = b.get_trials()
    (extra,) = [t for t in trials if t.number == len(trials) - 1]
    assert ran == [] and extra.state == TrialState.FAIL and extra.params == {} and surplus(extra)
    assert [t.value for t in counted_trials(b)] == [0.5, 0.7]
    assert trials_table(b)["state"].iloc[-1] == "SURPLUS (not run)"


def test_of_two_workers_taking_over_one_silent_trial_only_the_first_enqueues_it(tmp_path):
    """Both workers see the trial silent before either acts (the race of two checks at once): the second FAIL is a
    state update on a finished trial, which the journal refuses, so the parameters are enqueued once."""
    path = str(tmp_path / "study.journal")
    first = optuna.create_study(study_name="s", storage=make_storage(path, 1, 2), direction="maximize")
    second = optuna.load_study(study_name="s", storage=make_storage(path, 1, 2))  # another process's handle
    lr = {"learning_rate": FloatDistribution(1e-4, 1e-2, log=True)}
    silent, beating = first.ask(lr), first.ask(lr)
    time.sleep(2.5)
    TrialHeartbeat(beating)()  # it beats (after its start): not silent
    seen = [silent_trials(study, grace_period=2) for study in (first, second)]
    assert [[t.number for t in s] for s in seen] == [[silent.number], [silent.number]]
    assert [take_over(first, seen[0][0]), take_over(second, seen[1][0])] == [True, False]
    trials = second.get_trials()
    (retry,) = [t for t in trials if t.state == TrialState.WAITING]
    assert trials[silent.number].state == TrialState.FAIL and retry.system_attrs["failed_trial"] == silent.number
    assert retry.params == trials[silent.number].params and len(trials) == 3
    rerun = second.ask(lr)  # a worker takes the retry: it inherited the old beat, but its start is new
    assert rerun.number == retry.number and rerun.number not in [t.number for t in silent_trials(second, 2)]


@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study.optimize")
def test_a_retry_interrupted_in_its_turn_is_not_counted_beside_its_own_retry(tmp_path):
    """Trial 0 is interrupted, its retry 1 too; retry 2 completes. 0 and 1 are both interrupted and rerun: the study
    counts one trial, 2."""
    study = optuna.create_study(study_name="s", storage=make_storage(str(tmp_path / "study.journal"), 1, 2),
                                direction="maximize")
    lr = {"learning_rate": FloatDistribution(1e-4, 1e-2, log=True)}
    assert take_over(study, study.ask(lr))
    retry = study.ask(lr)  # pops the retry of trial 0; its worker dies in its turn
    assert retry.number == 1 and take_over(study, retry)
    study.tell(study.ask(lr), 0.5)
    trials = study.get_trials()
    assert trials[2].system_attrs["retry_history"] == [0, 1] and retried_numbers(trials) == {0, 1}
    assert [t.number for t in counted_trials(study)] == [2]
    assert trials_table(study)["state"].tolist() == ["INTERRUPTED (rerun)"] * 2 + ["COMPLETE"]


def test_a_trial_longer_than_the_grace_period_is_not_taken_over_while_its_worker_beats(tmp_path, monkeypatch):
    """Another worker (a thread here, with its own handle on the journal) looks for silent trials all along, while
    the one trial runs for over twice the grace period: the trial's beats keep it, and it completes."""
    monkeypatch.setenv("FAKE_STEP_SECONDS", "1")  # 8 s
    study_dir = tmp_path / "study"
    path = study_dir / "study.journal"
    stop, checks = threading.Event(), []

    def other_worker():
        study = None
        while not stop.wait(0.2):
            try:
                study = study or optuna.load_study(study_name="sst2_lora", storage=make_storage(str(path), 1, 3))
            except KeyError:
                continue  # not made yet (hpo.py makes the file and the study)
            fail_interrupted_trials(study)
            checks.append(len(study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))))

    thread = threading.Thread(target=other_worker)
    study_dir.mkdir()
    path.touch()  # the other worker's handle must not race hpo.py to create the file
    thread.start()
    try:
        hpo.main(fake_hpo_args(write_space(tmp_path, LR_SPACE), study_dir, "--n_trials", "1", "--stage", "search",
                               "--pruner", "none", "--heartbeat_interval", "1", "--grace_period", "3"))
    finally:
        stop.set()
        thread.join()
    (trial,) = optuna.load_study(study_name="sst2_lora", storage=make_storage(str(path))).get_trials()
    assert trial.state == TrialState.COMPLETE and trial.duration.total_seconds() > 6
    assert checks.count(1) >= 20  # checked while it ran
    assert trial.user_attrs["heartbeat"] - trial.datetime_start.timestamp() > 6  # it still beat near its end


def test_an_older_study_db_is_refused_until_storage_names_it(tmp_path):
    study_dir, space = tmp_path / "study", write_space(tmp_path, LR_SPACE)
    study_dir.mkdir()
    db = study_dir / "study.db"
    optuna.create_study(study_name="sst2_lora", storage=f"sqlite:///{db}", direction="maximize").enqueue_trial(
        {"learning_rate": 1e-3})
    args = fake_hpo_args(space, study_dir, "--n_trials", "1", "--stage", "search")
    with pytest.raises(SystemExit) as refused:
        hpo.main(args)
    line = str(refused.value)
    assert line.startswith(f"{db} holds a study made by an older hpo.py") and "\n" not in line
    assert f"pass --storage sqlite:///{db} to resume it" in line
    assert not (study_dir / "study.journal").exists() and not (study_dir / "trials").exists()  # nothing started
    hpo.main(args + ["--storage", f"sqlite:///{db}"])  # as the line says: the old study resumes
    (trial,) = optuna.load_study(study_name="sst2_lora", storage=f"sqlite:///{db}").get_trials()
    assert trial.state == TrialState.COMPLETE and trial.params == {"learning_rate": 1e-3}


def test_storage_takes_a_journal_file_or_an_rdb_url_and_nothing_else(tmp_path, capsys):
    space = write_space(tmp_path, LR_SPACE)
    own = tmp_path / "elsewhere" / "mine.journal"
    own.parent.mkdir()
    hpo.main(fake_hpo_args(space, tmp_path / "study", "--n_trials", "1", "--stage", "search", "--storage", str(own)))
    (trial,) = optuna.load_study(study_name="sst2_lora", storage=make_storage(str(own))).get_trials()
    assert trial.state == TrialState.COMPLETE and not (tmp_path / "study" / "study.journal").exists()
    assert f"study sst2_lora in {own}: 1 trials" in capsys.readouterr().out

    refused = {
        "study.db": "--storage takes an RDB URL (sqlite:///..., postgresql://..., mysql://...) or a journal file whose "
                    "name ends in .journal, got 'study.db'.",
        str(tmp_path / "missing" / "s.journal"): f"--storage {tmp_path / 'missing' / 's.journal'}: the folder "
                                                 f"{tmp_path / 'missing'} does not exist.",
        "postgresql://user:pw@host:port/db": "--storage: not an RDB URL of the form "
                                             "dialect://user:password@host:port/database (sqlite:///..., "
                                             "postgresql://..., mysql://...).",
        "nosuchdb://user:pw@host/db": "--storage nosuchdb://user:***@host/db: 'nosuchdb' is no database SQLAlchemy "
                                      "knows (sqlite, postgresql, mysql, ...).",
    }
    for value, line in refused.items():
        with pytest.raises(SystemExit) as error:
            hpo.main(fake_hpo_args(space, tmp_path / "refused", "--n_trials", "1", "--storage", value))
        assert str(error.value) == line
    with pytest.raises(SystemExit, match=r"^--grace_period \(1 s\) must be longer than --heartbeat_interval \(1 s"):
        hpo.main(fake_hpo_args(space, tmp_path / "refused", "--heartbeat_interval", "1", "--grace_period", "1"))
    assert not list((tmp_path / "refused").iterdir())  # no study, no trial
    assert hpo.safe_url("postgresql://user:s3cret@db.example:5432/optuna") == "postgresql://user:***@db.example:5432/optuna"
    assert hpo.safe_url(str(own)) == str(own)


JOURNAL_FLAGS = ("--n_trials", "1", "--stage", "search", "--heartbeat_interval", "1", "--grace_period", "2")


def one_trial_study(tmp_path) -> tuple:
    """(study_dir, hpo.py's arguments) of a journal study that has run one trial of the fake run."""
    study_dir = tmp_path / "study"
    args = fake_hpo_args(write_space(tmp_path, LR_SPACE), study_dir, *JOURNAL_FLAGS)
    hpo.main(args)
    return study_dir, args


def test_a_torn_journal_tail_is_saved_aside_then_cut_and_the_same_command_resumes_the_study(tmp_path, capsys):
    """The issue's reproduction: one trial, `truncate -s -40 study.journal`, the same command. The torn bytes are
    copied to a side file before the journal is cut back to its last complete record; every complete record is kept,
    and the study reads (with Optuna's own reader too) and goes on."""
    study_dir, args = one_trial_study(tmp_path)
    path = study_dir / "study.journal"
    whole = path.read_bytes()
    os.truncate(path, len(whole) - 40)
    torn = whole[:-40]
    offset = torn.rfind(b"\n") + 1  # where the torn last record starts
    hpo.main(args)
    side = study_dir / f"study.journal.torn-{offset}"
    assert side.read_bytes() == torn[offset:]  # the torn bytes, saved before the cut
    assert path.read_bytes()[:offset] == torn[:offset]  # every complete record kept as it was
    assert f"saved to {side} and the journal was cut back to its last complete record at byte {offset}" in \
        capsys.readouterr().err
    backend = optuna.storages.journal.JournalFileBackend(str(path))  # Optuna's plain reader parses every line
    trials = optuna.load_study(study_name="sst2_lora", storage=optuna.storages.JournalStorage(backend)).get_trials()
    assert sum(t.state == TrialState.COMPLETE for t in trials) >= 1
    assert all(line.endswith(b"}") for line in path.read_bytes().split(b"\n")[:-1])


def test_a_journal_record_that_lost_only_its_newline_gets_it_back(tmp_path):
    study_dir, args = one_trial_study(tmp_path)
    path = study_dir / "study.journal"
    whole = path.read_bytes()
    os.truncate(path, len(whole) - 1)
    before = load_study(study_dir).get_trials()  # opening repairs: the record is whole, so nothing is cut
    assert path.read_bytes() == whole and not list(study_dir.glob("study.journal.torn-*"))
    assert [t.state for t in before] == [TrialState.COMPLETE]


def test_a_garbage_journal_line_is_refused_naming_the_file_the_line_and_its_byte(tmp_path):
    study_dir, args = one_trial_study(tmp_path)
    path = study_dir / "study.journal"
    lines = path.read_bytes().splitlines(keepends=True)
    lines.insert(2, b"garbage, not a record\n")
    path.write_bytes(b"".join(lines))
    offset = len(lines[0]) + len(lines[1])
    with pytest.raises(SystemExit) as refused:
        hpo.main(args)
    line = str(refused.value)
    assert line.startswith(f"{path} line 3 (byte {offset}) is not a journal record (not JSON: ") and "\n" not in line
    assert f"truncate -s {offset} {path}" in line
    assert path.read_bytes() == b"".join(lines)  # nothing written after it


def test_an_emptied_or_missing_journal_beside_trial_folders_is_refused_and_trial_0_is_not_rerun(tmp_path):
    study_dir, args = one_trial_study(tmp_path)
    path = study_dir / "study.journal"
    finished = (study_dir / "trials" / "trial_0000" / "all_results.json").read_bytes()
    journal_bytes = path.read_bytes()
    for state in ("empty", "missing"):
        path.write_bytes(b"") if state == "empty" else path.unlink()
        with pytest.raises(SystemExit) as refused:
            hpo.main(args)
        assert str(refused.value).startswith(f"{path} is {state}, but {study_dir / 'trials'} holds 1 trial folder(s) "
                                             "(trial_0000...)")
        assert (study_dir / "trials" / "trial_0000" / "all_results.json").read_bytes() == finished
    path.write_bytes(journal_bytes)  # restored; another study in it beside the first study's trials
    with pytest.raises(SystemExit, match=r"^study other holds no trial, but .* holds 1 trial folder\(s\)"):
        hpo.main(args + ["--study_name", "other"])
    assert (study_dir / "trials" / "trial_0000" / "all_results.json").read_bytes() == finished

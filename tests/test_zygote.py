"""tests/zygote.py behaves as the real interpreter for what the launchers ask of it, and refuses what it cannot do."""

import os
import signal
import subprocess
import sys
import time

import pytest

PROBE = """import json, os, sys
print(json.dumps({"argv": sys.argv, "path": sys.path, "cwd": os.getcwd(), "probe": os.environ.get("ZYGOTE_PROBE"),
                  "stdin": sys.stdin.read(), "globals": {k: type(v).__name__ for k, v in globals().items()},
                  "file": globals().get("__file__"), "loader": type(__loader__).__name__, "name": __name__}))
print("to stderr", file=sys.stderr)
sys.exit(3)
"""


def both(zygote_python, args, cwd, stdin="", **env):
    """The same command under python3 and the zygote: their (returncode, stdout, stderr)."""
    runs = []
    for python in (sys.executable, zygote_python):
        done = subprocess.run([python, *args], cwd=cwd, input=stdin, env={**os.environ, **env}, capture_output=True,
                              text=True, timeout=120)
        runs.append((done.returncode, done.stdout, done.stderr))
    return runs


@pytest.fixture
def probe_dir(tmp_path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "probe.py").write_text(PROBE)
    (tmp_path / "lib").mkdir()
    return tmp_path


@pytest.mark.parametrize("form", ["script", "module", "code", "stdin"])
def test_zygote_runs_a_script_module_code_and_stdin_as_python_does(zygote_python, probe_dir, form):
    """stdout, stderr and exit code; sys.argv, sys.path (with a relative PYTHONPATH), __name__ and __file__; the
    cwd, the environment and stdin passed."""
    args = {"script": ["pkg/probe.py"], "module": ["-m", "pkg.probe"], "code": ["-c", PROBE], "stdin": ["-"]}[form]
    stdin = PROBE if form == "stdin" else "some input"
    real, zygote = both(zygote_python, [*args, "one", "--two", "3"], probe_dir, stdin, ZYGOTE_PROBE="passed",
                        PYTHONPATH="lib")
    assert real[0] == 3 and '"probe": "passed"' in real[1] and real[2] == "to stderr\n", real
    assert zygote == real


@pytest.mark.parametrize("code", ["import sys; sys.exit(0)", "import sys; sys.exit(5)", "import sys; sys.exit(300)",
                                  "import sys; sys.exit('a message')", "raise SystemExit", "import os; os._exit(7)",
                                  "def f():\n    raise ValueError('boom')\nf()", "raise KeyboardInterrupt",
                                  "import os, signal; os.kill(os.getpid(), signal.SIGTERM)",
                                  "import atexit; atexit.register(print, 'at exit'); print('partial', end='')"])
def test_zygote_exits_as_python_does(zygote_python, tmp_path, code):
    """The exit code (or the signal) and the output of a non-zero exit, an uncaught exception, an uncaught
    KeyboardInterrupt, a kill, and atexit handlers with unflushed output."""
    real, zygote = both(zygote_python, ["-c", code], tmp_path)
    assert zygote == real


def test_zygote_reapplies_thread_count_and_datasets_cache(zygote_python, tmp_path):
    """OMP_NUM_THREADS and HF_DATASETS_CACHE, which torch and datasets read when imported, are the client's."""
    code = ("import torch, datasets.config as c; print(torch.get_num_threads(), c.HF_DATASETS_CACHE, "
            "c.DOWNLOADED_DATASETS_PATH)")
    real, zygote = both(zygote_python, ["-c", code], tmp_path, OMP_NUM_THREADS="2", HF_DATASETS_CACHE=str(tmp_path))
    threads = os.environ.get("MKL_NUM_THREADS") or "2"  # torch takes MKL's count first
    assert real[0] == 0 and real[1].startswith(f"{threads} {tmp_path} "), real
    assert zygote[:2] == real[:2]


def test_zygote_refuses_what_a_fresh_interpreter_would_do_differently(zygote_python, tmp_path):
    """An import-time variable that differs from the server's, an interpreter option, and a PYTHONPATH entry that
    shadows a preloaded package: one line each and exit 2, nothing run."""
    (tmp_path / "torch").mkdir()
    cases = [(["-c", "open('ran', 'w')"], {"HF_HUB_OFFLINE": "0"}, "HF_HUB_OFFLINE is '0' here but '1' in the server"),
             (["-u", "-c", "open('ran', 'w')"], {}, "only SCRIPT, -m MODULE, -c CODE and - are served, got -u -c"),
             (["-c", "open('ran', 'w')"], {"PYTHONPATH": str(tmp_path)}, f"PYTHONPATH entry {tmp_path} holds torch")]
    for args, env, message in cases:
        done = subprocess.run([zygote_python, *args], cwd=tmp_path, env={**os.environ, **env}, capture_output=True,
                              text=True, timeout=60)
        assert done.returncode == 2 and done.stderr.count("\n") == 1 and message in done.stderr, done.stderr
        assert not (tmp_path / "ran").exists()


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM])
def test_a_killed_client_leaves_no_running_child(zygote_python, tmp_path, how):
    """SIGTERM is forwarded: the run and then the client end killed by it, as python would (a process the run started
    lives on, as it would). After SIGKILL the server kills the run's process group: the run and what it started."""
    pids = tmp_path / "pids"
    code = (f"import os, subprocess, time; sleeper = subprocess.Popen(['sleep', '60']); "
            f"open({str(pids)!r}, 'w').write(f'{{os.getpid()}} {{sleeper.pid}}'); time.sleep(60)")
    client = subprocess.Popen([zygote_python, "-c", code])
    deadline = time.monotonic() + 60
    while not pids.exists() or len(pids.read_text().split()) < 2:
        assert time.monotonic() < deadline and client.poll() is None
        time.sleep(0.05)
    client.send_signal(how)
    assert client.wait(timeout=30) == -how
    run, sleeper = map(int, pids.read_text().split())
    for pid in (run, sleeper) if how == signal.SIGKILL else (run,):
        while alive(pid):
            assert time.monotonic() < deadline, f"{pid} still running"
            time.sleep(0.05)
    if how == signal.SIGTERM:
        os.kill(sleeper, signal.SIGKILL)


def alive(pid):
    """Running (not a zombie: the server reaps its children; `sleep`, orphaned, is reaped by init)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_a_tests_environment_changes_do_not_outlive_it(monkeypatch):
    """conftest.environment_kept, the autouse fixture's body: what a block sets, changes or removes is undone (a W&B
    run left WANDB_SERVICE behind, and every later zygote client was refused)."""
    from conftest import environment_kept

    monkeypatch.setenv("ZYGOTE_KEPT", "before")
    monkeypatch.setenv("ZYGOTE_REMOVED", "here")
    with environment_kept():
        os.environ["WANDB_SERVICE"] = "3-1-unix-/tmp/socket"
        os.environ["ZYGOTE_KEPT"] = "changed"
        del os.environ["ZYGOTE_REMOVED"]
    assert "WANDB_SERVICE" not in os.environ and os.getenv("ZYGOTE_KEPT") == "before"
    assert os.getenv("ZYGOTE_REMOVED") == "here"

"""A test-only "zygote" interpreter: the launcher tests' PYTHON, without the import cost of a fresh python per run.

The launcher dry runs (launch/*_study.sh, benchmarks/gpu_check.sh) start dozens of python processes, and each spends
4-8 CPU-seconds importing torch, transformers, peft, accelerate, datasets, scipy and sklearn before a few steps on a
tiny model. Here one server process (`python tests/zygote.py serve DIR`, started once per pytest session by the
`python_for_launchers` fixture in tests/conftest.py) imports those libraries once (PRELOAD; never the repository's own
modules, so every run imports the code under test afresh) and listens on DIR/socket. DIR/python is a small client
executable the tests pass as PYTHON: it sends its argv, cwd, environment, umask, nice value and CPU affinity, passes
its stdin/stdout/stderr file descriptors, forwards SIGTERM/SIGINT/SIGHUP/SIGQUIT, and exits as the run did (the same
exit code, or killed by the same signal). The server forks one child per request; the child starts a new session, takes
the client's descriptors as 0/1/2, its cwd, environment and thread count, sets sys.argv, sys.path and a fresh __main__
as CPython would, runs the script, `-m module`, `-c code` or `-` (stdin), and exits like CPython (SystemExit's code,
1 and a traceback for an uncaught exception, atexit handlers run, stdio flushed). The server kills the child's process
group when the client's connection closes first (a client killed by SIGKILL leaves no run behind) and reaps every
child.

What a fresh interpreter would do differently is refused, one line on stderr and exit 2, never run silently:
- any interpreter option other than those above (-u, -W, -X, -I ...);
- an environment that differs from the server's in a variable the preloaded libraries read when imported (CHECKED:
  measured by recording os.environ reads while importing PRELOAD, plus what the interpreter and C libraries read at
  startup), except the ones the child re-applies: OMP_NUM_THREADS (torch.set_num_threads, MKL_NUM_THREADS first),
  HF_DATASETS_CACHE (datasets.config re-read), PYTHONPATH (sys.path) and PYTHONUNBUFFERED (stdio);
- a PYTHONPATH entry holding a package of the same name as one already imported by the server;
- a server that has started a second thread (forking it would not be safe).
The server runs one thread (pyarrow's jemalloc background thread is turned off in it) and does no tensor work.
Left as is: every child shares the server's string-hash seed (PYTHONHASHSEED) and sees the server as its parent pid;
numpy's global generator is reseeded in each child, Python's `random` reseeds itself at fork.

Only tests use it. ZYGOTE=0 in the environment makes the fixture return sys.executable (a real interpreter per run).
"""

import marshal
import os
import signal
import socket
import struct
import sys

PRELOAD = ("torch", "transformers", "peft", "accelerate", "datasets", "scipy.stats", "sklearn.metrics")
# The variables (prefixes) read when PRELOAD is imported: by the interpreter at startup (PYTHON*, locale), from C
# (libgomp, MKL, OpenBLAS), and by the libraries' Python code (os.environ reads recorded while importing PRELOAD,
# less the whole-environment scans of tqdm and fsspec, which read only their own prefixes).
CHECKED = ("PYTHON", "LANG", "LC_", "OMP_", "MKL_", "OPENBLAS_", "KMP_", "TQDM_", "FSSPEC_", "TMPDIR", "TMP", "TEMP",
           "HOME", "XDG_CACHE_HOME", "PATH", "HF_", "HUGGINGFACE_", "TRANSFORMERS_", "TOKENIZERS_", "DATASETS_",
           "ACCELERATE_", "TORCH", "PYTORCH_", "AOT", "INDUCTOR_", "USE_", "XLA_", "NPY_", "NUMPY_", "PANDAS_",
           "SCIPY_", "SKLEARN_", "JOBLIB_", "LOKY_", "SYMPY_", "MPMATH_", "WANDB_", "DISABLE_TELEMETRY", "DO_NOT_TRACK")
# The launcher's interpreter variable and the server's own setting (see serve).
UNCHECKED = {"PYTHON", "JE_ARROW_MALLOC_CONF"}
REAPPLIED = {"OMP_NUM_THREADS", "HF_DATASETS_CACHE", "PYTHONPATH", "PYTHONUNBUFFERED"}  # MKL_NUM_THREADS: checked
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT)


def send(sock, obj, fds=()):
    data = marshal.dumps(obj)
    socket.send_fds(sock, [struct.pack("!I", len(data)) + data], list(fds))


def receive(sock, maxfds=0):
    """One message (and up to maxfds descriptors); None when the peer closed the connection."""
    data, fds, _, _ = socket.recv_fds(sock, 65536, maxfds)
    if not data:
        return None, fds
    while len(data) < 4 or len(data) < 4 + struct.unpack("!I", data[:4])[0]:
        more = sock.recv(65536)
        if not more:
            return None, fds
        data += more
    return marshal.loads(data[4:]), fds


# ---- the client ----


def client(path, argv):
    """DIR/python's body: one run on the server at `path`; exits as the run did."""
    sock = socket.socket(socket.AF_UNIX)
    sock.connect(path)
    umask = os.umask(0)
    os.umask(umask)
    send(sock, {"argv": argv, "cwd": os.getcwd(), "env": dict(os.environb), "umask": umask,
                "nice": os.getpriority(os.PRIO_PROCESS, 0), "cpus": sorted(os.sched_getaffinity(0))}, (0, 1, 2))
    pid, _ = receive(sock)
    if pid is None:
        sys.exit("zygote: the server closed the connection before starting the run")
    for number in FORWARDED:
        signal.signal(number, lambda number, frame: forward(pid, number))
    status, _ = receive(sock)
    if status is None:
        sys.exit("zygote: the server closed the connection before the run ended")
    code = os.waitstatus_to_exitcode(status)
    if code < 0:  # killed by a signal: so is the client
        signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    sys.exit(code)


def forward(pid, number):
    try:
        os.kill(pid, number)
    except ProcessLookupError:  # it has just ended: its status is on the way
        pass


def write_client(directory):
    """DIR/python: an absolute, executable path (benchmarks/gpu_check.sh resolves PYTHON with `command -v`)."""
    path = os.path.join(directory, "python")
    with open(path, "w") as out:
        out.write(f"#!{sys.executable} -IS\nimport importlib.util, sys\n"
                  f"spec = importlib.util.spec_from_file_location('zygote', {os.path.abspath(__file__)!r})\n"
                  f"zygote = importlib.util.module_from_spec(spec)\nspec.loader.exec_module(zygote)\n"
                  f"zygote.client({os.path.join(directory, 'socket')!r}, sys.argv[1:])\n")
    os.chmod(path, 0o755)
    return path


# ---- the server ----


def start_server(directory, timeout=300):
    """Start `python tests/zygote.py serve DIRECTORY` with this process's environment; (the process, DIR/python)."""
    import subprocess
    import time

    log = open(os.path.join(directory, "server.log"), "w+")
    # os.environ, not the C environment: a library imported by the tests calls setenv (COLUMNS) behind its back.
    # One OpenMP thread: without OMP_NUM_THREADS, OpenBLAS (under numpy and scipy) starts a worker thread per core
    # when imported, and a server with threads is not forked; the launchers run with OMP_NUM_THREADS=1 anyway.
    server = subprocess.Popen([sys.executable, __file__, "serve", directory], stdin=subprocess.DEVNULL, stdout=log,
                              stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + timeout
    while not os.path.exists(os.path.join(directory, "socket")):
        if server.poll() is not None or time.monotonic() > deadline:
            server.kill()
            log.seek(0)
            raise RuntimeError(f"zygote server did not start (rc {server.wait()}):\n{log.read()[-3000:]}")
        time.sleep(0.1)
    return server, write_client(directory)


def preload():
    for name in PRELOAD:
        __import__(name)


def python_path(env_path, cwd):
    """sys.path's PYTHONPATH entries as site.py leaves them (absolute, first occurrence)."""
    return [os.path.abspath(os.path.join(cwd, entry)) for entry in env_path.split(os.pathsep)] if env_path else []


def serve(directory):
    import selectors

    # pyarrow's jemalloc would start a background thread at import (purging freed pages), and a forked child has no
    # thread but the one that forked: without it the children purge on allocation instead; nothing else changes.
    os.environ.setdefault("JE_ARROW_MALLOC_CONF", "background_thread:false")
    before = dict(os.environ)
    preload()
    # What the imports set (sklearn: KMP_DUPLICATE_LIB_OK, KMP_INIT_AT_FORK): a child's environment is the client's
    # with these, as a fresh interpreter's is after the same imports; the check compares the environment they read.
    imported_env = {k: v for k, v in os.environ.items() if before.get(k) != v}
    os.environ.clear()
    os.environ.update(before)

    own_path = python_path(os.environ.get("PYTHONPATH", ""), os.getcwd())
    base = [p for p in sys.path[1:] if p not in own_path]
    preloaded = {name.split(".")[0] for name in sys.modules}
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(os.path.join(directory, "socket.new"))
    listener.listen(64)
    os.rename(os.path.join(directory, "socket.new"), os.path.join(directory, "socket"))  # ready when it appears
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ)
    selector.register(wake_r, selectors.EVENT_READ)
    running = {}  # child pid -> the client's connection
    parent = os.getppid()
    print("zygote ready", flush=True)
    try:
        while os.getppid() == parent:  # the pytest session is still there
            for key, _ in selector.select(timeout=1):
                if key.fileobj is listener:
                    conn = listener.accept()[0]
                    known = dict(base=base, preloaded=preloaded, threads=threads(), env=imported_env)
                    pid = fork_run(conn, known, [listener, selector, wake_r, wake_w, *running.values()])
                    if pid:
                        running[pid] = conn
                        selector.register(conn, selectors.EVENT_READ, pid)
                elif key.fileobj == wake_r:
                    os.read(wake_r, 4096)
                    reap(running, selector)
                elif not receive_byte(key.fileobj):  # the client went away before its run ended
                    selector.unregister(key.fileobj)
                    kill(key.data)
    finally:
        for pid in running:
            kill(pid)


def fork_run(conn, known, inherited):
    """Fork the child for one request; its pid (sent to the client), or None for a request that never came."""
    request, fds = receive(conn, 3)
    if request is None or len(fds) != 3:
        conn.close()
        for fd in fds:
            os.close(fd)
        return None
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            code = child(request, fds, known, [conn, *inherited])
        except BaseException:
            import traceback

            os.write(2, f"zygote: internal error\n{traceback.format_exc()}".encode())
        finally:
            os._exit(code)
    for fd in fds:
        os.close(fd)
    try:
        send(conn, pid)
    except OSError:  # the client is gone already; its child is killed when reaped or on EOF
        kill(pid)
    return pid


def receive_byte(conn):
    try:
        return conn.recv(1)
    except OSError:
        return b""


def reap(running, selector):
    while running:
        pid, status = os.waitpid(-1, os.WNOHANG)
        if pid == 0:
            return
        conn = running.pop(pid, None)
        if conn is None:
            continue
        try:
            selector.unregister(conn)
        except KeyError:  # unregistered when the client went away
            pass
        try:
            send(conn, status)
        except OSError:  # the client is gone
            pass
        conn.close()


def kill(pid):
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


# ---- the child: one run ----


def child(request, fds, known, inherited):
    """In the forked child: become the client's interpreter for one run; the exit code."""
    os.setsid()
    signal.set_wakeup_fd(-1)
    for number in (signal.SIGCHLD, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
        signal.signal(number, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for thing in inherited:
        os.close(thing) if isinstance(thing, int) else thing.close()
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    env = {key.decode("utf-8", "surrogateescape"): value.decode("utf-8", "surrogateescape")
           for key, value in request["env"].items()}
    refusal = refuse(request["argv"], env, request["cwd"], known)
    if refusal:
        os.write(2, f"zygote: {refusal}; ZYGOTE=0 runs a real interpreter\n".encode())
        return 2
    old_streams, server_env = (sys.stdout, sys.stderr), dict(os.environ)
    os.chdir(request["cwd"])
    os.umask(request["umask"])
    os.setpriority(os.PRIO_PROCESS, 0, request["nice"])
    os.sched_setaffinity(0, request["cpus"])
    os.environ.clear()
    os.environ.update({**known["env"], **env})
    reapply(env, server_env)
    set_streams(bool(env.get("PYTHONUNBUFFERED")))
    code = run(request["argv"], known["base"], request["cwd"])
    for stream in (*old_streams, sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            code = code or 120
    if code < 0:  # an uncaught KeyboardInterrupt: CPython ends killed by SIGINT
        signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    return code


def refuse(argv, env, cwd, known):
    """Why this request cannot run as a fresh interpreter would, or None."""
    if known["threads"] != 1:
        return f"the server runs {known['threads']} threads, forking it is not safe"
    if not argv or (argv[0].startswith("-") and argv[0] not in ("-m", "-c", "-")) or (argv[0] in ("-m", "-c")
                                                                                     and len(argv) < 2):
        return f"only SCRIPT, -m MODULE, -c CODE and - are served, got {' '.join(argv[:2]) or 'no arguments'}"
    for name in sorted({*env, *os.environ}):
        if name.startswith(CHECKED) and name not in REAPPLIED | UNCHECKED and env.get(name) != os.environ.get(name):
            return (f"{name} is {env.get(name)!r} here but {os.environ.get(name)!r} in the server, whose "
                    f"libraries read it when imported")
    if "OMP_NUM_THREADS" in os.environ and "OMP_NUM_THREADS" not in env:
        return "OMP_NUM_THREADS is unset here but set in the server (torch's default thread count is unknown)"
    for entry in python_path(env.get("PYTHONPATH", ""), cwd):
        shadowing = sorted(known["preloaded"] & {name.split(".")[0] for name in listdir(entry)})
        if shadowing and entry not in known["base"]:
            return f"PYTHONPATH entry {entry} holds {', '.join(shadowing)}, already imported by the server"
    return None


def threads():
    return len(os.listdir("/proc/self/task"))


def listdir(path):
    try:
        return os.listdir(path)
    except OSError:
        return []


def reapply(env, server_env):
    """What the preloaded libraries fixed at import, from the client's environment."""
    import importlib

    import datasets.config
    import numpy
    import torch

    threads = env.get("MKL_NUM_THREADS") or env.get("OMP_NUM_THREADS")  # torch's first choice is MKL's count
    if threads:
        torch.set_num_threads(int(threads))
    if env.get("HF_DATASETS_CACHE") != server_env.get("HF_DATASETS_CACHE"):
        importlib.reload(datasets.config)
    numpy.random.seed()  # a fresh interpreter's global generator is seeded from the OS


def set_streams(unbuffered):
    """sys.stdin/stdout/stderr on the new 0/1/2, built as CPython builds them at startup."""
    import io

    for fd, name, mode in ((0, "stdin", "rb"), (1, "stdout", "wb"), (2, "stderr", "wb")):
        old = getattr(sys, name)
        raw_only = unbuffered and fd > 0
        buffer = io.open(fd, mode, buffering=0 if raw_only else -1, closefd=False)
        (buffer if raw_only else buffer.raw).name = f"<{name}>"
        line_buffering = not raw_only and fd > 0 and (fd == 2 or os.isatty(fd))
        stream = io.TextIOWrapper(buffer, old.encoding, old.errors, "\n", line_buffering, raw_only)
        setattr(sys, name, stream)
        setattr(sys, f"__{name}__", stream)


def run(argv, base, cwd):
    """Run the script, module, code or stdin in a fresh __main__ as CPython does; the exit code."""
    import atexit
    import builtins
    import importlib.machinery
    import runpy
    import threading
    import types

    main = types.ModuleType("__main__")
    main.__dict__.update(__loader__=importlib.machinery.BuiltinImporter, __annotations__={}, __builtins__=builtins)
    sys.modules["__main__"] = main
    first, rest = argv[0], argv[1:]
    if first in ("-m", "-c"):  # the module or code is not an argument of the run
        path0, sys.argv = (cwd if first == "-m" else ""), [first, *rest[1:]]
    else:
        path0, sys.argv = ("" if first == "-" else os.path.dirname(os.path.realpath(first))), argv
    sys.orig_argv = [sys.executable, *argv]
    sys.path[:] = [path0, *dict.fromkeys([*python_path(os.environ.get("PYTHONPATH", ""), cwd), *base])]
    code = 0
    try:
        if first == "-m":
            runpy._run_module_as_main(rest[0])
        elif first == "-c":
            exec(compile(rest[0], "<string>", "exec"), main.__dict__)
        elif first == "-":
            main.__file__, main.__cached__ = "<stdin>", None
            exec(compile(sys.stdin.buffer.read(), "<stdin>", "exec"), main.__dict__)
        else:
            main.__file__, main.__cached__ = os.path.abspath(first), None
            main.__loader__ = importlib.machinery.SourceFileLoader("__main__", main.__file__)
            with open(first, "rb") as source:
                exec(compile(source.read(), os.path.abspath(first), "exec"), main.__dict__)
    except SystemExit as stop:
        code = exit_code(stop)
    except BaseException as error:  # the traceback starts in the run, not here
        error.__traceback__ = error.__traceback__.tb_next
        sys.excepthook(type(error), error, error.__traceback__)
        code = -signal.SIGINT if isinstance(error, KeyboardInterrupt) else 1
    threading._shutdown()
    atexit._run_exitfuncs()
    return code


def exit_code(stop):
    """CPython's exit status for an uncaught SystemExit."""
    if stop.code is None:
        return 0
    if isinstance(stop.code, int):
        return stop.code & 0xFF
    print(stop.code, file=sys.stderr)
    return 1


if __name__ == "__main__":
    if sys.argv[1:2] != ["serve"] or len(sys.argv) != 3:
        sys.exit("usage: python tests/zygote.py serve DIR")
    serve(sys.argv[2])

"""A real PostgreSQL server for the tests: started from this machine's server binaries (Debian's postgresql package:
initdb and pg_ctl on PATH or in /usr/lib/postgresql/VERSION/bin) in a temporary folder, listening on a free port of
127.0.0.1, and stopped at the end, also when a test fails. initdb refuses to run as root: as root (CI) the server runs
as the `postgres` system user (runuser), which then owns its folder.

Without server binaries a test that needs the server is skipped with the reason, unless REQUIRE_POSTGRES=1 (.ci/run
exports it, after installing postgresql where initdb is missing): then it fails.
"""

import contextlib
import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest

PASSWORD = "not-shown-pw"  # trust authentication ignores it; the tests check that no log or record shows it


def server_binaries() -> Path | None:
    """The folder that holds initdb and pg_ctl: the one `initdb` on PATH points to, else the newest
    /usr/lib/postgresql/*/bin."""
    folders = []
    on_path = shutil.which("initdb")
    if on_path:
        folders.append(Path(on_path).resolve().parent)
    versions = Path("/usr/lib/postgresql").glob("*/bin")
    folders += sorted(versions, key=lambda p: [int(n) for n in re.findall(r"\d+", p.parent.name)] or [0], reverse=True)
    return next((f for f in folders if (f / "initdb").is_file() and (f / "pg_ctl").is_file()), None)


def unavailable(reason: str):
    """Skip the test, or fail it where CI requires the server (REQUIRE_POSTGRES=1)."""
    if os.environ.get("REQUIRE_POSTGRES") == "1":
        pytest.fail(f"REQUIRE_POSTGRES=1 but {reason}", pytrace=False)
    pytest.skip(reason)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(command: list, what: str):
    done = subprocess.run([str(part) for part in command], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{what} failed (exit {done.returncode}): {(done.stderr or done.stdout).strip()[-2000:]}")


@contextlib.contextmanager
def postgres_server(database: str = "optuna"):
    """Yields the URL (postgresql+psycopg2://postgres:PASSWORD@127.0.0.1:PORT/DATABASE) of a new, empty database on a
    new server, which is stopped and deleted afterwards."""
    binaries = server_binaries()
    if binaries is None:
        unavailable("no PostgreSQL server binaries (initdb, pg_ctl) on PATH or in /usr/lib/postgresql/*/bin")
    as_user = []
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            unavailable("running as root, and there is no `postgres` user to run initdb and the server as")
        as_user = ["runuser", "-u", "postgres", "--"]
    # Not under pytest's tmp_path: its parent folders are closed to other users, such as postgres.
    root = Path(tempfile.mkdtemp(prefix="hpo-pg-"))
    data = root / "data"
    try:
        if as_user:
            shutil.chown(root, "postgres")
        run(as_user + [binaries / "initdb", "-D", data, "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync"],
            "initdb")
        for attempt in range(3):  # another process may take the free port before the server does
            port = free_port()
            try:
                run(as_user + [binaries / "pg_ctl", "-D", data, "-l", root / "server.log", "-w", "-t", "60", "-o",
                               f"-p {port} -k {root} -h 127.0.0.1 -F", "start"], "pg_ctl start")
                break
            except RuntimeError:
                if attempt == 2:
                    raise
        try:
            import psycopg2

            connection = psycopg2.connect(host="127.0.0.1", port=port, user="postgres", password=PASSWORD,
                                          dbname="postgres")
            connection.autocommit = True
            with connection.cursor() as cursor:
                cursor.execute(f"CREATE DATABASE {database}")
            connection.close()
            yield f"postgresql+psycopg2://postgres:{PASSWORD}@127.0.0.1:{port}/{database}"
        finally:
            run(as_user + [binaries / "pg_ctl", "-D", data, "-w", "-m", "fast", "stop"], "pg_ctl stop")
    finally:
        shutil.rmtree(root, ignore_errors=True)

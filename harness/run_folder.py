"""The output directory of a run as a shared resource: one run at a time (a lock beside it), and an old run that
--overwrite_output_dir replaces kept whole until the new run has finished.

- `folder_lock(output_dir)`: OUTPUT_DIR.lock, created atomically with the holder's pid, host and start time, and
  removed when the run ends. A second run into the folder is told it is in use; a lock left by a process that no
  longer runs on this host (a killed run) is taken over, by one run only when several try at once (`_take_over`).
- `move_aside(output_dir)`: the run there is renamed to OUTPUT_DIR.replaced before anything new is written, and
  deleted by `discard_replaced` only once the new run has written all_results.json. One slot per folder, so copies
  never pile up (hpo.py reruns interrupted trials into their old folders with --overwrite_output_dir): when the slot
  is taken, the run in OUTPUT_DIR is either a finished replacement of it (the slot's run goes) or a failed attempt at
  one (that attempt goes, the slot's run stays).
"""

import contextlib
import fcntl
import json
import logging
import os
import shutil
import socket
import threading
import time
from pathlib import Path

from harness.records import RESULTS_FILE

logger = logging.getLogger(__name__)

LOCK_SUFFIX = ".lock"
REPLACED_SUFFIX = ".replaced"


def sibling(output_dir, suffix) -> Path:
    output_dir = Path(output_dir)
    return output_dir.with_name(output_dir.name + suffix)


# ---- one run per folder ----


@contextlib.contextmanager
def folder_lock(output_dir, hold: bool = True):
    """Hold OUTPUT_DIR.lock for the block (`hold`: this process writes the run, i.e. the main process)."""
    if not hold:
        yield
        return
    lock = sibling(output_dir, LOCK_SUFFIX)
    lock.parent.mkdir(parents=True, exist_ok=True)
    mine = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
            "process_start": _process_start(os.getpid())}
    if not _create(lock, mine):
        holder = _read(lock)
        if not _is_stale(holder):
            raise FileExistsError(f"{output_dir} is in use by another run ({_describe(holder)}; lock file {lock}): wait "
                                  "for it to end or pick another --output_dir (--overwrite_output_dir does not take a "
                                  "folder in use; delete the lock file only if that run no longer runs).")
        logger.warning(f"{lock}: left by a run that no longer runs ({_describe(holder)}); taking it over.")
        if not _take_over(lock, holder, mine):
            raise FileExistsError(f"{output_dir} was taken by another run just now (lock file {lock}).")
    try:
        yield
    finally:
        if _read(lock) == mine:
            lock.unlink(missing_ok=True)


def _create(lock: Path, content: dict) -> bool:
    """The lock file with its whole content, or False if it exists: written beside it, then hard-linked (atomic)."""
    tmp = lock.with_name(f"{lock.name}.{os.getpid()}.{threading.get_ident()}.tmp")  # one per writer, threads too
    tmp.write_text(json.dumps(content))
    try:
        os.link(tmp, lock)
        return True
    except FileExistsError:
        return False
    finally:
        tmp.unlink(missing_ok=True)


def _take_over(lock: Path, stale: dict, mine: dict) -> bool:
    """Replace the stale lock `stale` with ours, one taker at a time: under an exclusive flock on the stale file
    itself, it is removed only if the path still names that file. A second run that judged the same lock stale gets
    the flock after the first has put its own lock in place, finds another file there, and stands back (False)."""
    try:
        handle = open(lock, "rb")
    except FileNotFoundError:  # removed since it was read: whoever links first has it
        return _create(lock, mine)
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # released when the handle closes
        try:
            unchanged = os.stat(lock).st_ino == os.fstat(handle.fileno()).st_ino
        except FileNotFoundError:
            unchanged = False
        if unchanged and _read(lock) == stale:
            lock.unlink()
        return _create(lock, mine)


def _read(lock: Path):
    try:
        return json.loads(lock.read_text())
    except (OSError, ValueError):
        return None


def _process_start(pid: int):
    """The process's start time in clock ticks since boot (/proc/PID/stat field 22): tells a reused pid apart."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def _is_stale(holder) -> bool:
    """A lock of this host whose process is gone (or whose pid now belongs to another process)."""
    if not isinstance(holder, dict) or holder.get("host") != socket.gethostname():
        return False  # unreadable, or another host's: cannot tell, so it stands
    pid = holder.get("pid")
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except (PermissionError, TypeError):
        return False
    return holder.get("process_start") is not None and _process_start(pid) != holder["process_start"]


def _describe(holder) -> str:
    if not isinstance(holder, dict):
        return "lock file unreadable"
    return f"pid {holder.get('pid')} on {holder.get('host')}, started {holder.get('started')}"


# ---- --overwrite_output_dir ----


def move_aside(output_dir) -> Path:
    """Rename the run in output_dir to OUTPUT_DIR.replaced (see the module docstring for a taken slot); returns it."""
    output_dir = Path(output_dir)
    slot = sibling(output_dir, REPLACED_SUFFIX)
    if slot.exists():
        if (output_dir / RESULTS_FILE).exists():  # a finished replacement of the slot's run
            shutil.rmtree(slot)
        else:
            logger.warning(f"--overwrite_output_dir: {output_dir} holds an unfinished attempt to replace the run in "
                           f"{slot}; the attempt is deleted, {slot} is kept until this run finishes.")
            shutil.rmtree(output_dir)
            return slot
    os.replace(output_dir, slot)
    logger.warning(f"--overwrite_output_dir: the run in {output_dir} was moved to {slot}; it is deleted when this run "
                   "finishes.")
    return slot


def discard_replaced(slot):
    """After this run wrote all_results.json: the run it replaced goes."""
    if slot is not None and Path(slot).exists():
        shutil.rmtree(slot)
        logger.info(f"{slot} deleted: this run replaced it.")

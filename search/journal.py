"""The study's journal file, read and written so that nothing is ever written after a record that cannot be parsed.

Optuna's JournalFileBackend appends whole records (one JSON line each, under the journal's lock, fsynced). Reading,
it skips an unterminated last line without a word, and raises a bare JSONDecodeError at a line that is not JSON once
a later line follows. A full disk, a kill mid-write or a cut copy leaves a torn last line; Optuna's next append then
lands right after the torn bytes, and from then on no reader can parse the study. `CheckedJournalFileBackend` instead:

- **A torn tail** (the file does not end in a newline) is repaired under the journal's lock, when the study is opened
  and before every append. When the tail is a whole record that lost only its newline, the newline is added. Otherwise
  the torn bytes are first copied to STUDY.journal.torn-<offset> (written and fsynced; a copy that cannot be written
  stops hpo.py with one line), and only then is the journal cut back to its last complete record at <offset>; a line
  on stderr says so. The torn record was never complete, so no reader ever saw it: every record of the study is kept.
  A trial whose last update was the torn record reads as it stood before it (RUNNING: it is taken over after the
  grace period and rerun, search/study.py).
- **A line that is not a record** (newline-terminated, but not a JSON object) is refused before anything is read or
  written: one line (SystemExit) naming the file, the line, its byte offset and the way out. Records after it cannot
  be trusted to follow it, so nothing is guessed.
"""

import json
import os
import sys
from pathlib import Path

from optuna.storages.journal import JournalFileBackend
from optuna.storages.journal._file import get_lock_file

TORN_SUFFIX = ".torn-"  # STUDY.journal.torn-<byte offset>: the torn bytes a repair cut off
BLOCK = 1 << 16


def first_bad_line(path) -> tuple | None:
    """(1-based line number, byte offset, reason) of the first newline-terminated line that is not a JSON object;
    None when every complete line is one. An unterminated last line is the torn tail's business (`torn_tail`)."""
    offset = 0
    with open(path, "rb") as f:
        for number, line in enumerate(f, start=1):
            if not line.endswith(b"\n"):
                return None
            reason = record_problem(line)
            if reason:
                return number, offset, reason
            offset += len(line)
    return None


def record_problem(line: bytes) -> str | None:
    """Why one journal line is not a record (None: it is one)."""
    try:
        record = json.loads(line)
    except (UnicodeDecodeError, ValueError) as error:
        return f"not JSON: {error}"
    return None if isinstance(record, dict) else f"a JSON {type(record).__name__}, not an object"


def bad_line_message(path, number: int, offset: int, reason: str) -> str:
    return (f"{path} line {number} (byte {offset}) is not a journal record ({reason}): Optuna cannot read the study "
            f"past it, and hpo.py writes nothing after it. Copy the file first; then restore it from a backup, or cut "
            f"it back to the records before that line (truncate -s {offset} {path}; the records from that line on are "
            "lost).")


def torn_tail(f) -> tuple:
    """(byte offset where the last line starts, its bytes) of an open journal whose last byte is not a newline; (size,
    b"") when it ends in one or is empty."""
    size = f.seek(0, os.SEEK_END)
    if size == 0:
        return 0, b""
    f.seek(size - 1)
    if f.read(1) == b"\n":
        return size, b""
    start = size - 1
    while start > 0:  # back to the newline that ends the last complete record
        block = max(0, start - BLOCK)
        f.seek(block)
        cut = f.read(start - block).rfind(b"\n")
        if cut >= 0:
            start = block + cut + 1
            break
        start = block
    f.seek(start)
    return start, f.read()


def repair_torn_tail(path) -> None:
    """Complete or cut back a torn last line (see the module docstring); the caller holds the journal's lock."""
    with open(path, "r+b") as f:
        offset, tail = torn_tail(f)
        if not tail:
            return
        if record_problem(tail) is None:  # a whole record that lost its newline
            f.seek(0, os.SEEK_END)
            f.write(b"\n")
            f.flush()
            os.fsync(f.fileno())
            print(f"{path}: its last record lacked its newline (a write cut short); the newline was added.",
                  file=sys.stderr, flush=True)
            return
        side = Path(f"{path}{TORN_SUFFIX}{offset}")
        try:
            with open(side, "wb") as copy:
                copy.write(tail)
                copy.flush()
                os.fsync(copy.fileno())
        except OSError as error:
            raise SystemExit(f"{path}: its last record, from byte {offset}, is torn (no newline at the end), and its "
                             f"bytes could not be saved to {side} ({error.strerror or error}): free space there and "
                             f"rerun, or copy the journal and cut it back yourself (truncate -s {offset} {path})."
                             ) from None
        f.truncate(offset)
        f.flush()
        os.fsync(f.fileno())
    print(f"{path}: its last record was torn (bytes {offset}-{offset + len(tail)} without a newline: a full disk, a "
          f"kill mid-write or a cut copy); they were saved to {side} and the journal was cut back to its last complete "
          f"record at byte {offset}.", file=sys.stderr, flush=True)


class CheckedJournalFileBackend(JournalFileBackend):
    """Optuna's JournalFileBackend that never writes after a record it cannot parse (see the module docstring)."""

    def __init__(self, file_path: str, lock_obj=None):
        super().__init__(file_path, lock_obj)
        with get_lock_file(self._lock):
            repair_torn_tail(file_path)
        self.refuse_bad_line()

    def refuse_bad_line(self):
        bad = first_bad_line(self._file_path)
        if bad:
            raise SystemExit(bad_line_message(self._file_path, *bad))

    def read_logs(self, log_number_from: int):
        try:
            yield from super().read_logs(log_number_from)
        except ValueError:  # json's JSONDecodeError, or Optuna's "Invalid log format.": a line written since opened
            self.refuse_bad_line()
            raise

    def append_logs(self, logs: list) -> None:
        # As JournalFileBackend.append_logs, with the tail repaired and the last record checked under the same lock.
        with get_lock_file(self._lock):
            repair_torn_tail(self._file_path)
            self.refuse_bad_last_line()
            text = "\n".join(json.dumps(log, separators=(",", ":")) for log in logs) + "\n"
            with open(self._file_path, "ab") as f:
                f.write(text.encode("utf-8"))
                f.flush()
                os.fsync(f.fileno())

    def refuse_bad_last_line(self):
        """The last record, read back to its line start: not a record, the whole file is scanned for the first bad
        line and refused (cheap on the path taken every append)."""
        with open(self._file_path, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            if size == 0:
                return
            start = max(0, size - BLOCK)
            f.seek(start)
            chunk = f.read()
        line = chunk[chunk.rfind(b"\n", 0, len(chunk) - 1) + 1:]
        if start > 0 and b"\n" not in chunk[:-1]:
            return  # a record longer than a block: checked when the study was opened
        if record_problem(line):
            self.refuse_bad_line()

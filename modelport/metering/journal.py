"""The usage journal: on a SQLite store, a usage event is appended to a file before the last byte
of its answer leaves, and the metering writer thread moves the journal into `usage_events` in
groups (recorder.py). Appending is one `write` of about 150 bytes into the operating system's
cache; committing the event in SQLite instead cost the request path 31-41 µs alone and more in
WAL checkpoints (BENCHMARKS.md, metering), because every commit rewrites whole pages.

What survives what: an appended event is in the operating system's cache, so it survives the
server being killed (kill -9), as a SQLite commit with synchronous=NORMAL (the store's setting)
does; not a power cut before the cache reaches the disk. A journal that was not moved completely
(a crash) is replayed by the next server on the same store: `usage_journal_marks` holds, per
journal, the byte position up to which its events are in `usage_events`, written in the same
transaction as those events, so a replay adds exactly what was not moved yet.

Each server process writes its own journal (a random name, `<hex>.usage`) and holds an exclusive
`flock` on it for its life; a journal nobody holds is a crashed process's and is replayed by
whichever server starts next (the lock keeps two from replaying one). A journal is started anew
every ROTATE_BYTES; a full one is deleted once all of it is moved.

An event line holds ids, counts, status, currency and prices, tab-separated: never anything of a
prompt or an output (P1). The directory is the owner's only (0700, files 0600).
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

log = logging.getLogger("modelport.metering")

SUFFIX = ".usage"
#: A journal is started anew after this many bytes (about 27,000 events); the full one is
#: deleted once it is moved.
ROTATE_BYTES = 4 << 20

Row = dict[str, Any]
#: (journal name, byte position just after an event): the writer records the largest it moved.
Position = tuple[str, int]


def journal_dir(database: str) -> Path:
    """The journals of the SQLite store in file `database`: a directory beside it."""
    path = Path(database)
    return path.with_name(path.name + ".usage-journal")


def _text(value: object) -> str:
    return "" if value is None else str(value)


#: An event's time is written as whole microseconds since this instant (exact, and a quarter of
#: the CPU of `isoformat`, 0.8 against 2.9 µs per event here: every request pays it). Journals of
#: releases before 2026-12-05 hold ISO 8601 times; `decode` reads both.
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MICROSECOND = timedelta(microseconds=1)


def encode(row: Row) -> bytes:
    """One event as a line (ids and counts only; none of them holds a tab or a newline)."""
    r = row
    return (f"{(r['at'] - EPOCH) // MICROSECOND}\t{r['workspace_id']}\t{r['deployment_id']}\t{r['model_id']}\t"
            f"{_text(r['offer_id'])}\t{_text(r['subscription_id'])}\t{r['api']}\t{int(r['input_tokens'])}\t"
            f"{int(r['output_tokens'])}\t{r['status']}\t{_text(r['currency'])}\t{_text(r['input_price'])}\t"
            f"{_text(r['output_price'])}\n").encode()


def decode(line: str) -> Row:
    """The event of one line (ValueError if it is not one)."""
    parts = line.rstrip("\n").split("\t")
    if len(parts) != 13:
        raise ValueError(f"{len(parts)} fields, expected 13")
    at, ws, dep, model, offer, sub, api, n_in, n_out, status, currency, p_in, p_out = parts
    if at.isdigit():
        when = EPOCH + timedelta(microseconds=int(at))
    else:  # a journal of an earlier release
        when = datetime.fromisoformat(at)
        if when.tzinfo is None:
            raise ValueError("a naive time")
    return {"at": when, "workspace_id": ws, "deployment_id": dep, "model_id": model, "offer_id": offer or None,
            "subscription_id": sub or None, "api": api, "input_tokens": int(n_in), "output_tokens": int(n_out),
            "status": status, "currency": currency or None, "input_price": Decimal(p_in) if p_in else None,
            "output_price": Decimal(p_out) if p_out else None, "aggregated": False}


class Journal:
    """This process's journal: appended to by the request path, in order, under `lock`."""

    def __init__(self, directory: Path, rotate_bytes: int | None = None) -> None:
        self.dir = directory
        self.rotate_bytes = rotate_bytes or ROTATE_BYTES
        self.lock = threading.Lock()
        self.name = ""
        self.size = 0
        self._fd = -1
        # journals whose every event is appended (rotated, or a crashed process's being replayed):
        # name -> (open descriptor holding the lock, final position); deleted once moved
        self.finished: dict[str, tuple[int, int]] = {}

    def open(self) -> None:
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.dir, 0o700)
        with self.lock:
            self._start_file()

    def _start_file(self) -> None:
        name = f"{uuid.uuid4().hex}{SUFFIX}"
        fd = os.open(self.dir / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a new file: nobody else holds it
        except OSError:
            os.close(fd)
            raise
        if self._fd >= 0:
            self.finished[self.name] = (self._fd, self.size)
        self._fd, self.name, self.size = fd, name, 0

    def append(self, row: Row, then: Callable[[Position], None]) -> None:
        """Append `row` and call `then` with its position, both under the lock (so positions reach
        the writer in the order they were written). Raises OSError if it could not be written, and
        only then: once the line is in, the event is durable and queued, whatever follows."""
        data = encode(row)
        with self.lock:
            if self._fd < 0:
                raise OSError("the usage journal is closed")
            if os.write(self._fd, data) != len(data):  # a short write: the disk is full
                os.ftruncate(self._fd, self.size)  # the line is not left half-written
                raise OSError("the usage journal could not take the whole event")
            self.size += len(data)
            then((self.name, self.size))
            if self.size >= self.rotate_bytes:
                try:
                    self._start_file()
                except OSError:  # the next append tries again; this one is in
                    log.warning("could not start a new usage journal; appending to the full one", exc_info=True)

    def moved(self, name: str, position: int) -> bool:
        """Whether `name` is finished and `position` is its end: it may be deleted."""
        done = self.finished.get(name)
        return done is not None and done[1] == position

    def delete(self, name: str) -> None:
        """Delete a finished journal whose events are all in the database (its mark goes after)."""
        fd, _ = self.finished.pop(name)
        try:
            (self.dir / name).unlink(missing_ok=True)
        finally:
            os.close(fd)

    def close(self, *, delete: bool) -> None:
        """Stop appending; delete the current journal if all of it was moved (`delete`)."""
        with self.lock:
            fd, self._fd = self._fd, -1
        if fd >= 0:
            if delete:
                (self.dir / self.name).unlink(missing_ok=True)
            os.close(fd)  # releases the lock: a journal left here is replayed by the next server
        for name in list(self.finished):  # finished ones not moved yet: kept for a replay
            fd, _ = self.finished.pop(name)
            os.close(fd)

    def orphans(self) -> list[tuple[str, int]]:
        """Journals no live process holds (a crashed one's), each now locked by this one and
        registered as finished at its end: [(name, descriptor)]."""
        out = []
        for path in sorted(self.dir.glob(f"*{SUFFIX}")):
            if path.name == self.name or path.name in self.finished:
                continue
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
            except FileNotFoundError:  # another server replayed and deleted it meanwhile
                continue
            except OSError:  # a link or something else that is not a journal this server wrote
                log.warning("%s in the usage journal directory is not a journal; left alone", path.name)
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:  # a live process's journal
                os.close(fd)
                continue
            if not path.exists():  # replayed and deleted by another server before the lock was ours
                os.close(fd)
                continue
            out.append((path.name, fd))
        return out

    def replay(self, name: str, fd: int, start: int) -> list[tuple[Row, Position]]:
        """The events of orphan `name` after byte `start`, with their positions; the journal is
        registered as finished at the end of its last whole line (a line cut by a crash is not
        an event: it was never acknowledged)."""
        os.lseek(fd, start, os.SEEK_SET)
        chunks = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
        data = b"".join(chunks)
        out: list[tuple[Row, Position]] = []
        pos = start
        bad = 0
        end = data.rfind(b"\n") + 1
        for line in data[:end].splitlines(keepends=True):
            pos += len(line)
            try:
                out.append((decode(line.decode()), (name, pos)))
            except (ValueError, UnicodeDecodeError, ArithmeticError):
                bad += 1
        if bad:
            log.warning("usage journal %s: %d line(s) that are not usage events were skipped", name, bad)
        self.finished[name] = (fd, start + end)
        return out

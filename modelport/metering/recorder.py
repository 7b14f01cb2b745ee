"""Usage events on the request path: one per inference request that reached a worker, written
with group commit: in the event loop itself when the store is SQLite and not busy, by one writer
thread otherwise.

`record_durable` returns once the event is committed: the handlers await it before the last
byte of an answer leaves (the end of a non-streamed body, a stream's `[DONE]` or its final
error event), so an answer whose last byte was sent is always billed, whatever happens to the
server afterwards. Requests that finish in the same turn of the event loop, or while a commit is
running, are written together in one transaction (group commit): at load, one commit serves many
requests. `record` queues an event without waiting (a stream the client cut: nobody reads its end).

A request in flight when the server dies (kill -9) has no event, or the one queued before it
died if its commit finished: it is billed at most what was generated.

What one event costs the request path is kept small, because every request pays it
(benchmarks/bench_gateway.py measures it against a server without metering). On two cores,
handing an event from the event loop to a thread and the answer back costs more than the commit
itself, so:

- SQLite (a file): the events of one turn of the loop are committed by the loop, on a connection
  of its own that never waits for a lock (busy_timeout 0) and never checkpoints
  (wal_autocheckpoint 0): a commit is an INSERT and a write into the WAL file, tens of
  microseconds. The loop never opens that connection (taking it from the pool may wait): `start`
  does, before any request, and the writer thread does again after the database refused a write
  on it; meanwhile the loop's groups go to the thread. After a checkpoint the thread makes the next
  write (SQLite syncs the WAL's header when it starts the file over: that fsync is the thread's).
  If the database is busy (another writer holds the lock: the writer thread, a control-plane
  write, another server) or refuses the write, nothing of it was written and the events go to
  the writer thread, which waits for the lock and retries; the requests wait for it.
  The writer thread runs the checkpoints the loop's connection does not: PASSIVE every
  CHECKPOINT_EVERY commits of the loop and RESTART every RESTART_EVERY, so the WAL stays bounded;
- PostgreSQL (a commit is a network round trip: it must not hold the loop), and SQLite while
  the writer thread has a refused backlog: the request path puts the event on a
  `queue.SimpleQueue` (C code, no lock of ours) and awaits a future; the writer thread wakes,
  drains the queue, writes, and resolves the futures of a commit with one wake-up of their event
  loop, not one per future;
- both writers own one DB-API connection for their life and write each group with the driver's
  own `executemany` of one prepared INSERT and a commit (no SQLAlchemy connection checkout,
  reset or statement execution per group: those cost more than the write itself). Values are
  converted by the columns' own SQLAlchemy bind processors, so rows are stored exactly as the
  ORM stores them (UTC datetimes, Decimal prices as text);
- on SQLite the connections have the store's settings (WAL, synchronous=NORMAL, db/engine.py): a
  commit is a write into the WAL file, not an fsync. A committed event survives the process
  being killed (kill -9: the WAL is in the operating system's cache; tests/metering/
  test_kill9.py), not a power cut or a kernel crash since the last checkpoint. PostgreSQL keeps
  its own durability settings.

`on_commit` hears of every committed group before its requests are answered, in the thread that
committed it (the event loop's or the writer's): it must not block (budgets count in memory and
hand their audit writes to a thread).

If the database refuses a write, the events stay queued and are tried again every
RETRY_SECONDS; the requests waiting on them get ServiceUnavailable (their answers are not sent):
all of them, however many events the writer already holds.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from datetime import datetime
from decimal import Decimal
from typing import Any, cast

from sqlalchemy import Table

from modelport.db.base import utcnow
from modelport.db.engine import Database
from modelport.db.tables import UsageEvent
from modelport.errors import ServiceUnavailable
from modelport.offload import run_blocking

log = logging.getLogger("modelport.metering")

#: Events written in one transaction at most (a larger backlog takes several).
MAX_BATCH = 2000
#: How long a failed write waits before it is tried again.
RETRY_SECONDS = 0.5
#: The event loop's commits between two PASSIVE checkpoints by the writer thread (SQLite). While
#: the loop keeps committing, a PASSIVE one seldom catches up with the end of the WAL, so the file
#: is not started over; it moves pages into the database without holding anyone up.
CHECKPOINT_EVERY = 500
#: ... and between two RESTART checkpoints: writers wait for it (the loop hands its groups to the
#: writer thread meanwhile) and the next write starts the WAL file from its beginning, which
#: bounds it (about 13 MB at 1 client, a commit per event; tests/metering/test_recorder.py). Each
#: checkpoint costs two fsyncs and copies the pages the commits since the last one touched (the
#: same few pages, appended to, again and again): every 100/200 commits cost 64.3 µs CPU per event
#: at one client (a WAL of about 3 MB), every 500/1000 55.0 µs (a WAL of about 13 MB; BENCHMARKS.md,
#: 2026-12-03 meter-h).
RESTART_EVERY = 1000
#: How long a RESTART checkpoint waits for readers (it holds off writers meanwhile).
RESTART_WAIT_MS = 100

Waiter = tuple[asyncio.AbstractEventLoop, asyncio.Future]
Row = dict[str, Any]


def usage_row(*, workspace_id: str, deployment_id: str, model_id: str, api: str, input_tokens: int,
              output_tokens: int, status: str, offer_id: str | None = None, subscription_id: str | None = None,
              currency: str | None = None, input_price: Decimal | None = None, output_price: Decimal | None = None,
              at: datetime | None = None) -> Row:
    """One usage event as a plain dict (an ORM object per request costs measurable CPU)."""
    return {"at": at or utcnow(), "workspace_id": workspace_id, "deployment_id": deployment_id,
            "model_id": model_id, "offer_id": offer_id, "subscription_id": subscription_id, "api": api,
            "input_tokens": int(input_tokens), "output_tokens": int(output_tokens), "status": status,
            "currency": currency, "input_price": input_price, "output_price": output_price, "aggregated": False}


class _Barrier:
    """A mark in the queue: set once every event queued before it is committed."""

    __slots__ = ("event",)

    def __init__(self) -> None:
        self.event = threading.Event()


class _Stop:
    """A mark in the queue: the writer commits what came before it, then ends."""


class _Checkpoint:
    """A mark in the queue: the writer thread checkpoints the WAL (SQLite, after the loop's commits)."""

    __slots__ = ("mode",)

    def __init__(self, mode: str) -> None:
        self.mode = mode  # PASSIVE | RESTART


class _Insert:
    """The usage-event INSERT in the driver's own dialect, with the columns' bind processors."""

    def __init__(self, db: Database) -> None:
        dialect = db.engine.dialect
        table = cast(Table, UsageEvent.__table__)  # a mapped class's table is a Table
        columns = [c for c in table.columns if c.name != "id"]
        self.names = [c.name for c in columns]
        # sqlite3 takes `?`; psycopg takes `%s` (its paramstyle, "pyformat", includes the positional form)
        mark = "?" if dialect.paramstyle == "qmark" else "%s"
        # only the table's own column names and placeholders: no value is ever put in the text
        self.sql = (f"INSERT INTO {table.name} ({', '.join(self.names)}) "  # noqa: S608
                    f"VALUES ({', '.join(mark for _ in columns)})")
        self.processors = [(i, p) for i, c in enumerate(columns)
                           if (p := c.type.dialect_impl(dialect).bind_processor(dialect)) is not None]

    def params(self, rows: list[Row]) -> list[list[Any]]:
        names, processors = self.names, self.processors
        out = []
        for r in rows:
            values = [r[n] for n in names]
            for i, p in processors:
                values[i] = p(values[i])
            out.append(values)
        return out


def _is_busy(exc: sqlite3.Error) -> bool:
    """SQLITE_BUSY or SQLITE_LOCKED, extended codes included: another connection holds the lock."""
    return getattr(exc, "sqlite_errorcode", 0) & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


def loop_commits_possible(db: Database) -> bool:
    """The event loop may commit usage events itself: a SQLite database in a file (a commit is a
    write into the WAL, not a network round trip; an in-memory database has one connection)."""
    url = db.engine.url
    return url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:")


class _LoopWriter:
    """The event loop's own SQLite connection: commits a group at once or not at all (never waits
    for a lock, never checkpoints). Used by one thread at a time (a lock taken without waiting)."""

    def __init__(self, db: Database, insert: _Insert) -> None:
        self.db = db
        self.insert = insert
        self.lock = threading.Lock()
        self._proxy: Any = None  # the pool's wrapper, detached: closing it closes the connection
        self._conn: sqlite3.Connection | None = None
        self.closed = False
        self.commits = 0
        # After a checkpoint the writer thread makes the next write (SQLite syncs the WAL's header
        # when it starts the file over: that fsync must not fall on the loop); set by the loop
        # when it asks for a checkpoint, cleared by the thread after its first write since.
        self.thread_turn = False

    @property
    def needs_connection(self) -> bool:
        return self._conn is None and not self.closed

    def open(self) -> None:
        """Open the loop's connection: on the writer thread, never on the loop (taking it from the
        pool may wait for a free one, and the store's settings wait for the lock)."""
        with self.lock:
            if self._conn is not None or self.closed:
                return
            proxy = self.db.engine.raw_connection()  # with the store's settings (db/engine.py)
            conn = cast(sqlite3.Connection, proxy.driver_connection)
            proxy.detach()  # never back to the pool with the settings below
            conn.execute("PRAGMA busy_timeout=0")
            conn.execute("PRAGMA wal_autocheckpoint=0")
            self._proxy, self._conn = proxy, conn

    def write(self, rows: list[Row]) -> bool:
        """Commit `rows` in one transaction; False if nothing was written (busy, refused, in use)."""
        if not self.lock.acquire(blocking=False):
            return False
        try:
            conn = self._conn
            if conn is None or self.thread_turn:  # stopped, not open yet, or after a checkpoint
                return False
            try:
                conn.executemany(self.insert.sql, self.insert.params(rows))
                conn.commit()
            except sqlite3.Error as exc:
                try:
                    conn.rollback()
                except sqlite3.Error:
                    pass
                if not _is_busy(exc):  # refused (the writer thread logs it): a fresh connection next time
                    self._discard()
                return False
            self.commits += 1
            return True
        finally:
            self.lock.release()

    def close(self) -> None:
        with self.lock:
            self.closed = True
            self._discard()

    def _discard(self) -> None:
        proxy, self._proxy, self._conn = self._proxy, None, None
        if proxy is not None:
            try:
                proxy.close()
            except Exception:
                log.exception("could not close the metering connection of the event loop")


class MeterRecorder:
    """Writes usage events in group commits: from the event loop (SQLite, not busy) or one thread."""

    #: Whether the event loop may commit (SQLite); False sends every event through the writer
    #: thread (benchmarks/bench_metering.py and bench_gateway.py --thread-commits compare them).
    commit_in_loop = True

    def __init__(self, db: Database, on_commit: Callable[[list[Row]], None] | None = None,
                 on_record: Callable[[Row], None] | None = None) -> None:
        self.db = db
        self.on_commit = on_commit  # told of every committed batch (budgets count spending from it)
        # told of every event as it is recorded, on the request path, in the request's context
        # (tokens per minute are settled from it: quotas/settle.py)
        self.on_record = on_record
        self._queue: queue.SimpleQueue[tuple[Row, Waiter | None] | _Barrier | _Stop | _Checkpoint] = (
            queue.SimpleQueue())
        self._thread: threading.Thread | None = None
        self._inline = threading.Lock()  # without the thread: one inline writer at a time
        self._insert: _Insert | None = None
        self._conn: Any = None  # the writer's DB-API connection (a pooled one, held for its life)
        self._loop_writer: _LoopWriter | None = None  # while the writer thread runs, on SQLite
        self._batches: dict[asyncio.AbstractEventLoop, list[tuple[Row, asyncio.Future]]] = {}
        self._failing = False  # the writer thread holds events the database refused
        self._tasks: set[asyncio.Task] = set()
        self.commits = 0  # transactions written by the writer thread (the benchmarks report events per commit)
        self.loop_commits = 0  # ... and by the event loop
        self.checkpoints = 0  # WAL checkpoints the writer thread ran for the loop's connection

    # -- the request path -----------------------------------------------------------------

    def record(self, row: Row) -> None:
        """Queue an event; it is written with the next commit."""
        if self.on_record is not None:
            self.on_record(row)
        self._queue.put((row, None))

    async def record_durable(self, row: Row) -> None:
        """Queue an event and return once it is committed (raises ServiceUnavailable if the
        database refused it; the event stays queued and is written when the database is back)."""
        if self.on_record is not None:
            self.on_record(row)
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        if self._loop_writer is not None and not self._failing:
            batch = self._batches.get(loop)
            if batch is None:  # the first of this turn of the loop: commit the group at the end of it
                batch = self._batches[loop] = []
                loop.call_soon(self._commit_in_loop, loop)
            batch.append((row, fut))
        else:
            self._queue.put((row, (loop, fut)))
            if self._thread is None:  # not started (a test app without lifespan): write now
                await run_blocking(self.flush)
        await fut

    def _commit_in_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        """Commit the loop's group now, or hand it to the writer thread if the database is busy."""
        batch = self._batches.pop(loop, [])
        rows = [r for r, _ in batch]
        writer = self._loop_writer
        if writer is not None and writer.write(rows):
            self.loop_commits += 1
            self._committed(rows)
            for _, fut in batch:
                if not fut.done():
                    fut.set_result(None)
            n = writer.commits
            if n % CHECKPOINT_EVERY == 0:
                writer.thread_turn = True
                self._queue.put(_Checkpoint("RESTART" if n % RESTART_EVERY == 0 else "PASSIVE"))
            return
        for row, fut in batch:  # nothing was written: the writer thread waits for the lock
            self._queue.put((row, (loop, fut)))
        if self._thread is None:  # stopped meanwhile (shutdown): write inline, off the loop
            task = loop.create_task(self._flush_quietly())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _flush_quietly(self) -> None:
        try:
            await run_blocking(self.flush)
        except ServiceUnavailable:  # the waiting requests were told
            log.warning("usage events could not be written at shutdown; they stay queued")

    # -- the writer -------------------------------------------------------------------------

    def start(self) -> None:
        """Start the writer thread (and, on SQLite, open the loop's connection: at startup, before
        any request; if that fails, or the connection is later refused, the thread opens it)."""
        if self._thread is None:
            if self.commit_in_loop and loop_commits_possible(self.db):
                writer = _LoopWriter(self.db, self._statement())
                try:
                    writer.open()
                except Exception:
                    log.warning("could not open the event loop's metering connection; the writer thread "
                                "commits until it can", exc_info=True)
                self._loop_writer = writer
            self._thread = threading.Thread(target=self._run, name="metering-writer", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Write what is queued, then stop the writer."""
        writer, self._loop_writer = self._loop_writer, None
        if writer is not None:  # groups the loops have not committed yet go to the thread
            writer.close()
        thread = self._thread
        if thread is not None:
            self._queue.put(_Stop())
            thread.join(timeout=30)
            if thread.is_alive():  # the database refuses the rest: the writer keeps trying until exit
                log.error("usage events could not be written before shutdown; the writer keeps trying")
                return
            self._thread = None
        self.flush()  # what was queued after the stop mark (and the flushes that waited behind it)
        self._close()

    def flush(self, timeout: float = 30.0) -> None:
        """Return once every event queued before the call is committed (raises ServiceUnavailable
        if the database refuses them for longer than `timeout`)."""
        thread = self._thread
        if thread is not None and thread.is_alive():
            barrier = _Barrier()
            self._queue.put(barrier)
            if not barrier.event.wait(timeout):
                raise ServiceUnavailable("Usage could not be recorded yet (the database refused it); retry shortly.")
            return
        with self._inline:  # no writer: write inline
            backlog: list[tuple[Row, Waiter | None]] = []
            barriers: list[_Barrier] = []
            while True:
                self._drain(backlog, barriers, block=False)
                if not backlog:
                    break
                batch, backlog[:] = backlog[:MAX_BATCH], backlog[MAX_BATCH:]
                if not self._write(batch):
                    for row, _ in batch + backlog:  # kept for a later flush (their waiters were told)
                        self._queue.put((row, None))
                    raise ServiceUnavailable("Usage could not be recorded (the database refused it); retry shortly.")
            for b in barriers:
                b.event.set()

    def _drain(self, backlog: list[tuple[Row, Waiter | None]], barriers: list[_Barrier], *, block: bool,
               checkpoints: list[str] | None = None, everything: bool = False) -> bool:
        """Move queued events into `backlog` (until it holds MAX_BATCH, or all of them with
        `everything`; waiting for the first one if `block`), barriers into `barriers`, checkpoint
        marks into `checkpoints`; False once a stop mark was taken."""
        get, get_nowait = self._queue.get, self._queue.get_nowait
        try:
            item = get() if block else get_nowait()
            while True:
                if isinstance(item, tuple):
                    backlog.append(item)
                elif isinstance(item, _Barrier):
                    barriers.append(item)
                elif isinstance(item, _Checkpoint):
                    if checkpoints is not None:
                        checkpoints.append(item.mode)
                else:
                    return False
                if len(backlog) >= MAX_BATCH and not everything:
                    return True
                item = get_nowait()
        except queue.Empty:
            return True

    def _run(self) -> None:
        backlog: list[tuple[Row, Waiter | None]] = []
        barriers: list[_Barrier] = []
        checkpoints: list[str] = []
        running = True
        checkpointed = False  # a checkpoint ran and this thread has not written since
        while running or backlog:
            loop_writer = self._loop_writer
            if loop_writer is not None and loop_writer.needs_connection and not backlog and not self._failing:
                # between groups (a group in hand is written first): at start, and after the loop's
                # connection was refused and discarded
                try:
                    loop_writer.open()
                except Exception:  # the loop keeps handing its groups to this thread
                    log.warning("could not open the event loop's metering connection", exc_info=True)
            if running:
                # while the database refuses, take everything queued: every waiting request is told
                running = self._drain(backlog, barriers, block=not backlog, checkpoints=checkpoints,
                                      everything=self._failing)
            if checkpoints and not backlog:
                checkpointed = self._checkpoint_asked(checkpoints)
            if not backlog:
                for b in barriers:
                    b.event.set()
                barriers.clear()
                continue
            batch = backlog[:MAX_BATCH]
            if self._write(batch):
                del backlog[:len(batch)]
                if checkpointed:  # this write started the WAL over (and synced it): the loop may write again
                    checkpointed = False
                    if loop_writer is not None:
                        loop_writer.thread_turn = False
                if not backlog:
                    for b in barriers:
                        b.event.set()
                    barriers.clear()
                    if checkpoints:  # its requests are answered: checkpoint before waiting for more
                        checkpointed = self._checkpoint_asked(checkpoints)
            else:
                # the batch's requests were answered with an error by _write; so are the others
                # held here, and their events stay queued for the next try
                _resolve_all(backlog[len(batch):], ServiceUnavailable(
                    "Usage could not be recorded; the answer was not sent. Retry."))
                backlog[:] = [(row, None) for row, _ in backlog]
                time.sleep(RETRY_SECONDS)
        for b in barriers:
            b.event.set()

    def _statement(self) -> _Insert:
        if self._insert is None:
            self._insert = _Insert(self.db)
        return self._insert

    def _connection(self) -> Any:
        if self._conn is None:
            self._conn = self.db.engine.raw_connection()
            self._statement()
        return self._conn

    def _checkpoint_asked(self, checkpoints: list[str]) -> bool:
        """Run the checkpoint the loop asked for (the strongest of those pending); True: ran."""
        self._checkpoint("RESTART" if "RESTART" in checkpoints else "PASSIVE")
        checkpoints.clear()
        return True

    def _checkpoint(self, mode: str) -> None:
        """Checkpoint the WAL for the loop's connection, which never does (SQLite). A RESTART waits
        for readers at most RESTART_WAIT_MS (writers wait meanwhile); what it cannot do, the next one does."""
        try:
            cursor = self._connection().cursor()
            try:
                if mode == "RESTART":
                    cursor.execute(f"PRAGMA busy_timeout={RESTART_WAIT_MS}")
                try:
                    cursor.execute(f"PRAGMA wal_checkpoint({mode})")
                    cursor.fetchall()
                    self.checkpoints += 1
                finally:
                    if mode == "RESTART":
                        cursor.execute("PRAGMA busy_timeout=10000")  # the store's setting (db/engine.py)
            finally:
                cursor.close()
        except Exception:
            log.warning("could not checkpoint the usage store's WAL; the next checkpoint tries again", exc_info=True)

    def _close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()  # back to the engine's pool
            except Exception:
                log.exception("could not close the metering connection")

    def _write(self, batch: list[tuple[Row, Waiter | None]]) -> bool:
        rows = [r for r, _ in batch]
        try:
            conn = self._connection()
            assert self._insert is not None
            cursor = conn.cursor()
            try:
                cursor.executemany(self._insert.sql, self._insert.params(rows))
            finally:
                cursor.close()
            conn.commit()
        except Exception:
            log.exception("could not write usage events; they stay queued")
            conn, self._conn = self._conn, None
            if conn is not None:
                try:
                    conn.invalidate()  # a fresh connection for the next try
                except Exception:
                    log.exception("could not discard the metering connection")
            self._failing = True  # new events go to this thread until the database takes them
            _resolve_all(batch, ServiceUnavailable("Usage could not be recorded; the answer was not sent. Retry."))
            return False
        self._failing = False
        self.commits += 1
        self._committed(rows)
        _resolve_all(batch, None)
        return True

    def _committed(self, rows: list[Row]) -> None:
        if self.on_commit is not None:  # before the answers leave: a spent budget refuses the next call
            try:
                self.on_commit(rows)
            except Exception:
                log.exception("usage commit listener failed")


def _resolve_all(batch: list[tuple[Row, Waiter | None]], exc: BaseException | None) -> None:
    """Settle the futures of a batch: one wake-up per event loop, whatever the batch's size."""
    by_loop: dict[asyncio.AbstractEventLoop, list[asyncio.Future]] = {}
    for _, w in batch:
        if w is not None:
            by_loop.setdefault(w[0], []).append(w[1])
    for loop, futures in by_loop.items():
        try:
            loop.call_soon_threadsafe(_settle, futures, exc)
        except RuntimeError:  # the loop is closed: nobody waits any more
            pass


def _settle(futures: list[asyncio.Future], exc: BaseException | None) -> None:
    for fut in futures:
        if not fut.done():
            if exc is None:
                fut.set_result(None)
            else:
                fut.set_exception(exc)

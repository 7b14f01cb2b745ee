"""Usage events on the request path: one per inference request that reached a worker, made
durable before the last byte of its answer leaves, written to the database in group commits by one
writer thread.

`record_durable` returns once the event is durable: the handlers await it before the last byte
of an answer leaves (the end of a non-streamed body, a stream's `[DONE]` or its final error
event), so an answer whose last byte was sent is always billed, whatever happens to the server
afterwards. `record` queues an event without waiting (a stream the client cut: nobody reads its
end). What one event costs the request path is kept small, because every request pays it
(benchmarks/bench_gateway.py measures it against a server without metering):

- SQLite in a file (the embedded default): the event is appended to this process's usage journal
  (metering/journal.py: one `write` of a line of ids and counts; durable against kill -9, as a
  SQLite commit with synchronous=NORMAL is) and the request goes on at once. The writer thread
  moves journaled events into `usage_events` in groups, LINGER_SECONDS apart at most (a flush
  does not wait), with the journal's position in `usage_journal_marks` in the same transaction;
  the next server replays what a crash left. A database that refuses writes delays the move, not
  the answers: the events are in the journal. Committing each event in SQLite instead (the event
  loop committed each turn's group until 2026-12-04) cost 31-41 µs a commit plus its share of
  checkpoints at one client, over the 50 µs budget for metering and the quota check together;
- PostgreSQL (a commit is a network round trip, and the store is the durable place, not a local
  file), an in-memory SQLite, and with `journal = False`: the request path puts the event on a
  `queue.SimpleQueue` (C code, no lock of ours) and awaits a future; the writer thread wakes,
  drains the queue, writes, and resolves the futures of a commit with one wake-up of their event
  loop, not one per future. If the database refuses a write, the events stay queued and are tried
  again every RETRY_SECONDS; the requests waiting on them get ServiceUnavailable (their answers
  are not sent): all of them, however many events the writer already holds;
- the writer owns one DB-API connection for its life and writes each group with the driver's own
  `executemany` of one prepared INSERT and a commit (no SQLAlchemy connection checkout, reset or
  statement execution per group: those cost more than the write itself). Values are converted by
  the columns' own SQLAlchemy bind processors, so rows are stored exactly as the ORM stores them
  (UTC datetimes, Decimal prices as text).

A request in flight when the server dies (kill -9) has no event, or the one made durable before
it died: it is billed at most what was generated.

Each group is added into the hourly meters (`usage_meters`, metering/aggregation.py's `add_up`)
in the transaction that writes it, and its events are stored aggregated: an aggregation pass
reading them back cost more CPU than the requests themselves (BENCHMARKS.md, 2026-12-04).

`on_commit` hears of every event once it is durable, before its request is answered: journaled
events in the request's thread as they are appended, others in the writer thread after their
commit. It must not block (budgets count in memory and hand their audit writes to a thread).
Events replayed from a crashed server's journal are not told (budgets reload their spending from
the meters).
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable
from datetime import datetime
from decimal import Decimal
from typing import Any, cast

from sqlalchemy import Table

from modelport.db.base import utcnow
from modelport.db.engine import Database
from modelport.db.tables import UsageEvent, UsageMeter
from modelport.errors import ServiceUnavailable
from modelport.metering.aggregation import add_up
from modelport.metering.journal import Journal, Position, journal_dir
from modelport.offload import run_blocking

log = logging.getLogger("modelport.metering")

#: Events written in one transaction at most (a larger backlog takes several).
MAX_BATCH = 2000
#: How long a failed write waits before it is tried again.
RETRY_SECONDS = 0.5
#: How long the writer thread lets journaled events gather before it moves them (a flush or a
#: stop does not wait; a usage report flushes first). Each wake-up and commit has a fixed cost:
#: at one client the writer spent 38 µs CPU per event at 0.05 s (about 23 events a commit) and
#: 16 µs at 0.5 s (profile_metering.py --gc-only, 2026-12-04). Only another replica's budget
#: reload sees events this much later.
LINGER_SECONDS = 0.5

Waiter = tuple[asyncio.AbstractEventLoop, asyncio.Future]
Row = dict[str, Any]
#: A queued event: the row, the future of a request awaiting its commit (None: nobody waits or it
#: is journaled) and its journal position (None: not journaled).
Item = tuple[Row, Waiter | None, Position | None]


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


class _Insert:
    """The usage-event INSERT in the driver's own dialect, with the columns' bind processors, and
    the journal mark's upsert (SQLite and PostgreSQL share its syntax)."""

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
        self.aggregated = self.names.index("aggregated")
        self.aggregated_true = next((p(True) for i, p in self.processors if i == self.aggregated), True)
        # the events' sums into their hourly meters (metering/aggregation.py), in the same transaction
        meters = cast(Table, UsageMeter.__table__)
        meter_columns = [c for c in meters.columns if c.name != "id"]
        key = [c.name for c in meter_columns if c.name not in ("quantity", "requests")]
        self.meter_sql = (f"INSERT INTO {meters.name} ({', '.join(c.name for c in meter_columns)}) "  # noqa: S608
                          f"VALUES ({', '.join(mark for _ in meter_columns)}) "
                          f"ON CONFLICT ({', '.join(key)}) DO UPDATE SET "
                          f"quantity = {meters.name}.quantity + excluded.quantity, "
                          f"requests = {meters.name}.requests + excluded.requests")
        self.meter_processors = [(i, p) for i, c in enumerate(meter_columns)
                                 if (p := c.type.dialect_impl(dialect).bind_processor(dialect)) is not None]
        self.mark_sql = (f"INSERT INTO usage_journal_marks (journal, position) VALUES ({mark}, {mark}) "  # noqa: S608
                         "ON CONFLICT (journal) DO UPDATE SET position = excluded.position")
        self.mark_read = f"SELECT position FROM usage_journal_marks WHERE journal = {mark}"  # noqa: S608
        self.mark_delete = f"DELETE FROM usage_journal_marks WHERE journal = {mark}"  # noqa: S608

    def params(self, rows: list[Row]) -> list[list[Any]]:
        """The INSERT's parameters: each event stored aggregated (its meters are in `meter_params`)."""
        names, processors, aggregated, done = self.names, self.processors, self.aggregated, self.aggregated_true
        out = []
        for r in rows:
            values = [r[n] for n in names]
            for i, p in processors:
                values[i] = p(values[i])
            values[aggregated] = done
            out.append(values)
        return out

    def meter_params(self, rows: list[Row]) -> list[list[Any]]:
        """The upserts of the events' hourly meters, in key order (two writers on PostgreSQL lock
        meter rows in the same order: no deadlock)."""
        sums = add_up((r["at"], r["workspace_id"], r["deployment_id"], r["model_id"], r["offer_id"],
                       r["subscription_id"], r["currency"], r["input_tokens"], r["input_price"], r["output_tokens"],
                       r["output_price"]) for r in rows)
        out = []
        for k in sorted(sums):
            values = [*k, *sums[k]]
            for i, p in self.meter_processors:
                values[i] = p(values[i])
            out.append(values)
        return out


def journal_possible(db: Database) -> bool:
    """Usage events may be journaled: a SQLite database in a file (the journal lies beside it; an
    in-memory database has nowhere to replay into)."""
    url = db.engine.url
    return url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:")


class MeterRecorder:
    """Makes usage events durable on the request path (the journal, or a commit awaited) and writes
    them in group commits from one thread."""

    #: Whether events are journaled where the store allows it (SQLite in a file); False sends every
    #: event through the writer thread with a future to await (benchmarks/bench_gateway.py
    #: --no-journal compares them).
    journal = True

    def __init__(self, db: Database, on_commit: Callable[[list[Row]], None] | None = None,
                 on_record: Callable[[Row], None] | None = None) -> None:
        self.db = db
        self.on_commit = on_commit  # told of every durable event (budgets count spending from it)
        # told of every event as it is recorded, on the request path, in the request's context
        # (tokens per minute are settled from it: quotas/settle.py)
        self.on_record = on_record
        self._queue: queue.SimpleQueue[Item | _Barrier | _Stop] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._wake = threading.Event()  # ends the writer's linger (a flush, a stop)
        self._inline = threading.Lock()  # without the thread: one inline writer at a time
        self._insert: _Insert | None = None
        self._conn: Any = None  # the writer's DB-API connection (a pooled one, held for its life)
        self._journal: Journal | None = None  # while the writer runs, on a SQLite file
        self._replayed = False  # this writer looked for crashed servers' journals
        self._failing = False  # the writer thread holds events the database refused
        self.commits = 0  # transactions written (the benchmarks report events per commit)
        self.replayed = 0  # events of crashed servers' journals moved by this recorder

    # -- the request path -----------------------------------------------------------------

    def record(self, row: Row) -> None:
        """Queue an event; it is written with the next commit (journaled first where it can be)."""
        if self.on_record is not None:
            self.on_record(row)
        journal = self._journal  # read once: stop() clears it from another thread
        if journal is not None:
            try:
                self._append(journal, row)
                return
            except OSError:
                log.exception("could not append to the usage journal; the event goes to the writer alone")
        self._queue.put((row, None, None))

    async def record_durable(self, row: Row) -> None:
        """Make an event durable and return (journaled; or committed, awaited). Raises
        ServiceUnavailable if it could not be: the answer must not be sent (a refused commit's
        event stays queued and is written when the database is back)."""
        if self.on_record is not None:
            self.on_record(row)
        journal = self._journal  # read once: stop() clears it from another thread
        if journal is not None:
            try:
                self._append(journal, row)
            except OSError:
                log.exception("could not append to the usage journal")
                raise ServiceUnavailable("Usage could not be recorded; the answer was not sent. Retry.") from None
            return
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self._queue.put((row, (loop, fut), None))
        if self._thread is None:  # not started (a test app without lifespan): write now
            await run_blocking(self.flush)
        await fut

    def _append(self, journal: Journal, row: Row) -> None:
        """Journal `row` and queue it for the writer (OSError: it is in neither), then tell
        `on_commit`: the event is durable."""
        journal.append(row, lambda pos: self._queue.put((row, None, pos)))
        self._committed([row])

    # -- the writer -------------------------------------------------------------------------

    def start(self) -> None:
        """Start the writer thread (and, on a SQLite file, this process's journal; crashed
        servers' journals are replayed by the thread)."""
        if self._thread is None:
            if self.journal and journal_possible(self.db):
                journal = Journal(journal_dir(str(self.db.engine.url.database)))
                journal.open()
                self._journal = journal
                self._replayed = False
            self._thread = threading.Thread(target=self._run, name="metering-writer", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Write what is queued, then stop the writer (the journal goes once all of it is written;
        if the database refused the rest, it stays for the next server to replay)."""
        journal, self._journal = self._journal, None  # new events go to the queue from here on
        thread = self._thread
        if thread is not None:
            self._queue.put(_Stop())
            self._wake.set()
            thread.join(timeout=30)
            if thread.is_alive():  # the database refuses the rest: the writer keeps trying until exit
                log.error("usage events could not be written before shutdown; the writer keeps trying")
                if journal is not None:
                    journal.close(delete=False)
                return
            self._thread = None
        try:
            self.flush()  # what was queued after the stop mark (and the flushes that waited behind it)
        finally:
            if journal is not None:
                moved = not self._failing  # everything queued is in the database
                if moved:
                    for name in list(journal.finished):  # rotated ones the last writes finished
                        journal.delete(name)
                        self._drop_mark(name)
                journal.close(delete=moved)
                if moved:
                    self._drop_mark(journal.name)
            self._close()

    def flush(self, timeout: float = 30.0) -> None:
        """Return once every event queued before the call is committed (raises ServiceUnavailable
        if the database refuses them for longer than `timeout`)."""
        thread = self._thread
        if thread is not None and thread.is_alive():
            barrier = _Barrier()
            self._queue.put(barrier)
            self._wake.set()
            if not barrier.event.wait(timeout):
                raise ServiceUnavailable("Usage could not be recorded yet (the database refused it); retry shortly.")
            return
        with self._inline:  # no writer: write inline
            backlog: list[Item] = []
            barriers: list[_Barrier] = []
            while True:
                self._drain(backlog, barriers, block=False)
                if not backlog:
                    break
                batch, backlog[:] = backlog[:MAX_BATCH], backlog[MAX_BATCH:]
                if not self._write(batch):
                    for row, _, pos in batch + backlog:  # kept for a later flush (their waiters were told)
                        self._queue.put((row, None, pos))
                    raise ServiceUnavailable("Usage could not be recorded (the database refused it); retry shortly.")
            for b in barriers:
                b.event.set()

    def _drain(self, backlog: list[Item], barriers: list[_Barrier], *, block: bool,
               everything: bool = False) -> bool:
        """Move queued events into `backlog` (until it holds MAX_BATCH, or all of them with
        `everything`; waiting for the first one if `block`), barriers into `barriers`; False once
        a stop mark was taken."""
        get, get_nowait = self._queue.get, self._queue.get_nowait
        try:
            item = get() if block else get_nowait()
            while True:
                if isinstance(item, tuple):
                    backlog.append(item)
                elif isinstance(item, _Barrier):
                    barriers.append(item)
                else:
                    return False
                if len(backlog) >= MAX_BATCH and not everything:
                    return True
                item = get_nowait()
        except queue.Empty:
            return True

    def _run(self) -> None:
        backlog: list[Item] = []
        barriers: list[_Barrier] = []
        running = True
        while running or backlog:
            if self._journal is not None and not self._replayed and not backlog:
                self._replay(backlog)
            if running:
                # while the database refuses, take everything queued: every waiting request is told
                running = self._drain(backlog, barriers, block=not backlog, everything=self._failing)
                if running and backlog and not barriers and not self._failing and backlog[-1][1] is None:
                    # nobody waits on these: let the next ones join them (a flush or a stop wakes
                    # us: it queues its mark, then sets the event; a mark queued before the clear
                    # is taken by the drain after it)
                    self._wake.clear()
                    running = self._drain(backlog, barriers, block=False)
                    if running and not barriers:
                        self._wake.wait(LINGER_SECONDS)
                        running = self._drain(backlog, barriers, block=False)
            if not backlog:
                for b in barriers:
                    b.event.set()
                barriers.clear()
                continue
            batch = backlog[:MAX_BATCH]
            if self._write(batch):
                del backlog[:len(batch)]
                if not backlog:
                    for b in barriers:
                        b.event.set()
                    barriers.clear()
            else:
                # the batch's requests were answered with an error by _write; so are the others
                # held here, and their events stay queued for the next try
                _resolve_all(backlog[len(batch):], ServiceUnavailable(
                    "Usage could not be recorded; the answer was not sent. Retry."))
                backlog[:] = [(row, None, pos) for row, _, pos in backlog]
                time.sleep(RETRY_SECONDS)
        for b in barriers:
            b.event.set()

    def _replay(self, backlog: list[Item]) -> None:
        """Crashed servers' journals into `backlog`, from their marks on (once per start; tried
        again at the next write while the database cannot be read)."""
        journal = self._journal
        assert journal is not None
        try:
            conn = self._connection()
            assert self._insert is not None
            cursor = conn.cursor()
            try:
                for name, fd in journal.orphans():
                    cursor.execute(self._insert.mark_read, (name,))
                    found = cursor.fetchone()
                    events = journal.replay(name, fd, int(found[0]) if found else 0)
                    if events:
                        log.info("replaying %d usage event(s) of the journal %s (a server that did not stop cleanly)",
                                 len(events), name)
                        backlog.extend((row, None, pos) for row, pos in events)
                        self.replayed += len(events)
                    else:
                        self._forget(name)
                # marks of journals that are gone (deleted before their mark, a crash between)
                cursor.execute("SELECT journal FROM usage_journal_marks")
                present = {p.name for p in journal.dir.iterdir()}
                for (name,) in cursor.fetchall():
                    if name not in present:
                        cursor.execute(self._insert.mark_delete, (name,))
            finally:
                cursor.close()
            conn.commit()
            self._replayed = True
        except Exception:
            log.exception("could not replay the usage journals of stopped servers; trying again later")
            self._discard_connection()
            time.sleep(RETRY_SECONDS)

    def _forget(self, name: str) -> None:
        """A finished journal all in the database: the file goes, then its mark."""
        journal = self._journal
        if journal is None or name not in journal.finished:
            return
        journal.delete(name)
        self._drop_mark(name)

    def _drop_mark(self, name: str) -> None:
        """The mark of a journal that is gone (if this fails, the next replay drops it)."""
        try:
            conn = self._connection()
            assert self._insert is not None
            cursor = conn.cursor()
            try:
                cursor.execute(self._insert.mark_delete, (name,))
            finally:
                cursor.close()
            conn.commit()
        except Exception:
            log.warning("could not drop the mark of a moved usage journal; the next start does", exc_info=True)
            self._discard_connection()

    def _statement(self) -> _Insert:
        if self._insert is None:
            self._insert = _Insert(self.db)
        return self._insert

    def _connection(self) -> Any:
        if self._conn is None:
            self._conn = self.db.engine.raw_connection()
            self._statement()
        return self._conn

    def _close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()  # back to the engine's pool
            except Exception:
                log.exception("could not close the metering connection")

    def _discard_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.invalidate()  # a fresh connection for the next try
            except Exception:
                log.exception("could not discard the metering connection")

    def _write(self, batch: list[Item]) -> bool:
        rows = [r for r, _, _ in batch]
        marks: dict[str, int] = {}
        for _, _, pos in batch:
            if pos is not None and pos[1] > marks.get(pos[0], -1):
                marks[pos[0]] = pos[1]
        try:
            conn = self._connection()
            assert self._insert is not None
            cursor = conn.cursor()
            try:
                cursor.executemany(self._insert.sql, self._insert.params(rows))
                cursor.executemany(self._insert.meter_sql, self._insert.meter_params(rows))
                if marks:
                    cursor.executemany(self._insert.mark_sql, list(marks.items()))
            finally:
                cursor.close()
            conn.commit()
        except Exception:
            log.exception("could not write usage events; they stay queued")
            self._discard_connection()
            self._failing = True  # new events go to this thread until the database takes them
            _resolve_all(batch, ServiceUnavailable("Usage could not be recorded; the answer was not sent. Retry."))
            return False
        self._failing = False
        self.commits += 1
        told = [r for r, _, pos in batch if pos is None]  # journaled events were told when appended
        if told:
            self._committed(told)
        _resolve_all(batch, None)
        journal = self._journal
        if journal is not None:
            for name, position in marks.items():
                if journal.moved(name, position):
                    self._forget(name)
        return True

    def _committed(self, rows: list[Row]) -> None:
        if self.on_commit is not None:  # before the answers leave: a spent budget refuses the next call
            try:
                self.on_commit(rows)
            except Exception:
                log.exception("usage commit listener failed")


def _resolve_all(batch: list[Item], exc: BaseException | None) -> None:
    """Settle the futures of a batch: one wake-up per event loop, whatever the batch's size."""
    by_loop: dict[asyncio.AbstractEventLoop, list[asyncio.Future]] = {}
    for _, w, _ in batch:
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

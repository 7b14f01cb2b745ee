"""Usage events on the request path: one per inference request that reached a worker, written
with group commit by one writer thread.

`record_durable` returns once the event is committed: the handlers await it before the last
byte of an answer leaves (the end of a non-streamed body, a stream's `[DONE]` or its final
error event), so an answer whose last byte was sent is always billed, whatever happens to the
server afterwards. Requests that finish while a commit is running wait for the next one, which
takes all of them in one transaction (group commit): at load, one commit serves many requests.
`record` queues an event without waiting (a stream the client cut: nobody reads its end).

A request in flight when the server dies (kill -9) has no event, or the one queued before it
died if its commit finished: it is billed at most what was generated.

What one event costs the request path is kept small, because every request pays it
(benchmarks/bench_gateway.py measures it against a server without metering):

- the request path puts the event on a `queue.SimpleQueue` (C code, no lock of ours) and awaits
  a future; the writer thread wakes, drains the queue, writes, and resolves the futures of a
  commit with one wake-up of their event loop, not one per future;
- the writer owns one DB-API connection for its life and writes each group with the driver's
  own `executemany` of one prepared INSERT and a commit (no SQLAlchemy connection checkout,
  reset or statement execution per group: those cost more than the write itself). Values are
  converted by the columns' own SQLAlchemy bind processors, so rows are stored exactly as the
  ORM stores them (UTC datetimes, Decimal prices as text);
- on SQLite the connection has the store's settings (WAL, synchronous=NORMAL, db/engine.py): a
  commit is a write into the WAL file, not an fsync. A committed event survives the process
  being killed (kill -9: the WAL is in the operating system's cache; tests/metering/
  test_kill9.py), not a power cut or a kernel crash since the last checkpoint. PostgreSQL keeps
  its own durability settings.

If the database refuses a write, the events stay queued and are tried again every
RETRY_SECONDS; the requests waiting on them get ServiceUnavailable (their answers are not sent).
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
from modelport.db.tables import UsageEvent
from modelport.errors import ServiceUnavailable
from modelport.offload import run_blocking

log = logging.getLogger("modelport.metering")

#: Events written in one transaction at most (a larger backlog takes several).
MAX_BATCH = 2000
#: How long a failed write waits before it is tried again.
RETRY_SECONDS = 0.5

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


class MeterRecorder:
    """Queues usage events and writes them in group commits from one thread."""

    def __init__(self, db: Database, on_commit: Callable[[list[Row]], None] | None = None,
                 on_record: Callable[[Row], None] | None = None) -> None:
        self.db = db
        self.on_commit = on_commit  # told of every committed batch (budgets count spending from it)
        # told of every event as it is recorded, on the request path, in the request's context
        # (tokens per minute are settled from it: quotas/settle.py)
        self.on_record = on_record
        self._queue: queue.SimpleQueue[tuple[Row, Waiter | None] | _Barrier | _Stop] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._inline = threading.Lock()  # without the thread: one inline writer at a time
        self._insert: _Insert | None = None
        self._conn: Any = None  # the writer's DB-API connection (a pooled one, held for its life)
        self.commits = 0  # transactions written; the benchmark reports events per commit

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
        self._queue.put((row, (loop, fut)))
        if self._thread is None:  # not started (a test app without lifespan): write now
            await run_blocking(self.flush)
        await fut

    # -- the writer -------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="metering-writer", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Write what is queued, then stop the writer."""
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

    def _drain(self, backlog: list[tuple[Row, Waiter | None]], barriers: list[_Barrier], *, block: bool) -> bool:
        """Move queued events into `backlog` (up to MAX_BATCH beyond what it holds, waiting for the
        first one if `block`), barriers into `barriers`; False once a stop mark was taken."""
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
                if len(backlog) >= MAX_BATCH:
                    return True
                item = get_nowait()
        except queue.Empty:
            return True

    def _run(self) -> None:
        backlog: list[tuple[Row, Waiter | None]] = []
        barriers: list[_Barrier] = []
        running = True
        while running or backlog:
            if running:
                running = self._drain(backlog, barriers, block=not backlog)
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
                for i, (row, _) in enumerate(batch):  # their requests were answered with an error
                    backlog[i] = (row, None)
                time.sleep(RETRY_SECONDS)
        for b in barriers:
            b.event.set()

    def _connection(self) -> Any:
        if self._conn is None:
            self._conn = self.db.engine.raw_connection()
            if self._insert is None:
                self._insert = _Insert(self.db)
        return self._conn

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
            _resolve_all(batch, ServiceUnavailable("Usage could not be recorded; the answer was not sent. Retry."))
            return False
        self.commits += 1
        if self.on_commit is not None:  # before the answers leave: a spent budget refuses the next call
            try:
                self.on_commit(rows)
            except Exception:
                log.exception("usage commit listener failed")
        _resolve_all(batch, None)
        return True


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

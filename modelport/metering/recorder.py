"""Usage events on the request path: one per inference request that reached a worker, written
with group commit.

`record_durable` returns once the event is committed: the handlers await it before the last
byte of an answer leaves (the end of a non-streamed body, a stream's `[DONE]` or its final
error event), so an answer whose last byte was sent is always billed, whatever happens to the
server afterwards. Requests that finish while a commit is running wait for the next one, which
takes all of them in one transaction (group commit): at load, one commit serves many requests.
`record` queues an event without waiting (a stream the client cut: nobody reads its end).

A request in flight when the server dies (kill -9) has no event, or the one queued before it
died if its commit finished: it is billed at most what was generated.

One writer thread does every write; the request path only appends to a list under a lock.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from datetime import datetime
from decimal import Decimal
from typing import Any, cast

from sqlalchemy import Table, insert

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


def usage_row(*, workspace_id: str, deployment_id: str, model_id: str, api: str, input_tokens: int,
              output_tokens: int, status: str, offer_id: str | None = None, subscription_id: str | None = None,
              currency: str | None = None, input_price: Decimal | None = None, output_price: Decimal | None = None,
              at: datetime | None = None) -> dict[str, Any]:
    """One usage event as a plain dict (an ORM object per request costs measurable CPU)."""
    return {"at": at or utcnow(), "workspace_id": workspace_id, "deployment_id": deployment_id,
            "model_id": model_id, "offer_id": offer_id, "subscription_id": subscription_id, "api": api,
            "input_tokens": int(input_tokens), "output_tokens": int(output_tokens), "status": status,
            "currency": currency, "input_price": input_price, "output_price": output_price, "aggregated": False}


class MeterRecorder:
    """Queues usage events and writes them in group commits from one thread."""

    def __init__(self, db: Database, on_commit: Callable[[list[dict[str, Any]]], None] | None = None) -> None:
        self.db = db
        self.on_commit = on_commit  # told of every committed batch (budgets count spending from it)
        self._cond = threading.Condition()
        self._pending: list[tuple[dict[str, Any], Waiter | None]] = []
        self._appended = 0
        self._committed = 0
        self._thread: threading.Thread | None = None
        self._stopping = False
        self.commits = 0  # transactions written; the benchmark reports events per commit
        self._insert = insert(cast(Table, UsageEvent.__table__))  # a mapped class's table is a Table

    # -- the request path -----------------------------------------------------------------

    def record(self, row: dict[str, Any]) -> None:
        """Queue an event; it is written with the next commit."""
        self._append(row, None)

    async def record_durable(self, row: dict[str, Any]) -> None:
        """Queue an event and return once it is committed (raises ServiceUnavailable if the
        database refused it; the event stays queued and is written when the database is back)."""
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self._append(row, (loop, fut))
        if self._thread is None:  # not started (a test app without lifespan): write now
            await run_blocking(self.flush)
        await fut

    def _append(self, row: dict[str, Any], waiter: Waiter | None) -> None:
        with self._cond:
            self._pending.append((row, waiter))
            self._appended += 1
            self._cond.notify_all()

    # -- the writer -------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is None:
            self._stopping = False
            self._thread = threading.Thread(target=self._run, name="metering-writer", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Write what is queued, then stop the writer."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None
        self.flush()

    def flush(self, timeout: float = 30.0) -> None:
        """Return once every event queued before the call is committed."""
        with self._cond:
            target = self._appended
            running = self._thread is not None and self._thread.is_alive()
            if running:
                self._cond.wait_for(lambda: self._committed >= target, timeout=timeout)
                return
        while True:  # no writer: write inline
            with self._cond:
                if self._committed >= target or not self._pending:
                    return
                batch, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
            if not self._write(batch):
                raise ServiceUnavailable("Usage could not be recorded (the database refused it); retry shortly.")

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._stopping:
                    self._cond.wait()
                if not self._pending:
                    return
                batch, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
            if not self._write(batch):
                time.sleep(RETRY_SECONDS)

    def _write(self, batch: list[tuple[dict[str, Any], Waiter | None]]) -> bool:
        rows = [r for r, _ in batch]
        try:
            with self.db.engine.begin() as conn:  # one Core executemany: no ORM session, no work per row
                conn.execute(self._insert, rows)
        except Exception:
            log.exception("could not write usage events; they stay queued")
            with self._cond:
                self._pending[:0] = [(r, None) for r, _ in batch]  # kept, written later
            for _, w in batch:
                if w is not None:
                    _resolve(w, ServiceUnavailable("Usage could not be recorded; the answer was not sent. Retry."))
            return False
        with self._cond:
            self._committed += len(batch)
            self.commits += 1
            self._cond.notify_all()
        for _, w in batch:
            if w is not None:
                _resolve(w, None)
        if self.on_commit is not None:
            try:
                self.on_commit(rows)
            except Exception:
                log.exception("usage commit listener failed")
        return True


def _resolve(waiter: Waiter, exc: BaseException | None) -> None:
    loop, fut = waiter

    def done() -> None:
        if not fut.done():
            if exc is None:
                fut.set_result(None)
            else:
                fut.set_exception(exc)

    try:
        loop.call_soon_threadsafe(done)
    except RuntimeError:  # the loop is closed: nobody waits any more
        pass

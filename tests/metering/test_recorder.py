"""The usage-event writer (metering/recorder.py) on SQLite and PostgreSQL: an awaited event is in
the database (seen from another connection) when `record_durable` returns; rows are stored
exactly as the ORM stores them; a database that refuses writes fails the waiting requests with
503 and loses nothing; and over random sequences of records, flushes, refusals, restarts and a
database held busy by another writer, every event is written exactly once.

On SQLite the event loop commits when the database is not busy, and hands the group to the
writer thread when it is; the thread keeps the WAL bounded with checkpoints.
"""

from __future__ import annotations

import asyncio
import itertools
import shutil
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test
from sqlalchemy import func, insert, select, text

from modelport.db import migrate
from modelport.db.engine import Database
from modelport.db.tables import UsageEvent
from modelport.errors import ServiceUnavailable
from modelport.metering import recorder as recorder_module
from modelport.metering.recorder import MeterRecorder, usage_row

_ids = itertools.count()


def _row(**kw: object) -> dict:
    n = next(_ids)
    base = {"workspace_id": "ws_test", "deployment_id": f"dep_{n}", "model_id": "mdl_test", "api": "chat.completions",
            "input_tokens": 7 + n, "output_tokens": 3 * n, "status": "success"}
    base.update(kw)
    return usage_row(**base)  # type: ignore[arg-type]


def _count(db: Database, **where: str) -> int:
    with db.engine.connect() as conn:
        q = select(func.count()).select_from(UsageEvent.__table__)
        for k, v in where.items():
            q = q.where(UsageEvent.__table__.c[k] == v)
        return int(conn.scalar(q) or 0)


def _refuse(db: Database) -> None:
    """Make the database refuse usage events for real: their table is renamed away."""
    with db.engine.begin() as conn:
        conn.execute(text("ALTER TABLE usage_events RENAME TO usage_events_away"))


def _accept(db: Database) -> None:
    with db.engine.begin() as conn:
        conn.execute(text("ALTER TABLE usage_events_away RENAME TO usage_events"))


@pytest.fixture
def db(db_url: str) -> Iterator[Database]:
    database = Database(db_url)
    migrate.upgrade(database.engine)
    yield database
    database.dispose()


def test_awaited_event_is_committed_and_seen_from_another_connection(db: Database, db_url: str) -> None:
    rec = MeterRecorder(db)
    rec.start()
    other = Database(db_url)  # a second engine: another process would see the same
    try:
        async def one(i: int) -> None:
            row = _row(deployment_id=f"dep_seen_{i}")
            await rec.record_durable(row)
            assert _count(other, deployment_id=f"dep_seen_{i}") == 1

        async def many() -> None:
            await asyncio.gather(*(one(i) for i in range(40)))

        asyncio.run(many())
    finally:
        rec.stop()
        other.dispose()


def test_rows_are_stored_exactly_as_the_orm_stores_them(db: Database) -> None:
    """A priced event written by the recorder and the same event written by SQLAlchemy read back
    identical, raw and through the ORM (aware UTC time, exact Decimal prices, not aggregated)."""
    at = datetime(2026, 12, 2, 15, 4, 5, 123456, tzinfo=UTC)
    fields = {"at": at.astimezone(UTC), "offer_id": "offer_x", "subscription_id": "sub_x", "currency": "EUR",
              "input_price": Decimal("0.000123456789"), "output_price": Decimal("12.5")}
    ours, theirs = _row(deployment_id="dep_ours", **fields), _row(deployment_id="dep_theirs", **fields)
    theirs["input_tokens"], theirs["output_tokens"] = ours["input_tokens"], ours["output_tokens"]
    rec = MeterRecorder(db)
    rec.start()
    try:
        asyncio.run(rec.record_durable(ours))
    finally:
        rec.stop()
    with db.engine.begin() as conn:
        conn.execute(insert(UsageEvent.__table__), [theirs])
    cols = "at, workspace_id, model_id, offer_id, subscription_id, api, input_tokens, output_tokens, status, " \
           "currency, input_price, output_price, aggregated"
    with db.engine.connect() as conn:
        raw = {r[0]: tuple(r[1:]) for r in conn.execute(text(f"SELECT deployment_id, {cols} FROM usage_events"))}
    assert raw["dep_ours"] == raw["dep_theirs"]
    with db.session() as s:
        e = s.scalar(select(UsageEvent).where(UsageEvent.deployment_id == "dep_ours"))
        assert e is not None
        assert e.at == at and e.at.utcoffset() == timedelta(0)
        assert e.input_price == Decimal("0.000123456789") and e.output_price == Decimal("12.5")
        assert e.aggregated is False and e.currency == "EUR"


def test_refused_write_fails_the_waiting_request_and_loses_nothing(db: Database) -> None:
    rec = MeterRecorder(db)
    rec.start()
    try:
        _refuse(db)
        with pytest.raises(ServiceUnavailable):
            asyncio.run(rec.record_durable(_row(deployment_id="dep_refused")))
        rec.record(_row(deployment_id="dep_refused"))  # a cut stream's event, queued meanwhile
        with pytest.raises(ServiceUnavailable):
            rec.flush(timeout=1.5)  # still refused: a flush does not pretend
        _accept(db)
        rec.flush()
        assert _count(db, deployment_id="dep_refused") == 2  # both written once the table is back
        asyncio.run(rec.record_durable(_row(deployment_id="dep_after")))
        assert _count(db, deployment_id="dep_after") == 1
    finally:
        rec.stop()
    assert _count(db, deployment_id="dep_refused") == 2  # written once, not again at stop


def test_every_waiting_request_hears_of_a_refusal_however_many_events_are_held(
        db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    """The writer retries the first MAX_BATCH events it holds; a request whose event queued behind
    more than that must still get its 503 while the database refuses (it waited until the database
    came back), and every event is written once when it does."""
    monkeypatch.setattr(recorder_module, "MAX_BATCH", 5)
    rec = MeterRecorder(db)
    rec.start()
    try:
        _refuse(db)
        for i in range(10):  # cut streams' events: held by the writer, nobody waits on them
            rec.record(_row(deployment_id=f"dep_held_{i}"))

        async def late() -> None:
            await asyncio.sleep(2 * recorder_module.RETRY_SECONDS)  # the writer holds them by now
            with pytest.raises(ServiceUnavailable):
                await asyncio.wait_for(rec.record_durable(_row(deployment_id="dep_late")), 30)

        asyncio.run(late())
        _accept(db)
        rec.flush()
        assert _count(db) == 11 and _count(db, deployment_id="dep_late") == 1
    finally:
        rec.stop()
    assert _count(db) == 11


def test_without_the_writer_thread_events_are_written_inline(db: Database) -> None:
    """An app without lifespan (no writer started): record_durable writes before returning, and a
    refused inline write raises and keeps the event for the next flush."""
    rec = MeterRecorder(db)
    asyncio.run(rec.record_durable(_row(deployment_id="dep_inline")))
    assert _count(db, deployment_id="dep_inline") == 1
    _refuse(db)
    with pytest.raises(ServiceUnavailable):
        asyncio.run(rec.record_durable(_row(deployment_id="dep_inline_refused")))
    _accept(db)
    rec.flush()
    assert _count(db, deployment_id="dep_inline_refused") == 1
    rec.stop()


def test_stop_writes_what_is_queued(db: Database) -> None:
    rec = MeterRecorder(db)
    rec.start()
    for _ in range(2500):  # more than one transaction's worth
        rec.record(_row(workspace_id="ws_stop"))
    rec.stop()
    assert _count(db, workspace_id="ws_stop") == 2500


def test_commit_listener_hears_every_committed_event_once(db: Database) -> None:
    heard: list[str] = []
    rec = MeterRecorder(db, on_commit=lambda rows: heard.extend(r["deployment_id"] for r in rows))
    rec.start()
    try:
        _refuse(db)
        with pytest.raises(ServiceUnavailable):
            asyncio.run(rec.record_durable(_row(deployment_id="dep_heard_0")))
        assert heard == []  # nothing committed, nothing counted against a budget
        _accept(db)
        asyncio.run(rec.record_durable(_row(deployment_id="dep_heard_1")))
        rec.flush()
    finally:
        rec.stop()
    assert sorted(heard) == ["dep_heard_0", "dep_heard_1"]


def _sqlite_path(db: Database) -> str:
    path = db.engine.url.database
    assert path
    return path


def test_on_sqlite_the_event_loop_commits_and_a_busy_database_goes_to_the_writer(tmp_path: Path) -> None:
    """Not busy: the loop commits (the writer thread commits nothing). Another connection holding
    the write lock: nothing is answered until it lets go, then the writer thread commits the
    group, once."""
    db = Database(f"sqlite:///{tmp_path / 'loop.db'}")
    migrate.upgrade(db.engine)
    rec = MeterRecorder(db)
    rec.start()
    lock = sqlite3.connect(_sqlite_path(db), isolation_level=None)
    try:
        async def run() -> None:
            await asyncio.gather(*(rec.record_durable(_row(deployment_id=f"dep_free_{i}")) for i in range(5)))
            assert (rec.loop_commits, rec.commits) == (1, 0)  # one group, committed by the loop
            assert _count(db) == 5
            lock.execute("BEGIN IMMEDIATE")  # another writer holds the lock
            tasks = [asyncio.ensure_future(rec.record_durable(_row(deployment_id=f"dep_busy_{i}"))) for i in range(3)]
            for _ in range(3):  # the loop's attempt ran (it is scheduled for the next turn)
                await asyncio.sleep(0)
            assert not any(t.done() for t in tasks) and rec.loop_commits == 1  # nothing answered before the commit
            lock.execute("ROLLBACK")
            await asyncio.wait_for(asyncio.gather(*tasks), 30)
            assert rec.commits >= 1 and rec.loop_commits == 1  # the writer thread waited for the lock
            assert _count(db) == 8
            await rec.record_durable(_row(deployment_id="dep_free_again"))
            assert rec.loop_commits == 2  # not busy any more: the loop commits again

        asyncio.run(run())
    finally:
        lock.close()
        rec.stop()
        db.dispose()
    with sqlite3.connect(tmp_path / "loop.db") as conn:
        ids = sorted(r[0] for r in conn.execute("SELECT deployment_id FROM usage_events"))
    assert ids == sorted([f"dep_free_{i}" for i in range(5)] + [f"dep_busy_{i}" for i in range(3)]
                         + ["dep_free_again"])


def test_the_loop_never_takes_a_connection_from_the_pool(tmp_path: Path) -> None:
    """After the database refused a write on the loop's connection, the next one is opened by the
    writer thread: while the pool has no connection to give, the loop keeps running (a ticking
    task advances) and its groups go to the thread, which commits them once one is free. Before,
    the loop took the connection itself and stood still up to the pool's 30-s timeout (the timer
    that frees the pool here could not even run)."""
    db = Database(f"sqlite:///{tmp_path / 'pool.db'}")
    migrate.upgrade(db.engine)
    raw = sqlite3.connect(_sqlite_path(db), isolation_level=None)  # outside the pool
    rec = MeterRecorder(db)
    rec.start()
    held: list = []
    pool = db.engine.pool
    try:
        async def run() -> None:
            await rec.record_durable(_row(deployment_id="dep_first"))
            assert rec.loop_commits == 1
            # all the pool can give but one, which the writer thread takes for itself below
            while pool.checkedout() < pool.size() + pool._max_overflow - 1:  # type: ignore[attr-defined]
                held.append(pool.connect())
            raw.execute("ALTER TABLE usage_events RENAME TO usage_events_away")
            with pytest.raises(ServiceUnavailable):  # refused on the loop's connection, then by the thread
                await asyncio.wait_for(rec.record_durable(_row(deployment_id="dep_refused")), 60)
            raw.execute("ALTER TABLE usage_events_away RENAME TO usage_events")
            await asyncio.to_thread(rec.flush)  # written by the thread; the loop's connection is gone
            ticks = 0

            async def tick() -> None:
                nonlocal ticks
                while True:
                    await asyncio.sleep(0.01)
                    ticks += 1

            ticker = asyncio.create_task(tick())
            asyncio.get_running_loop().call_later(1.0, lambda: [c.close() for c in held])
            await asyncio.wait_for(rec.record_durable(_row(deployment_id="dep_pool")), 60)
            ticker.cancel()
            assert ticks >= 10  # the loop ran while the pool was empty (frozen, it would be 0)

        asyncio.run(run())
    finally:
        for c in held:
            c.close()
        raw.close()
        rec.stop()
    assert _count(db, deployment_id="dep_pool") == 1 and _count(db, deployment_id="dep_refused") == 1
    db.dispose()


def test_after_a_checkpoint_the_writer_thread_makes_the_next_write(tmp_path: Path) -> None:
    """SQLite syncs the WAL when a write starts it over after a checkpoint: that write is the
    thread's, never the loop's; then the loop commits again."""
    db = Database(f"sqlite:///{tmp_path / 'ckpt.db'}")
    migrate.upgrade(db.engine)
    rec = MeterRecorder(db)
    rec.start()
    try:
        async def run() -> None:
            for _ in range(recorder_module.CHECKPOINT_EVERY):
                await rec.record_durable(_row(workspace_id="ws_ckpt"))
            assert (rec.loop_commits, rec.commits, rec.checkpoints) == (recorder_module.CHECKPOINT_EVERY, 0, 0)
            await rec.record_durable(_row(workspace_id="ws_ckpt"))  # the checkpoint was asked for
            assert (rec.loop_commits, rec.commits) == (recorder_module.CHECKPOINT_EVERY, 1)  # the thread's
            sent = 1
            while rec.loop_commits == recorder_module.CHECKPOINT_EVERY and sent < 10:
                await rec.record_durable(_row(workspace_id="ws_ckpt"))
                sent += 1
            # the loop writes again, and only once the checkpoint ran and the thread wrote after it
            assert rec.loop_commits == recorder_module.CHECKPOINT_EVERY + 1 and rec.checkpoints == 1
            assert rec.commits == sent - 1
            await rec.record_durable(_row(workspace_id="ws_ckpt"))
            assert rec.loop_commits == recorder_module.CHECKPOINT_EVERY + 2
            assert _count(db, workspace_id="ws_ckpt") == recorder_module.CHECKPOINT_EVERY + sent + 1

        asyncio.run(run())
    finally:
        rec.stop()
    db.dispose()


def test_the_wal_stays_bounded_while_the_loop_commits(tmp_path: Path) -> None:
    """The loop's connection never checkpoints; the writer thread does, so the WAL file does not
    grow with the number of commits (without checkpoints it would pass 40 MB here; about 13 MB with
    them, a RESTART every 1,000 commits)."""
    db = Database(f"sqlite:///{tmp_path / 'wal.db'}")
    migrate.upgrade(db.engine)
    rec = MeterRecorder(db)
    rec.start()
    wal = tmp_path / "wal.db-wal"
    sizes = []
    try:
        async def run() -> None:
            for i in range(3000):  # one client: one commit each
                await rec.record_durable(_row(workspace_id="ws_wal"))
                if i % 500 == 499:
                    rec.flush()  # the checkpoints asked for so far have run
                    sizes.append(wal.stat().st_size)

        asyncio.run(run())
        assert rec.loop_commits >= 2900  # the loop did nearly all the commits (not those during a RESTART)
    finally:
        rec.stop()
    assert _count(db, workspace_id="ws_wal") == 3000
    db.dispose()
    # the WAL starts over after each RESTART checkpoint: bounded by what RESTART_EVERY commits write
    assert max(sizes) < 20 * 1024 * 1024, sizes


class RecorderMachine(RuleBasedStateMachine):
    """Random sequences of queued and awaited events, flushes, refusals, recoveries and writer
    restarts: whatever happens, each event is in the table exactly once in the end, an awaited
    event that returned is in it at once, and one that raised was refused."""

    template: Path  # a migrated store, copied for each example

    def __init__(self) -> None:
        super().__init__()
        path = self.template.with_name(f"m{next(_ids)}.db")
        shutil.copy(self.template, path)
        self.path = path
        self.db = Database(f"sqlite:///{path}")
        self.rec = MeterRecorder(self.db)
        self.rec.start()
        self.refused = False
        self.sent: list[str] = []

    @rule(n=st.integers(1, 30))
    def queue(self, n: int) -> None:
        for _ in range(n):
            row = _row()
            self.sent.append(row["deployment_id"])
            self.rec.record(row)

    @rule(n=st.integers(1, 12))
    def awaited(self, n: int) -> None:
        rows = [_row() for _ in range(n)]
        self.sent += [r["deployment_id"] for r in rows]

        async def go() -> list[BaseException | None]:
            return await asyncio.gather(*(self.rec.record_durable(r) for r in rows), return_exceptions=True)

        for row, outcome in zip(rows, asyncio.run(go()), strict=True):
            if outcome is None:
                assert not self.refused
                assert _count(self.db, deployment_id=row["deployment_id"]) == 1
            else:
                assert isinstance(outcome, ServiceUnavailable) and self.refused

    @rule(n=st.integers(1, 12))
    def awaited_while_busy(self, n: int) -> None:
        """Another writer holds the database while events are awaited: none returns before it lets
        go; then each is written once."""
        if self.refused:
            return
        rows = [_row() for _ in range(n)]
        self.sent += [r["deployment_id"] for r in rows]
        lock = sqlite3.connect(self.path, isolation_level=None)
        lock.execute("BEGIN IMMEDIATE")

        async def go() -> None:
            tasks = [asyncio.ensure_future(self.rec.record_durable(r)) for r in rows]
            for _ in range(3):
                await asyncio.sleep(0)
            assert not any(t.done() for t in tasks)
            lock.execute("ROLLBACK")
            await asyncio.wait_for(asyncio.gather(*tasks), 30)

        try:
            asyncio.run(go())
        finally:
            lock.close()
        for row in rows:
            assert _count(self.db, deployment_id=row["deployment_id"]) == 1

    @rule()
    def refuse(self) -> None:
        if not self.refused:
            _refuse(self.db)
            self.refused = True

    @rule()
    def accept(self) -> None:
        if self.refused:
            _accept(self.db)
            self.refused = False

    @rule()
    def flush(self) -> None:
        if self.refused:
            return
        self.rec.flush()
        assert _count(self.db) == len(self.sent)

    @rule()
    def restart_writer(self) -> None:
        if not self.refused:
            self.rec.stop()
            self.rec.start()

    @invariant()
    def never_more_than_sent(self) -> None:
        if not self.refused:
            assert _count(self.db) <= len(self.sent)

    def teardown(self) -> None:
        try:
            if self.refused:
                _accept(self.db)
            self.rec.stop()
            with self.db.engine.connect() as conn:
                written = sorted(r[0] for r in conn.execute(text("SELECT deployment_id FROM usage_events")))
            assert written == sorted(self.sent)  # each exactly once
        finally:
            self.db.dispose()


def test_every_event_written_exactly_once_over_random_sequences(tmp_path: Path) -> None:
    template = Database(f"sqlite:///{tmp_path / 'template.db'}")
    migrate.upgrade(template.engine)
    template.dispose()
    RecorderMachine.template = tmp_path / "template.db"
    run_state_machine_as_test(RecorderMachine, settings=settings(
        max_examples=25, stateful_step_count=15, deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture]))

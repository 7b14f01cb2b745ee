"""The usage-event writer (metering/recorder.py, metering/journal.py) on SQLite and PostgreSQL.

Awaited commits (PostgreSQL; `journal = False` on both): an awaited event is in the database (seen
from another connection) when `record_durable` returns; a database that refuses writes fails the
waiting requests with 503 and loses nothing. The journal (SQLite in a file, the default): an
awaited event is in the journal file when `record_durable` returns and in the table after a
flush, moved in groups; a refusing database delays the move, not the answer; a server killed
with events not moved yet has them replayed, exactly once, by the next one; a live server's
journal is never taken. Rows are stored exactly as the ORM stores them, and over random sequences
of records, flushes, refusals, restarts and a database held busy by another writer, every event
is written exactly once.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import random
import shutil
import sqlite3
import subprocess
import sys
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
from modelport.db.tables import UsageEvent, UsageMeter
from modelport.errors import ServiceUnavailable
from modelport.metering import journal as journal_module
from modelport.metering import recorder as recorder_module
from modelport.metering.aggregation import aggregate
from modelport.metering.journal import journal_dir
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


def _awaiting(db: Database, **kw: object) -> MeterRecorder:
    """A recorder whose requests await their commit (PostgreSQL's path; on SQLite with the journal off)."""
    rec = MeterRecorder(db, **kw)  # type: ignore[arg-type]
    rec.journal = False
    return rec


def test_awaited_event_is_committed_and_seen_from_another_connection(db: Database, db_url: str) -> None:
    rec = _awaiting(db)
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
    theirs["aggregated"] = True  # the writer adds its events into the meters as it writes them
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
        assert e.aggregated is True and e.currency == "EUR"
        meters = {m.meter: m for m in s.scalars(select(UsageMeter).where(UsageMeter.deployment_id == "dep_ours"))}
        assert meters["input_tokens"].quantity == ours["input_tokens"] and meters["input_tokens"].requests == 1
        assert meters["output_tokens"].unit_price == Decimal("12.5")
        assert meters["input_tokens"].hour == datetime(2026, 12, 2, 15, tzinfo=UTC)


@pytest.mark.parametrize("journaled", [True, False], ids=["journal", "awaited-commits"])
def test_the_writers_meters_equal_an_aggregation_pass_over_the_same_events(
        db: Database, db_url: str, tmp_path: Path, journaled: bool) -> None:
    """Random events (deployments, offers, prices or none, hours, tokens) written by the recorder,
    which adds them into the meters as it writes them, and the same events stored unaggregated
    and added up by aggregation.py's pass in a second store: the same meters."""
    rng = random.Random(1204)
    start = datetime(2026, 12, 4, 9, tzinfo=UTC)
    rows = []
    for _ in range(300):
        priced = rng.random() < 0.6
        rows.append(_row(deployment_id=f"dep_{rng.randrange(3)}", workspace_id=f"ws_{rng.randrange(2)}",
                         at=start + timedelta(seconds=rng.randrange(3 * 3600)), input_tokens=rng.randrange(0, 900),
                         output_tokens=rng.randrange(0, 900), offer_id="offer_a" if priced else None,
                         subscription_id="sub_a" if priced else None, currency="USD" if priced else None,
                         input_price=Decimal(rng.choice(["0.5", "0.25", "1.125"])) if priced else None,
                         output_price=Decimal(rng.choice(["1.5", "2"])) if priced else None))
    rec = MeterRecorder(db)
    rec.journal = journaled
    rec.start()
    try:
        async def run() -> None:
            for i in range(0, len(rows), 7):
                await asyncio.gather(*(rec.record_durable(r) for r in rows[i:i + 7]))

        asyncio.run(run())
        rec.flush()
    finally:
        rec.stop()
    other = Database(f"sqlite:///{tmp_path / 'pass.db'}")
    migrate.upgrade(other.engine)
    with other.engine.begin() as conn:
        conn.execute(insert(UsageEvent.__table__), [{**r, "aggregated": False} for r in rows])
    assert aggregate(other) == 300
    assert aggregate(db) == 0  # nothing left for a pass

    def meters(d: Database) -> list[tuple]:
        with d.session() as s:
            return sorted((m.hour, m.workspace_id, m.deployment_id, m.model_id, m.offer_id, m.subscription_id, m.meter,
                           m.currency, m.unit_price, m.quantity, m.requests) for m in s.scalars(select(UsageMeter)))

    ours = meters(db)
    assert ours == meters(other)
    assert sum(m[-2] for m in ours if m[6] == "input_tokens") == sum(r["input_tokens"] for r in rows)
    other.dispose()


def test_refused_write_fails_the_waiting_request_and_loses_nothing(db: Database) -> None:
    rec = _awaiting(db)
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
    rec = _awaiting(db)
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
    rec = _awaiting(db, on_commit=lambda rows: heard.extend(r["deployment_id"] for r in rows))
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


def _store(tmp_path: Path, name: str = "j.db") -> Database:
    db = Database(f"sqlite:///{tmp_path / name}")
    migrate.upgrade(db.engine)
    return db


def _journals(db: Database) -> list[Path]:
    return sorted(journal_dir(str(db.engine.url.database)).glob(f"*{journal_module.SUFFIX}"))


def _marks(db: Database) -> dict[str, int]:
    with db.engine.connect() as conn:
        return {r[0]: r[1] for r in conn.execute(text("SELECT journal, position FROM usage_journal_marks"))}


def test_a_journaled_event_is_on_disk_when_awaited_and_moved_in_groups(tmp_path: Path) -> None:
    """On a SQLite file each awaited event is a line of the journal when record_durable returns
    (ids and counts, nothing else), not yet necessarily in the table; a flush moves them, many a
    transaction; a clean stop leaves no journal and no mark."""
    db = _store(tmp_path)
    rec = MeterRecorder(db)
    rec.start()
    try:
        (path,) = _journals(db)
        assert oct(path.stat().st_mode & 0o777) == "0o600"
        assert oct(path.parent.stat().st_mode & 0o777) == "0o700"

        async def run() -> None:
            for i in range(200):
                row = _row(deployment_id=f"dep_j_{i}", offer_id="offer_j", currency="EUR",
                           input_price=Decimal("0.5"), output_price=None)
                await rec.record_durable(row)
                last = path.read_bytes().splitlines()[-1].decode()
                assert journal_module.decode(last) == row  # durable before the answer's last byte
                assert last.split("\t")[2] == f"dep_j_{i}"

        asyncio.run(run())
        rec.flush()
        assert _count(db) == 200
        assert rec.commits < 100  # grouped: the writer lingers for the next events
        assert _marks(db) == {path.name: path.stat().st_size}
    finally:
        rec.stop()
    assert _journals(db) == [] and _marks(db) == {}
    assert _count(db) == 200
    db.dispose()


def test_a_refusing_database_delays_the_move_not_the_answers(tmp_path: Path) -> None:
    heard: list[str] = []
    db = _store(tmp_path)
    rec = MeterRecorder(db, on_commit=lambda rows: heard.extend(r["deployment_id"] for r in rows))
    rec.start()
    try:
        _refuse(db)
        asyncio.run(rec.record_durable(_row(deployment_id="dep_r0")))  # durable: in the journal
        rec.record(_row(deployment_id="dep_r1"))
        assert heard == ["dep_r0", "dep_r1"]  # durable events count against budgets at once
        with pytest.raises(ServiceUnavailable):
            rec.flush(timeout=1.5)  # not in the table yet: a flush does not pretend
        _accept(db)
        rec.flush()
        assert _count(db, deployment_id="dep_r0") == 1 and _count(db, deployment_id="dep_r1") == 1
    finally:
        rec.stop()
    assert _count(db) == 2 and heard == ["dep_r0", "dep_r1"]  # told once, not again when moved
    db.dispose()


CRASH = """
import asyncio, os, sys
from modelport.db.engine import Database
import modelport.metering.recorder as r
from modelport.metering.recorder import MeterRecorder, usage_row
db = Database(sys.argv[1])
rec = MeterRecorder(db)
rec.start()
async def run(start, n):
    for i in range(start, start + n):
        await rec.record_durable(usage_row(workspace_id="ws_crash", deployment_id=f"dep_c_{i}", model_id="m",
                                           api="chat.completions", input_tokens=i, output_tokens=2 * i,
                                           status="success"))
asyncio.run(run(0, 50))
rec.flush()  # these are moved
r.LINGER_SECONDS = 3600  # the writer waits: the next ones stay in the journal
asyncio.run(run(50, 30))  # these are in the journal only when the process dies
os.kill(os.getpid(), 9)
"""


def test_a_killed_servers_journal_is_replayed_exactly_once(tmp_path: Path) -> None:
    """A process killed (SIGKILL) after 80 awaited events, 50 of them moved: the next recorder on
    the store moves the other 30 (a line the kill cut in half is not an event), once; a recorder
    started again later finds nothing to replay."""
    db = _store(tmp_path)
    url = str(db.engine.url)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    proc = subprocess.run([sys.executable, "-c", CRASH, url], env=env, timeout=120, capture_output=True)
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]
    assert _count(db, workspace_id="ws_crash") == 50
    (orphan,) = _journals(db)
    assert _marks(db)[orphan.name] < orphan.stat().st_size
    with orphan.open("ab") as fh:
        fh.write(b"2026-12-04T14:00:00+00:00\tws_crash\tdep_half")  # a write the kill cut short
    rec = MeterRecorder(db)
    rec.start()
    try:
        rec.flush()
        assert rec.replayed == 30
        assert _count(db, workspace_id="ws_crash") == 80
        assert orphan not in _journals(db) and orphan.name not in _marks(db)
    finally:
        rec.stop()
    with db.engine.connect() as conn:
        rows = conn.execute(text("SELECT deployment_id, input_tokens, output_tokens FROM usage_events "
                                 "WHERE workspace_id = 'ws_crash' ORDER BY input_tokens")).all()
    assert [tuple(r) for r in rows] == [(f"dep_c_{i}", i, 2 * i) for i in range(80)]
    again = MeterRecorder(db)
    again.start()
    again.flush()
    assert again.replayed == 0
    again.stop()
    assert _journals(db) == [] and _marks(db) == {} and _count(db, workspace_id="ws_crash") == 80
    db.dispose()


def test_a_live_servers_journal_is_never_replayed(tmp_path: Path) -> None:
    """Two recorders on one store (two servers): each moves its own journal; neither takes the
    other's, which it holds locked."""
    db = _store(tmp_path)
    one, two = MeterRecorder(db), MeterRecorder(db)
    one.start()
    try:
        asyncio.run(one.record_durable(_row(deployment_id="dep_one")))
        two.start()
        try:
            two.flush()
            assert two.replayed == 0 and len(_journals(db)) == 2
            asyncio.run(two.record_durable(_row(deployment_id="dep_two")))
            two.flush()
        finally:
            two.stop()
        one.flush()
    finally:
        one.stop()
    assert _count(db, deployment_id="dep_one") == 1 and _count(db, deployment_id="dep_two") == 1
    assert _journals(db) == [] and _marks(db) == {}
    db.dispose()


def test_full_journals_are_started_anew_and_deleted_once_moved(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Journals of 1,000 bytes: each full one goes with its mark once moved, while the server runs
    and at a stop that comes before the writer moved the last ones."""
    monkeypatch.setattr(journal_module, "ROTATE_BYTES", 1000)
    db = _store(tmp_path)
    rec = MeterRecorder(db)
    rec.start()
    try:
        async def run() -> None:
            for i in range(100):
                await rec.record_durable(_row(deployment_id=f"dep_rot_{i}"))

        asyncio.run(run())
        rec.flush()
        assert _count(db) == 100
        (current,) = _journals(db)  # the full ones are gone
        assert set(_marks(db)) <= {current.name}
        monkeypatch.setattr(recorder_module, "LINGER_SECONDS", 3600)  # the next ones wait for the stop
        asyncio.run(run())
        assert len(_journals(db)) > 5
    finally:
        rec.stop()
    assert _journals(db) == [] and _marks(db) == {} and _count(db) == 200
    db.dispose()


def test_an_unwritable_journal_refuses_the_answer(tmp_path: Path) -> None:
    """If the event cannot be appended (the disk is full, the file is gone), the answer is not sent."""
    db = _store(tmp_path)
    rec = MeterRecorder(db)
    rec.start()
    try:
        journal = rec._journal
        assert journal is not None
        os.close(journal._fd)
        journal._fd = os.open("/dev/full", os.O_WRONLY)
        with pytest.raises(ServiceUnavailable):
            asyncio.run(rec.record_durable(_row(deployment_id="dep_full")))
        journal._fd = os.open(_journals(db)[0], os.O_WRONLY | os.O_APPEND)
        asyncio.run(rec.record_durable(_row(deployment_id="dep_after_full")))
    finally:
        rec.stop()
    assert _count(db, deployment_id="dep_full") == 0 and _count(db, deployment_id="dep_after_full") == 1
    db.dispose()


class RecorderMachine(RuleBasedStateMachine):
    """Random sequences of queued and awaited events, flushes, refusals, recoveries and writer
    restarts: whatever happens, each event is in the table exactly once in the end; an awaited
    event that returned is in it at once (awaited commits) or after the next flush (the journal,
    where none is refused), and one that raised was refused."""

    template: Path  # a migrated store, copied for each example
    journaled = True  # events made durable in the journal (the SQLite default), or commits awaited

    def __init__(self) -> None:
        super().__init__()
        path = self.template.with_name(f"m{next(_ids)}.db")
        shutil.copy(self.template, path)
        self.path = path
        self.db = Database(f"sqlite:///{path}")
        self.rec = MeterRecorder(self.db)
        self.rec.journal = self.journaled
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
            if self.journaled:  # durable in the journal whatever the database does; moved later
                assert outcome is None
            elif outcome is None:
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
            if self.journaled:  # in the journal: answered while the database is held
                assert all(t.done() for t in tasks)
            else:
                assert not any(t.done() for t in tasks)
            lock.execute("ROLLBACK")
            await asyncio.wait_for(asyncio.gather(*tasks), 30)

        try:
            asyncio.run(go())
        finally:
            lock.close()
        self.rec.flush()
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


@pytest.mark.parametrize("journaled", [True, False], ids=["journal", "awaited-commits"])
def test_every_event_written_exactly_once_over_random_sequences(tmp_path: Path, journaled: bool) -> None:
    template = Database(f"sqlite:///{tmp_path / 'template.db'}")
    migrate.upgrade(template.engine)
    template.dispose()
    RecorderMachine.template = tmp_path / "template.db"
    RecorderMachine.journaled = journaled
    run_state_machine_as_test(RecorderMachine, settings=settings(
        max_examples=25, stateful_step_count=15, deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture]))


def test_a_journal_that_cannot_be_started_anew_loses_and_doubles_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A full journal whose successor cannot be created (no file descriptors, a full directory):
    the event that filled it is in and queued, so it is answered and billed once; the server
    keeps appending to the full journal and starts a new one when it can."""
    monkeypatch.setattr(journal_module, "ROTATE_BYTES", 300)
    db = _store(tmp_path)
    rec = MeterRecorder(db)
    rec.start()
    journal = rec._journal
    assert journal is not None
    start_file = journal._start_file

    def refuse() -> None:
        raise OSError(24, "Too many open files")

    try:
        journal._start_file = refuse  # type: ignore[method-assign]

        async def run(prefix: str) -> None:
            for i in range(10):
                await rec.record_durable(_row(deployment_id=f"{prefix}_{i}"))

        asyncio.run(run("dep_full"))  # none raises although each append passes the size
        (full,) = _journals(db)
        assert full.name == journal.name and full.stat().st_size > 300
        rec.record(_row(deployment_id="dep_cut"))  # a cut stream's event: queued once, not twice
        journal._start_file = start_file  # type: ignore[method-assign]
        asyncio.run(run("dep_later"))
        rec.flush()
        assert journal.name != full.name and not full.exists()  # started anew once it could; the full one went
    finally:
        rec.stop()
    with db.engine.connect() as conn:
        ids = [r[0] for r in conn.execute(text("SELECT deployment_id FROM usage_events"))]
    assert sorted(ids) == sorted([f"dep_full_{i}" for i in range(10)] + ["dep_cut"]
                                 + [f"dep_later_{i}" for i in range(10)])
    assert _journals(db) == [] and _marks(db) == {}
    db.dispose()


def test_a_link_in_the_journal_directory_is_not_replayed(tmp_path: Path) -> None:
    """Something planted in the journal directory as a link is left alone, not read as a journal."""
    db = _store(tmp_path)
    target = tmp_path / "elsewhere.usage"
    target.write_bytes(journal_module.encode(_row(deployment_id="dep_planted")))
    _journal_path(db, "0").symlink_to(target)
    assert _start_and_stop(db) == 0
    assert _count(db, deployment_id="dep_planted") == 0 and target.exists()
    db.dispose()


def test_a_journal_of_an_earlier_release_is_replayed_with_its_times(tmp_path: Path) -> None:
    """Journals written before 2026-12-05 hold ISO 8601 times; a server of this release replays
    a crashed one's lines with their exact times and prices (an upgrade after a kill -9)."""
    db = _store(tmp_path)
    when = datetime(2026, 11, 30, 23, 59, 59, 999999, tzinfo=UTC)
    old = _row(deployment_id="dep_old", at=when, currency="EUR", input_price=Decimal("0.25"),
               output_price=Decimal("1.5"))
    line = journal_module.encode(old).decode().split("\t", 1)[1]
    _journal_path(db, "a").write_text(f"{when.isoformat()}\t{line}")
    assert journal_module.decode(journal_module.encode(old).decode()) == old  # this release's form, exact
    assert _start_and_stop(db) == 1
    with db.engine.connect() as conn:
        row = conn.execute(select(UsageEvent.__table__).where(UsageEvent.__table__.c.deployment_id == "dep_old")).one()
    assert row.at.replace(tzinfo=UTC) == when and row.input_price == Decimal("0.25") and row.currency == "EUR"
    db.dispose()


def _journal_path(db: Database, fill: str) -> Path:
    """A journal's path in the store's journal directory (made, 0700), as a crashed server left it."""
    directory = journal_dir(str(db.engine.url.database))
    directory.mkdir(mode=0o700, exist_ok=True)
    return directory / f"{fill * 32}{journal_module.SUFFIX}"


def _start_and_stop(db: Database) -> int:
    """Start a recorder on `db` (it replays what it finds), flush, stop; the events it replayed."""
    rec = MeterRecorder(db)
    rec.start()
    try:
        rec.flush()
    finally:
        rec.stop()
    return rec.replayed

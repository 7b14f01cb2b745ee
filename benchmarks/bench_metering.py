"""What exact metering costs per request: usage events made durable before the answer's last byte
(`MeterRecorder.record_durable`) against the reference of queuing the same events without waiting
(`record` with the journal off, written by the writer thread in the background), on SQLite.

`C` concurrent "requests" each build an event and await `record_durable`, `N` times, two ways in
the same run: appended to the usage journal, moved into the database in groups by the writer
thread (the product on SQLite, metering/journal.py), and committed by the writer thread with the
request awaiting the commit (`journal` off: PostgreSQL's path; every event crosses to the thread
and its answer back). Printed: CPU per event (the whole process: event loop and writer thread,
the move into the database included: the run ends with a flush), events per commit, the p50 and
p99 wait, and the ratio of CPU per event to the reference's.

`--aggregate N` also measures the hourly aggregation (metering/aggregation.py) of N events: CPU
per event of `aggregate`, and of reading the same events as ORM objects (the read before) and
as plain rows (the read now).

`--synchronous FULL` runs the store with SQLite's `synchronous=FULL` (an fsync of the WAL at
every commit) instead of the store's NORMAL (db/engine.py; the WAL is synced at checkpoints):
what durability against a power cut, beyond a killed process, would cost each commit.

    .venv/bin/python benchmarks/bench_metering.py [--events 20000] [--concurrency 32] [--rounds 3]
                                                  [--synchronous NORMAL|FULL] [--aggregate 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from decimal import Decimal
from pathlib import Path

from sqlalchemy import event, false, insert, select

from modelport.db import migrate
from modelport.db.engine import Database
from modelport.db.tables import UsageEvent
from modelport.metering.aggregation import aggregate
from modelport.metering.recorder import MeterRecorder, usage_row


def _row() -> dict:
    return usage_row(workspace_id="ws_0123456789abcdef", deployment_id="dep_0123456789abcdef",
                     model_id="mdl_0123456789abcdef", api="chat.completions", input_tokens=12, output_tokens=34,
                     status="success", offer_id="offer_0123456789abcd", subscription_id="sub_0123456789abcdef",
                     currency="USD", input_price=Decimal("0.5"), output_price=Decimal("1.5"))


async def _durable(rec: MeterRecorder, events: int, concurrency: int) -> list[float]:
    waits: list[float] = []

    async def client(n: int) -> None:
        for _ in range(n):
            t0 = time.perf_counter()
            await rec.record_durable(_row())
            waits.append(time.perf_counter() - t0)

    await asyncio.gather(*(client(events // concurrency) for _ in range(concurrency)))
    return waits


def run(events: int, concurrency: int, durable: bool, synchronous: str = "NORMAL", journal: bool = False) -> dict:
    with tempfile.TemporaryDirectory() as d:
        db = Database(f"sqlite:///{Path(d) / 'bench.db'}")
        if synchronous != "NORMAL":  # after the store's own settings (listeners run in order)
            event.listen(db.engine, "connect", lambda conn, _: conn.execute(f"PRAGMA synchronous={synchronous}"))
        migrate.upgrade(db.engine)
        rec = MeterRecorder(db)
        rec.journal = journal
        rec.start()
        cpu0, wall0 = time.process_time(), time.perf_counter()
        waits: list[float] = []
        if durable:
            waits = asyncio.run(_durable(rec, events, concurrency))
            rec.flush()  # the journal's move into the database is part of the cost
        else:
            for _ in range(events):
                rec.record(_row())
            rec.flush()
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
        rec.stop()
        commits = rec.commits
        db.dispose()
    n = (events // concurrency) * concurrency if durable else events
    out = {"cpu_us_per_event": cpu / n * 1e6, "events_per_commit": n / max(commits, 1), "wall_s": wall}
    if waits:
        waits.sort()
        out["p50_ms"] = statistics.median(waits) * 1000
        out["p99_ms"] = waits[int(len(waits) * 0.99)] * 1000
    return out


def aggregation(n: int) -> dict[str, float]:
    """CPU µs per event: `aggregate` over `n` events, and reading them as ORM objects and as rows."""
    with tempfile.TemporaryDirectory() as d:
        db = Database(f"sqlite:///{Path(d) / 'agg.db'}")
        migrate.upgrade(db.engine)
        with db.engine.begin() as conn:
            conn.execute(insert(UsageEvent.__table__), [_row() for _ in range(n)])
        e = UsageEvent
        out = {}
        with db.session() as s:
            t = time.process_time()
            list(s.scalars(select(e).where(e.aggregated == false())))
            out["read_orm_us"] = (time.process_time() - t) / n * 1e6
        with db.session() as s:
            t = time.process_time()
            s.execute(select(e.id, e.at, e.workspace_id, e.deployment_id, e.model_id, e.offer_id, e.subscription_id,
                             e.currency, e.input_tokens, e.input_price, e.output_tokens, e.output_price)
                      .where(e.aggregated == false())).all()
            out["read_rows_us"] = (time.process_time() - t) / n * 1e6
        t = time.process_time()
        assert aggregate(db) == n
        out["aggregate_us"] = (time.process_time() - t) / n * 1e6
        db.dispose()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=20000)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--synchronous", choices=("NORMAL", "FULL"), default="NORMAL")
    ap.add_argument("--aggregate", type=int, default=0, metavar="N", help="also the aggregation of N events")
    a = ap.parse_args()
    journaled: list[dict] = []
    thread: list[dict] = []
    queued: list[dict] = []
    for _ in range(a.rounds):  # alternated, so that load from elsewhere falls on all alike
        journaled.append(run(a.events, a.concurrency, True, a.synchronous, journal=True))
        thread.append(run(a.events, a.concurrency, True, a.synchronous, journal=False))
        queued.append(run(a.events, a.concurrency, False, a.synchronous))

    def med(rows: list[dict], k: str) -> float:
        return statistics.median(r[k] for r in rows)

    q_cpu = med(queued, "cpu_us_per_event")
    for label, rows in (("journaled, moved in groups", journaled), ("commit awaited, writer thread", thread)):
        cpu = med(rows, "cpu_us_per_event")
        print(f"durable before the last byte, {label} ({a.concurrency} concurrent): {cpu:.1f} µs CPU per "
              f"event ({cpu / q_cpu:.2f}x queuing), {med(rows, 'events_per_commit'):.1f} events per commit, "
              f"wait p50 {med(rows, 'p50_ms'):.3f} ms, p99 {med(rows, 'p99_ms'):.2f} ms")
    print(f"reference, queued without waiting: {q_cpu:.1f} µs CPU per event, "
          f"{med(queued, 'events_per_commit'):.1f} events per commit")
    print(f"journal / awaited commit CPU per event: "
          f"{med(journaled, 'cpu_us_per_event') / med(thread, 'cpu_us_per_event'):.2f}x; "
          f"medians of {a.rounds} rounds of {a.events} events; SQLite synchronous={a.synchronous}; load average "
          + ", ".join(f"{x:.2f}" for x in os.getloadavg()))
    if a.aggregate:
        rounds = [aggregation(a.aggregate) for _ in range(a.rounds)]
        print(f"aggregation of {a.aggregate} events: {med(rounds, 'aggregate_us'):.1f} µs CPU per event; reading "
              f"them as ORM objects {med(rounds, 'read_orm_us'):.1f} µs, as rows {med(rounds, 'read_rows_us'):.1f} µs")


if __name__ == "__main__":
    main()

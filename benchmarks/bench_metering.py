"""What exact metering costs per request: usage events committed before the answer's last byte
(group commit, `MeterRecorder.record_durable`) against the reference of queuing the same events
without waiting (`record`, written by the same thread in the background), on SQLite.

`C` concurrent "requests" each build an event and await its commit, `N` times. Printed: CPU per
event (the whole process: event loop and writer thread), events per commit, the p50 and p99
wait for the commit, and the ratio of CPU per event to the reference's.

`--synchronous FULL` runs the store with SQLite's `synchronous=FULL` (an fsync of the WAL at
every commit) instead of the store's NORMAL (db/engine.py; the WAL is synced at checkpoints):
what durability against a power cut, beyond a killed process, would cost each commit.

    .venv/bin/python benchmarks/bench_metering.py [--events 20000] [--concurrency 32] [--rounds 3]
                                                  [--synchronous NORMAL|FULL]
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

from sqlalchemy import event

from modelport.db import migrate
from modelport.db.engine import Database
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


def run(events: int, concurrency: int, durable: bool, synchronous: str = "NORMAL") -> dict:
    with tempfile.TemporaryDirectory() as d:
        db = Database(f"sqlite:///{Path(d) / 'bench.db'}")
        if synchronous != "NORMAL":  # after the store's own settings (listeners run in order)
            event.listen(db.engine, "connect", lambda conn, _: conn.execute(f"PRAGMA synchronous={synchronous}"))
        migrate.upgrade(db.engine)
        rec = MeterRecorder(db)
        rec.start()
        cpu0, wall0 = time.process_time(), time.perf_counter()
        waits: list[float] = []
        if durable:
            waits = asyncio.run(_durable(rec, events, concurrency))
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=20000)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--synchronous", choices=("NORMAL", "FULL"), default="NORMAL")
    a = ap.parse_args()
    durable = [run(a.events, a.concurrency, True, a.synchronous) for _ in range(a.rounds)]
    queued = [run(a.events, a.concurrency, False, a.synchronous) for _ in range(a.rounds)]

    def med(rows: list[dict], k: str) -> float:
        return statistics.median(r[k] for r in rows)

    d_cpu, q_cpu = med(durable, "cpu_us_per_event"), med(queued, "cpu_us_per_event")
    print(f"group commit before the last byte ({a.concurrency} concurrent): {d_cpu:.1f} µs CPU per event, "
          f"{med(durable, 'events_per_commit'):.1f} events per commit, wait p50 {med(durable, 'p50_ms'):.2f} ms, "
          f"p99 {med(durable, 'p99_ms'):.2f} ms")
    print(f"reference, queued without waiting: {q_cpu:.1f} µs CPU per event, "
          f"{med(queued, 'events_per_commit'):.1f} events per commit")
    print(f"ratio (durable / queued CPU per event): {d_cpu / q_cpu:.2f}x; medians of {a.rounds} rounds of "
          f"{a.events} events; SQLite synchronous={a.synchronous}; load average "
          + ", ".join(f"{x:.2f}" for x in os.getloadavg()))


if __name__ == "__main__":
    main()

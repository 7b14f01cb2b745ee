"""Usage events into hourly meters, `input_tokens` and `output_tokens` (Azure's meter names).

The metering writer adds the events it writes into the meters in the same transaction and
stores them aggregated (metering/recorder.py, with `add_up`): a pass here reading them back and
marking them cost more CPU than the whole request had (BENCHMARKS.md, 2026-12-04). The passes
take what is left (events stored before that, or by other means): each takes the events not yet
aggregated (locked, skipped by a concurrent pass on another replica), adds them into their
hour's meter rows with an upsert, and marks them aggregated, in one transaction: an event
counts in the meters exactly once. Meter rows are kept per unit price, so charges stay exact
when a price changes within an hour. Events are read as plain rows of the columns a meter needs,
not ORM objects (building an object per event costs about as much as the rest of the pass;
benchmarks/bench_metering.py --aggregate).
"""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Iterable
from datetime import datetime
from decimal import Decimal
from typing import cast

from sqlalchemy import Table, false, select, update
from sqlalchemy.dialects import postgresql, sqlite

from modelport.db.engine import Database
from modelport.db.tables import UsageEvent, UsageMeter

METERS = ("input_tokens", "output_tokens")
#: Events one pass takes at most; a backlog takes several passes.
PASS_LIMIT = 20_000
ZERO = Decimal(0)

_lock = threading.Lock()  # one pass at a time in this process (SQLite has no row locks)

MeterKey = tuple[datetime, str, str, str, str, str, str, str, Decimal]


def hour_of(at: datetime) -> datetime:
    return at.replace(minute=0, second=0, microsecond=0)


def add_up(events: Iterable[tuple]) -> dict[MeterKey, list[int]]:
    """The meters' [quantity, requests] per key of `events`: tuples of (at, workspace_id,
    deployment_id, model_id, offer_id, subscription_id, currency, input_tokens, input_price,
    output_tokens, output_price). Used by the passes here and by the metering writer, which adds
    the events it writes into the meters in the same transaction (metering/recorder.py)."""
    sums: dict[MeterKey, list[int]] = defaultdict(lambda: [0, 0])
    for at, ws, dep, model, offer, sub, currency, n_in, p_in, n_out, p_out in events:
        hour = at.replace(minute=0, second=0, microsecond=0)
        for meter, quantity, price in (("input_tokens", n_in, p_in), ("output_tokens", n_out, p_out)):
            acc = sums[(hour, ws, dep, model, offer or "", sub or "", meter, currency or "",
                        price if price is not None else ZERO)]
            acc[0] += quantity
            acc[1] += 1
    return sums


def aggregate(db: Database) -> int:
    """Add every event not yet aggregated into the meters; returns how many were added."""
    total = 0
    with _lock:
        while True:
            n = _one_pass(db)
            total += n
            if n < PASS_LIMIT:
                return total


def _one_pass(db: Database) -> int:
    with db.session() as s:
        e = UsageEvent
        stmt = (select(e.id, e.at, e.workspace_id, e.deployment_id, e.model_id, e.offer_id, e.subscription_id,
                       e.currency, e.input_tokens, e.input_price, e.output_tokens, e.output_price)
                .where(e.aggregated == false()).order_by(e.id).limit(PASS_LIMIT))  # the partial index's term
        if s.bind is not None and s.bind.dialect.name == "postgresql":
            stmt = stmt.with_for_update(skip_locked=True)
        events = s.execute(stmt).all()
        if not events:
            return 0
        sums = add_up(tuple(e[1:]) for e in events)
        dialect = s.bind.dialect.name if s.bind is not None else "sqlite"
        insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
        table = cast(Table, UsageMeter.__table__)
        for (hour, ws, dep, model, offer, sub, meter, currency, price), (quantity, requests) in sums.items():
            row = insert(table).values(hour=hour, workspace_id=ws, deployment_id=dep, model_id=model, offer_id=offer,
                                        subscription_id=sub, meter=meter, currency=currency, unit_price=price,
                                        quantity=quantity, requests=requests)
            upsert = row.on_conflict_do_update(
                index_elements=["hour", "workspace_id", "deployment_id", "model_id", "offer_id", "subscription_id",
                                "meter", "currency", "unit_price"],
                set_={"quantity": table.c.quantity + row.excluded.quantity,
                      "requests": table.c.requests + row.excluded.requests})
            s.execute(upsert)
        ids = [row[0] for row in events]
        for i in range(0, len(ids), 500):
            s.execute(update(UsageEvent).where(UsageEvent.id.in_(ids[i:i + 500])).values(aggregated=True))
        return len(events)


def charge(quantity: int, unit_price: Decimal) -> Decimal:
    """The charge for `quantity` tokens at `unit_price` per 1,000 tokens, exact."""
    return (Decimal(quantity) * unit_price).scaleb(-3)

"""Usage and charges, read from the hourly meters: `GET /api/v1/usage` and `modelport usage`.

Rows are grouped by deployment, model, offer or day (and currency: charges in different
currencies are never added), each with `input_tokens`, `output_tokens`, `requests` and
`charges`, a Decimal computed from the meters' unit prices (the prices in force when each
request ran). The range is whole hours: `from` is rounded down to its hour, `to` is exclusive.
Before answering, events not yet aggregated are added into the meters, so a request that has
been answered is in the figures.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Literal

from sqlalchemy import select

from modelport.db.engine import Database
from modelport.db.tables import CatalogModel, Deployment, UsageMeter, Workspace
from modelport.errors import InvalidInput
from modelport.identity.principal import Principal
from modelport.metering.aggregation import aggregate, charge, hour_of
from modelport.metering.recorder import MeterRecorder

GroupBy = Literal["deployment", "model", "offer", "day"]
MAX_RANGE = timedelta(days=366)
CSV_FIELDS = ("workspace", "group", "currency", "requests", "input_tokens", "output_tokens", "charges")


@dataclass
class UsageRow:
    group: str
    currency: str | None
    requests: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    charges: Decimal = Decimal(0)
    workspace: str | None = None

    def as_dict(self) -> dict:
        return {"workspace": self.workspace, "group": self.group, "currency": self.currency,
                "requests": self.requests, "input_tokens": self.input_tokens, "output_tokens": self.output_tokens,
                "charges": self.charges}


def parse_range(start: datetime | None, end: datetime | None, now: datetime | None = None) -> tuple[datetime, datetime]:
    """The hours of [start, end): by default the current month to now."""
    now = now or datetime.now(UTC)
    end = end or now + timedelta(hours=1)
    start = start or now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    for name, value in (("from", start), ("to", end)):
        if value.tzinfo is None:
            raise InvalidInput(f"'{name}' needs a time zone (e.g. 2026-12-01T00:00:00Z).", field=name)
    start, end = hour_of(start.astimezone(UTC)), end.astimezone(UTC)
    if end <= start:
        raise InvalidInput("'to' must be later than 'from'.", field="to")
    if end - start > MAX_RANGE:
        raise InvalidInput("The range may span at most 366 days; ask for less.", field="to")
    return start, end


class UsageService:
    def __init__(self, db: Database, recorder: MeterRecorder) -> None:
        self.db = db
        self.recorder = recorder

    def refresh(self) -> None:
        """Every answered request into the meters: queued events committed, then aggregated."""
        self.recorder.flush()
        aggregate(self.db)

    def meters(self, start: datetime, end: datetime, workspace_id: str | None = None,
               offer_ids: list[str] | None = None) -> list[UsageMeter]:
        self.refresh()
        with self.db.session() as s:
            q = select(UsageMeter).where(UsageMeter.hour >= start, UsageMeter.hour < end)
            if workspace_id is not None:
                q = q.where(UsageMeter.workspace_id == workspace_id)
            if offer_ids is not None:
                q = q.where(UsageMeter.offer_id.in_(offer_ids or ["-"]))
            return list(s.scalars(q.order_by(UsageMeter.hour, UsageMeter.id)))

    def usage(self, actor: Principal, start: datetime | None, end: datetime | None, group_by: GroupBy,
              all_workspaces: bool = False) -> list[UsageRow]:
        if all_workspaces:
            actor.require("platform.usage")
        else:
            actor.require("usage.read")
        start, end = parse_range(start, end)
        rows = self.meters(start, end, None if all_workspaces else actor.workspace_id)
        with self.db.session() as s:
            deps = dict(s.execute(select(Deployment.id, Deployment.name)).tuples().all())
            models = dict(s.execute(select(CatalogModel.id, CatalogModel.name)).tuples().all())
            spaces = dict(s.execute(select(Workspace.id, Workspace.name)).tuples().all()) if all_workspaces else {}
        out: dict[tuple, UsageRow] = {}
        for m in rows:
            if group_by == "deployment":
                group = deps.get(m.deployment_id, m.deployment_id)
            elif group_by == "model":
                group = models.get(m.model_id, m.model_id)
            elif group_by == "offer":
                group = m.offer_id or "-"
            else:
                group = m.hour.date().isoformat()
            ws = spaces.get(m.workspace_id, m.workspace_id) if all_workspaces else None
            key = (ws, group, m.currency)
            row = out.get(key)
            if row is None:
                row = out[key] = UsageRow(group=group, currency=m.currency or None, workspace=ws)
            if m.meter == "input_tokens":
                row.input_tokens += m.quantity
                row.requests += m.requests
            else:
                row.output_tokens += m.quantity
            row.charges += charge(m.quantity, m.unit_price)
        return sorted(out.values(), key=lambda r: (r.workspace or "", r.group, r.currency or ""))

    def spent(self, workspace_id: str, currency: str, month_start: datetime) -> Decimal:
        """Charges of a workspace in one currency since `month_start` (for budgets)."""
        total = Decimal(0)
        for m in self.meters(month_start, month_start + timedelta(days=32), workspace_id):
            if m.currency == currency and m.hour >= month_start:
                total += charge(m.quantity, m.unit_price)
        return total


def to_csv(rows: list[UsageRow], group_by: str, with_workspace: bool) -> str:
    buf = io.StringIO()
    fields = [f for f in CSV_FIELDS if with_workspace or f != "workspace"]
    w = csv.writer(buf)
    w.writerow([group_by if f == "group" else f for f in fields])
    for r in rows:
        d = r.as_dict()
        w.writerow([_csv_safe(d[f]) for f in fields])
    return buf.getvalue()


def _csv_safe(value: object) -> str:
    """A cell a spreadsheet shows as text: no formula injection from names."""
    text = "" if value is None else str(value)
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


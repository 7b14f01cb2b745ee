"""What a publisher sees (P3): per subscription of its own offers and per day, the contact the
subscriber shared (only where it consented; otherwise the opaque subscription id alone), usage
volume (requests, input and output tokens) and charges. Nothing else: no workspace, deployment,
user, key, prompt or output. Rows are built field by field from the hourly meters into the
allow-list models of `schemas.py`; another publisher's offer answers 404.
"""

from __future__ import annotations

import csv
import io
from datetime import datetime
from decimal import Decimal

from sqlalchemy import select

from modelport.db.engine import Database
from modelport.db.tables import Offer, Subscription
from modelport.errors import NotFound
from modelport.identity.principal import PublisherPrincipal
from modelport.marketplace.offers import NO_OFFER
from modelport.marketplace.schemas import PublisherSubscriptionOut, ReportOut, ReportRow, SharedContact
from modelport.metering.aggregation import charge
from modelport.metering.usage import UsageService, parse_range

CSV_FIELDS = ("day", "subscription", "offer", "contact_name", "contact_email", "contact_organization", "currency",
              "requests", "input_tokens", "output_tokens", "charges")


def shared_contact(sub: Subscription | None) -> SharedContact | None:
    if sub is None or sub.consent_at is None:
        return None
    return SharedContact(name=sub.contact_name, email=sub.contact_email, organization=sub.contact_organization)


class PublisherReports:
    def __init__(self, db: Database, usage: UsageService) -> None:
        self.db = db
        self.usage = usage

    def _offers(self, actor: PublisherPrincipal, offer: str | None) -> list[str]:
        with self.db.session() as s:
            q = select(Offer.id).where(Offer.publisher_id == actor.publisher_id)
            ids = list(s.scalars(q))
        if offer is not None:
            if offer not in ids:
                raise NotFound(NO_OFFER, field="offer")
            return [offer]
        return ids

    def subscriptions(self, actor: PublisherPrincipal, offer: str | None = None) -> list[PublisherSubscriptionOut]:
        ids = self._offers(actor, offer)
        with self.db.session() as s:
            subs = s.scalars(select(Subscription).where(Subscription.offer_id.in_(ids or ["-"]))
                             .order_by(Subscription.created_at))
            return [PublisherSubscriptionOut(subscription=sub.id, offer=sub.offer_id, state=sub.state,
                                             terms_version=sub.terms_version, contact=shared_contact(sub),
                                             created_at=sub.created_at) for sub in subs]

    def report(self, actor: PublisherPrincipal, start: datetime | None, end: datetime | None,
               offer: str | None = None) -> ReportOut:
        start, end = parse_range(start, end)
        ids = self._offers(actor, offer)
        meters = self.usage.meters(start, end, offer_ids=ids)
        with self.db.session() as s:
            subs = {sub.id: sub for sub in s.scalars(select(Subscription).where(
                Subscription.offer_id.in_(ids or ["-"])))}
        rows: dict[tuple, dict] = {}
        for m in meters:
            key = (m.hour.date(), m.subscription_id or "-", m.offer_id, m.currency)
            row = rows.setdefault(key, {"requests": 0, "input_tokens": 0, "output_tokens": 0,
                                        "charges": Decimal(0)})
            row[m.meter] += m.quantity
            if m.meter == "input_tokens":
                row["requests"] += m.requests
            row["charges"] += charge(m.quantity, m.unit_price)
        out = [ReportRow(day=day, subscription=sub_id, offer=offer_id, contact=shared_contact(subs.get(sub_id)),
                         currency=currency, requests=v["requests"], input_tokens=v["input_tokens"],
                         output_tokens=v["output_tokens"], charges=v["charges"])
               for (day, sub_id, offer_id, currency), v in sorted(rows.items())]
        return ReportOut.model_validate({"publisher": actor.publisher_name, "from": start, "to": end, "rows": out})


def report_csv(report: ReportOut) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(CSV_FIELDS)
    for r in report.rows:
        c = r.contact
        cells = [r.day.isoformat(), r.subscription, r.offer, c.name if c else "", c.email if c else "",
                 c.organization if c else "", r.currency, r.requests, r.input_tokens, r.output_tokens, r.charges]
        w.writerow([_safe(x) for x in cells])
    return buf.getvalue()


def _safe(value: object) -> str:
    text = str(value)
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text

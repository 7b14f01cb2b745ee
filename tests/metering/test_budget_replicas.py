"""Budgets across several servers sharing one database: the documented bound.

Each server counts its own committed charges against a budget at once (the metering writer tells
its BudgetService), and the other servers' charges when it reloads the budgets from the meters,
every MODELPORT_METER_AGGREGATE_SECONDS. So once a workspace's budget is spent through one
server, that server refuses the next call at once; another server admits calls until its next
reload: the overshoot is at most what the other servers commit within one reload period (plus
the metering writer's LINGER_SECONDS, during which a server's journaled events are not in the
database yet, and the calls already admitted everywhere when the budget ran out). After one reload, every server
refuses.

Two servers are modelled in this process by two sets of the real services (writer, usage,
budgets) over one real database, on SQLite and PostgreSQL.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from modelport.db import migrate
from modelport.db.base import new_id
from modelport.db.engine import Database
from modelport.db.tables import Budget, Workspace
from modelport.inference.routing import Billing, Route
from modelport.metering.budgets import BudgetExhausted, BudgetService, month_of, month_start
from modelport.metering.recorder import MeterRecorder, usage_row
from modelport.metering.usage import UsageService
from modelport.quotas.rates import RateLimits
from modelport.safety.config import ContentFilterConfig

PRICE = Decimal("1")  # per 1,000 tokens: a call of 500 + 500 tokens costs 1 USD
BUDGET = Decimal("3")


@dataclasses.dataclass
class Replica:
    recorder: MeterRecorder
    budgets: BudgetService

    def call(self, route: Route) -> None:
        """One admitted call billed 1 USD, committed before its answer (as the handlers do)."""
        assert self.admits(route)
        b = route.billing
        row = usage_row(workspace_id=route.workspace_id, deployment_id=route.id, model_id=route.model_id,
                        api="chat.completions", input_tokens=500, output_tokens=500, status="success",
                        offer_id=b.offer_id, subscription_id=b.subscription_id, currency=b.currency,
                        input_price=b.input_price, output_price=b.output_price)
        asyncio.run(self.recorder.record_durable(row))

    def admits(self, route: Route) -> bool:
        """The admission step, on an event loop as on the request path (a refusal is audited)."""
        async def check() -> bool:
            try:
                self.budgets.check(route)
            except BudgetExhausted:
                return False
            return True

        return asyncio.run(check())


@pytest.fixture
def db(db_url: str) -> Iterator[Database]:
    database = Database(db_url)
    migrate.upgrade(database.engine)
    yield database
    database.dispose()


def _route(workspace_id: str) -> Route:
    return Route(id=new_id("dep"), workspace_id=workspace_id, name="sold", model_id="mdl_x", model_name="m",
                 task="chat-completion", type="serverless", geography="local", state="succeeded", state_reason=None,
                 public_access=True, allowed=(), primary_lookup="", primary_digest="", secondary_lookup="",
                 secondary_digest="", pool_key="p", content_filter=ContentFilterConfig(), created_at=0,
                 rate_limits=RateLimits(1000, 200_000),
                 billing=Billing(offer_id="offer_x", subscription_id="sub_x", currency="USD", input_price=PRICE,
                                 output_price=PRICE))


def _replica(db: Database) -> Replica:
    recorder = MeterRecorder(db)
    budgets = BudgetService(db, UsageService(db, recorder))
    recorder.on_commit = budgets.on_commit
    recorder.start()
    budgets.load()
    return Replica(recorder, budgets)


def test_overshoot_is_bounded_by_one_reload_of_the_other_servers(db: Database) -> None:
    ws = new_id("ws")
    with db.session() as s:
        s.add(Workspace(id=ws, name="buyer"))
        s.flush()
        s.add(Budget(workspace_id=ws, currency="USD", amount=BUDGET, alerted=[], alerted_month=""))
    route = _route(ws)
    a, b = _replica(db), _replica(db)
    try:
        for _ in range(int(BUDGET)):  # the budget is spent through server A
            a.call(route)
        assert not a.admits(route)  # A refuses the very next call
        # B has not reloaded yet: it admits, and what it commits counts at once on B only
        b.call(route)  # B admits: it knows of its own charges only
        assert b.admits(route)
        # the periodic reload (every MODELPORT_METER_AGGREGATE_SECONDS, 30 s by default): by then
        # each server has moved its journaled events into the database (within LINGER_SECONDS)
        a.recorder.flush()
        b.recorder.flush()
        b.budgets.load()
        a.budgets.load()
        assert not a.admits(route) and not b.admits(route)  # after one reload every server refuses
        spent = b.budgets.usage.spent(ws, "USD", _month_start())
        # the overshoot: exactly what B committed between the budget running out and its reload
        assert spent == BUDGET + 1
    finally:
        a.recorder.stop()
        b.recorder.stop()


def test_a_servers_own_charges_count_at_once(db: Database) -> None:
    ws = new_id("ws")
    with db.session() as s:
        s.add(Workspace(id=ws, name="solo"))
        s.flush()
        s.add(Budget(workspace_id=ws, currency="USD", amount=BUDGET, alerted=[], alerted_month=""))
    route = _route(ws)
    a = _replica(db)
    try:
        for _ in range(int(BUDGET)):
            assert a.admits(route)
            a.call(route)
        assert not a.admits(route)  # no reload needed on the server that committed the charges
    finally:
        a.recorder.stop()


def _month_start() -> datetime:
    return month_start(month_of(datetime.now(UTC)))

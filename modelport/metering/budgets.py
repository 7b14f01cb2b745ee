"""Workspace budgets: an amount per calendar month (UTC) and currency.

When a workspace's charges in a currency reach its budget, calls of deployments billed in that
currency answer 403 with error code `budget_exhausted` (not 429: retrying does not help) until
the month ends or an owner raises the budget. Crossing 80% and 100% is recorded in the audit log
once a month each, and each refusal is audited (at most once a minute per workspace and currency).

The request path reads only memory: the spending of each budgeted workspace is loaded from the
meters when its budget is set or at start, then every durable usage event adds its charge
(`MeterRecorder.on_commit`, before the answer of the request leaves; on the event loop when the
event is journaled, in the writer thread after an awaited commit, so the audit records it leads
to are written by a thread of their own). Other replicas' spending arrives with the periodic
reload (every `meter_aggregate_seconds`), so with several servers a budget can be exceeded by
what the others charge within one reload period (and the metering writer's LINGER_SECONDS, while
their journaled events are not in the database yet), plus the calls in flight everywhere when it
ran out; after one reload every server refuses.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import select

from modelport.audit import service as audit
from modelport.db.engine import Database
from modelport.db.tables import Budget
from modelport.errors import Forbidden, InvalidInput, NotFound
from modelport.identity.principal import Principal
from modelport.inference.routing import Route
from modelport.metering.usage import UsageService
from modelport.offload import run_blocking

log = logging.getLogger("modelport.metering")

THRESHOLDS = (80, 100)
REFUSAL_AUDIT_SECONDS = 60.0
MAX_AMOUNT = Decimal("1e12")


class BudgetExhausted(Forbidden):
    """The workspace's monthly budget in this currency is spent (403; clients must not retry)."""

    code = "budget_exhausted"


def month_of(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m")


def month_start(month: str) -> datetime:
    return datetime.strptime(month + "-01", "%Y-%m-%d").replace(tzinfo=UTC)


@dataclass
class BudgetState:
    amount: Decimal
    month: str
    spent: Decimal
    alerted: set[int]


class BudgetService:
    def __init__(self, db: Database, usage: UsageService) -> None:
        self.db = db
        self.usage = usage
        self._lock = threading.Lock()
        self._state: dict[tuple[str, str], BudgetState] = {}
        self._refused_at: dict[tuple[str, str], float] = {}
        self._pending_refusals: list[tuple[str, str, str]] = []
        # thresholds crossed, not audited yet: (workspace, currency, month, threshold, spent, amount)
        self._pending_alerts: list[tuple[str, str, str, int, Decimal, Decimal]] = []
        self._audit_lock = threading.Lock()  # one audit writer at a time (a threshold is audited once)
        self._writes: set[asyncio.Task[None]] = set()

    # -- the request path ---------------------------------------------------------------------

    def check(self, route: Route) -> None:
        """Admission step: refuse (403 budget_exhausted) a call billed in a spent budget's currency."""
        currency = route.billing.currency
        if currency is None:
            return
        state = self._state.get((route.workspace_id, currency))
        if state is None or state.month != month_of(datetime.now(UTC)) or state.spent < state.amount:
            return
        key = (route.workspace_id, currency)
        now = time.monotonic()
        if now - self._refused_at.get(key, -1e9) >= REFUSAL_AUDIT_SECONDS:
            self._refused_at[key] = now
            with self._lock:
                self._pending_refusals.append((route.workspace_id, currency, route.id))
            task = asyncio.get_running_loop().create_task(run_blocking(self._write_refusals_quietly))
            self._writes.add(task)  # held until done: the loop keeps only weak references to tasks
            task.add_done_callback(self._writes.discard)
        raise BudgetExhausted(
            f"This workspace's budget of {state.amount} {currency} for {state.month} is spent; calls billed in "
            f"{currency} are refused until next month or until an owner raises it (modelport budget set).",
            details={"openai_code": "budget_exhausted", "azure_code": "budget_exhausted"})

    def on_commit(self, rows: list[dict[str, Any]]) -> None:
        """Add the charges of committed usage events. Called by the metering writer in the thread
        that committed them: on an event loop, the audit records of crossed thresholds and of
        refusals are written by a thread started for them (the loop never waits for the database);
        on any other thread, before returning."""
        crossed = []
        with self._lock:
            for r in rows:
                currency = r.get("currency")
                if currency is None:
                    continue
                state = self._state.get((r["workspace_id"], currency))
                if state is None:
                    continue
                month = month_of(r["at"])
                if month != state.month:
                    state.month, state.spent, state.alerted = month, Decimal(0), set()
                state.spent += (Decimal(r["input_tokens"]) * r["input_price"]
                                + Decimal(r["output_tokens"]) * r["output_price"]).scaleb(-3)
                for t in THRESHOLDS:
                    if t not in state.alerted and state.spent * 100 >= state.amount * t:
                        state.alerted.add(t)
                        crossed.append((r["workspace_id"], currency, state.month, t, state.spent, state.amount))
            self._pending_alerts += crossed
            if not self._pending_alerts and not self._pending_refusals:
                return
        try:
            asyncio.get_running_loop()
        except RuntimeError:  # a thread: write now
            self.write_audits()
            return
        # not a daemon: the records are written before the process exits normally
        threading.Thread(target=self._write_audits_quietly, name="budget-audit").start()

    def write_audits(self) -> None:
        """Write the audit records of crossed thresholds and of refusals not written yet."""
        with self._audit_lock:
            with self._lock:
                alerts, self._pending_alerts = self._pending_alerts, []
            for ws, currency, month, t, spent, amount in alerts:
                self._alert(ws, currency, month, t, spent, amount)
            self.write_refusals()

    def _write_audits_quietly(self) -> None:
        try:
            self.write_audits()
        except Exception:
            log.exception("could not write budget audit records")

    def _alert(self, workspace_id: str, currency: str, month: str, threshold: int, spent: Decimal,
               amount: Decimal) -> None:
        with self.db.session() as s:
            row = s.scalar(select(Budget).where(Budget.workspace_id == workspace_id, Budget.currency == currency)
                           .with_for_update())
            if row is None:
                return
            seen = set(row.alerted or []) if row.alerted_month == month else set()
            if threshold in seen:
                return
            row.alerted_month, row.alerted = month, sorted(seen | {threshold})
            audit.record(s, None, "budget.exhausted" if threshold >= 100 else "budget.threshold",
                         resource_type="budget", resource_id=currency, workspace_id=workspace_id,
                         detail={"threshold_percent": threshold, "month": month, "spent": str(spent),
                                 "amount": str(amount)})

    def _write_refusals_quietly(self) -> None:
        try:
            self.write_refusals()
        except Exception:
            log.exception("could not audit budget refusals")

    def write_refusals(self) -> None:
        with self._lock:
            pending, self._pending_refusals = self._pending_refusals, []
        if not pending:
            return
        with self.db.session() as s:
            for ws, currency, dep in pending:
                audit.record(s, None, "budget.refused", resource_type="deployment", resource_id=dep, workspace_id=ws,
                             outcome="denied", status_code=403, detail={"currency": currency})

    # -- loading ------------------------------------------------------------------------------

    def load(self) -> None:
        """(Re)load every budget and its month's spending from the meters."""
        month = month_of(datetime.now(UTC))
        with self.db.session() as s:
            budgets = list(s.scalars(select(Budget)))
        fresh = {}
        for b in budgets:
            spent = self.usage.spent(b.workspace_id, b.currency, month_start(month))
            alerted = set(b.alerted or []) if b.alerted_month == month else set()
            fresh[(b.workspace_id, b.currency)] = BudgetState(b.amount, month, spent, alerted)
        with self._lock:
            self._state = fresh

    # -- the control plane --------------------------------------------------------------------

    def put(self, actor: Principal, currency: str, amount: str) -> dict:
        actor.require("budgets.manage")
        if len(currency) != 3 or not currency.isascii() or not currency.isupper() or not currency.isalpha():
            raise InvalidInput("currency is a three-letter ISO 4217 code in capitals, e.g. USD.", field="currency")
        try:
            value = Decimal(amount)
        except (ArithmeticError, ValueError) as exc:
            raise InvalidInput("amount must be a decimal number such as 250.00.", field="amount") from exc
        exponent = value.as_tuple().exponent  # an int for a finite value ('n', 'N', 'F' otherwise)
        if not value.is_finite() or value < 0 or value >= MAX_AMOUNT or (isinstance(exponent, int) and exponent < -9):
            raise InvalidInput("amount must be a number from 0 to 999,999,999,999 with at most 9 decimals.",
                               field="amount")
        with self.db.session() as s:
            row = s.scalar(select(Budget).where(Budget.workspace_id == actor.workspace_id,
                                                Budget.currency == currency))
            if row is None:
                row = Budget(workspace_id=actor.workspace_id, currency=currency, alerted=[], alerted_month="")
                s.add(row)
            row.amount, row.updated_by = value, actor.user_id
            # a new amount is judged afresh against this month's thresholds
            row.alerted, row.alerted_month = [], ""
            audit.record(s, actor, "budget.set", resource_type="budget", resource_id=currency,
                         detail={"amount": str(value)})
        month = month_of(datetime.now(UTC))
        spent = self.usage.spent(actor.workspace_id, currency, month_start(month))
        with self._lock:
            self._state[(actor.workspace_id, currency)] = BudgetState(value, month, spent, set())
        self.on_commit([])  # thresholds already passed are audited now
        for t in THRESHOLDS:
            if spent * 100 >= value * t:
                with self._lock:
                    self._state[(actor.workspace_id, currency)].alerted.add(t)
                self._alert(actor.workspace_id, currency, month, t, spent, value)
        return self.show(actor, currency)

    def list(self, actor: Principal) -> list[dict]:
        actor.require("budgets.read")
        with self.db.session() as s:
            rows: Sequence[Budget] = s.scalars(select(Budget).where(Budget.workspace_id == actor.workspace_id)
                                               .order_by(Budget.currency)).all()
        return [self._out(actor, b) for b in rows]

    def show(self, actor: Principal, currency: str) -> dict:
        actor.require("budgets.read")
        with self.db.session() as s:
            b = s.scalar(select(Budget).where(Budget.workspace_id == actor.workspace_id, Budget.currency == currency))
        if b is None:
            raise NotFound("This workspace has no budget in that currency; set one with 'modelport budget set'.")
        return self._out(actor, b)

    def _out(self, actor: Principal, b: Budget) -> dict:
        month = month_of(datetime.now(UTC))
        spent = self.usage.spent(actor.workspace_id, b.currency, month_start(month))
        remaining = max(b.amount - spent, Decimal(0))
        return {"currency": b.currency, "amount": b.amount, "month": month, "spent": spent, "remaining": remaining,
                "exhausted": spent >= b.amount, "updated_at": b.updated_at}

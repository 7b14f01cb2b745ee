"""The routing table: every deployment as the gateway needs it, in memory.

The request path never queries the database: it finds a deployment by its key's lookup id
(`by_key`) or by (workspace, name) (`by_name`). The table is built from the rows at start and
refreshed after every change the control plane makes; the query runs on a worker thread
(`modelport.offload.run_blocking`), the table changes on the event loop.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from modelport.config import Settings
from modelport.db.engine import Database
from modelport.db.tables import CatalogModel, Deployment
from modelport.marketplace.offers import offer_for_model, usable_subscription
from modelport.offload import run_blocking
from modelport.quotas import rates
from modelport.quotas.rates import RateLimits
from modelport.safety.config import ContentFilterConfig

#: States in which a deployment's workers run (or are starting).
SERVING_STATES = ("creating", "succeeded")


@dataclass(frozen=True)
class Billing:
    """What a deployment's requests are billed under: its model's offer and the workspace's
    subscription to it, and the prices in force (per 1,000 tokens). All None: not billed."""

    offer_id: str | None = None
    subscription_id: str | None = None
    currency: str | None = None
    input_price: Decimal | None = None
    output_price: Decimal | None = None


FREE = Billing()


@dataclass(frozen=True)
class Route:
    """Everything the gateway needs about one deployment, without a database query."""

    id: str
    workspace_id: str
    name: str
    model_id: str
    model_name: str
    task: str
    type: str
    geography: str
    state: str
    state_reason: str | None
    public_access: bool
    allowed: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]
    primary_lookup: str
    primary_digest: str
    secondary_lookup: str
    secondary_digest: str
    pool_key: str
    content_filter: ContentFilterConfig  # parsed once here, never on the request path
    created_at: int
    rate_limits: RateLimits  # what admission enforces (quotas/rates.py)
    billing: Billing = FREE

    def allows_client(self, host: str | None) -> bool:
        if self.public_access:
            return True
        if host is None:
            return False
        try:
            addr = ipaddress.ip_address(host)
        except ValueError:
            return False
        return any(addr in net for net in self.allowed)


def billing_of(s: Session, dep: Deployment, model: CatalogModel) -> Billing:
    """What the deployment's requests are billed under: its model's offer (for the deployment
    types it covers) and the workspace's usable subscription, at the offer's current prices."""
    offer = offer_for_model(s, model.id)
    if offer is None or dep.type not in (offer.deployment_types or []):
        return FREE
    sub = usable_subscription(s, dep.workspace_id, offer.id)
    return Billing(offer_id=offer.id, subscription_id=sub.id if sub else None, currency=offer.currency,
                   input_price=offer.input_price, output_price=offer.output_price)


def pool_key(dep: Deployment, model: CatalogModel) -> str:
    """The pool that serves a deployment: its own (dedicated) or its model's in its geography."""
    if dep.type == "dedicated":
        return f"dedicated:{dep.id}"
    if model.owner_workspace_id:
        # A workspace's private model is served only on workers of that workspace (P6, P9).
        return f"serverless:{model.id}:{dep.geography}:{dep.workspace_id}"
    return f"serverless:{model.id}:{dep.geography}"


class RoutingTable:
    def __init__(self, settings: Settings, db: Database) -> None:
        self.settings = settings
        self.db = db
        self.by_name: dict[tuple[str, str], Route] = {}
        self.by_key: dict[str, Route] = {}
        # Refreshes of one deployment may finish out of order (each reads on a thread): the one
        # asked for last wins, so an older read never overwrites a newer one.
        self._asked = 0
        self._applied: dict[str, int] = {}

    # -- reading rows (on a worker thread) ----------------------------------------------------

    def route_of(self, d: Deployment, m: CatalogModel, billing: Billing = FREE) -> Route:
        net = d.network or {}
        return Route(
            billing=billing,
            id=d.id,
            workspace_id=d.workspace_id,
            name=d.name,
            model_id=m.id,
            model_name=m.name,
            task=m.task,
            type=d.type,
            geography=d.geography,
            state=d.state,
            state_reason=d.state_reason,
            public_access=net.get("public_access", True),
            allowed=tuple(ipaddress.ip_network(r) for r in net.get("allowed_ranges", [])),
            primary_lookup=d.primary_lookup,
            primary_digest=d.primary_digest,
            secondary_lookup=d.secondary_lookup,
            secondary_digest=d.secondary_digest,
            pool_key=pool_key(d, m),
            content_filter=ContentFilterConfig.model_validate(d.content_filter or {}),
            created_at=int(d.created_at.timestamp()),
            rate_limits=rates.effective(self.settings, d.type, d.rate_limit_caps, d.rate_limits),
        )

    def _read_all(self) -> list[Route]:
        with self.db.session() as s:
            rows = s.execute(
                select(Deployment, CatalogModel).join(CatalogModel, CatalogModel.id == Deployment.model_id))
            return [self.route_of(d, m, billing_of(s, d, m)) for d, m in rows]

    def _read(self, dep_id: str) -> Route | None:
        with self.db.session() as s:
            row = s.execute(
                select(Deployment, CatalogModel)
                .join(CatalogModel, CatalogModel.id == Deployment.model_id)
                .where(Deployment.id == dep_id)
            ).first()
            return None if row is None else self.route_of(*row, billing_of(s, *row))

    # -- changing the table (on the event loop) -------------------------------------------------

    async def load(self) -> None:
        """Every deployment, from its row (at start)."""
        self._put_all(await run_blocking(self._read_all))

    def _put_all(self, routes: list[Route]) -> None:
        self.by_name = {(r.workspace_id, r.name): r for r in routes}
        self.by_key = {k: r for r in routes for k in (r.primary_lookup, r.secondary_lookup)}

    async def refresh(self, dep_id: str) -> Route | None:
        """The deployment as its row says now (None once the row is gone)."""
        self._asked += 1
        asked = self._asked
        route = await run_blocking(self._read, dep_id)
        if self._applied.get(dep_id, 0) > asked:
            return route  # a refresh asked for later has already put a newer route in
        self._applied[dep_id] = asked
        self._drop(lambda r: r.id == dep_id)
        if route is None:
            return None  # (its entry in _applied stays: an older read must not bring it back)
        self.by_name[(route.workspace_id, route.name)] = route
        self.by_key[route.primary_lookup] = route
        self.by_key[route.secondary_lookup] = route
        return route

    async def refresh_model(self, model_id: str) -> None:
        """Every deployment of a model again (its offer's prices or state changed)."""
        for dep_id in sorted({r.id for r in self.routes() if r.model_id == model_id}):
            await self.refresh(dep_id)

    def forget_workspace(self, workspace_id: str) -> None:
        """Drop every route of a workspace (its deployment keys get 401 from here)."""
        self._drop(lambda r: r.workspace_id == workspace_id)

    def _drop(self, which: Callable[[Route], bool]) -> None:
        tables: tuple[dict[Any, Route], ...] = (self.by_name, self.by_key)
        for table in tables:
            for k in [k for k, r in table.items() if which(r)]:
                del table[k]

    # -- questions --------------------------------------------------------------------------------

    def routes(self) -> list[Route]:
        return list(self.by_name.values())

    def find(self, dep_id: str) -> Route | None:
        return next((r for r in self.routes() if r.id == dep_id), None)

    def of_workspace(self, workspace_id: str) -> list[Route]:
        return sorted((r for r in self.routes() if r.workspace_id == workspace_id), key=lambda r: r.name)

    def shares_pool(self, route: Route, *, serving: bool = False) -> bool:
        """Whether another deployment (one whose workers run, with `serving`) uses `route`'s pool."""
        return any(r.pool_key == route.pool_key and r.id != route.id and (not serving or r.state in SERVING_STATES)
                   for r in self.routes())

    def pool_keys(self, routes: Iterable[Route] | None = None) -> set[str]:
        return {r.pool_key for r in (self.routes() if routes is None else routes)}

"""One deployment lifecycle: every change to a deployment, in both planes, in one place.

A change has two halves: the control plane's row (DeploymentService: rules, roles, policies,
audit, in a transaction) and the data plane (the gateway: its routing table, the pools and
their workers). Routes (REST and portal) and the other services that change deployments
(marketplace subscriptions, policy enforcement, a disabled workspace key, a fine-tuned model's
deletion, a workspace's deletion) call this service only, so the halves always come in the same
order: the row first (a refused change changes nothing), then the routing table, then workers.

Blocking work (database, files) runs on worker threads (`run_blocking`); the routing table and
the pools change on the event loop.
"""

from __future__ import annotations

import builtins
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sqlalchemy import select

from modelport.db.tables import CatalogModel, Deployment
from modelport.deployments.schemas import DeploymentCreate, DeploymentUpdate
from modelport.deployments.service import CreatedDeployment, DeploymentService
from modelport.identity.principal import Principal
from modelport.inference.gateway import Gateway
from modelport.inference.routing import pool_key
from modelport.offload import run_blocking
from modelport.safety.config import ContentFilterConfig

if TYPE_CHECKING:
    from modelport.finetuning.service import FinetuningService
    from modelport.safety.service import SafetyService


@dataclass(frozen=True)
class DeploymentView:
    """A deployment's row, its model, and the size of the pool serving it (None: no workers now)."""

    row: Deployment
    model: CatalogModel
    pool: dict | None


class DeploymentLifecycle:
    def __init__(self, control: DeploymentService, gateway: Gateway, safety: SafetyService,
                 finetuning: FinetuningService) -> None:
        self.control = control
        self.gateway = gateway
        self.safety = safety
        self.finetuning = finetuning

    def _view(self, row: Deployment, model: CatalogModel) -> DeploymentView:
        return DeploymentView(row, model, self.gateway.provisioner.pool_status(row.id))

    # -- reading --------------------------------------------------------------------------------------

    async def list(self, actor: Principal) -> list[DeploymentView]:
        return [self._view(d, m) for d, m in await run_blocking(self.control.list, actor)]

    async def get(self, actor: Principal, name: str) -> DeploymentView:
        return self._view(*await run_blocking(self.control.get, actor, name))

    async def content_filter(self, actor: Principal, name: str) -> ContentFilterConfig:
        d, _ = await run_blocking(self.control.get, actor, name)
        return ContentFilterConfig.model_validate(d.content_filter or {})

    async def usage(self, actor: Principal, name: str) -> dict:
        """Requests and tokens so far, the events still in memory included."""
        await run_blocking(self.gateway.usage.flush)
        return await run_blocking(self.control.usage, actor, name)

    async def usage_by_hour(self, actor: Principal, name: str, hours: int = 24) -> builtins.list[dict]:
        return await run_blocking(self.control.usage_by_hour, actor, name, hours)

    # -- changes a caller asks for ------------------------------------------------------------------------

    async def create(self, actor: Principal, req: DeploymentCreate,
                     content_filter: ContentFilterConfig | None = None) -> tuple[CreatedDeployment, DeploymentView]:
        """Create the row and its keys, route it, start its workers in the background; then,
        when given, set its content filter (refused before anything is created when `actor` may
        not change filters)."""
        if content_filter is not None:
            actor.require("safety.manage")
        created = await run_blocking(self.control.create, actor, req)
        await self.gateway.routes.refresh(created.row.id)
        self.gateway.spawn(self.gateway.provisioner.provision(created.row.id))
        if content_filter is not None:
            await self.set_content_filter(actor, req.name, content_filter)
        return created, self._view(created.row, created.model)

    async def update(self, actor: Principal, name: str, change: DeploymentUpdate) -> DeploymentView:
        """Instances, network, rate limits; a dedicated deployment's pool follows its instances."""
        row = await run_blocking(self.control.update, actor, name, change)
        await self.gateway.routes.refresh(row.id)
        if change.instances is not None:
            self.gateway.spawn(self.gateway.provisioner.rescale(row.id))
        return await self.get(actor, row.id)

    async def set_content_filter(self, actor: Principal, name: str,
                                 config: ContentFilterConfig) -> ContentFilterConfig:
        """The next request uses the new filter; its blocklists must exist (and fit their caps)."""
        known = await run_blocking(self.safety.check_filter, actor, config)
        row = await run_blocking(self.control.set_content_filter, actor, name, config, known)
        await self.gateway.routes.refresh(row.id)
        return ContentFilterConfig.model_validate(row.content_filter)

    async def regenerate_key(self, actor: Principal, name: str, which: str) -> tuple[Deployment, str]:
        """A new primary or secondary key; the old one is refused from the next request."""
        row, secret = await run_blocking(self.control.regenerate_key, actor, name, which)
        await self.gateway.routes.refresh(row.id)
        return row, secret

    async def delete(self, actor: Principal, name: str) -> None:
        row = await run_blocking(self.control.mark_deleting, actor, name)
        await self.remove(row.id)

    async def delete_finetuned_model(self, actor: Principal, name: str, confirm: bool) -> None:
        """Stop the model's deployments, destroy its keys and weights (crypto-shredding), remove it."""
        model, deployments = await run_blocking(self.finetuning.model_for_delete, actor, name, confirm)
        for dep_id in deployments:
            await self.remove(dep_id)
        await run_blocking(self.finetuning.shred_model, actor, model)

    # -- changes with another cause -------------------------------------------------------------------------

    async def remove(self, dep_id: str) -> None:
        """Out of the routing table, its workers stopped unless shared, then its row removed."""
        route = await self.gateway.routes.refresh(dep_id)
        if route is not None:
            await self.gateway.provisioner.stop(route)
        await run_blocking(self.control.remove_row, dep_id)
        await self.gateway.routes.refresh(dep_id)

    async def suspend(self, dep_id: str, reason: str, message: str) -> None:
        """Suspend a deployment for `reason` (beside any others, deployments/suspension.py): its
        requests answer 503 with the message from the next one, and its workers stop unless a
        serving deployment shares them."""
        stop = await run_blocking(self.control.suspend, dep_id, reason, message)
        route = await self.gateway.routes.refresh(dep_id)
        if stop and route is not None:
            await self.gateway.provisioner.stop(route, unless_serving=True)

    async def resume(self, dep_id: str, reason: str) -> None:
        """Clear `reason`; once no reason is left, the deployment starts again (no redeploy)."""
        start = await run_blocking(self.control.resume, dep_id, reason)
        await self.gateway.routes.refresh(dep_id)
        if start:
            self.gateway.spawn(self.gateway.provisioner.provision(dep_id))

    async def suspend_all(self, dep_ids: Iterable[str], reason: str, message: str) -> None:
        for dep_id in dep_ids:
            await self.suspend(dep_id, reason, message)

    async def resume_all(self, dep_ids: Iterable[str], reason: str) -> None:
        for dep_id in dep_ids:
            await self.resume(dep_id, reason)

    async def prices_changed(self, model_id: str) -> None:
        """A model's offer changed (created, prices, retired): its deployments bill the new way
        from their next request."""
        await self.gateway.routes.refresh_model(model_id)

    async def stop_workspace(self, workspace_id: str) -> builtins.list[str]:
        """A workspace is being deleted (its rows are already `deleting`): its routes leave the
        routing table at once (its deployment keys get 401 from here), then every pool that
        served only its deployments stops; a shared serverless pool keeps serving the other
        workspaces. Returns the ids of its deployments; their rows are the caller's to remove."""
        rows = await run_blocking(self._workspace_pools, workspace_id)
        routes = self.gateway.routes
        gone = [r for r in routes.routes() if r.workspace_id == workspace_id]
        routes.forget_workspace(workspace_id)
        await self.gateway.provisioner.close_unused({key for _, key in rows} | routes.pool_keys(gone))
        return sorted({dep_id for dep_id, _ in rows} | {r.id for r in gone})

    def _workspace_pools(self, workspace_id: str) -> builtins.list[tuple[str, str]]:
        with self.control.db.session() as s:
            return [(d.id, pool_key(d, m)) for d, m in s.execute(
                select(Deployment, CatalogModel).join(CatalogModel, CatalogModel.id == Deployment.model_id)
                .where(Deployment.workspace_id == workspace_id))]

    def forget_workspace(self, workspace_id: str) -> None:
        """Drop a workspace's routes again (one a concurrent refresh put back meanwhile)."""
        self.gateway.routes.forget_workspace(workspace_id)

    def flush_usage(self) -> None:
        """Every usage event queued so far committed (blocks: call on a thread)."""
        self.gateway.usage.flush()

    async def start_existing(self) -> None:
        """After a restart: deployments left `deleting` are removed, the routing table is built
        from the rows, and those that were serving or starting get their workers back."""
        start, stale = await run_blocking(self._left_by_last_run)
        for dep_id in stale:
            await run_blocking(self.control.remove_row, dep_id)
        await self.gateway.routes.load()
        for dep_id in start:
            self.gateway.spawn(self.gateway.provisioner.provision(dep_id))

    def _left_by_last_run(self) -> tuple[builtins.list[str], builtins.list[str]]:
        with self.control.db.session() as s:
            start = list(s.scalars(select(Deployment.id).where(Deployment.state.in_(("creating", "succeeded")))))
            stale = list(s.scalars(select(Deployment.id).where(Deployment.state == "deleting")))
        return start, stale

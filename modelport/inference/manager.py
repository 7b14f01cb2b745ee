"""The data plane's view of deployments: routing table, provisioning, pools, usage counts.

The control plane (DeploymentService) writes rows; this manager keeps an in-memory routing
table built from them (so the request path never queries the database), provisions worker
pools in the background, and buffers token counts for billing (counts only, P1), flushed to
the database off the request path.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import logging
import operator
import os
import time
from collections import Counter
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import select
from sqlalchemy.orm import Session

from modelport.catalog.service import CatalogService
from modelport.config import Settings
from modelport.db.engine import Database
from modelport.db.tables import CatalogModel, Deployment
from modelport.deployments.service import DeploymentService
from modelport.errors import Forbidden, IntegrityError, ModelportError, ServiceUnavailable
from modelport.inference.pools import Pool, PoolManager
from modelport.marketplace.offers import offer_for_model, usable_subscription
from modelport.metering.recorder import MeterRecorder, usage_row
from modelport.metrics import Metrics
from modelport.offload import run_blocking
from modelport.quotas import rates
from modelport.quotas.rates import RateLimits
from modelport.safety.config import ContentFilterConfig
from modelport.workers.protocol import WorkerSpec

if TYPE_CHECKING:
    from modelport.finetuning.service import FinetunedWeights
    from modelport.identity.principal import Principal

log = logging.getLogger("modelport.deployments")

# How many requests one worker of each runtime takes at once: as many as it works on together.
# llama.cpp batches `settings.llamacpp_parallel` sequences (that one setting sizes both the engine
# and the pool's slots); a transformers embeddings worker batches concurrent requests; a
# transformers chat model decodes one at a time. MODELPORT_WORKER_SLOTS overrides the others.
# More in flight would only queue inside the worker, where the fair scheduler could not see them.
RUNTIME_CONCURRENCY = {"transformers": 1, "echo": 64}
EMBEDDINGS_CONCURRENCY = 32


def worker_concurrency(settings: Settings, runtime: str, task: str) -> int:
    """Requests one worker of `runtime` serving a model of `task` takes at once."""
    if runtime == "llamacpp":
        return settings.llamacpp_parallel  # the engine's own parallel: one knob, not two
    if runtime in settings.worker_slots:
        return settings.worker_slots[runtime]
    if runtime == "transformers" and task == "embeddings":
        return EMBEDDINGS_CONCURRENCY
    return RUNTIME_CONCURRENCY.get(runtime, 1)


# Usage statuses as the token metrics label them (an answer the filter cut was still answered).
METRIC_STATUS = {"filtered": "success"}
# How often fine-tuned deployments check that their workspace key still unwraps their weights.
KEY_CHECK_SECONDS = 5.0


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


def runtime_for(model: CatalogModel, settings: Settings) -> str:
    override = settings.runtime_overrides.get(model.name)
    if override:
        return override
    if model.format == "gguf":
        return "llamacpp"
    return "transformers"


def pool_key(dep: Deployment, model: CatalogModel) -> str:
    if dep.type == "dedicated":
        return f"dedicated:{dep.id}"
    if model.owner_workspace_id:
        # A workspace's private model is served only on workers of that workspace (P6, P9).
        return f"serverless:{model.id}:{dep.geography}:{dep.workspace_id}"
    return f"serverless:{model.id}:{dep.geography}"


class DeploymentManager:
    def __init__(
        self, settings: Settings, db: Database, catalog: CatalogService, service: DeploymentService, pools: PoolManager,
        metrics: Metrics,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.db = db
        self.catalog = catalog
        self.service = service
        self.pools = pools
        self.by_name: dict[tuple[str, str], Route] = {}
        self.by_key: dict[str, Route] = {}
        self._tasks: set[asyncio.Task] = set()
        self.meter = MeterRecorder(db)
        # Set by bootstrap: serves `finetuned` models (base GGUF + decrypted adapter memfd).
        self.finetuned: FinetunedWeights | None = None
        self._next_key_check = 0.0
        # Set when the server got SIGTERM/SIGINT: no pool starts again, the workers drain.
        self.draining = False
        self._drain: asyncio.Task | None = None

    # -- routing table --------------------------------------------------------------------

    def load_routes(self) -> None:
        with self.db.session() as s:
            rows = s.execute(
                select(Deployment, CatalogModel).join(CatalogModel, CatalogModel.id == Deployment.model_id)
            )
            routes = [self._route(d, m, billing_of(s, d, m)) for d, m in rows]
        self.by_name = {(r.workspace_id, r.name): r for r in routes}
        self.by_key = {k: r for r in routes for k in (r.primary_lookup, r.secondary_lookup)}

    def refresh(self, dep_id: str) -> Route | None:
        with self.db.session() as s:
            row = s.execute(
                select(Deployment, CatalogModel)
                .join(CatalogModel, CatalogModel.id == Deployment.model_id)
                .where(Deployment.id == dep_id)
            ).first()
            billing = billing_of(s, *row) if row is not None else FREE
        for table in (self.by_name, self.by_key):
            for k in [k for k, r in table.items() if r.id == dep_id]:
                del table[k]
        if row is None:
            return None
        route = self._route(*row, billing)
        self.by_name[(route.workspace_id, route.name)] = route
        self.by_key[route.primary_lookup] = route
        self.by_key[route.secondary_lookup] = route
        return route

    def refresh_model(self, model_id: str) -> None:
        """Every deployment of a model again (its offer's prices or state changed)."""
        for dep_id in {r.id for r in self.by_name.values() if r.model_id == model_id}:
            self.refresh(dep_id)

    def _route(self, d: Deployment, m: CatalogModel, billing: Billing = FREE) -> Route:
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

    def routes_of(self, workspace_id: str) -> list[Route]:
        return sorted((r for (ws, _), r in self.by_name.items() if ws == workspace_id), key=lambda r: r.name)

    # -- provisioning ---------------------------------------------------------------------

    def spawn(self, coro) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def wait_idle(self) -> None:
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    def _weights(self, model: CatalogModel) -> CatalogModel:
        """The catalog model whose files are loaded: a fine-tune's base, otherwise the model."""
        if model.source != "finetuned":
            return model
        if self.finetuned is None:
            raise ServiceUnavailable("This installation cannot serve fine-tuned models (fine-tuning is not set up).")
        return self.finetuned.base_of(model)

    def _pool(self, dep: Deployment, model: CatalogModel) -> Pool:
        adapter = model if model.source == "finetuned" else None
        finetuned = self.finetuned
        weights = self._weights(model)
        runtime = runtime_for(weights, self.settings)
        paths = self.catalog.file_paths(weights)
        if weights.format == "gguf":
            model_path = str(next(p for rel, p in paths.items() if rel.endswith(".gguf")))
        else:
            model_path = (
                str(next(iter(paths.values())).parent)
                if len(paths) == 1
                else str(_common_root([Path(p) for p in paths.values()]))
            )
        threads = self.settings.worker_threads
        drain = self.settings.drain_seconds
        parallel = self.settings.llamacpp_parallel

        # Imported weights live under MODELPORT_HOME, which workers cannot read: they get an open
        # read-only descriptor instead of a path (GGUF), as encrypted weights will (memfd).
        by_fd = runtime != "echo" and weights.format == "gguf" and weights.source != "bundled"

        def spec() -> WorkerSpec:
            fd = os.open(model_path, os.O_RDONLY) if by_fd else None
            # A fine-tune's adapter is decrypted into a memfd only, never a file (P11).
            lora_fd = finetuned.adapter_memfd(adapter) if adapter is not None and finetuned is not None else None
            return WorkerSpec(
                runtime=runtime,
                model_id=model.id,
                model_path=None if runtime == "echo" or by_fd else model_path,
                model_fd=fd,
                lora_fd=lora_fd,
                threads=threads,
                drain_seconds=drain,
                options={"task": model.task, **({"parallel": parallel} if runtime == "llamacpp" else {})},
            )

        return self.pools.get_or_create(
            pool_key(dep, model),
            kind=dep.type,
            geography=dep.geography,
            regions=self.settings.regions_of(dep.geography),
            spec_factory=spec,
            instances=dep.instances if dep.type == "dedicated" else 1,
            concurrency=worker_concurrency(self.settings, runtime, model.task),
            # A catalog model's serverless pool serves every workspace: each gets its share.
            shared=dep.type == "serverless" and not model.owner_workspace_id,
        )

    async def provision(self, dep_id: str) -> None:
        """Verify the model, start (or join) the pool, and record the outcome."""
        with self.db.session() as s:
            dep = s.get(Deployment, dep_id)
            model = s.get(CatalogModel, dep.model_id) if dep else None
        if dep is None or model is None or dep.state == "deleting":
            return
        try:
            report = await run_blocking(self.catalog.scan_stored, self._weights(model))
            if not report.passed:
                raise IntegrityError(f"Model '{model.name}' no longer passes its artifact scan; see its report.")
            pool = self._pool(dep, model)
            await self.pools.scale(pool, dep.instances if dep.type == "dedicated" else max(1, len(pool.live())))
            if await run_blocking(self._being_deleted, dep_id):
                # Deleted (or its workspace) while its workers started: they must not outlive it.
                if not [r for r in self.by_name.values() if r.pool_key == pool.key and r.id != dep_id]:
                    await self.pools.close(pool.key)
                return
            isolation = self._isolation(pool)
            # Answered: the worker reports healthy and counts a token, so the model is loaded.
            async with pool.slot(dep.workspace_id, dep.id) as client:
                await client.count_tokens(prompt="ready?") if model.task == "chat-completion" else (
                    await client.embed(["ready?"])
                )
        except ModelportError as exc:
            log.warning("deployment failed", extra={"deployment_id": dep_id, "error_code": exc.code})
            await run_blocking(self.service.set_state, dep_id, "failed", exc.message)
            if dep.type == "dedicated":
                await self.pools.close(pool_key(dep, model))
        except Exception as exc:
            log.exception("deployment failed unexpectedly", extra={"deployment_id": dep_id})
            await run_blocking(
                self.service.set_state,
                dep_id,
                "failed",
                f"Internal error while starting the workers ({type(exc).__name__}); see the server log.",
            )
        else:
            await run_blocking(self.service.set_state, dep_id, "succeeded", None, isolation)
        self.refresh(dep_id)

    def _being_deleted(self, dep_id: str) -> bool:
        with self.db.session() as s:
            state = s.scalar(select(Deployment.state).where(Deployment.id == dep_id))
        return state is None or state == "deleting"

    @staticmethod
    def _isolation(pool: Pool) -> dict[str, bool] | None:
        """What every worker of the pool is isolated from (each worker's sandbox is verified at its start)."""
        if not pool.members:
            return None
        return functools.reduce(operator.and_, (m.handle.isolation for m in pool.members)).as_dict()

    async def pool_for(self, route: Route) -> Pool:
        """The pool serving `route`; a stopped serverless pool starts again on demand."""
        pool = self.pools.pools.get(route.pool_key)
        if pool is not None and not pool.closed and pool.members:
            return pool
        if self.draining:
            raise ServiceUnavailable("This server is shutting down; retry the request shortly.")
        with self.db.session() as s:
            dep = s.get(Deployment, route.id)
            model = s.get(CatalogModel, route.model_id)
        if dep is None or model is None:
            raise ServiceUnavailable("This deployment is being removed.")
        pool = self._pool(dep, model)
        await self.pools.scale(pool, pool.instances)
        return pool

    def pool_status(self, dep_id: str) -> dict | None:
        """The size of the pool serving a deployment; None while it has no workers (not started
        yet, or a serverless pool stopped for idleness). Its load is not shown: on a shared pool
        that is other workspaces' traffic."""
        route = next((r for r in list(self.by_key.values()) if r.id == dep_id), None)
        pool = self.pools.pools.get(route.pool_key) if route is not None else None
        if pool is None or pool.closed or not pool.members:
            return None
        st = pool.status()
        return {k: st[k] for k in ("instances", "ready", "min_instances", "max_instances")}

    def pools_overview(self, caller: Principal) -> list[dict]:
        """Every pool with workers, its size and load (platform admins only)."""
        if not caller.is_platform_admin:
            raise Forbidden("Pools are shown to platform admins only; a deployment shows its own pool's size.")
        serving = Counter(r.pool_key for r in list(self.by_name.values()))
        out = []
        for key, pool in sorted(list(self.pools.pools.items())):
            if pool.closed or not pool.members:
                continue
            out.append({"key": key, "deployments": serving.get(key, 0), **pool.status()})
        return out

    async def rescale(self, dep_id: str) -> None:
        with self.db.session() as s:
            dep = s.get(Deployment, dep_id)
            model = s.get(CatalogModel, dep.model_id) if dep else None
        if dep is None or model is None or dep.type != "dedicated" or dep.state != "succeeded":
            return
        await self.pools.scale(self._pool(dep, model), dep.instances)

    async def delete(self, dep_id: str) -> None:
        route = self.refresh(dep_id)
        if route is not None:
            shared = [r for r in self.by_name.values() if r.pool_key == route.pool_key and r.id != dep_id]
            if not shared:
                await self.pools.close(route.pool_key)
        await run_blocking(self.service.remove_row, dep_id)
        self.refresh(dep_id)

    async def stop_workspace(self, workspace_id: str) -> list[str]:
        """A workspace is being deleted: its routes leave the routing table at once (its
        deployment keys get 401 from here), then every pool that served only its deployments
        stops; a shared serverless pool keeps serving the other workspaces. Returns the ids of
        its deployments; their rows are the caller's to remove."""
        with self.db.session() as s:
            rows = [(d, m) for d, m in s.execute(
                select(Deployment, CatalogModel).join(CatalogModel, CatalogModel.id == Deployment.model_id)
                .where(Deployment.workspace_id == workspace_id))]
        gone = [r for r in self.by_name.values() if r.workspace_id == workspace_id]
        self.forget_routes(workspace_id)
        keys = {pool_key(d, m) for d, m in rows} | {r.pool_key for r in gone}
        still_used = {r.pool_key for r in self.by_name.values()}
        await asyncio.gather(*(self.pools.close(key) for key in sorted(keys - still_used)))
        return sorted({d.id for d, _ in rows} | {r.id for r in gone})

    def forget_routes(self, workspace_id: str) -> None:
        """Drop every route of a workspace from the routing table (call on the event loop)."""
        for table in (self.by_name, self.by_key):
            for k in [k for k, r in table.items() if r.workspace_id == workspace_id]:
                del table[k]

    async def start_existing(self) -> None:
        """After a restart: dedicated deployments get their workers back."""
        with self.db.session() as s:
            ids = list(s.scalars(select(Deployment.id).where(Deployment.state.in_(("creating", "succeeded")))))
            stale = list(s.scalars(select(Deployment.id).where(Deployment.state == "deleting")))
        for dep_id in stale:
            await run_blocking(self.service.remove_row, dep_id)
        for dep_id in ids:
            self.spawn(self.provision(dep_id))

    # -- metering (counts only) -----------------------------------------------------------

    @staticmethod
    def usage_row(route: Route, api: str, input_tokens: int, output_tokens: int, status: str) -> dict:
        """The usage event of one request of `route` (counts and ids only, never content)."""
        b = route.billing
        return usage_row(workspace_id=route.workspace_id, deployment_id=route.id, model_id=route.model_id, api=api,
                         input_tokens=input_tokens, output_tokens=output_tokens, status=status, offer_id=b.offer_id,
                         subscription_id=b.subscription_id, currency=b.currency, input_price=b.input_price,
                         output_price=b.output_price)

    def queue_depths(self) -> list[tuple[str, int]]:
        """(deployment id, requests waiting for a worker) of every deployment whose pool is up."""
        out = []
        for route in list(self.by_name.values()):
            pool = self.pools.pools.get(route.pool_key)
            if pool is not None and not pool.closed:
                out.append((route.id, pool.scheduler.waiting_for(route.id)))
        return out

    def record_usage(self, route: Route, api: str, input_tokens: int, output_tokens: int, status: str) -> None:
        """Queue a usage event without waiting for its commit."""
        self.meter.record(self.usage_row(route, api, input_tokens, output_tokens, status))
        self.metrics.tokens(route.id, METRIC_STATUS.get(status, status), input_tokens, output_tokens)

    async def record_usage_durable(self, route: Route, api: str, input_tokens: int, output_tokens: int,
                                   status: str) -> None:
        """Queue a usage event and return once it is committed (before an answer's last byte)."""
        self.metrics.tokens(route.id, METRIC_STATUS.get(status, status), input_tokens, output_tokens)
        await self.meter.record_durable(self.usage_row(route, api, input_tokens, output_tokens, status))

    def flush_usage(self) -> None:
        """Return once every usage event queued so far is committed."""
        self.meter.flush()

    async def run_background(self) -> None:
        """Stop idle serverless pools, every second or so (usage is written by the meter's own
        thread); resize serverless pools to their load (PoolManager.autoscale) every
        `pool_scale_interval_seconds`."""
        scaler = asyncio.get_running_loop().create_task(self.pools.run_autoscaler())
        try:
            while True:
                await asyncio.sleep(1.0)
                try:
                    await self.pools.reap_idle(self.settings.serverless_idle_seconds)
                    if self.finetuned is not None and time.monotonic() >= self._next_key_check:
                        self._next_key_check = time.monotonic() + KEY_CHECK_SECONDS
                        await self.check_private_weights()
                except Exception:
                    log.exception("background deployment work failed")
        finally:
            scaler.cancel()

    # -- suspension (deployments/suspension.py: a set of reasons) ---------------------------

    async def suspend(self, dep_id: str, reason: str, message: str) -> None:
        """Suspend a deployment for `reason` (beside any others): its requests answer 503 with
        the message from the next one, and its workers stop unless another deployment shares them."""
        stop = await run_blocking(self.service.suspend, dep_id, reason, message)
        route = self.refresh(dep_id)
        if stop and route is not None:
            if not [r for r in self.by_name.values() if r.pool_key == route.pool_key and r.id != dep_id
                    and r.state in ("creating", "succeeded")]:
                await self.pools.close(route.pool_key)

    async def resume(self, dep_id: str, reason: str) -> None:
        """Clear `reason`; once no reason is left, the deployment starts again (no redeploy)."""
        if await run_blocking(self.service.resume, dep_id, reason):
            self.refresh(dep_id)
            self.spawn(self.provision(dep_id))
        else:
            self.refresh(dep_id)

    async def check_private_weights(self) -> None:
        """Fine-tuned deployments stop serving once their workspace key no longer unwraps their
        weights (a disabled customer-managed key: within the datastore's key-cache time) and
        resume without a redeploy once it does again."""
        assert self.finetuned is not None
        with self.db.session() as s:
            rows = list(s.execute(
                select(Deployment, CatalogModel).join(CatalogModel, CatalogModel.id == Deployment.model_id)
                .where(CatalogModel.source == "finetuned", Deployment.state.in_(("succeeded", "suspended")))
            ).tuples())
        for dep, model in rows:
            try:
                await run_blocking(self.finetuned.check, model)
            except ModelportError as exc:
                if "key_disabled" not in (dep.suspensions or {}):
                    message = (
                        "The workspace key is disabled, so this fine-tuned model's weights cannot be decrypted "
                        "and it is not served; enable it again (modelport cmk enable) and it resumes."
                        if exc.code == "key_disabled"
                        else f"This fine-tuned model's weights cannot be read ({exc.code}); it is not served."
                    )
                    await self.suspend(dep.id, "key_disabled", message)
            else:
                if "key_disabled" in (dep.suspensions or {}):
                    await self.resume(dep.id, "key_disabled")

    def begin_drain(self) -> None:
        """The server got SIGTERM/SIGINT (call on the event loop). Every worker is asked to stop
        at once: it takes no new request, gives those in flight `drain_seconds` to finish, then
        ends each of them with an explicit error, which the gateway passes on (a stream's last
        event is then an error, never a silent cut). Nothing starts a pool again."""
        if self._drain is None:
            self.draining = True
            self._drain = asyncio.get_running_loop().create_task(self.pools.close_all())

    async def shutdown(self) -> None:
        self.draining = True
        for t in list(self._tasks):
            t.cancel()
        with contextlib.suppress(Exception):
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._drain is not None:  # never cancelled: a worker stopped halfway would be left running
            with contextlib.suppress(Exception):
                await self._drain
        await self.pools.close_all()
        await self.pools.supervisor.stop_all()
        await run_blocking(self.meter.stop)


def _common_root(paths: list[Path]) -> Path:
    return Path(os.path.commonpath([str(p.parent) for p in paths]))

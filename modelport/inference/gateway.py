"""The gateway's parts, put together: what the request path and the lifecycle service use.

    routes       RoutingTable     (routing.py)       deployments in memory: by key, by name
    provisioner  PoolProvisioner  (provisioning.py)  pools planned, started, scaled, stopped
    usage        UsageRecorder    (usage.py)         one usage event per request (metering writes it)
    pools        PoolManager      (pools.py)         the worker pools and their fair schedulers

The gateway itself only runs background tasks (idle serverless pools stop, pools scale to
their load) and the drain at shutdown. Changing a deployment is the lifecycle service's job
(deployments/lifecycle.py); the control plane's rows are DeploymentService's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine
from typing import Any

from modelport.catalog.service import CatalogService
from modelport.config import Settings
from modelport.db.engine import Database
from modelport.deployments.service import DeploymentService
from modelport.inference.pools import Pool, PoolManager
from modelport.inference.provisioning import PoolProvisioner
from modelport.inference.routing import Route, RoutingTable
from modelport.inference.usage import UsageRecorder
from modelport.metrics import Metrics
from modelport.offload import run_blocking

log = logging.getLogger("modelport.inference.gateway")


class Gateway:
    def __init__(self, settings: Settings, db: Database, catalog: CatalogService, control: DeploymentService,
                 pools: PoolManager, metrics: Metrics) -> None:
        self.settings = settings
        self.pools = pools
        self.routes = RoutingTable(settings, db)
        self.provisioner = PoolProvisioner(settings, db, catalog, control, pools, self.routes)
        self.usage = UsageRecorder(db, metrics)
        self._tasks: set[asyncio.Task] = set()
        self._drain: asyncio.Task | None = None

    # -- what the request path calls (handlers.py, calls.py) -----------------------------------------

    @property
    def by_key(self) -> dict[str, Route]:
        return self.routes.by_key

    @property
    def by_name(self) -> dict[tuple[str, str], Route]:
        return self.routes.by_name

    def routes_of(self, workspace_id: str) -> list[Route]:
        return self.routes.of_workspace(workspace_id)

    async def pool_for(self, route: Route) -> Pool:
        return await self.provisioner.pool_for(route)

    def record_usage(self, route: Route, api: str, input_tokens: int, output_tokens: int, status: str) -> None:
        self.usage.record(route, api, input_tokens, output_tokens, status)

    async def record_usage_durable(self, route: Route, api: str, input_tokens: int, output_tokens: int,
                                   status: str) -> None:
        await self.usage.record_durable(route, api, input_tokens, output_tokens, status)

    # -- background work -------------------------------------------------------------------------------

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task:
        """Run `coro` in the background; shutdown cancels what is still running."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def wait_idle(self) -> None:
        """Until every background task has finished (tests, and the lifecycle's callers)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

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
                except Exception:
                    log.exception("stopping idle pools failed")
        finally:
            scaler.cancel()

    # -- drain and shutdown ----------------------------------------------------------------------------

    def begin_drain(self) -> None:
        """The server got SIGTERM/SIGINT (call on the event loop). Every worker is asked to stop
        at once: it takes no new request, gives those in flight `drain_seconds` to finish, then
        ends each of them with an explicit error, which the gateway passes on (a stream's last
        event is then an error, never a silent cut). Nothing starts a pool again."""
        if self._drain is None:
            self.provisioner.draining = True
            self._drain = asyncio.get_running_loop().create_task(self.pools.close_all())

    async def shutdown(self) -> None:
        self.provisioner.draining = True
        for t in list(self._tasks):
            t.cancel()
        with contextlib.suppress(Exception):
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._drain is not None:  # never cancelled: a worker stopped halfway would be left running
            with contextlib.suppress(Exception):
                await self._drain
        await self.pools.close_all()
        await self.pools.supervisor.stop_all()
        await run_blocking(self.usage.meter.stop)

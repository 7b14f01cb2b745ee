"""Pool provisioning: which workers serve a deployment, starting and scaling them, stopping them.

A deployment is served by a pool (inference/pools.py): its own (dedicated) or its model's,
shared by every serverless deployment of that model in a geography. This part plans the pool
from the rows (runtime, model file, slots), starts it, records the outcome in the control
plane's row, and closes a pool once no deployment uses it. Reading rows and files runs on a
worker thread (`run_blocking`); pools are changed on the event loop.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import operator
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import select

from modelport.catalog.service import CatalogService
from modelport.config import Settings
from modelport.db.engine import Database
from modelport.db.tables import CatalogModel, Deployment
from modelport.deployments.service import DeploymentService
from modelport.errors import Forbidden, IntegrityError, ModelportError, ServiceUnavailable
from modelport.inference.pools import Pool, PoolManager
from modelport.inference.routing import Route, RoutingTable, pool_key
from modelport.offload import run_blocking
from modelport.workers.protocol import WorkerSpec

if TYPE_CHECKING:
    from modelport.finetuning.service import FinetunedWeights
    from modelport.identity.principal import Principal

log = logging.getLogger("modelport.inference.provisioning")

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


def runtime_for(model: CatalogModel, settings: Settings) -> str:
    override = settings.runtime_overrides.get(model.name)
    if override:
        return override
    if model.format == "gguf":
        return "llamacpp"
    return "transformers"


@dataclass(frozen=True)
class Plan:
    """A deployment's rows and what its pool is built from (read on a worker thread)."""

    dep: Deployment
    model: CatalogModel  # what the deployment names (a fine-tune: its adapter)
    weights: CatalogModel  # whose files are loaded (a fine-tune: its base model)
    runtime: str
    model_path: str


class PoolProvisioner:
    def __init__(self, settings: Settings, db: Database, catalog: CatalogService, control: DeploymentService,
                 pools: PoolManager, routing: RoutingTable) -> None:
        self.settings = settings
        self.db = db
        self.catalog = catalog
        self.control = control
        self.pools = pools
        self.routing = routing
        # Set by bootstrap: serves `finetuned` models (base GGUF + decrypted adapter memfd).
        self.finetuned: FinetunedWeights | None = None
        # Set when the server got SIGTERM/SIGINT: no pool starts again.
        self.draining = False

    # -- planning (blocking: rows and files) ------------------------------------------------------

    def _rows(self, dep_id: str) -> tuple[Deployment, CatalogModel] | None:
        with self.db.session() as s:
            dep = s.get(Deployment, dep_id)
            model = s.get(CatalogModel, dep.model_id) if dep else None
        return None if dep is None or model is None else (dep, model)

    def _weights(self, model: CatalogModel) -> CatalogModel:
        """The catalog model whose files are loaded: a fine-tune's base, otherwise the model."""
        if model.source != "finetuned":
            return model
        if self.finetuned is None:
            raise ServiceUnavailable("This installation cannot serve fine-tuned models (fine-tuning is not set up).")
        return self.finetuned.base_of(model)

    def plan(self, dep: Deployment, model: CatalogModel) -> Plan:
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
        return Plan(dep, model, weights, runtime, model_path)

    def _plan_of(self, dep_id: str) -> Plan | None:
        rows = self._rows(dep_id)
        return None if rows is None else self.plan(*rows)

    # -- pools (event loop) -------------------------------------------------------------------------

    def _pool(self, plan: Plan) -> Pool:
        dep, model, weights, runtime, model_path = plan.dep, plan.model, plan.weights, plan.runtime, plan.model_path
        adapter = model if model.source == "finetuned" else None
        finetuned = self.finetuned
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
        """Verify the model, start (or join) the pool, and record the outcome in the row."""
        rows = await run_blocking(self._rows, dep_id)
        if rows is None or rows[0].state == "deleting":
            return
        dep, model = rows
        try:
            report = await run_blocking(lambda: self.catalog.scan_stored(self._weights(model)))
            if not report.passed:
                raise IntegrityError(f"Model '{model.name}' no longer passes its artifact scan; see its report.")
            pool = self._pool(await run_blocking(self.plan, dep, model))
            await self.pools.scale(pool, dep.instances if dep.type == "dedicated" else max(1, len(pool.live())))
            if await run_blocking(self._being_deleted, dep_id):
                # Deleted (or its workspace) while its workers started: they must not outlive it.
                if not [r for r in self.routing.routes() if r.pool_key == pool.key and r.id != dep_id]:
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
            await run_blocking(self.control.set_state, dep_id, "failed", exc.message)
            if dep.type == "dedicated":
                await self.pools.close(pool_key(dep, model))
        except Exception as exc:
            log.exception("deployment failed unexpectedly", extra={"deployment_id": dep_id})
            await run_blocking(
                self.control.set_state,
                dep_id,
                "failed",
                f"Internal error while starting the workers ({type(exc).__name__}); see the server log.",
            )
        else:
            await run_blocking(self.control.set_state, dep_id, "succeeded", None, isolation)
        await self.routing.refresh(dep_id)

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
        plan = await run_blocking(self._plan_of, route.id)
        if plan is None:
            raise ServiceUnavailable("This deployment is being removed.")
        pool = self._pool(plan)
        await self.pools.scale(pool, pool.instances)
        return pool

    async def rescale(self, dep_id: str) -> None:
        """A dedicated deployment's pool to the instances its row asks for."""
        rows = await run_blocking(self._rows, dep_id)
        if rows is None or rows[0].type != "dedicated" or rows[0].state != "succeeded":
            return
        pool = self._pool(await run_blocking(self.plan, *rows))
        await self.pools.scale(pool, rows[0].instances)

    async def stop(self, route: Route, *, unless_serving: bool = False) -> None:
        """Close `route`'s pool unless another deployment uses it (with `unless_serving`: one
        whose workers run; a suspended or failed one does not keep them)."""
        if not self.routing.shares_pool(route, serving=unless_serving):
            await self.pools.close(route.pool_key)

    async def close_unused(self, keys: set[str]) -> None:
        """Close those of `keys` that no route uses any more (together)."""
        await asyncio.gather(*(self.pools.close(key) for key in sorted(keys - self.routing.pool_keys())))

    # -- what is running ----------------------------------------------------------------------------

    def pool_status(self, dep_id: str) -> dict | None:
        """The size of the pool serving a deployment; None while it has no workers (not started
        yet, or a serverless pool stopped for idleness). Its load is not shown: on a shared pool
        that is other workspaces' traffic."""
        route = self.routing.find(dep_id)
        pool = self.pools.pools.get(route.pool_key) if route is not None else None
        if pool is None or pool.closed or not pool.members:
            return None
        st = pool.status()
        return {k: st[k] for k in ("instances", "ready", "min_instances", "max_instances")}

    def pools_overview(self, caller: Principal) -> list[dict]:
        """Every pool with workers, its size and load (platform admins only)."""
        if not caller.is_platform_admin:
            raise Forbidden("Pools are shown to platform admins only; a deployment shows its own pool's size.")
        serving = Counter(r.pool_key for r in self.routing.routes())
        out = []
        for key, pool in sorted(list(self.pools.pools.items())):
            if pool.closed or not pool.members:
                continue
            out.append({"key": key, "deployments": serving.get(key, 0), **pool.status()})
        return out

    def queue_depths(self) -> list[tuple[str, int]]:
        """(deployment id, requests waiting for a worker) of every deployment whose pool is up."""
        out = []
        for route in self.routing.routes():
            pool = self.pools.pools.get(route.pool_key)
            if pool is not None and not pool.closed:
                out.append((route.id, pool.scheduler.waiting_for(route.id)))
        return out


def _common_root(paths: list[Path]) -> Path:
    return Path(os.path.commonpath([str(p.parent) for p in paths]))

"""Worker pools: the processes that serve one deployment (dedicated) or one base model in one
geography for every workspace (serverless), with fair admission between deployments.

A pool only ever starts workers on slots of its own geography's regions, and routes only to
its own workers: when they are gone, requests fail with 503, they never move elsewhere (P5).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from modelport.errors import ServiceUnavailable
from modelport.inference.scheduler import FairScheduler
from modelport.workers.client import WorkerClient
from modelport.workers.protocol import WorkerSpec
from modelport.workers.supervisor import WorkerHandle, WorkerSupervisor

log = logging.getLogger("modelport.pools")


class RegionSlots:
    """How many workers each region may run; a pool takes a slot per worker it starts."""

    def __init__(self, slots: dict[str, int]) -> None:
        self.capacity = dict(slots)
        self.used = dict.fromkeys(slots, 0)

    def take(self, regions: list[str]) -> str:
        free = [r for r in regions if self.used.get(r, 0) < self.capacity.get(r, 0)]
        if not free:
            raise ServiceUnavailable(
                f"No free worker slot in regions {', '.join(regions)}: stop another deployment or add slots "
                "(MODELPORT_REGION_SLOTS).")
        region = min(free, key=lambda r: self.used[r])
        self.used[region] += 1
        return region

    def give(self, region: str) -> None:
        self.used[region] = max(0, self.used.get(region, 0) - 1)


@dataclass
class Member:
    handle: WorkerHandle
    client: WorkerClient
    inflight: int = 0


@dataclass
class Pool:
    key: str
    kind: str  # dedicated | serverless
    geography: str
    regions: list[str]
    spec_factory: Callable[[], WorkerSpec]
    instances: int
    concurrency: int  # requests one worker takes at once
    scheduler: FairScheduler
    members: list[Member] = field(default_factory=list)
    last_used: float = field(default_factory=time.monotonic)
    starting: asyncio.Lock = field(default_factory=asyncio.Lock)
    closed: bool = False

    def ready(self) -> list[Member]:
        return [m for m in self.members if m.handle.state == "ready"]

    def refresh(self) -> None:
        self.scheduler.set_capacity(len(self.ready()) * self.concurrency)

    @property
    def busy(self) -> bool:
        return self.scheduler.in_use > 0 or self.scheduler.waiting() > 0

    @contextlib.asynccontextmanager
    async def slot(self, deployment_id: str) -> AsyncIterator[WorkerClient]:
        """Wait for this deployment's turn, then lend the least-loaded ready worker."""
        self.last_used = time.monotonic()
        self.refresh()
        if not self.ready():
            raise ServiceUnavailable(
                f"No worker of geography '{self.geography}' is available for this deployment right now; "
                "requests are never sent outside it. Retry shortly.")
        await self.scheduler.acquire(deployment_id)
        member = None
        try:
            ready = self.ready()
            if not ready:
                raise ServiceUnavailable(
                    f"The workers of geography '{self.geography}' stopped; retry shortly.")
            member = min(ready, key=lambda m: m.inflight)
            member.inflight += 1
            yield member.client
        finally:
            if member is not None:
                member.inflight -= 1
            self.last_used = time.monotonic()
            self.scheduler.release()


class PoolManager:
    """Starts, scales and stops pools over the worker supervisor."""

    def __init__(self, supervisor: WorkerSupervisor, slots: RegionSlots, queue_limit: int) -> None:
        self.supervisor = supervisor
        self.slots = slots
        self.queue_limit = queue_limit
        self.pools: dict[str, Pool] = {}

    def get_or_create(self, key: str, *, kind: str, geography: str, regions: list[str],
                      spec_factory: Callable[[], WorkerSpec], instances: int, concurrency: int) -> Pool:
        pool = self.pools.get(key)
        if pool is None or pool.closed:
            pool = Pool(key=key, kind=kind, geography=geography, regions=regions, spec_factory=spec_factory,
                        instances=instances, concurrency=concurrency, scheduler=FairScheduler(self.queue_limit))
            self.pools[key] = pool
        return pool

    async def scale(self, pool: Pool, instances: int | None = None) -> None:
        """Bring the pool to its instance count; returns once every new worker answered."""
        async with pool.starting:
            if pool.closed:  # stopped while this call waited for its turn: start nothing
                raise ServiceUnavailable("This deployment's workers were stopped.")
            if instances is not None:
                pool.instances = instances
            pool.members = [m for m in pool.members if m.handle.state not in ("stopped", "failed")]
            while len(pool.members) < pool.instances:
                region = self.slots.take(pool.regions)
                spec = pool.spec_factory()
                try:
                    handle = await self.supervisor.start(spec, region=region)
                except BaseException:
                    self.slots.give(region)
                    raise
                finally:
                    # The supervisor keeps its own copies of handed-over descriptors.
                    for fd in (spec.model_fd, spec.lora_fd):
                        if fd is not None:
                            os.close(fd)
                pool.members.append(Member(handle=handle, client=handle.client))
            while len(pool.members) > pool.instances:
                await self._stop_member(pool, pool.members.pop())
            pool.refresh()

    async def _stop_member(self, pool: Pool, member: Member) -> None:
        await self.supervisor.stop(member.handle)
        self.slots.give(member.handle.region)

    async def close(self, key: str) -> None:
        pool = self.pools.pop(key, None)
        if pool is None:
            return
        pool.closed = True
        pool.scheduler.fail_waiting(ServiceUnavailable("This deployment's workers were stopped."))
        # A start in progress finishes first, so that the workers it started are stopped too.
        async with pool.starting:
            # Together: each worker drains its in-flight requests for up to drain_seconds.
            await asyncio.gather(*(self._stop_member(pool, m) for m in pool.members))
            pool.members = []

    async def reap_idle(self, idle_seconds: float) -> list[str]:
        """Stop serverless pools nobody used for `idle_seconds` (they restart on demand)."""
        now = time.monotonic()
        stopped = []
        for key, pool in list(self.pools.items()):
            if pool.kind == "serverless" and not pool.busy and now - pool.last_used > idle_seconds:
                await self.close(key)
                stopped.append(key)
                log.info("stopped idle serverless pool", extra={"event": "pool.idle_stop", "count": len(stopped)})
        return stopped

    async def close_all(self) -> None:
        await asyncio.gather(*(self.close(key) for key in list(self.pools)))

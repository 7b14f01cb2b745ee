"""Worker pools: the processes that serve one deployment (dedicated) or one base model in one
geography for every workspace (serverless), with fair admission between workspaces.

A pool only ever starts workers on slots of its own geography's regions, and routes only to
its own workers: when they are gone, requests fail with 503, they never move elsewhere (P5).

Sizes. A dedicated pool runs exactly the instances its deployment reserved. A serverless pool
is elastic: it starts with one instance on demand, the autoscaler adds one at a time while
requests wait in its queue (`ScalePolicy.up_queue` or more) or its recent first tokens are slow
(median over `up_first_token_seconds` with every instance busy), up to its cap (the smaller of
`max_instances` and its geography's region slots, which every pool shares), and removes one
at a time once the others could carry the load for `down_after_seconds`; idle for
`serverless_idle_seconds`, it stops altogether. An instance leaves by retiring: it takes no new
request, the streams it serves run to their end, and only then is it stopped, so shrinking
never cuts a stream.

Spreading. Each request goes to the ready instance with the fewest requests in flight, ties
taken in turn, so sequential traffic reaches every instance too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import statistics
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from modelport.config import Settings
from modelport.errors import ServiceUnavailable
from modelport.inference.scheduler import FairScheduler
from modelport.workers.client import GenerateEvent, Ticket, WorkerClient
from modelport.workers.protocol import GenerateBody, WorkerSpec
from modelport.workers.supervisor import WorkerHandle, WorkerSupervisor

log = logging.getLogger("modelport.pools")

FIRST_TOKEN_SAMPLES = 16  # recent first tokens the autoscaler looks at


class RegionSlots:
    """How many workers each region may run; a pool takes a slot per worker it starts."""

    def __init__(self, slots: dict[str, int]) -> None:
        self.capacity = dict(slots)
        self.used = dict.fromkeys(slots, 0)

    def total(self, regions: list[str]) -> int:
        return sum(self.capacity.get(r, 0) for r in regions)

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


@dataclass(frozen=True)
class ScalePolicy:
    """When a serverless pool grows and shrinks (settings `pool_*`)."""

    max_instances: int = 4  # per pool, before the region slots
    up_queue: int = 4  # requests waiting that add an instance
    up_first_token_seconds: float = 2.0  # median recent first token that adds one (all instances busy)
    down_after_seconds: float = 30.0  # the others carried the load this long: remove one
    interval_seconds: float = 0.5  # how often the autoscaler looks


def scale_policy(settings: Settings) -> ScalePolicy:
    return ScalePolicy(max_instances=settings.pool_max_instances, up_queue=settings.pool_scale_up_queue,
                       up_first_token_seconds=settings.pool_scale_up_first_token_seconds,
                       down_after_seconds=settings.pool_scale_down_seconds,
                       interval_seconds=settings.pool_scale_interval_seconds)


@dataclass(eq=False)
class Member:
    handle: WorkerHandle
    client: WorkerClient
    inflight: int = 0
    retiring: bool = False  # takes no new request; stopped once its last one ended


@dataclass(eq=False)
class Pool:
    key: str
    kind: str  # dedicated | serverless
    geography: str
    regions: list[str]
    spec_factory: Callable[[], WorkerSpec]
    instances: int  # dedicated: reserved; serverless: the size the autoscaler wants now
    concurrency: int  # requests one worker takes at once
    scheduler: FairScheduler
    max_instances: int = 1
    clock: Callable[[], float] = time.monotonic
    members: list[Member] = field(default_factory=list)
    last_used: float = 0.0
    starting: asyncio.Lock = field(default_factory=asyncio.Lock)
    closed: bool = False
    first_tokens: deque[tuple[float, float]] = field(default_factory=lambda: deque(maxlen=FIRST_TOKEN_SAMPLES))
    quiet_since: float | None = None  # since when fewer instances could carry the load
    resizing: bool = False  # an autoscaler step (start or retire) is under way
    _turn: int = 0

    def __post_init__(self) -> None:
        self.last_used = self.clock()

    @property
    def elastic(self) -> bool:
        return self.kind == "serverless"

    def live(self) -> list[Member]:
        """Members that count towards the pool's size: not retiring, not stopped or failed."""
        return [m for m in self.members if not m.retiring and m.handle.state not in ("stopped", "failed")]

    def ready(self) -> list[Member]:
        return [m for m in self.members if m.handle.state == "ready" and not m.retiring]

    def refresh(self) -> None:
        self.scheduler.set_capacity(len(self.ready()) * self.concurrency)

    @property
    def busy(self) -> bool:
        return self.scheduler.in_use > 0 or self.scheduler.waiting() > 0

    def status(self) -> dict:
        """What deployment and operations views show (counts only)."""
        return {"kind": self.kind, "geography": self.geography, "instances": len(self.live()),
                "ready": len(self.ready()), "retiring": sum(m.retiring for m in self.members),
                "min_instances": 0 if self.elastic else self.instances, "max_instances": self.max_instances,
                "slots": self.scheduler.capacity, "in_flight": self.scheduler.in_use,
                "waiting": self.scheduler.waiting(), "workspaces": len(self.scheduler.running)}

    def observe_first_token(self, seconds: float) -> None:
        """A request's wait for its first event (queue included), for the autoscaler."""
        self.first_tokens.append((self.clock(), seconds))

    def pick(self, ready: list[Member]) -> Member:
        """The ready member with the fewest requests in flight; ties in turn."""
        low = min(m.inflight for m in ready)
        n = len(ready)
        for i in range(n):
            member = ready[(self._turn + i) % n]
            if member.inflight == low:
                self._turn = (self._turn + i + 1) % n
                return member
        raise AssertionError("unreachable: some member has the lowest count")

    @contextlib.asynccontextmanager
    async def slot(self, workspace_id: str, deployment_id: str) -> AsyncIterator[WorkerClient]:
        """Wait for this workspace's turn, then lend the least-loaded ready worker."""
        self.last_used = self.clock()
        self.refresh()
        if not self.ready():
            raise ServiceUnavailable(
                f"No worker of geography '{self.geography}' is available for this deployment right now; "
                "requests are never sent outside it. Retry shortly.")
        await self.scheduler.acquire(workspace_id, deployment_id)
        member = None
        try:
            ready = self.ready()
            if not ready:
                raise ServiceUnavailable(
                    f"The workers of geography '{self.geography}' stopped; retry shortly.")
            member = self.pick(ready)
            member.inflight += 1
            yield member.client
        finally:
            if member is not None:
                member.inflight -= 1
            self.last_used = self.clock()
            self.scheduler.release(workspace_id)

    async def generate(self, workspace_id: str, deployment_id: str, body: GenerateBody,
                       ticket: Ticket | None = None) -> AsyncIterator[GenerateEvent]:
        """One generation through `slot`: the worker's events, and the wait for the first one
        (queue and prefill) recorded for the autoscaler. With a `ticket`, the body goes with its
        id, and the ticket learns which worker serves it."""
        asked = time.monotonic()
        if ticket is not None:
            body = body.model_copy(update={"id": ticket.id})
        async with self.slot(workspace_id, deployment_id) as client:
            if ticket is not None:
                ticket.client = client
            waiting_first = True
            async for event in client.generate(body):
                if waiting_first:
                    self.observe_first_token(time.monotonic() - asked)
                    waiting_first = False
                yield event

    # -- what the autoscaler asks -------------------------------------------------------------

    def wants_more(self, now: float, policy: ScalePolicy) -> bool:
        if self.scheduler.waiting() >= policy.up_queue:
            return True
        recent = [s for at, s in self.first_tokens if now - at <= max(10.0, 4 * policy.interval_seconds)]
        ready = self.ready()
        return (len(recent) >= 3 and bool(ready) and self.scheduler.in_use >= len(ready)
                and statistics.median(recent) > policy.up_first_token_seconds)

    def could_shed(self) -> bool:
        """One instance fewer would carry the load: nobody waits, and what runs fits in half of
        the remaining instances' slots."""
        live = self.live()
        if len(live) <= 1 or self.scheduler.waiting():
            return False
        return self.scheduler.in_use <= (len(live) - 1) * self.concurrency // 2


class PoolManager:
    """Starts, scales and stops pools over the worker supervisor."""

    def __init__(self, supervisor: WorkerSupervisor, slots: RegionSlots, queue_limit: int, *,
                 policy: ScalePolicy | None = None, workspace_cap: int | None = None, share: float = 1.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.supervisor = supervisor
        self.slots = slots
        self.queue_limit = queue_limit
        self.policy = policy or ScalePolicy()
        self.workspace_cap = workspace_cap
        self.share = share
        self.clock = clock
        self.pools: dict[str, Pool] = {}
        self._steps: set[asyncio.Task] = set()

    def get_or_create(self, key: str, *, kind: str, geography: str, regions: list[str],
                      spec_factory: Callable[[], WorkerSpec], instances: int, concurrency: int,
                      shared: bool = False) -> Pool:
        """`shared`: serves several workspaces (a catalog model's serverless pool), so each holds
        at most its share of the slots."""
        pool = self.pools.get(key)
        if pool is None or pool.closed:
            scheduler = FairScheduler(self.queue_limit, workspace_cap=self.workspace_cap,
                                      share=self.share if shared else 1.0)
            cap = min(self.policy.max_instances, self.slots.total(regions)) if kind == "serverless" else instances
            pool = Pool(key=key, kind=kind, geography=geography, regions=regions, spec_factory=spec_factory,
                        instances=instances, concurrency=concurrency, scheduler=scheduler,
                        max_instances=max(cap, 1), clock=self.clock)
            self.pools[key] = pool
        elif kind == "dedicated":
            pool.max_instances = instances
        return pool

    async def scale(self, pool: Pool, instances: int | None = None) -> None:
        """Bring the pool to its instance count; returns once every new worker answered."""
        async with pool.starting:
            if pool.closed:  # stopped while this call waited for its turn: start nothing
                raise ServiceUnavailable("This deployment's workers were stopped.")
            if instances is not None:
                pool.instances = instances
                if not pool.elastic:
                    pool.max_instances = instances
            gone = [m for m in pool.members if m.handle.state in ("stopped", "failed")]
            for m in gone:  # stopped elsewhere, or given up after repeated crashes: not running
                pool.members.remove(m)
                self.slots.give(m.handle.region)
            while len(pool.live()) < pool.instances:
                await self._start_member(pool)
            extra = pool.live()[pool.instances:]
            for m in extra:  # no new request reaches them while they drain
                m.retiring = True
            pool.refresh()
            for m in extra:
                pool.members.remove(m)
            await asyncio.gather(*(self._stop_member(m) for m in extra))

    async def _start_member(self, pool: Pool) -> Member:
        """Start one worker on a free slot of the pool's regions (call with `pool.starting` held)."""
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
        member = Member(handle=handle, client=handle.client)
        pool.members.append(member)
        pool.refresh()
        return member

    async def _stop_member(self, member: Member) -> None:
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
            members, pool.members = pool.members, []
            await asyncio.gather(*(self._stop_member(m) for m in members))

    async def reap_idle(self, idle_seconds: float) -> list[str]:
        """Stop serverless pools nobody used for `idle_seconds` (they restart on demand)."""
        now = self.clock()
        stopped = []
        for key, pool in list(self.pools.items()):
            if pool.kind == "serverless" and not pool.busy and now - pool.last_used > idle_seconds:
                await self.close(key)
                stopped.append(key)
                log.info("stopped idle serverless pool", extra={"event": "pool.idle_stop", "count": len(stopped)})
        return stopped

    async def close_all(self) -> None:
        await asyncio.gather(*(self.close(key) for key in list(self.pools)))
        await self.settle()

    # -- elastic serverless pools -------------------------------------------------------------

    def autoscale(self) -> list[asyncio.Task]:
        """One look at every serverless pool: start a step (grow or shrink by one instance) where
        the load asks for it. Steps run in the background; a pool takes one step at a time."""
        now = self.clock()
        started = []
        for pool in list(self.pools.values()):
            if not pool.elastic or pool.closed or pool.resizing or not pool.members:
                continue
            live = len(pool.live())
            if pool.wants_more(now, self.policy):
                pool.quiet_since = None
                if live < pool.max_instances and self._slot_free(pool):
                    started.append(self._step(pool, self.grow(pool)))
            elif pool.could_shed():
                if pool.quiet_since is None:
                    pool.quiet_since = now
                elif now - pool.quiet_since >= self.policy.down_after_seconds:
                    pool.quiet_since = now  # the next instance waits its own quiet period
                    started.append(self._step(pool, self.shrink(pool)))
            else:
                pool.quiet_since = None
        return started

    def _slot_free(self, pool: Pool) -> bool:
        return any(self.slots.used.get(r, 0) < self.slots.capacity.get(r, 0) for r in pool.regions)

    def _step(self, pool: Pool, coro) -> asyncio.Task:
        pool.resizing = True

        async def run() -> None:
            try:
                await coro
            except Exception:
                log.exception("pool resize failed", extra={"event": "pool.resize_failed"})
            finally:
                pool.resizing = False

        task = asyncio.get_running_loop().create_task(run())
        self._steps.add(task)
        task.add_done_callback(self._steps.discard)
        return task

    async def settle(self) -> None:
        """Wait for every autoscaler step under way (tests, shutdown)."""
        while self._steps:
            await asyncio.gather(*list(self._steps), return_exceptions=True)

    async def grow(self, pool: Pool) -> bool:
        """Add one instance, within the pool's cap and its regions' free slots."""
        async with pool.starting:
            if pool.closed or len(pool.live()) >= pool.max_instances or not self._slot_free(pool):
                return False
            await self._start_member(pool)
            pool.instances = len(pool.live())
            pool.first_tokens.clear()  # measured with fewer instances
        log.info("serverless pool grew", extra={"event": "pool.grow", "count": pool.instances})
        return True

    async def shrink(self, pool: Pool) -> bool:
        """Retire the instance with the fewest requests in flight: it takes no new one, its
        streams run to their end, then it stops. Never below one instance (idle pools stop
        altogether in `reap_idle`)."""
        live = pool.live()
        if pool.closed or len(live) <= 1:
            return False
        victim = min(reversed(live), key=lambda m: m.inflight)
        victim.retiring = True
        pool.instances = len(pool.live())
        pool.refresh()
        while victim.inflight > 0 and not pool.closed:
            await asyncio.sleep(0.05)
        async with pool.starting:
            if victim not in pool.members:  # the pool closed meanwhile and stopped it
                return False
            pool.members.remove(victim)
        await self._stop_member(victim)
        log.info("serverless pool shrank", extra={"event": "pool.shrink", "count": pool.instances})
        return True

    async def run_autoscaler(self) -> None:
        while True:
            await asyncio.sleep(self.policy.interval_seconds)
            try:
                self.autoscale()
            except Exception:
                log.exception("autoscaler failed")

"""Pools over real worker processes (echo runtime at a fixed pace), driven in this process:
spreading over instances, growth under a scripted load and shrink back without cutting a
stream, the caps (per-pool and region slots), and a stateful property test over random
sequences of load, idleness, deploys and deletes.

The pool manager and the supervisor are the server's own classes with real sandboxed workers;
only the event loop is the test's (tests/support/workers.py), so that the test can watch the
pool's size between steps. The whole server is exercised in test_capacity_http.py.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule, run_state_machine_as_test

from modelport.errors import ServiceUnavailable, TooManyRequests
from modelport.inference.pools import Pool, PoolManager, RegionSlots, ScalePolicy
from modelport.workers.client import TextDelta
from modelport.workers.protocol import GenerateBody, WorkerSpec
from modelport.workers.supervisor import WorkerSupervisor
from tests.support.workers import LoopThread, make_supervisor, wait_for


@pytest.fixture(scope="module")
def loop() -> Iterator[LoopThread]:
    lt = LoopThread()
    yield lt
    lt.close()


@pytest.fixture(scope="module")
def supervisor(loop: LoopThread) -> Iterator[WorkerSupervisor]:
    root = Path(tempfile.mkdtemp(prefix="mpa-", dir="/tmp"))  # Unix socket paths stay short
    sup = make_supervisor(loop, root, health_interval=1.0, backoff_initial=0.1)
    yield sup
    loop.run(sup.stop_all())
    shutil.rmtree(root, ignore_errors=True)


def echo(delay_ms: int) -> WorkerSpec:
    return WorkerSpec(runtime="echo", model_id="m", options={"task": "chat-completion", "delay_ms": delay_ms},
                      drain_seconds=2.0)


def words(n: int, tag: str = "w") -> str:
    return " ".join(f"{tag}{i}" for i in range(n))


async def ask(pool: Pool, text: str, *, workspace: str = "ws", deployment: str = "dep") -> str:
    """One request through the pool's fair admission (as the gateway sends it), its whole answer."""
    out = []
    async for ev in pool.generate(workspace, deployment, GenerateBody(prompt=text, max_tokens=len(text.split()))):
        if isinstance(ev, TextDelta):
            out.append(ev.text)
    return "".join(out)


def make_pool(manager: PoolManager, key: str, *, kind: str = "serverless", instances: int = 1,
              delay_ms: int = 0, concurrency: int = 1) -> Pool:
    return manager.get_or_create(key, kind=kind, geography="local", regions=["local"],
                                 spec_factory=lambda: echo(delay_ms), instances=instances,
                                 concurrency=concurrency, shared=kind == "serverless")


async def request_counts(pool: Pool) -> dict[str, int]:
    return {m.handle.id: (await m.client.health()).requests_total for m in pool.members}


def test_sequential_and_concurrent_traffic_reach_every_instance(loop: LoopThread, supervisor: WorkerSupervisor):
    manager = PoolManager(supervisor, RegionSlots({"local": 3}), queue_limit=16)
    pool = make_pool(manager, "dedicated:spread", kind="dedicated", instances=3, delay_ms=20, concurrency=4)
    loop.run(manager.scale(pool))
    try:
        before = loop.run(request_counts(pool))

        async def sequential() -> list[str]:
            return [await ask(pool, "one two") for _ in range(9)]

        assert loop.run(sequential()) == ["one two"] * 9
        after = loop.run(request_counts(pool))
        assert {i: after[i] - before[i] for i in after} == dict.fromkeys(after, 3)  # not all on the first

        async def concurrent() -> list[str]:
            return await asyncio.gather(*(ask(pool, words(5)) for _ in range(6)))

        assert loop.run(concurrent()) == [words(5)] * 6
        again = loop.run(request_counts(pool))
        assert {i: again[i] - after[i] for i in again} == dict.fromkeys(again, 2)  # least outstanding
    finally:
        loop.run(manager.close_all())


def test_a_serverless_pool_grows_under_load_to_its_cap_and_shrinks_back_to_zero(loop: LoopThread,
                                                                               supervisor: WorkerSupervisor):
    """A scripted load: 12 requests of 0.4 s at once on workers that take one request each. The
    queue makes the pool grow one instance at a time up to its cap (3), every request completes
    in full, and the instances spread the load; once the load is gone the pool retires
    instances one by one down to one, and the idle reaper stops the last."""
    policy = ScalePolicy(max_instances=3, up_queue=2, down_after_seconds=0.5, interval_seconds=0.05)
    manager = PoolManager(supervisor, RegionSlots({"local": 8}), queue_limit=32, policy=policy)
    pool = make_pool(manager, "serverless:grow", delay_ms=40)
    sizes: list[int] = []

    async def scenario() -> list[str]:
        await manager.scale(pool)
        scaler = asyncio.get_running_loop().create_task(manager.run_autoscaler())
        watcher = asyncio.get_running_loop().create_task(watch())
        try:
            answers = await asyncio.gather(*(ask(pool, words(10, f"r{i}-")) for i in range(12)))
            while len(pool.members) > 1:  # retire down to one, never below
                await asyncio.sleep(0.05)
            await asyncio.sleep(1.2)  # two more quiet periods: still one
            return list(answers)
        finally:
            scaler.cancel()
            watcher.cancel()

    async def watch() -> None:
        while True:
            sizes.append(len(pool.live()))
            await asyncio.sleep(0.02)

    try:
        answers = loop.run(scenario(), timeout=120)
        assert answers == [words(10, f"r{i}-") for i in range(12)]
        assert max(sizes) == 3 and sizes[0] == 1  # grew to the cap, never past it
        peak = sizes.index(3)
        assert sizes[:peak] == sorted(sizes[:peak])  # one instance at a time
        assert len(pool.members) == 1 and len(pool.live()) == 1
        assert manager.slots.used["local"] == 1  # the retired instances gave their slots back
        assert loop.run(manager.reap_idle(0.0)) == ["serverless:grow"]  # idle: down to zero
        assert manager.slots.used["local"] == 0 and "serverless:grow" not in manager.pools
    finally:
        loop.run(manager.close_all())


def test_a_retiring_instance_finishes_its_streams_before_it_stops(loop: LoopThread, supervisor: WorkerSupervisor):
    manager = PoolManager(supervisor, RegionSlots({"local": 4}), queue_limit=8)
    pool = make_pool(manager, "serverless:retire", delay_ms=30)
    loop.run(manager.scale(pool))
    assert loop.run(manager.grow(pool))
    first, second = pool.members

    async def scenario() -> tuple[str, str, bool]:
        long = [asyncio.get_running_loop().create_task(ask(pool, words(40, f"s{i}-"))) for i in range(2)]
        await asyncio.sleep(0.3)  # both streams are under way, one on each instance
        assert first.inflight == 1 and second.inflight == 1
        shrink = asyncio.get_running_loop().create_task(manager.shrink(pool))
        await asyncio.sleep(0.1)
        victim = next(m for m in pool.members if m.retiring)
        assert victim.handle.state == "ready" and not shrink.done()  # waits for the stream
        assert await ask(pool, "new request") == "new request"  # goes to the instance that stays
        a, b = await asyncio.gather(*long)
        return a + "|" + b, victim.handle.id, await shrink

    texts, victim_id, shrunk = loop.run(scenario(), timeout=60)
    try:
        assert texts == words(40, "s0-") + "|" + words(40, "s1-")  # both streams whole
        assert shrunk and [m.handle.id for m in pool.members] != [victim_id] and len(pool.members) == 1
        assert next(h for h in (first.handle, second.handle) if h.id == victim_id).state == "stopped"
    finally:
        loop.run(manager.close_all())


def test_growth_stops_at_the_region_slots_other_pools_hold(loop: LoopThread, supervisor: WorkerSupervisor):
    policy = ScalePolicy(max_instances=4, up_queue=1, interval_seconds=0.05)
    manager = PoolManager(supervisor, RegionSlots({"local": 2}), queue_limit=32, policy=policy)
    dedicated = make_pool(manager, "dedicated:holder", kind="dedicated")
    pool = make_pool(manager, "serverless:capped", delay_ms=30)
    assert pool.max_instances == 2  # the cap is the region's slots when they are fewer

    async def scenario() -> list[str]:
        await manager.scale(dedicated)
        await manager.scale(pool)
        scaler = asyncio.get_running_loop().create_task(manager.run_autoscaler())
        try:
            return list(await asyncio.gather(*(ask(pool, words(6)) for _ in range(6))))
        finally:
            scaler.cancel()

    try:
        assert loop.run(scenario(), timeout=60) == [words(6)] * 6
        assert len(pool.members) == 1 and len(dedicated.members) == 1  # the dedicated one keeps its slot
        assert not loop.run(manager.grow(pool))
    finally:
        loop.run(manager.close_all())


def test_slow_first_tokens_grow_a_pool_whose_queue_stays_short(loop: LoopThread, supervisor: WorkerSupervisor):
    """Workers that take 4 requests each but decode one at a time (as a llama.cpp worker
    before continuous batching would with more slots): nothing waits in the pool's queue, yet first tokens take seconds.
    The first-token trigger adds an instance; the queue trigger (set out of reach) does not."""
    policy = ScalePolicy(max_instances=2, up_queue=1000, up_first_token_seconds=0.5, interval_seconds=0.05)
    manager = PoolManager(supervisor, RegionSlots({"local": 4}), queue_limit=32, policy=policy)
    pool = make_pool(manager, "serverless:first-token", delay_ms=40, concurrency=4)

    async def scenario() -> tuple[list[str], int]:
        await manager.scale(pool)
        scaler = asyncio.get_running_loop().create_task(manager.run_autoscaler())
        try:
            waves = []
            for wave in range(3):  # 4 at a time: the 4th waits 1.2 s for its first token
                waves += await asyncio.gather(*(ask(pool, words(10, f"{wave}-{i}-")) for i in range(4)))
            return list(waves), len(pool.live())
        finally:
            scaler.cancel()

    try:
        answers, size = loop.run(scenario(), timeout=120)
        assert answers == [words(10, f"{w}-{i}-") for w in range(3) for i in range(4)]
        assert size == 2
    finally:
        loop.run(manager.close_all())


class PoolsMachine(RuleBasedStateMachine):
    """Random sequences of deploys (dedicated or serverless), deletes, bursts of load and idle
    spells over real workers. Invariants: a pool never exceeds its cap nor the region's slots
    (all pools together), a dedicated pool runs exactly its reservation once started, and no
    request is lost: each one answers in full, or is refused at admission with 429, or with 503
    only because its pool was deleted."""

    SLOTS = 4

    def __init__(self, loop: LoopThread, supervisor: WorkerSupervisor) -> None:
        super().__init__()
        self.loop = loop
        policy = ScalePolicy(max_instances=3, up_queue=2, down_after_seconds=0.2, interval_seconds=0.05)
        self.manager = PoolManager(supervisor, RegionSlots({"local": self.SLOTS}), queue_limit=6,
                                   policy=policy, workspace_cap=12, share=0.75)
        self.reserved: dict[str, int] = {}
        self.deleted: set[str] = set()
        self.load: list[tuple[str, str, asyncio.Future]] = []
        self.n = 0
        self.scaler = self.loop.submit(self.manager.run_autoscaler())

    def _free(self) -> int:
        return self.SLOTS - sum(self.reserved.values()) - sum(
            len(p.live()) for k, p in self.manager.pools.items() if k not in self.reserved)

    @precondition(lambda self: len(self.manager.pools) < 3)
    @rule(kind=st.sampled_from(["dedicated", "serverless"]), instances=st.integers(1, 2))
    def deploy(self, kind: str, instances: int) -> None:
        self.n += 1
        key = f"{kind}:{self.n}"
        if kind == "dedicated" and instances > self._free():
            return  # the control plane refuses what the region cannot hold
        pool = make_pool(self.manager, key, kind=kind, instances=instances if kind == "dedicated" else 1,
                         delay_ms=20)
        try:
            self.loop.run(self.manager.scale(pool), timeout=60)
        except ServiceUnavailable:  # no slot free (growth took it meanwhile): the deployment fails
            self.loop.run(self.manager.close(key))  # and what it started stops (the invariant counts)
            return
        if kind == "dedicated":
            self.reserved[key] = instances

    @precondition(lambda self: bool(self.manager.pools))
    @rule(data=st.data())
    def delete(self, data: st.DataObject) -> None:
        key = data.draw(st.sampled_from(sorted(self.manager.pools)))
        self.deleted.add(key)
        self.reserved.pop(key, None)
        self.loop.run(self.manager.close(key), timeout=60)

    @precondition(lambda self: bool(self.manager.pools))
    @rule(data=st.data(), n=st.integers(1, 10), ws=st.sampled_from(["a", "b"]))
    def burst(self, data: st.DataObject, n: int, ws: str) -> None:
        key = data.draw(st.sampled_from(sorted(self.manager.pools)))
        pool = self.manager.pools[key]
        for i in range(n):
            text = words(4, f"{key}-{i}-")
            self.load.append((key, text, self.loop.submit(ask(pool, text, workspace=ws, deployment=f"{ws}-{key}"))))

    @rule(seconds=st.sampled_from([0.05, 0.3, 0.8]))
    def idle(self, seconds: float) -> None:
        self.loop.run(asyncio.sleep(seconds))

    @invariant()
    def sizes_stay_within_bounds(self) -> None:
        async def check() -> None:
            total = 0
            for key, pool in self.manager.pools.items():
                live = len(pool.live())
                total += len([m for m in pool.members if m.handle.state not in ("stopped", "failed")])
                assert live <= pool.max_instances <= (3 if pool.elastic else self.reserved[key])
                if not pool.elastic:
                    assert live == self.reserved[key]
            assert total <= self.SLOTS and self.manager.slots.used["local"] <= self.SLOTS

        self.loop.run(check())

    def teardown(self) -> None:
        try:
            for key, text, fut in self.load:
                try:
                    assert fut.result(60) == text
                except TooManyRequests:
                    pass  # refused at admission, said so: not lost
                except ServiceUnavailable:
                    assert key in self.deleted  # only a deleted pool's requests end with 503
        finally:
            self.scaler.cancel()
            self.loop.run(self.manager.close_all(), timeout=60)
            wait_for(self.loop, lambda: self.manager.slots.used["local"] == 0)


@pytest.mark.slow
def test_pool_sizes_and_requests_over_random_sequences(loop: LoopThread, supervisor: WorkerSupervisor):
    run_state_machine_as_test(lambda: PoolsMachine(loop, supervisor),
                              settings=settings(max_examples=6, stateful_step_count=12, deadline=None,
                                                suppress_health_check=list(HealthCheck)))

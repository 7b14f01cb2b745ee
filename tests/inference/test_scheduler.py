"""The fair queue on its own: per-workspace caps, shares, turns, cancellation, and a stateful
property test over random sequences of arrivals, completions, departures and capacity changes.

The scheduler is plain asyncio state, so these run it directly on an event loop: no worker is
needed to decide who gets a slot (the pool tests put real workers behind it).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from modelport.errors import ServiceUnavailable, TooManyRequests
from modelport.inference.scheduler import FairScheduler


def in_loop(fn: Callable[[], Coroutine[Any, Any, None]]) -> Callable[[], None]:
    @functools.wraps(fn)
    def run() -> None:
        asyncio.run(fn())
    return run


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def start(loop_sched: FairScheduler, ws: str, dep: str | None = None) -> asyncio.Task[None]:
    return asyncio.get_running_loop().create_task(loop_sched.acquire(ws, dep or f"dep-{ws}"))


@in_loop
async def test_a_burst_holds_at_most_its_share_and_another_workspace_runs_at_once():
    s = FairScheduler(queue_limit=64, share=0.75)
    s.set_capacity(8)
    burst = [start(s, "A") for _ in range(64)]
    await settle()
    assert s.running["A"] == 6 and s.waiting("A") == 58  # floor(0.75 x 8): two slots stay free
    b = start(s, "B")
    await settle()
    assert b.done() and s.running["B"] == 1  # no wait behind A's 58
    for t in burst:
        t.cancel()
    await settle()
    assert s.waiting() == 0


@in_loop
async def test_without_a_share_the_other_workspace_gets_the_next_free_slot_not_the_last():
    s = FairScheduler(queue_limit=64)
    s.set_capacity(2)
    burst = [start(s, "A") for _ in range(20)]
    await settle()
    b = start(s, "B")
    await settle()
    assert not b.done() and s.running["A"] == 2
    s.release("A")  # the first slot that frees goes to B, ahead of A's 18 waiting
    await settle()
    assert b.done() and s.running == {"A": 1, "B": 1}
    for t in burst:
        t.cancel()
    await settle()


@in_loop
async def test_turns_alternate_between_workspaces():
    s = FairScheduler(queue_limit=64)
    s.set_capacity(1)
    s.in_use = 1  # one request of someone else runs
    s.running["Z"] = 1
    order: list[str] = []

    async def call(ws: str) -> None:
        await s.acquire(ws, ws)
        order.append(ws)

    tasks = [asyncio.get_running_loop().create_task(call(ws)) for ws in ["A"] * 6 + ["B"] * 2 + ["C"]]
    await settle()
    s.release("Z")
    for _ in range(9):
        await settle()
        s.release(order[-1])
    await asyncio.gather(*tasks)
    assert order[:5] == ["A", "B", "C", "A", "B"] and order.count("A") == 6


@in_loop
async def test_the_per_workspace_cap_refuses_beyond_it_and_leaves_others_alone():
    s = FairScheduler(queue_limit=64, workspace_cap=5)
    s.set_capacity(2)
    tasks = [start(s, "A", f"dep{i % 2}") for i in range(5)]  # over two deployments: one cap
    await settle()
    with pytest.raises(TooManyRequests) as exc:
        await s.acquire("A", "dep0")
    assert "cap (5)" in exc.value.message and exc.value.retry_after >= 1
    assert exc.value.details["limit"] == "pool_requests_per_workspace"
    b = start(s, "B")
    await settle()
    assert not b.done() and s.waiting("B") == 1  # queued, not refused
    for t in [*tasks, b]:
        t.cancel()
    await settle()


@in_loop
async def test_the_per_deployment_queue_bound_answers_429():
    s = FairScheduler(queue_limit=2)
    s.set_capacity(1)
    tasks = [start(s, "A", "d") for _ in range(3)]  # one runs, two wait
    await settle()
    with pytest.raises(TooManyRequests) as exc:
        await s.acquire("A", "d")
    assert exc.value.details["limit"] == "queue_per_deployment"
    other = start(s, "A", "e")  # another deployment of the same workspace has its own bound
    await settle()
    assert s.waiting("A") == 3
    for t in [*tasks, other]:
        t.cancel()
    await settle()


@in_loop
async def test_a_waiter_that_leaves_frees_its_place_and_a_closing_pool_wakes_everyone():
    s = FairScheduler(queue_limit=8)
    s.set_capacity(1)
    first = start(s, "A")
    waiting = [start(s, "B") for _ in range(3)]
    await settle()
    waiting[0].cancel()
    await settle()
    assert s.waiting("B") == 2
    s.fail_waiting(ServiceUnavailable("gone"))
    await settle()
    assert all(isinstance(t.exception(), ServiceUnavailable) for t in waiting[1:])
    assert first.done() and s.waiting() == 0


class SchedulerMachine(RuleBasedStateMachine):
    """Any sequence of arrivals, completions, cancellations and capacity changes keeps: no more
    slots held than capacity allows when granted; no workspace above its share through the queue;
    every request either runs, waits, or was refused or cancelled; a free slot is never left idle
    while an eligible workspace waits."""

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.s = FairScheduler(queue_limit=6, workspace_cap=10, share=0.75)
        self.tasks: list[tuple[str, asyncio.Task[None]]] = []
        self.held: list[str] = []  # granted and not yet released, by workspace
        self.refused = 0
        self.settle()

    def settle(self) -> None:
        self.loop.run_until_complete(settle())
        for ws, t in list(self.tasks):
            if t.done():
                self.tasks.remove((ws, t))
                if t.cancelled():
                    continue
                if t.exception() is None:
                    self.held.append(ws)
                else:
                    assert isinstance(t.exception(), TooManyRequests)
                    self.refused += 1

    @rule(ws=st.sampled_from("ABC"), n=st.integers(1, 8))
    def arrive(self, ws: str, n: int) -> None:
        for i in range(n):
            self.tasks.append((ws, self.loop.create_task(self.s.acquire(ws, f"{ws}{i % 2}"))))
        self.settle()

    @rule(data=st.data())
    def finish(self, data: st.DataObject) -> None:
        if self.held:
            ws = self.held.pop(data.draw(st.integers(0, len(self.held) - 1)))
            self.s.release(ws)
            self.settle()

    @rule(data=st.data())
    def leave(self, data: st.DataObject) -> None:
        waiting = [t for t in self.tasks if not t[1].done()]
        if waiting:
            waiting[data.draw(st.integers(0, len(waiting) - 1))][1].cancel()
            self.settle()

    @rule(data=st.data())
    def leave_as_a_slot_frees(self, data: st.DataObject) -> None:
        """A waiter's client goes away in the same instant as a running request ends: the slot
        must not go to the departed one (nor be lost)."""
        waiting = [t for t in self.tasks if not t[1].done()]
        if waiting and self.held:
            waiting[data.draw(st.integers(0, len(waiting) - 1))][1].cancel()
            self.s.release(self.held.pop(data.draw(st.integers(0, len(self.held) - 1))))
            self.settle()

    @rule(capacity=st.integers(0, 12))
    def resize(self, capacity: int) -> None:
        self.s.set_capacity(capacity)
        self.settle()

    @invariant()
    def accounts_add_up(self) -> None:
        assert self.s.in_use == len(self.held)
        assert dict(self.s.running) == {ws: self.held.count(ws) for ws in set(self.held)}
        assert self.s.waiting() == sum(1 for _, t in self.tasks if not t.done())
        for ws in "ABC":
            assert self.held.count(ws) + self.s.waiting(ws) <= 10  # the per-workspace cap

    @invariant()
    def nothing_is_kept_for_a_workspace_with_nothing_in_the_pool(self) -> None:
        assert set(self.s._last_served) <= set(self.s.running) | {ws for ws in "ABC" if self.s.waiting(ws)}

    @invariant()
    def no_slot_idles_while_an_eligible_workspace_waits(self) -> None:
        if self.s.in_use < self.s.capacity:
            for ws in "ABC":
                if self.s.waiting(ws):
                    assert self.s.running[ws] >= self.s.limit(), (ws, dict(self.s.running), self.s.capacity)

    def teardown(self) -> None:
        for _, t in self.tasks:
            t.cancel()
        self.loop.run_until_complete(settle())
        self.loop.close()


SchedulerMachine.TestCase.settings = settings(max_examples=60, stateful_step_count=40, deadline=None)
test_scheduler_state_machine = SchedulerMachine.TestCase


@in_loop
async def test_deployments_of_one_workspace_take_turns_within_its_share():
    s = FairScheduler(queue_limit=64)
    s.set_capacity(1)
    order: list[str] = []

    async def call(dep: str) -> None:
        await s.acquire("W", dep)
        order.append(dep)

    tasks = [asyncio.get_running_loop().create_task(call(d)) for d in ["flood"] * 6 + ["polite"] * 2]
    for _ in range(8):
        await settle()
        s.release("W")
    await asyncio.gather(*tasks)
    # the first ran at once; then the queue alternates between the two deployments
    assert order[:5] == ["flood", "flood", "polite", "flood", "polite"]


@in_loop
async def test_a_newcomer_gets_the_next_slot_ahead_of_a_burst_whose_request_just_ended():
    """One slot: A's request runs and 10 more of A's wait; B arrives. When A's request ends, A
    holds nothing either, but A was served more recently: the slot goes to B."""
    s = FairScheduler(queue_limit=64)
    s.set_capacity(1)
    burst = [start(s, "A") for _ in range(11)]
    await settle()
    b = start(s, "B")
    await settle()
    s.release("A")
    await settle()
    assert b.done() and s.running == {"B": 1}
    for t in burst:
        t.cancel()
    await settle()

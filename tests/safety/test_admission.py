"""The per-workspace bound on screening: at most `concurrency` at once, `queue` more wait, then 429."""

from __future__ import annotations

import asyncio
from asyncio import run

import pytest

from modelport.errors import TooManyRequests
from modelport.safety.admission import WorkspaceGate


async def _scenario() -> dict[str, object]:
    gate = WorkspaceGate(concurrency=1, queue=1)
    release = asyncio.Event()
    order: list[str] = []

    async def hold(ws: str, tag: str) -> None:
        async with gate.enter(ws):
            order.append(tag)
            await release.wait()

    first = asyncio.create_task(hold("ws-a", "first"))
    await asyncio.sleep(0)  # `first` holds the only slot of ws-a
    second = asyncio.create_task(hold("ws-a", "second"))  # waits in ws-a's queue
    await asyncio.sleep(0)
    with pytest.raises(TooManyRequests) as refused:
        async with gate.enter("ws-a"):
            pass
    other = asyncio.create_task(hold("ws-b", "other"))  # another workspace has its own slot
    await asyncio.sleep(0)
    seen_before_release = list(order)
    release.set()
    await asyncio.gather(first, second, other)
    return {"refused": refused.value, "before": seen_before_release, "order": order, "idle": gate.idle}


def test_one_workspace_waits_then_is_refused_while_another_goes_on() -> None:
    out = run(_scenario())
    refused = out["refused"]
    assert isinstance(refused, TooManyRequests) and refused.retry_after >= 1
    assert "screening" in refused.message
    assert out["before"] == ["first", "other"]  # `second` waited, ws-b did not
    assert out["order"] == ["first", "other", "second"]
    assert out["idle"]  # nothing is kept for workspaces with nothing in flight


async def _cancelled_waiter_frees_its_place() -> bool:
    gate = WorkspaceGate(concurrency=1, queue=1)
    release = asyncio.Event()

    async def hold() -> None:
        async with gate.enter("ws"):
            await release.wait()

    holder = asyncio.create_task(hold())
    await asyncio.sleep(0)
    waiter = asyncio.create_task(hold())
    await asyncio.sleep(0)
    waiter.cancel()  # a client that went away while waiting
    await asyncio.gather(waiter, return_exceptions=True)
    late = asyncio.create_task(hold())  # takes the freed place in the queue instead of a 429
    await asyncio.sleep(0)
    release.set()
    await asyncio.gather(holder, late)
    return gate.idle


def test_a_cancelled_waiter_frees_its_place() -> None:
    assert run(_cancelled_waiter_frees_its_place())


def test_limits_must_be_sensible() -> None:
    with pytest.raises(ValueError):
        WorkspaceGate(concurrency=0, queue=0)
    with pytest.raises(ValueError):
        WorkspaceGate(concurrency=1, queue=-1)

"""Worker supervisors in the test process: an event loop in a thread, supervisors built on it,
and the events of one generate request collected.

Tests are plain functions that hand coroutines to `loop.run(...)`, so that a supervisor and its
workers can live as long as a module and the GGUF loads in as few worker processes as possible.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar

from modelport.workers.client import StreamUsage, TextDelta
from modelport.workers.protocol import GenerateBody
from modelport.workers.supervisor import WorkerHandle, WorkerSupervisor

T = TypeVar("T")


class LoopThread:
    """An asyncio loop running in a background thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="test-loop", daemon=True)
        self.thread.start()

    def submit(self, coro: Awaitable[T]) -> Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)  # type: ignore[arg-type]

    def run(self, coro: Awaitable[T], timeout: float = 120) -> T:
        return self.submit(coro).result(timeout)

    def close(self) -> None:
        async def cancel_rest() -> None:  # e.g. the health loop of a supervisor a test left running
            rest = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in rest:
                t.cancel()
            await asyncio.gather(*rest, return_exceptions=True)

        self.run(cancel_rest(), timeout=30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


def make_supervisor(loop: LoopThread, run_dir: Path, **kw: Any) -> WorkerSupervisor:
    async def build() -> WorkerSupervisor:
        return WorkerSupervisor(run_dir, **kw)

    return loop.run(build())


def wait_for(loop: LoopThread, predicate: Any, timeout: float = 20.0) -> None:
    """Poll `predicate` on the test loop until it holds (a deadline, not a timing assertion)."""
    async def poll() -> None:
        while not predicate():
            await asyncio.sleep(0.02)

    loop.run(poll(), timeout=timeout)


async def collect(handle: WorkerHandle, body: GenerateBody) -> tuple[dict[int, str], list[Any]]:
    """The text of each choice and every event of one generate request (the last is the usage)."""
    texts: dict[int, str] = {}
    events = []
    async for event in handle.client.generate(body):
        events.append(event)
        if isinstance(event, TextDelta):
            texts[event.index] = texts.get(event.index, "") + event.text
    assert isinstance(events[-1], StreamUsage)
    return texts, events

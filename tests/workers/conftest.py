"""Fixtures for worker tests: an event loop in a thread, real supervisors, real workers.

Tests are plain functions that hand coroutines to `loop.run(...)`: the supervisor and its
workers live as long as the module, so the GGUF loads in as few worker processes as possible.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import threading
from collections.abc import Awaitable, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar

import pytest

from modelport.workers.client import StreamUsage, TextDelta
from modelport.workers.protocol import GenerateBody, WorkerSpec
from modelport.workers.supervisor import WorkerHandle, WorkerSupervisor
from tests.runtimes.models import SMOLLM2_GGUF

T = TypeVar("T")


class LoopThread:
    """An asyncio loop running in a background thread for the whole module."""

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


@pytest.fixture(scope="module")
def loop() -> Iterator[LoopThread]:
    lt = LoopThread()
    yield lt
    lt.close()


@pytest.fixture(scope="module")
def run_root() -> Iterator[Path]:
    """Short paths: Unix socket paths must stay under 108 bytes (pytest's tmp paths are long)."""
    path = Path(tempfile.mkdtemp(prefix="mpw-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def make_supervisor(loop: LoopThread, run_dir: Path, **kw: Any) -> WorkerSupervisor:
    async def build() -> WorkerSupervisor:
        return WorkerSupervisor(run_dir, **kw)

    return loop.run(build())


@pytest.fixture(scope="module")
def supervisor(loop: LoopThread, run_root: Path) -> Iterator[WorkerSupervisor]:
    sup = make_supervisor(loop, run_root / "main", health_interval=0.5, backoff_initial=0.1)
    yield sup
    loop.run(sup.stop_all())


@pytest.fixture(scope="module")
def llama(loop: LoopThread, supervisor: WorkerSupervisor) -> WorkerHandle:
    spec = WorkerSpec(runtime="llamacpp", model_id="smollm2", model_path=str(SMOLLM2_GGUF), threads=1,
                      n_ctx=1024)
    return loop.run(supervisor.start(spec, region="local"))


def wait_for(loop: LoopThread, predicate, timeout: float = 20.0) -> None:
    """Poll `predicate` on the test loop until it holds (a deadline, not a timing assertion)."""
    async def poll() -> None:
        while not predicate():
            await asyncio.sleep(0.02)

    loop.run(poll(), timeout=timeout)


async def collect(handle: WorkerHandle, body: GenerateBody) -> tuple[dict[int, str], list[Any]]:
    texts: dict[int, str] = {}
    events = []
    async for event in handle.client.generate(body):
        events.append(event)
        if isinstance(event, TextDelta):
            texts[event.index] = texts.get(event.index, "") + event.text
    assert isinstance(events[-1], StreamUsage)
    return texts, events
